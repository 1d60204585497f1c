//! The `api_server` module: the HTTP listener as a module of the process that hosts the manager.
//!
//! Loading it binds its `host:port` and serves this crate's router over the hosting manager (whichever module
//! provides `text_generation` answers, through the capability seam); unloading it stops accepting, lets
//! requests under way finish for up to [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE), cancels the rest and
//! returns once the port is closed. The router needs the manager itself (module routes, the provider of each
//! request), which a module's `load` is not handed: the host attaches it to the [`ServerHost`] it registered
//! the module with, once the manager exists.

use crate::{AppState, Hooks, Options};
use enigma_modules::capability::{MultiDevice, RemoteAccess, RestApi};
use enigma_modules::spec::Value;
use enigma_modules::{
    catalog, Deps, Health, ManagerError, Module, ModuleConfig, ModuleError, ModuleManager,
    ModuleSpec, Provided, Registry,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

/// Why `api_server` does not load in a process that hosts modules only for one command.
pub const NOT_HOSTED: &str = "it listens only in a process that hosts modules for its life, and this one ends with its command: `enigma serve` restores it from modules.json, and `enigma modules load api_server --remote URL` loads it in a running one";

/// What the hosting process gives the server module: its manager (attached once made) and the hooks
/// (module list, state lock) the routes use.
pub struct ServerHost {
    manager: OnceLock<Weak<ModuleManager>>,
    hooks: Box<dyn Fn() -> Hooks + Send + Sync>,
}

impl ServerHost {
    /// `hooks` makes the routes' hooks each time the module loads (`on_ready` is not used: a loaded
    /// `network` module announces the server instead).
    pub fn new(hooks: impl Fn() -> Hooks + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ServerHost {
            manager: OnceLock::new(),
            hooks: Box::new(hooks),
        })
    }

    /// The manager the module was registered into. Held weakly: the manager owns the module.
    pub fn attach(&self, manager: &Arc<ModuleManager>) {
        let _ = self.manager.set(Arc::downgrade(manager));
    }
}

/// The manager of a process that hosts modules for its life: `registry` with `api_server` added, opened by
/// `open`, and attached, so `api_server` loads in it.
pub fn hosting(
    mut registry: Registry,
    hooks: impl Fn() -> Hooks + Send + Sync + 'static,
    open: impl FnOnce(Registry) -> Result<ModuleManager, ManagerError>,
) -> Result<Arc<ModuleManager>, ManagerError> {
    let host = ServerHost::new(hooks);
    register(&mut registry, &host);
    let manager = Arc::new(open(registry)?);
    host.attach(&manager);
    Ok(manager)
}

impl Hooks {
    /// For a host that saves no module state (tests, a program embedding the engine): the module list is the
    /// loaded ids, and there is no state file to lock.
    pub fn standalone() -> Hooks {
        Hooks {
            list_modules: Box::new(|m| Ok(serde_json::json!(m.loaded()))),
            state_lock: Box::new(|_| Ok(Box::new(()) as crate::StateLock)),
            on_ready: None,
        }
    }
}

/// Registers `api_server`, serving over the manager `host` is attached to.
pub fn register(registry: &mut Registry, host: &Arc<ServerHost>) {
    registry.register(Box::new(ApiServerModule {
        spec: catalog::by_id("api_server"),
        host: host.clone(),
        running: None,
    }));
}

struct ApiServerModule {
    spec: &'static ModuleSpec,
    host: Arc<ServerHost>,
    running: Option<Running>,
}

struct Running {
    listener: Arc<Listener>,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The mDNS announcement, withdrawn when dropped (before the listener stops).
    advertisement: Option<Box<dyn Send>>,
}

/// The handle behind `rest_api` and `remote_access`.
struct Listener {
    addr: SocketAddr,
    key: bool,
    running: AtomicBool,
    /// Weak: the server's state holds the manager, which holds this handle.
    state: Weak<AppState>,
}

impl RestApi for Listener {
    fn address(&self) -> SocketAddr {
        self.addr
    }
    fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
    fn served_model(&self) -> String {
        self.state
            .upgrade()
            .and_then(|st| crate::common::served_name(&st))
            .unwrap_or_default()
    }
}

impl RemoteAccess for Listener {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn requires_key(&self) -> bool {
        self.key
    }
    fn beyond_loopback(&self) -> bool {
        !self.addr.ip().is_loopback()
    }
}

fn config_int(config: &ModuleConfig, key: &str) -> Result<i64, ModuleError> {
    config
        .get(key)
        .and_then(Value::as_int)
        .ok_or_else(|| ModuleError::Config(format!("{key} is not set")))
}

fn config_text<'a>(config: &'a ModuleConfig, key: &str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The listener's options from the module's (schema-checked) config; the key is read from the environment
/// variable the config names, so it is never saved in modules.json.
fn options(config: &ModuleConfig) -> Result<Options, ModuleError> {
    let host = config_text(config, "host");
    let ip: IpAddr = host.parse().map_err(|_| {
        ModuleError::Config(format!(
            "host: '{host}' is not an IP address (127.0.0.1, 0.0.0.0, ::1, ...)"
        ))
    })?;
    // The schema bounds these, so the casts cannot wrap.
    let port = config_int(config, "port")? as u16;
    let env = config_text(config, "api_key_env");
    let api_key = (!env.is_empty())
        .then(|| std::env::var(env).ok())
        .flatten()
        .filter(|k| !k.is_empty());
    Ok(Options {
        addr: SocketAddr::new(ip, port),
        api_key,
        max_queue: config_int(config, "max_queue")? as usize,
        max_body: config_int(config, "max_body")? as usize,
    })
}

impl Module for ApiServerModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let options = options(config)?;
        let manager = self
            .host
            .manager
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ModuleError::Failed(NOT_HOSTED.into()))?;
        // Bound here, not on the server's thread, so a taken port is this load's error.
        let std_listener = std::net::TcpListener::bind(options.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| ModuleError::Failed(format!("cannot listen on {}: {e}", options.addr)))?;
        let addr = std_listener.local_addr().map_err(ModuleError::failed)?;
        if !addr.ip().is_loopback() && options.api_key.is_none() {
            eprintln!(
                "warning: api_server listens on {addr}, beyond this machine, without an API key: anyone who can reach it can use it (set the variable its api_key_env names)"
            );
        }
        let state = AppState::new(
            manager,
            options.clone(),
            (self.host.hooks)(),
            Some(self.spec.id),
        );
        // The needs were checked by the manager before this load, so requests can be served at once.
        state.ready.store(true, Ordering::Relaxed);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let st = state.clone();
        // Its own thread and runtime: `unload` may be called from inside another runtime (a route of
        // `enigma serve`'s own server), where a runtime can be neither started nor dropped.
        let thread = std::thread::Builder::new()
            .name("enigma-api-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("enigma-api-server")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let result = rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                            return Ok(());
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    crate::serve_until(listener, st, stop)
                        .await
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = result {
                    eprintln!("api_server on {addr} stopped: {e}");
                }
                // Generations cancelled at the end of the grace stop at their next token; their threads
                // are not waited for longer.
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
            })
            .map_err(ModuleError::failed)?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(ModuleError::Failed(format!(
                    "cannot start the server on {addr}: {e}"
                )));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ModuleError::Failed(format!(
                    "the server thread on {addr} ended before it started"
                )));
            }
        }
        let listener = Arc::new(Listener {
            addr,
            key: options.api_key.is_some(),
            running: AtomicBool::new(true),
            state: Arc::downgrade(&state),
        });
        // Announced when this host is on the network (a loaded `network` provides multi_device); without
        // it, nothing is announced.
        let advertisement = match deps.get::<dyn MultiDevice>("multi_device") {
            Ok(md) => match md.advertise(addr.port(), &listener.served_model()) {
                Ok(ad) => Some(ad),
                Err(e) => {
                    eprintln!("warning: api_server on {addr} is not announced: {e}");
                    None
                }
            },
            Err(_) => None,
        };
        self.running = Some(Running {
            listener: listener.clone(),
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
            advertisement,
        });
        Ok(Provided::new()
            .with("rest_api", listener.clone() as Arc<dyn RestApi>)
            .with("remote_access", listener as Arc<dyn RemoteAccess>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        let Some(mut r) = self.running.take() else {
            return Ok(());
        };
        r.listener.running.store(false, Ordering::Relaxed);
        drop(r.advertisement.take());
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = r.thread.take() {
            thread
                .join()
                .map_err(|_| ModuleError::Failed("the server thread panicked".into()))?;
        }
        drop(r.state);
        Ok(())
    }

    fn status(&self) -> String {
        match &self.running {
            Some(r) => format!(
                "listening on {}{}",
                r.listener.url(),
                if r.listener.key {
                    " (API key required)"
                } else {
                    ""
                }
            ),
            None => "not running".into(),
        }
    }

    fn health(&self) -> Health {
        let Some(r) = &self.running else {
            return Health::NotLoaded;
        };
        // A connection from here shows the listener still accepts (the server thread has not died).
        let target = if r.listener.addr.ip().is_unspecified() {
            SocketAddr::new(
                match r.listener.addr {
                    SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
                    SocketAddr::V6(_) => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                },
                r.listener.addr.port(),
            )
        } else {
            r.listener.addr
        };
        match std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2)) {
            Ok(_) => Health::Ok(format!("accepts connections on {}", r.listener.addr)),
            Err(e) => Health::Unhealthy(format!("{target} refuses connections: {e}")),
        }
    }
}

impl Drop for ApiServerModule {
    fn drop(&mut self) {
        let _ = self.unload();
    }
}
