//! A client of OpenAI-compatible servers: `enigma serve`, llama.cpp's `llama-server`, Ollama's `/v1`.
//!
//! Replies stream as server-sent events ([`sse`]) of `text_completion` or `chat.completion.chunk` objects
//! ending with `data: [DONE]`; each piece of text goes to a callback as it arrives. The engine's module
//! routes (`/v1/modules`) are plain JSON. Every failure is an [`Error`] whose message is one line: the
//! network is input, so nothing here unwraps what a server sends.
//!
//! Plain `http://` only unless the `tls` feature is on: servers on loopback or a LAN speak http, and
//! rustls would bring ring's C and assembly into every build.

pub mod sse;

use serde_json::{json, Map, Value};
use sse::{Event, SseParser};
use std::io::Read;
use std::time::Duration;

/// Seconds a read may wait for the server (the reply's headers, or the next piece of a stream):
/// `ENIGMA_REMOTE_TIMEOUT`, default [`DEFAULT_TIMEOUT_SECS`].
pub const TIMEOUT_ENV: &str = "ENIGMA_REMOTE_TIMEOUT";
/// Long enough for a big model's prefill of a long prompt on a CPU before the first piece comes.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a plain JSON reply (model and module lists, errors, a reply that was not streamed).
const MAX_JSON_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a server URL (http://HOST:PORT)")]
    BadUrl(String),
    #[error("the server URL carries a user name or password: give the key with --api-key or ENIGMA_API_KEY instead")]
    CredentialsInUrl,
    #[error("{url}: https needs enigma built with TLS (cargo build -p enigma-cli --features remote-tls); servers on loopback or a LAN speak plain http://")]
    TlsUnsupported { url: String },
    #[error("{0} must be a whole number of seconds >= 1")]
    BadTimeout(&'static str),
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url}: no answer within {secs} s ({TIMEOUT_ENV} sets the limit)")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: the server reported an error: {message}")]
    Api { url: String, message: String },
    #[error("{url}: not an OpenAI-compatible answer: {reason}")]
    BadReply { url: String, reason: String },
    #[error("{url}: the stream was cut before the reply was complete ({reason})")]
    StreamCut { url: String, reason: String },
    #[error("{url}: the server lists no models; name one with -m")]
    NoModels { url: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The server has no such route (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Status { status: 404, .. })
    }
}

/// Sampling and length settings of one request; `None` leaves the server's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    pub model: String,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Params {
    /// The request body's common fields, with streaming on.
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("stream".into(), json!(true));
        let mut put = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(key.into(), v);
            }
        };
        put("max_tokens", self.max_tokens.map(|v| json!(v)));
        put("temperature", self.temperature.map(|v| json!(v)));
        put("top_p", self.top_p.map(|v| json!(v)));
        // Not in OpenAI's API, but llama.cpp's server, Ollama and ours read them.
        put("top_k", self.top_k.map(|v| json!(v)));
        put("repeat_penalty", self.repeat_penalty.map(|v| json!(v)));
        put("seed", self.seed.map(|v| json!(v)));
        body
    }
}

/// One message of a conversation, as `/v1/chat/completions` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// The two generation routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Completions,
    Chat,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Completions => "/v1/completions",
            Route::Chat => "/v1/chat/completions",
        }
    }

    /// The text of one choice: `text` in a completion, `delta.content` in a chat chunk, `message.content`
    /// in a chat reply that was not streamed. A role-only first delta has none.
    fn text(self, choice: &Value) -> Option<&str> {
        match self {
            Route::Completions => choice.get("text"),
            Route::Chat => choice
                .get("delta")
                .or_else(|| choice.get("message"))
                .and_then(|m| m.get("content")),
        }
        .and_then(Value::as_str)
    }
}

/// What a generation produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    /// `stop`, `length`, ... as the server said; `None` when it did not say, or the caller stopped.
    pub finish_reason: Option<String>,
    /// Pieces of text received (a server sends about one per token).
    pub pieces: usize,
    /// Tokens generated, when the server reported its usage.
    pub completion_tokens: Option<u64>,
    /// The caller's callback asked to stop (its output is gone).
    pub stopped: bool,
}

/// A server at one base URL. The API key is sent as `Authorization: Bearer` and never shown: not by
/// `Debug`, not in any error.
pub struct Client {
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
    timeout_secs: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// The read timeout from [`TIMEOUT_ENV`], or the default.
fn timeout_from_env() -> Result<u64> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_TIMEOUT_SECS),
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::BadTimeout(TIMEOUT_ENV)),
        },
    }
}

/// `http://host:port[/prefix]` with no trailing `/` and no trailing `/v1` (routes add it): people paste
/// both `http://host:8080` and Ollama's `http://host:11434/v1`.
pub fn normalize_url(url: &str) -> Result<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let rest = match (
        lower.strip_prefix("http://"),
        lower.strip_prefix("https://"),
    ) {
        (Some(rest), _) => rest,
        (None, Some(_)) if !cfg!(feature = "tls") => {
            return Err(Error::TlsUnsupported {
                url: url.to_string(),
            })
        }
        (None, Some(rest)) => rest,
        (None, None) => return Err(Error::BadUrl(url.to_string())),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(Error::CredentialsInUrl);
    }
    if authority.is_empty() || url.contains(['?', '#']) || url.contains(char::is_whitespace) {
        return Err(Error::BadUrl(url.to_string()));
    }
    let mut base = url.trim_end_matches('/');
    if let Some(b) = base.strip_suffix("/v1") {
        base = b.trim_end_matches('/');
    }
    Ok(base.to_string())
}

/// A path segment with everything but RFC 3986's unreserved characters percent-encoded, so a module id
/// can never change the route.
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the server at `url`; contacts nothing yet.
    pub fn new(url: &str, api_key: Option<String>) -> Result<Client> {
        let base = normalize_url(url)?;
        let timeout_secs = timeout_from_env()?;
        let config = ureq::Agent::config_builder()
            // A 4xx/5xx carries the server's error message in its body: read it rather than get a bare code.
            .http_status_as_error(false)
            // Loopback and LAN servers are reached directly, whatever proxy the environment names.
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Per read, not per reply: a long generation is fine as long as pieces keep coming.
            .timeout_per_read(Some(Duration::from_secs(timeout_secs)))
            .user_agent(concat!("enigma/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            agent: config.new_agent(),
            timeout_secs,
        })
    }

    /// The server's base URL, without `/v1`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A transport failure, said as one line.
    fn transport(&self, url: &str, e: ureq::Error, streaming: bool) -> Error {
        use std::io::ErrorKind;
        let url = url.to_string();
        let reason = match e {
            ureq::Error::Timeout(_) => {
                return Error::Timeout {
                    url,
                    secs: self.timeout_secs,
                }
            }
            ureq::Error::Io(io)
                if matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
            {
                return Error::Timeout {
                    url,
                    secs: self.timeout_secs,
                }
            }
            ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
                "connection refused (is the server running, on that port?)".to_string()
            }
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::Tls(_) if !cfg!(feature = "tls") => {
                return Error::TlsUnsupported { url };
            }
            ureq::Error::Protocol(p) => {
                return Error::BadReply {
                    url,
                    reason: format!("broken HTTP: {p}"),
                }
            }
            other => other.to_string(),
        };
        if streaming {
            Error::StreamCut { url, reason }
        } else {
            Error::Connect { url, reason }
        }
    }

    fn with_key<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.api_key {
            Some(k) => req.header("Authorization", format!("Bearer {k}")),
            None => req,
        }
    }

    fn get(&self, path: &str) -> Result<(String, ureq::http::Response<ureq::Body>)> {
        let url = self.url(path);
        let resp = self
            .with_key(self.agent.get(&url))
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.transport(&url, e, false))?;
        Ok((url, resp))
    }

    fn post(
        &self,
        path: &str,
        body: &Value,
        accept: &str,
    ) -> Result<(String, ureq::http::Response<ureq::Body>)> {
        let url = self.url(path);
        let resp = self
            .with_key(self.agent.post(&url))
            .header("Content-Type", "application/json")
            .header("Accept", accept)
            .send(body.to_string())
            .map_err(|e| self.transport(&url, e, false))?;
        Ok((url, resp))
    }

    /// A whole JSON body; a 4xx/5xx becomes [`Error::Status`] with the server's message.
    fn json_body(&self, url: &str, resp: ureq::http::Response<ureq::Body>) -> Result<Value> {
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .take(MAX_JSON_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| self.transport(url, ureq::Error::from(e), false))?;
        if status >= 400 {
            return Err(Error::Status {
                url: url.to_string(),
                status,
                message: error_message(&text),
            });
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::BadReply {
            url: url.to_string(),
            reason: format!("the body is not JSON ({e})"),
        })?;
        if let Some(message) = value.get("error").map(api_error_message) {
            return Err(Error::Api {
                url: url.to_string(),
                message,
            });
        }
        Ok(value)
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let (url, resp) = self.get(path)?;
        self.json_body(&url, resp)
    }

    /// `POST path` with a JSON body, answered with JSON.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let (url, resp) = self.post(path, body, "application/json")?;
        self.json_body(&url, resp)
    }

    /// The ids of `GET /v1/models`, in the server's order.
    pub fn models(&self) -> Result<Vec<String>> {
        let url = self.url("/v1/models");
        let v = self.get_json("/v1/models")?;
        // OpenAI's shape is {"data":[{"id":..}]}; Ollama's /api/tags-like {"models":[{"name"/"model":..}]}
        // is accepted too, since some proxies answer with it.
        let list = v
            .get("data")
            .or_else(|| v.get("models"))
            .and_then(Value::as_array)
            .ok_or_else(|| Error::BadReply {
                url: url.clone(),
                reason: "no \"data\" list of models".into(),
            })?;
        Ok(list
            .iter()
            .filter_map(|m| {
                ["id", "model", "name"]
                    .iter()
                    .find_map(|k| m.get(*k).and_then(Value::as_str))
            })
            .map(str::to_string)
            .collect())
    }

    /// The first model the server lists, for when none was named.
    pub fn first_model(&self) -> Result<String> {
        self.models()?.into_iter().next().ok_or(Error::NoModels {
            url: self.url("/v1/models"),
        })
    }

    /// Continues `prompt` through `POST /v1/completions`, streaming each piece to `on_text` (which returns
    /// `false` to stop). A server without that route answers [`Error::is_not_found`]; chat-only servers
    /// are then asked through [`Client::chat`] with the prompt as one user message.
    pub fn complete(
        &self,
        prompt: &str,
        params: &Params,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let mut body = params.body();
        body.insert("prompt".into(), json!(prompt));
        self.generate(Route::Completions, Value::Object(body), on_text)
    }

    /// The assistant's next message after `messages`, through `POST /v1/chat/completions`, streamed to
    /// `on_text` as it arrives.
    pub fn chat(
        &self,
        messages: &[Message],
        params: &Params,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let mut body = params.body();
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        body.insert("messages".into(), Value::Array(messages));
        self.generate(Route::Chat, Value::Object(body), on_text)
    }

    fn generate(
        &self,
        route: Route,
        body: Value,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let (url, resp) = self.post(route.path(), &body, "text/event-stream")?;
        let streamed = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        if resp.status().as_u16() >= 400 || !streamed {
            // An error, or a server that ignored `stream` and sent the whole reply as one object.
            let value = self.json_body(&url, resp)?;
            let mut reply = Reply::default();
            read_chunk(&url, route, &value, &mut reply, on_text)?;
            return Ok(reply);
        }
        let mut reader = resp.into_body().into_reader();
        let mut parser = SseParser::new();
        let mut reply = Reply::default();
        let mut buf = [0u8; 8192];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.transport(&url, ureq::Error::from(e), true)),
            };
            let events = parser.feed(&buf[..n]).map_err(|_| Error::BadReply {
                url: url.clone(),
                reason: "a stream line longer than 16 MiB".into(),
            })?;
            for event in events {
                if handle_event(&url, route, &event, &mut reply, on_text)? {
                    return Ok(reply);
                }
            }
        }
        if let Some(event) = parser.finish() {
            if handle_event(&url, route, &event, &mut reply, on_text)? {
                return Ok(reply);
            }
        }
        // Some servers end a stream without [DONE]; one that said why it finished did finish.
        if reply.finish_reason.is_some() {
            return Ok(reply);
        }
        Err(Error::StreamCut {
            url,
            reason: if reply.pieces == 0 {
                "it ended with no reply".into()
            } else {
                "no finish_reason and no [DONE]".into()
            },
        })
    }

    /// `GET /v1/modules`: the server's modules, each an object as `enigma modules list --json` prints one.
    pub fn modules(&self) -> Result<Vec<Value>> {
        let url = self.url("/v1/modules");
        let v = self.get_json("/v1/modules")?;
        // `modules` is the engine's key (docs/SERVE.md); `data` the OpenAI-style list other servers use.
        match v
            .get("modules")
            .or_else(|| v.get("data"))
            .and_then(Value::as_array)
        {
            Some(list) => Ok(list.clone()),
            None => Err(Error::BadReply {
                url,
                reason: "no \"modules\" list".into(),
            }),
        }
    }

    /// `POST /v1/modules/{id}/load` with the body `{"with_deps": ..., "config": {...}}` (docs/SERVE.md).
    pub fn load_module(
        &self,
        id: &str,
        config: Map<String, Value>,
        with_deps: bool,
    ) -> Result<Value> {
        let path = format!("/v1/modules/{}/load", segment(id));
        self.post_json(&path, &json!({"with_deps": with_deps, "config": config}))
    }

    /// `POST /v1/modules/{id}/unload` with the body `{"cascade": ...}`.
    pub fn unload_module(&self, id: &str, cascade: bool) -> Result<Value> {
        let path = format!("/v1/modules/{}/unload", segment(id));
        self.post_json(&path, &json!({"cascade": cascade}))
    }
}

/// Handles one event of a stream; `true` when the reply is over (`[DONE]`, or the caller stopped).
fn handle_event(
    url: &str,
    route: Route,
    event: &Event,
    reply: &mut Reply,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<bool> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(true);
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(_) if event.event == "error" => {
            return Err(Error::Api {
                url: url.to_string(),
                message: one_line(data),
            })
        }
        Err(e) => {
            return Err(Error::BadReply {
                url: url.to_string(),
                reason: format!("a stream event is not JSON ({e})"),
            })
        }
    };
    if event.event == "error" || value.get("error").is_some() {
        let err = value.get("error").unwrap_or(&value);
        return Err(Error::Api {
            url: url.to_string(),
            message: api_error_message(err),
        });
    }
    read_chunk(url, route, &value, reply, on_text)?;
    Ok(reply.stopped)
}

/// Adds one completion object (a stream chunk or a whole reply) to `reply`.
fn read_chunk(
    url: &str,
    route: Route,
    value: &Value,
    reply: &mut Reply,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<()> {
    if let Some(n) = value
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
    {
        reply.completion_tokens = Some(n);
    }
    let choices = match value.get("choices").and_then(Value::as_array) {
        Some(c) => c,
        // The usage-only chunk that `stream_options.include_usage` adds has an empty list; a chunk with
        // no list at all is not a completion.
        None => {
            return Err(Error::BadReply {
                url: url.to_string(),
                reason: "a chunk without \"choices\"".into(),
            })
        }
    };
    let Some(choice) = choices.first() else {
        return Ok(());
    };
    if let Some(text) = route.text(choice).filter(|t| !t.is_empty()) {
        reply.pieces += 1;
        reply.text.push_str(text);
        if !on_text(text) {
            reply.stopped = true;
            return Ok(());
        }
    }
    if let Some(why) = choice.get("finish_reason").and_then(Value::as_str) {
        reply.finish_reason = Some(why.to_string());
    }
    Ok(())
}

/// The message of an OpenAI error object (`{"message":..,"type":..}`), or of a bare string.
fn api_error_message(err: &Value) -> String {
    let msg = match err {
        Value::String(s) => s.clone(),
        other => match other.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => other.to_string(),
        },
    };
    one_line(&msg)
}

/// What an error body says: the OpenAI error shape's message, or the start of whatever text came.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => match v.get("error") {
            Some(e) => api_error_message(e),
            None => one_line(body),
        },
        Err(_) if body.trim().is_empty() => "(no message)".into(),
        Err(_) => one_line(body),
    }
}

/// Text on one line, at most 300 characters: a message from the network is shown, not trusted.
fn one_line(s: &str) -> String {
    let flat: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match flat.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised_and_bad_ones_refused() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_url(" http://host:11434/v1/ ").unwrap(),
            "http://host:11434"
        );
        assert_eq!(
            normalize_url("http://host/proxy/").unwrap(),
            "http://host/proxy"
        );
        for bad in [
            "",
            "host:8080",
            "ftp://x",
            "http://",
            "http://a b",
            "http://h?x=1",
        ] {
            assert!(matches!(normalize_url(bad), Err(Error::BadUrl(_))), "{bad}");
        }
        let e = normalize_url("http://user:secret@host:1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        if !cfg!(feature = "tls") {
            let e = normalize_url("https://host").unwrap_err();
            assert!(matches!(e, Error::TlsUnsupported { .. }), "{e}");
        }
    }

    #[test]
    fn the_api_key_is_never_shown() {
        let c = Client::new("http://127.0.0.1:1", Some("sk-very-secret".into())).unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("inference"), "inference");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn params_become_request_fields() {
        let p = Params {
            model: "m".into(),
            max_tokens: Some(5),
            temperature: Some(0.0),
            seed: Some(1),
            ..Params::default()
        };
        let b = Value::Object(p.body());
        assert_eq!(
            b,
            json!({"model": "m", "stream": true, "max_tokens": 5, "temperature": 0.0, "seed": 1})
        );
    }

    #[test]
    fn chunks_of_both_routes_give_their_text() {
        let mut reply = Reply::default();
        let mut seen = String::new();
        let mut cb = |t: &str| {
            seen.push_str(t);
            true
        };
        let chat_role =
            json!({"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]});
        let chat = json!({"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]});
        let text = json!({"choices":[{"index":0,"text":" there","finish_reason":"stop"}]});
        read_chunk("u", Route::Chat, &chat_role, &mut reply, &mut cb).unwrap();
        read_chunk("u", Route::Chat, &chat, &mut reply, &mut cb).unwrap();
        read_chunk("u", Route::Completions, &text, &mut reply, &mut cb).unwrap();
        assert!(read_chunk("u", Route::Chat, &json!({"x":1}), &mut reply, &mut cb).is_err());
        assert_eq!(seen, "Hi there");
        assert_eq!(reply.pieces, 2);
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn error_bodies_give_one_line() {
        let shape = r#"{"error":{"message":"bad\nthing","type":"invalid_request_error","param":null,"code":null}}"#;
        assert_eq!(error_message(shape), "bad thing");
        assert_eq!(
            error_message("<html>\n nope </html>"),
            "<html> nope </html>"
        );
        assert_eq!(error_message(""), "(no message)");
        assert_eq!(one_line(&"x".repeat(400)).len(), 303);
    }
}
