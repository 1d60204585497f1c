//! The token loop shared by `enigma run`/`chat`, the server and the firmware: feed a prompt, sample, emit
//! each token's bytes as it comes, keep the KV cache between turns.

use crate::model::{Exec, KvBuf, KvCache, Scratch, Transformer};
use crate::sampler::{ProbIndex, Sampler};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The model produced EOS (or BOS, which starts a new document).
    EndOfText,
    /// `max_new` tokens were generated.
    Length,
    /// The context window is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Callback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated: usize,
    pub stop: Stop,
}

/// One conversation with a model: its KV cache, scratch and position, in caller-owned buffers.
pub struct Session<'m, 'b> {
    model: Transformer<'m>,
    cache: KvCache<'b>,
    scratch: Scratch<'b>,
    probs: &'b mut [ProbIndex],
    pos: usize,
    /// The last token that was sampled but not yet run through the model; it leads the next feed.
    pending: Option<u32>,
    /// The last token of the context (fed or pending), for decoding the next one.
    last: Option<u32>,
}

impl<'m, 'b> Session<'m, 'b> {
    /// `kv` (f32 or f16, see [`KvBuf`]) needs [`KvCache::len`] elements, `scratch` [`Scratch::len`] for
    /// `chunk`, `probs` the vocabulary size (or nothing, when top-k and top-p stay off).
    pub fn new(
        model: Transformer<'m>,
        kv: impl Into<KvBuf<'b>>,
        scratch: &'b mut [f32],
        chunk: usize,
        probs: &'b mut [ProbIndex],
    ) -> Result<Self> {
        let cache = KvCache::new(kv, &model.config)?;
        let scratch = Scratch::new(scratch, &model.config, chunk)?;
        Ok(Session {
            model,
            cache,
            scratch,
            probs,
            pos: 0,
            pending: None,
            last: None,
        })
    }

    pub fn model(&self) -> &Transformer<'m> {
        &self.model
    }

    /// Tokens in the context so far (fed to the model).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Tokens that still fit in the context.
    pub fn remaining(&self) -> usize {
        self.model.config.seq_len as usize - self.pos - self.pending.is_some() as usize
    }

    /// Forgets the conversation; the buffers are reused.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.pending = None;
        self.last = None;
    }

    /// Keeps the first `keep` tokens of the context (no more than were fed) and forgets the rest, a pending
    /// token included; `last` is the token at `keep - 1`, which the next token's text depends on. The cache
    /// of the kept tokens stays valid, so a conversation that changed after them is fed from there.
    pub fn truncate(&mut self, keep: usize, last: Option<u32>) {
        self.pos = keep.min(self.pos);
        self.pending = None;
        self.last = last;
    }

    /// Runs `tokens` (after any pending token) through the model; the logits of the last one are then ready.
    pub fn feed(&mut self, exec: &dyn Exec, tokens: &[u32]) -> Result<()> {
        let max = self.model.config.seq_len as usize;
        let n = tokens.len() + self.pending.is_some() as usize;
        if self.pos + n > max {
            return Err(Error::PromptTooLong {
                tokens: n,
                max: max - self.pos,
            });
        }
        if let Some(p) = self.pending.take() {
            self.model
                .forward(exec, &mut self.cache, &mut self.scratch, &[p], self.pos)?;
            self.pos += 1;
        }
        self.model
            .forward(exec, &mut self.cache, &mut self.scratch, tokens, self.pos)?;
        self.pos += tokens.len();
        if let Some(&t) = tokens.last() {
            self.last = Some(t);
        }
        Ok(())
    }

    /// Logits of the last fed token `(V)`.
    pub fn logits(&self) -> &[f32] {
        self.scratch.logits()
    }

    /// Feeds `prompt`, then samples up to `max_new` tokens, calling `on_token(id, bytes)` for each as it is
    /// produced (and first for each prompt token after a leading BOS, when `echo_prompt`). `on_token`
    /// returns `false` to stop. The context is kept, so a later call continues the conversation.
    // The eight arguments are the loop's whole contract (model state, tokenizer, sampler, input, limits,
    // output); bundling them would only move the list into a struct every caller fills in.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        exec: &dyn Exec,
        tokenizer: &Tokenizer<'_>,
        sampler: &mut Sampler,
        prompt: &[u32],
        max_new: usize,
        echo_prompt: bool,
        on_token: &mut dyn FnMut(u32, &[u8]) -> bool,
    ) -> Result<Stats> {
        if prompt.is_empty() && self.pending.is_none() && self.pos == 0 {
            return Err(Error::EmptyPrompt);
        }
        let mut prev = self.last;
        self.feed(exec, prompt)?;
        for &t in prompt {
            sampler.observe(t);
            if echo_prompt && prev.is_some() {
                let _ = on_token(t, tokenizer.decode(prev.unwrap_or(t), t));
            }
            prev = Some(t);
        }
        let mut stats = Stats {
            prompt_tokens: prompt.len(),
            generated: 0,
            stop: Stop::Length,
        };
        while stats.generated < max_new {
            let logits = self.scratch.logits_mut();
            let next = sampler.sample(logits, self.probs)?;
            self.pending = Some(next);
            self.last = Some(next);
            if next == tokenizer.eos() || next == tokenizer.bos() {
                stats.stop = Stop::EndOfText;
                return Ok(stats);
            }
            stats.generated += 1;
            sampler.observe(next);
            let piece = tokenizer.decode(prev.unwrap_or(tokenizer.bos()), next);
            prev = Some(next);
            if !on_token(next, piece) {
                stats.stop = Stop::Callback;
                return Ok(stats);
            }
            if stats.generated == max_new {
                break;
            }
            if self.pos >= self.model.config.seq_len as usize {
                stats.stop = Stop::ContextFull;
                return Ok(stats);
            }
            self.feed(exec, &[])?;
        }
        Ok(stats)
    }
}
