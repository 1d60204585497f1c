//! Heap buffers for a core [`Session`]: the KV cache, scratch and sampler candidates of one conversation.

use crate::Result;
use enigma_core::generate::Session;
use enigma_core::{KvCache, ProbIndex, Scratch, Transformer};

/// Prompt tokens processed per matrix product during prefill.
pub const DEFAULT_CHUNK: usize = 64;

/// Owns the buffers a [`Session`] borrows; make one per conversation and keep it for the conversation's life.
pub struct HostSession {
    kv: Vec<f32>,
    scratch: Vec<f32>,
    probs: Vec<ProbIndex>,
    chunk: usize,
}

impl HostSession {
    pub fn new(model: &Transformer<'_>, chunk: usize) -> Self {
        let c = &model.config;
        let chunk = chunk.clamp(1, c.seq_len as usize);
        HostSession {
            kv: vec![0.0; KvCache::len(c)],
            scratch: vec![0.0; Scratch::len(c, chunk)],
            probs: vec![ProbIndex::default(); c.vocab_size as usize],
            chunk,
        }
    }

    pub fn session<'m, 'b>(&'b mut self, model: Transformer<'m>) -> Result<Session<'m, 'b>> {
        Ok(Session::new(
            model,
            &mut self.kv,
            &mut self.scratch,
            self.chunk,
            &mut self.probs,
        )?)
    }
}
