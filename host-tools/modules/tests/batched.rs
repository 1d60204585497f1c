//! `inference` on the batched engine with llama2.c's stories260K: callers on many threads at once get the
//! text each gets alone, a chat's next turn reuses the cached previous turn, and log-probabilities come with
//! the pieces.

use enigma_core::{Sampler, SamplerConfig, Serial};
use enigma_models::{llama2c, ModelStore};
use enigma_modules::capability::{
    ChatMessage, FinishReason, GenerateRequest, GenerationStats, Role, Sampling, TextGeneration,
};
use enigma_modules::{LoadOptions, ModuleManager, Registry};
use enigma_runtime::{HostSession, ModelFile};
use enigma_testkit::shared_bytes;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A manager with stories260K loaded as `model`, `tokenizer` and `inference` (greedy, `extra` settings).
fn loaded(test: &str, extra: &[&str]) -> Option<(tempfile::TempDir, ModuleManager, Vec<u8>)> {
    let ckpt = shared_bytes("models/stories260K.bin", test)?;
    let tok = shared_bytes("models/tok512.bin", test)?;
    let bytes = llama2c::import(&ckpt, &tok, "stories260K.bin").expect("import");
    let t = tempfile::tempdir().unwrap();
    let store = ModelStore::new(t.path().join("models"));
    std::fs::create_dir_all(store.home()).unwrap();
    std::fs::write(store.home().join("stories.enigma"), &bytes).unwrap();
    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &store);
    let m =
        enigma_modules::open(store.home(), enigma_runtime::Hardware::detect(), registry).unwrap();
    let set = |kv: &[&str]| LoadOptions {
        with_deps: false,
        set: kv.iter().map(|s| s.to_string()).collect(),
    };
    m.load("model", &set(&["model=stories", "threads=2"]))
        .unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    let mut inference = vec!["temperature=0"];
    inference.extend(extra);
    m.load("inference", &set(&inference)).unwrap();
    Some((t, m, bytes))
}

fn request(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens: Some(max_tokens),
        sampling: Sampling {
            temperature: Some(0.0),
            ..Sampling::default()
        },
        ..GenerateRequest::default()
    }
}

fn generate(g: &dyn TextGeneration, req: &GenerateRequest) -> (String, GenerationStats) {
    let mut text = String::new();
    let stats = g
        .generate(req, &AtomicBool::new(false), &mut |p| {
            text.push_str(p.text);
            true
        })
        .unwrap();
    (text, stats)
}

fn chat(g: &dyn TextGeneration, messages: &[ChatMessage]) -> (String, GenerationStats) {
    let mut text = String::new();
    let stats = g
        .chat(
            messages,
            &request("", 40),
            &AtomicBool::new(false),
            &mut |p| {
                text.push_str(p.text);
                true
            },
        )
        .unwrap();
    (text, stats)
}

/// The same prompt through today's single-sequence loop (`enigma run`'s), for the batch of one to match.
fn session_text(bytes: &[u8], prompt: &str, max_tokens: usize) -> String {
    let file = ModelFile::from_bytes(bytes, "stories260K").unwrap();
    let m = file.model(enigma_core::kernels::kernels()).unwrap();
    let mut ids = vec![0; enigma_core::Tokenizer::max_tokens(prompt.len())];
    let n = m.tokenizer.encode(prompt, true, false, &mut ids).unwrap();
    ids.truncate(n);
    let mut bufs = HostSession::new(&m.transformer, 64);
    let mut s = bufs.session(m.transformer).unwrap();
    let mut out = Vec::new();
    s.generate(
        &Serial,
        &m.tokenizer,
        &mut Sampler::new(SamplerConfig::greedy()),
        &ids,
        max_tokens,
        false,
        &mut |_, piece| {
            out.extend_from_slice(piece);
            true
        },
    )
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The dog",
    "Lily and Tom went to the park to play with a big red ball, and",
    "One day",
    "There was a little bird who could not fly. Every morning",
    "Sam",
    "The sun was hot and the children wanted to swim in the lake near the old house. Mom said",
    "A cat",
];

/// Eight threads calling at once get exactly the greedy text each prompt gets alone, and alone is the text
/// of the single-sequence loop.
#[test]
fn eight_threads_at_once_get_what_each_gets_alone() {
    let Some((_t, m, bytes)) = loaded("eight_threads_at_once_get_what_each_gets_alone", &[]) else {
        return;
    };
    let g = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let alone: Vec<(String, GenerationStats)> = PROMPTS
        .iter()
        .map(|p| generate(&*g, &request(p, 60)))
        .collect();
    for (p, (text, _)) in PROMPTS.iter().zip(&alone) {
        assert_eq!(text, &session_text(&bytes, p, 60), "{p}");
    }
    let together: Vec<(String, GenerationStats)> = std::thread::scope(|s| {
        let hs: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let g = Arc::clone(&g);
                s.spawn(move || generate(&*g, &request(p, 60)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((p, a), b) in PROMPTS.iter().zip(&alone).zip(&together) {
        assert_eq!(a.0, b.0, "{p}");
        assert_eq!(a.1.generated_tokens, b.1.generated_tokens, "{p}");
        assert_eq!(a.1.finish, b.1.finish, "{p}");
    }
    let load = g.load();
    assert_eq!((load.active, load.queued), (0, 0));
    assert!(load.kv_blocks_total > 0 && load.kv_blocks_used <= load.kv_blocks_total);
}

/// A chat's second turn starts with the first turn and its reply, whose blocks are still cached: usage
/// reports them, and the reply is the one a cold engine gives.
#[test]
fn a_second_chat_turn_reuses_the_first() {
    let Some((_t, m, _)) = loaded("a_second_chat_turn_reuses_the_first", &[]) else {
        return;
    };
    let g = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let user = |s: &str| ChatMessage {
        role: Role::User,
        content: s.into(),
    };
    let mut messages = vec![user(
        "Once upon a time there was a little girl named Lily who loved to play outside in the sun",
    )];
    let (reply, first) = chat(&*g, &messages);
    assert_eq!(first.cached_tokens, 0);
    messages.push(ChatMessage {
        role: Role::Assistant,
        content: reply,
    });
    messages.push(user("Then she saw a dog"));
    let (second, stats) = chat(&*g, &messages);
    assert!(stats.cached_tokens >= 16, "{stats:?}");
    assert!(stats.cached_tokens < stats.prompt_tokens);

    // The same conversation on a fresh engine, nothing cached: the same reply.
    let Some((_t2, cold, _)) = loaded("a_second_chat_turn_reuses_the_first", &[]) else {
        return;
    };
    let g = cold.get::<dyn TextGeneration>("text_generation").unwrap();
    let (text, s) = chat(&*g, &messages);
    assert_eq!(s.cached_tokens, 0);
    assert_eq!(text, second);
}

/// Asked for, every generated token's log-probability arrives with the piece its text completes.
#[test]
fn pieces_carry_the_logprobs_of_their_tokens() {
    let Some((_t, m, _)) = loaded("pieces_carry_the_logprobs_of_their_tokens", &[]) else {
        return;
    };
    let g = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let req = GenerateRequest {
        logprobs: Some(3),
        ..request("Once upon a time", 30)
    };
    let mut n = 0;
    let mut text = String::new();
    let mut from_tokens = Vec::new();
    let stats = g
        .generate(&req, &AtomicBool::new(false), &mut |p| {
            text.push_str(p.text);
            for lp in p.logprobs {
                n += 1;
                assert_eq!(lp.top.len(), 3);
                // Greedy: the chosen token is the most likely one.
                assert_eq!(lp.top[0].token, lp.chosen.token);
                assert!(lp.chosen.logprob <= 0.0);
                from_tokens.extend_from_slice(&lp.chosen.bytes);
            }
            true
        })
        .unwrap();
    assert_eq!(n, stats.generated_tokens);
    assert_eq!(String::from_utf8_lossy(&from_tokens), text);
    let too_many = GenerateRequest {
        logprobs: Some(21),
        ..request("Once", 1)
    };
    let err = g.generate(&too_many, &AtomicBool::new(false), &mut |_| true);
    assert!(matches!(err, Err(enigma_modules::ModuleError::Invalid(_))));
    assert!(matches!(
        stats.finish,
        FinishReason::Length | FinishReason::EndOfText
    ));
}

/// A queue of one is full while a request waits behind a running one: the next caller is told to come
/// back (busy), not made to wait.
#[test]
fn a_full_queue_is_busy() {
    let Some((_t, m, _)) = loaded("a_full_queue_is_busy", &["max_sequences=1"]) else {
        return;
    };
    let g = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let outcomes: Vec<Result<GenerationStats, enigma_modules::ModuleError>> =
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..300)
                .map(|i| {
                    let g = Arc::clone(&g);
                    s.spawn(move || {
                        g.generate(
                            &request(PROMPTS[i % 8], 200),
                            &AtomicBool::new(false),
                            &mut |_| true,
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o, Err(enigma_modules::ModuleError::Busy(_))))
        .count();
    assert!(outcomes
        .iter()
        .all(|o| o.is_ok() || matches!(o, Err(enigma_modules::ModuleError::Busy(_)))));
    assert!(busy > 0, "300 callers and a queue of 256: some are refused");
}
