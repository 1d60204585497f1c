//! Enigma Engine on an OS: loads `.enigma` files through mmap, runs the core with threads, decodes many sequences
//! together over a paged KV pool (`batch`), and writes models.
pub mod audio;
pub mod backend;
pub mod batch;
pub mod device;
pub mod embed;
mod error;
pub mod fsutil;
pub mod hardware;
pub mod load;
pub mod lock;
mod packed;
pub mod quantize;
pub mod session;
pub mod tmpfiles;
pub mod tokenize;
pub mod transcribe;
pub mod writer;

pub use backend::{Backend, Device, Pool};
pub use batch::{Batcher, ModelHost};
pub use embed::Embedder;
pub use enigma_core as core;
pub use error::{Error, Result};
pub use hardware::Hardware;
pub use load::{AlignedBytes, Model, ModelFile};
pub use lock::{LockError, ModelLock};
pub use session::HostSession;
pub use transcribe::{Segment, Transcriber};
pub use writer::{extras, Extra, ModelWriter, TokenizerData};
