//! `network`'s remote_inference against a real engine on loopback: the `api_server` module of another
//! manager in this process, serving the built-in model. The same greedy request gives the same text
//! remotely as locally; a peer that goes away is a clear error naming it.

use enigma_models::ModelStore;
use enigma_modules::capability::{
    ChatMessage, FinishReason, GenerateRequest, RemoteInference, RestApi, Role, Sampling,
    TextGeneration,
};
use enigma_modules::{LoadOptions, ModuleError, ModuleManager, Registry};
use enigma_serve::Hooks;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A manager over the local modules, `api_server` and `network`, over a temporary models folder.
fn host() -> (tempfile::TempDir, Arc<ModuleManager>) {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &ModelStore::new(dir.path()));
    enigma_network::register(&mut registry);
    let m = enigma_serve::module::hosting(registry, Hooks::standalone, |r| {
        enigma_modules::open(dir.path(), enigma_runtime::Hardware::detect(), r)
    })
    .unwrap();
    (dir, m)
}

/// An engine serving the built-in model on an ephemeral loopback port; its URL.
fn engine(m: &ModuleManager) -> String {
    m.load(
        "model",
        &LoadOptions::settings(&["model=default", "threads=1"]),
    )
    .unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &LoadOptions::default()).unwrap();
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    let addr = m.get::<dyn RestApi>("rest_api").unwrap().address();
    format!("http://{addr}")
}

fn greedy(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens: Some(32),
        sampling: Sampling {
            temperature: Some(0.0),
            ..Sampling::default()
        },
        ..GenerateRequest::default()
    }
}

fn collect(
    run: impl FnOnce(
        &mut dyn FnMut(&enigma_modules::capability::Piece<'_>) -> bool,
    ) -> Result<enigma_modules::capability::GenerationStats, ModuleError>,
) -> (
    String,
    usize,
    Result<enigma_modules::capability::GenerationStats, ModuleError>,
) {
    let mut text = String::new();
    let mut pieces = 0;
    let r = run(&mut |p| {
        text.push_str(p.text);
        pieces += 1;
        true
    });
    (text, pieces, r)
}

#[test]
fn remote_inference_on_a_loopback_engine_gives_the_local_greedy_text() {
    // A second manager in this process plays the peer.
    let (_peer_dir, peer) = host();
    let url = engine(&peer);
    let (_dir, m) = host();
    m.load(
        "network",
        &LoadOptions::settings(&[&format!("peer={url}"), "discovery=false"]),
    )
    .unwrap();
    assert!(
        m.provider("text_generation").is_none(),
        "network is not a text generator"
    );
    let remote = m.get::<dyn RemoteInference>("remote_inference").unwrap();
    assert_eq!(remote.peer().unwrap(), url);
    let local = peer.get::<dyn TextGeneration>("text_generation").unwrap();
    let cancel = AtomicBool::new(false);

    let req = greedy("Once upon a time");
    let (want, _, r) = collect(|f| local.generate(&req, &cancel, f));
    r.unwrap();
    let (got, pieces, r) = collect(|f| remote.generate(&req, &cancel, f));
    let stats = r.unwrap();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert!(pieces > 1, "streamed in pieces, not one reply: {pieces}");
    assert!(stats.generated_tokens > 0);
    assert!(matches!(
        stats.finish,
        FinishReason::Length | FinishReason::EndOfText
    ));

    let messages = [ChatMessage {
        role: Role::User,
        content: "Tell me a story".into(),
    }];
    let (want, _, r) = collect(|f| local.chat(&messages, &req, &cancel, f));
    r.unwrap();
    let (got, _, r) = collect(|f| remote.chat(&messages, &req, &cancel, f));
    r.unwrap();
    assert_eq!(got, want);

    // What the peer cannot be asked is refused, not dropped.
    let mut with_stop = greedy("x");
    with_stop.stop = vec!["end".into()];
    let (_, _, r) = collect(|f| remote.generate(&with_stop, &cancel, f));
    assert!(matches!(r, Err(ModuleError::Invalid(_))), "{r:?}");

    // The peer goes away: a clear error naming it.
    peer.unload("api_server", false).unwrap();
    let (_, _, r) = collect(|f| remote.generate(&req, &cancel, f));
    let err = r.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("remote_inference: cannot reach {url}/v1/models")),
        "{err}"
    );
}

#[test]
fn network_settings_are_checked_when_it_loads() {
    let (_dir, m) = host();
    let err = m
        .load(
            "network",
            &LoadOptions::settings(&["peer=auto", "discovery=false"]),
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "module network failed to load: peer=auto finds its peer by discovery: set discovery=true, or peer=URL"
    );
    let err = m
        .load(
            "network",
            &LoadOptions::settings(&["peer=ftp://x", "discovery=false"]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("peer: \"ftp://x\" is not a server URL"),
        "{err}"
    );
}

/// Waits up to `secs` for `network`'s status to say how many servers it announces.
fn announces(m: &ModuleManager, n: usize, secs: u64) -> bool {
    let want = format!("{n} server(s) announced");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if m.status("network").unwrap().contains(&want) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_running_api_server_is_announced_whichever_loads_first_and_withdrawn_when_it_stops() {
    let (_dir, m) = host();
    engine(&m);
    let network = LoadOptions::settings(&["peer=auto", "discovery=true"]);
    // The server first: network announces it when it loads, and withdraws it within a browse round after
    // the server stops.
    m.load("network", &network).unwrap();
    assert!(announces(&m, 1, 0), "{}", m.status("network").unwrap());
    m.unload("api_server", false).unwrap();
    assert!(
        announces(&m, 0, 2 * enigma_network::BROWSE_ROUND.as_secs() + 1),
        "{}",
        m.status("network").unwrap()
    );
    // Network first: the server announces itself through multi_device, until it unloads.
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    assert!(announces(&m, 1, 0), "{}", m.status("network").unwrap());
    m.unload("api_server", false).unwrap();
    assert!(announces(&m, 0, 0), "{}", m.status("network").unwrap());
    // Unloading network withdraws what it announced, whoever holds the guard.
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    m.unload("network", false).unwrap();
    assert_eq!(
        m.status("api_server").unwrap().split(' ').next(),
        Some("listening")
    );
    // The server's guard outlives the network it came from: dropping it then is a no-op.
    m.unload("api_server", false).unwrap();
}
