//! Enigma Engine's transformer core. `#![no_std]`, no heap: the same code runs from a microcontroller's
//! flash and from an mmap on a host.
//!
//! - [`config`]: model shapes, the 15 size presets, the one parameter layout every tool shares;
//! - [`format`]: the zero-copy `.enigma` reader, validating every offset, length, dtype and shape;
//! - [`model`]: the Llama-family forward pass (prefill of a chunk, one-token decode, a batch step of many
//!   sequences over a paged KV cache) over caller-owned buffers;
//! - [`tokenizer`]: byte-level BPE with scores in llama2.c's style;
//! - [`sampler`]: greedy, temperature, top-k, top-p, repetition penalty, seeded PRNG;
//! - [`generate`]: the token loop shared by the CLI, the server and the firmware;
//! - [`utf8`]: token pieces to valid UTF-8, holding back characters split over tokens;
//! - [`encoder`], [`wordpiece`] (feature `encoder`): a BERT sentence encoder and its WordPiece tokenizer;
//! - [`mel`], [`whisper`] (feature `whisper`): Whisper's log-mel spectrogram and speech recognizer.
//!
//! Letters used in shape comments: `T` tokens in a chunk (rows of a batch step), `D` dim, `H` hidden (FFN)
//! dim, `L` layers, `NH` query heads, `NKV` key/value heads, `HS` head size, `S` max sequence length, `V`
//! vocab size, `B` positions per KV block.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod config;
#[cfg(feature = "encoder")]
pub mod encoder;
mod error;
pub mod format;
pub mod generate;
#[cfg(feature = "whisper")]
pub mod mel;
pub mod model;
pub mod pretok;
mod pretok_marks;
pub mod protocol;
pub mod sampler;
pub mod tokenizer;
pub mod utf8;
#[cfg(feature = "whisper")]
pub mod whisper;
#[cfg(feature = "encoder")]
pub mod wordpiece;
#[cfg(feature = "encoder")]
mod wordpiece_tables;

pub use config::{Config, KvType, ParamLayout, Preset, TensorSpec, PRESETS};
pub use enigma_kernels as kernels;
pub use error::{Error, Name};
pub use format::EnigmaFile;
pub use model::{Exec, KvBuf, KvCache, Scratch, SeqRows, Serial, Transformer, Weights};
pub use sampler::{ProbIndex, Sampler, SamplerConfig};
pub use tokenizer::Tokenizer;
pub use utf8::Utf8Stream;

pub type Result<T, E = Error> = core::result::Result<T, E>;
