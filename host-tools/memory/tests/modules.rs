//! The `memory` and `embedding_api` modules through the manager, against a loopback server speaking OpenAI's
//! `/v1/embeddings` wire format.

use enigma_memory::fake::{FakeApi, HashEmbeddings};
use enigma_modules::capability::{ChatMessage, ConversationStorage, Embeddings, VectorSearch};
use enigma_modules::{LoadOptions, ModuleError, ModuleManager, Registry};

fn manager(home: &std::path::Path) -> ModuleManager {
    let mut registry = Registry::new();
    enigma_memory::module::register(&mut registry, home);
    enigma_modules::open(home, enigma_runtime::Hardware::detect(), registry).unwrap()
}

fn api_settings(api: &FakeApi, key_env: &str) -> Vec<String> {
    vec![
        "provider=openai_compatible".into(),
        format!("base_url={}/v1", api.url()),
        "model=fake-embed".into(),
        format!("api_key_env={key_env}"),
    ]
}

#[test]
fn embedding_api_speaks_openai_and_never_shows_its_key() {
    let api = FakeApi::start(64, Some("sk-test-secret-1")).unwrap();
    std::env::set_var("ENIGMA_TEST_EMBED_KEY_A", "sk-test-secret-1");
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    let set = api_settings(&api, "ENIGMA_TEST_EMBED_KEY_A");
    let opts = LoadOptions {
        with_deps: false,
        set: set.clone(),
    };
    // A cloud module: refused until cloud modules are allowed.
    let e = m.load("embedding_api", &opts).unwrap_err().to_string();
    assert!(e.contains("cloud modules are not allowed"), "{e}");
    m.set_allow_cloud(true).unwrap();
    m.load("embedding_api", &opts).unwrap();
    let e = m.get::<dyn Embeddings>("embeddings").unwrap();
    assert_eq!(e.dimensions(), 64);
    let out = e.embed(&["the cat sat", "a dog barked"]).unwrap();
    let local = HashEmbeddings::new("fake", 64);
    // The same vectors as sent, up to the last bit of the client's renormalisation.
    for (got, text) in out.vectors.iter().zip(["the cat sat", "a dog barked"]) {
        let want = local.vector(text);
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{text}"
        );
    }
    assert_eq!(out.tokens, 6);
    assert_eq!(
        api.last_auth.lock().unwrap().as_deref(),
        Some("Bearer sk-test-secret-1")
    );
    // Nothing a person or a file sees carries the key.
    let status = m.status("embedding_api").unwrap();
    assert!(
        status.contains("fake-embed") && !status.contains("secret"),
        "{status}"
    );
    let saved = std::fs::read_to_string(dir.path().join("modules.json")).unwrap();
    assert!(saved.contains("ENIGMA_TEST_EMBED_KEY_A") && !saved.contains("secret"));
}

#[test]
fn embedding_api_refusals_are_clear() {
    let api = FakeApi::start(64, Some("sk-right")).unwrap();
    std::env::set_var("ENIGMA_TEST_EMBED_KEY_B", "sk-wrong-value");
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    m.set_allow_cloud(true).unwrap();
    let opts = LoadOptions {
        with_deps: false,
        set: api_settings(&api, "ENIGMA_TEST_EMBED_KEY_B"),
    };
    let e = m.load("embedding_api", &opts).unwrap_err().to_string();
    assert!(
        e.contains("Incorrect API key provided") && e.contains("401"),
        "{e}"
    );
    assert!(!e.contains("sk-wrong-value"), "{e}");
    // openai_compatible without an address or a model says which.
    let e = m
        .load(
            "embedding_api",
            &LoadOptions::settings(&["provider=openai_compatible"]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs base_url"), "{e}");
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("base_url=http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = m
        .load(
            "embedding_api",
            &LoadOptions::settings(&["provider=openai_compatible", "model=x", &url]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("connection refused"), "{e}");
}

#[test]
fn memory_searches_through_whichever_module_embeds() {
    let api = FakeApi::start(128, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    m.set_allow_cloud(true).unwrap();
    m.load(
        "embedding_api",
        &LoadOptions {
            with_deps: false,
            set: api_settings(&api, "ENIGMA_TEST_EMBED_KEY_UNSET"),
        },
    )
    .unwrap();
    m.load("memory", &LoadOptions::default()).unwrap();
    let search = m.get::<dyn VectorSearch>("vector_search").unwrap();
    let ids = search
        .add(
            &[
                "The spare key is under the blue flower pot.",
                "Dentist appointment on Thursday at nine.",
                "The wifi network is called Orchard.",
            ],
            "note",
        )
        .unwrap();
    let found = search.search("where is the spare key", 2).unwrap();
    assert_eq!(found[0].id, ids[0]);
    assert!(dir.path().join("memory.db").exists());
    search.forget(&[ids[0]]).unwrap();
    assert_ne!(search.search("spare key", 1).unwrap()[0].id, ids[0]);
    let e = search.forget(&[ids[0]]).unwrap_err();
    assert!(matches!(e, ModuleError::Invalid(_)), "{e}");

    let conv = m
        .get::<dyn ConversationStorage>("conversation_storage")
        .unwrap();
    let c = conv.create("chat").unwrap();
    conv.append(c, &ChatMessage::user("hi")).unwrap();
    assert_eq!(conv.messages(c).unwrap(), vec![ChatMessage::user("hi")]);
    let export = conv.export(Some(c)).unwrap();
    assert_eq!(export["conversations"][0]["messages"][0]["content"], "hi");
    let e = conv.append(999, &ChatMessage::user("x")).unwrap_err();
    assert!(matches!(e, ModuleError::Invalid(_)), "{e}");
}

#[test]
fn memory_without_embeddings_keeps_conversations_and_says_what_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    m.load("memory", &LoadOptions::settings(&["store=sub/mem.db"]))
        .unwrap();
    assert!(dir.path().join("sub/mem.db").exists());
    let search = m.get::<dyn VectorSearch>("vector_search").unwrap();
    let e = search.search("anything", 3).unwrap_err().to_string();
    assert!(e.contains("load embedding_local or embedding_api"), "{e}");
    let conv = m
        .get::<dyn ConversationStorage>("conversation_storage")
        .unwrap();
    conv.create("works anyway").unwrap();
    assert_eq!(conv.list().unwrap().len(), 1);
}
