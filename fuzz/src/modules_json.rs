//! `modules.json`: `SavedState` parsing, then `ModuleManager::restore` twice, over the real registry (whose
//! modules mostly refuse to load here) and over one whose every module loads (so the rules, the order and
//! the pending set get exercised). After any restore the manager's invariants must hold and what it would
//! save must read back the same.
//!
//! Input: the file as it is.

use enigma_modules::catalog::CATALOG;
use enigma_modules::manager::SavedState;
use enigma_modules::spec::{ModuleConfig, ModuleSpec};
use enigma_modules::{Health, Module, ModuleError, ModuleManager};
use enigma_runtime::hardware::{Gpu, Hardware};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A module that loads with any config the schema accepts.
struct Accept {
    spec: &'static ModuleSpec,
    loaded: bool,
}

impl Module for Accept {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }
    fn load(
        &mut self,
        _config: &ModuleConfig,
        _deps: &enigma_modules::Deps<'_>,
    ) -> Result<enigma_modules::Provided, ModuleError> {
        self.loaded = true;
        Ok(enigma_modules::Provided::new())
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = false;
        Ok(())
    }
    fn status(&self) -> String {
        format!("{} loaded: {}", self.spec.id, self.loaded)
    }
    fn health(&self) -> Health {
        if self.loaded {
            Health::Ok(String::new())
        } else {
            Health::NotLoaded
        }
    }
}

/// A machine with room for every module, so only the rules decide.
fn big_machine() -> Hardware {
    Hardware {
        total_ram: Some(1 << 40),
        free_ram: Some(1 << 40),
        cores: 64,
        gpus: vec![Gpu {
            index: 0,
            name: "fuzz".into(),
            total_vram: 1 << 40,
            free_vram: Some(1 << 40),
        }],
        cuda_note: None,
        cuda_driver: Some("12.4".into()),
    }
}

/// The models folder of the real registry (empty: a model named in the input is not found, or is a path
/// outside it) and the machine, detected once.
fn home() -> &'static (PathBuf, Hardware) {
    static H: OnceLock<(PathBuf, Hardware)> = OnceLock::new();
    H.get_or_init(|| {
        let dir = crate::scratch_file("home-marker", b"").with_file_name("home");
        // The harness needs its folder; panicking here is the right failure.
        std::fs::create_dir_all(&dir).expect("home folder");
        (dir, Hardware::detect())
    })
}

pub fn check(data: &[u8]) {
    let parsed = serde_json::from_slice::<SavedState>(data);
    let (home, hw) = home();
    // The real registry, as `enigma serve` will open it.
    std::fs::write(home.join(enigma_modules::STATE_FILE), data).expect("modules.json");
    let store = enigma_models::ModelStore::new(home);
    let mut registry = enigma_modules::Registry::new();
    enigma_modules::local::register(&mut registry, &store);
    enigma_train::module::register(&mut registry, &store);
    // An error (an unreadable file) is an answer; a manager that came up must be sound.
    if let Ok(m) = enigma_modules::open(home, hw.clone(), registry) {
        if let Ok(report) = m.restore() {
            assert!(parsed.is_ok(), "restored a file SavedState refuses");
            after_restore(&m, &report.loaded);
        }
    }
    // Every module loads.
    let modules: Vec<Box<dyn Module>> = CATALOG
        .iter()
        .map(|spec| -> Box<dyn Module> {
            Box::new(Accept {
                spec,
                loaded: false,
            })
        })
        .collect();
    let path = crate::scratch_file("modules.json", data);
    let m = match ModuleManager::new(modules, big_machine(), Some(path)) {
        Ok(m) => m,
        Err(e) => panic!("the catalog does not register: {e}"),
    };
    if let Ok(report) = m.restore() {
        after_restore(&m, &report.loaded);
    }
}

fn after_restore(m: &ModuleManager, loaded: &[&'static str]) {
    let bad = m.invariant_violations();
    assert!(bad.is_empty(), "rules broken after restore: {bad:?}");
    for id in loaded {
        assert!(m.loaded().contains(id), "{id} reported loaded but is not");
    }
    let saved = m.saved_state();
    let text = match serde_json::to_string(&saved) {
        Ok(t) => t,
        Err(e) => panic!("the state does not serialize: {e}"),
    };
    match serde_json::from_str::<SavedState>(&text) {
        Ok(back) => assert_eq!(back, saved, "modules.json does not read back: {text}"),
        Err(e) => panic!("what the manager saves does not read back: {e}: {text}"),
    }
}
