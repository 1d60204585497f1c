//! LayerNorm and GELU of every encoder table this CPU runs, against the scalar reference in
//! `encoder_ops`. Tolerances (`|got - want| <= atol + |want| * rtol`):
//!
//! | op | atol | rtol | why |
//! |---|---|---|---|
//! | layernorm | 1e-5 | 1e-5 | summation order of mean and variance, FMA; outputs are O(1..10) |
//! | gelu | 1e-6 | 2e-6 | rational erf: ≤ 5e-7 absolute from libm's erff (see `erf_sweep`) |

use super::{check, close};
use crate::encoder_ops::{self, erf, EncoderOps};
use proptest::prelude::*;
use std::{vec, vec::Vec};

/// Every table to test: the reference itself (for the edge cases) and each SIMD one this CPU runs.
fn tables() -> Vec<&'static EncoderOps> {
    // Only x86-64 has SIMD tables to add yet.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut t = vec![&encoder_ops::GENERIC];
    #[cfg(target_arch = "x86_64")]
    if crate::x86_64::has_avx2() {
        t.push(&crate::x86_64::ENCODER_AVX2);
    }
    t
}

fn row(max: usize, scale: f32) -> impl Strategy<Value = Vec<f32>> {
    (1..max).prop_flat_map(move |d| proptest::collection::vec(-scale..scale, d))
}

#[test]
fn simd_tables_exist_where_the_cpu_has_them() {
    #[cfg(all(target_arch = "x86_64", enigma_cpu_avx2))]
    assert!(tables().iter().any(|t| t.variant == "avx2+fma"));
    assert_eq!(tables()[0].variant, "generic");
}

#[test]
fn layernorm_matches_reference() {
    for t in tables().into_iter().skip(1) {
        check(
            256,
            row(400, 8.0).prop_flat_map(|x| {
                let d = x.len();
                (
                    Just(x),
                    proptest::collection::vec(-2.0f32..2.0, d),
                    proptest::collection::vec(-1.0f32..1.0, d),
                )
            }),
            |(x, w, b)| {
                let mut want = vec![0.0; x.len()];
                let mut got = vec![0.0; x.len()];
                encoder_ops::layernorm(&mut want, &x, &w, &b, 1e-12);
                (t.layernorm)(&mut got, &x, &w, &b, 1e-12);
                close(t.variant, &got, &want, 1e-5, 1e-5)
            },
        );
    }
}

#[test]
fn gelu_matches_reference() {
    for t in tables().into_iter().skip(1) {
        check(256, row(300, 12.0), |x| {
            let mut want = x.clone();
            let mut got = x.clone();
            encoder_ops::gelu(&mut want);
            (t.gelu)(&mut got);
            close(t.variant, &got, &want, 1e-6, 2e-6)
        });
    }
}

#[test]
fn erf_sweep() {
    // Every 1/4096 over [-6, 6]: the rational form the SIMD tiers use stays within 5e-7 of libm's erff.
    let mut worst = 0.0f32;
    for i in -6 * 4096..=6 * 4096 {
        let x = i as f32 / 4096.0;
        worst = worst.max((erf::approx(x) - libm::erff(x)).abs());
    }
    assert!(worst <= 5e-7, "erf approximation off by {worst}");
}

#[test]
fn edges() {
    for t in tables() {
        // A constant row has no variance: the output is the bias, not NaN (eps keeps the root positive).
        let mut out = [0.0f32; 11];
        (t.layernorm)(&mut out, &[3.5; 11], &[2.0; 11], &[0.25; 11], 1e-12);
        assert!(out.iter().all(|v| *v == 0.25), "{}: {out:?}", t.variant);
        // Standardised: mean 0, variance 1 with unit weight and zero bias.
        let x: Vec<f32> = (0..37).map(|i| (i * i) as f32 * 0.1 - 3.0).collect();
        let mut out = vec![0.0; 37];
        (t.layernorm)(&mut out, &x, &[1.0; 37], &[0.0; 37], 1e-12);
        let mean = out.iter().sum::<f32>() / 37.0;
        let var = out.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 37.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{}",
            t.variant
        );
        // GELU: 0 at 0, identity far right, 0 far left, Φ(1) at 1; tails of every length.
        for n in [1usize, 7, 8, 9, 17] {
            let mut v: Vec<f32> = (0..n).map(|i| [0.0, 1.0, 50.0, -50.0][i % 4]).collect();
            (t.gelu)(&mut v);
            for (i, g) in v.iter().enumerate() {
                let want: f32 = [0.0, 0.841_344_7, 50.0, 0.0][i % 4];
                let tol = 1e-6 + want.abs() * 2e-6;
                assert!((g - want).abs() <= tol, "{} gelu[{i}] = {g}", t.variant);
            }
        }
        let mut empty: [f32; 0] = [];
        (t.gelu)(&mut empty);
        (t.layernorm)(&mut [], &[], &[], &[], 1e-5);
    }
}
