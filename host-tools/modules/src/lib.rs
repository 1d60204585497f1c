//! The module manager: every capability of Enigma Engine is a module that can be switched on and off, with
//! declared capabilities, needs, conflicts, cloud use and hardware needs (docs/MODULES.md).
//!
//! - [`spec`]: what a module declares, and its typed config schema;
//! - [`catalog`]: the 29 modules of the spec;
//! - [`module`]: the `Module` trait, and the stand-in for modules not built yet;
//! - [`capability`]: the capability seam: one trait per family (`TextGeneration`, `Embeddings`, ...), the
//!   handles a loaded module hands out, and how callers ask for them;
//! - [`registry`]: where crates register their modules;
//! - [`local`]: the modules over this machine's own model (model, tokenizer, inference, code_gen_local);
//! - [`manager`]: the rules, states, events, capability lookup and `modules.json`.
//!
//! Other crates register theirs (`enigma_train::module::register` adds `training`); whoever hosts modules
//! (the CLI for one command, the server for its life) builds the [`Registry`] from the crates it links.

pub mod capability;
pub mod catalog;
pub mod local;
pub mod manager;
pub mod module;
pub mod registry;
pub mod spec;

pub use capability::{Capability, Handle, Provided};
pub use manager::{Event, LoadOptions, ManagerError, ModuleManager, RestoreReport, State};
pub use module::{Deps, Health, Module, ModuleError};
pub use registry::Registry;
pub use spec::{HardwareNeeds, ModuleConfig, ModuleSpec, Value};

use enigma_runtime::Hardware;
use std::path::Path;

/// The state file's name, beside the models.
pub const STATE_FILE: &str = "modules.json";

/// A manager over `registry` for the models directory `home`, on the machine `hardware`, saving to
/// `home/modules.json`. Nothing is read or loaded yet: [`ModuleManager::read_saved`] reads the wanted set,
/// [`ModuleManager::restore`] also loads it.
pub fn open(
    home: &Path,
    hardware: Hardware,
    registry: Registry,
) -> Result<ModuleManager, ManagerError> {
    ModuleManager::new(registry.finish(), hardware, Some(home.join(STATE_FILE)))
}
