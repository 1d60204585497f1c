//! The capability seam: what a loaded module hands out, and what callers ask for.
//!
//! A module declares capabilities by name in its spec (`text_generation`, `embeddings`, ...). While it is
//! loaded it hands the manager one typed handle per capability it serves: an `Arc` of the trait of that
//! capability's family ([`TextGeneration`], [`Embeddings`], ...). A caller (the CLI, the server, the GUI, or
//! another module while it loads) asks the manager by name with the family it expects:
//!
//! ```ignore
//! let gen = manager.get::<dyn TextGeneration>("text_generation")?;
//! gen.generate(&request, &cancel, &mut |text| { print!("{text}"); true })?;
//! ```
//!
//! and gets whichever loaded module provides it. The one-provider rule makes the answer unique, so a local
//! model and a cloud API stand in for each other. Each trait is defined by what its callers need, not by
//! what one implementation happens to do.

use crate::module::ModuleError;
use enigma_runtime::{Backend, ModelFile};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A language model's weights, opened, checked and held (with its folder's reader lock) for as long as the
/// module is loaded. What other modules build on: generation, training, tokenizers that come with it.
pub trait LanguageModel: Send + Sync {
    /// The name it was loaded as (a model of the store, or a path).
    fn name(&self) -> &str;
    /// The `.enigma` file.
    fn path(&self) -> &Path;
    fn file(&self) -> &ModelFile;
    /// The backend that runs it (CPU threads today).
    fn backend(&self) -> &Backend;
}

/// Text to token ids and back.
pub trait Tokenization: Send + Sync {
    /// The model whose tokenizer this is.
    fn source(&self) -> &str;
    /// The `.enigma` file the tokenizer is read from (it travels inside the model file).
    fn file(&self) -> &ModelFile;
    fn vocab_size(&self) -> usize;
    /// The ids of `text`, refused (before the work of encoding) when it cannot fit in `max` tokens: callers
    /// pass what is left of a context, so an untrusted text costs nothing when it is far too long.
    fn encode(&self, text: &str, bos: bool, max: usize) -> Result<Vec<u32>, ModuleError>;
    /// The bytes of `ids` (not necessarily UTF-8: a byte-fallback token is one byte of a character).
    fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, ModuleError>;
}

// One definition of a conversation's messages for every caller; enigma-chat renders them.
pub use enigma_chat::{ChatMessage, Role};

/// Sampling settings a request may set; `None` keeps the provider's configured value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// One generation: a prompt (or, for [`TextGeneration::chat`], messages) and its limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Most tokens to generate; `None` is the provider's configured limit.
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    /// Generation stops before the first of these strings would be emitted.
    pub stop: Vec<String>,
    /// `Some(n)`: each [`Piece`] carries the log-probabilities of the tokens that made it, each with the
    /// `n` most likely alternatives (`0..=20`, OpenAI's range); `None`: none are computed.
    pub logprobs: Option<usize>,
}

/// A token's log-probability under the distribution it was sampled from (before temperature and
/// truncation, as OpenAI reports it).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    pub token: u32,
    /// The token's bytes; not necessarily UTF-8 (a byte-fallback token is part of a character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token's log-probability and, when asked for, the most likely alternatives at its step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub chosen: TopLogprob,
    /// Most likely first.
    pub top: Vec<TopLogprob>,
}

/// What a generation hands its caller as it goes: valid UTF-8, and the tokens whose text it completes
/// (their log-probabilities, empty unless [`GenerateRequest::logprobs`] asked for them).
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

impl<'a> Piece<'a> {
    /// Text alone.
    pub fn text(text: &'a str) -> Self {
        Piece {
            text,
            logprobs: &[],
        }
    }
}

/// What a generator is doing now, for a server's metrics; a generator that runs one request at a time
/// per call reports the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineLoad {
    /// Sequences being prefilled or decoded.
    pub active: usize,
    /// Requests waiting for room.
    pub queued: usize,
    /// KV cache blocks in use (cached prefixes included), and all there are.
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended the text.
    EndOfText,
    /// `max_tokens` were generated, or the context is full.
    Length,
    /// A stop string was reached.
    Stop,
    /// The caller's cancel flag was set, or its callback returned `false`.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Of the prompt's tokens, those whose keys and values were reused from a cached prefix.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub finish: FinishReason,
    /// Wall time to the first generated token (prompt processing included).
    pub first_token_secs: f64,
    pub total_secs: f64,
}

/// Streaming text generation: a local model (`inference`), a cloud API (`chat_api`), a GGUF model
/// (`gguf_loader`) all stand behind this.
pub trait TextGeneration: Send + Sync {
    /// What generates ("stories260K on 2 CPU threads", "gpt-4o-mini at api.example.com").
    fn describe(&self) -> String;
    /// Tokens of context (prompt and reply together).
    fn context_length(&self) -> usize;
    /// Whether [`TextGeneration::chat`] uses a chat format the model was trained on. When it was not, the
    /// messages are laid out as plain text and the model continues it.
    fn trained_for_chat(&self) -> bool;
    /// Continues `req.prompt`, calling `on_text` with each piece of valid UTF-8 as it is produced; `on_text`
    /// returns `false` to stop. `cancel` is polled between tokens (another thread may set it). A request the
    /// provider cannot take (a prompt longer than the context, a field out of range) is
    /// [`ModuleError::Invalid`]; one it has no room for now is [`ModuleError::Busy`]. Many threads may call
    /// at once: a batching provider decodes their sequences together.
    fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError>;
    /// The assistant's next reply to `messages` (`req.prompt` is ignored).
    fn chat(
        &self,
        messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError>;
    /// The token ids [`TextGeneration::chat`] prompts the model with for `messages` (the server's
    /// `/tokenize` with `messages`); [`ModuleError::Invalid`] from a provider that has no token ids of its
    /// own (a cloud API).
    fn chat_prompt(&self, _messages: &[ChatMessage]) -> Result<Vec<u32>, ModuleError> {
        Err(ModuleError::Invalid(format!(
            "{} does not show the tokens it prompts with",
            self.describe()
        )))
    }
    /// The model's own Jinja chat template, when it has one (Ollama's `/api/show` shows it).
    fn chat_template(&self) -> Option<String> {
        None
    }
    /// Sequences running and waiting, and the KV cache in use.
    fn load(&self) -> EngineLoad {
        EngineLoad::default()
    }
}

/// Code from a request in words.
pub trait CodeGeneration: Send + Sync {
    fn describe(&self) -> String;
    /// Code for `request` in `language` (the provider's default when `None`), streamed like
    /// [`TextGeneration::generate`].
    fn generate_code(
        &self,
        request: &str,
        language: Option<&str>,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError>;
}

/// What [`Embeddings::embed`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embedded {
    /// One per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all the texts together, as the provider's tokenizer counts them (what an API reports as
    /// `usage.prompt_tokens`; a cloud provider reports its own count).
    pub tokens: usize,
}

/// Texts to vectors, for search and memory.
pub trait Embeddings: Send + Sync {
    fn describe(&self) -> String;
    /// Length of every vector.
    fn dimensions(&self) -> usize;
    /// One vector per text, in order, each L2-normalised, and the tokens read.
    fn embed(&self, texts: &[&str]) -> Result<Embedded, ModuleError>;
    /// A stable name of the model the vectors come from: vectors of different models are never compared
    /// (memory keeps an index per model). By default [`Embeddings::describe`].
    fn model(&self) -> String {
        self.describe()
    }
}

/// A stored conversation, as listed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConversationSummary {
    pub id: i64,
    pub title: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub messages: usize,
}

/// Conversations kept across sessions. Every call that returns has committed what it wrote.
pub trait ConversationStorage: Send + Sync {
    fn describe(&self) -> String;
    /// A new, empty conversation; its id.
    fn create(&self, title: &str) -> Result<i64, ModuleError>;
    /// Appends a message to a conversation; the message's id. An unknown conversation is
    /// [`ModuleError::Invalid`].
    fn append(&self, conversation: i64, message: &ChatMessage) -> Result<i64, ModuleError>;
    fn list(&self) -> Result<Vec<ConversationSummary>, ModuleError>;
    fn messages(&self, conversation: i64) -> Result<Vec<ChatMessage>, ModuleError>;
    fn delete(&self, conversation: i64) -> Result<(), ModuleError>;
    /// One conversation (`Some(id)`) or all, as the JSON export format.
    fn export(&self, conversation: Option<i64>) -> Result<serde_json::Value, ModuleError>;
    /// Adds the conversations of an export (JSON text) under new ids, all or none; their ids.
    fn import(&self, json: &str) -> Result<Vec<i64>, ModuleError>;
}

/// A passage of memory, as found by a search (or listed, with score 0).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Passage {
    pub id: i64,
    pub text: String,
    /// Where it came from (`note`, `conversation 3`, a file name...).
    pub source: String,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// Passages searched by meaning, through whichever module provides `embeddings`.
pub trait VectorSearch: Send + Sync {
    fn describe(&self) -> String;
    /// Embeds and stores `texts`, all or none; their ids.
    fn add(&self, texts: &[&str], source: &str) -> Result<Vec<i64>, ModuleError>;
    /// The `n` passages nearest `query`, best first.
    fn search(&self, query: &str, n: usize) -> Result<Vec<Passage>, ModuleError>;
    /// Every passage, oldest first.
    fn list(&self) -> Result<Vec<Passage>, ModuleError>;
    /// Deletes passages, all or none; an unknown id is [`ModuleError::Invalid`].
    fn forget(&self, ids: &[i64]) -> Result<(), ModuleError>;
}

/// The outcome of a training run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainingReport {
    /// The model the result was written as.
    pub output: String,
    pub steps: u64,
    pub final_loss: f64,
}

/// A prepared training (or fine-tuning) run.
pub trait Training: Send + Sync {
    fn describe(&self) -> String;
    /// Runs to the end (long: callers run it off the thread a person is looking at). One run at a time.
    fn run(&self) -> Result<TrainingReport, ModuleError>;
    fn is_running(&self) -> bool;
}

/// Audio as mono f32 samples in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

/// Text from speech: what [`SpeechRecognition::transcribe_wav`] returns.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Transcript {
    /// The whole text, segments joined.
    pub text: String,
    /// Stretches of speech with their times in seconds.
    pub segments: Vec<enigma_runtime::Segment>,
    /// Seconds of audio heard.
    pub duration: f64,
}

/// Text from speech.
pub trait SpeechRecognition: Send + Sync {
    fn describe(&self) -> String;
    /// Transcribes a WAV file's bytes (any rate and channel count; resampled to 16 kHz mono); `timestamps`
    /// splits the text into timed segments.
    fn transcribe_wav(&self, wav: &[u8], timestamps: bool) -> Result<Transcript, ModuleError>;
}

/// Speech from text.
pub trait TextToSpeech: Send + Sync {
    fn describe(&self) -> String;
    /// The voices `speak` accepts.
    fn voices(&self) -> Vec<String>;
    fn speak(&self, text: &str, voice: Option<&str>) -> Result<Audio, ModuleError>;
    /// At a speaking rate (1 the voice's own, 2 twice as fast); by default only the voice's own rate.
    fn speak_at(&self, text: &str, voice: Option<&str>, speed: f32) -> Result<Audio, ModuleError> {
        if speed != 1.0 {
            return Err(ModuleError::Invalid(format!(
                "{} speaks at its own rate only (speed {speed})",
                self.describe()
            )));
        }
        self.speak(text, voice)
    }
    /// With lip-sync timings as JSON (`phonemes`, `words`, `visemes`, `states`, in seconds from the audio's
    /// start); by default none (`null`), for engines that cannot tell when each sound is made.
    fn speak_timed(
        &self,
        text: &str,
        voice: Option<&str>,
    ) -> Result<(Audio, serde_json::Value), ModuleError> {
        Ok((self.speak(text, voice)?, serde_json::Value::Null))
    }
}

/// What an avatar is doing, for a GUI to animate: `idle`, `listening` or `talking`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AvatarState {
    Idle,
    Listening,
    Talking,
}

/// An avatar's mouth and state: speech with the mouth shapes over time, and the idle / listening / talking
/// stream a GUI animates from.
pub trait LipSync: Send + Sync {
    fn describe(&self) -> String;
    /// Speaks `text` through the `text_to_speech` provider: the audio and its timings (as
    /// [`TextToSpeech::speak_timed`]). The state is `talking` while the speech is made.
    fn speak(&self, text: &str) -> Result<(Audio, serde_json::Value), ModuleError>;
    fn state(&self) -> AvatarState;
    /// Voice input says when it listens; the state goes to `listening` and back to `idle`.
    fn set_listening(&self, on: bool);
    /// Every later change of state, as it happens.
    fn subscribe(&self) -> std::sync::mpsc::Receiver<AvatarState>;
}

/// Something a model may call (web search, a file read, ...): OpenAI's function-tool shape, so the server
/// can offer it to clients as it is.
pub trait Tool: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// The JSON Schema of the arguments object.
    fn parameters(&self) -> serde_json::Value;
    fn call(&self, arguments: &serde_json::Value) -> Result<serde_json::Value, ModuleError>;
}

/// An HTTP API this process serves (`api_server`'s listener), for whoever needs to know where it is.
pub trait RestApi: Send + Sync {
    /// Where it listens: the port the system chose when 0 was asked for.
    fn address(&self) -> std::net::SocketAddr;
    /// `false` once the listener has stopped (the module unloaded): a holder of this handle must not
    /// announce an address nobody answers on.
    fn is_running(&self) -> bool;
    /// The name clients call the served model by now (empty when nothing generates).
    fn served_model(&self) -> String;
}

/// How other machines reach this one.
pub trait RemoteAccess: Send + Sync {
    /// The base URL clients use (`http://ADDR`; a wildcard address is shown as it was bound).
    fn url(&self) -> String;
    /// Whether every route but `/health` needs the API key.
    fn requires_key(&self) -> bool;
    /// Whether the address is reachable from other machines (anything but loopback).
    fn beyond_loopback(&self) -> bool;
}

/// Another engine found on the local network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    /// Its advertised instance name (the host name by default).
    pub name: String,
    /// The base URL to reach it (`http://ADDR:PORT`).
    pub url: String,
    /// The model it said it serves (may be empty).
    pub model: String,
}

/// Several devices as one: this host announces its server, and keeps a live list of the others.
pub trait MultiDevice: Send + Sync {
    /// The peers seen lately (each answered within the last browse), this host's own announcement left out.
    fn peers(&self) -> Vec<Peer>;
    /// Announces a server of this process listening on `port` and serving `model` until the returned
    /// value is dropped. An error says why (no usable interface, discovery off).
    fn advertise(&self, port: u16, model: &str) -> Result<Box<dyn Send>, ModuleError>;
}

/// Text generated on another engine (a configured URL, or the first peer discovered), streamed. Not
/// [`TextGeneration`]: SPEC.md's `network` does not provide `text_generation`, so a remote engine never
/// silently takes the place of the local one; callers ask for it by name.
pub trait RemoteInference: Send + Sync {
    /// Which engine it would use now, resolving `auto` to a discovered peer; an error when none is reachable.
    fn peer(&self) -> Result<String, ModuleError>;
    /// As [`TextGeneration::generate`], on the peer. A peer that cannot be reached, or goes away mid-stream,
    /// is [`ModuleError::Failed`] naming it.
    fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError>;
    /// As [`TextGeneration::chat`], on the peer.
    fn chat(
        &self,
        messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError>;
}

macro_rules! families {
    ($($family:ident),* $(,)?) => {
        /// A typed handle to what a loaded module provides: one variant per capability family.
        #[derive(Clone)]
        pub enum Handle {
            $($family(Arc<dyn $family>),)*
        }

        impl Handle {
            /// The family's trait name, for messages.
            pub fn family(&self) -> &'static str {
                match self {
                    $(Handle::$family(_) => stringify!($family),)*
                }
            }
        }

        $(
            impl Capability for dyn $family {
                const FAMILY: &'static str = stringify!($family);
                fn from_handle(h: &Handle) -> Option<Arc<Self>> {
                    match h {
                        Handle::$family(x) => Some(x.clone()),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }

            impl From<Arc<dyn $family>> for Handle {
                fn from(x: Arc<dyn $family>) -> Handle {
                    Handle::$family(x)
                }
            }
        )*
    };
}

/// A capability family's trait object type (`dyn TextGeneration`, ...), so callers name the type they want
/// and get it without matching on [`Handle`].
pub trait Capability {
    const FAMILY: &'static str;
    fn from_handle(h: &Handle) -> Option<Arc<Self>>;
}

families!(
    LanguageModel,
    Tokenization,
    TextGeneration,
    CodeGeneration,
    Embeddings,
    ConversationStorage,
    VectorSearch,
    Training,
    SpeechRecognition,
    TextToSpeech,
    LipSync,
    Tool,
    RestApi,
    RemoteAccess,
    MultiDevice,
    RemoteInference,
);

/// What a module hands the manager when it loads: a handle per capability it serves. A capability of the
/// spec left out is still held by the module for the rules, but nobody can call it.
#[derive(Clone, Default)]
pub struct Provided {
    pub(crate) handles: Vec<(&'static str, Handle)>,
}

impl Provided {
    pub fn new() -> Self {
        Provided::default()
    }

    /// Serves `capability` with `handle`.
    pub fn with(mut self, capability: &'static str, handle: impl Into<Handle>) -> Self {
        self.handles.push((capability, handle.into()));
        self
    }

    /// Serves each of `capabilities` with the same handle.
    pub fn with_all(mut self, capabilities: &[&'static str], handle: impl Into<Handle>) -> Self {
        let handle = handle.into();
        for c in capabilities {
            self.handles.push((c, handle.clone()));
        }
        self
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handles.iter().map(|(c, _)| *c)
    }
}
