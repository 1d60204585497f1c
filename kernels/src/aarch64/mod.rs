//! The aarch64 tier: NEON for everything, `sdot` (dotprod) for the int8 dots when the CPU has it.
//!
//! The `#[target_feature]` kernels live in `neon` (`gemm_f32` in `gemm128`); this module wraps each in a safe
//! `fn` for the static tables, which `dispatch::kernels_for` hands out only after `has_neon` (and `has_dotprod`
//! for the dotprod table) confirmed the CPU runs them.

mod gemm128;
mod neon;

use crate::dispatch::{Kernels, Tier};
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

/// Safe wrappers, one per kernel of `neon` (or of the module named first). Only the tables below point at them.
macro_rules! wrappers {
    ($($name:ident($($a:ident: $t:ty),*);)*) => {
        wrappers!(neon: $($name($($a: $t),*);)*);
    };
    ($m:ident: $($name:ident($($a:ident: $t:ty),*);)*) => {
        $(
            // NEON is on by default for most aarch64 targets, which makes some calls safe already.
            #[allow(unused_unsafe)]
            pub(crate) fn $name($($a: $t),*) {
                // SAFETY: only this module's tables hold this wrapper, and `kernels_for` hands such a table out
                // only after `has_neon` (and, for the dotprod kernels, `has_dotprod`) passed.
                unsafe { $m::$name($($a),*) }
            }
        )*
    };
}

mod w {
    use super::*;
    wrappers! {
        matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]);
        matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize);
        matvec_f16(out: &mut [f32], w: &[f16], x: &[f32]);
        matvec_bf16(out: &mut [f32], w: &[bf16], x: &[f32]);
        qmatvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q8_0_dotprod(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]);
        qmatvec_q4_0_dotprod(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]);
        rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32);
        softmax(x: &mut [f32]);
        rope(x: &mut [f32], cos_sin: &[f32]);
        silu_mul(a: &mut [f32], b: &[f32]);
        attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32);
        attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]);
        add(acc: &mut [f32], x: &[f32]);
    }
    wrappers! { gemm128:
        gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm);
    }
    #[cfg(test)]
    wrappers! {
        exp_slice(out: &mut [f32], x: &[f32]);
    }
}

#[cfg(test)]
pub(crate) use w::exp_slice;

pub(crate) static NEON: Kernels = Kernels {
    tier: Tier::Neon,
    variant: "neon",
    matvec_f32: w::matvec_f32,
    matmul_f32: w::matmul_f32,
    gemm_f32: w::gemm_f32,
    matvec_f16: w::matvec_f16,
    matvec_bf16: w::matvec_bf16,
    qmatvec_q8_0: w::qmatvec_q8_0,
    qtile_q8_0: w::qmatvec_q8_0,
    qmatvec_q4_0: w::qmatvec_q4_0,
    rmsnorm: w::rmsnorm,
    softmax: w::softmax,
    rope: w::rope,
    silu_mul: w::silu_mul,
    attn_scores: w::attn_scores,
    attn_accum: w::attn_accum,
    add: w::add,
};

pub(crate) static NEON_DOTPROD: Kernels = Kernels {
    variant: "neon+dotprod",
    qmatvec_q8_0: w::qmatvec_q8_0_dotprod,
    qtile_q8_0: w::qmatvec_q8_0_dotprod,
    qmatvec_q4_0: w::qmatvec_q4_0_dotprod,
    ..NEON
};
