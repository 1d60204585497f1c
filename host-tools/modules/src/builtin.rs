//! The modules that are real in this build: model, tokenizer, inference, code_gen_local (and training, in
//! `training.rs`), wrapping the engine. They share one [`Engine`], through which the server (and tests) reach what is loaded. Every other
//! module of the catalog is registered as unavailable, with the reason.

use super::catalog::CATALOG;
use super::module::{Health, Module, ModuleError, Unavailable};
use super::spec::{HardwareNeeds, ModuleConfig, ModuleSpec, Value};
use super::training::{TrainingJob, TrainingModule};
use enigma_core::{Sampler, SamplerConfig, Tokenizer};
use enigma_models::{self as models, ModelStore};
use enigma_runtime::session::DEFAULT_CHUNK;
use enigma_runtime::{Backend, HostSession, ModelFile};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(config: &ModuleConfig, key: &str) -> String {
    config
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn int(config: &ModuleConfig, key: &str, default: i64) -> i64 {
    config.get(key).and_then(Value::as_int).unwrap_or(default)
}

fn float(config: &ModuleConfig, key: &str, default: f64) -> f64 {
    config.get(key).and_then(Value::as_float).unwrap_or(default)
}

/// A model file opened and checked, with the backend that runs it.
pub struct LoadedModel {
    /// The model's name in the store, or the path it was given as.
    pub name: String,
    pub path: PathBuf,
    pub file: ModelFile,
    pub backend: Backend,
}

impl LoadedModel {
    fn open(store: &ModelStore, name: &str, threads: Option<usize>) -> Result<Self, ModuleError> {
        let path = store.resolve(name).map_err(ModuleError::failed)?;
        let file = ModelFile::open(&path).map_err(ModuleError::failed)?;
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

    fn config(&self) -> Result<enigma_core::Config, String> {
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
}

/// Text generation over a loaded model and tokenizer.
pub struct Inference {
    pub model: Arc<LoadedModel>,
    pub tokenizer: Arc<LoadedModel>,
    pub sampling: SamplerConfig,
    pub max_tokens: usize,
}

impl Inference {
    /// Continues `prompt` with up to `max_tokens` tokens (the module's setting when `None`), sampling with
    /// the module's settings, `temperature` overriding the temperature.
    pub fn generate(
        &self,
        prompt: &str,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
    ) -> Result<String, String> {
        let model = self
            .model
            .file
            .model(self.model.backend.kernels())
            .map_err(|e| e.to_string())?;
        let parsed = self.tokenizer.file.parse().map_err(|e| e.to_string())?;
        let tok = Tokenizer::from_file(&parsed).map_err(|e| e.to_string())?;
        let ids = enigma_runtime::tokenize::encode(&tok, prompt, true, false)
            .map_err(|e| e.to_string())?;
        let room = model.transformer.config.seq_len as usize;
        if ids.len() >= room {
            return Err(format!(
                "the prompt is {} tokens and the model's context holds {room}",
                ids.len()
            ));
        }
        let mut cfg = self.sampling;
        if let Some(t) = temperature {
            cfg.temperature = t;
        }
        if cfg.seed == 0 {
            cfg.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        }
        let n = max_tokens.unwrap_or(self.max_tokens).min(room - ids.len());
        let mut bufs = HostSession::new(&model.transformer, DEFAULT_CHUNK);
        let mut session = bufs.session(model.transformer).map_err(|e| e.to_string())?;
        let mut sampler = Sampler::new(cfg);
        let mut out = Vec::new();
        session
            .generate(
                self.model.backend.exec(),
                &tok,
                &mut sampler,
                &ids,
                n,
                false,
                &mut |_, piece| {
                    out.extend_from_slice(piece);
                    true
                },
            )
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// What the real modules share: the models directory and what each has loaded.
pub struct Engine {
    pub store: ModelStore,
    model: Mutex<Option<Arc<LoadedModel>>>,
    tokenizer: Mutex<Option<Arc<LoadedModel>>>,
    inference: Mutex<Option<Arc<Inference>>>,
    code_gen: Mutex<Option<Arc<CodeGen>>>,
    training: Mutex<Option<Arc<TrainingJob>>>,
}

impl Engine {
    pub fn new(store: ModelStore) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            model: Mutex::new(None),
            tokenizer: Mutex::new(None),
            inference: Mutex::new(None),
            code_gen: Mutex::new(None),
            training: Mutex::new(None),
        })
    }
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        lock(&self.model).clone()
    }
    pub fn tokenizer(&self) -> Option<Arc<LoadedModel>> {
        lock(&self.tokenizer).clone()
    }
    pub fn inference(&self) -> Option<Arc<Inference>> {
        lock(&self.inference).clone()
    }
    pub fn code_gen(&self) -> Option<Arc<CodeGen>> {
        lock(&self.code_gen).clone()
    }
    pub fn training(&self) -> Option<Arc<TrainingJob>> {
        lock(&self.training).clone()
    }
    pub(super) fn set_training(&self, job: Option<Arc<TrainingJob>>) {
        *lock(&self.training) = job;
    }
}

/// The reason for the modules of the addons work.
pub const ADDON_UNAVAILABLE: &str = "not built yet: comes with the addons work";

/// All 29 modules: the real ones over `engine`, the rest unavailable.
pub fn registry(engine: &Arc<Engine>) -> Vec<Box<dyn Module>> {
    CATALOG
        .iter()
        .map(|s| -> Box<dyn Module> {
            match s.id {
                "model" => Box::new(ModelModule {
                    spec: s,
                    engine: engine.clone(),
                }),
                "tokenizer" => Box::new(TokenizerModule {
                    spec: s,
                    engine: engine.clone(),
                }),
                "inference" => Box::new(InferenceModule {
                    spec: s,
                    engine: engine.clone(),
                }),
                "code_gen_local" => Box::new(CodeGenModule {
                    spec: s,
                    engine: engine.clone(),
                }),
                "training" => Box::new(TrainingModule {
                    spec: s,
                    engine: engine.clone(),
                }),
                _ => Box::new(Unavailable::new(s, ADDON_UNAVAILABLE)),
            }
        })
        .collect()
}

fn describe(m: &LoadedModel) -> String {
    match m.config() {
        Ok(c) => format!(
            "{} ({}; {} parameters; {})",
            m.name,
            m.path.display(),
            c.param_count(),
            m.backend.describe()
        ),
        Err(e) => format!("{}: {e}", m.name),
    }
}

struct ModelModule {
    spec: &'static ModuleSpec,
    engine: Arc<Engine>,
}

impl ModelModule {
    fn name(config: &ModuleConfig) -> Result<String, ModuleError> {
        let name = text(config, "model");
        if name.is_empty() {
            return Err(ModuleError::Config(
                "choose the model to load: --set model=NAME (see `enigma models list`)".into(),
            ));
        }
        Ok(name)
    }
}

impl Module for ModelModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    /// RAM for the chosen model: its file (mapped) plus a full-context KV cache and scratch.
    fn hardware_needs(&self, config: &ModuleConfig) -> Result<HardwareNeeds, ModuleError> {
        let name = Self::name(config)?;
        let path = self
            .engine
            .store
            .resolve(&name)
            .map_err(|e| ModuleError::Config(e.to_string()))?;
        let peek = models::peek(&path).map_err(|e| ModuleError::Config(e.to_string()))?;
        let est = peek
            .config
            .memory_estimate(enigma_core::kernels::DType::F32)
            .map_or(0, |m| m.kv_cache + m.scratch);
        Ok(HardwareNeeds {
            ram: peek.file_len + est,
            ..self.spec().hardware
        })
    }

    fn load(&mut self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let name = Self::name(config)?;
        let threads = match int(config, "threads", 0) {
            0 => None,
            n => Some(n as usize),
        };
        let loaded = LoadedModel::open(&self.engine.store, &name, threads)?;
        *lock(&self.engine.model) = Some(Arc::new(loaded));
        Ok(())
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        lock(&self.engine.model).take();
        Ok(())
    }

    fn status(&self) -> String {
        self.engine
            .model()
            .map_or("not loaded".into(), |m| describe(&m))
    }

    fn health(&self) -> Health {
        match self.engine.model() {
            None => Health::NotLoaded,
            Some(m) => match m.forward_one() {
                Ok(s) => Health::Ok(s),
                Err(e) => Health::Unhealthy(e),
            },
        }
    }
}

struct TokenizerModule {
    spec: &'static ModuleSpec,
    engine: Arc<Engine>,
}

impl Module for TokenizerModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let name = text(config, "model");
        let model = self.engine.model();
        let loaded = match model {
            // The model module's file is already open and checked: share it.
            Some(m) if name.is_empty() || name == m.name => m,
            None if name.is_empty() => {
                return Err(ModuleError::Config(
                    "no model module is loaded to take the tokenizer from: load it first, or --set model=NAME"
                        .into(),
                ))
            }
            _ => Arc::new(LoadedModel::open(&self.engine.store, &name, Some(1))?),
        };
        *lock(&self.engine.tokenizer) = Some(loaded);
        Ok(())
    }

    /// "The model module's model" is written down as that model's name, so a restart (or a later model
    /// change) keeps this tokenizer.
    fn resolved_config(&self, config: &ModuleConfig) -> ModuleConfig {
        let mut c = config.clone();
        if let Some(t) = self.engine.tokenizer() {
            c.insert("model".into(), Value::Str(t.name.clone()));
        }
        c
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        lock(&self.engine.tokenizer).take();
        Ok(())
    }

    fn status(&self) -> String {
        let Some(m) = self.engine.tokenizer() else {
            return "not loaded".into();
        };
        match m.config() {
            Ok(c) => format!("from {} ({} tokens)", m.name, c.vocab_size),
            Err(e) => e,
        }
    }

    /// Encodes and decodes a sentence; the bytes must come back unchanged.
    fn health(&self) -> Health {
        let Some(m) = self.engine.tokenizer() else {
            return Health::NotLoaded;
        };
        let check = || -> Result<String, String> {
            let parsed = m.file.parse().map_err(|e| e.to_string())?;
            let tok = Tokenizer::from_file(&parsed).map_err(|e| e.to_string())?;
            let sample = "The quick brown fox, 42 times.";
            let ids = enigma_runtime::tokenize::encode(&tok, sample, true, false)
                .map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            for w in ids.windows(2) {
                back.extend_from_slice(tok.decode(w[0], w[1]));
            }
            if back == sample.as_bytes() {
                Ok(format!("round trip of {} tokens", ids.len()))
            } else {
                Err(format!(
                    "round trip changed the text to {:?}",
                    String::from_utf8_lossy(&back)
                ))
            }
        };
        match check() {
            Ok(s) => Health::Ok(s),
            Err(e) => Health::Unhealthy(e),
        }
    }
}

struct InferenceModule {
    spec: &'static ModuleSpec,
    engine: Arc<Engine>,
}

impl Module for InferenceModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let model = self
            .engine
            .model()
            .ok_or_else(|| ModuleError::Failed("the model module is not loaded".into()))?;
        let tokenizer = self
            .engine
            .tokenizer()
            .ok_or_else(|| ModuleError::Failed("the tokenizer module is not loaded".into()))?;
        let (mv, tv) = (
            model.config().map_err(ModuleError::Failed)?.vocab_size,
            tokenizer.config().map_err(ModuleError::Failed)?.vocab_size,
        );
        if mv != tv {
            return Err(ModuleError::Failed(format!(
                "the tokenizer (from {}, {tv} tokens) does not fit the model ({}, {mv} tokens)",
                tokenizer.name, model.name
            )));
        }
        let sampling = SamplerConfig {
            temperature: float(config, "temperature", 0.8) as f32,
            top_k: int(config, "top_k", 0) as u32,
            top_p: float(config, "top_p", 0.9) as f32,
            repetition_penalty: float(config, "repeat_penalty", 1.0) as f32,
            repeat_last_n: 64,
            seed: int(config, "seed", 0) as u64,
        };
        let inference = Inference {
            model,
            tokenizer,
            sampling,
            max_tokens: int(config, "max_tokens", 256) as usize,
        };
        *lock(&self.engine.inference) = Some(Arc::new(inference));
        Ok(())
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        lock(&self.engine.inference).take();
        Ok(())
    }

    fn status(&self) -> String {
        self.engine.inference().map_or("not loaded".into(), |i| {
            format!(
                "generating with {} (temperature {}, top-p {}, up to {} tokens)",
                i.model.name, i.sampling.temperature, i.sampling.top_p, i.max_tokens
            )
        })
    }

    fn health(&self) -> Health {
        match self.engine.inference() {
            None => Health::NotLoaded,
            Some(i) => match i.generate("", Some(1), Some(0.0)) {
                Ok(_) => Health::Ok("generated one token".into()),
                Err(e) => Health::Unhealthy(e),
            },
        }
    }
}

/// Code generation by prompting the local model.
pub struct CodeGen {
    inference: Arc<Inference>,
    pub language: String,
    pub max_tokens: usize,
    pub temperature: f32,
}

impl CodeGen {
    /// The prompt the local model is given for a request.
    pub fn prompt(&self, request: &str, language: Option<&str>) -> String {
        let lang = language.unwrap_or(&self.language);
        format!("# Language: {lang}\n# Task: {request}\n# Solution:\n")
    }

    /// The model's continuation of [`CodeGen::prompt`]. A small or untrained model writes what it can; the
    /// module does not dress that up.
    pub fn generate(&self, request: &str, language: Option<&str>) -> Result<String, String> {
        self.inference.generate(
            &self.prompt(request, language),
            Some(self.max_tokens),
            Some(self.temperature),
        )
    }
}

struct CodeGenModule {
    spec: &'static ModuleSpec,
    engine: Arc<Engine>,
}

impl Module for CodeGenModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let inference = self
            .engine
            .inference()
            .ok_or_else(|| ModuleError::Failed("the inference module is not loaded".into()))?;
        let code_gen = CodeGen {
            inference,
            language: text(config, "language"),
            max_tokens: int(config, "max_tokens", 512) as usize,
            temperature: float(config, "temperature", 0.2) as f32,
        };
        *lock(&self.engine.code_gen) = Some(Arc::new(code_gen));
        Ok(())
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        lock(&self.engine.code_gen).take();
        Ok(())
    }

    fn status(&self) -> String {
        self.engine.code_gen().map_or("not loaded".into(), |c| {
            format!(
                "prompting {} for {} code (up to {} tokens)",
                c.inference.model.name, c.language, c.max_tokens
            )
        })
    }

    fn health(&self) -> Health {
        match self.engine.code_gen() {
            None => Health::NotLoaded,
            Some(c) => {
                match c
                    .inference
                    .generate(&c.prompt("print hello", None), Some(1), Some(0.0))
                {
                    Ok(_) => Health::Ok("the local model answers a code prompt".into()),
                    Err(e) => Health::Unhealthy(e),
                }
            }
        }
    }
}
