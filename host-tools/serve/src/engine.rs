//! Engine routes: `/health`, `/metrics`, `/tokenize`, `/detokenize` (llama.cpp's shapes).

use crate::error::{ApiError, ApiResult, Dialect};
use crate::fields::{Fields, JsonBody};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use enigma_modules::capability::{TextGeneration, Tokenization};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// 503 until the modules are restored (and `-m` loaded), then 200. Never behind the API key, so a load
/// balancer can probe it.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response();
    }
    let provider = state.manager.provider("text_generation");
    Json(json!({"status": "ok", "text_generation": provider})).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let load = state
        .manager
        .get::<dyn TextGeneration>("text_generation")
        .ok()
        .map(|g| g.load());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(load),
    )
        .into_response()
}

fn tokenizer(state: &AppState) -> ApiResult<Arc<dyn Tokenization>> {
    state
        .manager
        .get::<dyn Tokenization>("tokenization")
        .map_err(ApiError::from_manager)
}

/// `{"content": TEXT, "add_special": false, "with_pieces": false}` → `{"tokens": [...]}` (with pieces:
/// `[{"id", "piece"}]`). `{"messages": [...]}` instead of `content`: the ids a chat completion of those
/// messages prompts the model with (the chat template applied, as `enigma chat --verbose-prompt` shows).
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, Dialect::OpenAi);
    if f.has("messages") {
        let messages = crate::common::messages(&f)?;
        let generator = state
            .manager
            .get::<dyn TextGeneration>("text_generation")
            .map_err(ApiError::from_manager)?;
        let ids = tokio::task::spawn_blocking(move || generator.chat_prompt(&messages))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::from_module(e, "messages"))?;
        return Ok(Json(json!({"tokens": ids})));
    }
    let text = f
        .string("content")?
        .ok_or_else(|| f.err("content", "is required"))?
        .to_string();
    let bos = f.bool("add_special")?.unwrap_or(false);
    let pieces = f.bool("with_pieces")?.unwrap_or(false);
    let tok = tokenizer(&state)?;
    let out = tokio::task::spawn_blocking(move || -> ApiResult<Value> {
        // The body limit bounds the text, so no token limit beyond it is needed here.
        let ids = tok
            .encode(&text, bos, usize::MAX)
            .map_err(|e| ApiError::from_module(e, "content"))?;
        if !pieces {
            return Ok(json!({"tokens": ids}));
        }
        // A token's text depends on the one before it (a leading space is dropped after BOS), so each
        // piece is what decoding it after its predecessor adds.
        let decode = |ids: &[u32]| {
            tok.decode(ids)
                .map_err(|e| ApiError::from_module(e, "content"))
        };
        let mut list = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let start = i.saturating_sub(1);
            let before = if i == 0 {
                0
            } else {
                decode(&ids[start..i])?.len()
            };
            let bytes = decode(&ids[start..=i])?;
            let piece = String::from_utf8_lossy(bytes.get(before..).unwrap_or_default());
            list.push(json!({"id": id, "piece": piece}));
        }
        Ok(json!({"tokens": list}))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(out))
}

/// `{"tokens": [...]}` → `{"content": TEXT}` (bytes that are not UTF-8 become U+FFFD).
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, Dialect::OpenAi);
    let tok = tokenizer(&state)?;
    let n = tok.vocab_size() as u64;
    let ids: Vec<u32> = match f.get("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().filter(|&id| id < n).map(|id| id as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                f.err(
                    "tokens",
                    format!("must be token ids below the vocabulary size {n}"),
                )
            })?,
        _ => return Err(f.err("tokens", "is required: a list of token ids")),
    };
    let bytes = tok
        .decode(&ids)
        .map_err(|e| ApiError::from_module(e, "tokens"))?;
    Ok(Json(json!({"content": String::from_utf8_lossy(&bytes)})))
}
