//! Training: byte-level BPE tokenizers and Llama-family models, with hand-written backward passes.
//!
//! - [`matmul`]: the products of training, on the kernels' SIMD `x · wᵀ`;
//! - [`layers`]: forward/backward pairs of each layer (RMSNorm, RoPE, attention, SwiGLU, cross-entropy);
//! - [`model`]: the whole model over a batch, parameters and gradients in one flat [`ParamLayout`] buffer.
//!
//! [`ParamLayout`]: enigma_core::ParamLayout
pub mod layers;
pub mod matmul;
pub mod model;

pub use model::{Acts, Batch, Model};
