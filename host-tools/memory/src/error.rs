//! One error type for the crate: each variant says what went wrong in words a person can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a SQLite database, or SQLite found it damaged.
    #[error("{path}: the memory database is corrupt or not a database ({reason}); move it aside to start a new one, or restore a copy")]
    Corrupt { path: PathBuf, reason: String },
    /// A SQLite database of someone else's.
    #[error("{path}: a SQLite database, but not an Enigma memory database ({reason})")]
    Foreign { path: PathBuf, reason: String },
    #[error("{path}: written by a newer Enigma (schema version {found}; this build reads up to {known})")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("vector of dimension {got} refused: the index of embedding model {model:?} holds vectors of dimension {expected}")]
    DimensionMismatch {
        model: String,
        expected: usize,
        got: usize,
    },
    #[error("no conversation {0} (`enigma memory list` shows them)")]
    UnknownConversation(i64),
    #[error("no memory entry {0} (`enigma memory list --entries` shows them)")]
    UnknownEntry(i64),
    /// Nothing is embedded with the model a query is embedded with.
    #[error("nothing in memory is embedded with model {model:?}{others}")]
    NoIndex { model: String, others: String },
    /// Input the caller must fix (an import file, a zero vector).
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
