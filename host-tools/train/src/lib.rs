//! Training: byte-level BPE tokenizers and Llama-family models, with hand-written backward passes.
//!
//! - [`matmul`]: the products of training, on the kernels' SIMD `x · wᵀ`;
//! - [`layers`]: forward/backward pairs of each layer (RMSNorm, RoPE, attention, SwiGLU, cross-entropy);
//! - [`model`]: the whole model over a batch, parameters and gradients in one flat [`ParamLayout`] buffer;
//! - [`adamw`]: AdamW, gradient clipping, the warmup + cosine schedule;
//! - [`bpe`], [`vocab`]: tokenizer training, its file, and encoding;
//! - [`data`]: text windows and chat-rendered conversations, split and shuffled;
//! - [`checkpoint`], [`progress`], [`trainer`]: the run itself;
//! - [`module`]: the `training` module, fine-tuning the loaded model through the capability seam.
//!
//! [`ParamLayout`]: enigma_core::ParamLayout
pub mod adamw;
pub mod bpe;
pub mod checkpoint;
pub mod data;
pub mod layers;
pub mod matmul;
pub mod model;
pub mod module;
pub mod options;
pub mod progress;
pub mod trainer;
pub mod vocab;

pub use model::{Acts, Batch, Model};
pub use options::{TokenizerCommand, TokenizerTrainArgs, TrainOptions};
pub use trainer::{train, train_tokenizer, Summary};
