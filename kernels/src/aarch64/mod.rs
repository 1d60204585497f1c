//! The aarch64 tier: NEON for everything, `sdot` (dotprod) for the int8 dots when the CPU has it.
//!
//! The `#[target_feature]` kernels live in `neon` (`gemm_f32` in `gemm128`); this module wraps each in a safe
//! `fn` for the static tables, which `dispatch::kernels_for` hands out only after `has_neon` (and `has_dotprod`
//! for the dotprod table) confirmed the CPU runs them.

mod attn_f16;
mod gemm128;
#[cfg(feature = "kquants")]
mod kquants_neon;
mod neon;
mod qgemm_neon;

use crate::dispatch::{attn_f16_ops, simd_ops, simd_table, wrappers, Kernels, Tier};
#[cfg(feature = "kquants")]
use crate::kquants::{BlockQ4K, BlockQ6K};
use crate::qgemm::{XBlock, QG};
use crate::quant::{BlockQ4_0, BlockQ8_0};
use crate::Gemm;
use half::{bf16, f16};

pub(crate) fn has_neon() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(target_feature = "neon")
    }
}

pub(crate) fn has_dotprod() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        has_neon() && cfg!(target_feature = "dotprod")
    }
}

/// The Neon table: with `sdot` dots when the CPU has dotprod.
pub(crate) fn neon_table() -> &'static Kernels {
    if has_dotprod() {
        &NEON_DOTPROD
    } else {
        &NEON
    }
}

mod w {
    use super::*;
    simd_ops!(wrappers!(neon:));
    wrappers! { neon:
        qmatvec_q8_0_dotprod(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q4_0_dotprod(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]);
    }
    #[cfg(feature = "kquants")]
    wrappers! { kquants_neon:
        qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]);
    }
    wrappers! { gemm128:
        gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm);
    }
    attn_f16_ops!(wrappers!(attn_f16:));
    wrappers! { qgemm_neon:
        qgemm_q8_0_dotprod(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
        qgemm_q4_0_dotprod(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);
    }
    #[cfg(test)]
    wrappers! { neon:
        exp_slice(out: &mut [f32], x: &[f32]);
    }
}

#[cfg(test)]
pub(crate) use w::exp_slice;

pub(crate) static NEON: Kernels = simd_ops!(simd_table!(Tier::Neon, "neon", w;));

pub(crate) static NEON_DOTPROD: Kernels = Kernels {
    variant: "neon+dotprod",
    qmatvec_q8_0: w::qmatvec_q8_0_dotprod,
    qtile_q8_0: w::qmatvec_q8_0_dotprod,
    qmatvec_q4_0: w::qmatvec_q4_0_dotprod,
    qgemm_q8_0: Some(w::qgemm_q8_0_dotprod),
    qgemm_q4_0: Some(w::qgemm_q4_0_dotprod),
    ..NEON
};
