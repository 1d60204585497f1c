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

/// The integer part is exact, extremes (-128 · -128) included, so only the float sum over blocks differs.
#[test]
fn dot_q8_0_and_q4_0_match_reference() {
    let s = (0usize..12).prop_flat_map(|nb| (q8(nb), q8(nb), pvec(any::<[u8; QK / 2]>(), nb)));
    check(128, s, |(a, b, nib)| {
        let got = arm::vec_dot_q8_0_q8_0(&a, &b);
        let want = g::vec_dot_q8_0_q8_0(&a, &b);
        close("q8_0", &[got], &[want], 1e-3, 1e-5)?;
        let w4: Vec<BlockQ4_0> = nib
            .iter()
            .zip(&a)
            .map(|(qs, a)| BlockQ4_0 { d: a.d, qs: *qs })
            .collect();
        let got = arm::vec_dot_q4_0_q8_0(&w4, &b);
        let want = g::vec_dot_q4_0_q8_0(&w4, &b);
        close("q4_0", &[got], &[want], 1e-3, 1e-5)
    });
    let ext = BlockQ8_0 {
        d: f16::from_f32(1.0).to_bits(),
        qs: [-128; QK],
    };
    assert_eq!(arm::vec_dot_q8_0_q8_0(&[ext], &[ext]), 32.0 * 16384.0);
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
