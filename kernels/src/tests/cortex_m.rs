//! The Cortex-M kernels, built here in their portable form (the same code as on the MCU, with `SXTB16` and
//! `SMLAD` spelled out in Rust), against the scalar reference. On thumbv7em the firmware runs them on QEMU.

use super::{check, close};
use crate::arm;
use crate::generic as g;
use crate::quant::{quantize_q8_0, BlockQ4_0, BlockQ8_0, QK};
use half::f16;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::{vec, vec::Vec};

fn q8(n: usize) -> impl Strategy<Value = Vec<BlockQ8_0>> {
    pvec(
        (any::<[i8; QK]>(), 0.001f32..2.0).prop_map(|(qs, d)| BlockQ8_0 {
            d: f16::from_f32(d).to_bits(),
            qs,
        }),
        n,
    )
}

fn q4(n: usize) -> impl Strategy<Value = Vec<BlockQ4_0>> {
    pvec(
        (any::<[u8; QK / 2]>(), 0.001f32..2.0).prop_map(|(qs, d)| BlockQ4_0 {
            d: f16::from_f32(d).to_bits(),
            qs,
        }),
        n,
    )
}

/// The integer block sums are exact, extremes (-128 · -128, nibble 0 · -128) included, and the float
/// operations per block are the reference's in its order: the outputs are the reference's bits.
#[test]
fn int8_qmatvecs_equal_reference_bit_for_bit() {
    let s = (0usize..7, 0usize..6, 0usize..3).prop_flat_map(|(n, nb, extra)| {
        let stride = nb + extra;
        (
            Just((n, stride)),
            q8(n * stride),
            q4(n * stride),
            q8(nb),
            pvec(-4.0f32..4.0, n),
        )
    });
    check(256, s, |((n, stride), w8, w4, xq, init)| {
        let (mut got, mut want) = (init.clone(), init.clone());
        arm::qmatvec_q8_0(&mut got, &w8, stride, &xq);
        g::qmatvec_q8_0(&mut want, &w8, stride, &xq);
        prop_assert_eq!(bits(&got), bits(&want), "q8_0, {} rows", n);
        let (mut got, mut want) = (init.clone(), init);
        arm::qmatvec_q4_0(&mut got, &w4, stride, &xq);
        g::qmatvec_q4_0(&mut want, &w4, stride, &xq);
        prop_assert_eq!(bits(&got), bits(&want), "q4_0, {} rows", n);
        Ok(())
    });
    let one = f16::from_f32(1.0).to_bits();
    let x = BlockQ8_0 {
        d: one,
        qs: [-128; QK],
    };
    let mut out = [0.0f32];
    arm::qmatvec_q8_0(&mut out, &[x], 1, &[x]);
    assert_eq!(out[0], 32.0 * 16384.0);
    // Nibble 0 is -8: 32 · (-8) · (-128).
    let w = BlockQ4_0 {
        d: one,
        qs: [0; QK / 2],
    };
    let mut out = [0.0f32];
    arm::qmatvec_q4_0(&mut out, &[w], 1, &[x]);
    assert_eq!(out[0], 32.0 * 1024.0);
    // Nibble 15 (7) in the high half only, against a ramp: the two halves land in the right places.
    let w = BlockQ4_0 {
        d: one,
        qs: [0xf8; QK / 2],
    };
    let mut ramp = BlockQ8_0::ZERO;
    ramp.d = one;
    for (i, q) in ramp.qs.iter_mut().enumerate() {
        *q = i as i8 - 16;
    }
    let (mut got, mut want) = ([0.0f32], [0.0f32]);
    arm::qmatvec_q4_0(&mut got, &[w], 1, &[ramp]);
    g::qmatvec_q4_0(&mut want, &[w], 1, &[ramp]);
    assert_eq!(got, want);
    assert_eq!(got[0], (0..16).map(|i| 7.0 * i as f32).sum::<f32>());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn qmatvec_and_matvec_f32_match_reference() {
    let s = (0usize..9, 0usize..70).prop_flat_map(|(n, d)| {
        (
            Just(n),
            pvec(-1.0f32..1.0, n * d),
            pvec(-1.0f32..1.0, d),
            q8(n * 3),
            pvec(-1.0f32..1.0, 3 * QK),
        )
    });
    check(64, s, |(n, w, x, wq, xf)| {
        let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
        arm::matvec_f32(&mut got, &w, &x);
        g::matvec_f32(&mut want, &w, &x);
        close("matvec_f32", &got, &want, 1e-5, 1e-5)?;
        let mut xq = [BlockQ8_0::ZERO; 3];
        quantize_q8_0(&xf, &mut xq);
        let (mut got, mut want) = (vec![1.0; n], vec![1.0; n]);
        arm::qmatvec_q8_0(&mut got, &wq, 3, &xq);
        g::qmatvec_q8_0(&mut want, &wq, 3, &xq);
        close("qmatvec_q8_0", &got, &want, 1e-3, 1e-5)?;
        let t = 2;
        let xt: Vec<f32> = x.iter().chain(&x).copied().collect();
        let (mut got, mut want) = (vec![0.0; t * n], vec![0.0; t * n]);
        arm::matmul_f32(&mut got, &w, &xt, t);
        g::matmul_f32(&mut want, &w, &xt, t);
        close("matmul_f32", &got, &want, 1e-5, 1e-5)
    });
}

/// The FPU's f16 conversion is `half`'s for every one of the 65536 halves (NaNs by class: `half` keeps the
/// payload, and the fast path hands NaN and infinity to it).
#[test]
fn f16_scale_conversion_is_exact() {
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32();
        let got = arm::f16_to_f32_fast(h);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{h:#06x}: {got} against {want}"
        );
    }
}

/// The scalar Cortex-M `exp` over the range softmax and the gate use, against f64.
#[test]
fn exp_sweep_cortex_m() {
    let worst = super::exp_sweep(
        |o, x| {
            for (o, v) in o.iter_mut().zip(x) {
                *o = arm::exp(*v);
            }
        },
        -87.0,
    );
    assert!(worst <= 3e-7, "cortex-m exp relative error {worst:e}");
}

/// Heads of 8 (query or output in registers) and the four-row f32 matvec give the reference's bits:
/// same products, same order.
#[test]
fn attention_and_f32_rows_equal_reference_bit_for_bit() {
    let s = (0usize..40, prop::sample::select(vec![3usize, 8, 16])).prop_flat_map(|(t, hs)| {
        (
            pvec(-1.0f32..1.0, hs),
            pvec(-1.0f32..1.0, t * hs),
            pvec(0.0f32..1.0, t),
        )
    });
    check(128, s, |(q, kv, p)| {
        let (t, hs) = (p.len(), q.len());
        let (mut got, mut want) = (vec![f32::NAN; t], vec![0.0; t]);
        arm::attn_scores(&mut got, &q, &kv, 0.35);
        g::attn_scores(&mut want, &q, &kv, 0.35);
        prop_assert_eq!(bits(&got), bits(&want), "scores, hs {}", hs);
        let (mut got, mut want) = (vec![f32::NAN; hs], vec![0.0; hs]);
        arm::attn_accum(&mut got, &p, &kv);
        g::attn_accum(&mut want, &p, &kv);
        prop_assert_eq!(bits(&got), bits(&want), "accum, hs {}", hs);
        Ok(())
    });
    let s = (0usize..11, 0usize..40)
        .prop_flat_map(|(n, d)| (Just(n), pvec(-1.0f32..1.0, n * d), pvec(-1.0f32..1.0, d)));
    check(128, s, |(n, w, x)| {
        let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
        arm::matvec_f32_rows(&mut got, &w, &x);
        arm::matvec_f32(&mut want, &w, &x);
        prop_assert_eq!(bits(&got), bits(&want), "{} rows of {}", n, x.len());
        Ok(())
    });
}
