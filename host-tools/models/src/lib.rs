//! The model manager: one folder per model under the models directory (`ENIGMA_HOME`, default `./models`).
//!
//! ```text
//! ENIGMA_HOME/
//!   models.json          registry: a cache of what the folders hold, rebuilt when it disagrees
//!   NAME/
//!     model.enigma       the weights and tokenizer
//!     config.json        the model's shape (and its preset, when it has one)
//!     metadata.json      created, trained steps, data, losses, history
//!     checkpoint.bin     when it was trained here (`enigma train --out` this folder, or the training
//!                        module): what `--resume` continues; train_log.jsonl, loss.svg and the like beside it
//!     .lock              the folder's OS lock (see `enigma_runtime::lock`)
//! ```
//!
//! Only this module deletes, renames or resizes a folder, and each of those holds the folder's lock, so a
//! model being trained or served is never pulled from under its user. docs/MODELS.md is the user's guide.

pub mod init;
pub mod llama2c;

/// The model `enigma run` and `enigma chat` use when no `--model` is given: a nano model trained by
/// `enigma train` on tinyshakespeare (the command is in README.md), so the first command works anywhere.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../../models/default/model.enigma");
/// How errors and messages name [`DEFAULT_MODEL`].
pub const DEFAULT_MODEL_NAME: &str = "the built-in default model (models/default/model.enigma)";

use enigma_core::config::{Config, Preset, PRESETS};
use enigma_core::format::{Header, MAGIC, PRELUDE_LEN, VERSION};
use enigma_runtime::{LockError, ModelFile, ModelLock, ModelWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use enigma_runtime::lock::MODEL_FILE;
pub const CONFIG_FILE: &str = "config.json";
pub const META_FILE: &str = "metadata.json";
/// The training checkpoint `enigma train` writes into its output folder (here, when that is a model's folder).
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
pub const REGISTRY_FILE: &str = "models.json";
const REGISTRY_LOCK: &str = ".models.lock";

pub use enigma_runtime::lock::HOLD_LOCK_ENV;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no model named '{name}' in {} (see `enigma models list`)", home.display())]
    NotFound { name: String, home: PathBuf },
    #[error("a model named '{name}' already exists in {}", home.display())]
    Exists { name: String, home: PathBuf },
    #[error("'{0}' is not a usable model name: use letters, digits, '.', '_' and '-' (at most 64), not starting with '.' or '-'")]
    BadName(String),
    #[error("no preset named '{0}'; the presets are {presets}", presets = preset_names())]
    UnknownPreset(String),
    #[error("model '{name}': {source}")]
    Locked { name: String, source: LockError },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] enigma_runtime::Error),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn preset(name: &str) -> Result<Preset> {
    Preset::by_name(name).ok_or_else(|| ModelError::UnknownPreset(name.to_string()))
}

/// The models directory: `ENIGMA_HOME`, or `./models`.
pub fn home() -> PathBuf {
    std::env::var_os("ENIGMA_HOME").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A model name is a folder name on every OS, so it is kept to a portable set of characters.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadName(name.to_string()))
    }
}

/// `config.json`: the model's shape, and the preset it was made from, if any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub preset: Option<String>,
    #[serde(flatten)]
    pub config: Config,
}

/// One point of a loss curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: u64,
    pub loss: f32,
}

/// `metadata.json`. Fields this version does not know (written by a newer trainer) are kept on rewrite.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub created_unix: u64,
    #[serde(default)]
    pub preset: Option<String>,
    /// Where the weights came from: "random init (seed 42)", "converted from stories (nano -> micro)", ...
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub trained_steps: u64,
    /// Training data files, in the order they were used.
    #[serde(default)]
    pub data: Vec<String>,
    #[serde(default)]
    pub losses: Vec<LossPoint>,
    /// What the model manager has done to this model, oldest first.
    #[serde(default)]
    pub history: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    fn note(&mut self, what: impl Into<String>) {
        self.history
            .push(format!("{}: {}", now_unix(), what.into()));
    }
}

/// What the first bytes of a `.enigma` file say, read without touching its tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct Peek {
    pub config: Config,
    pub source: String,
    pub created_unix: u64,
    pub file_len: u64,
}

/// Reads and checks the prelude and header of a model file (not its data): cheap for any size.
pub fn peek(path: &Path) -> Result<Peek> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    enigma_runtime::load::ensure_regular_file(path)?;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let file_len = f.metadata().map_err(io(path))?.len();
    let mut prelude = [0u8; PRELUDE_LEN];
    f.read_exact(&mut prelude)
        .map_err(|_| corrupt("too short to be a .enigma file".into()))?;
    let u32_at =
        |i: usize| u32::from_le_bytes([prelude[i], prelude[i + 1], prelude[i + 2], prelude[i + 3]]);
    if prelude[..4] != MAGIC {
        return Err(corrupt("not a .enigma file (bad magic)".into()));
    }
    if u32_at(4) != VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {VERSION})",
            u32_at(4)
        )));
    }
    let len = u32_at(8) as u64;
    if PRELUDE_LEN as u64 + len > file_len {
        return Err(corrupt("the header runs past the end of the file".into()));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(io(path))?;
    if crc32fast::hash(&header) != u32_at(12) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let h: Header<'_> =
        postcard::from_bytes(&header).map_err(|_| corrupt("the header does not decode".into()))?;
    h.config
        .validate()
        .map_err(|e| corrupt(format!("config: {e}")))?;
    Ok(Peek {
        config: h.config,
        source: h.provenance.source.to_string(),
        created_unix: h.provenance.created_unix,
        file_len,
    })
}

/// The registry file: what each model folder held when it was last looked at.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    pub models: BTreeMap<String, RegistryEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub preset: Option<String>,
    pub params: u64,
    pub vocab_size: u32,
    pub file_bytes: u64,
    pub created_unix: u64,
    pub trained_steps: u64,
}

/// One folder under the models directory, as found.
#[derive(Clone, Debug)]
pub struct Found {
    pub name: String,
    pub dir: PathBuf,
    /// The registry entry, or why the folder is not a usable model.
    pub entry: Result<RegistryEntry, String>,
}

/// The models directory.
#[derive(Clone, Debug)]
pub struct ModelStore {
    home: PathBuf,
}

/// The folder lock, and (in tests) the pause that lets another process meet it.
fn lock(dir: &Path, name: &str, purpose: &str) -> Result<ModelLock> {
    let lock = ModelLock::acquire(dir, purpose).map_err(|source| ModelError::Locked {
        name: name.to_string(),
        source,
    })?;
    enigma_runtime::lock::hold_for_tests();
    Ok(lock)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    Ok(enigma_runtime::fsutil::atomic_write(path, text.as_bytes())?)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Options of `create`.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Take the tokenizer (and so the vocabulary size) of this model name or `.enigma` path.
    pub tokenizer: Option<String>,
    /// Seed of the initial weights; the clock when `None`.
    pub seed: Option<u64>,
}

/// How a resized model is written.
#[derive(Clone, Debug)]
pub enum ConvertTarget {
    /// Replace the model's own weights.
    InPlace,
    /// Write a new model of this name; the original is untouched.
    New(String),
}

impl ModelStore {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        ModelStore { home: home.into() }
    }

    /// The store at [`home`].
    pub fn open_default() -> Self {
        Self::new(home())
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.home.join(name)
    }

    /// The folder of an existing model.
    pub fn existing(&self, name: &str) -> Result<PathBuf> {
        check_name(name).map_err(|_| self.not_found(name))?;
        let dir = self.dir(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(self.not_found(name))
        }
    }

    fn not_found(&self, name: &str) -> ModelError {
        ModelError::NotFound {
            name: name.to_string(),
            home: self.home.clone(),
        }
    }

    /// A model's `.enigma` file: `name` is a model in this store, or a path to a `.enigma` file.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        let p = Path::new(name_or_path);
        if name_or_path.ends_with(".enigma") || p.components().count() > 1 {
            return if p.is_file() {
                Ok(p.to_path_buf())
            } else {
                Err(ModelError::Io {
                    path: p.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
                })
            };
        }
        let file = self.existing(name_or_path)?.join(MODEL_FILE);
        if file.is_file() {
            Ok(file)
        } else {
            Err(ModelError::Corrupt {
                path: file,
                reason: "the model folder has no model.enigma".into(),
            })
        }
    }

    pub fn metadata(&self, name: &str) -> Result<Metadata> {
        let path = self.existing(name)?.join(META_FILE);
        if path.exists() {
            read_json(&path)
        } else {
            Ok(Metadata::default())
        }
    }

    /// Every folder under the models directory, hidden ones (work in progress) excepted, by name.
    pub fn scan(&self) -> Result<Vec<Found>> {
        let rd = match std::fs::read_dir(&self.home) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.home)(e)),
        };
        let mut found = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io(&self.home))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !ent.path().is_dir() {
                continue;
            }
            let dir = ent.path();
            let entry = Self::entry(&dir).map_err(|e| e.to_string());
            found.push(Found { name, dir, entry });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn entry(dir: &Path) -> Result<RegistryEntry> {
        let file = dir.join(MODEL_FILE);
        if !file.is_file() {
            return Err(ModelError::Corrupt {
                path: dir.to_path_buf(),
                reason: "no model.enigma in this folder".into(),
            });
        }
        let peek = peek(&file)?;
        let meta_path = dir.join(META_FILE);
        let meta: Metadata = if meta_path.exists() {
            read_json(&meta_path)?
        } else {
            Metadata::default()
        };
        let preset = meta.preset.clone().or_else(|| {
            PRESETS
                .iter()
                .find(|p| p.config(peek.config.vocab_size) == peek.config)
                .map(|p| p.name.to_string())
        });
        Ok(RegistryEntry {
            preset,
            params: peek.config.param_count(),
            vocab_size: peek.config.vocab_size,
            file_bytes: peek.file_len,
            created_unix: if meta.created_unix != 0 {
                meta.created_unix
            } else {
                peek.created_unix
            },
            trained_steps: meta.trained_steps,
        })
    }

    /// Brings the registry file in line with the folders. Returns the folders found and, when the file
    /// disagreed with them, what was wrong with it (the caller says so).
    pub fn reconcile(&self) -> Result<(Vec<Found>, Option<String>)> {
        let found = self.scan()?;
        let want = Registry {
            version: 1,
            models: found
                .iter()
                .filter_map(|f| Some((f.name.clone(), f.entry.clone().ok()?)))
                .collect(),
        };
        let path = self.home.join(REGISTRY_FILE);
        let note = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if want.models.is_empty() {
                    return Ok((found, None));
                }
                Some(format!("{} was missing", path.display()))
            }
            Err(e) => Some(format!("{} could not be read ({e})", path.display())),
            Ok(text) => match serde_json::from_str::<Registry>(&text) {
                Err(e) => Some(format!("{} was unreadable ({e})", path.display())),
                Ok(have) if have == want => None,
                Ok(have) => Some(describe_difference(&path, &have, &want)),
            },
        };
        if let Some(note) = note {
            // Another process rebuilding it at this moment writes the same thing; leave it to that one.
            match ModelLock::acquire_file(&self.home.join(REGISTRY_LOCK), &path, "rebuild") {
                Ok(_guard) => write_json(&path, &want)?,
                Err(LockError::Held { .. }) => {}
                Err(e) => {
                    return Err(ModelError::Refused(e.to_string()));
                }
            }
            return Ok((
                found,
                Some(format!("{note}; rebuilt it from the model folders")),
            ));
        }
        Ok((found, None))
    }

    /// Makes a fresh, randomly initialised model of `preset_name` named `name`.
    pub fn create(&self, name: &str, preset_name: &str, opts: &CreateOptions) -> Result<PathBuf> {
        check_name(name)?;
        let preset = preset(preset_name)?;
        self.refuse_existing(name)?;
        let tokenizer = match &opts.tokenizer {
            None => init::byte_tokenizer(),
            Some(from) => {
                let file = ModelFile::open(self.resolve(from)?)?;
                let parsed = file.parse()?;
                init::tokenizer_of(&parsed).map_err(enigma_runtime::Error::from)?
            }
        };
        let config = preset.config(tokenizer.pieces.len() as u32);
        check_memory(&config, &format!("creating a {} model", preset.name))?;
        let seed = opts.seed.unwrap_or_else(clock_seed);
        let params = init::random_params(&config, seed);
        let source = format!("random init (seed {seed})");
        let mut writer = ModelWriter::new(config, tokenizer);
        writer
            .provenance(format!("created:{}", preset.name), source.clone())
            .f32_params(&params)?;
        let mut meta = Metadata {
            created_unix: now_unix(),
            preset: Some(preset.name.to_string()),
            source,
            ..Metadata::default()
        };
        meta.note(format!("created from preset {}", preset.name));
        self.publish(name, |stage| {
            writer.write(stage.join(MODEL_FILE))?;
            write_config(stage, Some(preset.name), &config)?;
            write_json(&stage.join(META_FILE), &meta)
        })
    }

    fn refuse_existing(&self, name: &str) -> Result<()> {
        if self.dir(name).exists() {
            return Err(ModelError::Exists {
                name: name.to_string(),
                home: self.home.clone(),
            });
        }
        Ok(())
    }

    /// Builds a model folder out of sight (`.NAME.new-PID`) and moves it into place in one rename, so a
    /// crash never leaves a half-made model and two makers of one name cannot both win.
    fn publish(&self, name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.home).map_err(io(&self.home))?;
        let stage = self
            .home
            .join(format!(".{name}.new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        let made = std::fs::create_dir(&stage)
            .map_err(io(&stage))
            .and_then(|_| build(&stage))
            .and_then(|_| self.refuse_existing(name));
        let dir = self.dir(name);
        let result = made.and_then(|_| {
            // rename(2) onto an existing non-empty folder fails, so the loser of a race is refused here.
            std::fs::rename(&stage, &dir).map_err(|e| {
                if dir.exists() {
                    ModelError::Exists {
                        name: name.to_string(),
                        home: self.home.clone(),
                    }
                } else {
                    io(&dir)(e)
                }
            })
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&stage);
        }
        result?;
        self.reconcile_quietly();
        Ok(dir)
    }

    /// After a change the registry is rewritten; a failure there is not the change's failure (the folders
    /// are the truth and the next command rebuilds the registry), but it is said.
    fn reconcile_quietly(&self) {
        if let Err(e) = self.reconcile() {
            eprintln!("warning: the models registry was not updated: {e}");
        }
    }

    /// Deletes a model, refusing while anything (training, serving) holds its lock.
    pub fn delete(&self, name: &str) -> Result<()> {
        let dir = self.existing(name)?;
        let guard = lock(&dir, name, "delete")?;
        // Out of sight first, in one rename: nobody sees a half-deleted model.
        let gone = self
            .home
            .join(format!(".{name}.deleted-{}", std::process::id()));
        std::fs::rename(&dir, &gone).map_err(io(&dir))?;
        drop(guard);
        std::fs::remove_dir_all(&gone).map_err(io(&gone))?;
        self.reconcile_quietly();
        Ok(())
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<PathBuf> {
        let dir = self.existing(from)?;
        check_name(to)?;
        let _guard = lock(&dir, from, "rename")?;
        self.refuse_existing(to)?;
        let dest = self.dir(to);
        std::fs::rename(&dir, &dest).map_err(io(&dir))?;
        self.add_history(&dest, format!("renamed from {from}"))?;
        self.reconcile_quietly();
        Ok(dest)
    }

    /// Copies a model (weights, config, metadata, checkpoints) under a new name. The source is locked
    /// meanwhile so a trainer cannot write half of what is copied.
    pub fn copy(&self, from: &str, to: &str) -> Result<PathBuf> {
        let dir = self.existing(from)?;
        check_name(to)?;
        self.refuse_existing(to)?;
        let _guard = lock(&dir, from, "copy")?;
        self.publish(to, |stage| {
            copy_tree(&dir, stage)?;
            self.add_history(stage, format!("copied from {from}"))
        })
    }

    fn add_history(&self, dir: &Path, what: String) -> Result<()> {
        let path = dir.join(META_FILE);
        let mut meta: Metadata = if path.exists() {
            read_json(&path)?
        } else {
            Metadata::default()
        };
        meta.note(what);
        write_json(&path, &meta)
    }

    /// Resizes a model to another preset (docs/MODELS.md: the overlapping slices are copied, the rest
    /// initialised fresh). The vocabulary, tokenizer, RoPE theta, norm epsilon and classifier tying stay.
    pub fn convert(
        &self,
        name: &str,
        preset_name: &str,
        target: &ConvertTarget,
        seed: Option<u64>,
    ) -> Result<PathBuf> {
        let dir = self.existing(name)?;
        let preset = preset(preset_name)?;
        if let ConvertTarget::New(to) = target {
            check_name(to)?;
            self.refuse_existing(to)?;
        }
        let _guard = lock(&dir, name, "convert")?;
        let file = ModelFile::open(dir.join(MODEL_FILE))?;
        let parsed = file.parse()?;
        let old = *parsed.config();
        let mut config = preset.config(old.vocab_size);
        config.rope_theta = old.rope_theta;
        config.norm_eps = old.norm_eps;
        config.tied_classifier = old.tied_classifier;
        if config == old {
            return Err(ModelError::Refused(format!(
                "model '{name}' already has the shape of preset {}",
                preset.name
            )));
        }
        check_memory(&config, &format!("converting to {}", preset.name))?;
        let seed = seed.unwrap_or_else(clock_seed);
        let params =
            init::resize_params(&parsed, &config, seed).map_err(enigma_runtime::Error::from)?;
        let tokenizer = init::tokenizer_of(&parsed).map_err(enigma_runtime::Error::from)?;
        let old_shape = describe_shape(&old);
        let what = format!(
            "converted from {name} ({old_shape}) to preset {} (overlap copied, rest initialised with seed {seed})",
            preset.name
        );
        let mut writer = ModelWriter::new(config, tokenizer);
        writer
            .provenance(parsed.header().provenance.source.to_string(), what.clone())
            .f32_params(&params)?;
        let meta_path = dir.join(META_FILE);
        let mut meta: Metadata = if meta_path.exists() {
            read_json(&meta_path)?
        } else {
            Metadata::default()
        };
        meta.preset = Some(preset.name.to_string());
        meta.note(what);
        match target {
            ConvertTarget::InPlace => {
                // The old mapping must be gone before its file is replaced (Windows refuses otherwise).
                drop(parsed);
                drop(file);
                writer.write(dir.join(MODEL_FILE))?;
                write_config(&dir, Some(preset.name), &config)?;
                write_json(&meta_path, &meta)?;
                self.reconcile_quietly();
                Ok(dir)
            }
            ConvertTarget::New(to) => {
                meta.created_unix = now_unix();
                meta.source = format!("converted from {name}");
                self.publish(to, |stage| {
                    writer.write(stage.join(MODEL_FILE))?;
                    write_config(stage, Some(preset.name), &config)?;
                    write_json(&stage.join(META_FILE), &meta)
                })
            }
        }
    }
}

impl ModelStore {
    /// Records a training run in the trained model's folder: steps, data, the final loss and where it came
    /// from in metadata.json, and config.json from the weights' shape. `from` is the model it started from.
    pub fn record_training(
        &self,
        name: &str,
        from: &str,
        steps: u64,
        data: &[PathBuf],
        loss: f64,
    ) -> Result<()> {
        let dir = self.existing(name)?;
        let peeked = peek(&dir.join(MODEL_FILE))?;
        let meta_path = dir.join(META_FILE);
        let mut meta: Metadata = if meta_path.exists() {
            read_json(&meta_path)?
        } else {
            Metadata::default()
        };
        if meta.created_unix == 0 {
            meta.created_unix = now_unix();
        }
        let start = if name == from || !meta.source.is_empty() {
            meta.trained_steps
        } else {
            // A new model starts from what its parent had.
            let parent = self.metadata(from).unwrap_or_default();
            meta.preset = parent.preset.clone();
            meta.data = parent.data.clone();
            meta.losses = parent.losses.clone();
            meta.source = format!("fine-tuned from {from}");
            parent.trained_steps
        };
        meta.trained_steps = start + steps;
        meta.data
            .extend(data.iter().map(|p| p.display().to_string()));
        meta.losses.push(LossPoint {
            step: meta.trained_steps,
            loss: loss as f32,
        });
        meta.note(format!("trained {steps} steps from {from}"));
        let preset = meta.preset.clone().or_else(|| {
            PRESETS
                .iter()
                .find(|p| p.config(peeked.config.vocab_size) == peeked.config)
                .map(|p| p.name.to_string())
        });
        write_config(&dir, preset.as_deref(), &peeked.config)?;
        write_json(&meta_path, &meta)?;
        self.reconcile_quietly();
        Ok(())
    }
}

fn write_config(dir: &Path, preset: Option<&str>, config: &Config) -> Result<()> {
    write_json(
        &dir.join(CONFIG_FILE),
        &ConfigFile {
            preset: preset.map(str::to_string),
            config: *config,
        },
    )
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

pub fn describe_shape(c: &Config) -> String {
    format!(
        "dim {} layers {} heads {}/{} ffn {} vocab {} seq {}",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim, c.vocab_size, c.seq_len
    )
}

/// Making a model holds, at its peak, its f32 parameters, each tensor encoded, the tensors joined and the
/// file: four copies. Refuse rather than abort, swap or be killed when the machine does not have that.
fn check_memory(config: &Config, what: &str) -> Result<()> {
    let need = config.param_count().saturating_mul(16);
    enigma_runtime::hardware::ensure_available(need, what)
        .map_err(|e| ModelError::Refused(e.to_string()))
}

/// Copies a model folder, leaving out its lock file (the copy is not locked by the source's holder).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for ent in std::fs::read_dir(from).map_err(io(from))? {
        let ent = ent.map_err(io(from))?;
        let name = ent.file_name();
        if name == enigma_runtime::lock::LOCK_FILE {
            continue;
        }
        let (src, dst) = (ent.path(), to.join(&name));
        let ty = ent.file_type().map_err(io(&src))?;
        if ty.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

fn describe_difference(path: &Path, have: &Registry, want: &Registry) -> String {
    let missing: Vec<&str> = want
        .models
        .keys()
        .filter(|k| !have.models.contains_key(*k))
        .map(String::as_str)
        .collect();
    let stale: Vec<&str> = have
        .models
        .keys()
        .filter(|k| !want.models.contains_key(*k))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = want
        .models
        .iter()
        .filter(|(k, v)| have.models.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut parts = Vec::new();
    for (what, list) in [
        ("missing", missing),
        ("no longer there", stale),
        ("out of date", changed),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}: {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        parts.push("format differs".into());
    }
    format!(
        "{} disagreed with the model folders ({})",
        path.display(),
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("models"));
        (dir, store)
    }

    fn seeded() -> CreateOptions {
        CreateOptions {
            seed: Some(1),
            ..CreateOptions::default()
        }
    }

    #[test]
    fn create_makes_a_loadable_model_with_config_and_metadata() {
        let (_t, s) = store();
        let dir = s.create("m1", "nano", &seeded()).unwrap();
        let file = ModelFile::open(dir.join(MODEL_FILE)).unwrap();
        let model = file.model(enigma_core::kernels::kernels()).unwrap();
        assert_eq!(model.transformer.config.vocab_size, 259);
        assert_eq!(model.transformer.config.dim, 128);
        let cfg: ConfigFile = read_json(&dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(cfg.preset.as_deref(), Some("nano"));
        assert_eq!(cfg.config, model.transformer.config);
        let meta = s.metadata("m1").unwrap();
        assert_eq!(meta.preset.as_deref(), Some("nano"));
        assert!(meta.source.contains("seed 1"));
        // A fresh model has no training run, so no checkpoint and no empty folder waiting for one.
        assert!(!dir.join(CHECKPOINT_FILE).exists());
        assert!(!dir.join("checkpoints").exists());
        let peeked = peek(&dir.join(MODEL_FILE)).unwrap();
        assert_eq!(peeked.config, cfg.config);
        // Nothing is left behind by the staging folder.
        let hidden: Vec<_> = std::fs::read_dir(s.home())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        let err = s.create("m1", "nano", &seeded()).unwrap_err();
        assert!(matches!(err, ModelError::Exists { .. }), "{err}");
        assert!(matches!(
            s.create("x", "enormous", &seeded()),
            Err(ModelError::UnknownPreset(_))
        ));
        assert!(matches!(
            s.create("../x", "nano", &seeded()),
            Err(ModelError::BadName(_))
        ));
    }

    #[test]
    fn registry_is_rebuilt_when_it_disagrees_and_says_so() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        let (found, note) = s.reconcile().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(note, None, "create already wrote it");
        // A folder copied in by hand, and the registry edited by hand.
        copy_tree(&s.dir("a"), &{
            let d = s.dir("b");
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .unwrap();
        let (_, note) = s.reconcile().unwrap();
        let note = note.unwrap();
        assert!(note.contains("missing: b"), "{note}");
        assert_eq!(s.reconcile().unwrap().1, None);
        std::fs::write(s.home().join(REGISTRY_FILE), "{oops").unwrap();
        assert!(s.reconcile().unwrap().1.unwrap().contains("unreadable"));
        std::fs::remove_dir_all(s.dir("a")).unwrap();
        assert!(s
            .reconcile()
            .unwrap()
            .1
            .unwrap()
            .contains("no longer there: a"));
        // A broken folder is listed with its reason and kept out of the registry.
        std::fs::create_dir_all(s.dir("broken")).unwrap();
        let (found, _) = s.reconcile().unwrap();
        let broken = found.iter().find(|f| f.name == "broken").unwrap();
        assert!(broken
            .entry
            .as_ref()
            .unwrap_err()
            .contains("no model.enigma"));
        let reg: Registry = read_json(&s.home().join(REGISTRY_FILE)).unwrap();
        assert_eq!(reg.models.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn delete_rename_and_copy_respect_the_lock() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        let held = ModelLock::acquire(s.dir("a"), "training").unwrap();
        for err in [
            s.delete("a").unwrap_err(),
            s.rename("a", "b").unwrap_err(),
            s.copy("a", "c").unwrap_err(),
            s.convert("a", "micro", &ConvertTarget::InPlace, Some(1))
                .unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, ModelError::Locked { .. }), "{msg}");
            assert!(msg.contains("this process (training)"), "{msg}");
        }
        assert!(s.dir("a").join(MODEL_FILE).is_file());
        drop(held);
        s.copy("a", "c").unwrap();
        assert!(s
            .metadata("c")
            .unwrap()
            .history
            .last()
            .unwrap()
            .contains("copied from a"));
        assert!(!s.dir("c").join(".lock").exists());
        s.rename("a", "b").unwrap();
        assert!(!s.dir("a").exists());
        assert!(s
            .metadata("b")
            .unwrap()
            .history
            .last()
            .unwrap()
            .contains("renamed from a"));
        assert!(matches!(s.rename("b", "c"), Err(ModelError::Exists { .. })));
        s.delete("b").unwrap();
        assert!(!s.dir("b").exists());
        assert!(matches!(s.delete("b"), Err(ModelError::NotFound { .. })));
        let reg: Registry = read_json(&s.home().join(REGISTRY_FILE)).unwrap();
        assert_eq!(reg.models.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn convert_resizes_explicitly_and_keeps_the_tokenizer() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        let to = ConvertTarget::New("a-micro".into());
        let dir = s.convert("a", "micro", &to, Some(2)).unwrap();
        let f = ModelFile::open(dir.join(MODEL_FILE)).unwrap();
        let c = *f.parse().unwrap().config();
        assert_eq!((c.dim, c.n_layers, c.vocab_size), (192, 4, 259));
        f.model(enigma_core::kernels::kernels()).unwrap();
        let meta = s.metadata("a-micro").unwrap();
        assert_eq!(meta.preset.as_deref(), Some("micro"));
        assert!(meta.history.last().unwrap().contains("converted from a"));
        // The original is untouched; converting to its own shape is refused.
        assert_eq!(peek(&s.dir("a").join(MODEL_FILE)).unwrap().config.dim, 128);
        let err = s
            .convert("a", "nano", &ConvertTarget::InPlace, None)
            .unwrap_err();
        assert!(err.to_string().contains("already has the shape"), "{err}");
        s.convert("a", "tiny", &ConvertTarget::InPlace, Some(3))
            .unwrap();
        assert_eq!(peek(&s.dir("a").join(MODEL_FILE)).unwrap().config.dim, 256);
        let cfg: ConfigFile = read_json(&s.dir("a").join(CONFIG_FILE)).unwrap();
        assert_eq!(cfg.preset.as_deref(), Some("tiny"));
    }

    #[test]
    fn create_can_take_another_models_tokenizer() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        let opts = CreateOptions {
            tokenizer: Some("a".into()),
            seed: Some(5),
        };
        let dir = s.create("b", "micro", &opts).unwrap();
        assert_eq!(peek(&dir.join(MODEL_FILE)).unwrap().config.vocab_size, 259);
        let bad = CreateOptions {
            tokenizer: Some("nope".into()),
            seed: None,
        };
        assert!(matches!(
            s.create("c", "nano", &bad),
            Err(ModelError::NotFound { .. })
        ));
    }

    #[test]
    fn metadata_keeps_fields_it_does_not_know() {
        let text = r#"{"created_unix": 5, "trained_steps": 100, "losses": [{"step": 1, "loss": 2.5}], "optimizer": {"lr": 0.0003}}"#;
        let mut meta: Metadata = serde_json::from_str(text).unwrap();
        assert_eq!(meta.trained_steps, 100);
        meta.note("x");
        let back = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["optimizer"]["lr"], 0.0003);
    }

    #[test]
    fn peek_refuses_what_is_not_a_model() {
        let (_t, s) = store();
        std::fs::create_dir_all(s.home()).unwrap();
        let p = s.home().join("x.enigma");
        std::fs::write(&p, b"ENGM").unwrap();
        assert!(peek(&p).unwrap_err().to_string().contains("too short"));
        std::fs::write(&p, [b'X'; 64]).unwrap();
        assert!(peek(&p).unwrap_err().to_string().contains("bad magic"));
    }
}
