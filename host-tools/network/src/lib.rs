//! The `network` module: several devices as one (SPEC.md: `multi_device`, `remote_inference`).
//!
//! While it is loaded:
//! - `multi_device`: a thread browses the LAN for engines (`_enigma._tcp`, through `enigma-discover`) and keeps
//!   the last round's answers as the live list of peers; a server of this process (`api_server`) is announced
//!   through [`MultiDevice::advertise`] until it stops or this module unloads, whichever comes first.
//! - `remote_inference`: generation on a peer (the configured URL, or `auto`: the first one discovered),
//!   streamed through `enigma-remote`. It is not `text_generation`: SPEC.md's network does not provide that,
//!   so a remote engine never silently stands in for the local one.

use enigma_modules::capability::{
    ChatMessage, FinishReason, GenerateRequest, GenerationStats, MultiDevice, Peer, Piece,
    RemoteInference, RestApi, Role,
};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, Module, ModuleConfig, ModuleError, ModuleSpec, Provided, Registry,
};
use enigma_remote::{Client, Message, Params, Reply};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// One browse of the live list: long enough for every responder to answer once (RFC 6762 lets each answer
/// a record at most once a second), short enough that a peer that left drops off soon.
pub const BROWSE_ROUND: Duration = Duration::from_secs(2);
/// How long `peer=auto` listens when the live list is still empty (as `--remote auto`).
pub const AUTO_BROWSE: Duration = Duration::from_secs(3);

/// Registers `network`.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(NetworkModule {
        spec: catalog::by_id("network"),
        net: None,
    }));
}

struct NetworkModule {
    spec: &'static ModuleSpec,
    net: Option<Arc<Net>>,
}

/// The state behind both handles.
struct Net {
    /// `None`: `auto`.
    peer: Option<String>,
    api_key: Option<String>,
    discovery: bool,
    peers: Mutex<Vec<Peer>>,
    /// Why the last browse failed, if it did.
    browse_error: Mutex<Option<String>>,
    /// This process's announcements, withdrawn when their guard drops or the module unloads.
    ads: Mutex<Vec<Announced>>,
    next_ad: AtomicU64,
    /// A server that was already up when this module loaded, announced by it (one loaded later announces
    /// itself through `multi_device`), and that announcement's guard, dropped once the server stops.
    followed: Mutex<Option<Followed>>,
    stop: AtomicBool,
}

/// A server's handle and its announcement's guard.
type Followed = (Arc<dyn RestApi>, Box<dyn Send>);

struct Announced {
    id: u64,
    name: String,
    port: u16,
    _ad: enigma_discover::Advertisement,
}

/// A poisoned lock only means a browse thread panicked between two assignments; the lists stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Net {
    /// Devices found, as peers, leaving out this process's own announcements (the same name on the same
    /// port: another engine on this host, or one with the same host name, is a peer).
    fn peers_of(&self, devices: Vec<enigma_discover::Device>) -> Vec<Peer> {
        let ads = lock(&self.ads);
        devices
            .into_iter()
            .filter(|d| !ads.iter().any(|a| a.name == d.name && a.port == d.port))
            .filter_map(|d| {
                Some(Peer {
                    url: d.url()?,
                    name: d.name,
                    model: d.model,
                })
            })
            .collect()
    }

    fn browse(&self, timeout: Duration) -> Result<Vec<Peer>, String> {
        match enigma_discover::browse(timeout) {
            Ok(devices) => {
                *lock(&self.browse_error) = None;
                Ok(self.peers_of(devices))
            }
            Err(e) => {
                let why = e.to_string();
                *lock(&self.browse_error) = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Browses round after round until the module unloads; each round's answers replace the list.
    fn keep_browsing(net: Weak<Net>) {
        loop {
            let Some(n) = net.upgrade() else { return };
            if n.stop.load(Ordering::Relaxed) {
                return;
            }
            let stopped = lock(&n.followed)
                .as_ref()
                .is_some_and(|(api, _)| !api.is_running());
            if stopped {
                let gone = lock(&n.followed).take();
                drop(gone);
            }
            match n.browse(BROWSE_ROUND) {
                Ok(peers) => *lock(&n.peers) = peers,
                // No multicast socket (no interface up): try again after a round, not in a tight loop.
                Err(_) => {
                    drop(n);
                    std::thread::sleep(BROWSE_ROUND);
                }
            }
        }
    }

    fn client(&self, url: &str) -> Result<Client, ModuleError> {
        Client::new(url, self.api_key.clone()).map_err(|e| ModuleError::Config(e.to_string()))
    }

    /// Runs one generation on the peer: the request's settings as the OpenAI fields `enigma-remote` sends.
    fn remote(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
        call: impl FnOnce(
            &Client,
            &Params,
            &mut dyn FnMut(&str) -> bool,
        ) -> enigma_remote::Result<Reply>,
    ) -> Result<GenerationStats, ModuleError> {
        // Refused rather than dropped: an answer must not silently ignore what its caller asked for.
        if !req.stop.is_empty() {
            return Err(ModuleError::Invalid(
                "remote_inference does not send stop strings: leave them out".into(),
            ));
        }
        if req.logprobs.is_some() {
            return Err(ModuleError::Invalid(
                "remote_inference does not ask peers for log-probabilities".into(),
            ));
        }
        let url = self.peer()?;
        let client = self.client(&url)?;
        let model = client.first_model().map_err(failed)?;
        let s = &req.sampling;
        let params = Params {
            model,
            max_tokens: req.max_tokens.map(|n| n as u64),
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
        };
        let start = Instant::now();
        let mut first: Option<f64> = None;
        let mut cancelled = false;
        let reply = call(&client, &params, &mut |text| {
            if cancel.load(Ordering::Relaxed) {
                cancelled = true;
                return false;
            }
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            on_text(&Piece::text(text))
        })
        .map_err(failed)?;
        let finish = match reply.finish_reason.as_deref() {
            _ if cancelled || reply.stopped => FinishReason::Cancelled,
            Some("length") => FinishReason::Length,
            Some("cancelled") => FinishReason::Cancelled,
            // OpenAI's `stop` covers both the end of the text and a stop string; none were sent.
            _ => FinishReason::EndOfText,
        };
        let total = start.elapsed().as_secs_f64();
        Ok(GenerationStats {
            // The stream reports no prompt count; the peer's own metrics have it.
            prompt_tokens: 0,
            cached_tokens: 0,
            generated_tokens: reply.completion_tokens.map_or(reply.pieces, |n| n as usize),
            finish,
            first_token_secs: first.unwrap_or(total),
            total_secs: total,
        })
    }
}

/// A peer's refusal keeps its kind (400: the request's fault; 503: no room now); anything else, a peer that
/// cannot be reached or went away mid-stream among them, fails naming the peer (every `enigma-remote` error
/// names its URL).
fn failed(e: enigma_remote::Error) -> ModuleError {
    match &e {
        enigma_remote::Error::Status { status: 503, .. } => ModuleError::Busy(e.to_string()),
        enigma_remote::Error::Status { status, .. } if (400..500).contains(status) => {
            ModuleError::Invalid(e.to_string())
        }
        _ => ModuleError::Failed(format!("remote_inference: {e}")),
    }
}

/// The handle both capabilities are served with: an announcement's guard needs a reference to the state it
/// leaves.
struct NetHandle(Arc<Net>);

impl MultiDevice for NetHandle {
    fn peers(&self) -> Vec<Peer> {
        lock(&self.0.peers).clone()
    }

    fn advertise(&self, port: u16, model: &str) -> Result<Box<dyn Send>, ModuleError> {
        if !self.0.discovery {
            return Err(ModuleError::Config(
                "network has discovery=false, so nothing is announced".into(),
            ));
        }
        // `HOST:PORT`, not the bare host name `enigma serve --advertise` takes: this process may announce its
        // own listener under that name, and two announcements of one name with different ports would
        // conflict. Instance names are at most 63 bytes; the host name is cut on a character boundary.
        let suffix = format!(":{port}");
        let host: String = enigma_discover::default_name()
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() + suffix.len() <= 63)
            .map(|(_, c)| c)
            .collect();
        let name = format!("{host}{suffix}");
        let ad = enigma_discover::advertise(&name, port, model).map_err(ModuleError::failed)?;
        let id = self.0.next_ad.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.ads).push(Announced {
            id,
            name,
            port,
            _ad: ad,
        });
        Ok(Box::new(AdGuard {
            id,
            net: Arc::downgrade(&self.0),
        }))
    }
}

/// Withdraws its announcement when dropped (a server that stops); the module's unload withdraws them all.
struct AdGuard {
    id: u64,
    net: Weak<Net>,
}

impl Drop for AdGuard {
    fn drop(&mut self) {
        if let Some(net) = self.net.upgrade() {
            let gone: Vec<Announced> = {
                let mut ads = lock(&net.ads);
                let (gone, kept) = std::mem::take(&mut *ads)
                    .into_iter()
                    .partition(|a| a.id == self.id);
                *ads = kept;
                gone
            };
            // Dropped outside the lock: each waits up to a second for its goodbye to go out.
            drop(gone);
        }
    }
}

impl RemoteInference for NetHandle {
    fn peer(&self) -> Result<String, ModuleError> {
        self.0.peer()
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        self.0.remote(req, cancel, on_text, |client, params, f| {
            client.complete(&req.prompt, params, f)
        })
    }

    fn chat(
        &self,
        messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                Message::new(role, m.content.clone())
            })
            .collect();
        self.0.remote(req, cancel, on_text, |client, params, f| {
            client.chat(&messages, params, f)
        })
    }
}

impl Net {
    /// The configured peer, or the first discovered.
    fn peer(&self) -> Result<String, ModuleError> {
        if let Some(url) = &self.peer {
            return Ok(url.clone());
        }
        if let Some(p) = lock(&self.peers).first() {
            return Ok(p.url.clone());
        }
        // The live list is empty before the first round ends: listen once now.
        let found = self
            .browse(AUTO_BROWSE)
            .map_err(|e| ModuleError::Failed(format!("remote_inference: peer=auto: {e}")))?;
        found.first().map(|p| p.url.clone()).ok_or_else(|| {
            ModuleError::Failed(format!(
                "remote_inference: peer=auto: no engine answered on the local network within {} s (an api_server with network loaded, or `enigma serve --advertise`, makes one answer; or set peer=URL)",
                AUTO_BROWSE.as_secs()
            ))
        })
    }
}

fn text<'a>(config: &'a ModuleConfig, key: &str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl Module for NetworkModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let discovery = config
            .get("discovery")
            .and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })
            .unwrap_or(true);
        let peer = match text(config, "peer").trim() {
            p if p.is_empty() || p.eq_ignore_ascii_case("auto") => None,
            url => Some(
                enigma_remote::normalize_url(url)
                    .map_err(|e| ModuleError::Config(format!("peer: {e}")))?,
            ),
        };
        if peer.is_none() && !discovery {
            return Err(ModuleError::Config(
                "peer=auto finds its peer by discovery: set discovery=true, or peer=URL".into(),
            ));
        }
        let env = text(config, "api_key_env");
        let api_key = (!env.is_empty())
            .then(|| std::env::var(env).ok())
            .flatten()
            .filter(|k| !k.is_empty());
        let net = Arc::new(Net {
            peer,
            api_key,
            discovery,
            peers: Mutex::new(Vec::new()),
            browse_error: Mutex::new(None),
            ads: Mutex::new(Vec::new()),
            next_ad: AtomicU64::new(0),
            followed: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let handle = Arc::new(NetHandle(net.clone()));
        if discovery {
            if let Ok(api) = deps.get::<dyn RestApi>("rest_api") {
                if api.is_running() {
                    match handle.advertise(api.address().port(), &api.served_model()) {
                        Ok(guard) => *lock(&net.followed) = Some((api, guard)),
                        Err(e) => eprintln!(
                            "warning: the server on {} is not announced: {e}",
                            api.address()
                        ),
                    }
                }
            }
        }
        if discovery {
            let weak = Arc::downgrade(&net);
            std::thread::Builder::new()
                .name("enigma-network-browse".into())
                .spawn(move || Net::keep_browsing(weak))
                .map_err(ModuleError::failed)?;
        }
        self.net = Some(net.clone());
        Ok(Provided::new()
            .with("multi_device", handle.clone() as Arc<dyn MultiDevice>)
            .with("remote_inference", handle as Arc<dyn RemoteInference>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        if let Some(net) = self.net.take() {
            // The browse thread ends after its round (it holds only a weak reference); announcements are
            // withdrawn now, whoever holds their guards.
            net.stop.store(true, Ordering::Relaxed);
            let followed = lock(&net.followed).take();
            drop(followed);
            let ads = std::mem::take(&mut *lock(&net.ads));
            drop(ads);
        }
        Ok(())
    }

    fn status(&self) -> String {
        let Some(net) = &self.net else {
            return "not loaded".into();
        };
        let peer = net.peer.as_deref().unwrap_or("auto");
        let discovery = if net.discovery {
            format!(
                "{} peer(s) on the LAN, {} server(s) announced",
                lock(&net.peers).len(),
                lock(&net.ads).len()
            )
        } else {
            "discovery off".into()
        };
        format!("remote inference on {peer}; {discovery}")
    }

    fn health(&self) -> Health {
        let Some(net) = &self.net else {
            return Health::NotLoaded;
        };
        if let Some(e) = lock(&net.browse_error).clone() {
            return Health::Unhealthy(format!("discovery: {e}"));
        }
        match net.peer() {
            Ok(url) => match net
                .client(&url)
                .and_then(|c| c.get_json("/health").map_err(failed))
            {
                Ok(_) => Health::Ok(format!("{url} answers")),
                Err(e) => Health::Unhealthy(e.to_string()),
            },
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
