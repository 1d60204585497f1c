//! The `memory` module: `conversation_storage` and `vector_search` over one [`Store`], embedding through
//! whichever loaded module provides `embeddings` (`embedding_local` or `embedding_api`, loaded first as its
//! optional needs).

use crate::error::Error;
use crate::store::Store;
use enigma_modules::capability::{
    ChatMessage, ConversationStorage, ConversationSummary, Embeddings, Passage, VectorSearch,
};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, Module, ModuleConfig, ModuleError, ModuleSpec, Provided, Registry,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Registers `memory` (its database relative to `home`, the models directory) and `embedding_api`.
pub fn register(registry: &mut Registry, home: &Path) {
    registry.register(Box::new(MemoryModule {
        spec: catalog::by_id("memory"),
        home: home.to_path_buf(),
        loaded: None,
    }));
    crate::api::register(registry);
}

/// A store error as the module reports it: what the caller asked wrongly is `Invalid` (a server answers 400).
pub fn module_error(e: Error) -> ModuleError {
    match e {
        Error::UnknownConversation(_)
        | Error::UnknownEntry(_)
        | Error::DimensionMismatch { .. }
        | Error::NoIndex { .. }
        | Error::Invalid(_) => ModuleError::Invalid(e.to_string()),
        _ => ModuleError::Failed(e.to_string()),
    }
}

struct MemoryModule {
    spec: &'static ModuleSpec,
    home: PathBuf,
    loaded: Option<Arc<Memory>>,
}

/// What both capabilities are served by.
pub struct Memory {
    store: Mutex<Store>,
    embeddings: Option<Arc<dyn Embeddings>>,
    max_entries: usize,
}

impl Memory {
    /// Memory over `store`, embedding with `embeddings` (none: conversations only; searches say why not).
    pub fn new(store: Store, embeddings: Option<Arc<dyn Embeddings>>, max_entries: usize) -> Self {
        Memory {
            store: Mutex::new(store),
            embeddings,
            max_entries,
        }
    }

    /// A poisoned lock means a panic mid-call; SQLite rolled back whatever that call had not committed.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn embedder(&self) -> Result<&Arc<dyn Embeddings>, ModuleError> {
        self.embeddings.as_ref().ok_or_else(|| {
            ModuleError::Unavailable(
                "no module provides embeddings: load embedding_local or embedding_api before memory".into(),
            )
        })
    }

    fn embed_one(&self, text: &str) -> Result<(String, Vec<f32>), ModuleError> {
        let e = self.embedder()?;
        let mut out = e.embed(&[text])?;
        let v = out.vectors.pop().filter(|_| out.vectors.is_empty());
        let v =
            v.ok_or_else(|| ModuleError::Failed(format!("{} returned no vector", e.describe())))?;
        Ok((e.model(), v))
    }
}

impl ConversationStorage for Memory {
    fn describe(&self) -> String {
        format!("conversations in {}", self.store().path().display())
    }
    fn create(&self, title: &str) -> Result<i64, ModuleError> {
        self.store()
            .create_conversation(title)
            .map_err(module_error)
    }
    fn append(&self, conversation: i64, message: &ChatMessage) -> Result<i64, ModuleError> {
        self.store()
            .append(conversation, message)
            .map_err(module_error)
    }
    fn list(&self) -> Result<Vec<ConversationSummary>, ModuleError> {
        let list = self.store().conversations().map_err(module_error)?;
        Ok(list
            .into_iter()
            .map(|c| ConversationSummary {
                id: c.id,
                title: c.title,
                created_at: c.created_at,
                updated_at: c.updated_at,
                messages: c.messages,
            })
            .collect())
    }
    fn messages(&self, conversation: i64) -> Result<Vec<ChatMessage>, ModuleError> {
        self.store().messages(conversation).map_err(module_error)
    }
    fn delete(&self, conversation: i64) -> Result<(), ModuleError> {
        self.store()
            .delete_conversation(conversation)
            .map_err(module_error)
    }
    fn export(&self, conversation: Option<i64>) -> Result<serde_json::Value, ModuleError> {
        let export = self.store().export(conversation).map_err(module_error)?;
        serde_json::to_value(export).map_err(ModuleError::failed)
    }
    fn import(&self, json: &str) -> Result<Vec<i64>, ModuleError> {
        self.store().import_json(json).map_err(module_error)
    }
}

impl VectorSearch for Memory {
    fn describe(&self) -> String {
        match &self.embeddings {
            Some(e) => format!(
                "passages in {}, embedded by {}",
                self.store().path().display(),
                e.describe()
            ),
            None => format!(
                "passages in {} (no embeddings provider loaded)",
                self.store().path().display()
            ),
        }
    }
    fn add(&self, texts: &[&str], source: &str) -> Result<Vec<i64>, ModuleError> {
        let e = self.embedder()?;
        let out = e.embed(texts)?;
        if out.vectors.len() != texts.len() {
            return Err(ModuleError::Failed(format!(
                "{} returned {} vectors for {} texts",
                e.describe(),
                out.vectors.len(),
                texts.len()
            )));
        }
        let items: Vec<(&str, &str, &[f32])> = texts
            .iter()
            .zip(&out.vectors)
            .map(|(t, v)| (*t, source, v.as_slice()))
            .collect();
        let mut store = self.store();
        let ids = store
            .add_passages(&e.model(), &items)
            .map_err(module_error)?;
        store.prune(self.max_entries).map_err(module_error)?;
        Ok(ids)
    }
    fn search(&self, query: &str, n: usize) -> Result<Vec<Passage>, ModuleError> {
        let (model, q) = self.embed_one(query)?;
        let found = self.store().search(&model, &q, n).map_err(module_error)?;
        Ok(found
            .into_iter()
            .map(|f| Passage {
                id: f.id,
                text: f.text,
                source: f.source,
                score: f.score,
            })
            .collect())
    }
    fn list(&self) -> Result<Vec<Passage>, ModuleError> {
        let list = self.store().passages().map_err(module_error)?;
        Ok(list
            .into_iter()
            .map(|p| Passage {
                id: p.id,
                text: p.text,
                source: p.source,
                score: 0.0,
            })
            .collect())
    }
    fn forget(&self, ids: &[i64]) -> Result<(), ModuleError> {
        self.store().forget_passages(ids).map_err(module_error)
    }
}

impl Module for MemoryModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let store = match config.get("store") {
            Some(Value::Str(s)) if !s.is_empty() => s.clone(),
            _ => return Err(ModuleError::Config("memory needs a store file".into())),
        };
        let max_entries = match config.get("max_entries") {
            Some(Value::Int(n)) if *n >= 1 => *n as usize,
            _ => return Err(ModuleError::Config("max_entries must be 1 or more".into())),
        };
        // Relative to the models directory; an absolute path is taken as it is.
        let path = self.home.join(store);
        let store = Store::open(&path).map_err(|e| ModuleError::Failed(e.to_string()))?;
        // Optional: without a provider, conversations still work and searches say what to load.
        let embeddings = deps.get::<dyn Embeddings>("embeddings").ok();
        let memory = Arc::new(Memory::new(store, embeddings, max_entries));
        self.loaded = Some(memory.clone());
        Ok(Provided::new()
            .with(
                "conversation_storage",
                memory.clone() as Arc<dyn ConversationStorage>,
            )
            .with("vector_search", memory as Arc<dyn VectorSearch>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            Some(m) => VectorSearch::describe(m.as_ref()),
            None => "not loaded".into(),
        }
    }

    fn health(&self) -> Health {
        match &self.loaded {
            None => Health::NotLoaded,
            Some(m) => match m.store().conversations() {
                Ok(c) => Health::Ok(format!("{} conversations", c.len())),
                Err(e) => Health::Unhealthy(e.to_string()),
            },
        }
    }
}
