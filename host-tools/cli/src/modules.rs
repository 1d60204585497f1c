//! `enigma modules ...` and `enigma hardware`.

use crate::remote::RemoteArgs;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use enigma_models::ModelStore;
use enigma_modules::capability::{GenerateRequest, TextGeneration};
use enigma_modules::manager::hardware_shortfalls;
use enigma_modules::spec::{Kind, ModuleSpec};
use enigma_modules::{
    Health, LoadOptions, ManagerError, ModuleManager, Registry, RestoreReport, State,
};
use enigma_runtime::hardware::{human_bytes, Gpu};
use enigma_runtime::{Hardware, ModelLock};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Describes the machine instead of detecting it: `ram=2G,free=1G,cores=4,gpu=6G` (`gpu=` repeats, one per
/// GPU; `gpu=none` for none). For trying what a module needs on another machine, and for tests.
pub const SIMULATE_ENV: &str = "ENIGMA_SIMULATE_HARDWARE";

#[derive(Subcommand, Debug)]
pub enum ModulesCommand {
    /// Every module: its state, what it provides, and why it cannot load if it cannot.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// One module: what it provides, needs and conflicts with, its hardware needs and config keys.
    Info {
        /// The module's id (`enigma modules list` shows them).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a module (and save the loaded set to modules.json).
    Load {
        /// The module's id (`enigma modules list` shows them).
        id: String,
        /// Load the modules it needs first, in dependency order.
        #[arg(long)]
        with_deps: bool,
        /// A config setting, checked against the module's schema (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Unload a module (and save the loaded set).
    Unload {
        /// The module's id.
        id: String,
        /// Unload the modules that need it first.
        #[arg(long)]
        cascade: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The wanted modules (modules.json) and their settings; with --check, loads them here and checks
    /// the health of each.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Load the wanted set in this process and run each module's health check (a model forward pass).
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Generate text with whichever wanted module provides text_generation (inference, or later a cloud
    /// API), streaming it to stdout.
    Generate {
        /// The text to continue.
        #[arg(short = 'p', long, default_value = "")]
        prompt: String,
        /// Most tokens to generate (default: the module's max_tokens setting).
        #[arg(short = 'n', long)]
        n_predict: Option<usize>,
    },
    /// Allow or refuse modules that send data off this machine.
    AllowCloud {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

/// A size like `512M`, `6G`, `1.5G` or a byte count.
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("'{s}': sizes end in K, M, G or T"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let x: f64 = num
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x >= 0.0)
        .with_context(|| format!("'{s}' is not a size"))?;
    Ok((x * mult as f64) as u64)
}

/// The machine as [`SIMULATE_ENV`] describes it.
pub fn simulated(spec: &str) -> Result<Hardware> {
    let mut hw = Hardware {
        total_ram: None,
        free_ram: None,
        cores: 1,
        gpus: Vec::new(),
        cuda_note: Some(format!("simulated by {SIMULATE_ENV}")),
        cuda_driver: None,
    };
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("{SIMULATE_ENV}: '{part}' is not key=value"))?;
        let ctx = || format!("{SIMULATE_ENV}: {k}");
        match k.trim() {
            "ram" => hw.total_ram = Some(parse_size(v).with_context(ctx)?),
            "free" => hw.free_ram = Some(parse_size(v).with_context(ctx)?),
            "cores" => hw.cores = v.trim().parse().with_context(ctx)?,
            "gpu" if v.trim() == "none" => hw.gpus.clear(),
            "gpu" => {
                let vram = parse_size(v).with_context(ctx)?;
                hw.gpus.push(Gpu {
                    index: hw.gpus.len() as u32,
                    name: "simulated GPU".into(),
                    total_vram: vram,
                    free_vram: Some(vram),
                });
            }
            other => bail!("{SIMULATE_ENV}: unknown key '{other}' (ram, free, cores, gpu)"),
        }
    }
    if hw.free_ram.is_none() {
        hw.free_ram = hw.total_ram;
    }
    Ok(hw)
}

/// This machine, or the simulated one.
pub fn machine() -> Result<Hardware> {
    match std::env::var(SIMULATE_ENV) {
        Ok(spec) => simulated(&spec),
        Err(_) => Ok(Hardware::detect()),
    }
}

pub fn main(cmd: ModulesCommand) -> Result<()> {
    if let Some(done) = remote(&cmd) {
        return done;
    }
    main_in(&enigma_models::home(), cmd)
}

/// The command run against the `--remote` server, or `None` when it runs here.
fn remote(cmd: &ModulesCommand) -> Option<Result<()>> {
    use crate::remote as r;
    let args = match cmd {
        ModulesCommand::List { remote, .. }
        | ModulesCommand::Load { remote, .. }
        | ModulesCommand::Unload { remote, .. }
        | ModulesCommand::Status { remote, .. } => remote,
        _ => return None,
    };
    let client = match args.client() {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some(match cmd {
        ModulesCommand::List { json, .. } => r::modules_list(&client, *json),
        ModulesCommand::Load {
            id, with_deps, set, ..
        } => r::modules_load(&client, id, set, *with_deps),
        ModulesCommand::Unload { id, cascade, .. } => r::modules_unload(&client, id, *cascade),
        ModulesCommand::Status { json, check, .. } => r::modules_status(&client, *json, *check),
        _ => return None,
    })
}

/// The modules of this build but the server's, registered by the crates that implement them.
fn base_registry(home: &Path) -> Registry {
    let store = ModelStore::new(home);
    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &store);
    enigma_train::module::register(&mut registry, &store);
    enigma_network::register(&mut registry);
    enigma_memory::module::register(&mut registry, home);
    #[cfg(feature = "voice")]
    enigma_voice::module::register(&mut registry);
    registry
}

/// Every module this build has, for a process that hosts modules for one command: `api_server` is listed,
/// and refuses to load, since its listener would stop as the command exits (`enigma serve` hosts it; see
/// [`hosting_manager`]).
pub fn registry(home: &Path) -> Registry {
    #[allow(unused_mut)]
    let mut registry = base_registry(home);
    #[cfg(feature = "serve")]
    enigma_serve::module::register(
        &mut registry,
        &enigma_serve::module::ServerHost::new(enigma_serve::Hooks::standalone),
    );
    registry
}

/// The manager over this build's modules on this (or the simulated) machine; nothing read or loaded yet.
pub(crate) fn manager(home: &Path) -> Result<ModuleManager> {
    Ok(enigma_modules::open(home, machine()?, registry(home))?)
}

/// What the server's routes take from this host: the module list as `enigma modules list --json` prints it, and
/// the saved state's lock, so a route and an `enigma modules` command never lose each other's change.
#[cfg(feature = "serve")]
pub(crate) fn server_hooks(home: &Path) -> enigma_serve::Hooks {
    let home = home.to_path_buf();
    enigma_serve::Hooks {
        list_modules: Box::new(|m| list_json(m).map_err(|e| format!("{e:#}"))),
        state_lock: Box::new(move |purpose| {
            state_lock(&home, purpose)
                .map(|l| Box::new(l) as enigma_serve::StateLock)
                .map_err(|e| format!("{e:#}"))
        }),
        on_ready: None,
    }
}

/// The manager of a process that hosts modules for its life (`enigma serve`): `api_server` loads in it.
#[cfg(feature = "serve")]
pub(crate) fn hosting_manager(home: &Path) -> Result<std::sync::Arc<ModuleManager>> {
    let hardware = machine()?;
    let hooks_home = home.to_path_buf();
    let hooks = move || server_hooks(&hooks_home);
    Ok(enigma_serve::module::hosting(
        base_registry(home),
        hooks,
        |r| enigma_modules::open(home, hardware, r),
    )?)
}

/// The manager with the wanted set read, nothing loaded: for commands that only look or only change
/// the wanted set.
fn read(home: &Path) -> Result<(ModuleManager, RestoreReport)> {
    let manager = manager(home)?;
    let report = manager.read_saved()?;
    for (id, why) in &report.failed {
        eprintln!("note: saved module {id} is not known to this build: {why}");
    }
    Ok((manager, report))
}

/// The manager with the wanted set loaded: this command hosts the modules for its own length.
pub(crate) fn host(home: &Path) -> Result<(ModuleManager, RestoreReport)> {
    let manager = manager(home)?;
    let report = manager.restore()?;
    for (id, why) in &report.failed {
        eprintln!("note: saved module {id} did not load: {why}");
    }
    Ok((manager, report))
}

/// Commands that change the saved state hold a lock beside it, so two at once cannot lose each other's
/// change (each restores, changes and saves the whole set).
pub(crate) fn state_lock(home: &Path, purpose: &str) -> Result<ModelLock> {
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    Ok(ModelLock::acquire_file(
        &home.join(".modules.lock"),
        &home.join(enigma_modules::STATE_FILE),
        purpose,
    )?)
}

pub fn main_in(home: &Path, cmd: ModulesCommand) -> Result<()> {
    match cmd {
        ModulesCommand::List { json, .. } => list(home, json),
        ModulesCommand::Info { id, json } => info(home, &id, json),
        ModulesCommand::Load {
            id, with_deps, set, ..
        } => {
            let _lock = state_lock(home, "modules load")?;
            // Its needs must really load (they hand it what it builds on), so the wanted set is hosted.
            let (m, _) = host(home)?;
            let done = m.load(&id, &LoadOptions { with_deps, set })?;
            for id in done {
                println!("loaded {id}: {}", m.status(id)?);
            }
            Ok(())
        }
        ModulesCommand::Unload { id, cascade, .. } => {
            let _lock = state_lock(home, "modules unload")?;
            // Nothing is loaded in this process: unloading takes modules out of the wanted set.
            let (m, _) = read(home)?;
            for id in m.unload(&id, cascade)? {
                println!("unloaded {id} (no longer wanted)");
            }
            Ok(())
        }
        ModulesCommand::Status { json, check, .. } => status(home, json, check),
        ModulesCommand::Generate { prompt, n_predict } => generate(home, prompt, n_predict),
        ModulesCommand::AllowCloud { setting } => {
            let _lock = state_lock(home, "modules allow-cloud")?;
            let (m, _) = read(home)?;
            m.set_allow_cloud(setting == "on")?;
            println!(
                "cloud modules are {}",
                if setting == "on" {
                    "allowed"
                } else {
                    "refused"
                }
            );
            Ok(())
        }
    }
}

/// Why a module cannot load, said briefly for the list (the full sentence names the module again).
fn short_reason(e: &ManagerError) -> String {
    match e {
        ManagerError::CloudRefused { .. } => {
            "cloud module: not allowed (modules allow-cloud on)".into()
        }
        ManagerError::Conflict { other, state, .. } => {
            format!("conflicts with {other} ({})", state.name())
        }
        ManagerError::CapabilityTaken {
            capability, other, ..
        } => format!("{other} already provides {capability}"),
        ManagerError::MissingNeeds { missing, .. } => {
            format!("needs {} (--with-deps loads them)", missing.join(", "))
        }
        ManagerError::Hardware { reasons, .. } => reasons.join("; "),
        ManagerError::Config { reason, .. } => reason.clone(),
        ManagerError::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

struct Row {
    id: &'static str,
    spec: &'static ModuleSpec,
    state: String,
    note: String,
    can_load: bool,
}

fn rows(m: &ModuleManager) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for id in m.ids() {
        let spec = m.spec(id)?;
        let state = m.state(id)?;
        let unavailable = m.unavailable(id)?;
        let (state_name, note, can_load) = match (state, &unavailable) {
            (_, Some(why)) => ("unavailable".to_string(), why.clone(), false),
            (State::Unloaded, None) => match (m.is_pending(id)?, m.last_error(id)?) {
                (true, Some(err)) => (
                    "not restored".to_string(),
                    format!("saved, but did not load: {err}"),
                    false,
                ),
                // Not checked: checking would open the model it names, and listing opens nothing.
                (true, None) => ("wanted".to_string(), wanted_note(m, id)?, false),
                (false, _) => match m.check(id) {
                    Ok(()) => ("unloaded".to_string(), "can load".to_string(), true),
                    Err(e) => ("unloaded".to_string(), short_reason(&e), false),
                },
            },
            (State::Loaded, None) => ("loaded".to_string(), m.status(id)?, false),
            (s, None) => (
                s.name().to_string(),
                m.last_error(id)?.unwrap_or_default(),
                false,
            ),
        };
        rows.push(Row {
            id,
            spec,
            state: state_name,
            note,
            can_load,
        });
    }
    Ok(rows)
}

/// A wanted module's settings that differ from the defaults, for the list.
fn wanted_note(m: &ModuleManager, id: &str) -> Result<String> {
    let defaults = m.spec(id)?.defaults();
    let set: Vec<String> = m
        .config(id)?
        .iter()
        .filter(|(k, v)| defaults.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Ok(if set.is_empty() {
        "in modules.json".to_string()
    } else {
        format!("in modules.json ({})", set.join(", "))
    })
}

/// Every module as `modules list --json` prints it (and the server's `GET /v1/modules` answers).
pub fn list_json(m: &ModuleManager) -> Result<serde_json::Value> {
    let items: Vec<_> = rows(m)?
        .iter()
        .map(|r| {
            json!({"id": r.id, "category": r.spec.category, "state": r.state,
                "provides": r.spec.provides, "needs": r.spec.needs, "optional": r.spec.optional,
                "conflicts": r.spec.conflicts, "cloud": r.spec.cloud, "can_load": r.can_load,
                "note": r.note})
        })
        .collect();
    Ok(serde_json::Value::Array(items))
}

fn list(home: &Path, as_json: bool) -> Result<()> {
    let (m, _) = read(home)?;
    let items = list_json(&m)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let items = items.as_array().map(Vec::as_slice).unwrap_or_default();
    print_table(items);
    let count = |state: &str| items.iter().filter(|v| v["state"] == state).count();
    let (wanted, unavailable) = (count("wanted"), count("unavailable"));
    println!(
        "\n{} modules: {wanted} wanted (loaded by whichever process hosts modules), {unavailable} not available in this build; cloud modules {}",
        items.len(),
        if m.allow_cloud() { "allowed" } else { "refused" }
    );
    Ok(())
}

/// The modules table from the objects `modules list --json` prints, so a server's list (`--remote`), which
/// sends the same objects, shows the same way. A server may name the capabilities `capabilities`.
pub(crate) fn print_table(items: &[serde_json::Value]) {
    use serde_json::Value;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|v| {
            let names: Vec<&str> = v
                .get("provides")
                .or_else(|| v.get("capabilities"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut provides = names.join(", ");
            if v.get("cloud").and_then(Value::as_bool) == Some(true) {
                provides.push_str(" (cloud)");
            }
            [
                text(v, "id"),
                text(v, "category"),
                text(v, "state"),
                provides,
                text(v, "note"),
            ]
        })
        .collect();
    let titles = ["ID", "CATEGORY", "STATE", "PROVIDES", "NOTE"];
    let w: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
                .max(titles[c].len())
                + 2
        })
        .collect();
    for r in std::iter::once(titles.map(String::from)).chain(rows) {
        println!(
            "{:<w0$}{:<w1$}{:<w2$}{:<w3$}{}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
}

fn kind_text(k: &Kind) -> String {
    match k {
        Kind::Bool => "true/false".into(),
        Kind::Int { min, max } => format!("integer {min}..={max}"),
        Kind::Float { min, max } => format!("number {min}..={max}"),
        Kind::Str => "text".into(),
        Kind::Choice { options } => format!("one of {}", options.join(", ")),
        Kind::List => "comma-separated list".into(),
    }
}

fn info(home: &Path, id: &str, as_json: bool) -> Result<()> {
    let (m, _) = read(home)?;
    let spec = m.spec(id)?;
    let state = m.state(id)?;
    let config = m.config(id)?;
    let unavailable = m.unavailable(id)?;
    let wanted = m.is_pending(id)?;
    let can_load = match (&unavailable, state) {
        (Some(why), _) => Err(why.clone()),
        // A wanted module is not checked: that would open the model it names.
        (None, State::Unloaded) if !wanted => m.check(id).map_err(|e| e.to_string()),
        (None, _) => Ok(()),
    };
    let health = m.health(id)?;
    if as_json {
        let v = json!({"spec": spec, "state": state, "wanted": wanted, "config": config, "unavailable": unavailable,
            "cannot_load": can_load.as_ref().err(), "status": m.status(id)?, "health": health,
            "last_error": m.last_error(id)?});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = |l: &[&str]| {
        if l.is_empty() {
            "-".to_string()
        } else {
            l.join(", ")
        }
    };
    println!("module:      {} ({})", spec.id, spec.category);
    println!("             {}", spec.description);
    println!("provides:    {}", list(spec.provides));
    println!("needs:       {}", list(spec.needs));
    if !spec.optional.is_empty() {
        println!("uses if loaded: {}", list(spec.optional));
    }
    println!("conflicts:   {}", list(spec.conflicts));
    println!(
        "cloud:       {}",
        if spec.cloud {
            "yes: sends data off this machine"
        } else {
            "no"
        }
    );
    let hw = &spec.hardware;
    let mut needs = Vec::new();
    if hw.gpu {
        needs.push("an NVIDIA GPU".to_string());
    }
    if hw.vram > 0 {
        needs.push(format!("{} of GPU memory", human_bytes(hw.vram)));
    }
    if hw.ram > 0 {
        needs.push(format!("{} of RAM", human_bytes(hw.ram)));
    }
    if spec.id == "model" {
        needs.push("RAM for the chosen model (its file, KV cache and scratch)".into());
    }
    println!(
        "hardware:    {}",
        if needs.is_empty() {
            "-".to_string()
        } else {
            needs.join(", ")
        }
    );
    match &unavailable {
        Some(why) => println!("state:       unavailable: {why}"),
        None if wanted => println!(
            "state:       wanted (in modules.json; loaded by whichever process hosts modules)"
        ),
        None => println!("state:       {}", state.name()),
    }
    if let Some(e) = m.last_error(id)? {
        println!("last error:  {e}");
    }
    if state == State::Loaded {
        println!("status:      {}", m.status(id)?);
        match health {
            Health::Ok(s) => println!("health:      ok: {s}"),
            Health::Unhealthy(s) => println!("health:      UNHEALTHY: {s}"),
            Health::NotLoaded => {}
        }
    } else if unavailable.is_none() && !wanted {
        match &can_load {
            Ok(()) => println!("can load:    yes"),
            Err(e) => println!("can load:    no: {e}"),
        }
    }
    if spec.config.is_empty() {
        println!("config:      none");
    } else {
        println!("config (--set KEY=VALUE):");
        for f in spec.config {
            let now = config
                .get(f.key)
                .map_or_else(String::new, |v| v.to_string());
            println!(
                "  {} = {now}: {} ({}, default {})",
                f.key,
                f.help,
                kind_text(&f.kind),
                f.default_value()
            );
        }
    }
    Ok(())
}

fn status(home: &Path, as_json: bool, check: bool) -> Result<()> {
    let (m, report) = if check { host(home)? } else { read(home)? };
    let mut problems = if check { report.failed.len() } else { 0 };
    let mut items = Vec::new();
    for id in m.ids() {
        let state = m.state(id)?;
        let wanted = m.is_pending(id)? && m.last_error(id)?.is_none();
        if state == State::Unloaded && !wanted && !(check && m.is_pending(id)?) {
            continue;
        }
        let health = m.health(id)?;
        if matches!(health, Health::Unhealthy(_)) || state == State::Failed {
            problems += 1;
        }
        let (state_name, doing) = if wanted {
            ("wanted".to_string(), wanted_note(&m, id)?)
        } else {
            (state.name().to_string(), m.status(id)?)
        };
        items.push((id, state_name, doing, health, m.last_error(id)?));
    }
    if as_json {
        let v: Vec<_> = items
            .iter()
            .map(|(id, state, status, health, err)| {
                json!({"id": id, "state": state, "status": status, "health": health, "last_error": err})
            })
            .collect();
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(id, why)| json!({"id": id, "error": why}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"modules": v, "not_restored": failed, "checked": check})
            )?
        );
    } else {
        if items.is_empty() && report.failed.is_empty() {
            println!("no modules wanted (see `enigma modules list`)");
        }
        for (id, state, status, health, err) in &items {
            println!("{id}: {state}: {status}");
            match health {
                Health::Ok(s) => println!("  health: ok: {s}"),
                Health::Unhealthy(s) => println!("  health: UNHEALTHY: {s}"),
                Health::NotLoaded => {}
            }
            if let Some(e) = err {
                println!("  last error: {e}");
            }
        }
        for (id, why) in &report.failed {
            println!("{id}: not restored: {why}");
        }
        if !check && !items.is_empty() {
            println!("(nothing is loaded by this command; --check loads the wanted set here and checks each)");
        }
    }
    if problems > 0 {
        bail!(
            "{problems} module{} did not restore, failed or is unhealthy (see above)",
            if problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `enigma modules generate`: the caller side of the capability seam, from the command line.
fn generate(home: &Path, prompt: String, n_predict: Option<usize>) -> Result<()> {
    let (m, _) = host(home)?;
    let generator = m.get::<dyn TextGeneration>("text_generation")?;
    eprintln!("generating with {}", generator.describe());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let req = GenerateRequest {
        prompt,
        max_tokens: n_predict,
        ..GenerateRequest::default()
    };
    let stats = generator.generate(&req, &AtomicBool::new(false), &mut |piece| {
        // A closed pipe (`| head`) ends generation quietly.
        out.write_all(piece.text.as_bytes()).is_ok() && out.flush().is_ok()
    })?;
    let _ = writeln!(out);
    eprintln!(
        "{} prompt tokens, {} generated in {:.2} s ({:?})",
        stats.prompt_tokens, stats.generated_tokens, stats.total_secs, stats.finish
    );
    Ok(())
}

/// `enigma hardware`: what was detected (or simulated), and which modules' hardware needs it meets.
pub fn hardware(as_json: bool) -> Result<()> {
    let hw = machine()?;
    let simulated = std::env::var_os(SIMULATE_ENV).is_some();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"hardware": hw, "simulated": simulated}))?
        );
        return Ok(());
    }
    let bytes = |b: Option<u64>| b.map_or("unknown".to_string(), human_bytes);
    if simulated {
        println!("(simulated by {SIMULATE_ENV})");
    }
    println!(
        "RAM:        {} total, {} free",
        bytes(hw.total_ram),
        bytes(hw.free_ram)
    );
    println!("CPU cores:  {}", hw.cores);
    match &hw.cuda_driver {
        Some(v) => println!("CUDA:       driver {v}"),
        None => println!(
            "CUDA:       none ({})",
            hw.cuda_note.as_deref().unwrap_or("not found")
        ),
    }
    if hw.gpus.is_empty() {
        println!("GPUs:       none");
    }
    for g in &hw.gpus {
        println!(
            "GPU {}:      {}, {} memory, {} free",
            g.index,
            g.name,
            human_bytes(g.total_vram),
            bytes(g.free_vram)
        );
    }
    let blocked: Vec<String> = enigma_modules::catalog::CATALOG
        .iter()
        .filter_map(|s| {
            let why = hardware_shortfalls(&s.hardware, &hw);
            (!why.is_empty()).then(|| format!("  {}: {}", s.id, why.join("; ")))
        })
        .collect();
    if !blocked.is_empty() {
        println!("modules this machine cannot run:");
        for b in blocked {
            println!("{b}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_machines_are_parsed() {
        let hw = simulated("ram=2G, free=512M, cores=4, gpu=6G, gpu=1.5G").unwrap();
        assert_eq!(hw.total_ram, Some(2 << 30));
        assert_eq!(hw.free_ram, Some(512 << 20));
        assert_eq!(hw.cores, 4);
        assert_eq!(hw.gpus.len(), 2);
        assert_eq!(hw.gpus[1].total_vram, 1536 << 20);
        assert_eq!(simulated("ram=1G").unwrap().free_ram, Some(1 << 30));
        for bad in ["ram", "ram=lots", "ram=5Q", "disk=1G", "cores=-1"] {
            assert!(simulated(bad).is_err(), "{bad}");
        }
    }
}
