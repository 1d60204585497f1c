//! The capability seam with real modules: a stand-in text generator registered beside `inference`, and the
//! model module's hold on its folder.

use enigma_models::{ConvertTarget, CreateOptions, ModelStore};
use enigma_modules::capability::{
    ChatMessage, FinishReason, GenerateRequest, GenerationStats, Piece, Provided, TextGeneration,
};
use enigma_modules::spec::{HardwareNeeds, ModuleConfig, ModuleSpec};
use enigma_modules::{
    Deps, Health, LoadOptions, ManagerError, Module, ModuleError, ModuleManager, Registry, State,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a cloud chat API would declare, minus the cloud: a second provider of text generation.
static CANNED: ModuleSpec = ModuleSpec {
    id: "canned_generator",
    category: "test",
    description: "says the same words every time",
    provides: &["text_generation", "streaming", "chat"],
    needs: &[],
    optional: &[],
    conflicts: &[],
    cloud: false,
    hardware: HardwareNeeds::NONE,
    config: &[],
};

const WORDS: [&str; 4] = ["canned ", "words ", "for ", "you"];

struct Canned;

impl TextGeneration for Canned {
    fn describe(&self) -> String {
        "canned words".into()
    }
    fn context_length(&self) -> usize {
        1 << 20
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
        let max = req.max_tokens.unwrap_or(WORDS.len());
        let mut stats = GenerationStats {
            prompt_tokens: req.prompt.split_whitespace().count(),
            cached_tokens: 0,
            generated_tokens: 0,
            finish: FinishReason::EndOfText,
            first_token_secs: 0.0,
            total_secs: 0.0,
        };
        for w in WORDS.iter().take(max) {
            if cancel.load(Ordering::Relaxed) || !on_text(&Piece::text(w)) {
                stats.finish = FinishReason::Cancelled;
                return Ok(stats);
            }
            stats.generated_tokens += 1;
        }
        if max < WORDS.len() {
            stats.finish = FinishReason::Length;
        }
        Ok(stats)
    }
    fn chat(
        &self,
        _messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        self.generate(req, cancel, on_text)
    }
}

struct CannedModule;

impl Module for CannedModule {
    fn spec(&self) -> &'static ModuleSpec {
        &CANNED
    }
    fn load(&mut self, _: &ModuleConfig, _: &Deps<'_>) -> Result<Provided, ModuleError> {
        Ok(Provided::new().with_all(
            &["text_generation", "streaming", "chat"],
            Arc::new(Canned) as Arc<dyn TextGeneration>,
        ))
    }
    fn unload(&mut self) -> Result<(), ModuleError> {
        Ok(())
    }
    fn status(&self) -> String {
        "canned".into()
    }
    fn health(&self) -> Health {
        Health::Ok("canned".into())
    }
}

/// A models directory with one nano model `m`, and a manager over the local modules plus the stand-in.
fn setup() -> (tempfile::TempDir, ModelStore, ModuleManager) {
    let t = tempfile::tempdir().unwrap();
    let store = ModelStore::new(t.path().join("models"));
    let opts = CreateOptions {
        seed: Some(7),
        ..CreateOptions::default()
    };
    store.create("m", "nano", &opts).unwrap();
    let mut registry = Registry::new();
    enigma_modules::local::register(&mut registry, &store);
    registry.register(Box::new(CannedModule));
    let m =
        enigma_modules::open(store.home(), enigma_runtime::Hardware::detect(), registry).unwrap();
    (t, store, m)
}

fn set(kv: &[&str]) -> LoadOptions {
    LoadOptions {
        with_deps: false,
        set: kv.iter().map(|s| s.to_string()).collect(),
    }
}

/// Asks for text_generation as any caller would, and streams a reply from whoever provides it.
fn stream(m: &ModuleManager, max_tokens: usize) -> (String, String, GenerationStats) {
    let generator = m
        .get::<dyn TextGeneration>("text_generation")
        .expect("a provider of text_generation");
    let mut text = String::new();
    let req = GenerateRequest {
        prompt: "Once upon a time".into(),
        max_tokens: Some(max_tokens),
        ..GenerateRequest::default()
    };
    let stats = generator
        .generate(&req, &AtomicBool::new(false), &mut |piece| {
            text.push_str(piece.text);
            true
        })
        .unwrap();
    (generator.describe(), text, stats)
}

#[test]
fn inference_and_another_text_generator_are_interchangeable_and_exclusive() {
    let (_t, _store, m) = setup();
    assert!(matches!(
        m.get::<dyn TextGeneration>("text_generation").err(),
        Some(ManagerError::NoProvider { .. })
    ));

    // The stand-in first: inference is refused, callers stream canned words.
    m.load("canned_generator", &LoadOptions::default()).unwrap();
    m.load("model", &set(&["model=m", "threads=1"])).unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    let err = m.load("inference", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module inference provides text_generation, which canned_generator already provides (canned_generator is loaded)"
    );
    let (who, text, stats) = stream(&m, 10);
    assert_eq!(who, "canned words");
    assert_eq!(text, "canned words for you");
    assert_eq!(stats.generated_tokens, 4);
    assert_eq!(m.invariant_violations(), Vec::<String>::new());

    // Swap: the same caller code now streams from the local model.
    m.unload("canned_generator", false).unwrap();
    m.load("inference", &set(&["temperature=0"])).unwrap();
    let err = m
        .load("canned_generator", &LoadOptions::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("which inference already provides (inference is loaded)"),
        "{err}"
    );
    let (who, text, stats) = stream(&m, 8);
    assert!(who.starts_with("m (local"), "{who}");
    assert_eq!(
        stats.prompt_tokens,
        m.get::<dyn enigma_modules::capability::Tokenization>("tokenization")
            .unwrap()
            .encode("Once upon a time", true, usize::MAX)
            .unwrap()
            .len()
    );
    assert!(stats.generated_tokens <= 8);
    assert!(matches!(
        stats.finish,
        FinishReason::Length | FinishReason::EndOfText
    ));
    // Greedy: the same request streams the same text again.
    let (_, again, _) = stream(&m, 8);
    assert_eq!(text, again);
    assert_eq!(m.provider("chat"), Some("inference"));
    assert_eq!(m.state("canned_generator").unwrap(), State::Unloaded);
}

#[test]
fn a_cancel_flag_stops_generation_between_tokens() {
    let (_t, _store, m) = setup();
    m.load("model", &set(&["model=m", "threads=1"])).unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &set(&["temperature=0"])).unwrap();
    let generator = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let cancel = AtomicBool::new(false);
    let mut pieces = 0;
    let req = GenerateRequest {
        prompt: "Hello".into(),
        max_tokens: Some(50),
        ..GenerateRequest::default()
    };
    let stats = generator
        .generate(&req, &cancel, &mut |_| {
            pieces += 1;
            // Another thread (a server's disconnect handler) would set it; here the second piece does.
            if pieces == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
            true
        })
        .unwrap();
    assert_eq!(stats.finish, FinishReason::Cancelled);
    assert!(stats.generated_tokens <= 3, "{stats:?}");
}

#[test]
fn the_model_module_holds_its_folder_so_writers_are_refused_until_it_unloads() {
    let (_t, store, m) = setup();
    m.load("model", &set(&["model=m", "threads=1"])).unwrap();
    let refused = |e: String| {
        assert!(e.contains("models/m is locked"), "{e}");
    };
    refused(store.delete("m").unwrap_err().to_string());
    refused(
        store
            .convert("m", "micro", &ConvertTarget::InPlace, Some(1), false)
            .unwrap_err()
            .to_string(),
    );
    refused(store.rename("m", "n", false).unwrap_err().to_string());
    // A caller still holding the model keeps the hold after the module unloads.
    let held = m
        .get::<dyn enigma_modules::capability::LanguageModel>("language_model")
        .unwrap();
    m.unload("model", false).unwrap();
    assert!(store.delete("m").is_err());
    drop(held);
    store.delete("m").unwrap();
}

#[test]
fn a_prompt_far_too_long_for_the_context_is_refused_before_it_is_encoded() {
    let (_t, _store, m) = setup();
    m.load("model", &set(&["model=m", "threads=1"])).unwrap();
    m.load("tokenizer", &LoadOptions::default()).unwrap();
    m.load("inference", &LoadOptions::default()).unwrap();
    let generator = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let req = GenerateRequest {
        prompt: "the ".repeat(10_000),
        max_tokens: Some(1),
        ..GenerateRequest::default()
    };
    let err = generator
        .generate(&req, &AtomicBool::new(false), &mut |_| true)
        .unwrap_err()
        .to_string();
    // Refused from its byte length (the message gives bytes), not after a full encode.
    assert!(err.contains("40000 bytes"), "{err}");
    let messages = [ChatMessage {
        role: enigma_modules::capability::Role::User,
        content: "the ".repeat(10_000),
    }];
    let err = generator
        .chat(&messages, &req, &AtomicBool::new(false), &mut |_| true)
        .unwrap_err()
        .to_string();
    // A model without chat markers gets the messages as lines of text: one newline more.
    assert!(err.contains("40001 bytes"), "{err}");
}

#[test]
fn gguf_loader_serves_text_generation_from_a_gguf_file() {
    let test = "gguf_loader_serves_text_generation_from_a_gguf_file";
    let Some(gguf) = enigma_testkit::shared_file("models/tinyllamas-stories-260k-f32.gguf", test)
    else {
        return;
    };
    let Some(reference) = enigma_testkit::shared_text(
        "reference/stories260K/greedy_n256_once_upon_a_time.txt",
        test,
    ) else {
        return;
    };
    let (_t, _store, m) = setup();
    let err = m.load("gguf_loader", &set(&[])).unwrap_err();
    assert!(err.to_string().contains("path="), "{err}");
    let path = format!("path={}", gguf.display());
    m.load("gguf_loader", &set(&[&path, "threads=1"])).unwrap();
    // It is the model: the model module is refused beside it.
    assert!(m.load("model", &set(&["model=m"])).is_err());
    let generator = m.get::<dyn TextGeneration>("text_generation").unwrap();
    let mut text = String::new();
    let req = GenerateRequest {
        prompt: "Once upon a time".into(),
        max_tokens: Some(30),
        sampling: enigma_modules::capability::Sampling {
            temperature: Some(0.0),
            ..Default::default()
        },
        ..GenerateRequest::default()
    };
    generator
        .generate(&req, &AtomicBool::new(false), &mut |piece| {
            text.push_str(piece.text);
            true
        })
        .unwrap();
    // llama2.c's greedy continuation of the same prompt, from the same weights.
    assert!(text.len() > 20, "{text:?}");
    assert!(
        reference.contains(&text),
        "{text:?} is not in {reference:?}"
    );
    assert_eq!(m.invariant_violations(), Vec::<String>::new());
    // The model module opens a GGUF path as `run -m` does, once gguf_loader is gone.
    m.unload("gguf_loader", false).unwrap();
    m.load("model", &set(&[&format!("model={}", gguf.display())]))
        .unwrap();
}
