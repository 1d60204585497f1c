//! Heap buffers for a core [`Session`]: the KV cache, scratch and sampler candidates of one conversation.

use crate::hardware::{ensure_available, try_zeroed};
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
        let (chunk, kv, scratch, probs) = Self::lens(model, chunk);
        HostSession {
            kv: vec![0.0; kv],
            scratch: vec![0.0; scratch],
            probs: vec![ProbIndex::default(); probs],
            chunk,
        }
    }

    /// The chunk, and the elements of the KV cache, the scratch and the sampler's candidates.
    fn lens(model: &Transformer<'_>, chunk: usize) -> (usize, usize, usize, usize) {
        let c = &model.config;
        let chunk = chunk.clamp(1, c.seq_len as usize);
        (
            chunk,
            KvCache::len(c),
            Scratch::len(c, chunk),
            c.vocab_size as usize,
        )
    }

    /// [`HostSession::new`] for a context that comes from a file or a flag: the buffers are checked against
    /// the memory available and allocated fallibly, so a header asking for a huge context gets an error
    /// that says so. Size the context first ([`Transformer::with_context`]) to what the work needs.
    pub fn try_new(model: &Transformer<'_>, chunk: usize) -> Result<Self> {
        let (chunk, kv, scratch, probs) = Self::lens(model, chunk);
        let bytes = (kv as u64 + scratch as u64) * 4 + probs as u64 * size_of::<ProbIndex>() as u64;
        let what = format!(
            "a context of {} tokens (KV cache and scratch)",
            model.config.seq_len
        );
        ensure_available(bytes, &what)?;
        Ok(HostSession {
            kv: try_zeroed(kv, "the KV cache")?,
            scratch: try_zeroed(scratch, "the scratch buffers")?,
            probs: try_zeroed(probs, "the sampler's candidates")?,
            chunk,
        })
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
