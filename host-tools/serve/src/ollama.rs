//! The Ollama routes: `/api/chat`, `/api/generate` (newline-delimited JSON streams; `stream` defaults to
//! true, as in Ollama), `/api/tags`, `/api/show`, `/api/version`, `/api/embed`.

use crate::common::{self, generator_for, rfc3339_now, served_name};
use crate::error::{ApiResult, Dialect};
use crate::fields::{Fields, JsonBody};
use crate::generation::{self, Msg};
use crate::{openai, piece_stream, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use enigma_modules::capability::{FinishReason, GenerateRequest, GenerationStats, TokenLogprob};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

/// The Ollama version this server answers as: the API shapes here follow it.
pub const OLLAMA_VERSION: &str = "0.6.3";

const D: Dialect = Dialect::Ollama;

pub async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION}))
}

fn details() -> Value {
    json!({"parent_model": "", "format": "enigma", "family": "llama", "families": ["llama"],
        "parameter_size": "", "quantization_level": ""})
}

pub async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = served_name(&state)
        .into_iter()
        .map(|name| {
            json!({"name": name, "model": name, "modified_at": rfc3339_now(), "size": 0,
                "digest": "", "details": details()})
        })
        .collect();
    Json(json!({"models": models}))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, D);
    // Ollama's older clients send `name`, newer ones `model`.
    let body_model = if f.has("model") { "model" } else { "name" };
    let mut renamed = body.clone();
    if let Some(v) = body.get(body_model) {
        renamed.insert("model".into(), v.clone());
    }
    let (_, generator) = generator_for(&state, &Fields::new(&renamed, D))?;
    let template = generator.chat_template().unwrap_or_else(|| {
        if generator.trained_for_chat() {
            "(the model's own chat markers)".into()
        } else {
            "(plain lines: docs/SERVE.md)".into()
        }
    });
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": template,
        "details": details(),
        "model_info": {"general.architecture": "llama", "llama.context_length": generator.context_length()},
        "capabilities": ["completion"],
    })))
}

/// `options`: temperature, top_p, top_k, seed, repeat_penalty, num_predict, stop. Options this server
/// does not implement are refused by name, except those that only tune Ollama's own runner.
fn request(f: &Fields<'_>) -> ApiResult<(GenerateRequest, bool)> {
    let empty = Map::new();
    let opts = f.object("options")?.unwrap_or(&empty);
    let o = Fields::nested(opts, "options.", D);
    for key in ["presence_penalty", "frequency_penalty"] {
        o.refuse_unless(
            key,
            &json!(0),
            "is not supported (only 0): use repeat_penalty",
        )?;
    }
    for key in ["mirostat", "tfs_z", "typical_p", "min_p"] {
        if o.has(key) {
            return Err(o.err(key, "is not supported"));
        }
    }
    if f.has("format") {
        return Err(f.err("format", "is not supported: no constrained output"));
    }
    if f.bool("think")?.unwrap_or(false) {
        return Err(f.err("think", "is not supported"));
    }
    if f.get("tools")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(f.err("tools", "is not supported: this server offers no tools"));
    }
    // -1 and -2 are Ollama's "until the context is full": the provider clips to what the context holds.
    let max_tokens = match o.int("num_predict", -2, i64::MAX)? {
        None => None,
        Some(n) if n < 0 => Some(usize::MAX),
        Some(0) => return Err(o.err("num_predict", "must be at least 1 (or -1)")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let req = GenerateRequest {
        prompt: String::new(),
        max_tokens,
        sampling: common::sampling(&o)?,
        stop: o.stop("stop", 16)?,
        logprobs: common::logprobs_asked(f)?,
    };
    Ok((req, f.bool("stream")?.unwrap_or(true)))
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let started = Instant::now();
    let f = Fields::new(&body, D);
    let (req, stream) = request(&f)?;
    let messages = common::messages(&f)?;
    run(state, &f, Some(messages), req, stream, started).await
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let started = Instant::now();
    let f = Fields::new(&body, D);
    let (mut req, stream) = request(&f)?;
    for key in ["system", "template", "suffix"] {
        if f.string(key)?.is_some_and(|s| !s.is_empty()) {
            return Err(f.err(
                key,
                "is not supported on /api/generate: use /api/chat for system messages",
            ));
        }
    }
    if f.get("context")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(f.err(
            "context",
            "is not supported: send the whole text as the prompt",
        ));
    }
    if f.get("images")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(f.err(
            "images",
            "is not supported: the served model reads text only",
        ));
    }
    req.prompt = f.string("prompt")?.unwrap_or_default().to_string();
    run(state, &f, None, req, stream, started).await
}

async fn run(
    state: Arc<AppState>,
    f: &Fields<'_>,
    messages: Option<Vec<enigma_modules::capability::ChatMessage>>,
    req: GenerateRequest,
    stream: bool,
    started: Instant,
) -> ApiResult<Response> {
    let chat = messages.is_some();
    let field = if chat { "messages" } else { "prompt" };
    let with_logprobs = req.logprobs.is_some();
    let (name, generator) = generator_for(&state, f)?;
    let mut g =
        generation::start(&state, generator, messages, req, started).map_err(|e| e.dialect(D))?;
    let piece = move |name: &str, text: &str, lps: &[TokenLogprob]| {
        let mut v = json!({"model": name, "created_at": rfc3339_now(), "done": false});
        if chat {
            v["message"] = json!({"role": "assistant", "content": text});
        } else {
            v["response"] = json!(text);
        }
        if with_logprobs {
            v["logprobs"] = json!(common::logprob_entries(lps));
        }
        v
    };
    let last = move |name: &str, text: &str, lps: &[TokenLogprob], s: &GenerationStats| {
        let mut v = piece(name, text, lps);
        let ns = |secs: f64| (secs.max(0.0) * 1e9) as u64;
        let fields = json!({
            "done": true,
            "done_reason": match s.finish {
                FinishReason::EndOfText | FinishReason::Stop => "stop",
                FinishReason::Length => "length",
                FinishReason::Cancelled => "cancelled",
            },
            "total_duration": ns(started.elapsed().as_secs_f64()),
            // The model was loaded before the request: loading is a module's business, not a request's.
            "load_duration": 0,
            "prompt_eval_count": s.prompt_tokens,
            "prompt_eval_duration": ns(s.first_token_secs),
            "eval_count": s.generated_tokens,
            "eval_duration": ns(s.total_secs - s.first_token_secs),
        });
        if let (Value::Object(v), Value::Object(add)) = (&mut v, fields) {
            v.extend(add);
        }
        v
    };
    if !stream {
        let (text, lps, stats) = g.collect(field).await.map_err(|e| e.dialect(D))?;
        return Ok(Json(last(&name, &text, &lps, &stats)).into_response());
    }
    let first = g.first(field).await.map_err(|e| e.dialect(D))?;
    Ok(piece_stream(
        g,
        first,
        "application/x-ndjson",
        move |msg| match msg {
            Msg::Piece { text, logprobs } => {
                (format!("{}\n", piece(&name, &text, &logprobs)), false)
            }
            Msg::Done(Ok(stats)) => (format!("{}\n", last(&name, "", &[], &stats)), true),
            Msg::Done(Err(e)) => (format!("{}\n", json!({"error": e.to_string()})), true),
        },
    ))
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, D);
    if f.has("dimensions") {
        return Err(f.err(
            "dimensions",
            "is not supported: vectors have the provider's length",
        ));
    }
    let texts = openai::embed_inputs(&f, "input")?;
    let (name, embedded) = openai::embed(&state, texts, D).await?;
    Ok(Json(
        json!({"model": name, "embeddings": embedded.vectors, "prompt_eval_count": embedded.tokens}),
    ))
}

/// Ollama answers `GET /` so clients can tell it is up.
pub async fn root() -> impl IntoResponse {
    (
        StatusCode::OK,
        "Enigma Engine is running (Ollama and OpenAI APIs)",
    )
}
