//! Whisper (tiny.en and its kind): an encoder over 30-second log-mel windows ([`crate::mel`]) and a
//! decoder with cross-attention over it, pre-norm with biases, exact GELU, as OpenAI's model and
//! CTranslate2 run it.
//!
//! - front end: `conv1` (80 → D, kernel 3, pad 1), GELU, `conv2` (D → D, kernel 3, stride 2, pad 1), GELU,
//!   plus the file's sinusoidal positions; both convolutions are one matrix product over im2col rows;
//! - encoder layers: `x += Wo·attn(LN(x))`, `x += W2·GELU(W1·LN(x))`; a final LayerNorm;
//! - decoder layers: causal self-attention over a KV cache, cross-attention whose keys and values are
//!   computed once per window ([`Whisper::cross`]), the FFN; a final LayerNorm; logits against the token
//!   table (tied);
//! - greedy decoding ([`Whisper::greedy`]) with Whisper's rules: suppressed tokens, blank and EOT
//!   suppressed at the first step, and in timestamp mode OpenAI's `ApplyTimestampRules`.
//!
//! Tensors (per-layer ones stacked `(L, …)`, vectors of a layer packed in one f32 row) are listed by
//! [`tensor_specs`]; `wh.meta` (u32) holds the special tokens and suppress lists. Buffers are the caller's
//! ([`Whisper::buffer_lens`]).

use crate::config::{Config, TensorSpec};
use crate::mel::N_MELS;
use crate::{EnigmaFile, Error, Exec, Result};
use enigma_kernels::{encoder_ops, DType, EncoderOps, Kernels, WeightView};

pub const CONV1: &str = "wh.conv1";
pub const CONV2: &str = "wh.conv2";
/// `(2, D)`: the two convolutions' biases.
pub const CONV_BIAS: &str = "wh.conv_bias";
pub const ENC_POS: &str = "wh.enc_pos";
pub const ENC_WQKV: &str = "wh.enc_wqkv";
pub const ENC_WO: &str = "wh.enc_wo";
pub const ENC_W1: &str = "wh.enc_w1";
pub const ENC_W2: &str = "wh.enc_w2";
/// `(L, 9D + H)`: [`EncVecs`] of each layer.
pub const ENC_VECS: &str = "wh.enc_vecs";
/// `(2, D)`: the final LayerNorm's weight and bias.
pub const ENC_NORM: &str = "wh.enc_norm";
pub const DEC_TOKENS: &str = "wh.dec_tokens";
pub const DEC_POS: &str = "wh.dec_pos";
pub const DEC_WQKV: &str = "wh.dec_wqkv";
pub const DEC_WO: &str = "wh.dec_wo";
pub const DEC_CQ: &str = "wh.dec_cq";
/// Cross-attention keys then values, `(L, 2D, D)` (CTranslate2 stores them fused so).
pub const DEC_CKV: &str = "wh.dec_ckv";
pub const DEC_CO: &str = "wh.dec_co";
pub const DEC_W1: &str = "wh.dec_w1";
pub const DEC_W2: &str = "wh.dec_w2";
/// `(L, 15D + H)`: [`DecVecs`] of each layer.
pub const DEC_VECS: &str = "wh.dec_vecs";
pub const DEC_NORM: &str = "wh.dec_norm";
/// u32: [`Meta`] as [`Meta::encode`] lays it out.
pub const META: &str = "wh.meta";

/// Encoder frames of a window (1500 for every Whisper).
pub const AUDIO_CTX: usize = 1500;
/// Mel frames of a window: 30 s.
pub const WINDOW_FRAMES: usize = 2 * AUDIO_CTX;

/// Row lengths of the packed per-layer vectors.
pub fn enc_vecs_len(d: u64, h: u64) -> u64 {
    9 * d + h
}
pub fn dec_vecs_len(d: u64, h: u64) -> u64 {
    15 * d + h
}

/// Every tensor but [`META`]: spec and whether it is a matrix (stored in the file's dtype).
pub fn tensor_specs(c: &Config) -> [(TensorSpec, bool); 21] {
    let (d, h, l) = (c.dim as u64, c.hidden_dim as u64, c.n_layers as u64);
    let (v, p, a) = (c.vocab_size as u64, c.seq_len as u64, AUDIO_CTX as u64);
    let m = N_MELS as u64;
    let t = |name, shape, matrix| (TensorSpec { name, shape }, matrix);
    [
        t(CONV1, [d, 3 * m, 0], true),
        t(CONV2, [d, 3 * d, 0], true),
        t(CONV_BIAS, [2, d, 0], false),
        t(ENC_POS, [a, d, 0], false),
        t(ENC_WQKV, [l, 3 * d, d], true),
        t(ENC_WO, [l, d, d], true),
        t(ENC_W1, [l, h, d], true),
        t(ENC_W2, [l, d, h], true),
        t(ENC_VECS, [l, enc_vecs_len(d, h), 0], false),
        t(ENC_NORM, [2, d, 0], false),
        t(DEC_TOKENS, [v, d, 0], true),
        t(DEC_POS, [p, d, 0], false),
        t(DEC_WQKV, [l, 3 * d, d], true),
        t(DEC_WO, [l, d, d], true),
        t(DEC_CQ, [l, d, d], true),
        t(DEC_CKV, [l, 2 * d, d], true),
        t(DEC_CO, [l, d, d], true),
        t(DEC_W1, [l, h, d], true),
        t(DEC_W2, [l, d, h], true),
        t(DEC_VECS, [l, dec_vecs_len(d, h), 0], false),
        t(DEC_NORM, [2, d, 0], false),
    ]
}

/// Whether a `.enigma` file holds a Whisper model.
pub fn is_whisper(file: &EnigmaFile<'_>) -> bool {
    file.tensor(META).is_some()
}

/// Special tokens and the suppress lists.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    pub sot: u32,
    pub eot: u32,
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp `i` (0.02 s steps) is `timestamp_begin + i`.
    pub timestamp_begin: u32,
    pub no_speech: u32,
    /// The start-of-transcript sequence (`<|startoftranscript|>` alone for an English-only model).
    pub sot_sequence: &'a [u32],
    /// Never sampled (the model's `suppress_ids`).
    pub suppress: &'a [u32],
    /// Not sampled first (`suppress_ids_begin`: blank and EOT).
    pub suppress_begin: &'a [u32],
}

impl<'a> Meta<'a> {
    /// `[sot, eot, no_timestamps, timestamp_begin, no_speech, n1, sot_sequence…, n2, suppress…, n3,
    /// suppress_begin…]` (the importer writes this with [`Meta::encode`]).
    pub fn parse(w: &'a [u32], vocab: u32) -> Result<Self> {
        let bad = Error::BadConfig("wh.meta is malformed");
        let head = w.get(..5).ok_or(bad.clone())?;
        let mut rest = &w[5..];
        let mut list = || -> Result<&'a [u32]> {
            let (&n, r) = rest.split_first().ok_or(bad.clone())?;
            let n = n as usize;
            if r.len() < n {
                return Err(bad.clone());
            }
            let (l, r) = r.split_at(n);
            rest = r;
            Ok(l)
        };
        let m = Meta {
            sot: head[0],
            eot: head[1],
            no_timestamps: head[2],
            timestamp_begin: head[3],
            no_speech: head[4],
            sot_sequence: list()?,
            suppress: list()?,
            suppress_begin: list()?,
        };
        let all = head
            .iter()
            .chain(m.sot_sequence)
            .chain(m.suppress)
            .chain(m.suppress_begin);
        if !rest.is_empty() || all.into_iter().any(|&t| t >= vocab) || m.timestamp_begin <= m.eot {
            return Err(Error::BadConfig(
                "wh.meta is malformed or names tokens outside the vocabulary",
            ));
        }
        Ok(m)
    }

    /// Appends the layout [`Meta::parse`] reads to `out`.
    pub fn encode(&self, out: &mut impl Extend<u32>) {
        out.extend([
            self.sot,
            self.eot,
            self.no_timestamps,
            self.timestamp_begin,
            self.no_speech,
        ]);
        for l in [self.sot_sequence, self.suppress, self.suppress_begin] {
            out.extend([l.len() as u32]);
            out.extend(l.iter().copied());
        }
    }
}

/// A layer's vectors, in the order [`ENC_VECS`] packs them.
struct EncVecs<'a> {
    ln1: (&'a [f32], &'a [f32]),
    bqkv: &'a [f32],
    bo: &'a [f32],
    ln2: (&'a [f32], &'a [f32]),
    b1: &'a [f32],
    b2: &'a [f32],
}

/// Splits `row` into consecutive slices of the given lengths.
fn split<const N: usize>(mut row: &[f32], lens: [usize; N]) -> [&[f32]; N] {
    let mut out = [&row[..0]; N];
    for (o, n) in out.iter_mut().zip(lens) {
        let (a, b) = row.split_at(n);
        *o = a;
        row = b;
    }
    out
}

impl<'a> EncVecs<'a> {
    fn new(row: &'a [f32], d: usize, h: usize) -> Self {
        let [g1, b1n, bqkv, bo, g2, b2n, b1, b2] = split(row, [d, d, 3 * d, d, d, d, h, d]);
        EncVecs {
            ln1: (g1, b1n),
            bqkv,
            bo,
            ln2: (g2, b2n),
            b1,
            b2,
        }
    }
}

struct DecVecs<'a> {
    ln1: (&'a [f32], &'a [f32]),
    bqkv: &'a [f32],
    bo: &'a [f32],
    lnc: (&'a [f32], &'a [f32]),
    bcq: &'a [f32],
    bckv: &'a [f32],
    bco: &'a [f32],
    ln2: (&'a [f32], &'a [f32]),
    b1: &'a [f32],
    b2: &'a [f32],
}

impl<'a> DecVecs<'a> {
    fn new(row: &'a [f32], d: usize, h: usize) -> Self {
        let [g1, bn1, bqkv, bo, gc, bnc, bcq, bckv, bco, g2, bn2, b1, b2] =
            split(row, [d, d, 3 * d, d, d, d, d, 2 * d, d, d, d, h, d]);
        DecVecs {
            ln1: (g1, bn1),
            bqkv,
            bo,
            lnc: (gc, bnc),
            bcq,
            bckv,
            bco,
            ln2: (g2, bn2),
            b1,
            b2,
        }
    }
}

/// The packed vector row lengths (the importer packs in the same order).
pub const ENC_VEC_PARTS: [&str; 8] = ["ln1.g", "ln1.b", "bqkv", "bo", "ln2.g", "ln2.b", "b1", "b2"];
pub const DEC_VEC_PARTS: [&str; 13] = [
    "ln1.g", "ln1.b", "bqkv", "bo", "lnc.g", "lnc.b", "bcq", "bckv", "bco", "ln2.g", "ln2.b", "b1",
    "b2",
];

struct EncLayer<'a> {
    wqkv: WeightView<'a>,
    wo: WeightView<'a>,
    w1: WeightView<'a>,
    w2: WeightView<'a>,
    v: EncVecs<'a>,
}

struct DecLayer<'a> {
    wqkv: WeightView<'a>,
    wo: WeightView<'a>,
    cq: WeightView<'a>,
    ckv: WeightView<'a>,
    co: WeightView<'a>,
    w1: WeightView<'a>,
    w2: WeightView<'a>,
    v: DecVecs<'a>,
}

/// The caller's buffers, sized by [`Whisper::buffer_lens`].
pub struct Buffers<'b> {
    /// The encoder's working memory (the window's mel frames are its first `3000 × 80` values).
    pub enc: &'b mut [f32],
    /// Per decoder layer the window's cross-attention keys then values, `(L, 2, 1500, D)`.
    pub cross: &'b mut [f32],
    /// Per decoder layer the self-attention keys then values, `(L, 2, S, D)`.
    pub kv: &'b mut [f32],
    /// The decoder's working memory.
    pub dec: &'b mut [f32],
    /// `(V)`
    pub logits: &'b mut [f32],
}

/// A loaded Whisper model borrowing its file's bytes.
pub struct Whisper<'a> {
    c: Config,
    pub meta: Meta<'a>,
    conv1: WeightView<'a>,
    conv2: WeightView<'a>,
    conv_bias: &'a [f32],
    enc_pos: &'a [f32],
    enc: heapless::Vec<EncLayer<'a>, 32>,
    enc_norm: &'a [f32],
    tokens: WeightView<'a>,
    dec_pos: &'a [f32],
    dec: heapless::Vec<DecLayer<'a>, 32>,
    dec_norm: &'a [f32],
    k: &'static Kernels,
    ops: &'static EncoderOps,
}

/// Greedy decoding's options.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Timestamp tokens (segments) rather than `<|notimestamps|>`.
    pub timestamps: bool,
    /// Tokens sampled in one window at most (hallucination loops end there).
    pub max_tokens: usize,
    /// The last timestamp index the first token may be (50 = 1 s, as Whisper).
    pub max_initial_timestamp: u32,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            timestamps: true,
            max_tokens: 224,
            max_initial_timestamp: 50,
        }
    }
}

impl<'a> Whisper<'a> {
    pub fn from_file(file: &EnigmaFile<'a>, k: &'static Kernels) -> Result<Self> {
        let c = *file.config();
        if c.n_kv_heads != c.n_heads || c.n_layers as usize > 32 {
            return Err(Error::BadConfig(
                "a Whisper model has key/value heads equal to its heads and at most 32 layers",
            ));
        }
        let meta_t = file
            .tensor(META)
            .ok_or(Error::MissingTensor { name: META })?;
        if meta_t.dtype != DType::U32 || meta_t.shape[1] != 0 {
            return Err(Error::BadConfig("wh.meta is not a u32 vector"));
        }
        let words: &'a [u32] =
            bytemuck::try_cast_slice(meta_t.bytes).map_err(|_| Error::BufferMisaligned)?;
        let meta = Meta::parse(words, c.vocab_size)?;
        let specs = tensor_specs(&c);
        let vec = |i: usize| -> Result<&'a [f32]> {
            let s = specs[i].0;
            file.f32s(s.name, &s.shape[..s.ndim()])
        };
        let mat = |i: usize| file.weight(specs[i].0);
        let (d, h) = (c.dim as usize, c.hidden_dim as usize);
        let (ewqkv, ewo, ew1, ew2, evecs) = (mat(4)?, mat(5)?, mat(6)?, mat(7)?, vec(8)?);
        let (dwqkv, dwo, dcq, dckv, dco) = (mat(12)?, mat(13)?, mat(14)?, mat(15)?, mat(16)?);
        let (dw1, dw2, dvecs) = (mat(17)?, mat(18)?, vec(19)?);
        let (el, dl) = (
            enc_vecs_len(d as u64, h as u64) as usize,
            dec_vecs_len(d as u64, h as u64) as usize,
        );
        let mut enc = heapless::Vec::new();
        let mut dec = heapless::Vec::new();
        for l in 0..c.n_layers as usize {
            let e = EncLayer {
                wqkv: ewqkv.slice_rows(l * 3 * d, 3 * d),
                wo: ewo.slice_rows(l * d, d),
                w1: ew1.slice_rows(l * h, h),
                w2: ew2.slice_rows(l * d, d),
                v: EncVecs::new(&evecs[l * el..(l + 1) * el], d, h),
            };
            let x = DecLayer {
                wqkv: dwqkv.slice_rows(l * 3 * d, 3 * d),
                wo: dwo.slice_rows(l * d, d),
                cq: dcq.slice_rows(l * d, d),
                ckv: dckv.slice_rows(l * 2 * d, 2 * d),
                co: dco.slice_rows(l * d, d),
                w1: dw1.slice_rows(l * h, h),
                w2: dw2.slice_rows(l * d, d),
                v: DecVecs::new(&dvecs[l * dl..(l + 1) * dl], d, h),
            };
            // Capacity 32 was checked above.
            let _ = enc.push(e);
            let _ = dec.push(x);
        }
        Ok(Whisper {
            c,
            meta,
            conv1: mat(0)?,
            conv2: mat(1)?,
            conv_bias: vec(2)?,
            enc_pos: vec(3)?,
            enc,
            enc_norm: vec(9)?,
            tokens: mat(10)?,
            dec_pos: vec(11)?,
            dec,
            dec_norm: vec(20)?,
            k,
            ops: encoder_ops(k),
        })
    }

    pub fn config(&self) -> &Config {
        &self.c
    }

    /// Lengths of [`Buffers`]' fields, in order.
    pub fn buffer_lens(&self) -> [usize; 5] {
        let (d, h, l) = (
            self.c.dim as usize,
            self.c.hidden_dim as usize,
            self.c.n_layers as usize,
        );
        let (a, s, hs) = (AUDIO_CTX, self.c.seq_len as usize, self.c.head_size());
        let m = N_MELS;
        // mel | x | then the front end's im2col rows and conv1 output, later xn, qkv, hidden and the
        // per-head q, k, vᵀ, o and a block of scores
        let front = WINDOW_FRAMES * 3 * m + WINDOW_FRAMES * d + a * 3 * d;
        let body = a * d + a * 3 * d + a * h + 4 * a * hs + a * a;
        let enc = WINDOW_FRAMES * m + a * d + front.max(body);
        // x, xn, qkv, ctx, hidden, scores
        let dec = d + d + 3 * d + d + h + s.max(a);
        [
            enc,
            l * 2 * a * d,
            l * 2 * s * d,
            dec,
            self.c.vocab_size as usize,
        ]
    }

    fn check(&self, b: &Buffers<'_>) -> Result<()> {
        let want = self.buffer_lens();
        let got = [
            b.enc.len(),
            b.cross.len(),
            b.kv.len(),
            b.dec.len(),
            b.logits.len(),
        ];
        for (w, g) in want.iter().zip(got) {
            if g < *w {
                return Err(Error::BufferTooSmall {
                    what: "whisper buffers",
                    needed: *w,
                    found: g,
                });
            }
        }
        Ok(())
    }

    /// `out (t, n) = x (t, d) · wᵀ + bias` on `exec`'s threads: one row splits the weight rows, more
    /// split the rows of `x`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        exec: &dyn Exec,
        out: &mut [f32],
        w: WeightView<'_>,
        bias: &[f32],
        x: &[f32],
        t: usize,
    ) {
        let k = self.k;
        if t == 1 {
            exec.split(out, 1, &|r0, part| {
                k.matvec(part, w.slice_rows(r0, part.len()), x);
                (k.add)(part, &bias[r0..r0 + part.len()]);
            });
        } else {
            let (n, d) = (w.rows(), w.cols());
            exec.split(out, n, &|t0, part| {
                let tn = part.len() / n;
                k.matmul(part, w, &x[t0 * d..(t0 + tn) * d], tn);
                for r in part.chunks_exact_mut(n) {
                    (k.add)(r, bias);
                }
            });
        }
    }

    fn norm_rows(&self, out: &mut [f32], x: &[f32], (g, b): (&[f32], &[f32])) {
        let d = g.len();
        for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            (self.ops.layernorm)(o, r, g, b, 1e-5);
        }
    }

    /// Runs the encoder over the window whose `(3000, 80)` mel frames the caller wrote at the start of
    /// `b.enc`, then fills `b.cross` with every decoder layer's cross-attention keys and values.
    pub fn encode(&self, exec: &dyn Exec, b: &mut Buffers<'_>) -> Result<()> {
        self.check(b)?;
        let (d, hd) = (self.c.dim as usize, self.c.hidden_dim as usize);
        let (a, m, f) = (AUDIO_CTX, N_MELS, WINDOW_FRAMES);
        let (mel, rest) = b.enc.split_at_mut(f * m);
        let (x, work) = rest.split_at_mut(a * d);
        // Front end. conv1: im2col rows [c·3 + k] = mel[t + k - 1][c], zero outside the window.
        {
            let (col, rest) = work.split_at_mut(f * 3 * m);
            let (h1, rest) = rest.split_at_mut(f * d);
            let col2 = &mut rest[..a * 3 * d];
            for t in 0..f {
                let row = &mut col[t * 3 * m..(t + 1) * 3 * m];
                for kk in 0..3 {
                    let src = (t + kk).checked_sub(1).filter(|&s| s < f);
                    for c in 0..m {
                        row[c * 3 + kk] = src.map_or(0.0, |s| mel[s * m + c]);
                    }
                }
            }
            self.linear(exec, h1, self.conv1, &self.conv_bias[..d], col, f);
            (self.ops.gelu)(h1);
            for t in 0..a {
                let row = &mut col2[t * 3 * d..(t + 1) * 3 * d];
                for kk in 0..3 {
                    let src = (2 * t + kk).checked_sub(1).filter(|&s| s < f);
                    for c in 0..d {
                        row[c * 3 + kk] = src.map_or(0.0, |s| h1[s * d + c]);
                    }
                }
            }
            self.linear(exec, x, self.conv2, &self.conv_bias[d..2 * d], col2, a);
            (self.ops.gelu)(x);
            (self.k.add)(x, &self.enc_pos[..a * d]);
        }
        let (xn, rest) = work.split_at_mut(a * d);
        let (qkv, rest) = rest.split_at_mut(a * 3 * d);
        let (hid, heads) = rest.split_at_mut(a * hd);
        for layer in &self.enc {
            self.norm_rows(xn, x, layer.v.ln1);
            self.linear(exec, qkv, layer.wqkv, layer.v.bqkv, xn, a);
            self.self_attention_full(exec, qkv, xn, heads, a);
            self.linear(exec, &mut hid[..a * d], layer.wo, layer.v.bo, xn, a);
            (self.k.add)(x, &hid[..a * d]);
            self.norm_rows(xn, x, layer.v.ln2);
            self.linear(exec, hid, layer.w1, layer.v.b1, xn, a);
            (self.ops.gelu)(hid);
            self.linear(exec, xn, layer.w2, layer.v.b2, hid, a);
            (self.k.add)(x, xn);
        }
        let (g, bn) = self.enc_norm.split_at(d);
        self.norm_rows(xn, x, (g, bn));
        for (l, layer) in self.dec.iter().enumerate() {
            let kv = &mut b.cross[l * 2 * a * d..(l + 1) * 2 * a * d];
            // ckv rows: keys (D) then values (D); stored keys (A, D) then values (A, D).
            let (kk, vv) = kv.split_at_mut(a * d);
            let wk = layer.ckv.slice_rows(0, d);
            let wv = layer.ckv.slice_rows(d, d);
            self.linear(exec, kk, wk, &layer.v.bckv[..d], xn, a);
            self.linear(exec, vv, wv, &layer.v.bckv[d..], xn, a);
        }
        Ok(())
    }

    /// The encoder output of the last [`Whisper::encode`] (`(1500, D)`), for tests against a reference.
    pub fn encoder_output<'b>(&self, b: &'b Buffers<'_>) -> &'b [f32] {
        let n = AUDIO_CTX * self.c.dim as usize;
        let at = WINDOW_FRAMES * N_MELS + n;
        &b.enc[at..at + n]
    }

    /// Bidirectional attention of `n` rows: `qkv (n, 3D)` in, `ctx (n, D)` out. Per head the rows are
    /// gathered so both products are `matmul_f32`s, each split over query rows.
    fn self_attention_full(
        &self,
        exec: &dyn Exec,
        qkv: &[f32],
        ctx: &mut [f32],
        heads: &mut [f32],
        n: usize,
    ) {
        let d = self.c.dim as usize;
        let hs = self.c.head_size();
        let scale = 1.0 / libm::sqrtf(hs as f32);
        let (q, rest) = heads.split_at_mut(n * hs);
        let (kh, rest) = rest.split_at_mut(n * hs);
        let (vt, rest) = rest.split_at_mut(hs * n);
        let (o, rest) = rest.split_at_mut(n * hs);
        let scores = &mut rest[..n * n];
        let k = self.k;
        for h in 0..self.c.n_heads as usize {
            for i in 0..n {
                let r = &qkv[i * 3 * d..(i + 1) * 3 * d];
                for (dst, s) in q[i * hs..(i + 1) * hs].iter_mut().zip(&r[h * hs..]) {
                    *dst = s * scale;
                }
                kh[i * hs..(i + 1) * hs].copy_from_slice(&r[d + h * hs..d + (h + 1) * hs]);
                for (c, v) in r[2 * d + h * hs..2 * d + (h + 1) * hs].iter().enumerate() {
                    vt[c * n + i] = *v;
                }
            }
            let (qr, khr, vtr) = (&*q, &*kh, &*vt);
            exec.split(scores, n, &|i0, part| {
                let rows = part.len() / n;
                (k.matmul_f32)(part, khr, &qr[i0 * hs..(i0 + rows) * hs], rows);
                for r in part.chunks_exact_mut(n) {
                    (k.softmax)(r);
                }
            });
            let sr = &*scores;
            exec.split(o, hs, &|i0, part| {
                let rows = part.len() / hs;
                (k.matmul_f32)(part, vtr, &sr[i0 * n..(i0 + rows) * n], rows);
            });
            for i in 0..n {
                ctx[i * d + h * hs..i * d + (h + 1) * hs].copy_from_slice(&o[i * hs..(i + 1) * hs]);
            }
        }
    }

    /// One decoder step: token `id` at position `pos` (the KV cache holds positions before it); the
    /// next-token logits land in `b.logits`.
    pub fn step(&self, exec: &dyn Exec, id: u32, pos: usize, b: &mut Buffers<'_>) -> Result<()> {
        self.check(b)?;
        let c = &self.c;
        let (d, hd, s) = (c.dim as usize, c.hidden_dim as usize, c.seq_len as usize);
        let (a, hs, nh) = (AUDIO_CTX, c.head_size(), c.n_heads as usize);
        if pos >= s {
            return Err(Error::ContextFull { max: s });
        }
        if id >= c.vocab_size {
            return Err(Error::TokenOutOfRange {
                token: id,
                vocab: c.vocab_size,
            });
        }
        let (x, rest) = b.dec.split_at_mut(d);
        let (xn, rest) = rest.split_at_mut(d);
        let (qkv, rest) = rest.split_at_mut(3 * d);
        let (ctx, rest) = rest.split_at_mut(d);
        let (hid, rest) = rest.split_at_mut(hd);
        let scores = &mut rest[..s.max(a)];
        self.tokens.row_to_f32(id as usize, x);
        (self.k.add)(x, &self.dec_pos[pos * d..(pos + 1) * d]);
        let scale = 1.0 / libm::sqrtf(hs as f32);
        for (l, layer) in self.dec.iter().enumerate() {
            // Self-attention over positions 0..=pos.
            self.norm_rows(xn, x, layer.v.ln1);
            self.linear(exec, qkv, layer.wqkv, layer.v.bqkv, xn, 1);
            let kv = &mut b.kv[l * 2 * s * d..(l + 1) * 2 * s * d];
            let (kc, vc) = kv.split_at_mut(s * d);
            kc[pos * d..(pos + 1) * d].copy_from_slice(&qkv[d..2 * d]);
            vc[pos * d..(pos + 1) * d].copy_from_slice(&qkv[2 * d..3 * d]);
            attend(
                &qkv[..d],
                kc,
                vc,
                pos + 1,
                d,
                hs,
                nh,
                scale,
                scores,
                ctx,
                self.k,
            );
            self.linear(exec, xn, layer.wo, layer.v.bo, ctx, 1);
            (self.k.add)(x, xn);
            // Cross-attention over the window's encoder output.
            self.norm_rows(xn, x, layer.v.lnc);
            self.linear(exec, qkv[..d].as_mut(), layer.cq, layer.v.bcq, xn, 1);
            let cross = &b.cross[l * 2 * a * d..(l + 1) * 2 * a * d];
            let (ck, cv) = cross.split_at(a * d);
            attend(&qkv[..d], ck, cv, a, d, hs, nh, scale, scores, ctx, self.k);
            self.linear(exec, xn, layer.co, layer.v.bco, ctx, 1);
            (self.k.add)(x, xn);
            // FFN.
            self.norm_rows(xn, x, layer.v.ln2);
            self.linear(exec, hid, layer.w1, layer.v.b1, xn, 1);
            (self.ops.gelu)(hid);
            self.linear(exec, xn, layer.w2, layer.v.b2, hid, 1);
            (self.k.add)(x, xn);
        }
        let (g, bn) = self.dec_norm.split_at(d);
        self.norm_rows(xn, x, (g, bn));
        let k = self.k;
        let tokens = self.tokens;
        let xn = &*xn;
        exec.split(&mut b.logits[..c.vocab_size as usize], 1, &|r0, part| {
            k.matvec(part, tokens.slice_rows(r0, part.len()), xn)
        });
        Ok(())
    }

    /// Greedy decoding of the encoded window: feeds the SOT sequence (and `<|notimestamps|>` without
    /// timestamps), then takes the best allowed token until EOT, the token cap or the context's end.
    /// The sampled tokens (EOT excluded) go to `out`.
    pub fn greedy(
        &self,
        exec: &dyn Exec,
        opts: &DecodeOptions,
        b: &mut Buffers<'_>,
        out: &mut [u32],
    ) -> Result<Decoded> {
        let m = self.meta;
        let s = self.c.seq_len as usize;
        let v = self.c.vocab_size as usize;
        let mut pos = 0;
        let mut no_speech_prob = 0.0;
        let prompt = m.sot_sequence.iter().copied();
        let nt = (!opts.timestamps).then_some(m.no_timestamps);
        for id in prompt.chain(nt) {
            self.step(exec, id, pos, b)?;
            if id == m.sot {
                // Whisper's no-speech probability: <|nospeech|> after SOT, before any filter.
                let l = &b.logits[..v];
                no_speech_prob = libm::expf(l[m.no_speech as usize] - log_sum_exp(l));
            }
            pos += 1;
        }
        let cap = opts.max_tokens.min(out.len()).min(s.saturating_sub(pos));
        let (mut n, mut sum_logprob) = (0, 0.0f32);
        while n < cap {
            let logits = &mut b.logits[..v];
            self.filter(logits, &out[..n], opts);
            let next = argmax(logits);
            sum_logprob += logits[next as usize] - log_sum_exp(logits);
            if next == m.eot {
                break;
            }
            out[n] = next;
            n += 1;
            if pos >= s {
                break;
            }
            self.step(exec, next, pos, b)?;
            pos += 1;
        }
        Ok(Decoded {
            tokens: n,
            no_speech_prob,
            // OpenAI divides by the tokens plus EOT.
            avg_logprob: sum_logprob / (n + 1) as f32,
        })
    }

    /// Whisper's logit filters for the step after `sampled` (the tokens sampled so far this window).
    pub fn filter(&self, logits: &mut [f32], sampled: &[u32], opts: &DecodeOptions) {
        filter(&self.meta, logits, sampled, opts)
    }
}

/// [`Whisper::filter`]: the suppress lists, then in timestamp mode OpenAI's `ApplyTimestampRules`.
pub fn filter(m: &Meta<'_>, logits: &mut [f32], sampled: &[u32], opts: &DecodeOptions) {
    let ninf = f32::NEG_INFINITY;
    let mut kill = |t: u32| {
        if let Some(v) = logits.get_mut(t as usize) {
            *v = ninf;
        }
    };
    if sampled.is_empty() {
        m.suppress_begin.iter().for_each(|&t| kill(t));
    }
    m.suppress.iter().for_each(|&t| kill(t));
    kill(m.no_timestamps);
    let tb = m.timestamp_begin as usize;
    if !opts.timestamps {
        logits[tb..].fill(ninf);
        return;
    }
    // OpenAI's ApplyTimestampRules.
    let is_ts = |t: &u32| *t >= m.timestamp_begin;
    let last_ts = sampled.last().is_some_and(is_ts);
    let penult_ts = sampled.len() < 2 || is_ts(&sampled[sampled.len() - 2]);
    if last_ts {
        if penult_ts {
            logits[tb..].fill(ninf);
        } else {
            logits[..m.eot as usize].fill(ninf);
        }
    }
    if let Some(&t) = sampled.iter().rev().find(|t| is_ts(t)) {
        // Timestamps never go back; after a closed pair the next one starts later still.
        let from = if last_ts && !penult_ts { t } else { t + 1 };
        let len = logits.len();
        logits[tb..(from as usize).clamp(tb, len)].fill(ninf);
    }
    if sampled.is_empty() {
        logits[..tb].fill(ninf);
        let last_allowed = tb + opts.max_initial_timestamp as usize;
        if last_allowed + 1 < logits.len() {
            logits[last_allowed + 1..].fill(ninf);
        }
    }
    // When timestamps together are likelier than any one text token, a timestamp it is.
    let max = logits.iter().copied().fold(ninf, f32::max);
    if max == ninf {
        return;
    }
    let sum: f32 = logits.iter().map(|v| libm::expf(v - max)).sum();
    let lse = max + libm::logf(sum);
    let ts_sum: f32 = logits[tb..].iter().map(|v| libm::expf(v - max)).sum();
    let ts_logprob = if ts_sum > 0.0 {
        max + libm::logf(ts_sum) - lse
    } else {
        ninf
    };
    let max_text = logits[..tb].iter().copied().fold(ninf, f32::max) - lse;
    if ts_logprob > max_text {
        logits[..tb].fill(ninf);
    }
}

/// What [`Whisper::greedy`] found in a window.
#[derive(Clone, Copy, Debug)]
pub struct Decoded {
    /// Tokens written (EOT excluded).
    pub tokens: usize,
    /// The probability of `<|nospeech|>` right after SOT.
    pub no_speech_prob: f32,
    /// The mean log-probability of the sampled tokens (EOT included), after the filters.
    pub avg_logprob: f32,
}

impl Decoded {
    /// Whisper's silence rule: likely no speech and no confident text (thresholds 0.6 and −1, as OpenAI
    /// and faster-whisper use).
    pub fn is_silence(&self) -> bool {
        self.no_speech_prob > 0.6 && self.avg_logprob < -1.0
    }
}

fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + libm::logf(v.iter().map(|x| libm::expf(x - max)).sum::<f32>())
}

/// Multi-head attention of one query `q (D)` over `n` cached rows `keys (n, D)`, `values (n, D)`.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n: usize,
    d: usize,
    hs: usize,
    nh: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    k: &Kernels,
) {
    let s = &mut scores[..n];
    for h in 0..nh {
        let qh = &q[h * hs..(h + 1) * hs];
        for (i, sc) in s.iter_mut().enumerate() {
            let kr = &keys[i * d + h * hs..i * d + (h + 1) * hs];
            *sc = qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        (k.softmax)(s);
        let o = &mut out[h * hs..(h + 1) * hs];
        o.fill(0.0);
        for (i, p) in s.iter().enumerate() {
            let vr = &values[i * d + h * hs..i * d + (h + 1) * hs];
            for (a, b) in o.iter_mut().zip(vr) {
                *a += p * b;
            }
        }
    }
}

/// The index of the largest value (the first of equals); 0 when all are −∞.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    // A toy vocabulary: text 0..10, EOT 10, SOT 11, <|notimestamps|> 12, no-speech 13, timestamps 14..24.
    const SOT_SEQ: [u32; 1] = [11];
    const SUPPRESS: [u32; 2] = [3, 11];
    const BEGIN: [u32; 2] = [0, 10];
    fn meta() -> Meta<'static> {
        Meta {
            sot: 11,
            eot: 10,
            no_timestamps: 12,
            timestamp_begin: 14,
            no_speech: 13,
            sot_sequence: &SOT_SEQ,
            suppress: &SUPPRESS,
            suppress_begin: &BEGIN,
        }
    }
    const V: usize = 24;
    fn allowed(sampled: &[u32], timestamps: bool) -> Vec<u32> {
        let opts = DecodeOptions {
            timestamps,
            max_tokens: 100,
            max_initial_timestamp: 2,
        };
        // Text far likelier than timestamps, so the probability rule does not decide.
        let mut l: Vec<f32> = (0..V).map(|i| if i < 14 { 1.0 } else { -10.0 }).collect();
        filter(&meta(), &mut l, sampled, &opts);
        (0..V as u32)
            .filter(|&i| l[i as usize].is_finite())
            .collect()
    }

    #[test]
    fn meta_round_trips_and_bad_lists_are_refused() {
        let mut w = Vec::new();
        meta().encode(&mut w);
        let m = Meta::parse(&w, V as u32).unwrap();
        assert_eq!((m.sot, m.eot, m.timestamp_begin), (11, 10, 14));
        assert_eq!(m.suppress, &SUPPRESS);
        assert!(Meta::parse(&w, 12).is_err(), "ids beyond the vocabulary");
        for cut in 0..w.len() {
            assert!(Meta::parse(&w[..cut], V as u32).is_err(), "cut at {cut}");
        }
        let mut long = w.clone();
        long.push(0);
        assert!(Meta::parse(&long, V as u32).is_err());
    }

    #[test]
    fn no_timestamps_mode_suppresses_lists_and_every_timestamp() {
        assert_eq!(allowed(&[], false), [1, 2, 4, 5, 6, 7, 8, 9, 13]);
        assert_eq!(allowed(&[5], false), [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 13]);
    }

    #[test]
    fn timestamp_rules_follow_openai() {
        // First: a timestamp no later than max_initial_timestamp (14, 15, 16).
        assert_eq!(allowed(&[], true), [14, 15, 16]);
        // After an opening timestamp and text: text, EOT, or a closing timestamp after the opening (a
        // segment is never empty).
        let after_text = allowed(&[15, 5], true);
        assert!(
            after_text.contains(&5) && after_text.contains(&10),
            "{after_text:?}"
        );
        assert!(
            !after_text.contains(&15) && after_text.contains(&16),
            "{after_text:?}"
        );
        // A closing timestamp right after text: the next is a timestamp or EOT, never text.
        let closing = allowed(&[15, 5, 17], true);
        assert!(
            closing.contains(&10) && closing.contains(&17),
            "{closing:?}"
        );
        assert!(
            closing.iter().all(|&t| t >= 10 && !(14..17).contains(&t)),
            "{closing:?}"
        );
        // Two timestamps in a row: text next, no timestamp.
        let pair = allowed(&[15, 5, 17, 18], true);
        assert!(pair.iter().all(|&t| t < 14), "{pair:?}");
    }

    #[test]
    fn timestamps_win_when_together_likelier_than_any_text_token() {
        let opts = DecodeOptions::default();
        let mut l = vec![0.0f32; V];
        l[5] = 2.0; // the best text token, but ten timestamps at 0.5 each outweigh it
        for v in &mut l[14..] {
            *v = 1.5;
        }
        filter(&meta(), &mut l, &[15, 5], &opts);
        assert!(l[..14].iter().all(|v| *v == f32::NEG_INFINITY));
        // The earliest timestamp still allowed: later than the opening one.
        assert_eq!(argmax(&l), 16);
    }
}
