//! `inference`: streaming text generation and chat over the loaded model and tokenizer.
//!
//! Requests go to one batched engine ([`Batcher`]) per loaded module: each caller's thread submits its
//! prompt and blocks on its own stream, turning token ids into UTF-8 and holding back stop strings, while the
//! engine's scheduler decodes every caller's sequence in the same steps.

use crate::capability::{
    ChatMessage, EngineLoad, FinishReason, GenerateRequest, GenerationStats, LanguageModel, Piece,
    Provided, TextGeneration, TokenLogprob, Tokenization, TopLogprob,
};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{ModuleConfig, ModuleSpec};
use enigma_chat::{ChatError, ChatFormat};
use enigma_core::{KvType, SamplerConfig, Tokenizer, Utf8Stream};
use enigma_runtime::batch::{self, BatchConfig, BatchError, Batcher, Event, ModelHost};
use enigma_runtime::{Backend, ModelFile};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a caller waiting for its next token looks at its cancel flag.
const POLL: Duration = Duration::from_millis(20);

/// Text generation over a language model and a tokenizer, whoever provides them.
pub struct Inference {
    model: Arc<dyn LanguageModel>,
    tokenizer: Arc<dyn Tokenization>,
    engine: Batcher,
    /// How a conversation becomes the prompt, and which tokens end a reply.
    chat: ChatFormat,
    pub sampling: SamplerConfig,
    pub max_tokens: usize,
}

/// The language model module's handle as the engine's owner of the weights.
struct Host(Arc<dyn LanguageModel>);

impl ModelHost for Host {
    fn file(&self) -> &ModelFile {
        self.0.file()
    }
    fn backend(&self) -> &Backend {
        self.0.backend()
    }
}

/// Passes text on to the caller, holding back what might be the start of a stop string; the log-probabilities
/// of the tokens whose text is not out yet wait with it.
struct Emitter<'a> {
    stop: &'a [String],
    held: String,
    logprobs: Vec<TokenLogprob>,
    hit_stop: bool,
    refused: bool,
    on_text: &'a mut dyn FnMut(&Piece<'_>) -> bool,
}

impl<'a> Emitter<'a> {
    fn new(stop: &'a [String], on_text: &'a mut dyn FnMut(&Piece<'_>) -> bool) -> Self {
        Emitter {
            stop,
            held: String::new(),
            logprobs: Vec::new(),
            hit_stop: false,
            refused: false,
            on_text,
        }
    }

    fn say(&mut self, s: &str) -> bool {
        if !s.is_empty() {
            let piece = Piece {
                text: s,
                logprobs: &self.logprobs,
            };
            if !(self.on_text)(&piece) {
                self.refused = true;
            }
            self.logprobs.clear();
        }
        !self.refused
    }

    /// Takes `s`; `false` when generation should stop.
    fn push(&mut self, s: &str) -> bool {
        self.held.push_str(s);
        let first_stop = self
            .stop
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| self.held.find(x.as_str()))
            .min();
        if let Some(at) = first_stop {
            let before = self.held[..at].to_string();
            self.hit_stop = true;
            self.say(&before);
            return false;
        }
        // The longest end of `held` that begins some stop string waits for the next piece.
        let keep = self
            .stop
            .iter()
            .flat_map(|x| {
                (1..x.len())
                    .filter(|&k| x.is_char_boundary(k))
                    .map(move |k| &x[..k])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out: String = self.held.drain(..cut).collect();
        self.say(&out)
    }

    fn finish(&mut self) {
        if !self.hit_stop && !self.refused {
            let rest = std::mem::take(&mut self.held);
            self.say(&rest);
            // Tokens that made no text of their own (an unfinished character at the end) still report.
            if !self.logprobs.is_empty() {
                let piece = Piece {
                    text: "",
                    logprobs: &self.logprobs,
                };
                (self.on_text)(&piece);
            }
        }
    }
}

impl Inference {
    fn tokenizer_file(&self) -> Result<enigma_core::EnigmaFile<'_>, ModuleError> {
        self.tokenizer.file().parse().map_err(ModuleError::failed)
    }

    /// The sampler for `req`: the module's settings with the request's overrides; seed 0 is the clock.
    fn sampler(&self, req: &GenerateRequest) -> SamplerConfig {
        let mut cfg = self.sampling;
        let s = &req.sampling;
        cfg.temperature = s.temperature.unwrap_or(cfg.temperature);
        cfg.top_p = s.top_p.unwrap_or(cfg.top_p);
        cfg.top_k = s.top_k.unwrap_or(cfg.top_k);
        cfg.repetition_penalty = s.repeat_penalty.unwrap_or(cfg.repetition_penalty);
        cfg.seed = s.seed.unwrap_or(cfg.seed);
        if cfg.seed == 0 {
            cfg.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        }
        cfg
    }

    /// Generates after `ids` on the engine, streaming valid UTF-8 to `on_text` from this thread.
    fn continue_ids(
        &self,
        ids: Vec<u32>,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let start = Instant::now();
        let parsed = self.tokenizer_file()?;
        let tok = Tokenizer::from_file(&parsed).map_err(ModuleError::failed)?;
        if let Some(n) = req.logprobs.filter(|&n| n > batch::MAX_TOP_LOGPROBS) {
            return Err(ModuleError::Invalid(format!(
                "logprobs asks for {n} alternatives; at most {} are given",
                batch::MAX_TOP_LOGPROBS
            )));
        }
        let mut stats = GenerationStats {
            prompt_tokens: ids.len(),
            cached_tokens: 0,
            generated_tokens: 0,
            finish: FinishReason::Length,
            first_token_secs: 0.0,
            total_secs: 0.0,
        };
        if cancel.load(Ordering::Relaxed) {
            stats.finish = FinishReason::Cancelled;
            return Ok(stats);
        }
        let params = batch::Params {
            max_tokens: req.max_tokens.unwrap_or(self.max_tokens),
            sampler: self.sampler(req),
            logprobs: req.logprobs,
            stop_on_eos: true,
        };
        let mut prev = ids.last().copied().unwrap_or(tok.bos());
        let stream = self.engine.submit(ids, params).map_err(|e| match e {
            BatchError::Invalid(s) => ModuleError::Invalid(s),
            BatchError::Busy(s) => ModuleError::Busy(s),
            BatchError::Stopped(s) => ModuleError::Failed(s),
        })?;
        let mut utf8 = Utf8Stream::new();
        let mut emitter = Emitter::new(&req.stop, on_text);
        let mut first: Option<f64> = None;
        let mut finish = None;
        while finish.is_none() {
            if cancel.load(Ordering::Relaxed) {
                finish = Some(FinishReason::Cancelled);
                break;
            }
            let event = stream.recv_timeout(POLL).map_err(ModuleError::failed)?;
            match event {
                None => {}
                // A template's end of turn (`<|im_end|>`) ends the reply as EOS does, unseen.
                Some(Event::Token { id, .. }) if self.chat.ends_reply(id) => {
                    finish = Some(FinishReason::EndOfText);
                }
                Some(Event::Token { id, logprobs }) => {
                    first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                    stats.generated_tokens += 1;
                    if let Some(lp) = logprobs {
                        let entry = |t: u32, logprob: f32| TopLogprob {
                            token: t,
                            bytes: tok.decode(prev, t).to_vec(),
                            logprob,
                        };
                        emitter.logprobs.push(TokenLogprob {
                            chosen: entry(id, lp.chosen),
                            top: lp.top.iter().map(|&(t, l)| entry(t, l)).collect(),
                        });
                    }
                    let piece = tok.decode(prev, id);
                    prev = id;
                    if !utf8.push(piece, &mut |s| emitter.push(s)) {
                        finish = Some(if emitter.hit_stop {
                            FinishReason::Stop
                        } else {
                            FinishReason::Cancelled
                        });
                    }
                }
                Some(Event::Done(sum)) => {
                    stats.cached_tokens = sum.cached_tokens;
                    finish = Some(match sum.finish {
                        batch::Finish::EndOfText => FinishReason::EndOfText,
                        batch::Finish::Length => FinishReason::Length,
                        batch::Finish::Cancelled => FinishReason::Cancelled,
                    });
                }
                Some(Event::Failed(e)) => return Err(ModuleError::Failed(e)),
            }
        }
        // Dropping the stream ends the sequence if it is still running (a stop string, a cancel).
        drop(stream);
        if matches!(finish, Some(FinishReason::EndOfText | FinishReason::Length)) {
            utf8.finish(&mut |s| emitter.push(s));
            emitter.finish();
        }
        if emitter.hit_stop {
            finish = Some(FinishReason::Stop);
        }
        stats.finish = finish.unwrap_or(FinishReason::Cancelled);
        stats.first_token_secs = first.unwrap_or_else(|| start.elapsed().as_secs_f64());
        stats.total_secs = start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The token ids the model is given for `messages`: enigma-chat's layout for this model (its own
    /// template, its markers, or plain lines), the same as `enigma chat` gives it.
    fn chat_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModuleError> {
        let parsed = self.tokenizer_file()?;
        let tok = Tokenizer::from_file(&parsed).map_err(ModuleError::failed)?;
        self.chat
            .prompt(&tok, messages, self.context_length())
            .map_err(|e| match e {
                // A broken template is the model's fault; a refused or too long conversation the caller's.
                ChatError::Template(_) => ModuleError::Failed(e.to_string()),
                ChatError::Refused(_) | ChatError::Tokens(_) => ModuleError::Invalid(e.to_string()),
            })
    }
}

impl TextGeneration for Inference {
    fn describe(&self) -> String {
        format!(
            "{} (local, {})",
            self.model.name(),
            self.model.backend().describe()
        )
    }

    fn context_length(&self) -> usize {
        self.engine.context()
    }

    fn trained_for_chat(&self) -> bool {
        self.chat.is_chat()
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModuleError> {
        self.chat_ids(messages)
    }

    fn chat_template(&self) -> Option<String> {
        self.chat.template().map(str::to_string)
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let ids = self
            .tokenizer
            .encode(&req.prompt, true, self.context_length())?;
        self.continue_ids(ids, req, cancel, on_text)
    }

    fn chat(
        &self,
        messages: &[ChatMessage],
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let ids = self.chat_ids(messages)?;
        self.continue_ids(ids, req, cancel, on_text)
    }

    fn load(&self) -> EngineLoad {
        let l = self.engine.load();
        EngineLoad {
            active: l.active,
            queued: l.queued,
            kv_blocks_used: l.blocks_used + l.blocks_cached,
            kv_blocks_total: l.blocks_total,
        }
    }
}

pub(super) struct InferenceModule {
    spec: &'static ModuleSpec,
    loaded: Option<Arc<Inference>>,
}

impl InferenceModule {
    pub(super) fn new(spec: &'static ModuleSpec) -> Self {
        InferenceModule { spec, loaded: None }
    }
}

impl Module for InferenceModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let model = deps.get::<dyn LanguageModel>("language_model")?;
        let tokenizer = deps.get::<dyn Tokenization>("tokenization")?;
        let mv = model
            .file()
            .parse()
            .map_err(ModuleError::failed)?
            .config()
            .vocab_size as usize;
        let tv = tokenizer.vocab_size();
        if mv != tv {
            return Err(ModuleError::Failed(format!(
                "the tokenizer (from {}, {tv} tokens) does not fit the model ({}, {mv} tokens)",
                tokenizer.source(),
                model.name()
            )));
        }
        let sampling = SamplerConfig {
            temperature: super::float(config, "temperature", 0.8) as f32,
            top_k: super::int(config, "top_k", 40) as u32,
            top_p: super::float(config, "top_p", 0.9) as f32,
            repetition_penalty: super::float(config, "repeat_penalty", 1.0) as f32,
            repeat_last_n: 64,
            seed: super::int(config, "seed", 0) as u64,
        };
        let engine = BatchConfig {
            kv_tokens: super::int(config, "kv_tokens", 0).max(0) as usize,
            max_sequences: super::int(config, "max_sequences", 16).max(1) as usize,
            prefill_tokens: super::int(config, "prefill_tokens", 64).max(1) as usize,
            kv: match super::text(config, "kv_cache").as_str() {
                "f16" => KvType::F16,
                _ => KvType::F32,
            },
            ..BatchConfig::default()
        };
        let chat = {
            let parsed = tokenizer.file().parse().map_err(ModuleError::failed)?;
            let tok = Tokenizer::from_file(&parsed).map_err(ModuleError::failed)?;
            ChatFormat::of(&parsed, &tok).map_err(ModuleError::failed)?
        };
        let engine =
            Batcher::new(Arc::new(Host(model.clone())), engine).map_err(ModuleError::failed)?;
        let inference = Arc::new(Inference {
            model,
            tokenizer,
            engine,
            chat,
            sampling,
            max_tokens: super::int(config, "max_tokens", 256) as usize,
        });
        self.loaded = Some(inference.clone());
        Ok(Provided::new().with_all(
            &["text_generation", "streaming", "chat"],
            inference as Arc<dyn TextGeneration>,
        ))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        self.loaded.as_ref().map_or("not loaded".into(), |i| {
            format!(
                "generating with {} (temperature {}, top-p {}, up to {} tokens)",
                i.model.name(),
                i.sampling.temperature,
                i.sampling.top_p,
                i.max_tokens
            )
        })
    }

    fn health(&self) -> Health {
        let Some(i) = &self.loaded else {
            return Health::NotLoaded;
        };
        let req = GenerateRequest {
            max_tokens: Some(1),
            sampling: crate::capability::Sampling {
                temperature: Some(0.0),
                ..Default::default()
            },
            ..Default::default()
        };
        match i.generate(&req, &AtomicBool::new(false), &mut |_| true) {
            Ok(_) => Health::Ok("generated one token".into()),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Emitter;
    use crate::capability::Piece;

    fn emit(stop: &[&str], pieces: &[&str]) -> (String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut out = String::new();
        let mut on_text = |p: &Piece<'_>| {
            out.push_str(p.text);
            true
        };
        let mut e = Emitter::new(&stop, &mut on_text);
        for p in pieces {
            if !e.push(p) {
                break;
            }
        }
        e.finish();
        let hit = e.hit_stop;
        (out, hit)
    }

    #[test]
    fn a_stop_string_split_over_pieces_ends_the_text_before_it() {
        assert_eq!(
            emit(&["\nUser:"], &["Hi", " there\nU", "ser: more"]),
            ("Hi there".to_string(), true)
        );
        // A held prefix that turns out not to be the stop string comes out in full.
        assert_eq!(
            emit(&["\nUser:"], &["a\nU", "nder"]),
            ("a\nUnder".to_string(), false)
        );
        assert_eq!(emit(&[], &["é", "ü"]), ("éü".to_string(), false));
    }
}
