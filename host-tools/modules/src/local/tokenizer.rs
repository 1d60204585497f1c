//! `tokenizer`: the tokenizer inside a model file (the model module's, or another model's).

use super::model::LoadedModel;
use crate::capability::{LanguageModel, Provided, Tokenization};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{ModuleConfig, ModuleSpec, Value};
use enigma_core::Tokenizer;
use enigma_models::ModelStore;
use enigma_runtime::ModelFile;
use std::sync::Arc;

/// A model file's tokenizer.
pub(super) struct ModelTokenizer {
    model: Arc<dyn LanguageModel>,
}

impl ModelTokenizer {
    fn with<T>(
        &self,
        f: impl FnOnce(&Tokenizer<'_>) -> Result<T, ModuleError>,
    ) -> Result<T, ModuleError> {
        let parsed = self.model.file().parse().map_err(ModuleError::failed)?;
        let tok = Tokenizer::from_file(&parsed).map_err(ModuleError::failed)?;
        f(&tok)
    }
}

impl Tokenization for ModelTokenizer {
    fn source(&self) -> &str {
        self.model.name()
    }
    fn file(&self) -> &ModelFile {
        self.model.file()
    }
    fn vocab_size(&self) -> usize {
        self.with(|t| Ok(t.vocab_size())).unwrap_or(0)
    }
    fn encode(&self, text: &str, bos: bool, max: usize) -> Result<Vec<u32>, ModuleError> {
        // Encoding fails only on the text itself (longer than `max`, a character the vocabulary cannot
        // spell): the caller's to fix, so a server answers 400, not 500.
        self.with(|t| {
            enigma_runtime::tokenize::encode_within(t, text, bos, false, max)
                .map_err(|e| ModuleError::Invalid(e.to_string()))
        })
    }
    fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, ModuleError> {
        self.with(|t| {
            let n = t.vocab_size() as u32;
            let mut out = Vec::new();
            let mut prev = t.bos();
            for &id in ids {
                if id >= n {
                    return Err(ModuleError::Failed(format!(
                        "token {id} is outside the vocabulary of {n}"
                    )));
                }
                out.extend_from_slice(t.decode(prev, id));
                prev = id;
            }
            Ok(out)
        })
    }
}

pub(super) struct TokenizerModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    loaded: Option<Arc<ModelTokenizer>>,
}

impl TokenizerModule {
    pub(super) fn new(spec: &'static ModuleSpec, store: ModelStore) -> Self {
        TokenizerModule {
            spec,
            store,
            loaded: None,
        }
    }
}

impl Module for TokenizerModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let name = super::text(config, "model");
        let shared = deps.get::<dyn LanguageModel>("language_model").ok();
        let model: Arc<dyn LanguageModel> = match shared {
            // The model module's file is already open and checked: share it.
            Some(m) if name.is_empty() || name == m.name() => m,
            None if name.is_empty() => {
                return Err(ModuleError::Config(
                    "no model module is loaded to take the tokenizer from: load it first, or --set model=NAME"
                        .into(),
                ))
            }
            _ => Arc::new(LoadedModel::open(
                &self.store,
                &name,
                Some(1),
                "tokenizer module",
            )?),
        };
        let tok = Arc::new(ModelTokenizer { model });
        self.loaded = Some(tok.clone());
        Ok(Provided::new().with("tokenization", tok as Arc<dyn Tokenization>))
    }

    /// "The model module's model" is written down as that model's name, so a restart (or a later model
    /// change) keeps this tokenizer.
    fn resolved_config(&self, config: &ModuleConfig) -> ModuleConfig {
        let mut c = config.clone();
        if let Some(t) = &self.loaded {
            c.insert("model".into(), Value::Str(t.source().to_string()));
        }
        c
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.loaded {
            None => "not loaded".into(),
            Some(t) => format!("from {} ({} tokens)", t.source(), t.vocab_size()),
        }
    }

    /// Encodes and decodes a sentence; the bytes must come back unchanged.
    fn health(&self) -> Health {
        let Some(t) = &self.loaded else {
            return Health::NotLoaded;
        };
        let sample = "The quick brown fox, 42 times.";
        let check = || -> Result<String, ModuleError> {
            let ids = t.encode(sample, true, usize::MAX)?;
            // Decoding after BOS drops the dummy-prefix space the encoder added, as generation does.
            let back = t.decode(&ids[1..])?;
            if back == sample.as_bytes() {
                Ok(format!("round trip of {} tokens", ids.len()))
            } else {
                Err(ModuleError::Failed(format!(
                    "round trip changed the text to {:?}",
                    String::from_utf8_lossy(&back)
                )))
            }
        };
        match check() {
            Ok(s) => Health::Ok(s),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
