//! Where modules come from: each crate that implements modules registers them here
//! (`enigma_modules::local::register`, `enigma_train::module::register`, later the server's, the addons'...),
//! and every module of the catalog that nobody registered is listed as not built yet. Nothing matches on
//! module ids: the CLI (or the server) builds a registry from the crates it links.

use crate::catalog::CATALOG;
use crate::module::{Module, Unavailable};

/// The reason given for catalog modules no crate of this build registered.
pub const NOT_BUILT: &str = "not built yet: no crate of this build implements it";

#[derive(Default)]
pub struct Registry {
    modules: Vec<Box<dyn Module>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a module. Two modules with one id are refused by [`crate::ModuleManager::new`].
    pub fn register(&mut self, module: Box<dyn Module>) {
        self.modules.push(module);
    }

    /// Whether a module with this id is registered.
    pub fn contains(&self, id: &str) -> bool {
        self.modules.iter().any(|m| m.spec().id == id)
    }

    /// The registered modules, then a stand-in for each catalog module nobody registered, in catalog order
    /// (registered ones take their catalog place; modules outside the catalog come last).
    pub fn finish(self) -> Vec<Box<dyn Module>> {
        let mut registered = self.modules;
        let mut out: Vec<Box<dyn Module>> = Vec::with_capacity(CATALOG.len() + registered.len());
        for spec in CATALOG.iter() {
            match registered.iter().position(|m| m.spec().id == spec.id) {
                Some(k) => out.push(registered.remove(k)),
                None => out.push(Box::new(Unavailable::new(spec, NOT_BUILT))),
            }
        }
        out.extend(registered);
        out
    }
}
