//! The numeric inner loops of Enigma Engine.
//!
//! Every op has a scalar reference in [`generic`] that is never deleted; faster variants for a CPU tier
//! are plugged into a [`Kernels`] table once, at start, and are property-tested against the reference.
//! Callers hold a `&'static Kernels` and never name a tier, so model code carries no `cfg`.
//!
//! Shapes are written on every argument: `(n, d)` is row-major, `n` rows of `d` values.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(any(feature = "std", test))]
extern crate std;

mod dispatch;
pub mod encoder_ops;
mod frame;
mod gemm;
// The frame of the SIMD tiers' `matmul_f32`; other targets use the scalar one.
pub mod generic;
pub mod kquants;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod matmul;
#[cfg(feature = "std")]
pub mod probe;
pub mod qgemm;
mod quant;
mod weights;

#[cfg(target_arch = "aarch64")]
mod aarch64;
/// Cortex-M kernels; compiled everywhere so the host tests run their portable form.
pub mod arm;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(test)]
mod tests;

#[cfg(feature = "std")]
pub use dispatch::kernels_from_env;
pub use dispatch::{kernels, kernels_for, Kernels, Tier, TierError};
pub use encoder_ops::{encoder_ops, EncoderOps};
pub use frame::{QMatvec, X_CHUNK_BLOCKS};
pub use gemm::Gemm;
pub use half::{bf16, f16};
pub use kquants::{BlockQ4K, BlockQ6K};
pub use quant::{
    dequantize_bf16, dequantize_f16, dequantize_q4_0, dequantize_q8_0, quantize_bf16, quantize_f16,
    quantize_q4_0, quantize_q8_0, quantize_q8_0_grouped, BlockQ4_0, BlockQ8_0, QBlock, QK,
};
pub use weights::{DType, ViewError, WeightView};
