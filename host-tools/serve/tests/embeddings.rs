//! `/v1/embeddings` and Ollama's `/api/embed` end to end over HTTP, served from the real `embedding_local`
//! module (all-MiniLM-L6-v2 from the pip package, imported into a temporary file): the vectors are the
//! ones the encoder computes directly, and the token counts are its tokenizer's.

use enigma_core::kernels::{kernels, DType};
use enigma_models::ModelStore;
use enigma_modules::capability::RestApi;
use enigma_modules::{Health, LoadOptions, Registry};
use enigma_remote::Client;
use enigma_runtime::Embedder;
use enigma_serve::Hooks;
use serde_json::json;

#[test]
fn embeddings_routes_serve_embedding_local() {
    let test = "embeddings_routes_serve_embedding_local";
    let Some(src) = enigma_testkit::minilm_dir(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("minilm.enigma");
    let bytes = enigma_models::hf::import_dir(&src, DType::Q8_0).unwrap();
    std::fs::write(&model, bytes).unwrap();

    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &ModelStore::new(dir.path()));
    let m = enigma_serve::module::hosting(registry, Hooks::standalone, |r| {
        enigma_modules::open(dir.path(), enigma_runtime::Hardware::detect(), r)
    })
    .unwrap();
    // api_server serves text generation too: the built-in model stands in for it.
    m.load(
        "model",
        &LoadOptions::settings(&["model=default", "threads=1"]),
    )
    .unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &LoadOptions::default()).unwrap();
    // A width other than the model's is refused by name.
    let err = m
        .load(
            "embedding_local",
            &LoadOptions::settings(&[&format!("model={}", model.display()), "dim=512"]),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("384-dimensional"), "{err}");
    m.load(
        "embedding_local",
        &LoadOptions::settings(&[&format!("model={}", model.display())]),
    )
    .unwrap();
    m.load(
        "api_server",
        &LoadOptions::settings(&["host=127.0.0.1", "port=0"]),
    )
    .unwrap();
    let api = m.get::<dyn RestApi>("rest_api").unwrap();
    let client = Client::new(&format!("http://{}", api.address()), None).unwrap();

    let texts = ["A man is eating food.", "Café crème, s'il vous plaît!"];
    let direct = Embedder::open(&model, kernels()).unwrap();
    let want = direct.embed(&texts).unwrap();
    let tokens: usize = texts
        .iter()
        .map(|t| direct.tokenize(t).unwrap().len())
        .sum();

    let v = client
        .post_json("/v1/embeddings", &json!({"input": texts, "model": "x"}))
        .unwrap();
    assert_eq!(v["model"], "embedding_local", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], tokens, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        let got: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
        assert_eq!(got, want[i], "text {i}");
    }

    let v = client
        .post_json("/api/embed", &json!({"model": "x", "input": texts[1]}))
        .unwrap();
    let got: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
    assert_eq!(got, want[1..], "{v}");
    assert_eq!(
        v["prompt_eval_count"],
        direct.tokenize(texts[1]).unwrap().len()
    );
    let health = m.health("embedding_local").unwrap();
    assert!(
        matches!(&health, Health::Ok(s) if s.contains("similar")),
        "{health:?}"
    );
    m.unload("api_server", false).unwrap();
}
