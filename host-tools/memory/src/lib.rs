//! Memory: conversations and messages in SQLite, passages embedded by a model and searched by meaning.
//!
//! - [`store`]: the database (WAL, schema migrations, JSON export and import, passages per embedding model);
//! - [`index`]: one model's vectors in memory, searched exactly (the SIMD matvec kernel) up to
//!   [`index::EXACT_LIMIT`] and through an HNSW graph beyond;
//! - [`hnsw`]: the graph, and its checked byte image saved beside the passages;
//! - [`module`]: the `memory` module (`conversation_storage`, `vector_search`), and [`api`]: the
//!   `embedding_api` module (an OpenAI-compatible `/v1/embeddings` client);
//! - [`fake`]: a bag-of-words embedder and a loopback `/v1/embeddings` server, for tests and demos.

pub mod api;
pub mod error;
pub mod fake;
pub mod hnsw;
pub mod index;
pub mod module;
pub mod store;

pub use error::{Error, Result};
pub use index::{Method, VectorIndex};
pub use store::{ConversationInfo, Export, Found, PassageInfo, Store};
