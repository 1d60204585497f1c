//! `enigma serve`: the HTTP server over the module manager (docs/SERVE.md).
//!
//! OpenAI routes (`/v1/...`), Ollama routes (`/api/...`), engine routes (`/health`, `/metrics`,
//! `/tokenize`, `/detokenize`) and module routes (`/v1/modules/...`), on axum and tokio. Generation is
//! asked of whichever module provides `text_generation`, through the capability seam only: each request
//! runs the provider's blocking `generate`/`chat` on a thread of its own and streams its pieces back; a
//! client that goes away cancels its sequence.

mod audio;
mod common;
mod engine;
pub mod error;
mod fields;
mod generation;
mod metrics;
pub mod module;
mod modules;
mod ollama;
mod openai;
#[cfg(test)]
mod route_tests;
mod speech;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use enigma_modules::ModuleManager;
use error::ApiError;
use generation::{Generation, Msg};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long streams under way may run on after SIGTERM/SIGINT before they are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every route but `/health`.
    pub api_key: Option<String>,
    /// Generation requests admitted at once (running or waiting in the provider); more are refused with
    /// 503 and `Retry-After`.
    pub max_queue: usize,
    /// Largest request body, in bytes; larger is a 413.
    pub max_body: usize,
}

/// A held lock on the saved module state, from whoever hosts the manager (the CLI holds `.modules.lock` beside
/// `modules.json` so a server and an `enigma modules` command never lose each other's change).
pub type StateLock = Box<dyn std::any::Any + Send>;

/// What the host supplies that the server does not own: the module list as `enigma modules list --json`
/// prints it, and the lock around changes of the saved state.
pub struct Hooks {
    pub list_modules: ListModules,
    pub state_lock: LockState,
    /// Called once the server is ready, with its address and the served model's name; what it returns is
    /// kept until the server stops (an mDNS advertisement, withdrawn when dropped).
    pub on_ready: Option<OnReady>,
}

pub type ListModules =
    Box<dyn Fn(&ModuleManager) -> Result<serde_json::Value, String> + Send + Sync>;
pub type LockState = Box<dyn Fn(&str) -> Result<StateLock, String> + Send + Sync>;
pub type OnReady = Box<dyn FnOnce(SocketAddr, &str) -> Result<Box<dyn Send>, String> + Send + Sync>;
/// Restores the modules (and loads `-m`) while `/health` answers 503; an error stops the server.
pub type Startup = Box<dyn FnOnce(&ModuleManager) -> Result<(), String> + Send>;

pub struct AppState {
    pub manager: Arc<ModuleManager>,
    pub options: Options,
    hooks: Hooks,
    metrics: metrics::Metrics,
    /// Set once the modules are restored: `/health` answers 200 from then on.
    ready: AtomicBool,
    /// Set on SIGTERM/SIGINT: new generations are refused, event streams end.
    shutting_down: AtomicBool,
    /// Generations admitted and not yet ended (their threads may still be running after a cancel).
    admitted: AtomicUsize,
    /// The cancel flags of generations under way, for shutdown.
    cancels: Mutex<Vec<Weak<AtomicBool>>>,
    /// The module whose listener this is (`api_server` when loaded through the manager): the module routes
    /// refuse to unload it, since its unload waits for the very request asking for it to end.
    hosted_by: Option<&'static str>,
}

impl AppState {
    /// Not ready (`/health` answers 503) until `ready` is set.
    pub fn new(
        manager: Arc<ModuleManager>,
        options: Options,
        hooks: Hooks,
        hosted_by: Option<&'static str>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            manager,
            options,
            hooks,
            metrics: metrics::Metrics::default(),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            admitted: AtomicUsize::new(0),
            cancels: Mutex::new(Vec::new()),
            hosted_by,
        })
    }

    fn track(&self, flag: &Arc<AtomicBool>) {
        let mut c = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|w| w.strong_count() > 0);
        c.push(Arc::downgrade(flag));
    }

    fn cancel_all(&self) {
        for w in self
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Some(f) = w.upgrade() {
                f.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Startup(String),
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.options.max_body;
    Router::new()
        .route("/", get(ollama::root))
        .route("/health", get(engine::health))
        .route("/metrics", get(engine::metrics))
        .route("/tokenize", post(engine::tokenize))
        .route("/detokenize", post(engine::detokenize))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/audio/speech", post(speech::speech))
        .route(
            "/v1/audio/transcriptions",
            // Audio is larger than JSON; this route's limit replaces the server's.
            post(audio::transcriptions)
                .layer(DefaultBodyLimit::max(audio::MAX_AUDIO.max(max_body))),
        )
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/api/embed", post(ollama::embed))
        .route("/v1/modules", get(modules::list))
        .route("/v1/modules/events", get(modules::events))
        .route("/v1/modules/{id}/load", post(modules::load))
        .route("/v1/modules/{id}/unload", post(modules::unload))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {} (docs/SERVE.md lists them)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Counts every answer by route pattern and status.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("(unmatched)", |m| m.as_str())
        .to_string();
    let r = next.run(req).await;
    state.metrics.count_request(&route, r.status().as_u16());
    r
}

/// With `--api-key`, every route but `/health` needs the key.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.options.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" || presented(req.headers(), key) {
        return next.run(req).await;
    }
    let mut e = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a valid API key is required: send it as `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
    )
    .code("invalid_api_key");
    if req.uri().path().starts_with("/api/") {
        e = e.dialect(error::Dialect::Ollama);
    }
    e.into_response()
}

fn presented(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    [bearer, x]
        .into_iter()
        .flatten()
        .any(|k| same_secret(k.trim(), key))
}

/// Compares without stopping at the first differing byte, so timing does not tell how much of a guess
/// was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A streamed response over a generation: `render` turns each message into the bytes to send and says
/// whether it was the last. The body owns the generation, so when the client goes away the body is
/// dropped and the sequence is cancelled.
fn piece_stream<F>(g: Generation, first: Msg, content_type: &'static str, render: F) -> Response
where
    F: FnMut(Msg) -> (String, bool) + Send + 'static,
{
    let stream = futures_util::stream::unfold(Some((g, Some(first), render)), |st| async move {
        let (mut g, pending, mut render) = st?;
        let msg = match pending {
            Some(m) => m,
            None => g.next().await,
        };
        let (text, last) = render(msg);
        let next = (!last).then_some((g, None, render));
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), next))
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Binds, prints `listening on http://ADDR`, runs `startup` (restoring modules, loading `-m`) off the
/// async threads while `/health` answers 503, then serves until SIGTERM or SIGINT: new connections stop,
/// streams under way get [`SHUTDOWN_GRACE`] to finish and are then cancelled, and it returns.
pub fn run(
    options: Options,
    manager: Arc<ModuleManager>,
    mut hooks: Hooks,
    startup: Startup,
) -> Result<(), ServeError> {
    let on_ready = hooks.on_ready.take();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("enigma-serve")
        .build()?;
    let state = AppState::new(manager, options.clone(), hooks, None);
    let result = rt.block_on(serve(state.clone(), options, startup, on_ready));
    // Generations cancelled at shutdown stop at their next token; their threads are not waited for longer.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn serve(
    state: Arc<AppState>,
    options: Options,
    startup: Startup,
    on_ready: Option<OnReady>,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && options.api_key.is_none() {
        eprintln!(
            "warning: listening on {addr}, beyond this machine, without an API key: anyone who can reach it can use it (set --api-key or ENIGMA_API_KEY)"
        );
    }
    println!("listening on http://{addr}");
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<String>();
    let st = state.clone();
    // Held until this function returns: dropping it withdraws what `on_ready` set up.
    let (kept_tx, _kept_rx) = tokio::sync::oneshot::channel::<Box<dyn Send>>();
    tokio::task::spawn_blocking(move || match startup(&st.manager) {
        Ok(()) => {
            st.ready.store(true, Ordering::Relaxed);
            eprintln!("ready");
            if let Some(f) = on_ready {
                let name = common::served_name(&st).unwrap_or_default();
                match f(addr, &name) {
                    Ok(kept) => {
                        let _ = kept_tx.send(kept);
                    }
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
        }
        Err(e) => {
            let _ = failed_tx.send(e);
        }
    });
    let (why_tx, why_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let stop = async move {
        let why = tokio::select! {
            _ = shutdown_signal() => None,
            Ok(e) = &mut failed_rx => Some(e),
        };
        if why.is_none() {
            eprintln!("shutting down: finishing the requests under way");
        }
        let _ = why_tx.send(why);
    };
    serve_until(listener, state, stop).await?;
    match why_rx.await.unwrap_or(None) {
        Some(e) => Err(ServeError::Startup(e)),
        None => Ok(()),
    }
}

/// Serves the router over `state` on `listener` until `stop` resolves; then new connections stop, requests
/// under way get [`SHUTDOWN_GRACE`] to finish, and whatever is left is cancelled so it ends now. Returns when
/// every connection has closed. `enigma serve`'s own listener and the `api_server` module both stop this way.
async fn serve_until(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let st = state.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            stop.await;
            st.shutting_down.store(true, Ordering::Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                st.cancel_all();
            });
        })
        .await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without handlers the default action (exit) still stops the server.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_from_either_header() {
        let mut h = HeaderMap::new();
        assert!(!presented(&h, "k1"));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(presented(&h, "k1"));
        assert!(!presented(&h, "k2"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k2".parse().unwrap());
        assert!(presented(&h, "k2"));
        assert!(!presented(&h, "k"));
    }
}
