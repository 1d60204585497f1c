//! Model shapes: the config, the 15 size presets, and the one parameter layout every tool shares.

use crate::{Error, Result};
use enigma_kernels::DType;
use serde::{Deserialize, Serialize};

/// The shape of a Llama-family model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// D: width of the residual stream.
    pub dim: u32,
    /// H: inner width of the SwiGLU FFN.
    pub hidden_dim: u32,
    /// L
    pub n_layers: u32,
    /// NH: query heads; `dim / n_heads` is the head size.
    pub n_heads: u32,
    /// NKV: key/value heads; divides `n_heads` (grouped-query attention).
    pub n_kv_heads: u32,
    /// V
    pub vocab_size: u32,
    /// S: the longest context the model handles (its KV cache length).
    pub seq_len: u32,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// The classifier is the token embedding matrix (no separate `classifier` tensor).
    pub tied_classifier: bool,
}

// Bounds that keep every size computed from a config far from overflow, on 32-bit MCUs too.
const MAX_DIM: u32 = 1 << 16;
const MAX_HIDDEN: u32 = 1 << 18;
const MAX_LAYERS: u32 = 1 << 10;
// The tokenizer's own limit: a config cannot name a vocabulary no tokenizer loader accepts.
const MAX_VOCAB: u32 = crate::tokenizer::MAX_VOCAB as u32;
const MAX_SEQ: u32 = 1 << 20;

impl Config {
    pub fn head_size(&self) -> usize {
        (self.dim / self.n_heads) as usize
    }
    pub fn kv_dim(&self) -> usize {
        self.head_size() * self.n_kv_heads as usize
    }
    /// Query heads that share one key/value head.
    pub fn kv_group(&self) -> usize {
        (self.n_heads / self.n_kv_heads) as usize
    }

    /// Checks that the shape is one the forward pass can run; every loader calls this before using a config.
    pub fn validate(&self) -> Result<()> {
        let bad = |why| Err(Error::BadConfig(why));
        if self.dim == 0 || self.hidden_dim == 0 || self.n_layers == 0 || self.n_heads == 0 {
            return bad("dim, hidden_dim, n_layers and n_heads must be positive");
        }
        if self.n_kv_heads == 0 || self.vocab_size == 0 || self.seq_len == 0 {
            return bad("n_kv_heads, vocab_size and seq_len must be positive");
        }
        if self.dim > MAX_DIM || self.hidden_dim > MAX_HIDDEN || self.n_layers > MAX_LAYERS {
            return bad("dim, hidden_dim or n_layers is implausibly large");
        }
        if self.vocab_size > MAX_VOCAB || self.seq_len > MAX_SEQ {
            return bad("vocab_size or seq_len is implausibly large");
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad("n_heads must divide dim");
        }
        if !self.head_size().is_multiple_of(2) {
            return bad("the head size (dim / n_heads) must be even for RoPE");
        }
        if self.n_kv_heads > self.n_heads || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("n_kv_heads must divide n_heads");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta must be a positive number");
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad("norm_eps must be a positive number");
        }
        Ok(())
    }

    /// Number of parameters (weights and norms).
    pub fn param_count(&self) -> u64 {
        ParamLayout::new(self).iter().map(|t| t.numel()).sum()
    }

    /// Bytes the weights take when every matrix is stored as `dtype` (norms stay f32).
    /// `None` when a matrix's row length is not a whole number of the dtype's blocks.
    pub fn weight_bytes(&self, dtype: DType) -> Option<u64> {
        ParamLayout::new(self).iter().try_fold(0u64, |acc, t| {
            let dt = if t.is_norm() { DType::F32 } else { dtype };
            Some(acc + dt.bytes_for(t.numel())?)
        })
    }

    /// Elements of one KV cache for a full context: keys and values, `2 * (L, NKV, S, HS)`; each is
    /// [`KvType::bytes`] long.
    pub fn kv_cache_len(&self) -> usize {
        2 * self.n_layers as usize * self.seq_len as usize * self.kv_dim()
    }

    /// What running this config needs in memory, by weight dtype and KV cache type: weights, KV cache
    /// for the full context, and scratch for one-token decode.
    pub fn memory_estimate(&self, dtype: DType, kv: KvType) -> Option<MemoryEstimate> {
        Some(MemoryEstimate {
            weights: self.weight_bytes(dtype)?,
            kv_cache: self.kv_cache_len() as u64 * kv.bytes(),
            scratch: crate::model::Scratch::len(self, 1) as u64 * 4,
        })
    }
}

/// The element type of a KV cache. f16 halves the cache's memory and the bytes attention reads per token;
/// keys and values are rounded to f16 (11 significant bits) when stored, and everything computed from them
/// stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    pub const ALL: [KvType; 2] = [KvType::F32, KvType::F16];

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// The name flags use (llama.cpp's `--cache-type-k` names).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    pub fn from_name(name: &str) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Bytes of memory a model needs to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub scratch: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// A named size from SPEC.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub dim: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub hidden_dim: u32,
    pub seq_len: u32,
}

/// The default vocabulary size of a preset model (our own tokenizers).
pub const DEFAULT_VOCAB: u32 = 8000;

macro_rules! presets {
    ($($name:literal $dim:literal $layers:literal $heads:literal $kv:literal $ffn:literal $seq:literal;)*) => {
        /// The 15 presets, smallest first. nano and micro are the microcontroller class; tiny to mini fit a
        /// Pi; small to large a desktop; xl and up want a GPU.
        pub const PRESETS: [Preset; 15] = [$(Preset {
            name: $name, dim: $dim, n_layers: $layers, n_heads: $heads, n_kv_heads: $kv, hidden_dim: $ffn, seq_len: $seq,
        }),*];
    };
}

presets! {
    "nano"     128  4  4  2   384   256;
    "micro"    192  4  4  2   512   384;
    "tiny"     256  6  8  4   704   512;
    "mini"     384  6  6  3  1024   512;
    "small"    512  8  8  4  1408  1024;
    "medium"   768 12 12  4  2048  2048;
    "base"     896 14 14  2  2432  2048;
    "large"   1024 16 16  4  2752  4096;
    "xl"      1536 24 24  6  4096  4096;
    "xxl"     2048 32 32  8  5504  8192;
    "huge"    2560 40 40  8  6848  8192;
    "giant"   4096 32 32  8 10944  8192;
    "colossal" 4096 48 32 8 10944 16384;
    "titan"   6144 48 48 12 16384 16384;
    "omega"   8192 64 64 16 21888 32768;
}

impl Preset {
    pub fn by_name(name: &str) -> Option<Preset> {
        PRESETS
            .into_iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The preset's config with a vocabulary of `vocab_size`: RoPE theta 10000, RMSNorm eps 1e-6, tied classifier.
    pub fn config(&self, vocab_size: u32) -> Config {
        Config {
            dim: self.dim,
            hidden_dim: self.hidden_dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            vocab_size,
            seq_len: self.seq_len,
            rope_theta: 10000.0,
            norm_eps: 1e-6,
            tied_classifier: true,
        }
    }
}

/// The SwiGLU hidden size for `dim` when none is given: `8 * dim / 3` rounded up to a multiple of 64.
pub fn default_hidden_dim(dim: u32) -> u32 {
    (8 * dim).div_ceil(3).div_ceil(64) * 64
}

/// One parameter tensor: its name in `.enigma` files and its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    /// Up to 3 dims; unused trailing dims are 0.
    pub shape: [u64; 3],
}

impl TensorSpec {
    pub fn ndim(&self) -> usize {
        self.shape.iter().take_while(|d| **d != 0).count()
    }
    pub fn numel(&self) -> u64 {
        self.shape[..self.ndim()].iter().product()
    }
    /// Norm weights stay f32 whatever the matrices are quantized to.
    pub fn is_norm(&self) -> bool {
        self.name.ends_with("norm")
    }
    /// Elements in one row (the last dim), the unit quantized blocks are laid along.
    pub fn row_len(&self) -> u64 {
        self.shape[self.ndim() - 1]
    }
}

pub const TOKEN_EMBEDDING: &str = "token_embedding";
pub const ATTN_NORM: &str = "attn_norm";
pub const WQ: &str = "wq";
pub const WK: &str = "wk";
pub const WV: &str = "wv";
pub const WO: &str = "wo";
pub const FFN_NORM: &str = "ffn_norm";
pub const W1: &str = "w1";
pub const W2: &str = "w2";
pub const W3: &str = "w3";
pub const FINAL_NORM: &str = "final_norm";
pub const CLASSIFIER: &str = "classifier";

/// Every parameter tensor of a config, in one fixed order. The `.enigma` writer, the importers, the trainer's
/// flat parameter/gradient/moment buffers and the loader all use this, so they cannot disagree.
/// Per-layer tensors are stacked: `wq` is `(L, D, D)`.
#[derive(Clone, Copy, Debug)]
pub struct ParamLayout {
    specs: [TensorSpec; 12],
    count: usize,
}

impl ParamLayout {
    pub fn new(c: &Config) -> ParamLayout {
        let (d, h, l, v) = (
            c.dim as u64,
            c.hidden_dim as u64,
            c.n_layers as u64,
            c.vocab_size as u64,
        );
        let q = c.head_size() as u64 * c.n_heads as u64;
        let kv = c.kv_dim() as u64;
        let t = |name, shape| TensorSpec { name, shape };
        let specs = [
            t(TOKEN_EMBEDDING, [v, d, 0]),
            t(ATTN_NORM, [l, d, 0]),
            t(WQ, [l, q, d]),
            t(WK, [l, kv, d]),
            t(WV, [l, kv, d]),
            t(WO, [l, d, q]),
            t(FFN_NORM, [l, d, 0]),
            t(W1, [l, h, d]),
            t(W2, [l, d, h]),
            t(W3, [l, h, d]),
            t(FINAL_NORM, [d, 0, 0]),
            t(CLASSIFIER, [v, d, 0]),
        ];
        ParamLayout {
            specs,
            count: if c.tied_classifier { 11 } else { 12 },
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = TensorSpec> + '_ {
        self.specs[..self.count].iter().copied()
    }

    pub fn get(&self, name: &str) -> Option<TensorSpec> {
        self.iter().find(|t| t.name == name)
    }

    /// Offset (in elements) of each tensor in one flat f32 buffer holding all parameters, in layout order.
    pub fn flat_offset(&self, name: &str) -> Option<u64> {
        let mut off = 0;
        for t in self.iter() {
            if t.name == name {
                return Some(off);
            }
            off += t.numel();
        }
        None
    }

    pub fn total_numel(&self) -> u64 {
        self.iter().map(|t| t.numel()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_follows_the_ffn_rule() {
        assert_eq!(PRESETS.len(), 15);
        for p in PRESETS {
            let c = p.config(DEFAULT_VOCAB);
            c.validate().unwrap();
            assert_eq!(p.hidden_dim, default_hidden_dim(p.dim), "{}", p.name);
            assert_eq!(Preset::by_name(p.name), Some(p));
        }
        // Strictly growing parameter counts, smallest first.
        let counts: heapless::Vec<u64, 15> = PRESETS
            .iter()
            .map(|p| p.config(DEFAULT_VOCAB).param_count())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    }

    #[test]
    fn nano_parameter_count_by_hand() {
        let c = Preset::by_name("nano").unwrap().config(8000);
        // embedding 8000*128; per layer: 2 norms of 128, wq/wo 128*128, wk/wv 64*128, 3 FFN matrices 384*128; final norm.
        let per_layer = 2 * 128 + 2 * 128 * 128 + 2 * 64 * 128 + 3 * 384 * 128;
        assert_eq!(c.param_count(), 8000 * 128 + 4 * per_layer + 128);
        let f32_bytes = c.weight_bytes(DType::F32).unwrap();
        assert_eq!(f32_bytes, c.param_count() * 4);
        let q8 = c.weight_bytes(DType::Q8_0).unwrap();
        let norms = (2 * 4 * 128 + 128) as u64;
        assert_eq!(q8, (c.param_count() - norms) / 32 * 34 + norms * 4);
        let est = c.memory_estimate(DType::F16, KvType::F32).unwrap();
        assert_eq!(est.kv_cache, 2 * 4 * 256 * 64 * 4);
        assert!(est.total() > est.weights);
        let half = c.memory_estimate(DType::F16, KvType::F16).unwrap();
        assert_eq!(half.kv_cache, 2 * 4 * 256 * 64 * 2);
        assert_eq!((half.weights, half.scratch), (est.weights, est.scratch));
    }

    #[test]
    fn bad_configs_are_refused() {
        let good = Preset::by_name("nano").unwrap().config(8000);
        let cases: [fn(&mut Config); 6] = [
            |c| c.n_heads = 3,
            |c| c.n_kv_heads = 3,
            |c| c.dim = 0,
            |c| c.norm_eps = f32::NAN,
            |c| c.vocab_size = u32::MAX,
            |c| {
                c.dim = 12;
                c.n_heads = 4
            },
        ];
        for f in cases {
            let mut c = good;
            f(&mut c);
            assert!(matches!(c.validate(), Err(Error::BadConfig(_))), "{c:?}");
        }
    }

    #[test]
    fn layout_offsets_are_contiguous() {
        let mut c = Preset::by_name("micro").unwrap().config(1000);
        c.tied_classifier = false;
        let l = ParamLayout::new(&c);
        assert_eq!(l.iter().count(), 12);
        assert_eq!(l.flat_offset(TOKEN_EMBEDDING), Some(0));
        assert_eq!(l.flat_offset(ATTN_NORM), Some(1000 * 192));
        assert_eq!(
            l.flat_offset(CLASSIFIER).unwrap() + 1000 * 192,
            l.total_numel()
        );
        assert!(l.get(FINAL_NORM).unwrap().is_norm());
        assert!(!l.get(WQ).unwrap().is_norm());
    }
}
