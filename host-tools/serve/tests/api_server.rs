//! The `api_server` module loaded through the manager in this process: it binds an ephemeral loopback port,
//! serves the text generator the manager holds (the built-in model through `inference`), lets a stream under
//! way end when it is unloaded, frees the port, and cannot be unloaded through its own listener.

use enigma_models::ModelStore;
use enigma_modules::capability::{
    GenerateRequest, RemoteAccess, RestApi, Sampling, TextGeneration,
};
use enigma_modules::{LoadOptions, ModuleManager, Registry};
use enigma_remote::{Client, Message, Params};
use enigma_serve::Hooks;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A manager over the local modules and `api_server`, saving nothing beside a temporary models folder.
fn host() -> (tempfile::TempDir, Arc<ModuleManager>) {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &ModelStore::new(dir.path()));
    let m = enigma_serve::module::hosting(registry, Hooks::standalone, |r| {
        enigma_modules::open(dir.path(), enigma_runtime::Hardware::detect(), r)
    })
    .unwrap();
    (dir, m)
}

/// The built-in model, greedy, generating through `inference`.
fn load_generator(m: &ModuleManager) {
    m.load(
        "model",
        &LoadOptions::settings(&["model=default", "threads=1"]),
    )
    .unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &LoadOptions::settings(&["temperature=0"]))
        .unwrap();
}

fn load_server(m: &ModuleManager) -> Arc<dyn RestApi> {
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    m.get::<dyn RestApi>("rest_api").unwrap()
}

fn greedy() -> Params {
    Params {
        max_tokens: Some(24),
        temperature: Some(0.0),
        ..Params::default()
    }
}

#[test]
fn without_a_text_generation_provider_api_server_is_refused_with_the_needs_error() {
    let (_dir, m) = host();
    let err = m
        .load("api_server", &LoadOptions::settings(&["port=0"]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "module api_server needs a provider of text_generation (inference, chat_api or gguf_loader) loaded first (or load it with --with-deps)"
    );
}

#[test]
fn api_server_serves_health_and_chat_and_unloading_it_frees_the_port() {
    let (_dir, m) = host();
    load_generator(&m);
    let api = load_server(&m);
    let addr = api.address();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let access = m.get::<dyn RemoteAccess>("remote_access").unwrap();
    assert_eq!(access.url(), format!("http://{addr}"));
    assert!(!access.requires_key() && !access.beyond_loopback());
    assert_eq!(
        m.status("api_server").unwrap(),
        format!("listening on http://{addr}")
    );

    let client = Client::new(&format!("http://{addr}"), None).unwrap();
    let health = client.get_json("/health").unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["text_generation"], "inference", "{health}");

    // The chat reply over HTTP is the generator's own greedy reply.
    let messages = [Message::new("user", "Once upon a time")];
    let reply = client.chat(&messages, &greedy(), &mut |_| true).unwrap();
    assert!(!reply.text.is_empty());
    let local = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let mut text = String::new();
    local
        .chat(
            &[enigma_modules::capability::ChatMessage {
                role: enigma_modules::capability::Role::User,
                content: "Once upon a time".into(),
            }],
            &GenerateRequest {
                max_tokens: Some(24),
                sampling: Sampling {
                    temperature: Some(0.0),
                    ..Sampling::default()
                },
                ..GenerateRequest::default()
            },
            &AtomicBool::new(false),
            &mut |p| {
                text.push_str(p.text);
                true
            },
        )
        .unwrap();
    assert_eq!(reply.text, text);

    // A stream under way when the module unloads ends properly (finished or cancelled within the grace),
    // and the unload returns once the listener is closed.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 200, "stream": true}).to_string();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).unwrap();
    }
    let start = Instant::now();
    assert_eq!(m.unload("api_server", false).unwrap(), ["api_server"]);
    assert!(
        start.elapsed() < enigma_serve::SHUTDOWN_GRACE + Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(!api.is_running());

    // The port is free again, and nothing answers on it.
    drop(std::net::TcpListener::bind(addr).expect("the port is free after the unload"));
    assert!(client.get_json("/health").is_err());
    assert_eq!(m.loaded(), ["model", "tokenizer", "inference"]);
}

#[test]
fn api_server_cannot_be_unloaded_through_its_own_listener() {
    let (_dir, m) = host();
    load_generator(&m);
    let addr = load_server(&m).address();
    let client = Client::new(&format!("http://{addr}"), None).unwrap();
    let expected = "module api_server serves this request: it cannot be unloaded through its own listener (unload it in the process that hosts it, or stop that process)";
    // The body's `cascade`, as docs/SERVE.md gives the route.
    let unload = |id: &str, cascade: bool| {
        client.post_json(
            &format!("/v1/modules/{id}/unload"),
            &json!({"cascade": cascade}),
        )
    };
    for (id, cascade) in [("api_server", false), ("inference", true), ("model", true)] {
        let err = unload(id, cascade).unwrap_err().to_string();
        assert!(
            err.contains("HTTP 409") && err.contains(expected),
            "{id}: {err}"
        );
    }
    // Without cascade the manager's own rule answers first.
    let err = client
        .unload_module("inference", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("module inference is needed by api_server"),
        "{err}"
    );
    assert_eq!(client.get_json("/health").unwrap()["status"], "ok");
    assert_eq!(
        m.loaded(),
        ["model", "tokenizer", "inference", "api_server"]
    );
    // A taken port is the load's own error, and leaves nothing behind.
    m.unload("api_server", false).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = m
        .load(
            "api_server",
            &LoadOptions::settings(&["host=127.0.0.1", &format!("port={port}")]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "module api_server failed to load: cannot listen on 127.0.0.1:{port}:"
        )),
        "{err}"
    );
    assert_eq!(
        m.state("api_server").unwrap(),
        enigma_modules::State::Unloaded
    );
}
