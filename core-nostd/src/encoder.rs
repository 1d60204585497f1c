//! A BERT sentence encoder (all-MiniLM-L6-v2 and its kind): token + position + type embeddings and a
//! LayerNorm, then per layer bidirectional multi-head attention and a GELU FFN, each added to the residual
//! and LayerNorm'd after (post-norm, with biases); the sentence embedding is the mean of the last layer's
//! rows over the sentence's tokens, L2-normalised (sentence-transformers' Pooling + Normalize).
//!
//! Batches are packed: the sentences' tokens are rows of one `(T, D)` matrix, so every linear layer is one
//! product over the whole batch and no padding row is ever computed; attention runs per sentence over its
//! own rows only, which is what BERT's padding mask does for a padded batch.
//!
//! The `.enigma` file's header config carries the shape (`dim`, `hidden_dim`, `n_layers`, `n_heads`,
//! `vocab_size`, `seq_len` = the position table's length, `norm_eps`); the tensors below (per-layer ones
//! stacked, `(L, …)`) make it an encoder file. Norm tensors, biases and the position and type tables are
//! f32; matrices and the token table are in the file's dtype. Buffers are the caller's: one `f32` arena of
//! [`Encoder::scratch_len`].

use crate::config::{Config, TensorSpec};
use crate::{EnigmaFile, Error, Result};
use enigma_kernels::{encoder_ops, EncoderOps, Kernels, WeightView};

pub const TOKEN_EMBEDDING: &str = "enc.token_embedding";
pub const POSITION_EMBEDDING: &str = "enc.position_embedding";
pub const TYPE_EMBEDDING: &str = "enc.type_embedding";
pub const EMBED_NORM: &str = "enc.embed_norm";
pub const EMBED_NORM_BIAS: &str = "enc.embed_norm_bias";
/// Query, key and value rows of each layer in one matrix `(L, 3D, D)`: one product instead of three.
pub const WQKV: &str = "enc.wqkv";
pub const BQKV: &str = "enc.bqkv";
pub const WO: &str = "enc.wo";
pub const BO: &str = "enc.bo";
pub const ATTN_NORM: &str = "enc.attn_norm";
pub const ATTN_NORM_BIAS: &str = "enc.attn_norm_bias";
pub const W1: &str = "enc.w1";
pub const B1: &str = "enc.b1";
pub const W2: &str = "enc.w2";
pub const B2: &str = "enc.b2";
pub const FFN_NORM: &str = "enc.ffn_norm";
pub const FFN_NORM_BIAS: &str = "enc.ffn_norm_bias";

/// Every tensor of an encoder of config `c` with `types` token types: name, shape, and whether it is a
/// matrix (stored in the file's dtype) rather than an f32 vector or table. The importer and the loader
/// share this list.
pub fn tensor_specs(c: &Config, types: u64) -> [(TensorSpec, bool); 17] {
    let (d, h, l) = (c.dim as u64, c.hidden_dim as u64, c.n_layers as u64);
    let (v, p) = (c.vocab_size as u64, c.seq_len as u64);
    let t = |name, shape, matrix| (TensorSpec { name, shape }, matrix);
    [
        t(TOKEN_EMBEDDING, [v, d, 0], true),
        t(POSITION_EMBEDDING, [p, d, 0], false),
        t(TYPE_EMBEDDING, [types, d, 0], false),
        t(EMBED_NORM, [d, 0, 0], false),
        t(EMBED_NORM_BIAS, [d, 0, 0], false),
        t(WQKV, [l, 3 * d, d], true),
        t(BQKV, [l, 3 * d, 0], false),
        t(WO, [l, d, d], true),
        t(BO, [l, d, 0], false),
        t(ATTN_NORM, [l, d, 0], false),
        t(ATTN_NORM_BIAS, [l, d, 0], false),
        t(W1, [l, h, d], true),
        t(B1, [l, h, 0], false),
        t(W2, [l, d, h], true),
        t(B2, [l, d, 0], false),
        t(FFN_NORM, [l, d, 0], false),
        t(FFN_NORM_BIAS, [l, d, 0], false),
    ]
}

/// Whether a `.enigma` file holds an encoder (rather than a decoder).
pub fn is_encoder(file: &EnigmaFile<'_>) -> bool {
    file.tensor(WQKV).is_some()
}

struct Layer<'a> {
    wqkv: WeightView<'a>,
    bqkv: &'a [f32],
    wo: WeightView<'a>,
    bo: &'a [f32],
    attn_norm: (&'a [f32], &'a [f32]),
    w1: WeightView<'a>,
    b1: &'a [f32],
    w2: WeightView<'a>,
    b2: &'a [f32],
    ffn_norm: (&'a [f32], &'a [f32]),
}

/// A loaded encoder borrowing its file's bytes.
pub struct Encoder<'a> {
    config: Config,
    tokens: WeightView<'a>,
    positions: &'a [f32],
    types: &'a [f32],
    embed_norm: (&'a [f32], &'a [f32]),
    // At most 64 layers keeps this on the stack without a heap.
    layers: heapless::Vec<Layer<'a>, 64>,
    k: &'static Kernels,
    ops: &'static EncoderOps,
}

impl<'a> Encoder<'a> {
    /// Views the encoder in `file` (already parsed; its checksum is the caller's to verify).
    pub fn from_file(file: &EnigmaFile<'a>, k: &'static Kernels) -> Result<Self> {
        let c = *file.config();
        if c.n_kv_heads != c.n_heads {
            return Err(Error::BadConfig(
                "an encoder's key/value heads equal its heads",
            ));
        }
        let types = file
            .tensor(TYPE_EMBEDDING)
            .ok_or(Error::MissingTensor {
                name: TYPE_EMBEDDING,
            })?
            .shape[0];
        let specs = tensor_specs(&c, types);
        let vec = |i: usize| -> Result<&'a [f32]> {
            let s = specs[i].0;
            file.f32s(s.name, &s.shape[..s.ndim()])
        };
        let mat = |i: usize| file.weight(specs[i].0);
        let (d, h) = (c.dim as usize, c.hidden_dim as usize);
        let (wqkv, bqkv, wo, bo) = (mat(5)?, vec(6)?, mat(7)?, vec(8)?);
        let (an, anb, w1, b1) = (vec(9)?, vec(10)?, mat(11)?, vec(12)?);
        let (w2, b2, fnn, fnb) = (mat(13)?, vec(14)?, vec(15)?, vec(16)?);
        let mut layers = heapless::Vec::new();
        for l in 0..c.n_layers as usize {
            let layer = Layer {
                wqkv: wqkv.slice_rows(l * 3 * d, 3 * d),
                bqkv: &bqkv[l * 3 * d..(l + 1) * 3 * d],
                wo: wo.slice_rows(l * d, d),
                bo: &bo[l * d..(l + 1) * d],
                attn_norm: (&an[l * d..(l + 1) * d], &anb[l * d..(l + 1) * d]),
                w1: w1.slice_rows(l * h, h),
                b1: &b1[l * h..(l + 1) * h],
                w2: w2.slice_rows(l * d, d),
                b2: &b2[l * d..(l + 1) * d],
                ffn_norm: (&fnn[l * d..(l + 1) * d], &fnb[l * d..(l + 1) * d]),
            };
            layers
                .push(layer)
                .map_err(|_| Error::BadConfig("an encoder has at most 64 layers"))?;
        }
        Ok(Encoder {
            config: c,
            tokens: mat(0)?,
            positions: vec(1)?,
            types: vec(2)?,
            embed_norm: (vec(3)?, vec(4)?),
            layers,
            k,
            ops: encoder_ops(k),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.config.dim as usize
    }

    /// Longest sentence in tokens (the position table's length).
    pub fn max_tokens(&self) -> usize {
        self.config.seq_len as usize
    }

    /// `f32`s of scratch [`Encoder::embed`] needs for a batch of `total` tokens whose longest sentence
    /// has `longest`.
    pub fn scratch_len(&self, total: usize, longest: usize) -> usize {
        let (d, h) = (self.dim(), self.config.hidden_dim as usize);
        let hs = self.config.head_size();
        // x, qkv, ctx/ffn-out, hidden; per head: q, k, vᵀ, scores, out
        total * (d + 3 * d + d + h) + longest * (4 * hs + longest)
    }

    /// Embeds a batch: `ids` are the sentences' token ids one after another, `lens` their lengths;
    /// `out (B, D)` gets one L2-normalised embedding per sentence.
    pub fn embed(
        &self,
        ids: &[u32],
        lens: &[usize],
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let (d, hd) = (self.dim(), c.hidden_dim as usize);
        let total: usize = lens.iter().sum();
        let longest = lens.iter().copied().max().unwrap_or(0);
        if total != ids.len() || lens.contains(&0) {
            return Err(Error::BadConfig(
                "sentence lengths must be positive and add up to the ids",
            ));
        }
        if longest > self.max_tokens() {
            return Err(Error::BadConfig(
                "a sentence is longer than the encoder's positions",
            ));
        }
        if let Some(&id) = ids.iter().find(|&&id| id >= c.vocab_size) {
            return Err(Error::TokenOutOfRange {
                token: id,
                vocab: c.vocab_size,
            });
        }
        let need = self.scratch_len(total, longest);
        if scratch.len() < need || out.len() != lens.len() * d {
            return Err(Error::BufferTooSmall {
                what: "encoder scratch or output",
                needed: need.max(lens.len() * d),
                found: scratch.len().min(out.len()),
            });
        }
        let (x, rest) = scratch.split_at_mut(total * d);
        let (qkv, rest) = rest.split_at_mut(total * 3 * d);
        let (tmp, rest) = rest.split_at_mut(total * d);
        let (hid, heads) = rest.split_at_mut(total * hd);

        // Embeddings: token + position + type 0, LayerNorm'd into `x`.
        let mut row = 0;
        for &n in lens {
            for p in 0..n {
                let e = &mut tmp[row * d..(row + 1) * d];
                self.tokens.row_to_f32(ids[row] as usize, e);
                (self.k.add)(e, &self.positions[p * d..(p + 1) * d]);
                (self.k.add)(e, &self.types[..d]);
                row += 1;
            }
        }
        for (xr, er) in x.chunks_exact_mut(d).zip(tmp.chunks_exact(d)) {
            (self.ops.layernorm)(xr, er, self.embed_norm.0, self.embed_norm.1, c.norm_eps);
        }

        for layer in &self.layers {
            self.linear(qkv, layer.wqkv, layer.bqkv, x, total);
            self.attention(qkv, tmp, lens, heads);
            let (ctx, _) = tmp.split_at_mut(total * d);
            // The context goes through Wo into `hid`'s first `total * d` values, then back onto x.
            let proj = &mut hid[..total * d];
            self.linear(proj, layer.wo, layer.bo, ctx, total);
            self.residual_norm(x, proj, layer.attn_norm);
            self.linear(hid, layer.w1, layer.b1, x, total);
            (self.ops.gelu)(hid);
            self.linear(tmp, layer.w2, layer.b2, hid, total);
            self.residual_norm(x, tmp, layer.ffn_norm);
        }

        // Mean over each sentence's rows, then unit length (sentence-transformers' Normalize: eps 1e-12).
        let mut row = 0;
        for (o, &n) in out.chunks_exact_mut(d).zip(lens) {
            o.fill(0.0);
            for r in row..row + n {
                (self.k.add)(o, &x[r * d..(r + 1) * d]);
            }
            row += n;
            let inv_n = 1.0 / n as f32;
            o.iter_mut().for_each(|v| *v *= inv_n);
            let norm = libm::sqrtf(o.iter().map(|v| v * v).sum::<f32>());
            let inv = 1.0 / norm.max(1e-12);
            o.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(())
    }

    /// `out (t, n) = x (t, d) · wᵀ + bias (n)`
    fn linear(&self, out: &mut [f32], w: WeightView<'_>, bias: &[f32], x: &[f32], t: usize) {
        self.k.matmul(out, w, x, t);
        for r in out.chunks_exact_mut(bias.len()) {
            (self.k.add)(r, bias);
        }
    }

    /// `x = LayerNorm(x + y)`, row by row; `y` is clobbered.
    fn residual_norm(&self, x: &mut [f32], y: &mut [f32], (w, b): (&[f32], &[f32])) {
        let d = self.dim();
        for (xr, yr) in x.chunks_exact_mut(d).zip(y.chunks_exact_mut(d)) {
            (self.k.add)(yr, xr);
            (self.ops.layernorm)(xr, yr, w, b, self.config.norm_eps);
        }
    }

    /// Scaled dot-product attention of each sentence over its own rows, all heads: `qkv (T, 3D)` in,
    /// `ctx (T, D)` out. Per (sentence, head) the rows are gathered so both products are `matmul_f32`s.
    fn attention(&self, qkv: &[f32], ctx: &mut [f32], lens: &[usize], heads: &mut [f32]) {
        let d = self.dim();
        let hs = self.config.head_size();
        let scale = 1.0 / libm::sqrtf(hs as f32);
        let mut row0 = 0;
        for &n in lens {
            let (q, rest) = heads.split_at_mut(n * hs);
            let (kh, rest) = rest.split_at_mut(n * hs);
            let (vt, rest) = rest.split_at_mut(hs * n);
            let (o, rest) = rest.split_at_mut(n * hs);
            let scores = &mut rest[..n * n];
            for h in 0..self.config.n_heads as usize {
                for i in 0..n {
                    let r = &qkv[(row0 + i) * 3 * d..(row0 + i + 1) * 3 * d];
                    let (qs, ks) = (&r[h * hs..(h + 1) * hs], &r[d + h * hs..d + (h + 1) * hs]);
                    for (dst, s) in q[i * hs..(i + 1) * hs].iter_mut().zip(qs) {
                        *dst = s * scale;
                    }
                    kh[i * hs..(i + 1) * hs].copy_from_slice(ks);
                    for (c, v) in r[2 * d + h * hs..2 * d + (h + 1) * hs].iter().enumerate() {
                        vt[c * n + i] = *v;
                    }
                }
                // scores (n, n) = q · kᵀ; softmax by row; o (n, hs) = scores · v
                (self.k.matmul_f32)(scores, kh, q, n);
                for r in scores.chunks_exact_mut(n) {
                    (self.k.softmax)(r);
                }
                (self.k.matmul_f32)(o, vt, scores, n);
                for i in 0..n {
                    let dst = &mut ctx[(row0 + i) * d + h * hs..(row0 + i) * d + (h + 1) * hs];
                    dst.copy_from_slice(&o[i * hs..(i + 1) * hs]);
                }
            }
            row0 += n;
        }
    }
}
