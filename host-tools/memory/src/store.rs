//! The memory database: conversations, their messages and embedded passages in one SQLite file (WAL,
//! every commit synced), its schema versioned by `PRAGMA user_version` and brought up to date by
//! [`MIGRATIONS`] when opened.

use crate::error::{Error, Result};
use crate::index::{normalized, VectorIndex, EXACT_LIMIT};
use enigma_modules::capability::{ChatMessage, Role};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `PRAGMA application_id`: marks the file as ours, so someone else's SQLite database is refused rather than
/// written into. ("ENGM" as a big-endian integer.)
const APPLICATION_ID: i32 = 0x454E_474D;

/// The schema, one step per version: `MIGRATIONS[i]` takes version `i` to `i + 1`. Steps are only ever
/// appended; a database is migrated in one transaction, so a crash leaves it at the old version or the new.
const MIGRATIONS: &[&str] = &[
    // 1: conversations and messages; one index per embedding model, its passages, its saved graph.
    "CREATE TABLE conversations(
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE messages(
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
     CREATE TABLE indexes(
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL CHECK (dim > 0)
     );
     CREATE TABLE passages(
        id INTEGER PRIMARY KEY,
        index_id INTEGER NOT NULL REFERENCES indexes(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        vector BLOB NOT NULL
     );
     CREATE INDEX passages_by_index ON passages(index_id, id);
     CREATE TABLE graphs(
        index_id INTEGER PRIMARY KEY REFERENCES indexes(id) ON DELETE CASCADE,
        fingerprint INTEGER NOT NULL,
        data BLOB NOT NULL
     );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A conversation as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConversationInfo {
    pub id: i64,
    pub title: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub messages: usize,
}

/// A stored passage as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PassageInfo {
    pub id: i64,
    pub model: String,
    pub text: String,
    pub source: String,
    pub created_at: i64,
}

/// A passage found by a search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Found {
    pub id: i64,
    pub text: String,
    pub source: String,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// The export format, version 1: what `enigma memory export` writes and `import` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: String,
    pub version: u32,
    pub conversations: Vec<ExportedConversation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedConversation {
    /// Its id in the database it came from; an import gives it a new one.
    pub id: i64,
    pub title: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub messages: Vec<ExportedMessage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedMessage {
    pub role: Role,
    pub content: String,
    pub created_at: i64,
}

pub const EXPORT_FORMAT: &str = "enigma-memory";
pub const EXPORT_VERSION: u32 = 1;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn role_of(s: &str) -> Option<Role> {
    match s {
        "system" => Some(Role::System),
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        _ => None,
    }
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The ids of an index, hashed: a saved graph is used only for exactly the passages it was built over.
fn fingerprint(ids: &[i64]) -> i64 {
    let mut h = crc32fast::Hasher::new();
    for id in ids {
        h.update(&id.to_le_bytes());
    }
    (h.finalize() as i64) | ((ids.len() as i64) << 32)
}

/// An open memory database. One connection; callers that share it across threads wrap it in a mutex.
pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// Indexes read in so far, by model.
    indexes: HashMap<String, VectorIndex>,
    /// What the last index load did about its graph (rebuilt, and why), for callers to report.
    pub graph_note: Option<String>,
    /// Indexes larger than this are searched through their graph.
    exact_limit: usize,
}

impl Store {
    /// Opens (creating it when missing) the database at `path`, and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| sql_error(path, e))?;
        let mut store = Store {
            path: path.to_path_buf(),
            conn,
            indexes: HashMap::new(),
            graph_note: None,
            exact_limit: EXACT_LIMIT,
        };
        store.setup()?;
        Ok(store)
    }

    /// Searches indexes of more than `limit` vectors through their graph (tests use a small one).
    pub fn set_exact_limit(&mut self, limit: usize) {
        self.exact_limit = limit;
        self.indexes.clear();
    }

    fn new_index(&self, model: &str, dim: usize) -> VectorIndex {
        VectorIndex::new(model, dim).with_config(Default::default(), self.exact_limit)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sql_error(&self.path, e)
    }

    fn setup(&mut self) -> Result<()> {
        // Another process (a CLI command beside the server) may hold the write lock for a moment.
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        // The first read of the file: garbage fails here as "not a database".
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Invalid(format!(
                "{}: SQLite refused write-ahead logging (journal mode {mode})",
                self.path.display()
            )));
        }
        // FULL: a commit is on disk (WAL synced) before it returns, so neither a killed process nor a power cut
        // loses it.
        self.conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(|e| self.err(e))?;
        let app: i32 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if app != APPLICATION_ID && (app != 0 || tables > 0) {
            return Err(Error::Foreign {
                path: self.path.clone(),
                reason: format!("application id {app:#x}, {tables} schema objects"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                path: self.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 0 {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!("schema version {version}"),
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self
                .conn
                .transaction()
                .map_err(|e| sql_error(&self.path, e))?;
            tx.execute_batch(step)
                .map_err(|e| sql_error(&self.path, e))?;
            tx.execute_batch(&format!(
                "PRAGMA user_version={}; PRAGMA application_id={APPLICATION_ID};",
                i + 1
            ))
            .map_err(|e| sql_error(&self.path, e))?;
            tx.commit().map_err(|e| sql_error(&self.path, e))?;
        }
        Ok(())
    }

    /// SQLite's own check of every page and index; `Err(Corrupt)` naming what it found.
    pub fn check(&self) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        if lines.len() == 1 && lines[0] == "ok" {
            Ok(())
        } else {
            Err(Error::Corrupt {
                path: self.path.clone(),
                reason: lines.join("; "),
            })
        }
    }

    // ---- conversations ----

    pub fn create_conversation(&self, title: &str) -> Result<i64> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO conversations(title, created_at, updated_at) VALUES (?1, ?2, ?2)",
                params![title, t],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    fn require_conversation(&self, id: i64) -> Result<()> {
        let found: Option<i64> = self
            .conn
            .query_row("SELECT id FROM conversations WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        found.map(|_| ()).ok_or(Error::UnknownConversation(id))
    }

    /// Appends a message; it is committed (and synced) when this returns. Returns the message's id.
    pub fn append(&mut self, conversation: i64, message: &ChatMessage) -> Result<i64> {
        let t = now();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        let changed = tx
            .execute(
                "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
                params![conversation, t],
            )
            .map_err(|e| sql_error(&self.path, e))?;
        if changed == 0 {
            return Err(Error::UnknownConversation(conversation));
        }
        tx.execute(
            "INSERT INTO messages(conversation_id, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![conversation, role_name(message.role), message.content, t],
        )
        .map_err(|e| sql_error(&self.path, e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| sql_error(&self.path, e))?;
        Ok(id)
    }

    pub fn conversations(&self) -> Result<Vec<ConversationInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.id, c.title, c.created_at, c.updated_at,
                        (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)
                 FROM conversations c ORDER BY c.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ConversationInfo {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    created_at: r.get(2)?,
                    updated_at: r.get(3)?,
                    messages: r.get::<_, i64>(4)? as usize,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn exported_messages(&self, conversation: i64) -> Result<Vec<ExportedMessage>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT role, content, created_at FROM messages WHERE conversation_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([conversation], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(role, content, created_at)| {
                let role = role_of(&role).ok_or_else(|| Error::Corrupt {
                    path: self.path.clone(),
                    reason: format!("a message of conversation {conversation} has role {role:?}"),
                })?;
                Ok(ExportedMessage {
                    role,
                    content,
                    created_at,
                })
            })
            .collect()
    }

    /// A conversation's messages, in order.
    pub fn messages(&self, conversation: i64) -> Result<Vec<ChatMessage>> {
        self.require_conversation(conversation)?;
        Ok(self
            .exported_messages(conversation)?
            .into_iter()
            .map(|m| ChatMessage::new(m.role, m.content))
            .collect())
    }

    /// Deletes a conversation and its messages.
    pub fn delete_conversation(&self, id: i64) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM conversations WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(Error::UnknownConversation(id));
        }
        Ok(())
    }

    /// One conversation (`Some(id)`) or all of them, in the export format.
    pub fn export(&self, conversation: Option<i64>) -> Result<Export> {
        let infos = match conversation {
            Some(id) => {
                self.require_conversation(id)?;
                self.conversations()?
                    .into_iter()
                    .filter(|c| c.id == id)
                    .collect()
            }
            None => self.conversations()?,
        };
        let conversations = infos
            .into_iter()
            .map(|c| {
                Ok(ExportedConversation {
                    messages: self.exported_messages(c.id)?,
                    id: c.id,
                    title: c.title,
                    created_at: c.created_at,
                    updated_at: c.updated_at,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Export {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            conversations,
        })
    }

    /// Reads an export (JSON text), checked whole before anything is written; all its conversations are added
    /// in one transaction, under new ids (returned in order).
    pub fn import_json(&mut self, json: &str) -> Result<Vec<i64>> {
        let export: Export = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("not an Enigma memory export: {e}")))?;
        if export.format != EXPORT_FORMAT {
            return Err(Error::Invalid(format!(
                "format {:?} is not {EXPORT_FORMAT:?}",
                export.format
            )));
        }
        if export.version != EXPORT_VERSION {
            return Err(Error::Invalid(format!(
                "export version {} (this build reads {EXPORT_VERSION})",
                export.version
            )));
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        let ids = import_into(&tx, &export).map_err(|e| sql_error(&self.path, e))?;
        tx.commit().map_err(|e| sql_error(&self.path, e))?;
        Ok(ids)
    }

    // ---- passages and their indexes ----

    /// The index row of `model`: its id and dimension.
    fn index_row(&self, model: &str) -> Result<Option<(i64, usize)>> {
        self.conn
            .query_row(
                "SELECT id, dim FROM indexes WHERE model = ?1",
                [model],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as usize)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The models indexed, with their dimension and passage count.
    pub fn index_list(&self) -> Result<Vec<(String, usize, usize)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT i.model, i.dim, (SELECT count(*) FROM passages p WHERE p.index_id = i.id)
                 FROM indexes i ORDER BY i.model",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as usize,
                    r.get::<_, i64>(2)? as usize,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Adds passages embedded by `model` (each `(text, source, vector)`), in one transaction. A model's index
    /// has one dimension, fixed by its first vector: a vector of another is refused before anything is
    /// written. Returns the new ids.
    pub fn add_passages(
        &mut self,
        model: &str,
        items: &[(&str, &str, &[f32])],
    ) -> Result<Vec<i64>> {
        let dim = match (self.index_row(model)?, items.first()) {
            (Some((_, dim)), _) => dim,
            (None, Some((_, _, v))) => v.len(),
            (None, None) => return Ok(Vec::new()),
        };
        let units = items
            .iter()
            .map(|(_, _, v)| normalized(model, dim, v))
            .collect::<Result<Vec<_>>>()?;
        // The index in memory first, so that appending to it and saving its graph happen with the rows.
        self.load_index(model)?;
        let t = now();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        let index_id = ensure_index(&tx, model, dim).map_err(|e| sql_error(&self.path, e))?;
        let mut ids = Vec::with_capacity(items.len());
        for ((text, source, _), v) in items.iter().zip(&units) {
            tx.execute(
                "INSERT INTO passages(index_id, text, source, created_at, vector) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![index_id, text, source, t, to_blob(v)],
            )
            .map_err(|e| sql_error(&self.path, e))?;
            ids.push(tx.last_insert_rowid());
        }
        // The in-memory index follows only once the rows are committed; on failure it is read again.
        let fresh = VectorIndex::new(model, dim).with_config(Default::default(), self.exact_limit);
        let index = self.indexes.entry(model.to_string()).or_insert(fresh);
        for (id, v) in ids.iter().zip(&units) {
            index.push_unit(*id, v);
        }
        if index.needs_graph() {
            index.build_graph();
        }
        let saved = save_graph(&tx, index_id, index);
        let done = saved.and_then(|_| tx.commit());
        if let Err(e) = done {
            self.indexes.remove(model);
            return Err(sql_error(&self.path, e));
        }
        Ok(ids)
    }

    /// Reads `model`'s index into memory (once), with its graph: the saved one when it matches the passages,
    /// else rebuilt and saved (noted in [`Store::graph_note`]).
    fn load_index(&mut self, model: &str) -> Result<()> {
        if self.indexes.contains_key(model) {
            return Ok(());
        }
        let Some((index_id, dim)) = self.index_row(model)? else {
            return Ok(());
        };
        let mut index = self.new_index(model, dim);
        {
            let mut stmt = self
                .conn
                .prepare("SELECT id, vector FROM passages WHERE index_id = ?1 ORDER BY id")
                .map_err(|e| sql_error(&self.path, e))?;
            let mut rows = stmt
                .query([index_id])
                .map_err(|e| sql_error(&self.path, e))?;
            let mut v = vec![0.0f32; dim];
            while let Some(r) = rows.next().map_err(|e| sql_error(&self.path, e))? {
                let id: i64 = r.get(0).map_err(|e| sql_error(&self.path, e))?;
                let blob: Vec<u8> = r.get(1).map_err(|e| sql_error(&self.path, e))?;
                if blob.len() != dim * 4 {
                    return Err(Error::Corrupt {
                        path: self.path.clone(),
                        reason: format!(
                            "passage {id} has a vector of {} bytes; its index {model:?} is {dim} wide",
                            blob.len()
                        ),
                    });
                }
                for (x, b) in v.iter_mut().zip(blob.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                index.push_unit(id, &v);
            }
        }
        if index.needs_graph() {
            let saved: Option<(i64, Vec<u8>)> = self
                .conn
                .query_row(
                    "SELECT fingerprint, data FROM graphs WHERE index_id = ?1",
                    [index_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            let why = match saved {
                None => "no saved graph".to_string(),
                Some((fp, _)) if fp != fingerprint(index.ids()) => {
                    "the saved graph is of other passages".to_string()
                }
                Some((_, bytes)) => match index.adopt_graph(&bytes) {
                    Ok(()) => String::new(),
                    Err(e) => format!("the saved graph is unusable ({e})"),
                },
            };
            if index.needs_graph() {
                index.build_graph();
                let tx = self
                    .conn
                    .transaction()
                    .map_err(|e| sql_error(&self.path, e))?;
                save_graph(&tx, index_id, &index)
                    .and_then(|_| tx.commit())
                    .map_err(|e| sql_error(&self.path, e))?;
                self.graph_note = Some(format!(
                    "rebuilt the search graph of {model:?} ({} vectors): {why}",
                    index.len()
                ));
            }
        }
        self.indexes.insert(model.to_string(), index);
        Ok(())
    }

    /// The `n` passages nearest `query` (embedded by `model`), best first.
    pub fn search(&mut self, model: &str, query: &[f32], n: usize) -> Result<Vec<Found>> {
        self.load_index(model)?;
        let Some(index) = self.indexes.get(model) else {
            let others: Vec<String> = self
                .index_list()?
                .into_iter()
                .map(|(m, d, c)| format!("{m:?} ({d} wide, {c} passages)"))
                .collect();
            let others = if others.is_empty() {
                String::new()
            } else {
                format!("; it holds passages of {}", others.join(", "))
            };
            return Err(Error::NoIndex {
                model: model.to_string(),
                others,
            });
        };
        let hits = index.search(query, n)?;
        let mut out = Vec::with_capacity(hits.len());
        for (id, score) in hits {
            let (text, source): (String, String) = self
                .conn
                .query_row(
                    "SELECT text, source FROM passages WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| self.err(e))?;
            out.push(Found {
                id,
                text,
                source,
                score,
            });
        }
        Ok(out)
    }

    /// Every passage (oldest first), of every model.
    pub fn passages(&self) -> Result<Vec<PassageInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.id, i.model, p.text, p.source, p.created_at
                 FROM passages p JOIN indexes i ON i.id = p.index_id ORDER BY p.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PassageInfo {
                    id: r.get(0)?,
                    model: r.get(1)?,
                    text: r.get(2)?,
                    source: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Deletes passages; their indexes' graphs are dropped with them (rebuilt at the next load).
    pub fn forget_passages(&mut self, ids: &[i64]) -> Result<()> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        for &id in ids {
            let index_id: Option<i64> = tx
                .query_row("SELECT index_id FROM passages WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| sql_error(&self.path, e))?;
            let Some(index_id) = index_id else {
                return Err(Error::UnknownEntry(id));
            };
            tx.execute("DELETE FROM passages WHERE id = ?1", [id])
                .and_then(|_| tx.execute("DELETE FROM graphs WHERE index_id = ?1", [index_id]))
                .map_err(|e| sql_error(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql_error(&self.path, e))?;
        self.indexes.clear();
        Ok(())
    }

    /// Drops the oldest passages beyond `max` (all models together); returns how many.
    pub fn prune(&mut self, max: usize) -> Result<usize> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM passages ORDER BY id DESC LIMIT -1 OFFSET ?1")
                .map_err(|e| self.err(e))?;
            let ids = stmt
                .query_map([max as i64], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.err(e))?;
            ids
        };
        if !ids.is_empty() {
            self.forget_passages(&ids)?;
        }
        Ok(ids.len())
    }
}

fn ensure_index(tx: &Transaction<'_>, model: &str, dim: usize) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT OR IGNORE INTO indexes(model, dim) VALUES (?1, ?2)",
        params![model, dim as i64],
    )?;
    tx.query_row("SELECT id FROM indexes WHERE model = ?1", [model], |r| {
        r.get(0)
    })
}

fn save_graph(tx: &Transaction<'_>, index_id: i64, index: &VectorIndex) -> rusqlite::Result<()> {
    match index.graph() {
        Some(g) => tx
            .execute(
                "INSERT OR REPLACE INTO graphs(index_id, fingerprint, data) VALUES (?1, ?2, ?3)",
                params![index_id, fingerprint(index.ids()), g.to_bytes()],
            )
            .map(|_| ()),
        None => tx
            .execute("DELETE FROM graphs WHERE index_id = ?1", [index_id])
            .map(|_| ()),
    }
}

fn import_into(tx: &Transaction<'_>, export: &Export) -> rusqlite::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(export.conversations.len());
    for c in &export.conversations {
        tx.execute(
            "INSERT INTO conversations(title, created_at, updated_at) VALUES (?1, ?2, ?3)",
            params![c.title, c.created_at, c.updated_at],
        )?;
        let id = tx.last_insert_rowid();
        for m in &c.messages {
            tx.execute(
                "INSERT INTO messages(conversation_id, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, role_name(m.role), m.content, m.created_at],
            )?;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// SQLite's "corrupt" and "not a database" become [`Error::Corrupt`]; anything else keeps its message.
fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => Error::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        _ => Error::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}
