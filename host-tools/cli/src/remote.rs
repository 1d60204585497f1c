//! `--remote URL`: `run`, `chat` and `modules` against a running OpenAI-compatible server (`enigma serve`,
//! llama.cpp's `llama-server`, Ollama's `/v1`) instead of a model in this process; and `enigma devices`,
//! which lists the engines advertising themselves on the LAN (`--remote auto` takes the first).

use crate::generate::{next_input, ChatArgs, Input, RunArgs};
use crate::EngineArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use enigma_remote::{Client, Message, Params, Reply};
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// The variable an API key is read from when `--api-key` is not given.
pub const API_KEY_ENV: &str = "ENIGMA_API_KEY";
/// How long `--remote auto` listens for engines.
const AUTO_BROWSE: Duration = Duration::from_secs(3);

#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Use the OpenAI-compatible server at URL (enigma serve, llama-server, Ollama's http://HOST:11434/v1)
    /// instead of a model in this process; `auto`: the first engine `enigma devices` finds on the LAN.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// The --remote server's API key, sent as a bearer token (default: the ENIGMA_API_KEY variable).
    #[arg(long, value_name = "KEY", requires = "remote")]
    pub api_key: Option<String>,
}

impl RemoteArgs {
    /// The client of the server `--remote` names, or `None` when the command runs here.
    pub fn client(&self) -> Result<Option<Client>> {
        let Some(remote) = self.remote.as_deref() else {
            return Ok(None);
        };
        let url = if remote.trim().eq_ignore_ascii_case("auto") {
            auto_url()?
        } else {
            remote.to_string()
        };
        let key = self
            .api_key
            .clone()
            .or_else(|| std::env::var(API_KEY_ENV).ok());
        Ok(Some(Client::new(&url, key)?))
    }
}

/// The first engine that answers on the LAN, said on stderr.
fn auto_url() -> Result<String> {
    let devices = enigma_discover::browse(AUTO_BROWSE).context("--remote auto")?;
    let Some((device, url)) = devices.iter().find_map(|d| d.url().map(|u| (d, u))) else {
        bail!(
            "--remote auto: no engine answered on the local network within {} s (`enigma serve --advertise` makes one answer; `enigma devices` lists them)",
            AUTO_BROWSE.as_secs()
        );
    };
    eprintln!(
        "using {} ({}) at {url}",
        device.name,
        if device.model.is_empty() {
            "no model named"
        } else {
            &device.model
        }
    );
    Ok(url)
}

/// Says which local flags the server decides for itself, so nobody thinks they took effect.
fn note_ignored(engine: &EngineArgs, ctx_size: Option<usize>) {
    let mut ignored = Vec::new();
    if engine.threads.is_some() {
        ignored.push("-t/--threads");
    }
    if engine.device != crate::Device::Cpu {
        ignored.push("--device");
    }
    if engine.kv_cache.is_some() || engine.cache_type_k.is_some() || engine.cache_type_v.is_some() {
        ignored.push("the KV cache type");
    }
    if ctx_size.is_some() {
        ignored.push("-c/--ctx-size");
    }
    if !ignored.is_empty() {
        eprintln!(
            "note: {} ignored with --remote: the server chooses",
            ignored.join(", ")
        );
    }
}

/// The request settings from the same flags a local run reads (checked the same way).
fn params(
    client: &Client,
    engine: &EngineArgs,
    sampling: &crate::SamplingArgs,
    predict: Option<usize>,
) -> Result<Params> {
    sampling.config()?;
    let model = match &engine.model {
        Some(m) => m.clone(),
        None => client.first_model()?,
    };
    Ok(Params {
        model,
        max_tokens: predict.map(|n| n as u64),
        temperature: Some(sampling.temperature),
        top_p: Some(sampling.top_p),
        top_k: Some(sampling.top_k),
        repeat_penalty: (sampling.repeat_penalty != 1.0).then_some(sampling.repeat_penalty),
        seed: sampling.seed,
    })
}

/// Writes each piece to stdout as it arrives; `false` (stop) once stdout is gone.
fn print_piece(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
}

fn report(reply: &Reply, start: Instant, model: &str, client: &Client) {
    let _ = writeln!(std::io::stdout());
    let secs = start.elapsed().as_secs_f64();
    let (n, unit) = match reply.completion_tokens {
        Some(t) => (t as usize, "tokens"),
        None => (reply.pieces, "pieces"),
    };
    let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    eprintln!(
        "{n} {unit} in {secs:.2} s ({rate:.1}/s) from {model} at {}{}",
        client.base(),
        match reply.finish_reason.as_deref() {
            Some("length") => "; stopped at the token limit",
            _ => "",
        }
    );
}

/// `enigma run --remote`: the prompt through `/v1/completions` (chat completions for a server without
/// it), streamed to stdout after the prompt, as a local run echoes it.
pub fn run(args: &RunArgs, client: &Client) -> Result<()> {
    let prompt = args.prompt_text()?;
    note_ignored(&args.engine, args.length.ctx_size);
    let params = params(client, &args.engine, &args.sampling, args.length.predict()?)?;
    let start = Instant::now();
    let mut echoed = false;
    let completed = client.complete(&prompt, &params, &mut |text| {
        // Echoed with the first piece, so a refused request prints nothing on stdout.
        if !echoed {
            echoed = true;
            if !print_piece(&prompt) {
                return false;
            }
        }
        print_piece(text)
    });
    let reply = match completed {
        Err(e) if e.is_not_found() => {
            eprintln!(
                "note: {} has no /v1/completions; the prompt goes as one chat message",
                client.base()
            );
            client.chat(&[Message::new("user", prompt)], &params, &mut print_piece)?
        }
        other => {
            let reply = other?;
            // A reply with no text still shows the prompt it continued, as a local run does.
            if !echoed {
                print_piece(&prompt);
            }
            reply
        }
    };
    report(&reply, start, &params.model, client);
    Ok(())
}

/// `enigma chat --remote`: the conversation is kept here and sent whole each turn, as the chat
/// completions API expects; `/reset` forgets it.
pub fn chat(args: &ChatArgs, client: &Client) -> Result<()> {
    note_ignored(&args.engine, args.length.ctx_size);
    let params = params(client, &args.engine, &args.sampling, args.length.predict()?)?;
    eprintln!(
        "chatting with {} at {} (the conversation is kept here and sent whole each turn; /help lists commands)",
        params.model,
        client.base()
    );
    let start_of = |system: &Option<String>| -> Vec<Message> {
        system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .collect()
    };
    let mut messages = start_of(&args.system);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let text = match next_input(&mut lines)? {
            Input::Quit => break,
            Input::Reset => {
                messages = start_of(&args.system);
                eprintln!("(conversation forgotten)");
                continue;
            }
            Input::Text(t) => t,
        };
        messages.push(Message::new("user", text));
        let start = Instant::now();
        let reply = client.chat(&messages, &params, &mut print_piece)?;
        messages.push(Message::new("assistant", reply.text.as_str()));
        report(&reply, start, &params.model, client);
    }
    Ok(())
}

/// `enigma modules list --remote`: the server's modules, as `enigma modules list` shows local ones.
pub fn modules_list(client: &Client, as_json: bool) -> Result<()> {
    let items = client.modules()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    crate::modules::print_table(&items);
    println!("\n{} modules on {}", items.len(), client.base());
    Ok(())
}

/// `--set KEY=VALUE` settings as the JSON config body of a remote load. Values stay text: the server
/// checks them against the module's schema exactly as a local `--set` is checked.
fn config_body(set: &[String]) -> Result<Map<String, Value>> {
    let mut config = Map::new();
    for s in set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set takes KEY=VALUE, not {s:?}");
        };
        config.insert(k.trim().to_string(), json!(v.trim()));
    }
    Ok(config)
}

/// What a load or unload answered, briefly: the module's state and status when the server gave them. The
/// engine answers a load with `{"loaded": [{"id", "status"}, ...]}`, the module asked for last (after the needs
/// `with_deps` loaded), and an unload with `{"unloaded": [ids]}`.
fn said(v: &Value) -> String {
    let module = v
        .get("loaded")
        .and_then(|l| l.as_array().and_then(|a| a.last()))
        .or_else(|| {
            v.get("data")
                .and_then(|d| d.as_array().and_then(|a| a.first()).or(Some(d)))
        })
        .unwrap_or(v);
    let field = |k: &str| {
        module
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("state"), field("status").or_else(|| field("note"))) {
        (Some(state), Some(status)) => format!(": {state}: {status}"),
        (Some(s), None) | (None, Some(s)) => format!(": {s}"),
        (None, None) => String::new(),
    }
}

pub fn modules_load(client: &Client, id: &str, set: &[String], with_deps: bool) -> Result<()> {
    let v = client.load_module(id, config_body(set)?, with_deps)?;
    println!("loaded {id} on {}{}", client.base(), said(&v));
    Ok(())
}

pub fn modules_unload(client: &Client, id: &str, cascade: bool) -> Result<()> {
    let v = client.unload_module(id, cascade)?;
    println!("unloaded {id} on {}{}", client.base(), said(&v));
    Ok(())
}

/// `enigma modules status --remote`: the modules the server holds (every state but unloaded and
/// unavailable).
pub fn modules_status(client: &Client, as_json: bool, check: bool) -> Result<()> {
    if check {
        bail!("--check loads the wanted set in this process; with --remote the server already hosts it (its status is the check)");
    }
    let items: Vec<Value> = client
        .modules()?
        .into_iter()
        .filter(|m| {
            !matches!(
                m.get("state").and_then(Value::as_str),
                Some("unloaded" | "unavailable")
            )
        })
        .collect();
    if as_json {
        let v = json!({"modules": items, "server": client.base()});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if items.is_empty() {
        println!("no modules loaded or wanted on {}", client.base());
    }
    let text = |m: &Value, k: &str| match m.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    for m in &items {
        let status = [text(m, "status"), text(m, "note")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        println!("{}: {}: {status}", text(m, "id"), text(m, "state"));
        let health = text(m, "health");
        if !health.is_empty() {
            println!("  health: {health}");
        }
        let err = text(m, "last_error");
        if !err.is_empty() {
            println!("  last error: {err}");
        }
    }
    Ok(())
}

/// `enigma devices`: the engines that answer on the LAN within `timeout` seconds.
pub fn devices(timeout: f64, as_json: bool) -> Result<()> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
        bail!("--timeout must be a number of seconds above 0 and at most 3600, not {timeout}");
    }
    let found = enigma_discover::browse(Duration::from_secs_f64(timeout))?;
    if as_json {
        let items: Vec<Value> = found
            .iter()
            .map(|d| {
                json!({"name": d.name, "model": d.model, "version": d.version, "addresses": d.addresses,
                    "port": d.port, "api": d.api, "url": d.url()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if found.is_empty() {
        eprintln!(
            "no engine answered within {timeout} s (`enigma serve --advertise` makes one answer; multicast reaches only this LAN segment)"
        );
        return Ok(());
    }
    let w = |f: &dyn Fn(&enigma_discover::Device) -> usize, title: &str| {
        found.iter().map(f).max().unwrap_or(0).max(title.len()) + 2
    };
    let (wn, wm) = (w(&|d| d.name.len(), "NAME"), w(&|d| d.model.len(), "MODEL"));
    let urls: Vec<String> = found
        .iter()
        .map(|d| d.url().unwrap_or_else(|| "-".into()))
        .collect();
    let wu = urls.iter().map(String::len).max().unwrap_or(0).max(3) + 2;
    println!("{:<wn$}{:<wm$}{:<wu$}VERSION", "NAME", "MODEL", "URL");
    for (d, url) in found.iter().zip(&urls) {
        println!("{:<wn$}{:<wm$}{:<wu$}{}", d.name, d.model, url, d.version);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_flags_become_a_config_body() {
        let body = config_body(&["model=story".into(), " max_tokens = 5".into()]).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"model": "story", "max_tokens": "5"})
        );
        assert!(config_body(&["novalue".into()]).is_err());
    }

    #[test]
    fn load_answers_are_summarised() {
        assert_eq!(
            said(&json!({"id":"model","state":"loaded","status":"story, 2 MiB"})),
            ": loaded: story, 2 MiB"
        );
        assert_eq!(
            said(&json!({"data":[{"id":"model","state":"loaded"}]})),
            ": loaded"
        );
        assert_eq!(said(&json!({})), "");
    }
}
