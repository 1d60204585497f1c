//! The module manager: the rules that decide what may load, the states, the events, and `modules.json`.
//!
//! The rules hold against every state but "unloaded": a module that is loading, loaded, unloading or failed
//! (an unload that went wrong) still holds its capabilities, so nothing else providing them may start. The
//! original only looked at "active" modules, which let a second provider in while the first was starting.
//!
//! `load` and `unload` take the table lock only to check and to record; the module's own work runs outside
//! it, so other callers (the server, the GUI) see "loading" meanwhile and are refused, not blocked.

use crate::capability::{Capability, Handle};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{HardwareNeeds, ModuleConfig, ModuleSpec};
use enigma_runtime::hardware::human_bytes;
use enigma_runtime::Hardware;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Unloaded,
    Loading,
    Loaded,
    Unloading,
    /// An unload failed: the module may still hold what it had, so it keeps its capabilities until an
    /// unload succeeds.
    Failed,
}

impl State {
    /// Whether a module in this state holds its capabilities and counts for conflicts.
    pub fn occupies(self) -> bool {
        self != State::Unloaded
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Unloaded => "unloaded",
            State::Loading => "loading",
            State::Loaded => "loaded",
            State::Unloading => "unloading",
            State::Failed => "failed",
        }
    }
}

/// What subscribers (the server, the GUI) hear.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    StateChanged {
        id: &'static str,
        from: State,
        to: State,
    },
    Loaded {
        id: &'static str,
    },
    Unloaded {
        id: &'static str,
    },
    Failed {
        id: &'static str,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no module named '{0}' (see `enigma modules list`)")]
    Unknown(String),
    #[error("module {id} is not available in this build: {reason}")]
    Unavailable { id: &'static str, reason: String },
    #[error("module {id} is already loaded")]
    AlreadyLoaded { id: &'static str },
    #[error("module {id} is not loaded")]
    NotLoaded { id: &'static str },
    #[error("module {id} is {}; try again when that finishes", state.name())]
    Busy { id: &'static str, state: State },
    #[error("module {id} sends data off this machine, and cloud modules are not allowed (allow them with `enigma modules allow-cloud on`)")]
    CloudRefused { id: &'static str },
    #[error("module {id} conflicts with {other}, which is {}", state.name())]
    Conflict {
        id: &'static str,
        other: &'static str,
        state: State,
    },
    #[error("module {id} provides {capability}, which {other} already provides ({other} is {})", state.name())]
    CapabilityTaken {
        id: &'static str,
        capability: &'static str,
        other: &'static str,
        state: State,
    },
    #[error("module {id} needs {} loaded first (or load it with --with-deps)", missing.join(", "))]
    MissingNeeds {
        id: &'static str,
        /// Module ids, or "a provider of CAPABILITY (its providers)" for a need that names a capability.
        missing: Vec<String>,
    },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<&'static str>),
    #[error("module {id} cannot run on this machine: {}", reasons.join("; "))]
    Hardware {
        id: &'static str,
        reasons: Vec<String>,
    },
    #[error("module {id} is needed by {} (unload those first, or use --cascade)", dependents.join(", "))]
    NeededBy {
        id: &'static str,
        dependents: Vec<&'static str>,
    },
    #[error("module {id}: {reason}")]
    Config { id: &'static str, reason: String },
    #[error(
        "module {id} failed to load: {cause}{}",
        rollback_note(rolled_back, rollback_errors)
    )]
    LoadFailed {
        id: &'static str,
        /// Not `source`: the message already says it, and a source would be printed twice.
        cause: ModuleError,
        /// Modules this call had loaded before the failure, unloaded again.
        rolled_back: Vec<&'static str>,
        rollback_errors: Vec<String>,
    },
    #[error("module {id} failed to unload: {cause}{}", if still_loaded.is_empty() { String::new() } else { format!(" ({} left loaded)", still_loaded.join(", ")) })]
    UnloadFailed {
        id: &'static str,
        cause: ModuleError,
        still_loaded: Vec<&'static str>,
    },
    #[error("cannot read the saved module state {}: {reason}; the file is left as it is: fix it or move it away", path.display())]
    StateCorrupt { path: PathBuf, reason: String },
    #[error("the saved module state {} could not be read, so it is not overwritten: fix it or move it away", path.display())]
    StateBlocked { path: PathBuf },
    #[error("the module state was not saved to {}: {reason}", path.display())]
    Save { path: PathBuf, reason: String },
    #[error("cloud modules are loaded ({}); unload them before disallowing cloud modules", .0.join(", "))]
    CloudLoaded(Vec<&'static str>),
    #[error("the module registry is inconsistent: {0}")]
    Registry(String),
    #[error("nothing loaded provides {capability}{}", provider_hint(candidates))]
    NoProvider {
        capability: String,
        /// Modules that could provide it.
        candidates: Vec<&'static str>,
    },
    #[error("{provider} provides {capability} but is {}; try again when that finishes", state.name())]
    ProviderBusy {
        capability: String,
        provider: &'static str,
        state: State,
    },
    #[error("{provider} provides {capability} but hands out no handle for it in this build")]
    NoHandle {
        capability: String,
        provider: &'static str,
    },
    #[error("{provider} serves {capability} as {got}, and the caller asked for {expected}")]
    WrongFamily {
        capability: String,
        provider: &'static str,
        got: &'static str,
        expected: &'static str,
    },
}

fn provider_hint(candidates: &[&str]) -> String {
    match candidates {
        [] => " (no module of this build provides it)".into(),
        [one] => format!(" (load {one}: `enigma modules load {one} --with-deps`)"),
        many => format!(
            " (one of {} can: `enigma modules load ID --with-deps`)",
            many.join(", ")
        ),
    }
}

fn rollback_note(rolled_back: &[&str], errors: &[String]) -> String {
    let mut s = String::new();
    if !rolled_back.is_empty() {
        s += &format!(" (unloaded again: {})", rolled_back.join(", "));
    }
    if !errors.is_empty() {
        s += &format!(" (and while undoing: {})", errors.join("; "));
    }
    s
}

pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

/// Options of [`ModuleManager::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load the module's needs first, in dependency order.
    pub with_deps: bool,
    /// `key=value` settings over the saved (or default) config.
    pub set: Vec<String>,
}

impl LoadOptions {
    /// `key=value` settings, without the needs.
    pub fn settings(kv: &[&str]) -> Self {
        LoadOptions {
            with_deps: false,
            set: kv.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The outcome of [`ModuleManager::restore`]: what came back and what did not, with why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreReport {
    pub loaded: Vec<&'static str>,
    pub failed: Vec<(String, String)>,
}

/// `modules.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    #[serde(default)]
    pub allow_cloud: bool,
    /// The loaded set, in dependency order, each with its config.
    #[serde(default)]
    pub modules: Vec<SavedModule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedModule {
    pub id: String,
    #[serde(default)]
    pub config: ModuleConfig,
}

pub const STATE_VERSION: u32 = 1;

/// Parses and checks the text of modules.json: the one place its bytes are validated.
pub fn parse_saved_state(text: &str) -> std::result::Result<SavedState, String> {
    let saved: SavedState = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if saved.version != STATE_VERSION {
        return Err(format!(
            "version {} (this build reads {STATE_VERSION})",
            saved.version
        ));
    }
    Ok(saved)
}

struct Slot {
    state: State,
    /// The config it runs with (when loaded) or last ran with.
    config: Option<ModuleConfig>,
    last_error: Option<String>,
    /// Wanted (saved in modules.json) but not loaded in this process: not restored yet (a command that
    /// only reads state never loads), or did not restore. Kept in the file (with this config) until the
    /// user loads or unloads it, so a model on an unplugged disk is not forgotten.
    pending: Option<ModuleConfig>,
    /// What the module serves while loaded, by capability.
    handles: Vec<(&'static str, Handle)>,
}

struct Table {
    slots: Vec<Slot>,
    allow_cloud: bool,
    /// Set when modules.json exists but could not be read: saving is refused so it is never overwritten.
    blocked: Option<PathBuf>,
}

/// One need of a module, resolved against the registry when the manager is made.
#[derive(Clone, Debug)]
enum Need {
    /// A module by id.
    Module(usize),
    /// A capability: whichever loaded module provides it meets the need (SPEC.md: api_server needs "a
    /// provider of text_generation"), so a local model and a cloud API stand in for each other.
    Capability {
        name: &'static str,
        providers: Vec<usize>,
    },
}

impl Need {
    /// The modules that can meet it.
    fn targets(&self) -> &[usize] {
        match self {
            Need::Module(j) => std::slice::from_ref(j),
            Need::Capability { providers, .. } => providers,
        }
    }
}

pub struct ModuleManager {
    specs: Vec<&'static ModuleSpec>,
    /// `needs[i]`: module `i`'s needs, resolved (module ids or capabilities).
    needs: Vec<Vec<Need>>,
    modules: Vec<Mutex<Box<dyn Module>>>,
    index: HashMap<&'static str, usize>,
    table: Mutex<Table>,
    hardware: Hardware,
    state_file: Option<PathBuf>,
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// A fixed order of all modules with every module after its needs and optional needs (registry order
    /// where there is a cycle), used to write modules.json.
    order: Vec<usize>,
}

/// A poisoned lock means a module panicked mid-call; the table itself is still consistent (every write to
/// it is a single assignment), so carry on rather than turn one module's panic into everyone's.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why `need` does not fit on `hw`, one reason per shortfall.
pub fn hardware_shortfalls(need: &HardwareNeeds, hw: &Hardware) -> Vec<String> {
    let mut why = Vec::new();
    if need.ram > 0 {
        match (hw.total_ram, hw.free_ram) {
            (Some(total), _) if need.ram > total => why.push(format!(
                "needs {} of RAM and this machine has {}",
                human_bytes(need.ram),
                human_bytes(total)
            )),
            (_, Some(free)) if need.ram > free => why.push(format!(
                "needs {} of RAM and only {} is free now",
                human_bytes(need.ram),
                human_bytes(free)
            )),
            _ => {}
        }
    }
    if need.cores > hw.cores {
        why.push(format!(
            "needs {} CPU cores and this machine has {}",
            need.cores, hw.cores
        ));
    }
    if (need.gpu || need.vram > 0) && hw.gpus.is_empty() {
        why.push(format!(
            "needs an NVIDIA GPU{} and none was found ({})",
            if need.vram > 0 {
                format!(" with {} of memory", human_bytes(need.vram))
            } else {
                String::new()
            },
            hw.cuda_note.as_deref().unwrap_or("no CUDA device")
        ));
    } else if need.vram > 0 {
        let largest = hw.max_vram().unwrap_or(0);
        let most_free = hw
            .gpus
            .iter()
            .map(|g| g.free_vram.unwrap_or(g.total_vram))
            .max()
            .unwrap_or(0);
        if largest < need.vram {
            why.push(format!(
                "needs {} of GPU memory and the largest GPU here has {}",
                human_bytes(need.vram),
                human_bytes(largest)
            ));
        } else if most_free < need.vram {
            why.push(format!(
                "needs {} of GPU memory and at most {} is free now",
                human_bytes(need.vram),
                human_bytes(most_free)
            ));
        }
    }
    why
}

impl ModuleManager {
    /// A manager over `modules` on the machine `hardware`, saving to `state_file` (none: nothing is saved).
    /// Every id a module names (needs, optional, conflicts) must be registered.
    pub fn new(
        modules: Vec<Box<dyn Module>>,
        hardware: Hardware,
        state_file: Option<PathBuf>,
    ) -> Result<Self> {
        let specs: Vec<&'static ModuleSpec> = modules.iter().map(|m| m.spec()).collect();
        let mut index = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            if index.insert(s.id, i).is_some() {
                return Err(ManagerError::Registry(format!(
                    "two modules named {}",
                    s.id
                )));
            }
        }
        let mut needs = Vec::with_capacity(specs.len());
        for s in &specs {
            let mut resolved = Vec::with_capacity(s.needs.len());
            for &n in s.needs {
                if let Some(&j) = index.get(n) {
                    resolved.push(Need::Module(j));
                    continue;
                }
                let providers: Vec<usize> = (0..specs.len())
                    .filter(|&j| specs[j].provides.contains(&n))
                    .collect();
                if providers.is_empty() {
                    return Err(ManagerError::Registry(format!(
                        "{} needs {n}, which is neither a registered module nor a capability one provides",
                        s.id
                    )));
                }
                resolved.push(Need::Capability { name: n, providers });
            }
            needs.push(resolved);
            for r in s.optional.iter().chain(s.conflicts) {
                if !index.contains_key(r) {
                    return Err(ManagerError::Registry(format!(
                        "{} names {r}, which is not registered",
                        s.id
                    )));
                }
            }
        }
        let n = specs.len();
        let mut m = ModuleManager {
            specs,
            needs,
            modules: modules.into_iter().map(Mutex::new).collect(),
            index,
            table: Mutex::new(Table {
                slots: (0..n)
                    .map(|_| Slot {
                        state: State::Unloaded,
                        config: None,
                        last_error: None,
                        pending: None,
                        handles: Vec::new(),
                    })
                    .collect(),
                allow_cloud: false,
                blocked: None,
            }),
            hardware,
            state_file,
            subscribers: Mutex::new(Vec::new()),
            order: Vec::new(),
        };
        let all: Vec<usize> = (0..n).collect();
        m.order = m.topo_order(&all, true).unwrap_or(all);
        Ok(m)
    }

    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    pub fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.specs.iter().map(|s| s.id)
    }

    pub fn spec(&self, id: &str) -> Result<&'static ModuleSpec> {
        Ok(self.specs[self.idx(id)?])
    }

    fn idx(&self, id: &str) -> Result<usize> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| ManagerError::Unknown(id.to_string()))
    }

    pub fn state(&self, id: &str) -> Result<State> {
        let i = self.idx(id)?;
        Ok(lock(&self.table).slots[i].state)
    }

    /// The config a module runs with (loaded) or would be loaded with (saved, or defaults).
    pub fn config(&self, id: &str) -> Result<ModuleConfig> {
        let i = self.idx(id)?;
        let t = lock(&self.table);
        let s = &t.slots[i];
        Ok(s.config
            .clone()
            .or_else(|| s.pending.clone())
            .unwrap_or_else(|| self.specs[i].defaults()))
    }

    /// The last load or unload error of a module, if its last attempt failed.
    pub fn last_error(&self, id: &str) -> Result<Option<String>> {
        let i = self.idx(id)?;
        Ok(lock(&self.table).slots[i].last_error.clone())
    }

    /// Saved in modules.json but not loaded (it did not restore).
    pub fn is_pending(&self, id: &str) -> Result<bool> {
        let i = self.idx(id)?;
        Ok(lock(&self.table).slots[i].pending.is_some())
    }

    /// Loaded modules, in dependency order.
    pub fn loaded(&self) -> Vec<&'static str> {
        let t = lock(&self.table);
        self.order
            .iter()
            .filter(|&&i| t.slots[i].state == State::Loaded)
            .map(|&i| self.specs[i].id)
            .collect()
    }

    /// The loaded module that provides `capability`, if any (the one-provider rule makes it unique).
    pub fn provider(&self, capability: &str) -> Option<&'static str> {
        let t = lock(&self.table);
        (0..self.specs.len())
            .find(|&i| {
                t.slots[i].state == State::Loaded && self.specs[i].provides.contains(&capability)
            })
            .map(|i| self.specs[i].id)
    }

    /// The handle serving `capability`, from whichever loaded module provides it.
    pub fn handle(&self, capability: &str) -> Result<Handle> {
        let t = lock(&self.table);
        let holder = (0..self.specs.len())
            .find(|&i| t.slots[i].state.occupies() && self.specs[i].provides.contains(&capability));
        let Some(i) = holder else {
            return Err(ManagerError::NoProvider {
                capability: capability.to_string(),
                candidates: self
                    .specs
                    .iter()
                    .filter(|s| s.provides.contains(&capability))
                    .map(|s| s.id)
                    .collect(),
            });
        };
        let provider = self.specs[i].id;
        if t.slots[i].state != State::Loaded {
            return Err(ManagerError::ProviderBusy {
                capability: capability.to_string(),
                provider,
                state: t.slots[i].state,
            });
        }
        t.slots[i]
            .handles
            .iter()
            .find(|(c, _)| *c == capability)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| ManagerError::NoHandle {
                capability: capability.to_string(),
                provider,
            })
    }

    /// The handle serving `capability` as the family `C`: `m.get::<dyn TextGeneration>("text_generation")`.
    pub fn get<C: Capability + ?Sized>(&self, capability: &str) -> Result<Arc<C>> {
        let handle = self.handle(capability)?;
        C::from_handle(&handle).ok_or_else(|| ManagerError::WrongFamily {
            capability: capability.to_string(),
            provider: self.provider(capability).unwrap_or("?"),
            got: handle.family(),
            expected: C::FAMILY,
        })
    }

    /// A module may only serve what its spec declares, once each.
    fn check_provided(
        &self,
        i: usize,
        handles: &[(&'static str, Handle)],
    ) -> Result<(), ModuleError> {
        let spec = self.specs[i];
        for (k, (c, _)) in handles.iter().enumerate() {
            if !spec.provides.contains(c) {
                return Err(ModuleError::Failed(format!(
                    "it handed out {c}, which its spec does not declare (it provides {})",
                    spec.provides.join(", ")
                )));
            }
            if handles[..k].iter().any(|(d, _)| d == c) {
                return Err(ModuleError::Failed(format!("it handed out {c} twice")));
            }
        }
        Ok(())
    }

    pub fn unavailable(&self, id: &str) -> Result<Option<String>> {
        let i = self.idx(id)?;
        Ok(lock(&self.modules[i]).unavailable())
    }

    pub fn status(&self, id: &str) -> Result<String> {
        let i = self.idx(id)?;
        Ok(lock(&self.modules[i]).status())
    }

    pub fn health(&self, id: &str) -> Result<Health> {
        let i = self.idx(id)?;
        if lock(&self.table).slots[i].state != State::Loaded {
            return Ok(Health::NotLoaded);
        }
        Ok(lock(&self.modules[i]).health())
    }

    pub fn allow_cloud(&self) -> bool {
        lock(&self.table).allow_cloud
    }

    /// Allows or refuses cloud modules, and saves the choice. Refusing them while some are loaded is an error.
    pub fn set_allow_cloud(&self, allow: bool) -> Result<()> {
        {
            let mut t = lock(&self.table);
            if !allow {
                let loaded: Vec<&'static str> = (0..self.specs.len())
                    .filter(|&i| {
                        self.specs[i].cloud
                            && (t.slots[i].state.occupies() || t.slots[i].pending.is_some())
                    })
                    .map(|i| self.specs[i].id)
                    .collect();
                if !loaded.is_empty() {
                    return Err(ManagerError::CloudLoaded(loaded));
                }
            }
            if let Some(path) = &t.blocked {
                return Err(ManagerError::StateBlocked { path: path.clone() });
            }
            t.allow_cloud = allow;
        }
        self.save()
    }

    /// Events from now on. A subscriber that goes away is dropped at the next event.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    fn emit(&self, e: Event) {
        lock(&self.subscribers).retain(|s| s.send(e.clone()).is_ok());
    }

    fn set_state(&self, t: &mut Table, i: usize, to: State) {
        let from = t.slots[i].state;
        t.slots[i].state = to;
        if from != to {
            self.emit(Event::StateChanged {
                id: self.specs[i].id,
                from,
                to,
            });
        }
    }

    /// `members` ordered so that every module comes after what it needs (and, with `optional`, after what
    /// it optionally uses) among `members`; ties keep registry order. A cycle is an error naming it.
    fn topo_order(&self, members: &[usize], optional: bool) -> Result<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        let mut mark = vec![Mark::New; self.specs.len()];
        let inside: Vec<bool> = (0..self.specs.len())
            .map(|i| members.contains(&i))
            .collect();
        let mut out = Vec::new();
        let mut path: Vec<usize> = Vec::new();
        fn visit(
            m: &ModuleManager,
            i: usize,
            optional: bool,
            inside: &[bool],
            mark: &mut [Mark],
            path: &mut Vec<usize>,
            out: &mut Vec<usize>,
        ) -> Result<()> {
            match mark[i] {
                Mark::Done => return Ok(()),
                Mark::Visiting => {
                    let start = path.iter().position(|&p| p == i).unwrap_or(0);
                    let mut cycle: Vec<&'static str> =
                        path[start..].iter().map(|&p| m.specs[p].id).collect();
                    cycle.push(m.specs[i].id);
                    return Err(ManagerError::Cycle(cycle));
                }
                Mark::New => {}
            }
            mark[i] = Mark::Visiting;
            path.push(i);
            let opt: &[&str] = if optional { m.specs[i].optional } else { &[] };
            let deps = m.needs[i]
                .iter()
                .flat_map(|n| n.targets().iter().copied())
                .chain(opt.iter().map(|o| m.index[o]));
            for j in deps {
                if inside[j] {
                    visit(m, j, optional, inside, mark, path, out)?;
                }
            }
            path.pop();
            mark[i] = Mark::Done;
            out.push(i);
            Ok(())
        }
        for &i in members {
            visit(self, i, optional, &inside, &mut mark, &mut path, &mut out)?;
        }
        Ok(out)
    }

    /// `target` and everything it needs, transitively, needs first. A capability need adds nothing when a
    /// module providing it occupies its slot already; otherwise its first provider in registry order that
    /// this build has and that may run (cloud ones only when cloud modules are allowed).
    fn with_needs(&self, target: usize) -> Result<Vec<usize>> {
        let (occupied, allow_cloud): (Vec<bool>, bool) = {
            let t = lock(&self.table);
            (
                t.slots.iter().map(|s| s.state.occupies()).collect(),
                t.allow_cloud,
            )
        };
        let mut members = vec![target];
        let mut k = 0;
        while k < members.len() {
            for need in &self.needs[members[k]] {
                let j = match need {
                    Need::Module(j) => *j,
                    Need::Capability { providers, .. } => {
                        if providers
                            .iter()
                            .any(|&p| occupied[p] || members.contains(&p))
                        {
                            continue;
                        }
                        let usable = providers.iter().copied().find(|&p| {
                            (allow_cloud || !self.specs[p].cloud)
                                && lock(&self.modules[p]).unavailable().is_none()
                        });
                        match usable {
                            Some(p) => p,
                            // check_one names the capability and its providers.
                            None => continue,
                        }
                    }
                };
                if !members.contains(&j) {
                    members.push(j);
                }
            }
            k += 1;
        }
        // The target is visited first, so a cycle is reported starting there.
        self.topo_order(&members, false)
    }

    /// Whether module `i` may start with `config` when the states are `sim`. Checks, in order: available,
    /// not already active, cloud allowed, no explicit conflict, no capability taken, needs loaded, hardware.
    fn check_one(&self, t: &Table, i: usize, config: &ModuleConfig, sim: &[State]) -> Result<()> {
        let spec = self.specs[i];
        let id = spec.id;
        // The state first: a module that is loading or unloading has its own lock held by that work, and
        // asking it anything here would block every caller until it finishes.
        match sim[i] {
            State::Unloaded => {}
            State::Loaded => return Err(ManagerError::AlreadyLoaded { id }),
            state => return Err(ManagerError::Busy { id, state }),
        }
        if let Some(reason) = lock(&self.modules[i]).unavailable() {
            return Err(ManagerError::Unavailable { id, reason });
        }
        if spec.cloud && !t.allow_cloud {
            return Err(ManagerError::CloudRefused { id });
        }
        for (j, other) in self.specs.iter().enumerate() {
            if j == i || !sim[j].occupies() {
                continue;
            }
            if spec.conflicts.contains(&other.id) || other.conflicts.contains(&id) {
                return Err(ManagerError::Conflict {
                    id,
                    other: other.id,
                    state: sim[j],
                });
            }
            if let Some(capability) = spec.provides.iter().find(|c| other.provides.contains(c)) {
                return Err(ManagerError::CapabilityTaken {
                    id,
                    capability,
                    other: other.id,
                    state: sim[j],
                });
            }
        }
        let missing: Vec<String> = self.needs[i]
            .iter()
            .filter(|n| !n.targets().iter().any(|&j| sim[j] == State::Loaded))
            .map(|n| self.need_name(n))
            .collect();
        if !missing.is_empty() {
            return Err(ManagerError::MissingNeeds { id, missing });
        }
        let needs =
            lock(&self.modules[i])
                .hardware_needs(config)
                .map_err(|e| ManagerError::Config {
                    id,
                    reason: e.to_string(),
                })?;
        let reasons = hardware_shortfalls(&needs, &self.hardware);
        if !reasons.is_empty() {
            return Err(ManagerError::Hardware { id, reasons });
        }
        Ok(())
    }

    /// Why `id` cannot be loaded right now with its saved (or default) config, or `Ok` when it can.
    /// Changes nothing.
    pub fn check(&self, id: &str) -> Result<()> {
        let i = self.idx(id)?;
        let t = lock(&self.table);
        let base = t.slots[i]
            .config
            .clone()
            .or_else(|| t.slots[i].pending.clone());
        let config = self.specs[i]
            .resolve(base.as_ref(), &[])
            .map_err(|reason| ManagerError::Config {
                id: self.specs[i].id,
                reason,
            })?;
        let sim: Vec<State> = t.slots.iter().map(|s| s.state).collect();
        self.check_one(&t, i, &config, &sim)
    }

    /// Loads `id` (and with `with_deps` its needs first), then saves the loaded set. Returns the modules
    /// loaded, in order. If one fails, those this call loaded are unloaded again and the error says so.
    pub fn load(&self, id: &str, opts: &LoadOptions) -> Result<Vec<&'static str>> {
        let target = self.idx(id)?;
        let result = self.load_inner(target, opts.with_deps, &opts.set, None, true);
        let changed = match &result {
            Ok(_) => true,
            // An undo that did not finish leaves modules loaded that were not before.
            Err(ManagerError::LoadFailed {
                rollback_errors, ..
            }) => !rollback_errors.is_empty(),
            Err(_) => false,
        };
        let saved = if changed { self.save() } else { Ok(()) };
        let done = result?;
        saved?;
        Ok(done)
    }

    fn load_inner(
        &self,
        target: usize,
        with_deps: bool,
        set: &[String],
        saved: Option<&ModuleConfig>,
        persist: bool,
    ) -> Result<Vec<&'static str>> {
        let order = if with_deps {
            self.with_needs(target)?
        } else {
            vec![target]
        };
        let mut t = lock(&self.table);
        if persist {
            if let Some(path) = &t.blocked {
                return Err(ManagerError::StateBlocked { path: path.clone() });
            }
        }
        let plan: Vec<usize> = order
            .into_iter()
            .filter(|&i| i == target || t.slots[i].state != State::Loaded)
            .collect();
        let mut configs = Vec::with_capacity(plan.len());
        for &i in &plan {
            let slot = &t.slots[i];
            let base = match saved {
                Some(c) if i == target => Some(c.clone()),
                _ => slot.config.clone().or_else(|| slot.pending.clone()),
            };
            let extra = if i == target { set } else { &[] };
            let cfg = self.specs[i]
                .resolve(base.as_ref(), extra)
                .map_err(|reason| ManagerError::Config {
                    id: self.specs[i].id,
                    reason,
                })?;
            configs.push(cfg);
        }
        // Check the whole plan before starting any of it, as if each earlier step had succeeded.
        let mut sim: Vec<State> = t.slots.iter().map(|s| s.state).collect();
        for (k, &i) in plan.iter().enumerate() {
            self.check_one(&t, i, &configs[k], &sim)?;
            sim[i] = State::Loaded;
        }
        // Reserve: from here on every module of the plan holds its capabilities.
        for &i in &plan {
            self.set_state(&mut t, i, State::Loading);
        }
        drop(t);

        let mut done: Vec<usize> = Vec::new();
        for (k, &i) in plan.iter().enumerate() {
            let result = {
                let lookup = |c: &str| self.handle(c).map_err(|e| e.to_string());
                let deps = Deps::new(&lookup);
                let mut module = lock(&self.modules[i]);
                match module.load(&configs[k], &deps) {
                    Ok(provided) => match self.check_provided(i, &provided.handles) {
                        Ok(()) => Ok((module.resolved_config(&configs[k]), provided)),
                        Err(e) => {
                            // It loaded, so it holds things: release them.
                            let _ = module.unload();
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                }
            };
            let mut t = lock(&self.table);
            match result {
                Ok((resolved, provided)) => {
                    let slot = &mut t.slots[i];
                    slot.config = Some(resolved);
                    slot.last_error = None;
                    slot.pending = None;
                    slot.handles = provided.handles;
                    self.set_state(&mut t, i, State::Loaded);
                    self.emit(Event::Loaded {
                        id: self.specs[i].id,
                    });
                    done.push(i);
                }
                Err(source) => {
                    t.slots[i].last_error = Some(source.to_string());
                    self.set_state(&mut t, i, State::Unloaded);
                    self.emit(Event::Failed {
                        id: self.specs[i].id,
                        reason: source.to_string(),
                    });
                    for &j in &plan[k + 1..] {
                        self.set_state(&mut t, j, State::Unloaded);
                    }
                    drop(t);
                    // Undo newest first. If one will not unload, what it needs stays loaded under it.
                    let mut rolled_back = Vec::new();
                    let mut rollback_errors = Vec::new();
                    for (n, &j) in done.iter().enumerate().rev() {
                        match self.unload_one(j) {
                            Ok(()) => rolled_back.push(self.specs[j].id),
                            Err(e) => {
                                let left: Vec<&str> =
                                    done[..n].iter().map(|&k| self.specs[k].id).collect();
                                rollback_errors.push(if left.is_empty() {
                                    format!("{} would not unload: {e}", self.specs[j].id)
                                } else {
                                    format!(
                                        "{} would not unload: {e}; left loaded: {}",
                                        self.specs[j].id,
                                        left.join(", ")
                                    )
                                });
                                break;
                            }
                        }
                    }
                    return Err(ManagerError::LoadFailed {
                        id: self.specs[i].id,
                        cause: source,
                        rolled_back,
                        rollback_errors,
                    });
                }
            }
        }
        Ok(done.into_iter().map(|i| self.specs[i].id).collect())
    }

    /// Unloads one module already marked for it (or loaded), recording the outcome.
    fn unload_one(&self, i: usize) -> Result<(), ModuleError> {
        {
            let mut t = lock(&self.table);
            // From now on nobody gets a new handle to it; callers holding one keep it alive.
            t.slots[i].handles.clear();
            self.set_state(&mut t, i, State::Unloading);
        }
        let result = lock(&self.modules[i]).unload();
        let mut t = lock(&self.table);
        match &result {
            Ok(()) => {
                t.slots[i].last_error = None;
                self.set_state(&mut t, i, State::Unloaded);
                self.emit(Event::Unloaded {
                    id: self.specs[i].id,
                });
            }
            Err(e) => {
                t.slots[i].last_error = Some(e.to_string());
                self.set_state(&mut t, i, State::Failed);
                self.emit(Event::Failed {
                    id: self.specs[i].id,
                    reason: e.to_string(),
                });
            }
        }
        result
    }

    /// Whether module `b` has a need that module `a` can meet (by id, or by providing the capability named).
    /// With one provider of a capability at a time, whichever provider occupies its slot is the one meeting it.
    fn depends_on(&self, b: usize, a: usize) -> bool {
        self.needs[b].iter().any(|n| n.targets().contains(&a))
    }

    /// A need as messages name it: the module's id, or "a provider of text_generation (inference, chat_api
    /// or gguf_loader)".
    fn need_name(&self, need: &Need) -> String {
        match need {
            Need::Module(j) => self.specs[*j].id.to_string(),
            Need::Capability { name, providers } => {
                let ids: Vec<&str> = providers.iter().map(|&j| self.specs[j].id).collect();
                let list = match ids.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => ids.join(""),
                };
                format!("a provider of {name} ({list})")
            }
        }
    }

    /// Occupying modules that need `target`, directly or through others, each after everything that
    /// needs it (so unloading them in this order never leaves a module without its needs).
    fn dependents(&self, t: &Table, target: usize) -> Vec<usize> {
        let mut set = vec![target];
        let mut changed = true;
        while changed {
            changed = false;
            for j in 0..self.specs.len() {
                if set.contains(&j) || !t.slots[j].state.occupies() {
                    continue;
                }
                if set.iter().any(|&s| self.depends_on(j, s)) {
                    set.push(j);
                    changed = true;
                }
            }
        }
        set.retain(|&j| j != target);
        // Repeatedly take one that no remaining member needs.
        let mut ordered = Vec::new();
        while !set.is_empty() {
            let pos = set
                .iter()
                .position(|&a| !set.iter().any(|&b| b != a && self.depends_on(b, a)))
                .unwrap_or(0);
            ordered.push(set.remove(pos));
        }
        ordered
    }

    /// Wanted modules that need `target`, directly or through others, dependents of dependents first.
    fn pending_dependents(&self, t: &Table, target: usize) -> Vec<usize> {
        let mut set = vec![target];
        let mut k = 0;
        while k < set.len() {
            let need = set[k];
            for j in 0..self.specs.len() {
                if t.slots[j].pending.is_some() && !set.contains(&j) && self.depends_on(j, need) {
                    set.push(j);
                }
            }
            k += 1;
        }
        set.remove(0);
        set.reverse();
        set
    }

    /// The loaded (or failed) modules that need `id`, directly or through others, in the order a cascade
    /// unloads them: what `unload(id, true)` would take with it. Changes nothing.
    pub fn dependents_of(&self, id: &str) -> Result<Vec<&'static str>> {
        let target = self.idx(id)?;
        let t = lock(&self.table);
        Ok(self
            .dependents(&t, target)
            .into_iter()
            .map(|j| self.specs[j].id)
            .collect())
    }

    /// Unloads `id`; with `cascade`, first the modules that need it (dependents of dependents first).
    /// Returns the modules unloaded, in order. A module that is wanted but not loaded here (pending) is
    /// forgotten, with (under `cascade`) the wanted modules that need it, and those are returned.
    pub fn unload(&self, id: &str, cascade: bool) -> Result<Vec<&'static str>> {
        let target = self.idx(id)?;
        let id = self.specs[target].id;
        let mut t = lock(&self.table);
        if let Some(path) = &t.blocked {
            return Err(ManagerError::StateBlocked { path: path.clone() });
        }
        match t.slots[target].state {
            State::Loaded | State::Failed => {}
            State::Unloaded if t.slots[target].pending.is_some() => {
                // Wanted but not loaded here: only the wanted set changes, and what needs it goes with it.
                let dependents = self.pending_dependents(&t, target);
                if !dependents.is_empty() && !cascade {
                    return Err(ManagerError::NeededBy {
                        id,
                        dependents: dependents.iter().map(|&j| self.specs[j].id).collect(),
                    });
                }
                let mut forgotten = Vec::new();
                for j in dependents.into_iter().chain([target]) {
                    t.slots[j].pending = None;
                    t.slots[j].last_error = None;
                    forgotten.push(self.specs[j].id);
                }
                drop(t);
                self.save()?;
                return Ok(forgotten);
            }
            State::Unloaded => return Err(ManagerError::NotLoaded { id }),
            state => return Err(ManagerError::Busy { id, state }),
        }
        let dependents = self.dependents(&t, target);
        if !dependents.is_empty() && !cascade {
            return Err(ManagerError::NeededBy {
                id,
                dependents: dependents.iter().map(|&j| self.specs[j].id).collect(),
            });
        }
        for &j in &dependents {
            let state = t.slots[j].state;
            if matches!(state, State::Loading | State::Unloading) {
                return Err(ManagerError::Busy {
                    id: self.specs[j].id,
                    state,
                });
            }
        }
        let mut order = dependents;
        order.push(target);
        let before: Vec<State> = order.iter().map(|&j| t.slots[j].state).collect();
        for &j in &order {
            self.set_state(&mut t, j, State::Unloading);
        }
        drop(t);
        let mut done = Vec::new();
        for (k, &j) in order.iter().enumerate() {
            if let Err(source) = self.unload_one(j) {
                let mut t = lock(&self.table);
                for (m, &rest) in order.iter().enumerate().skip(k + 1) {
                    self.set_state(&mut t, rest, before[m]);
                }
                drop(t);
                let saved = self.save();
                let err = ManagerError::UnloadFailed {
                    id: self.specs[j].id,
                    cause: source,
                    still_loaded: order[k + 1..].iter().map(|&r| self.specs[r].id).collect(),
                };
                saved?;
                return Err(err);
            }
            done.push(self.specs[j].id);
        }
        self.save()?;
        Ok(done)
    }

    /// The state to save: loaded modules and those that did not restore, in dependency order.
    pub fn saved_state(&self) -> SavedState {
        let t = lock(&self.table);
        let modules = self
            .order
            .iter()
            .filter_map(|&i| {
                let s = &t.slots[i];
                let config = match s.state {
                    State::Loaded => s.config.clone(),
                    _ => s.pending.clone(),
                }?;
                Some(SavedModule {
                    id: self.specs[i].id.to_string(),
                    config,
                })
            })
            .collect();
        SavedState {
            version: STATE_VERSION,
            allow_cloud: t.allow_cloud,
            modules,
        }
    }

    /// Writes modules.json atomically (a reader sees the old file or the new one, never a mix).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if let Some(blocked) = &lock(&self.table).blocked {
            return Err(ManagerError::StateBlocked {
                path: blocked.clone(),
            });
        }
        let err = |reason: String| ManagerError::Save {
            path: path.clone(),
            reason,
        };
        let mut text =
            serde_json::to_string_pretty(&self.saved_state()).map_err(|e| err(e.to_string()))?;
        text.push('\n');
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        enigma_runtime::writer::atomic_write(path, text.as_bytes()).map_err(|e| err(e.to_string()))
    }

    /// Reads modules.json: the wanted set becomes pending (wanted, not loaded) and nothing is loaded, so a
    /// command that only looks (`modules list`, `info`, `status`) never opens a model. A missing file is an
    /// empty state; an unreadable one is an error, and the file is then never written. Ids this build
    /// does not know, and ids listed twice, are in the report's `failed`.
    pub fn read_saved(&self) -> Result<RestoreReport> {
        let Some(path) = self.state_file.clone() else {
            return Ok(RestoreReport::default());
        };
        let corrupt = |reason: String| {
            lock(&self.table).blocked = Some(path.clone());
            ManagerError::StateCorrupt {
                path: path.clone(),
                reason,
            }
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RestoreReport::default())
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let saved = parse_saved_state(&text).map_err(corrupt)?;
        let mut report = RestoreReport::default();
        let mut t = lock(&self.table);
        t.allow_cloud = saved.allow_cloud;
        for m in &saved.modules {
            match self.index.get(m.id.as_str()) {
                // Already hosted by this process.
                Some(&i) if t.slots[i].state.occupies() => {}
                Some(&i) if t.slots[i].pending.is_none() => {
                    t.slots[i].pending = Some(m.config.clone());
                }
                Some(_) => report
                    .failed
                    .push((m.id.clone(), "listed twice; the first is used".into())),
                None => report
                    .failed
                    .push((m.id.clone(), "no module of this name in this build".into())),
            }
        }
        Ok(report)
    }

    /// Reads modules.json and loads what it lists, needs before the modules that need them (whatever the
    /// file's order): what a process that hosts modules does when it starts. A module that no longer
    /// loads is reported, kept in the file, and the rest go on.
    pub fn restore(&self) -> Result<RestoreReport> {
        let mut report = self.read_saved()?;
        let (members, mut configs): (Vec<usize>, HashMap<usize, ModuleConfig>) = {
            let t = lock(&self.table);
            let members: Vec<usize> = (0..self.specs.len())
                .filter(|&i| t.slots[i].pending.is_some())
                .collect();
            let configs = members
                .iter()
                .filter_map(|&i| Some((i, t.slots[i].pending.clone()?)))
                .collect();
            (members, configs)
        };
        let order = match self.topo_order(&members, true) {
            Ok(order) => order,
            Err(cycle) => {
                // Optional links can only order, not forbid; fall back to needs alone.
                self.topo_order(&members, false).map_err(|_| {
                    if let Some(path) = &self.state_file {
                        lock(&self.table).blocked = Some(path.clone());
                    }
                    ManagerError::StateCorrupt {
                        path: self.state_file.clone().unwrap_or_default(),
                        reason: cycle.to_string(),
                    }
                })?
            }
        };
        for i in order {
            let config = configs.remove(&i).unwrap_or_default();
            match self.load_inner(i, false, &[], Some(&config), false) {
                Ok(_) => report.loaded.push(self.specs[i].id),
                Err(e) => {
                    let mut t = lock(&self.table);
                    t.slots[i].pending = Some(config);
                    t.slots[i].last_error = Some(e.to_string());
                    report
                        .failed
                        .push((self.specs[i].id.to_string(), e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Checks the loaded set against every rule: no two occupying modules share a capability or conflict,
    /// and every loaded module's needs are loaded. Used by tests; cheap enough to call anywhere.
    pub fn invariant_violations(&self) -> Vec<String> {
        let t = lock(&self.table);
        let mut v = Vec::new();
        let n = self.specs.len();
        for a in 0..n {
            if !t.slots[a].state.occupies() {
                continue;
            }
            let sa = self.specs[a];
            for b in a + 1..n {
                if !t.slots[b].state.occupies() {
                    continue;
                }
                let sb = self.specs[b];
                if sa.conflicts.contains(&sb.id) || sb.conflicts.contains(&sa.id) {
                    v.push(format!("{} and {} conflict", sa.id, sb.id));
                }
                if let Some(c) = sa.provides.iter().find(|c| sb.provides.contains(c)) {
                    v.push(format!("{} and {} both provide {c}", sa.id, sb.id));
                }
            }
            if t.slots[a].state == State::Loaded {
                for need in &self.needs[a] {
                    if !need
                        .targets()
                        .iter()
                        .any(|&j| t.slots[j].state == State::Loaded)
                    {
                        v.push(format!(
                            "{} is loaded without {}",
                            sa.id,
                            self.need_name(need)
                        ));
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests;
