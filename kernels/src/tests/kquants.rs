//! Q4_K and Q6_K products: the scalar references against the dequantizers, and every tier against the
//! references (through the frame, several column chunks included, and the kernels alone with a stride).

use super::check;
use super::ops::data;
use crate::dispatch::GENERIC as G;
use crate::kquants::{self, BlockQ4K, BlockQ6K, KQuant, QK_K};
use crate::quant::{dequantize_q8_0, quantize_q8_0, quantize_q8_0_grouped, BlockQ8_0, QK};
use crate::{Kernels, WeightView};
use half::f16;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::{vec, vec::Vec};

fn scale(e: i32, m: f32) -> u16 {
    f16::from_f32(libm::exp2f(e as f32) * m).to_bits()
}

/// Random super-blocks: any quant and sub-scale bits, super-block scales from 2^-12 to 2^-2.
pub(crate) fn q4k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ4K>> {
    pvec((pvec(any::<u8>(), 140), -12i32..-2, -12i32..-2), n).prop_map(|v| {
        v.into_iter()
            .map(|(b, e, f)| BlockQ4K {
                d: scale(e, 0.9),
                dmin: scale(f, 0.7),
                scales: b[..12].try_into().unwrap(),
                qs: b[12..].try_into().unwrap(),
            })
            .collect()
    })
}

pub(crate) fn q6k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ6K>> {
    pvec((pvec(any::<u8>(), 208), -12i32..-2), n).prop_map(|v| {
        v.into_iter()
            .map(|(b, e)| BlockQ6K {
                ql: b[..128].try_into().unwrap(),
                qh: b[128..192].try_into().unwrap(),
                scales: bytemuck::cast::<[u8; 16], [i8; 16]>(b[192..208].try_into().unwrap()),
                d: (scale(e, -0.8)).to_le_bytes(),
            })
            .collect()
    })
}

/// `(n, nb, q4k, q6k, x (nb * 256))`.
fn kmat(
    max_n: usize,
    nbs: core::ops::Range<usize>,
) -> impl Strategy<Value = (usize, usize, Vec<BlockQ4K>, Vec<BlockQ6K>, Vec<f32>)> {
    (0..max_n, nbs).prop_flat_map(|(n, nb)| {
        (
            Just(n),
            Just(nb),
            q4k_blocks(n * nb),
            q6k_blocks(n * nb),
            data(nb * QK_K),
        )
    })
}

/// `got` against `want` for output rows of `w` times `x`: the kernels sum the same integer dots as the
/// reference in another float order, and Q6_K's SIMD form adds its `+32` offset back as a separate sum, so
/// the budget scales with `Σ |w·x|` (cancellation can make the result itself tiny), with room for
/// that offset: `(8 nb + 16) · 8ε · (Σ |w·x| + 32 · Σ |d·scale·x|)` over-approximated by `33 · Σ |w·x|`
/// plus the row's largest weight step.
fn close_k(
    what: &str,
    got: &[f32],
    want: &[f32],
    w: WeightView<'_>,
    x: &[f32],
) -> Result<(), TestCaseError> {
    let mut row = vec![0f32; w.cols()];
    for (r, (g, v)) in got.iter().zip(want).enumerate() {
        w.row_to_f32(r, &mut row);
        let amax = row.iter().fold(0f32, |m, a| m.max(a.abs()));
        let mag: f32 = row
            .iter()
            .zip(x)
            .map(|(a, b)| (a.abs() + amax) * b.abs())
            .sum();
        let tol = (w.cols() / QK + 16) as f32 * 8.0 * f32::EPSILON * 33.0 * mag + 1e-6;
        prop_assert!(
            (g - v).abs() <= tol,
            "{what}[{r}]: got {g}, want {v} (tol {tol})"
        );
    }
    Ok(())
}

/// Through `matvec` (the frame): `k` against the generic table.
fn k_case(k: &Kernels, v: WeightView<'_>, n: usize, x: &[f32]) -> Result<(), TestCaseError> {
    let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
    k.matvec(&mut got, v, x);
    G.matvec(&mut want, v, x);
    close_k(v.dtype().name(), &got, &want, v, x)
}

fn views<'a>(q4: &'a [BlockQ4K], q6: &'a [BlockQ6K], cols: usize) -> [WeightView<'a>; 2] {
    [
        WeightView::Q4K { blocks: q4, cols },
        WeightView::Q6K { blocks: q6, cols },
    ]
}

/// Every tier through `matvec` (the frame) against the generic table, including rows wider than one chunk
/// of quantized activations.
pub(crate) fn prop_matvec_kquants(k: &Kernels) {
    check(24, kmat(9, 1..5), |(n, nb, q4, q6, x)| {
        for v in views(&q4, &q6, nb * QK_K) {
            k_case(k, v, n, &x)?;
        }
        Ok(())
    });
    let chunk = crate::X_CHUNK_BLOCKS * QK / QK_K;
    check(3, kmat(3, chunk - 1..chunk + 3), |(n, nb, q4, q6, x)| {
        for v in views(&q4, &q6, nb * QK_K) {
            k_case(k, v, n, &x)?;
        }
        Ok(())
    });
}

/// The kernels alone, as the frame calls them: a row stride wider than the chunk, adding to `out`.
pub(crate) fn prop_kquants_stride(k: &Kernels) {
    let s = (1usize..5, 1usize..4, 0usize..3).prop_flat_map(|(n, nb, extra)| {
        (
            q4k_blocks(n * (nb + extra)),
            q6k_blocks(n * (nb + extra)),
            data(nb * QK_K),
            data(n),
            Just(nb + extra),
        )
    });
    check(24, s, |(w4, w6, x, init, stride)| {
        // As the frame quantizes for k-quant weights: one scale per super-block.
        let mut xq = vec![BlockQ8_0::ZERO; x.len() / QK];
        quantize_q8_0_grouped(&x, &mut xq, QK_K / QK);
        // Rows of `stride` blocks of which the kernels read the first `nb`: the views for the tolerance.
        let nb = x.len() / QK_K;
        let first = |n: usize| (0..init.len()).flat_map(move |r| r * stride..r * stride + n);
        let w4n: Vec<BlockQ4K> = first(nb).map(|i| w4[i]).collect();
        let w6n: Vec<BlockQ6K> = first(nb).map(|i| w6[i]).collect();
        let [v4, v6] = views(&w4n, &w6n, nb * QK_K);
        let (mut got, mut want) = (init.clone(), init.clone());
        (k.qmatvec_q4_k)(&mut got, &w4, stride, &xq);
        kquants::qmatvec_q4_k(&mut want, &w4, stride, &xq);
        close_k("qmatvec_q4_k", &got, &want, v4, &x)?;
        let (mut got, mut want) = (init.clone(), init);
        (k.qmatvec_q6_k)(&mut got, &w6, stride, &xq);
        kquants::qmatvec_q6_k(&mut want, &w6, stride, &xq);
        close_k("qmatvec_q6_k", &got, &want, v6, &x)
    });
}

/// The largest products a kernel's integer steps can meet: Q4_K nibbles of 15, Q6_K quants of 0 and 63
/// (weights -32 and 31) with the extreme scales ±127/-128, against activations of ±127. A saturating
/// `maddubs` or an overflowing i16 sum shows here.
pub(crate) fn edge_kquants_extremes(k: &Kernels) {
    let x: Vec<f32> = (0..2 * QK_K)
        .map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let mut xq = vec![BlockQ8_0::ZERO; x.len() / QK];
    quantize_q8_0_grouped(&x, &mut xq, QK_K / QK);
    let q4 = [0xFFu8, 0x00].map(|q| BlockQ4K {
        d: scale(-4, 1.0),
        dmin: scale(-4, 1.0),
        scales: [0xFF; 12],
        qs: [q; 128],
    });
    let q6 = [(0xFFu8, 0xFFu8, 127i8), (0, 0, -128)].map(|(l, h, s)| BlockQ6K {
        ql: [l; 128],
        qh: [h; 64],
        scales: [s; 16],
        d: scale(-6, 1.0).to_le_bytes(),
    });
    let (mut got, mut want) = ([0f32; 1], [0f32; 1]);
    (k.qmatvec_q4_k)(&mut got, &q4, 2, &xq);
    kquants::qmatvec_q4_k(&mut want, &q4, 2, &xq);
    super::assert_close("qmatvec_q4_k extremes", &got, &want, 1e-3, 1e-6);
    let (mut got, mut want) = ([0f32; 1], [0f32; 1]);
    (k.qmatvec_q6_k)(&mut got, &q6, 2, &xq);
    kquants::qmatvec_q6_k(&mut want, &q6, 2, &xq);
    super::assert_close("qmatvec_q6_k extremes", &got, &want, 1e-3, 1e-6);
}

/// The references themselves against an independent route: the dequantized weights times the dequantized
/// activations, in f64.
#[test]
fn references_equal_dequantized_products() {
    check(32, kmat(4, 1..4), |(n, nb, q4, q6, x)| {
        let mut xq = vec![BlockQ8_0::ZERO; x.len() / QK];
        quantize_q8_0(&x, &mut xq);
        let mut xd = vec![0f32; x.len()];
        dequantize_q8_0(&xq, &mut xd);
        for (kind, bytes) in [
            (KQuant::Q4K, bytemuck::cast_slice::<_, u8>(&q4)),
            (KQuant::Q6K, bytemuck::cast_slice::<_, u8>(&q6)),
        ] {
            let mut w = vec![0f32; n * nb * QK_K];
            kind.dequantize(bytes, &mut w);
            let mut got = vec![0f32; n];
            match kind {
                KQuant::Q4K => kquants::qmatvec_q4_k(&mut got, &q4, nb, &xq),
                _ => kquants::qmatvec_q6_k(&mut got, &q6, nb, &xq),
            }
            for (r, g) in got.iter().enumerate() {
                let row = &w[r * nb * QK_K..(r + 1) * nb * QK_K];
                let want: f64 = row
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                let mag: f64 = row
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                prop_assert!(
                    (*g as f64 - want).abs() <= 1e-5 * mag + 1e-6,
                    "{}: row {r}: {g} vs {want}",
                    kind.name()
                );
            }
        }
        Ok(())
    });
}

/// The generic table's matvec over a k-quant view is the reference.
#[test]
fn generic_table_uses_the_references() {
    let (q4, q6) = (
        kquants_fixed::<BlockQ4K>(144),
        kquants_fixed::<BlockQ6K>(210),
    );
    let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut xq = vec![BlockQ8_0::ZERO; QK_K / QK];
    quantize_q8_0_grouped(&x, &mut xq, QK_K / QK);
    for v in views(&q4, &q6, QK_K) {
        let (mut got, mut want) = ([0f32; 1], [0f32; 1]);
        G.matvec(&mut got, v, &x);
        match v {
            WeightView::Q4K { blocks, .. } => kquants::qmatvec_q4_k(&mut want, blocks, 1, &xq),
            WeightView::Q6K { blocks, .. } => kquants::qmatvec_q6_k(&mut want, blocks, 1, &xq),
            _ => unreachable!(),
        }
        assert_eq!(got, want, "{}", v.dtype().name());
        assert!(got[0] != 0.0);
    }
}

/// One block of deterministic bytes, with small scales where the f16s sit.
fn kquants_fixed<B: bytemuck::Pod>(size: usize) -> Vec<B> {
    let mut b: Vec<u8> = (0..size).map(|i| (i * 37 % 251) as u8).collect();
    let s = scale(-6, 1.0).to_le_bytes();
    // Q4_K keeps d and dmin first, Q6_K its d last.
    if size == 144 {
        b[..2].copy_from_slice(&s);
        b[2..4].copy_from_slice(&s);
    } else {
        b[size - 2..].copy_from_slice(&s);
    }
    vec![bytemuck::pod_read_unaligned(&b)]
}

/// Grouped activations: each group of blocks has one scale, from the group's largest `|v|`, and a group
/// of one is `quantize_q8_0`; a short last group is scaled on its own.
#[test]
fn grouped_activations_share_a_scale_per_group() {
    let x: Vec<f32> = (0..11 * QK)
        .map(|i| (i as f32 * 0.13).sin() * (1 + i / 64) as f32)
        .collect();
    let (mut one, mut g1, mut g8) = (
        vec![BlockQ8_0::ZERO; 11],
        vec![BlockQ8_0::ZERO; 11],
        vec![BlockQ8_0::ZERO; 11],
    );
    quantize_q8_0(&x, &mut one);
    quantize_q8_0_grouped(&x, &mut g1, 1);
    assert_eq!(one, g1);
    quantize_q8_0_grouped(&x, &mut g8, 8);
    for (g, xs) in g8.chunks(8).zip(x.chunks(8 * QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(g.iter().all(|b| b.d == g[0].d));
        assert_eq!(g[0].d, f16::from_f32(amax / 127.0).to_bits());
        assert!(g
            .iter()
            .any(|b| b.qs.iter().any(|q| q.unsigned_abs() == 127)));
    }
    assert_ne!(g8[0].d, g8[8].d, "the short last group has its own scale");
}
