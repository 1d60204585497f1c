//! Module routes: list, load, unload, and the events of state changes, under the CLI's rules and with its
//! error texts (the manager's own).

use crate::error::{ApiError, ApiResult, Dialect};
use crate::fields::{Fields, JsonBody};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use enigma_modules::LoadOptions;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// What `enigma modules list --json` prints.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let st = state.clone();
    blocking(move || {
        (st.hooks.list_modules)(&st.manager)
            .map(|v| Json(json!({"modules": v})))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
    })
    .await
}

/// Body: `{"with_deps": false, "config": {"key": value, ...}}`; each config value is checked against the
/// module's schema as `--set key=value` is.
pub async fn load(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, Dialect::OpenAi);
    let with_deps = f.bool("with_deps")?.unwrap_or(false);
    let mut set = Vec::new();
    if let Some(config) = f.object("config")? {
        for (k, v) in config {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => {
                    return Err(f.err(
                        &format!("config.{k}"),
                        "must be a string, number or boolean",
                    ))
                }
            };
            set.push(format!("{k}={text}"));
        }
    }
    let st = state.clone();
    blocking(move || {
        let _lock = (st.hooks.state_lock)("serve: modules load")
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
        let done = st
            .manager
            .load(&id, &LoadOptions { with_deps, set })
            .map_err(ApiError::from_manager)?;
        let loaded: Vec<Value> = done
            .iter()
            .map(|id| json!({"id": id, "status": st.manager.status(id).unwrap_or_default()}))
            .collect();
        Ok(Json(json!({"loaded": loaded})))
    })
    .await
}

/// Body: `{"cascade": false}`.
pub async fn unload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let f = Fields::new(&body, Dialect::OpenAi);
    let cascade = f.bool("cascade")?.unwrap_or(false);
    let st = state.clone();
    blocking(move || {
        if let Some(host) = st.hosted_by {
            // Stopping the listener waits for its requests to end, this one among them: refused, rather than
            // answered by a connection that hangs until the grace runs out.
            let taken = id == host
                || (cascade && st.manager.dependents_of(&id).is_ok_and(|d| d.contains(&host)));
            if taken {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "module {host} serves this request: it cannot be unloaded through its own listener (unload it in the process that hosts it, or stop that process)"
                    ),
                ));
            }
        }
        let _lock = (st.hooks.state_lock)("serve: modules unload")
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
        let done = st
            .manager
            .unload(&id, cascade)
            .map_err(ApiError::from_manager)?;
        Ok(Json(json!({"unloaded": done})))
    })
    .await
}

/// Server-sent events, one `data:` line of JSON per manager event (`state_changed`, `loaded`, `unloaded`,
/// `failed`).
pub async fn events(State(state): State<Arc<AppState>>) -> Response {
    let rx = state.manager.subscribe();
    let (tx, out) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // The manager's channel is a blocking one: a thread forwards it, and notices within a second a client
    // that left or a server shutting down (whose graceful end waits for this stream) even when no event
    // comes.
    let st = state.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Bytes::from_static(b": subscribed\n\n"));
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(e) => {
                    let line = format!("data: {}\n\n", json!(e));
                    if tx.send(Bytes::from(line)).is_err() {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if !tx.is_closed() && !st.shutting_down.load(Ordering::Relaxed) => {}
                Err(_) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), out))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
