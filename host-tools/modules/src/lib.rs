//! The module manager: every capability of Enigma Engine is a module that can be switched on and off, with
//! declared capabilities, needs, conflicts, cloud use and hardware needs (docs/MODULES.md).
//!
//! - [`spec`]: what a module declares, and its typed config schema;
//! - [`catalog`]: the 29 modules of the spec;
//! - [`module`]: the `Module` trait, and the stand-in for modules not built yet;
//! - [`builtin`]: the real modules (model, tokenizer, inference, code_gen_local) over a shared engine;
//! - [`training`]: the training module, fine-tuning the loaded model with `enigma train`;
//! - [`manager`]: the rules, states, events and `modules.json`;
//! - [`cli`]: `enigma modules ...` and `enigma hardware`.

pub mod builtin;
pub mod catalog;
pub mod manager;
pub mod module;
pub mod spec;
pub mod training;

pub use builtin::Engine;
pub use manager::{Event, LoadOptions, ManagerError, ModuleManager, RestoreReport, State};
pub use module::{Health, Module, ModuleError};
pub use spec::{HardwareNeeds, ModuleConfig, ModuleSpec, Value};

use enigma_models::ModelStore;
use enigma_runtime::Hardware;
use std::path::Path;
use std::sync::Arc;

/// The state file's name, beside the models.
pub const STATE_FILE: &str = "modules.json";

/// The manager over all 29 modules for the models directory `home`, on the machine `hardware`, with its
/// saved state restored. Restoring can fail only on an unreadable modules.json; modules that do not come
/// back are in the report.
pub fn open(
    home: &Path,
    hardware: Hardware,
) -> Result<(ModuleManager, Arc<Engine>, RestoreReport), ManagerError> {
    let engine = Engine::new(ModelStore::new(home));
    let manager = ModuleManager::new(
        builtin::registry(&engine),
        hardware,
        Some(home.join(STATE_FILE)),
    )?;
    let report = manager.restore()?;
    Ok((manager, engine, report))
}
