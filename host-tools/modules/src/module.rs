//! The interface every module implements, and the stand-in for modules not built yet.

use crate::capability::{Capability, Handle, Provided};
use crate::spec::{HardwareNeeds, ModuleConfig, ModuleSpec};
use serde::Serialize;
use std::sync::Arc;

/// Why a module could not do what it was asked. The manager wraps it with the module's id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModuleError {
    /// Not implemented in this build; the text says what is missing.
    #[error("not available in this build: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Failed(String),
    /// A request the module cannot take as it is (a prompt longer than the context, a field out of range):
    /// the caller's to fix; a server answers 400.
    #[error("{0}")]
    Invalid(String),
    /// No room now (a full queue); the same request may succeed later: a server answers 503.
    #[error("{0}")]
    Busy(String),
}

impl ModuleError {
    /// Any error, with its whole chain of causes on one line.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        ModuleError::Failed(e.to_string())
    }
}

/// What a loading module can reach: the capabilities of the modules loaded before it (its needs among
/// them). The manager makes one over its own table; a test can make one over anything.
pub struct Deps<'a> {
    lookup: &'a dyn Fn(&str) -> Result<Handle, String>,
}

impl<'a> Deps<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Result<Handle, String>) -> Self {
        Deps { lookup }
    }

    /// The handle serving `capability`, as the family `C` (`dyn LanguageModel`, ...).
    pub fn get<C: Capability + ?Sized>(&self, capability: &str) -> Result<Arc<C>, ModuleError> {
        let handle = (self.lookup)(capability).map_err(ModuleError::Failed)?;
        C::from_handle(&handle).ok_or_else(|| {
            ModuleError::Failed(format!(
                "{capability} is served as {}, not {}",
                handle.family(),
                C::FAMILY
            ))
        })
    }
}

/// The answer of a health check.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "health", content = "detail", rename_all = "snake_case")]
pub enum Health {
    Ok(String),
    Unhealthy(String),
    NotLoaded,
}

/// A capability that can be switched on and off. The manager calls these from one thread at a time per
/// module; `load` and `unload` may take long (they run outside the manager's table lock).
pub trait Module: Send {
    fn spec(&self) -> &'static ModuleSpec;

    /// `Some(why)` when this build has no real implementation: such a module is listed but never loads.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// What this config needs of the machine; by default the spec's fixed needs. The model module adds the
    /// memory of the model it is asked to load.
    fn hardware_needs(&self, _config: &ModuleConfig) -> Result<HardwareNeeds, ModuleError> {
        Ok(self.spec().hardware)
    }

    /// Starts the module with `config` (already checked against the schema), taking what it builds on
    /// from `deps` (the capabilities of loaded modules), and hands back a handle for each capability it
    /// serves. On error it must hold nothing: the manager records it as unloaded.
    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError>;

    /// The config to record (and save) after a successful `load`: `config` with whatever the module chose
    /// at load time written in, so a restart loads the same thing. By default `config` itself.
    fn resolved_config(&self, config: &ModuleConfig) -> ModuleConfig {
        config.clone()
    }

    /// Releases everything. On error the manager keeps the module as failed (still holding its
    /// capabilities) until an unload succeeds.
    fn unload(&mut self) -> Result<(), ModuleError>;

    /// One line on what the loaded module is doing ("stories260K: 260K parameters, 2 threads").
    fn status(&self) -> String;

    /// Whether the loaded module works right now (the model modules run a one-token forward pass).
    fn health(&self) -> Health;
}

/// A module of the catalog whose implementation does not exist yet. It says so; it never pretends.
pub struct Unavailable {
    spec: &'static ModuleSpec,
    why: String,
}

impl Unavailable {
    pub fn new(spec: &'static ModuleSpec, why: impl Into<String>) -> Self {
        Unavailable {
            spec,
            why: why.into(),
        }
    }
}

impl Module for Unavailable {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }
    fn unavailable(&self) -> Option<String> {
        Some(self.why.clone())
    }
    fn load(&mut self, _config: &ModuleConfig, _deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        Err(ModuleError::Unavailable(self.why.clone()))
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        Ok(())
    }
    fn status(&self) -> String {
        format!("not available: {}", self.why)
    }
    fn health(&self) -> Health {
        Health::NotLoaded
    }
}
