//! The table of kernels for one CPU tier, filled once at start (tract-linalg's "plug" design).
//!
//! Each arch module builds its tables from safe wrappers around `#[target_feature]` functions; a table is
//! only handed out by [`kernels_for`] after the tier's features were detected (std) or are known at compile
//! time (no_std), which is what makes those wrappers sound to call.

use crate::gemm::Gemm;
#[cfg(feature = "kquants")]
use crate::kquants::{BlockQ4K, BlockQ6K};
use crate::qgemm::{self, PackedFormat, QGemmMicro, QuantizeX};
use crate::quant::{BlockQ4_0, BlockQ8_0};
use crate::{frame, generic, WeightView};
use half::{bf16, f16};

/// A CPU tier: a set of instruction-set extensions a table of kernels is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Scalar Rust: the reference, and what runs where nothing else does.
    Generic,
    /// Cortex-M (Armv7E-M: SMLAD for int8 dots; 4-accumulator f32 for the FPU).
    CortexM,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F, BW and VL (and VNNI's `vpdpbusd` for int8 dots when the CPU has it).
    Avx512,
    /// aarch64 NEON (and `sdot` for int8 dots when the CPU has dotprod).
    Neon,
}

impl Tier {
    /// Every tier, worst first: the best supported one is the last that [`Tier::supported`] accepts.
    pub const ALL: [Tier; 5] = [
        Tier::Generic,
        Tier::CortexM,
        Tier::Avx2,
        Tier::Avx512,
        Tier::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Generic => "generic",
            Tier::CortexM => "cortex-m",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether this CPU can run the tier (always true for `generic`). With std this asks the CPU; without
    /// it, only what the build's `target_feature`s promise counts.
    pub fn supported(self) -> bool {
        match self {
            Tier::Generic => true,
            Tier::CortexM => cfg!(target_arch = "arm"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => crate::x86_64::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => crate::x86_64::has_avx512(),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::aarch64::has_neon(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Why a requested tier cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierError {
    Unknown,
    Unsupported(Tier),
}

impl core::fmt::Display for TierError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TierError::Unknown => {
                f.write_str("unknown kernel tier (known: ")?;
                for (i, t) in Tier::ALL.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(t.name())?;
                }
                f.write_str(")")
            }
            TierError::Unsupported(t) => write!(f, "this CPU cannot run the {} kernels", t.name()),
        }
    }
}

/// One function per op. Shapes are those of the matching functions in [`generic`].
pub struct Kernels {
    pub tier: Tier,
    /// The instruction sets this table really uses, e.g. `"avx512+vnni"` (a tier may fill in sub-variants).
    pub variant: &'static str,
    /// `out (n) = w (n, d) · x (d)`
    pub matvec_f32: fn(out: &mut [f32], w: &[f32], x: &[f32]),
    /// `out (t, n) = x (t, d) · w (n, d)ᵀ`
    pub matmul_f32: fn(out: &mut [f32], w: &[f32], x: &[f32], t: usize),
    /// `c (m, n) += a (m, k) · b (k, n)`, strides in [`Gemm`]: training's products, `Aᵀ` included
    pub gemm_f32: fn(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm),
    /// `out (n) = w (n, d) · x (d)`, f16 weights
    pub matvec_f16: fn(out: &mut [f32], w: &[f16], x: &[f32]),
    /// `out (n) = w (n, d) · x (d)`, bf16 weights
    pub matvec_bf16: fn(out: &mut [f32], w: &[bf16], x: &[f32]),
    /// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q8_0 weights and q8_0 activations
    pub qmatvec_q8_0: frame::QMatvec<BlockQ8_0>,
    /// `qmatvec_q8_0` for weights already in cache: prefill runs it on L2-sized blocks of rows that every
    /// token of a tile reuses, so compute, not memory, bounds it (tiers without a separate one repeat
    /// `qmatvec_q8_0`)
    pub qtile_q8_0: frame::QMatvec<BlockQ8_0>,
    /// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q4_0 weights and q8_0 activations
    pub qmatvec_q4_0: frame::QMatvec<BlockQ4_0>,
    /// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q4_K weights and q8_0 activations
    #[cfg(feature = "kquants")]
    pub qmatvec_q4_k: frame::QMatvec<BlockQ4K>,
    /// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q6_K weights and q8_0 activations
    #[cfg(feature = "kquants")]
    pub qmatvec_q6_k: frame::QMatvec<BlockQ6K>,
    /// `out (d) = weight (d) * x (d) / rms(x)`
    pub rmsnorm: fn(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32),
    /// in-place softmax of `x (n)`
    pub softmax: fn(x: &mut [f32]),
    /// rotate `x (n_heads, head_size)` by `cos_sin (head_size / 2, 2)`
    pub rope: fn(x: &mut [f32], cos_sin: &[f32]),
    /// `a (n) = silu(a) * b (n)`
    pub silu_mul: fn(a: &mut [f32], b: &[f32]),
    /// `scores (t) = keys (t, hs) · q (hs) * scale`
    pub attn_scores: fn(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32),
    /// `out (hs) = probs (t) · values (t, hs)`
    pub attn_accum: fn(out: &mut [f32], probs: &[f32], values: &[f32]),
    /// `attn_scores` over an f16 KV cache (`keys` widened to f32)
    pub attn_scores_f16: fn(scores: &mut [f32], q: &[f32], keys: &[f16], scale: f32),
    /// `attn_accum` over an f16 KV cache (`values` widened to f32)
    pub attn_accum_f16: fn(out: &mut [f32], probs: &[f32], values: &[f16]),
    /// `acc (n) += x (n)`
    pub add: fn(acc: &mut [f32], x: &[f32]),
    /// int8 GEMM micro-kernel of 16 packed q8_0 rows × tokens ([`qgemm`]); `None` where the tier has none,
    /// which tells hosts not to pack (packed views still work, through the scalar reference)
    pub qgemm_q8_0: Option<QGemmMicro>,
    /// int8 GEMM micro-kernel of 16 packed q4_0 rows × tokens ([`qgemm`]), as `qgemm_q8_0`
    pub qgemm_q4_0: Option<QGemmMicro>,
    /// The GEMM's activation quantizer, bit for bit [`qgemm::quantize_x`]; `None`: that scalar one
    pub qgemm_quantize: Option<QuantizeX>,
}

impl Kernels {
    /// `out (n) = w (n, d) · x (d)` for any weight dtype. Quantized weights quantize `x` to q8_0 first.
    pub fn matvec(&self, out: &mut [f32], w: WeightView<'_>, x: &[f32]) {
        match w {
            WeightView::F32 { data, .. } => (self.matvec_f32)(out, data, x),
            WeightView::F16 { data, .. } => (self.matvec_f16)(out, data, x),
            WeightView::BF16 { data, .. } => (self.matvec_bf16)(out, data, x),
            WeightView::Q8_0 { blocks, .. } => {
                frame::matvec_quantized(out, blocks, x, self.qmatvec_q8_0)
            }
            WeightView::Q4_0 { blocks, .. } => {
                frame::matvec_quantized(out, blocks, x, self.qmatvec_q4_0)
            }
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, .. } => {
                frame::matvec_quantized(out, blocks, x, self.qmatvec_q4_k)
            }
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, .. } => {
                frame::matvec_quantized(out, blocks, x, self.qmatvec_q6_k)
            }
            WeightView::Q8_0x16(_) | WeightView::Q4_0x16(_) => self.matmul(out, w, x, 1),
        }
    }

    /// The packed GEMM's activation quantizer.
    pub fn quantize_x(&self) -> QuantizeX {
        self.qgemm_quantize.unwrap_or(qgemm::quantize_x)
    }

    /// `out (t, n) = x (t, d) · w (n, d)ᵀ` for any weight dtype.
    pub fn matmul(&self, out: &mut [f32], w: WeightView<'_>, x: &[f32], t: usize) {
        match w {
            WeightView::F32 { data, .. } => (self.matmul_f32)(out, data, x, t),
            WeightView::Q8_0 { blocks, .. } => {
                frame::matmul_quantized(out, blocks, x, t, [self.qmatvec_q8_0, self.qtile_q8_0])
            }
            WeightView::Q4_0 { blocks, .. } => {
                frame::matmul_quantized(out, blocks, x, t, [self.qmatvec_q4_0; 2])
            }
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, .. } => {
                frame::matmul_quantized(out, blocks, x, t, [self.qmatvec_q4_k; 2])
            }
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, .. } => {
                frame::matmul_quantized(out, blocks, x, t, [self.qmatvec_q6_k; 2])
            }
            WeightView::Q8_0x16(p) => {
                let micro = self.qgemm_q8_0.unwrap_or(qgemm::micro_q8_0);
                qgemm::qgemm(out, p, PackedFormat::Q8_0, x, t, micro, self.quantize_x())
            }
            WeightView::Q4_0x16(p) => {
                let micro = self.qgemm_q4_0.unwrap_or(qgemm::micro_q4_0);
                qgemm::qgemm(out, p, PackedFormat::Q4_0, x, t, micro, self.quantize_x())
            }
            // f16/bf16 are bound by widening weights, not by memory, so token by token loses little.
            _ => {
                if t == 0 || out.is_empty() {
                    return;
                }
                let (n, d) = (out.len() / t, x.len() / t);
                for i in 0..t {
                    self.matvec(&mut out[i * n..(i + 1) * n], w, &x[i * d..(i + 1) * d]);
                }
            }
        }
    }
}

/// Hands the ops every SIMD tier writes itself, with their signatures, to another macro after its own
/// arguments: `simd_ops!(wrappers!(avx2:))` is `wrappers!(avx2: matvec_f32(out: &mut [f32], ...); ...)`. One
/// list for every tier's wrappers and table, so adding an op is one line here.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! simd_ops {
    ($then:ident!($($pre:tt)*)) => {
        $then! { $($pre)*
            matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]);
            matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize);
            matvec_f16(out: &mut [f32], w: &[f16], x: &[f32]);
            matvec_bf16(out: &mut [f32], w: &[bf16], x: &[f32]);
            qmatvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
            qmatvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]);
            rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32);
            softmax(x: &mut [f32]);
            rope(x: &mut [f32], cos_sin: &[f32]);
            silu_mul(a: &mut [f32], b: &[f32]);
            attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32);
            attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]);
            add(acc: &mut [f32], x: &[f32]);
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use simd_ops;

/// [`simd_ops`] for the attention pair over an f16 KV cache, which each SIMD tier keeps in a file of its own
/// (`attn_f16.rs`) rather than in its module of kernels.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! attn_f16_ops {
    ($then:ident!($($pre:tt)*)) => {
        $then! { $($pre)*
            attn_scores_f16(scores: &mut [f32], q: &[f32], keys: &[f16], scale: f32);
            attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[f16]);
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use attn_f16_ops;

/// Safe wrappers, one per `#[target_feature]` kernel of module `$m`, for a tier's static tables: only those
/// tables point at them.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! wrappers {
    ($m:ident: $($name:ident($($a:ident: $t:ty),*);)*) => {
        $(
            // Where the build already enables the features (NEON on most aarch64 targets, or a
            // `-C target-cpu` that has them), the call needs no `unsafe`.
            #[allow(unused_unsafe)]
            pub(crate) fn $name($($a: $t),*) {
                // SAFETY: only the tier's tables hold this wrapper, and `kernels_for` hands such a table out only
                // after the tier's `has_*` checks passed, so the CPU has every feature the kernel enables.
                unsafe { $m::$name($($a),*) }
            }
        )*
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use wrappers;

/// A SIMD tier's table from its module of wrappers `$w`: every op of [`simd_ops`] (whose list follows the
/// `;`), `gemm_f32` and the pair of [`attn_f16_ops`], with the streaming q8_0 kernel also as `qtile_q8_0` (a tier with a separate one for
/// weights in cache overrides it).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! simd_table {
    ($tier:expr, $variant:expr, $w:ident; $($op:ident($($a:ident: $t:ty),*);)*) => {
        $crate::Kernels {
            tier: $tier,
            variant: $variant,
            gemm_f32: $w::gemm_f32,
            attn_scores_f16: $w::attn_scores_f16,
            attn_accum_f16: $w::attn_accum_f16,
            qtile_q8_0: $w::qmatvec_q8_0,
            #[cfg(feature = "kquants")]
            qmatvec_q4_k: $w::qmatvec_q4_k,
            #[cfg(feature = "kquants")]
            qmatvec_q6_k: $w::qmatvec_q6_k,
            qgemm_q8_0: None,
            qgemm_q4_0: None,
            qgemm_quantize: None,
            $($op: $w::$op,)*
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use simd_table;

pub(crate) static GENERIC: Kernels = Kernels {
    tier: Tier::Generic,
    variant: "generic",
    matvec_f32: generic::matvec_f32,
    matmul_f32: generic::matmul_f32,
    gemm_f32: generic::gemm_f32,
    matvec_f16: generic::matvec_f16,
    matvec_bf16: generic::matvec_bf16,
    qmatvec_q8_0: generic::qmatvec_q8_0,
    qtile_q8_0: generic::qmatvec_q8_0,
    qmatvec_q4_0: generic::qmatvec_q4_0,
    #[cfg(feature = "kquants")]
    qmatvec_q4_k: crate::kquants::qmatvec_q4_k,
    #[cfg(feature = "kquants")]
    qmatvec_q6_k: crate::kquants::qmatvec_q6_k,
    rmsnorm: generic::rmsnorm,
    softmax: generic::softmax,
    rope: generic::rope,
    silu_mul: generic::silu_mul,
    attn_scores: generic::attn_scores,
    attn_accum: generic::attn_accum,
    attn_scores_f16: generic::attn_scores_f16,
    attn_accum_f16: generic::attn_accum_f16,
    add: generic::add,
    qgemm_q8_0: None,
    qgemm_q4_0: None,
    qgemm_quantize: None,
};

/// The table of one tier, if this CPU supports it. Tests use this to run every tier the CPU has.
pub fn kernels_for(tier: Tier) -> Result<&'static Kernels, TierError> {
    if !tier.supported() {
        return Err(TierError::Unsupported(tier));
    }
    match tier {
        Tier::Generic => Ok(&GENERIC),
        #[cfg(target_arch = "arm")]
        Tier::CortexM => Ok(&crate::arm::CORTEX_M),
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => Ok(&crate::x86_64::AVX2),
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => Ok(crate::x86_64::avx512_table()),
        #[cfg(target_arch = "aarch64")]
        Tier::Neon => Ok(crate::aarch64::neon_table()),
        #[allow(unreachable_patterns)]
        _ => Err(TierError::Unsupported(tier)),
    }
}

/// The best tier for this CPU, or the one named by `ENIGMA_KERNELS` when std is on.
///
/// An unknown or unsupported `ENIGMA_KERNELS` value is an error here; [`kernels`] never fails.
#[cfg(feature = "std")]
pub fn kernels_from_env() -> Result<&'static Kernels, TierError> {
    match std::env::var("ENIGMA_KERNELS") {
        Ok(name) if !name.is_empty() => {
            kernels_for(Tier::from_name(&name).ok_or(TierError::Unknown)?)
        }
        _ => Ok(best()),
    }
}

fn best() -> &'static Kernels {
    Tier::ALL
        .into_iter()
        .rev()
        .find_map(|t| kernels_for(t).ok())
        .unwrap_or(&GENERIC)
}

/// The table the engine uses: the best supported tier (honouring a valid `ENIGMA_KERNELS` on std).
pub fn kernels() -> &'static Kernels {
    #[cfg(feature = "std")]
    {
        static CHOSEN: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
        CHOSEN.get_or_init(|| kernels_from_env().unwrap_or_else(|_| best()))
    }
    #[cfg(not(feature = "std"))]
    {
        best()
    }
}
