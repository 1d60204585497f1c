//! `enigma serve`: hosts the module manager for the server's life and hands it to `enigma-serve`.

use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_modules::{LoadOptions, ModuleManager, State};
use std::net::{IpAddr, SocketAddr};

/// The variable `--api-key` falls back to, so a key need not appear in a process list.
pub const API_KEY_ENV: &str = "ENIGMA_API_KEY";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model to serve, named as `enigma run -m` names one; loaded with the tokenizer and inference
    /// modules (and saved as wanted). Without it the saved modules (modules.json) are served, or the
    /// built-in model when nothing saved provides text generation.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Worker threads of the model (default: all cores; one for models under 16 MiB).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Where the model runs: cpu, or cuda / cuda:N. The server does not run on the GPU yet: with cuda it
    /// says why and stops (without a GPU, that there is none).
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    pub device: enigma_runtime::Device,
    /// Sequences decoded together in one step (llama.cpp's `--parallel`); more requests wait their turn.
    /// The KV cache is shared, not split: each sequence takes the blocks its prompt and reply need.
    /// Default: the inference module's `max_sequences` (16).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Prompt tokens read per step beside the sequences decoding (llama.cpp's `--ubatch-size`): larger reads
    /// a prompt faster, smaller keeps the other streams' tokens coming and lets a cancel take effect sooner.
    /// Default: the inference module's `prefill_tokens` (64).
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Address to listen on. Anything but a loopback address is reachable from other machines: set a key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// TCP port (0: any free one; the line `listening on http://...` says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`) on every route but /health
    /// (default: $ENIGMA_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Generation requests admitted at once (running or waiting); more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Announce the server on the local network (mDNS/DNS-SD, `_enigma._tcp`) once it is ready, so
    /// `enigma devices` and `--remote auto` on other machines find it.
    #[arg(long)]
    pub advertise: bool,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    if let enigma_runtime::Device::Cuda(n) = args.device {
        let backend = enigma_runtime::Backend::cuda(n)?;
        crate::cuda::cpu_only(&backend, "serve")?;
    }
    let home = enigma_models::home();
    // This process hosts modules for its life: a saved api_server (or one loaded through the module routes)
    // listens here beside the server's own listener.
    let manager = crate::modules::hosting_manager(&home)?;
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var(API_KEY_ENV).ok())
        .filter(|k| !k.is_empty());
    if args.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    let threads = match (args.threads, &args.model) {
        (Some(t), _) => Some(t),
        (None, Some(name)) => small_model_threads(name),
        (None, None) => None,
    };
    let options = enigma_serve::Options {
        addr: SocketAddr::new(args.host, args.port),
        api_key,
        max_queue: args.max_queue,
        max_body: args.max_body,
    };
    let hooks = enigma_serve::Hooks {
        on_ready: args
            .advertise
            .then(|| Box::new(advertise) as enigma_serve::OnReady),
        ..crate::modules::server_hooks(&home)
    };
    let mut engine = Vec::new();
    for (flag, key, value) in [
        ("--parallel", "max_sequences", args.parallel),
        ("--prefill-chunk", "prefill_tokens", args.prefill_chunk),
    ] {
        match value {
            Some(0) => bail!("{flag} must be at least 1"),
            Some(n) => engine.push(format!("{key}={n}")),
            None => {}
        }
    }
    let model = args.model.clone();
    let startup = Box::new(move |m: &ModuleManager| {
        start(m, &home, model.as_deref(), threads, &engine).map_err(|e| format!("{e:#}"))
    });
    enigma_serve::run(options, manager, hooks, startup)?;
    Ok(())
}

/// Publishes the ready server over mDNS under this host's name; the advertisement lasts as long as the
/// returned value.
fn advertise(addr: SocketAddr, model: &str) -> Result<Box<dyn Send>, String> {
    let name = enigma_discover::default_name();
    let ad = enigma_discover::advertise(&name, addr.port(), model)
        .map_err(|e| format!("--advertise: {e:#}"))?;
    eprintln!(
        "advertising {name} (model {model}, port {}) over mDNS",
        addr.port()
    );
    Ok(Box::new(ad))
}

/// A model under 16 MiB runs on one thread, as `enigma run` runs it, unless `-t` says otherwise.
fn small_model_threads(name: &str) -> Option<usize> {
    match enigma_models::resolve_model(name).ok()? {
        enigma_models::ResolvedModel::BuiltIn => Some(1),
        enigma_models::ResolvedModel::File(p) => {
            let len = enigma_models::peek(&p).ok()?.file_len;
            (len < crate::SMALL_MODEL_BYTES as u64).then_some(1)
        }
    }
}

/// Restores the wanted modules, then makes sure something generates: `-m`'s model, or the built-in one.
fn start(
    m: &ModuleManager,
    home: &std::path::Path,
    model: Option<&str>,
    threads: Option<usize>,
    engine: &[String],
) -> Result<()> {
    let _lock = crate::modules::state_lock(home, "serve")?;
    let report = m.restore()?;
    for (id, why) in &report.failed {
        eprintln!("note: saved module {id} did not load: {why}");
    }
    if let Some(name) = model {
        if m.state("model")? != State::Unloaded {
            let saved = m.config("model")?;
            let running = saved.get("model").and_then(|v| v.as_str()).unwrap_or("");
            if running != name {
                bail!(
                    "the saved modules already serve model '{running}'; unload it first (`enigma modules unload model --cascade`) or leave out -m"
                );
            }
        } else {
            let mut set = vec![format!("model={name}")];
            if let Some(t) = threads {
                set.push(format!("threads={t}"));
            }
            m.load(
                "model",
                &LoadOptions {
                    with_deps: false,
                    set,
                },
            )
            .with_context(|| format!("cannot serve model '{name}'"))?;
        }
    }
    if m.provider("text_generation").is_none() {
        if m.state("model")? == State::Unloaded {
            let set = vec![
                format!("model={}", enigma_models::BUILTIN_NAME),
                "threads=1".into(),
            ];
            m.load(
                "model",
                &LoadOptions {
                    with_deps: false,
                    set,
                },
            )?;
        }
        m.load(
            "inference",
            &LoadOptions {
                with_deps: true,
                set: engine.to_vec(),
            },
        )?;
    } else if !engine.is_empty() {
        let set = engine.join(" --set ");
        eprintln!(
            "note: --parallel and --prefill-chunk are ignored: the saved modules already generate (set them with `enigma modules load inference --set {set}`)"
        );
    }
    let generator = m.get::<dyn enigma_modules::capability::TextGeneration>("text_generation")?;
    eprintln!("serving {}", generator.describe());
    Ok(())
}
