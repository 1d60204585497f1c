//! The Llama-family forward pass over caller-owned buffers: no heap, so it runs from flash on an MCU.
//!
//! Per layer: RMSNorm → q, k, v → RoPE → KV cache write → grouped-query attention → wo → residual;
//! RMSNorm → w1, w3 → SwiGLU → w2 → residual. Then the final norm and the classifier.
//! A call processes a chunk of `T` tokens as matrix products (prefill); decode is the chunk of one.

use crate::config::{self, Config, KvType, ParamLayout};
use crate::format::EnigmaFile;
use crate::{Error, Result};
use core::ops::Range;
use enigma_kernels::{f16, generic, quantize_f16, Kernels, WeightView};

/// How the forward pass spreads independent work (matrix rows, attention heads, tokens) over threads.
///
/// A trait object so that no generic reaches model code: the firmware and single-threaded hosts pass
/// [`Serial`], the std runtime passes its thread pool.
pub trait Exec: Sync {
    /// Calls `f(first_unit, part)` for parts of `data` that are whole numbers of `unit` elements and
    /// together cover it once; `first_unit` is the index of the part's first unit. Parts may run concurrently.
    fn split(&self, data: &mut [f32], unit: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync));
}

/// Receives `(index in the chunk's tokens, logits (V))` for each token scored.
type LogitsSink<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// Everything on the calling thread.
pub struct Serial;

impl Exec for Serial {
    fn split(&self, data: &mut [f32], _unit: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        f(0, data)
    }
}

/// The model's parameters, viewed in place (an mmap, flash, or a trainer's flat buffer).
/// Per-layer matrices are stacked along rows: layer `l` of `wq` is rows `[l * NH*HS, (l+1) * NH*HS)`.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// (V, D)
    pub token_embedding: WeightView<'a>,
    /// (L, D)
    pub attn_norm: &'a [f32],
    /// (L * NH*HS, D)
    pub wq: WeightView<'a>,
    /// (L * NKV*HS, D)
    pub wk: WeightView<'a>,
    /// (L * NKV*HS, D)
    pub wv: WeightView<'a>,
    /// (L * D, NH*HS)
    pub wo: WeightView<'a>,
    /// (L, D)
    pub ffn_norm: &'a [f32],
    /// (L * H, D)
    pub w1: WeightView<'a>,
    /// (L * D, H)
    pub w2: WeightView<'a>,
    /// (L * H, D)
    pub w3: WeightView<'a>,
    /// (D)
    pub final_norm: &'a [f32],
    /// (V, D); the embedding when the classifier is tied.
    pub classifier: WeightView<'a>,
}

impl<'a> Weights<'a> {
    /// Views every parameter of `file`, checking each tensor's presence, shape and dtype against the config.
    pub fn from_file(file: &EnigmaFile<'a>) -> Result<Self> {
        let c = file.config();
        let layout = ParamLayout::new(c);
        let spec = |n: &'static str| layout.get(n).ok_or(Error::MissingTensor { name: n });
        Self::assemble(
            c,
            |n| file.weight(spec(n)?),
            |n| {
                let s = spec(n)?;
                file.f32s(n, &s.shape[..s.ndim()])
            },
        )
    }

    /// Views a flat f32 buffer laid out by [`ParamLayout`] (the trainer's parameters).
    pub fn from_flat(c: &Config, params: &'a [f32]) -> Result<Self> {
        let layout = ParamLayout::new(c);
        let total = layout.total_numel() as usize;
        if params.len() != total {
            return Err(Error::BufferTooSmall {
                what: "parameter",
                needed: total,
                found: params.len(),
            });
        }
        let slice = |n: &'static str| {
            let s = layout.get(n).ok_or(Error::MissingTensor { name: n })?;
            let off = layout.flat_offset(n).unwrap_or(0) as usize;
            Ok::<_, Error>((&params[off..off + s.numel() as usize], s.row_len() as usize))
        };
        Self::assemble(
            c,
            |n| slice(n).map(|(p, cols)| WeightView::f32(p, cols)),
            |n| slice(n).map(|(p, _)| p),
        )
    }

    /// The one place the struct is filled: `matrix` and `norm` fetch a parameter by its layout name.
    fn assemble(
        c: &Config,
        matrix: impl Fn(&'static str) -> Result<WeightView<'a>>,
        norm: impl Fn(&'static str) -> Result<&'a [f32]>,
    ) -> Result<Self> {
        let token_embedding = matrix(config::TOKEN_EMBEDDING)?;
        Ok(Weights {
            token_embedding,
            attn_norm: norm(config::ATTN_NORM)?,
            wq: matrix(config::WQ)?,
            wk: matrix(config::WK)?,
            wv: matrix(config::WV)?,
            wo: matrix(config::WO)?,
            ffn_norm: norm(config::FFN_NORM)?,
            w1: matrix(config::W1)?,
            w2: matrix(config::W2)?,
            w3: matrix(config::W3)?,
            final_norm: norm(config::FINAL_NORM)?,
            classifier: if c.tied_classifier {
                token_embedding
            } else {
                matrix(config::CLASSIFIER)?
            },
        })
    }
}

/// Caller-owned storage for a KV cache, in the element type the cache keeps: f32, or f16 at half the memory
/// and half the bytes attention reads per token (products and sums stay f32; see docs/DESIGN.md).
pub enum KvBuf<'c> {
    F32(&'c mut [f32]),
    F16(&'c mut [f16]),
}

impl<'c> From<&'c mut [f32]> for KvBuf<'c> {
    fn from(buf: &'c mut [f32]) -> Self {
        KvBuf::F32(buf)
    }
}

impl<'c> From<&'c mut [f16]> for KvBuf<'c> {
    fn from(buf: &'c mut [f16]) -> Self {
        KvBuf::F16(buf)
    }
}

/// Keys and values of one sequence, each `(L, NKV, S, HS)`: a head's history is contiguous, so attention
/// streams it.
pub struct KvCache<'c> {
    kv: Kv<'c>,
}

/// Keys and values in one element type: an enum matched where attention writes and reads, so no generic
/// reaches the forward pass.
enum Kv<'c> {
    F32 { k: &'c mut [f32], v: &'c mut [f32] },
    F16 { k: &'c mut [f16], v: &'c mut [f16] },
}

/// The cache as attention reads it; shared by the heads that run in parallel.
#[derive(Clone, Copy)]
enum KvView<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    F16 { k: &'a [f16], v: &'a [f16] },
}

impl<'c> KvCache<'c> {
    /// Elements the cache needs for `config` (keys and values together), whatever their type.
    pub fn len(config: &Config) -> usize {
        config.kv_cache_len()
    }

    /// Carves the cache out of `buf` (`&mut [f32]`, `&mut [f16]` or a [`KvBuf`]), which needs
    /// [`KvCache::len`] elements.
    pub fn new(buf: impl Into<KvBuf<'c>>, config: &Config) -> Result<Self> {
        let need = Self::len(config);
        let buf = buf.into();
        let found = match &buf {
            KvBuf::F32(b) => b.len(),
            KvBuf::F16(b) => b.len(),
        };
        if found < need {
            return Err(Error::BufferTooSmall {
                what: "KV cache",
                needed: need,
                found,
            });
        }
        let kv = match buf {
            KvBuf::F32(b) => {
                let (k, v) = b[..need].split_at_mut(need / 2);
                Kv::F32 { k, v }
            }
            KvBuf::F16(b) => {
                let (k, v) = b[..need].split_at_mut(need / 2);
                Kv::F16 { k, v }
            }
        };
        Ok(KvCache { kv })
    }

    /// The element type the cache keeps.
    pub fn kv_type(&self) -> KvType {
        match self.kv {
            Kv::F32 { .. } => KvType::F32,
            Kv::F16 { .. } => KvType::F16,
        }
    }

    /// Stores one head's key and value `(HS)` at element `at` (rounded to nearest f16 in an f16 cache).
    fn store(&mut self, at: usize, key: &[f32], value: &[f32]) {
        let span = at..at + key.len();
        match &mut self.kv {
            Kv::F32 { k, v } => {
                k[span.clone()].copy_from_slice(key);
                v[span].copy_from_slice(value);
            }
            Kv::F16 { k, v } => {
                quantize_f16(key, &mut k[span.clone()]);
                quantize_f16(value, &mut v[span]);
            }
        }
    }

    fn view(&self) -> KvView<'_> {
        match &self.kv {
            Kv::F32 { k, v } => KvView::F32 { k, v },
            Kv::F16 { k, v } => KvView::F16 { k, v },
        }
    }
}

impl KvView<'_> {
    /// `scores (t) = keys[span] (t, hs) · q (hs) * scale`
    fn scores(self, kn: &Kernels, scores: &mut [f32], q: &[f32], span: Range<usize>, scale: f32) {
        match self {
            KvView::F32 { k, .. } => (kn.attn_scores)(scores, q, &k[span], scale),
            KvView::F16 { k, .. } => (kn.attn_scores_f16)(scores, q, &k[span], scale),
        }
    }

    /// `out (hs) = probs (t) · values[span] (t, hs)`
    fn accum(self, kn: &Kernels, out: &mut [f32], probs: &[f32], span: Range<usize>) {
        match self {
            KvView::F32 { v, .. } => (kn.attn_accum)(out, probs, &v[span]),
            KvView::F16 { v, .. } => (kn.attn_accum_f16)(out, probs, &v[span]),
        }
    }
}

/// Activations for a chunk of up to `chunk` tokens.
pub struct Scratch<'s> {
    chunk: usize,
    /// (T, D) residual stream
    x: &'s mut [f32],
    /// (T, D) normed input, then attention output
    xb: &'s mut [f32],
    /// (T, D) projection output before the residual add
    xb2: &'s mut [f32],
    /// (T, H)
    hb: &'s mut [f32],
    /// (T, H)
    hb2: &'s mut [f32],
    /// (T, NH*HS)
    q: &'s mut [f32],
    /// (T, NKV*HS)
    k: &'s mut [f32],
    /// (T, NKV*HS)
    v: &'s mut [f32],
    /// (T, HS/2, 2) RoPE cos/sin per token
    rope: &'s mut [f32],
    /// (NH, S + HS): per head, scores over the context then the head's output
    att: &'s mut [f32],
    /// (V)
    logits: &'s mut [f32],
}

impl<'s> Scratch<'s> {
    /// Elements of scratch a chunk of `chunk` tokens needs.
    pub fn len(c: &Config, chunk: usize) -> usize {
        let (d, h, kv, hs) = (
            c.dim as usize,
            c.hidden_dim as usize,
            c.kv_dim(),
            c.head_size(),
        );
        chunk * (4 * d + 2 * h + 2 * kv + hs)
            + c.n_heads as usize * (c.seq_len as usize + hs)
            + c.vocab_size as usize
    }

    pub fn new(buf: &'s mut [f32], c: &Config, chunk: usize) -> Result<Self> {
        let need = Self::len(c, chunk);
        if chunk == 0 || buf.len() < need {
            return Err(Error::BufferTooSmall {
                what: "scratch",
                needed: need,
                found: buf.len(),
            });
        }
        let (d, h, kv, hs) = (
            c.dim as usize,
            c.hidden_dim as usize,
            c.kv_dim(),
            c.head_size(),
        );
        let rest = buf;
        let (x, rest) = rest.split_at_mut(chunk * d);
        let (xb, rest) = rest.split_at_mut(chunk * d);
        let (xb2, rest) = rest.split_at_mut(chunk * d);
        let (hb, rest) = rest.split_at_mut(chunk * h);
        let (hb2, rest) = rest.split_at_mut(chunk * h);
        let (q, rest) = rest.split_at_mut(chunk * d);
        let (k, rest) = rest.split_at_mut(chunk * kv);
        let (v, rest) = rest.split_at_mut(chunk * kv);
        let (rope, rest) = rest.split_at_mut(chunk * hs);
        let (att, rest) = rest.split_at_mut(c.n_heads as usize * (c.seq_len as usize + hs));
        let (logits, _) = rest.split_at_mut(c.vocab_size as usize);
        Ok(Scratch {
            chunk,
            x,
            xb,
            xb2,
            hb,
            hb2,
            q,
            k,
            v,
            rope,
            att,
            logits,
        })
    }

    /// Tokens one forward call processes at once; longer inputs are split into chunks of this size.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Logits of the last token of the last forward call `(V)`.
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    pub fn logits_mut(&mut self) -> &mut [f32] {
        self.logits
    }
}

/// A model ready to run: config, weights and the kernel table it computes with.
#[derive(Clone, Copy)]
pub struct Transformer<'a> {
    pub config: Config,
    pub weights: Weights<'a>,
    kernels: &'static Kernels,
}

impl<'a> Transformer<'a> {
    /// The same model with its context cut to `tokens` (at least 1, never more than its own). The KV cache
    /// and the attention scratch are sized by the context, so a run that needs a few hundred positions of
    /// a model made for a million does not pay for the million; positions inside the cut compute exactly
    /// as before.
    pub fn with_context(mut self, tokens: usize) -> Self {
        let tokens = tokens.clamp(1, self.config.seq_len as usize);
        // Lossless: clamped to the u32 it came from.
        self.config.seq_len = tokens as u32;
        self
    }

    pub fn new(config: Config, weights: Weights<'a>, kernels: &'static Kernels) -> Result<Self> {
        config.validate()?;
        Ok(Transformer {
            config,
            weights,
            kernels,
        })
    }

    /// The model of a parsed `.enigma` file (the caller decides whether to verify its checksum first).
    pub fn from_file(file: &EnigmaFile<'a>, kernels: &'static Kernels) -> Result<Self> {
        Self::new(*file.config(), Weights::from_file(file)?, kernels)
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// Runs `tokens` at positions `start..start + tokens.len()`, writing their keys and values into `cache`,
    /// and leaves the logits of the last token in `scratch` (returned). Inputs longer than the scratch's
    /// chunk are processed chunk by chunk.
    pub fn forward<'s>(
        &self,
        exec: &dyn Exec,
        cache: &mut KvCache<'_>,
        scratch: &'s mut Scratch<'_>,
        tokens: &[u32],
        start: usize,
    ) -> Result<&'s [f32]> {
        self.run(exec, cache, scratch, tokens, start, None)?;
        Ok(scratch.logits)
    }

    /// Like [`Transformer::forward`], but computes the logits of every token and hands each to
    /// `on_logits(index in tokens, logits (V))`: scoring a text (perplexity) in one pass.
    pub fn forward_each(
        &self,
        exec: &dyn Exec,
        cache: &mut KvCache<'_>,
        scratch: &mut Scratch<'_>,
        tokens: &[u32],
        start: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run(exec, cache, scratch, tokens, start, Some(on_logits))
    }

    fn run(
        &self,
        exec: &dyn Exec,
        cache: &mut KvCache<'_>,
        scratch: &mut Scratch<'_>,
        tokens: &[u32],
        start: usize,
        mut on_logits: Option<LogitsSink<'_>>,
    ) -> Result<()> {
        let c = &self.config;
        let max = c.seq_len as usize;
        if start.checked_add(tokens.len()).is_none_or(|end| end > max) {
            return Err(Error::ContextFull { max });
        }
        if let Some(&token) = tokens.iter().find(|t| **t >= c.vocab_size) {
            return Err(Error::TokenOutOfRange {
                token,
                vocab: c.vocab_size,
            });
        }
        let chunk = scratch.chunk;
        let d = c.dim as usize;
        for (i, part) in tokens.chunks(chunk).enumerate() {
            self.chunk(exec, cache, scratch, part, start + i * chunk);
            let last = i * chunk + part.len() == tokens.len();
            // Only the logits that are wanted: every token's when scoring, else the last token's.
            let wanted = match on_logits {
                Some(_) => 0..part.len(),
                None if last => part.len() - 1..part.len(),
                None => 0..0,
            };
            for t in wanted {
                let s = &mut *scratch;
                (self.kernels.rmsnorm)(
                    &mut s.xb[..d],
                    &s.x[t * d..(t + 1) * d],
                    self.weights.final_norm,
                    c.norm_eps,
                );
                self.linear(exec, s.logits, self.weights.classifier, &s.xb[..d], 1);
                if let Some(f) = on_logits.as_mut() {
                    f(i * chunk + t, s.logits);
                }
            }
        }
        Ok(())
    }

    /// `out (t, n) = x (t, d) · w (n, d)ᵀ`, split over rows for one token and over tokens for a chunk.
    fn linear(&self, exec: &dyn Exec, out: &mut [f32], w: WeightView<'_>, x: &[f32], t: usize) {
        let k = self.kernels;
        if t == 1 {
            exec.split(out, 1, &|r0, part| {
                k.matvec(part, w.slice_rows(r0, part.len()), x)
            });
        } else {
            let (n, d) = (w.rows(), w.cols());
            exec.split(out, n, &|t0, part| {
                let tn = part.len() / n;
                k.matmul(part, w, &x[t0 * d..(t0 + tn) * d], tn)
            });
        }
    }

    fn chunk(
        &self,
        exec: &dyn Exec,
        cache: &mut KvCache<'_>,
        s: &mut Scratch<'_>,
        tokens: &[u32],
        start: usize,
    ) {
        let c = &self.config;
        let kn = self.kernels;
        let w = &self.weights;
        let t = tokens.len();
        let (d, h, hs, kv) = (
            c.dim as usize,
            c.hidden_dim as usize,
            c.head_size(),
            c.kv_dim(),
        );
        let (n_heads, n_kv, group, seq) = (
            c.n_heads as usize,
            c.n_kv_heads as usize,
            c.kv_group(),
            c.seq_len as usize,
        );
        let q_dim = n_heads * hs;

        // (T, D), (T, HS)
        let x = &mut s.x[..t * d];
        for (i, &tok) in tokens.iter().enumerate() {
            w.token_embedding
                .row_to_f32(tok as usize, &mut x[i * d..(i + 1) * d]);
            generic::rope_table(
                &mut s.rope[i * hs..(i + 1) * hs],
                hs,
                start + i,
                c.rope_theta,
            );
        }
        let xb = &mut s.xb[..t * d];
        let xb2 = &mut s.xb2[..t * d];
        let q = &mut s.q[..t * q_dim];
        let k = &mut s.k[..t * kv];
        let v = &mut s.v[..t * kv];
        let hb = &mut s.hb[..t * h];
        let hb2 = &mut s.hb2[..t * h];
        let att_unit = seq + hs;
        let scale = 1.0 / libm::sqrtf(hs as f32);

        for l in 0..c.n_layers as usize {
            let norm = &w.attn_norm[l * d..(l + 1) * d];
            for (o, xi) in xb.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                (kn.rmsnorm)(o, xi, norm, c.norm_eps);
            }
            self.linear(exec, q, w.wq.slice_rows(l * q_dim, q_dim), xb, t);
            self.linear(exec, k, w.wk.slice_rows(l * kv, kv), xb, t);
            self.linear(exec, v, w.wv.slice_rows(l * kv, kv), xb, t);

            // RoPE, then append this chunk's keys and values to the cache.
            for i in 0..t {
                let cs = &s.rope[i * hs..(i + 1) * hs];
                (kn.rope)(&mut q[i * q_dim..(i + 1) * q_dim], cs);
                (kn.rope)(&mut k[i * kv..(i + 1) * kv], cs);
                for kh in 0..n_kv {
                    let at = ((l * n_kv + kh) * seq + start + i) * hs;
                    let from = i * kv + kh * hs;
                    cache.store(at, &k[from..from + hs], &v[from..from + hs]);
                }
            }

            // Causal attention: token i sees positions 0..=start+i. Heads are independent, so they split.
            let view = cache.view();
            for i in 0..t {
                let ctx = start + i + 1;
                let qi = &q[i * q_dim..(i + 1) * q_dim];
                let att = &mut s.att[..n_heads * att_unit];
                exec.split(att, att_unit, &|h0, part| {
                    for (j, block) in part.chunks_exact_mut(att_unit).enumerate() {
                        let head = h0 + j;
                        let base = (l * n_kv + head / group) * seq * hs;
                        let (scores, out) = block.split_at_mut(seq);
                        let scores = &mut scores[..ctx];
                        let span = base..base + ctx * hs;
                        let qh = &qi[head * hs..(head + 1) * hs];
                        view.scores(kn, scores, qh, span.clone(), scale);
                        (kn.softmax)(scores);
                        view.accum(kn, out, scores, span);
                    }
                });
                for (head, o) in xb[i * q_dim..(i + 1) * q_dim]
                    .chunks_exact_mut(hs)
                    .enumerate()
                {
                    o.copy_from_slice(&att[head * att_unit + seq..(head + 1) * att_unit]);
                }
            }
            self.linear(exec, xb2, w.wo.slice_rows(l * d, d), xb, t);
            (kn.add)(x, xb2);

            let norm = &w.ffn_norm[l * d..(l + 1) * d];
            for (o, xi) in xb.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                (kn.rmsnorm)(o, xi, norm, c.norm_eps);
            }
            self.linear(exec, hb, w.w1.slice_rows(l * h, h), xb, t);
            self.linear(exec, hb2, w.w3.slice_rows(l * h, h), xb, t);
            (kn.silu_mul)(hb, hb2);
            self.linear(exec, xb2, w.w2.slice_rows(l * d, d), hb, t);
            (kn.add)(x, xb2);
        }
    }
}
