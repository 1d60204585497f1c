//! The OpenAI routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.

use crate::common::{self, generator_for, served_name, unix_now};
use crate::error::{ApiError, ApiResult, Dialect};
use crate::fields::{Fields, JsonBody};
use crate::generation::{self, Generation, Msg};
use crate::{piece_stream, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use enigma_modules::capability::{
    Embedded, Embeddings, FinishReason, GenerateRequest, GenerationStats, TokenLogprob,
};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Which of the two generation routes, and so which response shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn prompt_field(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Completion => "prompt",
        }
    }
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = served_name(&state)
        .into_iter()
        .map(|name| model_object(&name))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    match served_name(&state) {
        Some(name) if name == id => Ok(Json(model_object(&name))),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this server does not serve a model named '{id}' (see /v1/models)"),
        )
        .param("model")
        .code("model_not_found")),
    }
}

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "enigma"})
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    complete(state, body, Kind::Chat).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    complete(state, body, Kind::Completion).await
}

/// How the reply's log-probabilities are asked for: chat's `logprobs: true` + `top_logprobs`, or the
/// legacy completions' `logprobs: N`.
struct Options {
    stream: bool,
    include_usage: bool,
    logprobs: Option<usize>,
}

/// Fields the server does not implement are refused by name unless they hold their neutral value, so a
/// client never gets an answer that silently ignored what it asked for.
fn refuse_unsupported(f: &Fields<'_>, kind: Kind) -> ApiResult<()> {
    f.refuse_unless(
        "n",
        &json!(1),
        "must be 1: one choice per request is supported",
    )?;
    for p in ["presence_penalty", "frequency_penalty"] {
        f.refuse_unless(
            p,
            &json!(0),
            "is not supported (only 0): use Ollama's repeat_penalty on /api/chat or /api/generate",
        )?;
    }
    if f.get("logit_bias")
        .is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty()))
    {
        return Err(f.err("logit_bias", "is not supported"));
    }
    for p in ["tools", "functions"] {
        if f.get(p)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(f.err(p, "is not supported: this server offers no tools"));
        }
    }
    if let Some(rf) = f.object("response_format")? {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(f.err(
                "response_format",
                "is not supported beyond {\"type\": \"text\"}",
            ));
        }
    }
    if kind == Kind::Completion {
        f.refuse_unless("best_of", &json!(1), "must be 1")?;
        f.refuse_unless("echo", &json!(false), "is not supported")?;
        f.refuse_unless("suffix", &json!(""), "is not supported")?;
    }
    Ok(())
}

fn parse(f: &Fields<'_>, kind: Kind) -> ApiResult<(GenerateRequest, Options)> {
    refuse_unsupported(f, kind)?;
    let max = f
        .int("max_completion_tokens", 1, i64::MAX)?
        .or(f.int("max_tokens", 1, i64::MAX)?);
    let logprobs = match kind {
        Kind::Chat => common::logprobs_asked(f)?,
        Kind::Completion => f.int("logprobs", 0, 5)?.map(|n| n as usize),
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields::nested(o, "stream_options.", Dialect::OpenAi)
            .bool("include_usage")?
            .unwrap_or(false),
        None => false,
    };
    let req = GenerateRequest {
        prompt: String::new(),
        max_tokens: max.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        sampling: common::sampling(f)?,
        stop: f.stop("stop", 4)?,
        logprobs,
    };
    Ok((
        req,
        Options {
            stream,
            include_usage,
            logprobs,
        },
    ))
}

/// A completion's prompt: one string (a list of one string is taken too, as the API allows lists).
fn prompt(f: &Fields<'_>) -> ApiResult<String> {
    match f.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(f.err(
            "prompt",
            "must be one string: batches of prompts are not supported",
        )),
        Some(_) => Err(f.err("prompt", "must be a string")),
        None => Err(f.err("prompt", "is required")),
    }
}

async fn complete(
    state: Arc<AppState>,
    body: Map<String, Value>,
    kind: Kind,
) -> ApiResult<Response> {
    let started = Instant::now();
    let f = Fields::new(&body, Dialect::OpenAi);
    let (mut req, opts) = parse(&f, kind)?;
    let messages = match kind {
        Kind::Chat => Some(common::messages(&f)?),
        Kind::Completion => {
            req.prompt = prompt(&f)?;
            None
        }
    };
    let (name, generator) = generator_for(&state, &f)?;
    let mut g = generation::start(&state, generator, messages, req, started)?;
    let id = next_id(kind);
    if opts.stream {
        let first = g.first(kind.prompt_field()).await?;
        return Ok(stream(
            g,
            first,
            Reply {
                id,
                name,
                kind,
                opts,
            },
        )
        .into_response());
    }
    let (text, logprobs, stats) = g.collect(kind.prompt_field()).await?;
    let reply = Reply {
        id,
        name,
        kind,
        opts,
    };
    let lp = reply
        .opts
        .logprobs
        .is_some()
        .then(|| reply.logprobs(&logprobs, 0));
    let choice = match kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": lp, "finish_reason": finish(&stats)}),
        Kind::Completion => {
            json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish(&stats)})
        }
    };
    let mut v = reply.envelope(false);
    v["choices"] = json!([choice]);
    v["usage"] = usage(&stats);
    Ok(Json(v).into_response())
}

fn next_id(kind: Kind) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!("{prefix}-enigma-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// OpenAI's reasons: the model ending the text or a stop string is `stop`, the length limit (or a full
/// context) `length`; a generation cut short by the server shutting down says `cancelled`.
fn finish(stats: &GenerationStats) -> &'static str {
    match stats.finish {
        FinishReason::EndOfText | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

fn usage(stats: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    })
}

/// What every object of one reply shares.
struct Reply {
    id: String,
    name: String,
    kind: Kind,
    opts: Options,
}

impl Reply {
    fn envelope(&self, chunk: bool) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": unix_now(), "model": self.name,
            "system_fingerprint": null})
    }

    /// Log-probabilities in the route's shape; `offset` is where this text starts in the whole reply
    /// (the completions shape counts characters from the start).
    fn logprobs(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.kind {
            Kind::Chat => json!({"content": common::logprob_entries(lps)}),
            Kind::Completion => {
                let mut at = offset;
                let mut offsets = Vec::new();
                for l in lps {
                    offsets.push(at);
                    at += text(&l.chosen.bytes).chars().count();
                }
                json!({
                    "tokens": lps.iter().map(|l| text(&l.chosen.bytes)).collect::<Vec<_>>(),
                    "token_logprobs": lps.iter().map(|l| l.chosen.logprob).collect::<Vec<_>>(),
                    "top_logprobs": lps.iter().map(|l| {
                        l.top.iter().map(|t| (text(&t.bytes), json!(t.logprob))).collect::<Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }

    fn chunk(
        &self,
        text: &str,
        lps: &[TokenLogprob],
        offset: usize,
        finish: Option<&str>,
    ) -> Value {
        let lp = self
            .opts
            .logprobs
            .is_some()
            .then(|| self.logprobs(lps, offset));
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match finish {
                    Some(_) => json!({}),
                    None => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish})
            }
        };
        let mut v = self.envelope(true);
        v["choices"] = json!([choice]);
        if self.opts.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
fn stream(g: Generation, first: Msg, reply: Reply) -> Response {
    let mut opened = reply.kind == Kind::Completion;
    let mut sent = 0usize;
    let event = |v: &Value| format!("data: {v}\n\n");
    piece_stream(g, first, "text/event-stream", move |msg| {
        let mut out = String::new();
        if !opened {
            opened = true;
            let mut v = reply.chunk("", &[], 0, None);
            v["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            out += &event(&v);
        }
        match msg {
            Msg::Piece { text, logprobs } => {
                out += &event(&reply.chunk(&text, &logprobs, sent, None));
                sent += text.chars().count();
                (out, false)
            }
            Msg::Done(Ok(stats)) => {
                out += &event(&reply.chunk("", &[], sent, Some(finish(&stats))));
                if reply.opts.include_usage {
                    let mut v = reply.envelope(true);
                    v["choices"] = json!([]);
                    v["usage"] = usage(&stats);
                    out += &event(&v);
                }
                out += "data: [DONE]\n\n";
                (out, true)
            }
            // Headers are sent: an error after the first piece can only be told in the stream.
            Msg::Done(Err(e)) => {
                let e = ApiError::from_module(e, reply.kind.prompt_field());
                out += &event(
                    &json!({"error": {"message": e.message, "type": "server_error",
                    "param": e.param, "code": e.code}}),
                );
                out += "data: [DONE]\n\n";
                (out, true)
            }
        }
    })
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, Dialect::OpenAi);
    if f.string("encoding_format")?.is_some_and(|e| e != "float") {
        return Err(f.err("encoding_format", "must be \"float\""));
    }
    if f.has("dimensions") {
        return Err(f.err(
            "dimensions",
            "is not supported: vectors have the provider's length",
        ));
    }
    let texts = embed_inputs(&f, "input")?;
    let (name, embedded) = embed(&state, texts, Dialect::OpenAi).await?;
    let tokens = embedded.tokens;
    let data: Vec<Value> = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})))
}

/// Texts to embed: one string or a list of strings.
pub fn embed_inputs(f: &Fields<'_>, key: &str) -> ApiResult<Vec<String>> {
    match f.get(key) {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                f.err(
                    key,
                    "must be a string or a list of strings (token arrays are not supported)",
                )
            }),
        Some(_) => Err(f.err(key, "must be a string or a non-empty list of strings")),
        None => Err(f.err(key, "is required")),
    }
}

/// Vectors from whichever module provides `embeddings`; none loaded is a 501 naming what to load.
pub async fn embed(
    state: &Arc<AppState>,
    texts: Vec<String>,
    dialect: Dialect,
) -> ApiResult<(String, Embedded)> {
    let m = &state.manager;
    let embedder = m
        .get::<dyn Embeddings>("embeddings")
        .map_err(|e| ApiError::from_manager(e).dialect(dialect))?;
    let name = m.provider("embeddings").unwrap_or("embeddings").to_string();
    let embedded = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        embedder.embed(&refs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::from_module(e, "input").dialect(dialect))?;
    Ok((name, embedded))
}
