//! `embedding_local`: sentence embeddings from an encoder `.enigma` model on this machine
//! (all-MiniLM-L6-v2 imported by `enigma import hf`), providing `embeddings`.

use crate::capability::{Embedded, Embeddings, Provided};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{ModuleConfig, ModuleSpec};
use enigma_models::ModelStore;
use enigma_runtime::Embedder;
use std::sync::Arc;

/// A loaded encoder.
pub struct LocalEmbeddings {
    name: String,
    embedder: Embedder,
}

impl LocalEmbeddings {
    /// Opens the encoder `name` (a model of `store`, or a path) and checks its width against `dim`.
    pub fn open(store: &ModelStore, name: &str, dim: usize) -> Result<Self, ModuleError> {
        let file = store
            .resolve_model(name)
            .and_then(|m| m.open("embedding_local module"))
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        let embedder = Embedder::from_file(file, enigma_core::kernels::kernels())
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        if embedder.dim() != dim {
            return Err(ModuleError::Config(format!(
                "{name} makes {}-dimensional vectors, but dim is set to {dim}",
                embedder.dim()
            )));
        }
        Ok(LocalEmbeddings {
            name: name.to_string(),
            embedder,
        })
    }
}

impl Embeddings for LocalEmbeddings {
    fn describe(&self) -> String {
        format!(
            "{} ({} dimensions, on this machine)",
            self.name,
            self.embedder.dim()
        )
    }
    fn dimensions(&self) -> usize {
        self.embedder.dim()
    }
    /// Memory keys its vector index on this: the model's name, nothing that changes between runs.
    fn model(&self) -> String {
        format!("local:{}", self.name)
    }
    fn embed(&self, texts: &[&str]) -> Result<Embedded, ModuleError> {
        let mut tokens = 0;
        for t in texts {
            tokens += self
                .embedder
                .tokenize(t)
                .map_err(ModuleError::failed)?
                .len();
        }
        let vectors = self.embedder.embed(texts).map_err(ModuleError::failed)?;
        Ok(Embedded { vectors, tokens })
    }
}

pub(super) struct EmbeddingModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    loaded: Option<Arc<LocalEmbeddings>>,
}

impl EmbeddingModule {
    pub(super) fn new(spec: &'static ModuleSpec, store: ModelStore) -> Self {
        EmbeddingModule {
            spec,
            store,
            loaded: None,
        }
    }
}

impl Module for EmbeddingModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let name = super::required_text(
            config,
            "model",
            "embedding_local needs an encoder model: --set model=NAME_OR_PATH (all-MiniLM-L6-v2 imported by `enigma import hf`)",
        )?;
        let dim = super::int(config, "dim", 384).max(1) as usize;
        let e = Arc::new(LocalEmbeddings::open(&self.store, &name, dim)?);
        self.loaded = Some(e.clone());
        Ok(Provided::new().with("embeddings", e as Arc<dyn Embeddings>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            None => "not loaded".into(),
            Some(e) => e.describe(),
        }
    }

    /// Two sentences of one meaning must land closer together than a third of another.
    fn health(&self) -> Health {
        let Some(e) = &self.loaded else {
            return Health::NotLoaded;
        };
        let texts = [
            "A man is eating food.",
            "Someone eats a meal.",
            "The stock market fell sharply today.",
        ];
        match e.embed(&texts) {
            Ok(out) => {
                let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
                let (near, far) = (
                    dot(&out.vectors[0], &out.vectors[1]),
                    dot(&out.vectors[0], &out.vectors[2]),
                );
                if near > far {
                    Health::Ok(format!("similar {near:.2} > unrelated {far:.2}"))
                } else {
                    Health::Unhealthy(format!(
                        "a paraphrase scored {near:.2}, below an unrelated sentence's {far:.2}"
                    ))
                }
            }
            Err(err) => Health::Unhealthy(err.to_string()),
        }
    }
}
