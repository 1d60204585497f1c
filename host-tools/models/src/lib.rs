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

mod bpe;
pub mod ct2;
pub mod gguf;
pub mod hf;
pub mod init;
pub mod llama2c;
pub mod whisper;

/// The model `enigma run` and `enigma chat` use when no `--model` is given: the tiny preset trained by
/// `enigma train` on the King James Bible and stored as q8_0 (the commands are in README.md), so the
/// first command works anywhere and prints English.
/// Its files sit in this crate's `builtin/`, outside any models home, so no model command can touch them.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../builtin/model.enigma");
/// How errors and messages name [`DEFAULT_MODEL`].
pub const DEFAULT_MODEL_NAME: &str = "the built-in model 'default'";
/// The name that means [`DEFAULT_MODEL`] wherever a model is named (`-m default`, `model=default`); no
/// model of the store may take it.
pub const BUILTIN_NAME: &str = "default";

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
    /// The built-in model was named where only a model of the store will do.
    #[error("'{BUILTIN_NAME}' is the built-in model, built into the binary: {0}")]
    BuiltIn(&'static str),
    #[error("{} is a directory, not a model file (no {MODEL_FILE} in it)", .0.display())]
    NotAModel(PathBuf),
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
    /// The writer's notes (`enigma train` writes its step here: [`training_note`]).
    pub notes: String,
    pub created_unix: u64,
    pub file_len: u64,
}

impl Peek {
    /// The optimizer steps the file's writer recorded (`enigma train`), if it did.
    pub fn trained_steps(&self) -> Option<u64> {
        self.notes
            .strip_prefix(TRAINING_NOTE)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

const TRAINING_NOTE: &str = "enigma train, step ";

/// The provenance note `enigma train` writes into a model: [`Peek::trained_steps`] reads it back.
pub fn training_note(step: u64) -> String {
    format!("{TRAINING_NOTE}{step}")
}

/// Reads and checks the prelude and header of a model file (not its data): cheap for any size.
pub fn peek(path: &Path) -> Result<Peek> {
    if path.is_dir() && hf::is_hf_dir(path) {
        return hf::peek(path).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        });
    }
    enigma_runtime::load::ensure_regular_file(path)?;
    if gguf::is_gguf(path) {
        return gguf::peek(path).map_err(|e| ModelError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        });
    }
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let file_len = f.metadata().map_err(io(path))?.len();
    peek_from(&mut f, file_len, path)
}

/// [`peek`] of the built-in model.
pub fn peek_builtin() -> Result<Peek> {
    peek_from(
        &mut std::io::Cursor::new(DEFAULT_MODEL),
        DEFAULT_MODEL.len() as u64,
        Path::new(DEFAULT_MODEL_NAME),
    )
}

fn peek_from(f: &mut impl Read, file_len: u64, path: &Path) -> Result<Peek> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
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
        notes: h.provenance.notes.to_string(),
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
    /// `None` when nothing recorded them (an imported model, say).
    pub trained_steps: Option<u64>,
}

/// One model under the models directory, as found: a folder, or a loose `.enigma` file.
#[derive(Clone, Debug)]
pub struct Found {
    pub name: String,
    /// The model's folder; for a loose file, the file.
    pub dir: PathBuf,
    /// A `.enigma` file lying in the home itself rather than a model folder; the model manager reads it
    /// (`-m NAME` finds it) but does not manage it.
    pub loose: bool,
    /// The registry entry, or why the folder is not a usable model.
    pub entry: Result<RegistryEntry, String>,
}

/// The models directory.
#[derive(Clone, Debug)]
pub struct ModelStore {
    home: PathBuf,
}

/// A model named by a user, found: see [`ModelStore::resolve_model`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedModel {
    /// [`DEFAULT_MODEL`], built into the binary.
    BuiltIn,
    /// A `.enigma` file on disk.
    File(PathBuf),
}

impl ResolvedModel {
    /// Opens and validates the model. A file is held under its folder's reader lock for as long as the
    /// returned value lives (`ModelFile::open_shared`), so it is never converted, renamed or deleted
    /// while it is used.
    pub fn open(&self, purpose: &str) -> Result<ModelFile> {
        Ok(match self {
            ResolvedModel::BuiltIn => ModelFile::from_bytes(DEFAULT_MODEL, DEFAULT_MODEL_NAME)?,
            // A GGUF file runs without a conversion step: it is read and rebuilt as a model in memory.
            ResolvedModel::File(path) if gguf::is_gguf(path) => {
                gguf::load(path).map_err(|e| ModelError::Refused(format!("{e:#}")))?
            }
            ResolvedModel::File(path) if path.is_dir() => {
                hf::load(path).map_err(|e| ModelError::Refused(format!("{e:#}")))?
            }
            ResolvedModel::File(path) => ModelFile::open_shared(path, purpose)?,
        })
    }

    /// The file, or how the built-in model is named.
    pub fn describe(&self) -> String {
        match self {
            ResolvedModel::BuiltIn => DEFAULT_MODEL_NAME.to_string(),
            ResolvedModel::File(path) => path.display().to_string(),
        }
    }
}

/// [`ModelStore::resolve_model`] in the models home ([`home`]).
pub fn resolve_model(spec: &str) -> Result<ResolvedModel> {
    ModelStore::open_default().resolve_model(spec)
}

fn model_in_dir(dir: &Path) -> Result<ResolvedModel> {
    let file = dir.join(MODEL_FILE);
    if file.is_file() {
        Ok(ResolvedModel::File(file))
    } else if hf::is_hf_dir(dir) {
        // A Hugging Face folder runs in place, as a GGUF file does.
        Ok(ResolvedModel::File(dir.to_path_buf()))
    } else {
        Err(ModelError::NotAModel(dir.to_path_buf()))
    }
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
        not_builtin(name, BUILTIN_IS_READ_ONLY)?;
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

    /// What a model named on a command line or in a module's settings is, the same way everywhere:
    /// - `default`: the built-in model;
    /// - an existing file: that file; an existing directory: its `model.enigma`, or an error;
    /// - a name of this store: its folder's `model.enigma`, else a loose `NAME.enigma` or `NAME` file in
    ///   the home (where `scripts/quickstart.sh` writes one);
    /// - anything else: not found, naming the home (or, for a path, the missing file).
    pub fn resolve_model(&self, spec: &str) -> Result<ResolvedModel> {
        if spec == BUILTIN_NAME {
            return Ok(ResolvedModel::BuiltIn);
        }
        let p = Path::new(spec);
        match std::fs::metadata(p) {
            Ok(meta) if meta.is_dir() => return model_in_dir(p),
            // A FIFO or a device is the reader's to refuse, with its own reason.
            Ok(_) => return Ok(ResolvedModel::File(p.to_path_buf())),
            // A path (or something no model is called): what the OS says about it.
            Err(source) if check_name(spec).is_err() => {
                return Err(ModelError::Io {
                    path: p.to_path_buf(),
                    source,
                })
            }
            Err(_) => {}
        }
        let dir = self.dir(spec);
        if dir.is_dir() {
            return model_in_dir(&dir);
        }
        for file in [self.home.join(format!("{spec}.enigma")), dir] {
            if file.is_file() {
                return Ok(ResolvedModel::File(file));
            }
        }
        Err(self.not_found(spec))
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
            // The built-in model's name is never a folder's: `-m default` would not reach it.
            if name.starts_with('.') || name == BUILTIN_NAME || !ent.path().is_dir() {
                continue;
            }
            let dir = ent.path();
            let entry = Self::entry(&dir).map_err(|e| e.to_string());
            found.push(Found {
                name,
                dir,
                loose: false,
                entry,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The `.enigma` files lying in the home itself, by name: `NAME.enigma` is model `NAME` (as
    /// [`ModelStore::resolve_model`] finds it) unless a folder takes that name, when it goes by its file name.
    pub fn loose_files(&self) -> Result<Vec<Found>> {
        let rd = match std::fs::read_dir(&self.home) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.home)(e)),
        };
        let mut found = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io(&self.home))?;
            let file_name = ent.file_name().to_string_lossy().into_owned();
            let path = ent.path();
            let Some(stem) = file_name.strip_suffix(".enigma") else {
                continue;
            };
            if file_name.starts_with('.') || !path.is_file() {
                continue;
            }
            let name = if stem == BUILTIN_NAME || self.dir(stem).is_dir() {
                file_name.clone()
            } else {
                stem.to_string()
            };
            let entry = peek(&path)
                .map(|p| RegistryEntry {
                    preset: preset_of(&p.config),
                    params: p.config.param_count(),
                    vocab_size: p.config.vocab_size,
                    file_bytes: p.file_len,
                    created_unix: p.created_unix,
                    trained_steps: p.trained_steps(),
                })
                .map_err(|e| e.to_string());
            found.push(Found {
                name,
                dir: path,
                loose: true,
                entry,
            });
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
        let meta: Option<Metadata> = if meta_path.exists() {
            Some(read_json(&meta_path)?)
        } else {
            None
        };
        let m = meta.clone().unwrap_or_default();
        // A model trained here by `enigma train --out` has no metadata.json, or one written before the
        // training (by `models create`); the model file itself says how far training went. Fine-tuning
        // through the training module adds the parent's steps in metadata.json.
        let trained_steps = [meta.map(|m| m.trained_steps), peek.trained_steps()]
            .into_iter()
            .flatten()
            .max();
        Ok(RegistryEntry {
            preset: m.preset.clone().or_else(|| preset_of(&peek.config)),
            params: peek.config.param_count(),
            vocab_size: peek.config.vocab_size,
            file_bytes: peek.file_len,
            created_unix: if m.created_unix != 0 {
                m.created_unix
            } else {
                peek.created_unix
            },
            trained_steps,
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
        check_new_name(name)?;
        let preset = preset(preset_name)?;
        self.refuse_existing(name)?;
        let tokenizer = match &opts.tokenizer {
            None => init::byte_tokenizer(),
            Some(from) => {
                let file = self.resolve_model(from)?.open("create")?;
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
        self.publish(name, false, |stage| {
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
    /// crash never leaves a half-made model and two makers of one name cannot both win. With `replace`, a
    /// model already called `name` is replaced ([`ModelStore::replace_with`]).
    fn publish(
        &self,
        name: &str,
        replace: bool,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.home).map_err(io(&self.home))?;
        let stage = self
            .home
            .join(format!(".{name}.new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        let built = std::fs::create_dir(&stage)
            .map_err(io(&stage))
            .and_then(|_| build(&stage));
        let result = built.and_then(|_| self.move_into_place(&stage, name, replace));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&stage);
        }
        let dir = result?;
        self.reconcile_quietly();
        Ok(dir)
    }

    /// Renames the folder `from` to model `name`: refused when that exists, unless `replace`.
    fn move_into_place(&self, from: &Path, name: &str, replace: bool) -> Result<PathBuf> {
        let dir = self.dir(name);
        if replace && dir.exists() {
            return self.replace_with(from, name);
        }
        self.refuse_existing(name)?;
        // rename(2) onto an existing non-empty folder fails, so the loser of a race is refused here.
        std::fs::rename(from, &dir).map_err(|e| {
            if dir.exists() {
                ModelError::Exists {
                    name: name.to_string(),
                    home: self.home.clone(),
                }
            } else {
                io(&dir)(e)
            }
        })?;
        Ok(dir)
    }

    /// Puts the folder `from` in the place of the existing model `name`, under that model's lock (so a
    /// model in use is never replaced): the old folder goes out of sight first, comes back if the move
    /// fails, and is removed after.
    fn replace_with(&self, from: &Path, name: &str) -> Result<PathBuf> {
        let dir = self.dir(name);
        let guard = lock(&dir, name, "replace")?;
        let old = self
            .home
            .join(format!(".{name}.replaced-{}", std::process::id()));
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
        if let Err(e) = std::fs::rename(from, &dir) {
            let _ = std::fs::rename(&old, &dir);
            return Err(io(&dir)(e));
        }
        drop(guard);
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
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
        not_builtin(name, BUILTIN_IS_READ_ONLY)?;
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

    /// Renames a model; a model already called `to` is refused, or with `replace` replaced.
    pub fn rename(&self, from: &str, to: &str, replace: bool) -> Result<PathBuf> {
        not_builtin(from, BUILTIN_IS_READ_ONLY)?;
        let dir = self.existing(from)?;
        check_new_name(to)?;
        not_onto_itself(from, to, "renamed")?;
        let _guard = lock(&dir, from, "rename")?;
        let dest = self.move_into_place(&dir, to, replace)?;
        self.add_history(&dest, format!("renamed from {from}"))?;
        self.reconcile_quietly();
        Ok(dest)
    }

    /// Copies a model (weights, config, metadata, checkpoints) under a new name; `from` may be the
    /// built-in model. The source is locked meanwhile so a trainer cannot write half of what is copied. A
    /// model already called `to` is refused, or with `replace` replaced.
    pub fn copy(&self, from: &str, to: &str, replace: bool) -> Result<PathBuf> {
        check_new_name(to)?;
        if from == BUILTIN_NAME {
            return self.copy_builtin(to, replace);
        }
        let dir = self.existing(from)?;
        not_onto_itself(from, to, "copied")?;
        if !replace {
            self.refuse_existing(to)?;
        }
        let _guard = lock(&dir, from, "copy")?;
        self.publish(to, replace, |stage| {
            copy_tree(&dir, stage)?;
            self.add_history(stage, format!("copied from {from}"))
        })
    }

    /// The built-in model as a model of the store, to be fine-tuned, converted or replaced like any other.
    fn copy_builtin(&self, to: &str, replace: bool) -> Result<PathBuf> {
        if !replace {
            self.refuse_existing(to)?;
        }
        let peeked = peek_builtin()?;
        let preset = preset_of(&peeked.config);
        let mut meta = Metadata {
            created_unix: now_unix(),
            preset: preset.clone(),
            source: format!("copied from {DEFAULT_MODEL_NAME} ({})", peeked.source),
            trained_steps: peeked.trained_steps().unwrap_or(0),
            ..Metadata::default()
        };
        meta.note(format!("copied from {DEFAULT_MODEL_NAME}"));
        self.publish(to, replace, |stage| {
            let file = stage.join(MODEL_FILE);
            std::fs::write(&file, DEFAULT_MODEL).map_err(io(&file))?;
            write_config(stage, preset.as_deref(), &peeked.config)?;
            write_json(&stage.join(META_FILE), &meta)
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
    /// A model already called as a new target is refused, or with `replace` replaced.
    pub fn convert(
        &self,
        name: &str,
        preset_name: &str,
        target: &ConvertTarget,
        seed: Option<u64>,
        replace: bool,
    ) -> Result<PathBuf> {
        not_builtin(name, BUILTIN_IS_READ_ONLY)?;
        let dir = self.existing(name)?;
        let preset = preset(preset_name)?;
        if let ConvertTarget::New(to) = target {
            check_new_name(to)?;
            not_onto_itself(name, to, "converted")?;
            if !replace {
                self.refuse_existing(to)?;
            }
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
            .f32_params(&params)?
            .carry_extras(&parsed);
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
                self.publish(to, replace, |stage| {
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
        let preset = meta.preset.clone().or_else(|| preset_of(&peeked.config));
        write_config(&dir, preset.as_deref(), &peeked.config)?;
        write_json(&meta_path, &meta)?;
        self.reconcile_quietly();
        Ok(())
    }
}

/// Why the built-in model is not deleted, renamed or converted like a model of the store.
const BUILTIN_IS_READ_ONLY: &str =
    "it cannot be deleted, renamed or converted (to change it, copy it first: enigma models copy default NAME)";

/// Refuses the built-in model's name where a model of the store is meant; `why` says what cannot be done.
fn not_builtin(name: &str, why: &'static str) -> Result<()> {
    if name == BUILTIN_NAME {
        Err(ModelError::BuiltIn(why))
    } else {
        Ok(())
    }
}

/// A name a model of the store can take: a portable folder name, and not the built-in model's.
pub fn check_new_name(name: &str) -> Result<()> {
    not_builtin(name, "choose another name")?;
    check_name(name)
}

/// `--force` replaces a model other than the source; replacing the source with itself would destroy it.
fn not_onto_itself(from: &str, to: &str, what: &str) -> Result<()> {
    if from == to {
        return Err(ModelError::Refused(format!(
            "model '{from}' cannot be {what} onto itself"
        )));
    }
    Ok(())
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

/// Refuses to write `output` when it already exists, above all when it is one of the `inputs` (however
/// either is spelled: the same device and inode), unless `force`; the writer then replaces it atomically.
pub fn check_output(output: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let Ok(out_meta) = std::fs::metadata(output) else {
        return Ok(());
    };
    let same = |input: &Path| {
        std::fs::metadata(input).is_ok_and(|m| same_file(&out_meta, &m))
            || matches!(
                (output.canonicalize(), input.canonicalize()),
                (Ok(a), Ok(b)) if a == b
            )
    };
    let reason = match inputs.iter().find(|i| same(i)) {
        Some(input) => format!(
            "{} is the same file as the input {}: write to another file, or pass --force to replace it",
            output.display(),
            input.display()
        ),
        None => format!(
            "{} already exists: write to another file, or pass --force to replace it",
            output.display()
        ),
    };
    Err(ModelError::Refused(reason))
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    // Canonical paths decide (see check_output).
    false
}

/// The preset whose shape a model has, if any.
pub fn preset_of(config: &Config) -> Option<String> {
    PRESETS
        .iter()
        .find(|p| p.config(config.vocab_size) == *config)
        .map(|p| p.name.to_string())
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
            s.rename("a", "b", false).unwrap_err(),
            s.copy("a", "c", false).unwrap_err(),
            s.convert("a", "micro", &ConvertTarget::InPlace, Some(1), false)
                .unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, ModelError::Locked { .. }), "{msg}");
            assert!(msg.contains("this process (training)"), "{msg}");
        }
        assert!(s.dir("a").join(MODEL_FILE).is_file());
        drop(held);
        s.copy("a", "c", false).unwrap();
        assert!(s
            .metadata("c")
            .unwrap()
            .history
            .last()
            .unwrap()
            .contains("copied from a"));
        assert!(!s.dir("c").join(".lock").exists());
        s.rename("a", "b", false).unwrap();
        assert!(!s.dir("a").exists());
        assert!(s
            .metadata("b")
            .unwrap()
            .history
            .last()
            .unwrap()
            .contains("renamed from a"));
        assert!(matches!(
            s.rename("b", "c", false),
            Err(ModelError::Exists { .. })
        ));
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
        // A chat template beside the weights, as a GGUF import keeps one.
        let path = s.dir("a").join(MODEL_FILE);
        let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
        let bytes = {
            let f = ModelFile::open(&path).unwrap();
            let parsed = f.parse().unwrap();
            let tok = enigma_core::Tokenizer::from_file(&parsed).unwrap();
            let params = enigma_runtime::quantize::params_f32(&parsed).unwrap();
            let mut w = enigma_runtime::ModelWriter::new(
                *parsed.config(),
                enigma_runtime::quantize::tokenizer_data(&tok),
            );
            w.f32_params(&params).unwrap().tensor(
                gguf::KEEP_TEMPLATE,
                enigma_core::kernels::DType::U8,
                &[template.len() as u64],
                template.as_bytes(),
            );
            w.to_bytes().unwrap()
        };
        std::fs::write(&path, bytes).unwrap();
        let to = ConvertTarget::New("a-micro".into());
        let dir = s.convert("a", "micro", &to, Some(2), false).unwrap();
        let f = ModelFile::open(dir.join(MODEL_FILE)).unwrap();
        let parsed = f.parse().unwrap();
        assert_eq!(gguf::chat_template(&parsed).unwrap(), Some(template));
        let c = *parsed.config();
        assert_eq!((c.dim, c.n_layers, c.vocab_size), (192, 4, 259));
        f.model(enigma_core::kernels::kernels()).unwrap();
        let meta = s.metadata("a-micro").unwrap();
        assert_eq!(meta.preset.as_deref(), Some("micro"));
        assert!(meta.history.last().unwrap().contains("converted from a"));
        // The original is untouched; converting to its own shape is refused.
        assert_eq!(peek(&s.dir("a").join(MODEL_FILE)).unwrap().config.dim, 128);
        let err = s
            .convert("a", "nano", &ConvertTarget::InPlace, None, false)
            .unwrap_err();
        assert!(err.to_string().contains("already has the shape"), "{err}");
        s.convert("a", "tiny", &ConvertTarget::InPlace, Some(3), false)
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
    fn names_resolve_to_the_built_in_a_folder_a_loose_file_or_a_path() {
        let (t, s) = store();
        assert_eq!(s.resolve_model("default").unwrap(), ResolvedModel::BuiltIn);
        let dir = s.create("story", "nano", &seeded()).unwrap();
        let file = dir.join(MODEL_FILE);
        assert_eq!(
            s.resolve_model("story").unwrap(),
            ResolvedModel::File(file.clone())
        );
        // A path to the file, or to its folder.
        let as_path = file.to_str().unwrap();
        assert_eq!(
            s.resolve_model(as_path).unwrap(),
            ResolvedModel::File(file.clone())
        );
        assert_eq!(
            s.resolve_model(dir.to_str().unwrap()).unwrap(),
            ResolvedModel::File(file.clone())
        );
        // Loose files in the home: NAME.enigma, or NAME itself.
        std::fs::copy(&file, s.home().join("loose.enigma")).unwrap();
        std::fs::copy(&file, s.home().join("bare")).unwrap();
        for (spec, want) in [
            ("loose", "loose.enigma"),
            ("loose.enigma", "loose.enigma"),
            ("bare", "bare"),
        ] {
            assert_eq!(
                s.resolve_model(spec).unwrap(),
                ResolvedModel::File(s.home().join(want)),
                "{spec}"
            );
        }
        // A folder that holds no model is said to be one, by path or by name.
        let empty = t.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(s.dir("half")).unwrap();
        for (spec, dir) in [
            (empty.to_str().unwrap(), empty.clone()),
            ("half", s.dir("half")),
        ] {
            let err = s.resolve_model(spec).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is a directory, not a model file (no model.enigma in it)",
                    dir.display()
                )
            );
        }
        // Nothing of that name: the home is named; a path gets the OS's reason.
        let err = s.resolve_model("nope").unwrap_err().to_string();
        assert!(err.contains(&s.home().display().to_string()), "{err}");
        assert!(err.contains("enigma models list"), "{err}");
        let missing = t.path().join("nowhere.enigma");
        let err = s.resolve_model(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nowhere.enigma"), "{err}");
    }

    #[test]
    fn the_built_in_name_is_reserved_and_the_built_in_can_be_copied() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        let refused = [
            s.delete("default").unwrap_err(),
            s.rename("default", "b", false).unwrap_err(),
            s.rename("a", "default", true).unwrap_err(),
            s.copy("a", "default", true).unwrap_err(),
            s.create("default", "nano", &seeded()).unwrap_err(),
            s.convert("default", "micro", &ConvertTarget::InPlace, None, false)
                .unwrap_err(),
            s.convert(
                "a",
                "micro",
                &ConvertTarget::New("default".into()),
                None,
                true,
            )
            .unwrap_err(),
        ];
        for err in refused {
            assert!(matches!(err, ModelError::BuiltIn(_)), "{err}");
            assert!(err.to_string().contains("built into the binary"), "{err}");
        }
        assert!(!s.dir("default").exists());
        // Copied out, it is a model of the store with the built-in's training recorded.
        let dir = s.copy("default", "mine", false).unwrap();
        assert_eq!(std::fs::read(dir.join(MODEL_FILE)).unwrap(), DEFAULT_MODEL);
        let steps = peek_builtin().unwrap().trained_steps();
        assert!(steps.is_some_and(|n| n > 0), "{steps:?}");
        let (found, _) = s.reconcile().unwrap();
        let mine = found.iter().find(|f| f.name == "mine").unwrap();
        assert_eq!(mine.entry.as_ref().unwrap().trained_steps, steps);
        // A folder called `default` (an old checkout's) is not listed: the name means the built-in.
        std::fs::create_dir_all(s.dir("default")).unwrap();
        assert!(s.scan().unwrap().iter().all(|f| f.name != "default"));
    }

    #[test]
    fn replacing_an_existing_model_is_explicit_and_respects_its_lock() {
        let (_t, s) = store();
        s.create("a", "nano", &seeded()).unwrap();
        s.create("b", "micro", &seeded()).unwrap();
        assert!(matches!(
            s.copy("a", "b", false),
            Err(ModelError::Exists { .. })
        ));
        assert!(matches!(
            s.convert("a", "tiny", &ConvertTarget::New("b".into()), None, false),
            Err(ModelError::Exists { .. })
        ));
        for err in [
            s.copy("a", "a", true).unwrap_err(),
            s.rename("a", "a", true).unwrap_err(),
        ] {
            assert!(err.to_string().contains("onto itself"), "{err}");
        }
        // A model in use is not replaced.
        let held = ModelLock::acquire(s.dir("b"), "serving").unwrap();
        assert!(matches!(
            s.copy("a", "b", true),
            Err(ModelError::Locked { .. })
        ));
        assert_eq!(peek(&s.dir("b").join(MODEL_FILE)).unwrap().config.dim, 192);
        drop(held);
        s.copy("a", "b", true).unwrap();
        assert_eq!(peek(&s.dir("b").join(MODEL_FILE)).unwrap().config.dim, 128);
        s.convert("a", "micro", &ConvertTarget::New("b".into()), Some(1), true)
            .unwrap();
        assert_eq!(peek(&s.dir("b").join(MODEL_FILE)).unwrap().config.dim, 192);
        s.rename("b", "a", true).unwrap();
        assert!(!s.dir("b").exists());
        assert_eq!(peek(&s.dir("a").join(MODEL_FILE)).unwrap().config.dim, 192);
        // Nothing is left out of sight.
        let hidden: Vec<_> = std::fs::read_dir(s.home())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
    }

    #[test]
    fn loose_files_are_found_with_the_steps_their_writer_recorded() {
        let (_t, s) = store();
        let dir = s.create("a", "nano", &seeded()).unwrap();
        std::fs::copy(dir.join(MODEL_FILE), s.home().join("random.enigma")).unwrap();
        std::fs::write(s.home().join("trained.enigma"), DEFAULT_MODEL).unwrap();
        // A loose file named like a folder goes by its file name.
        std::fs::copy(dir.join(MODEL_FILE), s.home().join("a.enigma")).unwrap();
        std::fs::write(s.home().join("junk.enigma"), b"no").unwrap();
        let loose = s.loose_files().unwrap();
        let names: Vec<&str> = loose.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.enigma", "junk", "random", "trained"]);
        assert!(loose.iter().all(|f| f.loose));
        let steps = |n: &str| {
            let f = loose.iter().find(|f| f.name == n).unwrap();
            f.entry
                .as_ref()
                .map(|e| e.trained_steps)
                .map_err(String::clone)
        };
        // Created, not trained: nothing recorded in the file itself.
        assert_eq!(steps("random"), Ok(None));
        assert_eq!(
            steps("trained"),
            Ok(peek_builtin().unwrap().trained_steps())
        );
        assert!(steps("junk").unwrap_err().contains("too short"));
        // In a folder, metadata.json records the 0 steps of a fresh model.
        let (found, _) = s.reconcile().unwrap();
        assert_eq!(found[0].entry.as_ref().unwrap().trained_steps, Some(0));
        assert_eq!(
            peek(&s.home().join("trained.enigma")).unwrap().notes,
            peek_builtin().unwrap().notes
        );
        assert_eq!(
            Peek {
                notes: training_note(42),
                ..peek_builtin().unwrap()
            }
            .trained_steps(),
            Some(42)
        );
    }

    #[test]
    fn an_output_that_exists_or_is_an_input_needs_force() {
        let (t, _s) = store();
        let input = t.path().join("in.enigma");
        std::fs::write(&input, b"x").unwrap();
        let other = t.path().join("other.enigma");
        check_output(&other, &[&input], false).unwrap();
        std::fs::write(&other, b"y").unwrap();
        let err = check_output(&other, &[&input], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        // The input, spelled another way.
        let spelled = t.path().join(".").join("in.enigma");
        let err = check_output(&spelled, &[&input], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the same file as the input"), "{err}");
        #[cfg(unix)]
        {
            let link = t.path().join("link.enigma");
            std::fs::hard_link(&input, &link).unwrap();
            let err = check_output(&link, &[&input], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("is the same file as the input"), "{err}");
        }
        check_output(&input, &[&input], true).unwrap();
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
