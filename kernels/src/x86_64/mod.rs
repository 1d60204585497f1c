//! x86-64 tiers: AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL; VNNI for int8 dots when present).
//!
//! The `#[target_feature]` kernels live in `avx2` and `avx512` (`gemm_f32` in `gemm256` and `gemm512`); this
//! module wraps each in a safe `fn` and puts the wrappers in static tables. The wrappers are private and only
//! reachable through those tables, and `dispatch::kernels_for` hands a table out only after `has_*` confirmed
//! the CPU runs it.

mod attn_f16;
mod avx2;
mod avx512;
mod encoder_avx2;
mod gemm256;
mod gemm512;
#[cfg(feature = "kquants")]
mod kquants_avx2;
mod qgemm_avx2;
mod qgemm_avx512;

use crate::dispatch::{attn_f16_ops, simd_ops, simd_table, wrappers, Kernels, Tier};
#[cfg(feature = "kquants")]
use crate::kquants::{BlockQ4K, BlockQ6K};
use crate::qgemm::{XBlock, QG};
use crate::quant::{BlockQ4_0, BlockQ8_0};
use crate::Gemm;
use attn_f16::{avx2 as avx2_f16, avx512 as avx512_f16};
pub(crate) use encoder_avx2::ENCODER_AVX2;
use half::{bf16, f16};

/// AVX2, FMA and F16C (every AVX2 CPU also has the other two; the f16 weights need F16C).
pub(crate) fn has_avx2() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

/// AVX-512 F, BW and VL on top of [`has_avx2`] (the AVX-512 kernels use AVX2 instructions for 256-bit parts).
pub(crate) fn has_avx512() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        has_avx2()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl"
            ))
    }
}

pub(crate) fn has_avx512vnni() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        has_avx512() && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        has_avx512() && cfg!(target_feature = "avx512vnni")
    }
}

/// The AVX-512 table: with VNNI dots when the CPU has them.
pub(crate) fn avx512_table() -> &'static Kernels {
    if has_avx512vnni() {
        &AVX512_VNNI
    } else {
        &AVX512
    }
}

mod avx2_w {
    use super::*;
    simd_ops!(wrappers!(avx2:));
    #[cfg(feature = "kquants")]
    wrappers! { kquants_avx2:
        qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]);
    }
    wrappers! { gemm256:
        gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm);
    }
    attn_f16_ops!(wrappers!(avx2_f16:));
    wrappers! { qgemm_avx2:
        qgemm_q8_0(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
        qgemm_q4_0(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
        quantize_x_avx2(x: &[f32], out: &mut [XBlock]);
    }
    #[cfg(test)]
    wrappers! { avx2:
        exp_slice(out: &mut [f32], x: &[f32]);
    }
}

mod avx512_w {
    use super::*;
    simd_ops!(wrappers!(avx512:));
    #[cfg(feature = "kquants")]
    wrappers! { kquants_avx2:
        qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]);
    }
    wrappers! { avx512:
        qmatvec_q8_0_vnni(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
        qtile_q8_0_vnni(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q4_0_vnni(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]);
    }
    wrappers! { gemm512:
        gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm);
    }
    attn_f16_ops!(wrappers!(avx512_f16:));
    wrappers! { qgemm_avx512:
        qgemm_q8_0_vnni(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
        qgemm_q4_0_vnni(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
        quantize_x_avx512(x: &[f32], out: &mut [XBlock]);
    }
    #[cfg(test)]
    wrappers! { avx512:
        exp_slice(out: &mut [f32], x: &[f32]);
    }
}

/// The vectorised `exp` of each tier, for the accuracy sweep; `None` where the CPU lacks the tier.
#[cfg(test)]
pub(crate) fn exp_slice(tier: Tier) -> Option<crate::tests::ExpFn> {
    match tier {
        Tier::Avx2 if has_avx2() => Some(avx2_w::exp_slice),
        Tier::Avx512 if has_avx512() => Some(avx512_w::exp_slice),
        _ => None,
    }
}

pub(crate) static AVX2: Kernels = Kernels {
    qgemm_q8_0: Some(avx2_w::qgemm_q8_0),
    qgemm_q4_0: Some(avx2_w::qgemm_q4_0),
    qgemm_quantize: Some(avx2_w::quantize_x_avx2),
    ..simd_ops!(simd_table!(Tier::Avx2, "avx2+fma+f16c", avx2_w;))
};

/// Without VNNI the AVX2 GEMM micro-kernels serve (AVX-512 BW's `vpmaddubsw` would only widen them).
pub(crate) static AVX512: Kernels = Kernels {
    qgemm_q8_0: Some(avx2_w::qgemm_q8_0),
    qgemm_q4_0: Some(avx2_w::qgemm_q4_0),
    qgemm_quantize: Some(avx512_w::quantize_x_avx512),
    ..simd_ops!(simd_table!(Tier::Avx512, "avx512", avx512_w;))
};

pub(crate) static AVX512_VNNI: Kernels = Kernels {
    variant: "avx512+vnni",
    qmatvec_q8_0: avx512_w::qmatvec_q8_0_vnni,
    qtile_q8_0: avx512_w::qtile_q8_0_vnni,
    qmatvec_q4_0: avx512_w::qmatvec_q4_0_vnni,
    qgemm_q8_0: Some(avx512_w::qgemm_q8_0_vnni),
    qgemm_q4_0: Some(avx512_w::qgemm_q4_0_vnni),
    ..AVX512
};
