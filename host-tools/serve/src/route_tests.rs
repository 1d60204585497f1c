//! The routes over a stand-in text generator that does what today's `inference` does not yet (log-
//! probabilities, cached prefixes, a load report, refusing with `Busy`), so the server's side of those is
//! tested now; tests/serve.rs in the CLI runs the real one end to end.

use super::*;
use axum::http::Request as HttpRequest;
use enigma_modules::capability::{
    ChatMessage, EngineLoad, FinishReason, GenerateRequest, GenerationStats, Piece, TextGeneration,
    TokenLogprob, TopLogprob,
};
use enigma_modules::{catalog, Deps, Health, Module, ModuleError, ModuleSpec, Provided, Registry};
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use tower::ServiceExt;

/// Answers by prompt: `busy` and `invalid` are refused, `fail` fails after one piece, anything else gives
/// "Hello" and " world" (with log-probabilities when asked).
struct Fake;

/// Set when the fake's long prefill saw its cancel flag.
static PREFILL_CANCELLED: AtomicBool = AtomicBool::new(false);

fn lp(token: u32, text: &str, logprob: f32, top: usize) -> TokenLogprob {
    let t = |token, text: &str, logprob| TopLogprob {
        token,
        bytes: text.as_bytes().to_vec(),
        logprob,
    };
    TokenLogprob {
        chosen: t(token, text, logprob),
        top: (0..top)
            .map(|i| t(i as u32, "x", -1.0 - i as f32))
            .collect(),
    }
}

impl Fake {
    fn run(
        &self,
        prompt: &str,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        match prompt {
            // A prompt that takes long to read, polling the flag as a batching provider does.
            "long prefill" => {
                let start = std::time::Instant::now();
                while !cancel.load(Ordering::Relaxed) {
                    assert!(start.elapsed() < Duration::from_secs(10), "never cancelled");
                    std::thread::sleep(Duration::from_millis(2));
                }
                PREFILL_CANCELLED.store(true, Ordering::Relaxed);
                return Err(ModuleError::Failed("cancelled".into()));
            }
            "busy" => return Err(ModuleError::Busy("no room for another sequence".into())),
            "invalid" => {
                return Err(ModuleError::Invalid(
                    "the prompt is 9000 tokens and the model's context holds 512".into(),
                ))
            }
            "fail" => {
                on_text(&Piece::text("Hel"));
                return Err(ModuleError::Failed("the device went away".into()));
            }
            _ => {}
        }
        let top = req.logprobs.unwrap_or(0);
        for (i, text) in ["Hello", " world"].iter().enumerate() {
            let l = [lp(i as u32 + 10, text, -0.5, top)];
            let logprobs: &[TokenLogprob] = if req.logprobs.is_some() { &l } else { &[] };
            if !on_text(&Piece { text, logprobs }) {
                break;
            }
        }
        Ok(GenerationStats {
            prompt_tokens: 7,
            cached_tokens: 3,
            generated_tokens: 2,
            finish: FinishReason::EndOfText,
            first_token_secs: 0.01,
            total_secs: 0.02,
        })
    }
}

impl TextGeneration for Fake {
    fn describe(&self) -> String {
        "a stand-in".into()
    }
    fn context_length(&self) -> usize {
        512
    }
    fn trained_for_chat(&self) -> bool {
        true
    }
    fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        self.run(&req.prompt, req, cancel, on_text)
    }
    fn chat(
        &self,
        messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let last = messages.last().map_or("", |m| m.content.as_str());
        self.run(last, req, cancel, on_text)
    }
    fn load(&self) -> EngineLoad {
        EngineLoad {
            active: 2,
            queued: 1,
            kv_blocks_used: 5,
            kv_blocks_total: 10,
        }
    }
}

/// Serves what `provided` makes as the catalog module `id`: the fake generator as `gguf_loader` (a catalog
/// module that provides text_generation and needs nothing), the fake embedder as `embedding_local`.
struct FakeModule {
    id: &'static str,
    provided: fn() -> Provided,
}

impl Module for FakeModule {
    fn spec(&self) -> &'static ModuleSpec {
        catalog::by_id(self.id)
    }
    fn load(
        &mut self,
        _: &enigma_modules::ModuleConfig,
        _: &Deps<'_>,
    ) -> Result<Provided, ModuleError> {
        Ok((self.provided)())
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        Ok(())
    }
    fn status(&self) -> String {
        "fake".into()
    }
    fn health(&self) -> Health {
        Health::Ok("fake".into())
    }
}

/// Vectors of one number per text, counting a token per word; served as `embedding_local`, loaded by the tests
/// that use it.
struct FakeEmbedder;

impl enigma_modules::capability::Embeddings for FakeEmbedder {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn dimensions(&self) -> usize {
        1
    }
    fn embed(&self, texts: &[&str]) -> Result<enigma_modules::capability::Embedded, ModuleError> {
        Ok(enigma_modules::capability::Embedded {
            vectors: texts.iter().map(|_| vec![1.0]).collect(),
            tokens: texts.iter().map(|t| t.split_whitespace().count()).sum(),
        })
    }
}

#[tokio::test]
async fn embeddings_report_the_tokens_they_read() {
    let st = state(true);
    st.manager
        .load("embedding_local", &enigma_modules::LoadOptions::default())
        .unwrap();
    let a = call(
        &st,
        "POST",
        "/v1/embeddings",
        json!({"input": ["one two three", "four"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    let a = call(&st, "POST", "/api/embed", json!({"input": "five six"})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["prompt_eval_count"], 2);
}

#[tokio::test]
async fn speech_checks_its_fields_before_asking_for_a_voice() {
    let st = state(true);
    let a = call(
        &st,
        "POST",
        "/v1/audio/speech",
        json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "mp3"}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["param"], "response_format", "{}", a.body);
    let a = call(
        &st,
        "POST",
        "/v1/audio/speech",
        json!({"input": "hi", "speed": 9}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["param"], "speed", "{}", a.body);
    let a = call(&st, "POST", "/v1/audio/speech", json!({"voice": "alloy"})).await;
    assert_eq!(a.status, 400, "{}", a.body);
    // Well formed, but no module provides text_to_speech here.
    let a = call(
        &st,
        "POST",
        "/v1/audio/speech",
        json!({"input": "hi", "voice": "alloy"}),
    )
    .await;
    assert_eq!(a.status, 501, "{}", a.body);
    assert!(a.body.contains("voice_output"), "{}", a.body);
}

fn state(ready: bool) -> Arc<AppState> {
    let mut registry = Registry::new();
    registry.register(Box::new(FakeModule {
        id: "gguf_loader",
        provided: || {
            Provided::new().with("text_generation", Arc::new(Fake) as Arc<dyn TextGeneration>)
        },
    }));
    registry.register(Box::new(FakeModule {
        id: "embedding_local",
        provided: || {
            Provided::new().with(
                "embeddings",
                Arc::new(FakeEmbedder) as Arc<dyn enigma_modules::capability::Embeddings>,
            )
        },
    }));
    let hw = enigma_runtime::Hardware {
        total_ram: Some(64 << 30),
        free_ram: Some(64 << 30),
        cores: 4,
        gpus: Vec::new(),
        cuda_note: None,
        cuda_driver: None,
    };
    let manager = ModuleManager::new(registry.finish(), hw, None).unwrap();
    manager
        .load("gguf_loader", &enigma_modules::LoadOptions::default())
        .unwrap();
    let state = AppState::new(
        Arc::new(manager),
        Options {
            addr: "127.0.0.1:0".parse().unwrap(),
            api_key: None,
            max_queue: 4,
            max_body: 1 << 20,
        },
        Hooks {
            list_modules: Box::new(|_| Ok(json!([]))),
            state_lock: Box::new(|_| Ok(Box::new(()) as StateLock)),
            on_ready: None,
        },
        None,
    );
    state.ready.store(ready, Ordering::Relaxed);
    state
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(state: &Arc<AppState>, method: &str, path: &str, body: Value) -> Answer {
    let req = HttpRequest::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = router(state.clone()).oneshot(req).await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        retry_after,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn chat(content: &str) -> Value {
    json!({"messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn chat_logprobs_take_openais_shape() {
    let s = state(true);
    let mut body = chat("hi");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let v = call(&s, "POST", "/v1/chat/completions", body).await.json();
    let content = &v["choices"][0]["logprobs"]["content"];
    assert_eq!(content.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(content[1]["token"], " world");
    assert_eq!(content[1]["logprob"], -0.5);
    assert_eq!(content[1]["bytes"], json!(b" world".to_vec()));
    assert_eq!(content[1]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(content[1]["top_logprobs"][1]["logprob"], -2.0);
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
}

#[tokio::test]
async fn completion_logprobs_take_the_legacy_shape_in_the_stream_too() {
    let s = state(true);
    let body = json!({"prompt": "hi", "logprobs": 1, "stream": true});
    let a = call(&s, "POST", "/v1/completions", body).await;
    assert_eq!(a.status, 200);
    let events: Vec<Value> = a
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(a.body.trim_end().ends_with("data: [DONE]"), "{}", a.body);
    let second = &events[1]["choices"][0]["logprobs"];
    assert_eq!(second["tokens"], json!([" world"]), "{}", a.body);
    assert_eq!(second["token_logprobs"], json!([-0.5]));
    assert_eq!(second["top_logprobs"], json!([{"x": -1.0}]));
    // Offsets count from the start of the whole text.
    assert_eq!(second["text_offset"], json!([5]));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn a_provider_with_no_room_is_a_503_with_retry_after_streamed_or_not() {
    let s = state(true);
    for stream in [false, true] {
        let mut body = chat("busy");
        body["stream"] = json!(stream);
        let a = call(&s, "POST", "/v1/chat/completions", body).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert_eq!(a.json()["error"]["code"], "busy");
    }
    let a = call(&s, "POST", "/api/chat", chat("busy")).await;
    assert_eq!(a.status, 503);
    assert!(a.json()["error"].is_string(), "{}", a.body);
}

#[tokio::test]
async fn a_refused_prompt_is_a_400_naming_it_before_any_stream() {
    let s = state(true);
    let mut body = chat("invalid");
    body["stream"] = json!(true);
    let v = call(&s, "POST", "/v1/chat/completions", body).await;
    assert_eq!(v.status, 400);
    assert_eq!(v.json()["error"]["param"], "messages");
    let v = call(&s, "POST", "/v1/completions", json!({"prompt": "invalid"})).await;
    assert_eq!(v.json()["error"]["param"], "prompt");
}

#[tokio::test]
async fn a_failure_after_the_first_piece_ends_the_stream_with_an_error_event() {
    let s = state(true);
    let mut body = chat("fail");
    body["stream"] = json!(true);
    let a = call(&s, "POST", "/v1/chat/completions", body).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body
            .contains(r#"data: {"error":{"code":null,"message":"the device went away""#),
        "{}",
        a.body
    );
    assert!(a.body.trim_end().ends_with("data: [DONE]"));
    let a = call(&s, "POST", "/api/generate", json!({"prompt": "fail"})).await;
    let last: Value = serde_json::from_str(a.body.lines().last().unwrap()).unwrap();
    assert_eq!(last["error"], "the device went away");
}

#[tokio::test]
async fn ollamas_last_chunk_carries_its_counters() {
    let s = state(true);
    let a = call(&s, "POST", "/api/chat", chat("hi")).await;
    let lines: Vec<Value> = a
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", a.body);
    assert_eq!(lines[0]["message"]["content"], "Hello");
    let last = &lines[2];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 7);
    assert_eq!(last["eval_count"], 2);
    assert_eq!(last["prompt_eval_duration"], 10_000_000);
    assert_eq!(last["eval_duration"], 10_000_000);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn metrics_report_the_providers_load_and_tokens() {
    let s = state(true);
    call(&s, "POST", "/v1/completions", json!({"prompt": "hi"})).await;
    let m = call(&s, "GET", "/metrics", Value::Null).await.body;
    for line in [
        "enigma_sequences_active 2",
        "enigma_sequences_queued 1",
        "enigma_kv_blocks_used 5",
        "enigma_kv_blocks_total 10",
        "enigma_prompt_tokens_total 7",
        "enigma_cached_prompt_tokens_total 3",
        "enigma_generated_tokens_total 2",
        "enigma_generations_running 0",
        "enigma_time_to_first_token_seconds_count 1",
        "enigma_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[tokio::test]
async fn health_is_503_until_ready() {
    let a = call(&state(false), "GET", "/health", Value::Null).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["status"], "loading");
    let a = call(&state(true), "GET", "/health", Value::Null).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["text_generation"], "gguf_loader");
}

#[tokio::test]
async fn ollama_logprobs_take_its_shape_streamed_or_not() {
    let s = state(true);
    let mut body = chat("hi");
    body["stream"] = json!(false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(1);
    let v = call(&s, "POST", "/api/chat", body.clone()).await.json();
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 2, "{v}");
    assert_eq!(lps[1]["token"], " world");
    assert_eq!(lps[1]["logprob"], -0.5);
    assert_eq!(lps[1]["top_logprobs"].as_array().unwrap().len(), 1);
    body["stream"] = json!(true);
    let a = call(&s, "POST", "/api/chat", body).await;
    let first: Value = serde_json::from_str(a.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["logprobs"][0]["token"], "Hello", "{}", a.body);
    // Without asking, no field.
    let v = call(
        &s,
        "POST",
        "/api/generate",
        json!({"prompt": "hi", "stream": false}),
    )
    .await
    .json();
    assert!(v.get("logprobs").is_none(), "{v}");
    let a = call(
        &s,
        "POST",
        "/api/generate",
        json!({"prompt": "hi", "top_logprobs": 2}),
    )
    .await;
    assert_eq!(a.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_before_its_first_token_cancels_its_prefill() {
    let s = state(true);
    let mut body = chat("long prefill");
    body["stream"] = json!(true);
    // The client gives up while the prompt is still being read: its request future is dropped.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        call(&s, "POST", "/v1/chat/completions", body),
    )
    .await;
    assert!(gave_up.is_err(), "answered before its first token");
    let start = std::time::Instant::now();
    while s.metrics.running.load(Ordering::Relaxed) != 0
        || !PREFILL_CANCELLED.load(Ordering::Relaxed)
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the prefill was not cancelled within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.admitted.load(Ordering::Relaxed), 0);
}

mod any_input {
    //! Whatever a client sends, the answer is a status and a body: never a panic, never a 500 that the
    //! provider did not cause.
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "model",
        "prompt",
        "messages",
        "role",
        "content",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "include_usage",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "options",
        "num_predict",
        "repeat_penalty",
        "input",
        "tokens",
        "with_pieces",
        "add_special",
        "images",
        "tools",
        "response_format",
        "type",
        "text",
        "system",
        "context",
        "format",
    ];
    const ROUTES: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/audio/speech",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
        "/tokenize",
        "/detokenize",
        "/v1/modules/gguf_loader/unload",
    ];

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|x| json!(x)),
            (-1e3f64..1e3).prop_map(|x| json!(x)),
            prop_oneof![Just(0.0), Just(1.0), Just(2.0), Just(-1.0)].prop_map(|x: f64| json!(x)),
            "[a-z ]{0,6}".prop_map(Value::String),
            prop::sample::select(vec!["user", "system", "assistant", "tool", "text", "float"])
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..5).prop_map(
                    |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                ),
            ]
        })
    }

    fn body() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn answered(a: &Answer) -> Result<(), TestCaseError> {
        prop_assert!(
            matches!(a.status, 200 | 400 | 404 | 409 | 413 | 501 | 503)
                || (a.status == 500 && a.body.contains("the device went away")),
            "{} {}",
            a.status,
            a.body
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn any_json_body_gets_an_answer(route in prop::sample::select(ROUTES), body in body()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let s = state(true);
            let a = rt.block_on(call(&s, "POST", route, body));
            answered(&a)?;
        }

        #[test]
        fn any_bytes_get_an_answer(route in prop::sample::select(ROUTES), bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let s = state(true);
            let req = HttpRequest::builder().method("POST").uri(route).body(Body::from(bytes)).unwrap();
            let r = rt.block_on(router(s).oneshot(req)).unwrap();
            let status = r.status().as_u16();
            let body = rt.block_on(axum::body::to_bytes(r.into_body(), usize::MAX)).unwrap();
            answered(&Answer { status, retry_after: None, body: String::from_utf8_lossy(&body).into_owned() })?;
        }
    }
}
