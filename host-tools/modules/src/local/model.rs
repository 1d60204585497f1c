//! `model`: a model of the store opened, checked, and held under its folder's reader lock.

use crate::capability::{LanguageModel, Provided};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{HardwareNeeds, ModuleConfig, ModuleSpec};
use enigma_models::{ModelStore, ResolvedModel};
use enigma_runtime::session::HostSession;
use enigma_runtime::{Backend, ModelFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model file opened and checked, with the backend that runs it. While it lives, the model's folder is
/// held with a reader's lock (`ModelFile::open_shared`): `models delete`, `convert --in-place` and training
/// are refused, so a mapped file is never truncated under it.
pub struct LoadedModel {
    /// The model's name in the store (`default`: the built-in model), or the path it was given as.
    pub name: String,
    pub path: PathBuf,
    pub file: ModelFile,
    pub backend: Backend,
}

impl LoadedModel {
    pub fn open(
        store: &ModelStore,
        name: &str,
        threads: Option<usize>,
        purpose: &str,
    ) -> Result<Self, ModuleError> {
        // Resolved as `enigma run -m NAME` resolves it: `default` is the built-in model.
        let file = store
            .resolve_model(name)
            .and_then(|m| m.open(purpose))
            .map_err(ModuleError::failed)?;
        let path = file.path().to_path_buf();
        let backend = Backend::cpu(threads).map_err(ModuleError::failed)?;
        // Everything `run` would check: shapes, dtypes, the tokenizer.
        file.model(backend.kernels()).map_err(ModuleError::failed)?;
        Ok(LoadedModel {
            name: name.to_string(),
            path,
            file,
            backend,
        })
    }

    pub fn config(&self) -> Result<enigma_core::Config, String> {
        Ok(*self.file.parse().map_err(|e| e.to_string())?.config())
    }

    /// Runs BOS through the model once and checks the logits: the cheapest proof the weights compute.
    pub fn forward_one(&self) -> Result<String, String> {
        let model = self
            .file
            .model(self.backend.kernels())
            .map_err(|e| e.to_string())?;
        let mut bufs = HostSession::new(&model.transformer, 1);
        let mut session = bufs.session(model.transformer).map_err(|e| e.to_string())?;
        session
            .feed(self.backend.exec(), &[model.tokenizer.bos()])
            .map_err(|e| e.to_string())?;
        let logits = session.logits();
        if logits.iter().all(|x| x.is_finite()) {
            Ok(format!("one-token forward: {} finite logits", logits.len()))
        } else {
            Err("one-token forward produced non-finite logits".into())
        }
    }

    pub fn describe(&self) -> String {
        match self.config() {
            Ok(c) => format!(
                "{} ({}; {} parameters; {})",
                self.name,
                self.path.display(),
                c.param_count(),
                self.backend.describe()
            ),
            Err(e) => format!("{}: {e}", self.name),
        }
    }
}

impl LanguageModel for LoadedModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn file(&self) -> &ModelFile {
        &self.file
    }
    fn backend(&self) -> &Backend {
        &self.backend
    }
}

pub(super) struct ModelModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    loaded: Option<Arc<LoadedModel>>,
}

impl ModelModule {
    pub(super) fn new(spec: &'static ModuleSpec, store: ModelStore) -> Self {
        ModelModule {
            spec,
            store,
            loaded: None,
        }
    }

    fn name(config: &ModuleConfig) -> Result<String, ModuleError> {
        super::required_text(
            config,
            "model",
            "choose the model to load: --set model=NAME (see `enigma models list`)",
        )
    }
}

impl Module for ModelModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    /// RAM for the chosen model: its file plus a full-context KV cache and scratch.
    fn hardware_needs(&self, config: &ModuleConfig) -> Result<HardwareNeeds, ModuleError> {
        let name = Self::name(config)?;
        let peek = match self.store.resolve_model(&name) {
            Ok(ResolvedModel::BuiltIn) => enigma_models::peek_builtin(),
            Ok(ResolvedModel::File(path)) => enigma_models::peek(&path),
            Err(e) => Err(e),
        }
        .map_err(|e| ModuleError::Config(e.to_string()))?;
        Ok(HardwareNeeds {
            ram: super::ram_needs(&peek),
            ..self.spec().hardware
        })
    }

    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let name = Self::name(config)?;
        let threads = super::threads(config);
        let loaded = Arc::new(LoadedModel::open(
            &self.store,
            &name,
            threads,
            "model module",
        )?);
        self.loaded = Some(loaded.clone());
        // model_embeddings has no handle yet: the embeddings issue brings a real encoder.
        Ok(Provided::new().with("language_model", loaded as Arc<dyn LanguageModel>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        self.loaded
            .as_ref()
            .map_or("not loaded".into(), |m| m.describe())
    }

    fn health(&self) -> Health {
        match &self.loaded {
            None => Health::NotLoaded,
            Some(m) => match m.forward_one() {
                Ok(s) => Health::Ok(s),
                Err(e) => Health::Unhealthy(e),
            },
        }
    }
}
