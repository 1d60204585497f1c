//! Heap buffers for a core [`Session`]: the KV cache, scratch and sampler candidates of one conversation.

use crate::hardware::{ensure_available, try_zeroed};
use crate::Result;
use enigma_core::generate::Session;
use enigma_core::kernels::f16;
use enigma_core::{Config, KvBuf, KvCache, KvType, ProbIndex, Scratch, Transformer};

/// Prompt tokens processed per matrix product during prefill.
pub const DEFAULT_CHUNK: usize = 64;

/// Owns the buffers a [`Session`] borrows; make one per conversation and keep it for the conversation's life.
pub struct HostSession {
    kv: KvStore,
    scratch: Vec<f32>,
    probs: Vec<ProbIndex>,
    chunk: usize,
}

/// The KV cache's storage, in the element type it was made for.
enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl HostSession {
    /// Buffers with an f32 KV cache.
    pub fn new(model: &Transformer<'_>, chunk: usize) -> Self {
        Self::with_kv(model, chunk, KvType::F32)
    }

    /// Buffers with a KV cache of `kv` elements.
    pub fn with_kv(model: &Transformer<'_>, chunk: usize, kv: KvType) -> Self {
        let (chunk, kv_len, scratch, probs) = Self::lens(model, chunk);
        HostSession {
            kv: match kv {
                KvType::F32 => KvStore::F32(vec![0.0; kv_len]),
                KvType::F16 => KvStore::F16(vec![f16::ZERO; kv_len]),
            },
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

    /// [`HostSession::try_with_kv`] with an f32 KV cache.
    pub fn try_new(model: &Transformer<'_>, chunk: usize) -> Result<Self> {
        Self::try_with_kv(model, chunk, KvType::F32)
    }

    /// [`HostSession::with_kv`] for a context that comes from a file or a flag: the buffers are checked
    /// against the memory available (the KV cache at `kv`'s element size) and allocated fallibly, so a
    /// header asking for a huge context gets an error that says so. Size the context first
    /// ([`Transformer::with_context`]) to what the work needs.
    pub fn try_with_kv(model: &Transformer<'_>, chunk: usize, kv: KvType) -> Result<Self> {
        let (chunk, kv_len, scratch, probs) = Self::lens(model, chunk);
        let bytes = kv_len as u64 * kv.bytes()
            + scratch as u64 * 4
            + probs as u64 * size_of::<ProbIndex>() as u64;
        let what = format!(
            "a context of {} tokens (KV cache and scratch)",
            model.config.seq_len
        );
        ensure_available(bytes, &what)?;
        Ok(HostSession {
            kv: match kv {
                KvType::F32 => KvStore::F32(try_zeroed(kv_len, "the KV cache")?),
                KvType::F16 => KvStore::F16(try_zeroed(kv_len, "the KV cache")?),
            },
            scratch: try_zeroed(scratch, "the scratch buffers")?,
            probs: try_zeroed(probs, "the sampler's candidates")?,
            chunk,
        })
    }

    /// The element type of the KV cache.
    pub fn kv_type(&self) -> KvType {
        match self.kv {
            KvStore::F32(_) => KvType::F32,
            KvStore::F16(_) => KvType::F16,
        }
    }

    pub fn session<'m, 'b>(&'b mut self, model: Transformer<'m>) -> Result<Session<'m, 'b>> {
        Ok(Session::new(
            model,
            self.kv.buf(),
            &mut self.scratch,
            self.chunk,
            &mut self.probs,
        )?)
    }

    /// The KV cache and scratch alone, for a caller that runs [`Transformer::forward_each`] itself (scoring
    /// a text); `config` is the model's, as the buffers were sized for.
    pub fn parts(&mut self, config: &Config) -> Result<(KvCache<'_>, Scratch<'_>)> {
        Ok((
            KvCache::new(self.kv.buf(), config)?,
            Scratch::new(&mut self.scratch, config, self.chunk)?,
        ))
    }
}

impl KvStore {
    fn buf(&mut self) -> KvBuf<'_> {
        match self {
            KvStore::F32(b) => KvBuf::F32(b),
            KvStore::F16(b) => KvBuf::F16(b),
        }
    }
}
