//! `gguf_loader`: a GGUF file run directly. It is the `model`, `tokenizer` and `inference` modules in one,
//! over a model that `enigma_models::gguf` reads from the file (the same path `enigma run -m x.gguf` takes),
//! so what it generates is what `run` generates; it conflicts with `model` and `inference` (SPEC.md).

use super::inference::InferenceModule;
use super::model::LoadedModel;
use super::tokenizer::TokenizerModule;
use crate::capability::{Handle, LanguageModel, Provided};
use crate::catalog;
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{HardwareNeeds, ModuleConfig, ModuleSpec};
use enigma_models::ModelStore;
use std::path::Path;
use std::sync::Arc;

pub(super) struct GgufLoaderModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    loaded: Option<Loaded>,
}

struct Loaded {
    model: Arc<LoadedModel>,
    // Held so their handles stay what they were given as.
    _tokenizer: TokenizerModule,
    _inference: InferenceModule,
}

impl GgufLoaderModule {
    pub(super) fn new(spec: &'static ModuleSpec, store: ModelStore) -> Self {
        GgufLoaderModule {
            spec,
            store,
            loaded: None,
        }
    }

    fn path(config: &ModuleConfig) -> Result<String, ModuleError> {
        let path = super::required_text(config, "path", "choose the file: --set path=FILE.gguf")?;
        if !enigma_models::gguf::is_gguf(Path::new(&path)) {
            return Err(ModuleError::Config(format!("{path} is not a GGUF file")));
        }
        Ok(path)
    }
}

/// The handle `provided` serves `capability` with.
fn lookup(provided: &Provided, capability: &str) -> Result<Handle, String> {
    provided
        .handles
        .iter()
        .find(|(c, _)| *c == capability)
        .map(|(_, h)| h.clone())
        .ok_or_else(|| format!("nothing provides {capability}"))
}

impl Module for GgufLoaderModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn hardware_needs(&self, config: &ModuleConfig) -> Result<HardwareNeeds, ModuleError> {
        let path = Self::path(config)?;
        let peek = enigma_models::peek(Path::new(&path))
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        Ok(HardwareNeeds {
            ram: super::ram_needs(&peek),
            ..self.spec().hardware
        })
    }

    fn load(&mut self, config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let path = Self::path(config)?;
        let threads = super::threads(config);
        let model = Arc::new(LoadedModel::open(
            &self.store,
            &path,
            threads,
            "gguf_loader",
        )?);
        let mut parts =
            Provided::new().with("language_model", model.clone() as Arc<dyn LanguageModel>);
        let mut tokenizer = TokenizerModule::new(catalog::by_id("tokenizer"), self.store.clone());
        let tok = {
            let find = |c: &str| lookup(&parts, c);
            tokenizer.load(&ModuleConfig::new(), &Deps::new(&find))?
        };
        parts.handles.extend(tok.handles);
        let mut inference = InferenceModule::new(catalog::by_id("inference"));
        let generation = {
            let find = |c: &str| lookup(&parts, c);
            inference.load(config, &Deps::new(&find))?
        };
        let handle = lookup(&generation, "text_generation").map_err(ModuleError::Failed)?;
        self.loaded = Some(Loaded {
            model,
            _tokenizer: tokenizer,
            _inference: inference,
        });
        Ok(Provided::new().with_all(&["text_generation", "completion"], handle))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        self.loaded
            .as_ref()
            .map_or("not loaded".into(), |l| l.model.describe())
    }

    fn health(&self) -> Health {
        match &self.loaded {
            None => Health::NotLoaded,
            Some(l) => match l.model.forward_one() {
                Ok(s) => Health::Ok(s),
                Err(e) => Health::Unhealthy(e),
            },
        }
    }
}
