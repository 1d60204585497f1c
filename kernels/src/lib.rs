//! The numeric inner loops of Enigma Engine.
//!
//! Every op has a scalar reference in [`generic`] that is never deleted; faster variants for a CPU tier
//! are plugged into a [`Kernels`] table once, at start, and are property-tested against the reference.
//! Callers hold a `&'static Kernels` and never name a tier, so model code carries no `cfg`.
//!
//! Shapes are written on every argument: `(n, d)` is row-major, `n` rows of `d` values.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

mod dispatch;
pub mod generic;
mod weights;

#[cfg(feature = "std")]
pub use dispatch::kernels_from_env;
pub use dispatch::{kernels, kernels_for, Kernels, Tier, TierError};
pub use weights::{DType, ViewError, WeightView};
