//! The kernel test suite (tract-linalg style): for every tier variant this crate has on the target, one
//! macro per op family expands into property tests against the scalar reference in `generic` and fixed edge
//! cases. A tier the CPU lacks is `#[ignore = "CPU lacks ..."]` (build.rs probes the CPU), so it shows up
//! as ignored, never as passed; a test that does run first checks run-time detection agrees.
//!
//! Tolerances are `|got - want| <= atol + |want| * rtol`, per op, with inputs in [-1, 1] unless stated:
//!
//! | op | atol | rtol | why |
//! |---|---|---|---|
//! | add | 0 | 0 | one rounding, same as the reference |
//! | matvec/matmul f32, f16, bf16; attn_scores | 1e-4 | 1e-5 | summation order only (widening is exact), d < 300 |
//! | gemm f32 | 1e-5 | 1e-5 | same summation order; FMA rounding only (see `gemm.rs`) |
//! | q8_0 / q4_0 matvec | 1e-4 | 1e-5 | same quantized x, exact integer block sums; only float order differs |
//! | q4_K / q6_K matvec | as q8_0 | 1e-5 | the same; Q4_K's mins are a separate float sum per super-block |
//! | packed q8_0 / q4_0 GEMM | (nb+4)·2ε·Σ\|w·x\| | 1e-5 | the same, per output (`qgemm.rs`) |
//! | rmsnorm, rope, attn_accum | 1e-6 | 1e-5 | a few roundings per element (FMA vs mul+add) |
//! | softmax, silu_mul | 1e-6 | 1e-5 | vectorised exp: relative error ≤ 3e-7 (see `exp_sweep`) |

mod attn_f16;
mod cortex_m;
mod encoder_ops;
mod gemm;
#[cfg(feature = "kquants")]
mod kquants;
mod ops;
mod qgemm;
mod quant;

use crate::Kernels;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::{vec, vec::Vec};

/// Runs a property over `cases` random inputs; a failure panics with proptest's shrunk counterexample.
pub(crate) fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// `|got - want| <= atol + |want| * rtol` elementwise (NaN only matches NaN).
pub(crate) fn close(
    what: &str,
    got: &[f32],
    want: &[f32],
    atol: f32,
    rtol: f32,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths", what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = atol + w.abs() * rtol;
        prop_assert!(
            (g - w).abs() <= tol || (g.is_nan() && w.is_nan()) || g == w,
            "{}[{}]: got {}, want {} (tol {})",
            what,
            i,
            g,
            w,
            tol
        );
    }
    Ok(())
}

pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    if let Err(e) = close(what, got, want, atol, rtol) {
        panic!("{e}");
    }
}

/// Expands every op family's tests for one tier variant, in a module of its own.
/// `$props` is false for the reference itself (comparing it with itself would prove nothing).
macro_rules! tier_tests {
    ($m:ident, $table:expr, $supported:expr, props = $props:tt, $(#[$attr:meta])*) => {
        mod $m {
            #[cfg(feature = "kquants")]
            use super::kquants;
            use super::{attn_f16, gemm, ops, qgemm};
            use crate::Kernels;

            fn k() -> &'static Kernels {
                assert!(
                    $supported,
                    "build.rs said this CPU runs the tier, but run-time detection disagrees"
                );
                $table
            }

            ops::edge_tests!($(#[$attr])*);
            $(#[$attr])* #[test] fn gemm_edges() { gemm::edge_gemm(k()) }
            $(#[$attr])* #[test] fn attention_f16_edges() { attn_f16::edge_attn_f16(k()) }
            $(#[$attr])* #[test] fn attention_f16() { attn_f16::prop_attn_f16(k()) }
            #[cfg(feature = "kquants")]
            $(#[$attr])* #[test] fn kquants_extremes() { kquants::edge_kquants_extremes(k()) }
            #[cfg(feature = "kquants")]
            $(#[$attr])* #[test] fn kquants_matvec() { kquants::prop_matvec_kquants(k()) }
            #[cfg(feature = "kquants")]
            $(#[$attr])* #[test] fn kquants_stride() { kquants::prop_kquants_stride(k()) }
            $(#[$attr])* #[test] fn qgemm_extremes() { qgemm::edge_qgemm_extremes(k()) }
            $(#[$attr])* #[test] fn qgemm() { qgemm::prop_qgemm(k()) }
            $(#[$attr])* #[test] fn qgemm_chunks() { qgemm::prop_qgemm_chunks(k()) }
            $(#[$attr])* #[test] fn qgemm_matvec() { qgemm::prop_qgemm_matvec(k()) }
            $(#[$attr])* #[test] fn qgemm_quantize_x() { qgemm::prop_quantize_x(k()) }
            ops::prop_tests!($props, $(#[$attr])*);
        }
    };
}

tier_tests!(generic, &crate::dispatch::GENERIC, true, props = false,);

// The Cortex-M table in its portable form (the asm's arithmetic in Rust); on the MCU the firmware's
// token-equality tests under QEMU run the asm.
tier_tests!(cortex_m_portable, &crate::arm::CORTEX_M, true, props = true,);

#[cfg(target_arch = "x86_64")]
tier_tests!(
    avx2,
    &crate::x86_64::AVX2,
    crate::x86_64::has_avx2(),
    props = true,
    #[cfg_attr(not(enigma_cpu_avx2), ignore = "CPU lacks avx2+fma+f16c")]
);
#[cfg(target_arch = "x86_64")]
tier_tests!(
    avx512,
    &crate::x86_64::AVX512,
    crate::x86_64::has_avx512(),
    props = true,
    #[cfg_attr(not(enigma_cpu_avx512), ignore = "CPU lacks avx512f+bw+vl")]
);
#[cfg(target_arch = "x86_64")]
tier_tests!(
    avx512vnni,
    &crate::x86_64::AVX512_VNNI,
    crate::x86_64::has_avx512vnni(),
    props = true,
    #[cfg_attr(not(enigma_cpu_avx512vnni), ignore = "CPU lacks avx512vnni")]
);
#[cfg(target_arch = "aarch64")]
tier_tests!(
    neon,
    &crate::aarch64::NEON,
    crate::aarch64::has_neon(),
    props = true,
    #[cfg_attr(not(enigma_cpu_neon), ignore = "CPU lacks neon")]
);
#[cfg(target_arch = "aarch64")]
tier_tests!(
    neon_dotprod,
    &crate::aarch64::NEON_DOTPROD,
    crate::aarch64::has_dotprod(),
    props = true,
    #[cfg_attr(not(enigma_cpu_dotprod), ignore = "CPU lacks dotprod")]
);

/// `out (n) = e^x (n)` of one tier.
pub(crate) type ExpFn = fn(&mut [f32], &[f32]);

/// The vectorised exp of a tier against f64 `exp` over its whole useful range; returns the worst relative error.
#[allow(dead_code)]
fn exp_sweep(exp: ExpFn, lo: f32) -> f64 {
    let x: Vec<f32> = (0..)
        .map(|i| lo + i as f32 * 1.0e-3)
        .take_while(|v| *v <= 88.0)
        .collect();
    let mut y = vec![0.0f32; x.len()];
    exp(&mut y, &x);
    let mut worst = 0.0f64;
    for (v, e) in x.iter().zip(&y) {
        let want = (*v as f64).exp();
        worst = worst.max(((*e as f64) - want).abs() / want);
    }
    worst
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(not(enigma_cpu_avx2), ignore = "CPU lacks avx2+fma+f16c")]
fn exp_sweep_avx2() {
    let f = crate::x86_64::exp_slice(crate::Tier::Avx2).expect("detected avx2");
    let worst = exp_sweep(f, -87.0);
    assert!(worst <= 3e-7, "avx2 exp relative error {worst:e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(not(enigma_cpu_avx512), ignore = "CPU lacks avx512f+bw+vl")]
fn exp_sweep_avx512() {
    let f = crate::x86_64::exp_slice(crate::Tier::Avx512).expect("detected avx512");
    let worst = exp_sweep(f, -87.0);
    assert!(worst <= 3e-7, "avx512 exp relative error {worst:e}");
}

#[cfg(target_arch = "aarch64")]
#[test]
#[cfg_attr(not(enigma_cpu_neon), ignore = "CPU lacks neon")]
fn exp_sweep_neon() {
    let worst = exp_sweep(crate::aarch64::exp_slice, -87.0);
    assert!(worst <= 3e-7, "neon exp relative error {worst:e}");
}

/// The dispatch itself: every tier the CPU has is handed out, the others are refused with `Unsupported`.
#[test]
fn kernels_for_matches_detection() {
    for t in crate::Tier::ALL {
        match crate::kernels_for(t) {
            Ok(k) => {
                assert!(t.supported());
                assert_eq!(k.tier, t);
            }
            Err(e) => {
                assert!(!t.supported());
                assert_eq!(e, crate::TierError::Unsupported(t));
            }
        }
        assert_eq!(crate::Tier::from_name(t.name()), Some(t));
    }
    assert_eq!(crate::Tier::from_name("sse9"), None);
    let best: &Kernels = crate::kernels();
    assert!(best.tier.supported());
}
