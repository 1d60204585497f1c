//! Every rule of the manager, on the real catalog with stand-in modules (and a few made-up specs for cycles).

use super::*;
use crate::capability::{Provided, Tool};
use crate::catalog::CATALOG;
use crate::spec::Value;
use enigma_runtime::hardware::Gpu;
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const GIB: u64 = 1 << 30;

type Log = Arc<Mutex<Vec<String>>>;

/// A module that records what it is asked, and can be told to fail, to need memory, or to wait.
struct Stub {
    spec: &'static ModuleSpec,
    log: Log,
    fail_load: Arc<AtomicBool>,
    fail_unload: Arc<AtomicBool>,
    ram: u64,
    /// When set, `load` (or `unload`) says it started, then waits to be released.
    gate: Option<(Sender<()>, Mutex<Receiver<()>>)>,
    gate_unload: bool,
    loaded: bool,
}

impl Stub {
    fn new(spec: &'static ModuleSpec, log: &Log) -> Self {
        Stub {
            spec,
            log: log.clone(),
            fail_load: Arc::new(AtomicBool::new(false)),
            fail_unload: Arc::new(AtomicBool::new(false)),
            ram: 0,
            gate: None,
            gate_unload: false,
            loaded: false,
        }
    }

    fn wait(&self) {
        if let Some((started, release)) = &self.gate {
            started.send(()).unwrap();
            lock(release).recv().unwrap();
        }
    }
}

impl Module for Stub {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }
    fn hardware_needs(&self, _: &ModuleConfig) -> Result<HardwareNeeds, ModuleError> {
        let mut h = self.spec.hardware;
        h.ram = self.ram;
        Ok(h)
    }
    fn load(&mut self, config: &ModuleConfig, _: &Deps<'_>) -> Result<Provided, ModuleError> {
        if !self.gate_unload {
            self.wait();
        }
        if self.fail_load.load(Ordering::SeqCst) {
            return Err(ModuleError::Failed(format!("{} broke", self.spec.id)));
        }
        let cfg: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lock(&self.log).push(format!("load {} {}", self.spec.id, cfg.join(",")));
        self.loaded = true;
        Ok(Provided::new())
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        if self.gate_unload {
            self.wait();
        }
        if self.fail_unload.load(Ordering::SeqCst) {
            return Err(ModuleError::Failed(format!("{} is stuck", self.spec.id)));
        }
        lock(&self.log).push(format!("unload {}", self.spec.id));
        self.loaded = false;
        Ok(())
    }
    fn status(&self) -> String {
        format!("stub, loaded: {}", self.loaded)
    }
    fn health(&self) -> Health {
        Health::Ok("fine".into())
    }
}

fn machine(ram_gib: u64, free_gib: u64, gpus: &[u64]) -> Hardware {
    Hardware {
        total_ram: Some(ram_gib * GIB),
        free_ram: Some(free_gib * GIB),
        cores: 8,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, &g)| Gpu {
                index: i as u32,
                name: "Simulated".into(),
                total_vram: g * GIB,
                free_vram: Some(g * GIB),
            })
            .collect(),
        cuda_note: gpus.is_empty().then(|| "no CUDA driver".to_string()),
        cuda_driver: None,
    }
}

fn big() -> Hardware {
    machine(64, 32, &[24])
}

fn spec_of(id: &str) -> &'static ModuleSpec {
    CATALOG.iter().find(|s| s.id == id).unwrap()
}

/// The 29 catalog modules as stubs, with `tweak` applied to each.
fn stubs(log: &Log, tweak: impl Fn(&mut Stub)) -> Vec<Box<dyn Module>> {
    CATALOG
        .iter()
        .map(|s| {
            let mut st = Stub::new(s, log);
            tweak(&mut st);
            Box::new(st) as Box<dyn Module>
        })
        .collect()
}

fn manager(log: &Log) -> ModuleManager {
    ModuleManager::new(stubs(log, |_| {}), big(), None).unwrap()
}

fn logged(log: &Log) -> Vec<String> {
    lock(log)
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

fn deps() -> LoadOptions {
    LoadOptions {
        with_deps: true,
        set: Vec::new(),
    }
}

#[test]
fn a_second_provider_is_refused_while_the_first_is_loaded() {
    let log = Log::default();
    let m = manager(&log);
    m.set_allow_cloud(true).unwrap();
    m.load("inference", &deps()).unwrap();
    let err = m.load("chat_api", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::CapabilityTaken {
                other: "inference",
                state: State::Loaded,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "module chat_api provides text_generation, which inference already provides (inference is loaded)"
    );
    assert!(m.invariant_violations().is_empty());
}

/// A manager whose `inference` stub waits in `load` (or `unload`) until released.
fn gated(unload: bool) -> (Arc<ModuleManager>, Receiver<()>, Sender<()>) {
    let log = Log::default();
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    let gate = Mutex::new(Some((started_tx, release_rx)));
    let modules = stubs(&log, |s| {
        if s.spec.id == "inference" {
            s.gate = lock(&gate).take().map(|(a, b)| (a, Mutex::new(b)));
            s.gate_unload = unload;
        }
    });
    let m = Arc::new(ModuleManager::new(modules, big(), None).unwrap());
    m.set_allow_cloud(true).unwrap();
    (m, started_rx, release_tx)
}

#[test]
fn a_second_provider_is_refused_while_the_first_is_loading() {
    let (m, started, release) = gated(false);
    m.load("model", &LoadOptions::default()).unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    let m2 = m.clone();
    let t = std::thread::spawn(move || m2.load("inference", &LoadOptions::default()));
    started.recv().unwrap();
    assert_eq!(m.state("inference").unwrap(), State::Loading);
    // Refused at once (not blocked behind the slow load), naming the state.
    let err = m.load("chat_api", &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().ends_with("(inference is loading)"), "{err}");
    let err = m.load("inference", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Busy {
                state: State::Loading,
                ..
            }
        ),
        "{err}"
    );
    // Nothing may unload what a loading module needs.
    assert!(matches!(
        m.unload("model", false).unwrap_err(),
        ManagerError::NeededBy { .. }
    ));
    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert_eq!(m.state("inference").unwrap(), State::Loaded);
}

#[test]
fn a_second_provider_is_refused_while_the_first_is_unloading() {
    let (m, started, release) = gated(true);
    m.load("inference", &deps()).unwrap();
    let m2 = m.clone();
    let t = std::thread::spawn(move || m2.unload("inference", false));
    started.recv().unwrap();
    assert_eq!(m.state("inference").unwrap(), State::Unloading);
    let err = m.load("chat_api", &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().ends_with("(inference is unloading)"),
        "{err}"
    );
    release.send(()).unwrap();
    t.join().unwrap().unwrap();
    // Once it is really gone, the other provider may load.
    m.load("chat_api", &LoadOptions::default()).unwrap();
    assert!(m.invariant_violations().is_empty());
}

#[test]
fn a_second_provider_is_refused_while_the_first_has_failed() {
    let log = Log::default();
    let stuck = Arc::new(AtomicBool::new(true));
    let s2 = stuck.clone();
    let modules = stubs(&log, move |s| {
        if s.spec.id == "inference" {
            s.fail_unload = s2.clone();
        }
    });
    let m = ModuleManager::new(modules, big(), None).unwrap();
    m.set_allow_cloud(true).unwrap();
    m.load("inference", &deps()).unwrap();
    let err = m.unload("inference", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module inference failed to unload: inference is stuck"
    );
    assert_eq!(m.state("inference").unwrap(), State::Failed);
    let err = m.load("chat_api", &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().ends_with("(inference is failed)"), "{err}");
    // Its needs stay: a failed module may still be using them.
    assert!(matches!(
        m.unload("model", false).unwrap_err(),
        ManagerError::NeededBy { .. }
    ));
    // A later unload that works frees the capability.
    stuck.store(false, Ordering::SeqCst);
    m.unload("inference", false).unwrap();
    m.load("chat_api", &LoadOptions::default()).unwrap();
}

#[test]
fn explicit_conflicts_hold_both_ways() {
    let log = Log::default();
    let m = manager(&log);
    m.load("model", &LoadOptions::default()).unwrap();
    let err = m.load("gguf_loader", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module gguf_loader conflicts with model, which is loaded"
    );
    m.unload("model", false).unwrap();
    m.load("gguf_loader", &LoadOptions::default()).unwrap();
    // The conflict is declared by gguf_loader only; model is refused all the same.
    let err = m.load("model", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Conflict {
                other: "gguf_loader",
                ..
            }
        ),
        "{err}"
    );
    assert!(m.invariant_violations().is_empty());
}

#[test]
fn needs_must_be_loaded_or_loaded_first_in_dependency_order() {
    let log = Log::default();
    let m = manager(&log);
    let events = m.subscribe();
    let err = m
        .load("code_gen_local", &LoadOptions::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "module code_gen_local needs model, tokenizer, inference loaded first (or load it with --with-deps)"
    );
    assert!(lock(&log).is_empty(), "nothing was started");
    let done = m.load("code_gen_local", &deps()).unwrap();
    assert_eq!(done, ["model", "tokenizer", "inference", "code_gen_local"]);
    assert_eq!(
        logged(&log),
        [
            "load model",
            "load tokenizer",
            "load inference",
            "load code_gen_local"
        ]
    );
    assert_eq!(m.loaded(), done);
    // Events: each module goes unloaded -> loading (all reserved first) -> loaded.
    let ev: Vec<Event> = events.try_iter().collect();
    assert_eq!(
        ev[0],
        Event::StateChanged {
            id: "model",
            from: State::Unloaded,
            to: State::Loading
        }
    );
    assert!(ev.contains(&Event::Loaded {
        id: "code_gen_local"
    }));
    let loading = ev
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::StateChanged {
                    to: State::Loading,
                    ..
                }
            )
        })
        .count();
    assert_eq!(loading, 4);
    // Already loaded needs are not loaded twice.
    lock(&log).clear();
    m.load("api_server", &deps()).unwrap();
    assert_eq!(logged(&log), ["load api_server"]);
}

#[test]
fn events_serialise_for_the_server_and_gui() {
    let e = Event::StateChanged {
        id: "model",
        from: State::Unloaded,
        to: State::Loading,
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"event":"state_changed","id":"model","from":"unloaded","to":"loading"}"#
    );
    let e = Event::Failed {
        id: "model",
        reason: "gone".into(),
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"event":"failed","id":"model","reason":"gone"}"#
    );
    // A subscriber that hangs up is dropped, not an error for the others.
    let log = Log::default();
    let m = manager(&log);
    drop(m.subscribe());
    let live = m.subscribe();
    m.load("model", &LoadOptions::default()).unwrap();
    assert!(live.try_iter().any(|e| e == Event::Loaded { id: "model" }));
}

#[test]
fn a_failure_midway_unloads_what_this_call_loaded() {
    let log = Log::default();
    let modules = stubs(&log, |s| {
        if s.spec.id == "inference" {
            s.fail_load.store(true, Ordering::SeqCst);
        }
    });
    let m = ModuleManager::new(modules, big(), None).unwrap();
    let events = m.subscribe();
    let err = m.load("code_gen_local", &deps()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module inference failed to load: inference broke (unloaded again: tokenizer, model)"
    );
    assert!(m.loaded().is_empty());
    assert_eq!(m.state("code_gen_local").unwrap(), State::Unloaded);
    assert_eq!(
        m.last_error("inference").unwrap().as_deref(),
        Some("inference broke")
    );
    assert!(events.try_iter().any(|e| e
        == Event::Failed {
            id: "inference",
            reason: "inference broke".into()
        }));
}

#[test]
fn unloading_a_needed_module_is_refused_or_cascades() {
    let log = Log::default();
    let m = manager(&log);
    m.load("code_gen_local", &deps()).unwrap();
    m.load("api_server", &deps()).unwrap();
    let err = m.unload("model", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module model is needed by code_gen_local, api_server, inference (unload those first, or use --cascade)"
    );
    assert_eq!(m.loaded().len(), 5);
    lock(&log).clear();
    let done = m.unload("model", true).unwrap();
    assert_eq!(done, ["code_gen_local", "api_server", "inference", "model"]);
    assert_eq!(m.loaded(), ["tokenizer"]);
    assert!(m.invariant_violations().is_empty());
    assert!(matches!(
        m.unload("model", false),
        Err(ManagerError::NotLoaded { .. })
    ));
}

static CYCLE_A: ModuleSpec = ModuleSpec {
    id: "a",
    category: "test",
    description: "",
    provides: &["x"],
    needs: &["b"],
    optional: &[],
    conflicts: &[],
    cloud: false,
    hardware: HardwareNeeds::NONE,
    config: &[],
};
static CYCLE_B: ModuleSpec = ModuleSpec {
    id: "b",
    needs: &["c"],
    provides: &["y"],
    ..CYCLE_A
};
static CYCLE_C: ModuleSpec = ModuleSpec {
    id: "c",
    needs: &["a"],
    provides: &["z"],
    ..CYCLE_A
};

#[test]
fn cycles_are_found_and_named() {
    let log = Log::default();
    let modules: Vec<Box<dyn Module>> = [&CYCLE_A, &CYCLE_B, &CYCLE_C]
        .into_iter()
        .map(|s| Box::new(Stub::new(s, &log)) as Box<dyn Module>)
        .collect();
    let m = ModuleManager::new(modules, big(), None).unwrap();
    let err = m.load("b", &deps()).unwrap_err();
    assert_eq!(err.to_string(), "dependency cycle: b -> c -> a -> b");
    assert!(matches!(
        m.load("a", &LoadOptions::default()),
        Err(ManagerError::MissingNeeds { .. })
    ));
    assert!(lock(&log).is_empty());
}

#[test]
fn cloud_modules_need_permission() {
    let log = Log::default();
    let m = manager(&log);
    assert!(!m.allow_cloud());
    let err = m
        .load("image_gen_api", &LoadOptions::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "module image_gen_api sends data off this machine, and cloud modules are not allowed (allow them with `enigma modules allow-cloud on`)"
    );
    m.set_allow_cloud(true).unwrap();
    m.load("image_gen_api", &LoadOptions::default()).unwrap();
    let err = m.set_allow_cloud(false).unwrap_err();
    assert!(
        matches!(err, ManagerError::CloudLoaded(ref ids) if ids == &["image_gen_api"]),
        "{err}"
    );
    m.unload("image_gen_api", false).unwrap();
    m.set_allow_cloud(false).unwrap();
}

#[test]
fn hardware_needs_are_checked_against_a_small_machine() {
    let log = Log::default();
    let modules = stubs(&log, |s| {
        if s.spec.id == "model" {
            s.ram = 3 * GIB;
        }
    });
    // A Pi-sized machine: 2 GiB, 1 free, no GPU.
    let m = ModuleManager::new(modules, machine(2, 1, &[]), None).unwrap();
    let err = m.load("model", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module model cannot run on this machine: needs 3 GiB of RAM and this machine has 2 GiB"
    );
    let err = m
        .load("image_gen_local", &LoadOptions::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "module image_gen_local cannot run on this machine: needs an NVIDIA GPU with 6 GiB of memory and none was found (no CUDA driver)"
    );
    assert!(lock(&log).is_empty());

    // Enough in total but not free now; a GPU too small for video, big enough for 3D.
    let modules = stubs(&log, |s| {
        if s.spec.id == "model" {
            s.ram = 3 * GIB;
        }
    });
    let m = ModuleManager::new(modules, machine(8, 2, &[8]), None).unwrap();
    let err = m.load("model", &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("needs 3 GiB of RAM and only 2 GiB is free now"),
        "{err}"
    );
    let err = m
        .load("video_gen_local", &LoadOptions::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("needs 12 GiB of GPU memory and the largest GPU here has 8 GiB"),
        "{err}"
    );
    m.load("threed_gen_local", &LoadOptions::default()).unwrap();
    // The dry run used by `modules list` says the same.
    assert!(matches!(
        m.check("video_gen_local"),
        Err(ManagerError::Hardware { .. })
    ));
    assert!(m.check("image_gen_local").is_ok());
}

#[test]
fn unavailable_modules_say_so_and_never_load() {
    let log = Log::default();
    let modules: Vec<Box<dyn Module>> = CATALOG
        .iter()
        .map(|s| {
            if s.id == "vision" {
                Box::new(crate::module::Unavailable::new(
                    s,
                    "arrives with the addons",
                )) as Box<dyn Module>
            } else {
                Box::new(Stub::new(s, &log)) as Box<dyn Module>
            }
        })
        .collect();
    let m = ModuleManager::new(modules, big(), None).unwrap();
    let err = m.load("vision", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module vision is not available in this build: arrives with the addons"
    );
    assert_eq!(m.state("vision").unwrap(), State::Unloaded);
    assert!(matches!(
        m.load("nope", &LoadOptions::default()),
        Err(ManagerError::Unknown(_))
    ));
}

#[test]
fn settings_are_typed_and_checked() {
    let log = Log::default();
    let m = manager(&log);
    let set = |kv: &[&str]| LoadOptions {
        with_deps: false,
        set: kv.iter().map(|s| s.to_string()).collect(),
    };
    let err = m.load("api_server", &set(&["port=99999"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module api_server: port: 99999 is outside 0..=65535"
    );
    let err = m.load("model", &set(&["colour=red"])).unwrap_err();
    assert!(
        err.to_string()
            .contains("no config key 'colour'; its keys are model, threads"),
        "{err}"
    );
    m.load("model", &set(&["model=stories", "threads=2"]))
        .unwrap();
    let cfg = m.config("model").unwrap();
    assert_eq!(cfg["model"], Value::Str("stories".into()));
    assert_eq!(cfg["threads"], Value::Int(2));
}

fn state_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modules.json");
    (dir, path)
}

#[test]
fn the_loaded_set_and_configs_survive_a_restart() {
    let (_dir, path) = state_file();
    let log = Log::default();
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path.clone())).unwrap();
    m.set_allow_cloud(true).unwrap();
    let opts = LoadOptions {
        with_deps: true,
        set: vec!["port=9000".into()],
    };
    m.load("api_server", &opts).unwrap();
    m.load("image_gen_api", &LoadOptions::default()).unwrap();
    let saved = m.saved_state();
    drop(m);

    let log2 = Log::default();
    let m = ModuleManager::new(stubs(&log2, |_| {}), big(), Some(path.clone())).unwrap();
    let report = m.restore().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        report.loaded,
        [
            "model",
            "tokenizer",
            "inference",
            "image_gen_api",
            "api_server"
        ]
    );
    assert!(m.allow_cloud());
    assert_eq!(m.config("api_server").unwrap()["port"], Value::Int(9000));
    assert_eq!(m.saved_state(), saved);
    assert!(lock(&log2).iter().any(|l| l.contains("port=9000")));
}

#[test]
fn a_float_config_reads_back_to_the_bit_after_a_restart() {
    // Found by the modules_json fuzz target (issue 12, point 8): serde_json's default float parser may land
    // one ulp off, so 0.9333333333333333, written as the shortest text that names it, came back as
    // 0.9333333333333332 and every restart could move a saved setting.
    let (_dir, path) = state_file();
    let log = Log::default();
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path.clone())).unwrap();
    let opts = LoadOptions {
        with_deps: true,
        set: vec!["top_p=0.9333333333333333".into()],
    };
    m.load("inference", &opts).unwrap();
    let saved = m.saved_state();
    drop(m);

    let m = ModuleManager::new(stubs(&Log::default(), |_| {}), big(), Some(path)).unwrap();
    let report = m.restore().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        m.config("inference").unwrap()["top_p"],
        Value::Float(0.9333333333333333)
    );
    assert_eq!(m.saved_state(), saved);
}

#[test]
fn restore_follows_dependencies_not_file_order_and_reports_what_did_not_load() {
    let (_dir, path) = state_file();
    // Written by hand, needs last; plus a module that now fails, one that needs it, and an unknown id.
    std::fs::write(
        &path,
        r#"{"version": 1, "modules": [
            {"id": "code_gen_local"}, {"id": "inference"}, {"id": "tokenizer"},
            {"id": "model", "config": {"model": "m"}},
            {"id": "memory"}, {"id": "embedding_local"}, {"id": "telepathy"}
        ]}"#,
    )
    .unwrap();
    let log = Log::default();
    let modules = stubs(&log, |s| {
        if s.spec.id == "tokenizer" {
            s.fail_load.store(true, Ordering::SeqCst);
        }
    });
    let m = ModuleManager::new(modules, big(), Some(path.clone())).unwrap();
    let report = m.restore().unwrap();
    // embedding_local is memory's optional need, so it comes first too.
    assert_eq!(report.loaded, ["model", "embedding_local", "memory"]);
    assert_eq!(
        logged(&log),
        ["load model", "load embedding_local", "load memory"]
    );
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            ("telepathy", "no module of this name in this build"),
            ("tokenizer", "module tokenizer failed to load: tokenizer broke"),
            (
                "inference",
                "module inference needs tokenizer loaded first (or load it with --with-deps)"
            ),
            (
                "code_gen_local",
                "module code_gen_local needs tokenizer, inference loaded first (or load it with --with-deps)"
            ),
        ]
    );
    // What did not come back stays in the state (not silently dropped) until loaded or unloaded.
    assert!(m.is_pending("tokenizer").unwrap());
    m.load("network", &LoadOptions::default()).unwrap();
    let ids: Vec<String> = m.saved_state().modules.into_iter().map(|s| s.id).collect();
    assert!(ids.contains(&"tokenizer".to_string()), "{ids:?}");
    m.unload("code_gen_local", false).unwrap();
    assert!(!m.is_pending("code_gen_local").unwrap());
}

#[test]
fn a_corrupt_state_file_is_an_error_and_is_never_overwritten() {
    let (_dir, path) = state_file();
    let junk = b"{\"version\": 1, \"modules\": [ {\"id\": \"model\" ";
    std::fs::write(&path, junk).unwrap();
    let log = Log::default();
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path.clone())).unwrap();
    let err = m.restore().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot read the saved module state {}: EOF while parsing",
            path.display()
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with("the file is left as it is: fix it or move it away"),
        "{msg}"
    );
    for err in [
        m.load("network", &LoadOptions::default()).unwrap_err(),
        m.set_allow_cloud(true).unwrap_err(),
        m.save().unwrap_err(),
    ] {
        assert!(matches!(err, ManagerError::StateBlocked { .. }), "{err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), junk);
    assert!(lock(&log).is_empty());

    std::fs::write(&path, r#"{"version": 7}"#).unwrap();
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path.clone())).unwrap();
    assert!(m
        .restore()
        .unwrap_err()
        .to_string()
        .contains("version 7 (this build reads 1)"));
}

#[test]
fn the_registry_must_name_only_registered_modules() {
    let log = Log::default();
    let modules: Vec<Box<dyn Module>> = vec![Box::new(Stub::new(spec_of("inference"), &log))];
    let err = ModuleManager::new(modules, big(), None).err().unwrap();
    assert_eq!(
        err.to_string(),
        "the module registry is inconsistent: inference needs model, which is neither a registered module nor a capability one provides"
    );
}

#[test]
fn a_need_that_names_a_capability_is_met_by_any_provider() {
    let log = Log::default();
    let m = manager(&log);
    let err = m.load("api_server", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module api_server needs a provider of text_generation (inference, chat_api or gguf_loader) loaded first (or load it with --with-deps)"
    );
    // gguf_loader stands in for inference: the need is the capability, not a module.
    m.load("gguf_loader", &LoadOptions::default()).unwrap();
    lock(&log).clear();
    m.load("api_server", &deps()).unwrap();
    assert_eq!(
        logged(&log),
        ["load api_server"],
        "--with-deps adds nothing"
    );
    let err = m.unload("gguf_loader", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module gguf_loader is needed by api_server (unload those first, or use --cascade)"
    );
    assert_eq!(
        m.unload("gguf_loader", true).unwrap(),
        ["api_server", "gguf_loader"]
    );
    assert!(m.invariant_violations().is_empty());
    // With nothing providing it, --with-deps takes the first provider this build has and may run: inference
    // (chat_api is a cloud module, refused here).
    lock(&log).clear();
    assert_eq!(
        m.load("api_server", &deps()).unwrap(),
        ["model", "tokenizer", "inference", "api_server"]
    );
}

#[derive(Clone, Debug)]
enum Op {
    Load(usize, bool),
    Unload(usize, bool),
    AllowCloud(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CATALOG.len(), any::<bool>()).prop_map(|(i, d)| Op::Load(i, d)),
        2 => (0..CATALOG.len(), any::<bool>()).prop_map(|(i, c)| Op::Unload(i, c)),
        1 => any::<bool>().prop_map(Op::AllowCloud),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever is asked, in whatever order, and whichever modules fail: the loaded set never holds two
    /// providers of a capability or two conflicting modules, and every loaded module has its needs.
    #[test]
    fn any_sequence_keeps_the_loaded_set_consistent(
        ops in prop::collection::vec(op(), 1..40),
        failing in prop::collection::vec(0..CATALOG.len(), 0..3),
        stuck in prop::collection::vec(0..CATALOG.len(), 0..2),
    ) {
        let log = Log::default();
        let modules = stubs(&log, |s| {
            let i = CATALOG.iter().position(|c| c.id == s.spec.id).unwrap();
            s.fail_load.store(failing.contains(&i), Ordering::SeqCst);
            s.fail_unload.store(stuck.contains(&i), Ordering::SeqCst);
        });
        let m = ModuleManager::new(modules, machine(16, 8, &[8]), None).unwrap();
        for op in ops {
            let _ = match op {
                Op::Load(i, d) => m.load(CATALOG[i].id, &LoadOptions { with_deps: d, set: vec![] }).map(|_| ()),
                Op::Unload(i, c) => m.unload(CATALOG[i].id, c).map(|_| ()),
                Op::AllowCloud(a) => m.set_allow_cloud(a),
            };
            let bad = m.invariant_violations();
            prop_assert!(bad.is_empty(), "{:?} after {:?}", bad, op);
            for id in m.ids() {
                let s = m.state(id).unwrap();
                prop_assert!(matches!(s, State::Unloaded | State::Loaded | State::Failed), "{} is {:?}", id, s);
            }
        }
    }
}

#[test]
fn reading_the_saved_state_loads_nothing_and_forgetting_follows_needs() {
    let (_dir, path) = state_file();
    std::fs::write(
        &path,
        r#"{"version": 1, "allow_cloud": true, "modules": [
            {"id": "model", "config": {"model": "m"}}, {"id": "tokenizer"}, {"id": "inference"},
            {"id": "code_gen_local"}, {"id": "image_gen_api"}
        ]}"#,
    )
    .unwrap();
    let log = Log::default();
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path.clone())).unwrap();
    let report = m.read_saved().unwrap();
    assert!(
        report.failed.is_empty() && report.loaded.is_empty(),
        "{report:?}"
    );
    assert!(lock(&log).is_empty(), "{:?}", lock(&log));
    assert!(m.is_pending("inference").unwrap());
    assert_eq!(m.state("inference").unwrap(), State::Unloaded);
    assert!(m.allow_cloud());
    // A wanted cloud module counts: refusing cloud modules would leave it unable to restore.
    assert!(matches!(
        m.set_allow_cloud(false).unwrap_err(),
        ManagerError::CloudLoaded(_)
    ));
    // Forgetting a wanted module that others need is refused, or takes them along.
    let err = m.unload("tokenizer", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module tokenizer is needed by code_gen_local, inference (unload those first, or use --cascade)"
    );
    assert_eq!(
        m.unload("tokenizer", true).unwrap(),
        ["code_gen_local", "inference", "tokenizer"]
    );
    assert!(lock(&log).is_empty());
    let ids: Vec<String> = m.saved_state().modules.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["model", "image_gen_api"]);
    // The file now says so, and the remaining set still restores.
    let m = ModuleManager::new(stubs(&log, |_| {}), big(), Some(path)).unwrap();
    assert_eq!(m.restore().unwrap().loaded, ["model", "image_gen_api"]);
}

/// A tool that echoes its arguments, to check handles go in and out by capability.
struct Echo;

impl Tool for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "says its arguments back"
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({"type": "object"})
    }
    fn call(&self, arguments: &serde_json::Value) -> Result<serde_json::Value, ModuleError> {
        Ok(arguments.clone())
    }
}

/// `web_tools` that hands out `handles` (capability names, each served by [`Echo`]).
struct Tools(Vec<&'static str>);

impl Module for Tools {
    fn spec(&self) -> &'static ModuleSpec {
        spec_of("web_tools")
    }
    fn load(&mut self, _: &ModuleConfig, _: &Deps<'_>) -> Result<Provided, ModuleError> {
        Ok(Provided::new().with_all(&self.0, Arc::new(Echo) as Arc<dyn Tool>))
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        Ok(())
    }
    fn status(&self) -> String {
        String::new()
    }
    fn health(&self) -> Health {
        Health::Ok(String::new())
    }
}

fn with_tools(handles: Vec<&'static str>) -> ModuleManager {
    let log = Log::default();
    let modules = stubs(&log, |_| {})
        .into_iter()
        .map(|m| -> Box<dyn Module> {
            if m.spec().id == "web_tools" {
                Box::new(Tools(handles.clone()))
            } else {
                m
            }
        })
        .collect();
    ModuleManager::new(modules, big(), None).unwrap()
}

#[test]
fn capabilities_are_found_by_name_and_typed_by_family() {
    let m = with_tools(vec!["web_search"]);
    let err = m.get::<dyn Tool>("web_search").err().unwrap();
    assert_eq!(
        err.to_string(),
        "nothing loaded provides web_search (load web_tools: `enigma modules load web_tools --with-deps`)"
    );
    let err = m.handle("text_generation").err().unwrap();
    assert!(
        err.to_string()
            .contains("one of inference, chat_api, gguf_loader can"),
        "{err}"
    );
    m.load("web_tools", &LoadOptions::default()).unwrap();
    assert_eq!(m.provider("web_search"), Some("web_tools"));
    let tool = m.get::<dyn Tool>("web_search").unwrap();
    let args = serde_json::json!({"q": "rust"});
    assert_eq!(tool.call(&args).unwrap(), args);
    // Declared but not handed out: held for the rules, but nobody can call it.
    assert_eq!(
        m.get::<dyn Tool>("url_fetch").err().unwrap().to_string(),
        "web_tools provides url_fetch but hands out no handle for it in this build"
    );
    // Asked for as the wrong family.
    let err = m
        .get::<dyn crate::capability::TextGeneration>("web_search")
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "web_tools serves web_search as Tool, and the caller asked for TextGeneration"
    );
    m.unload("web_tools", false).unwrap();
    assert!(m.get::<dyn Tool>("web_search").is_err());
    // The handle a caller already holds stays usable after the unload.
    assert_eq!(tool.name(), "echo");
}

#[test]
fn a_module_may_only_hand_out_what_its_spec_declares() {
    let m = with_tools(vec!["web_search", "text_generation"]);
    let err = m.load("web_tools", &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(
            "it handed out text_generation, which its spec does not declare (it provides web_search, url_fetch)"
        ),
        "{err}"
    );
    assert_eq!(m.state("web_tools").unwrap(), State::Unloaded);
    assert!(m.handle("web_search").is_err());
}
