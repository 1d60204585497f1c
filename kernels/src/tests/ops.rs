//! Property tests and edge cases per op family, written once as functions of a kernel table; the macros at
//! the end stamp them out for each tier in `mod.rs`.

use super::{assert_close, check, close};
use crate::dispatch::GENERIC as G;
use crate::quant::{quantize_q8_0, BlockQ4_0, BlockQ8_0, QK};
use crate::{generic, Kernels, WeightView};
use half::{bf16, f16};
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::{vec, vec::Vec};

const CASES: u32 = 48;

pub(crate) fn data(n: usize) -> impl Strategy<Value = Vec<f32>> {
    pvec(-1.0f32..1.0, n)
}

/// `(n, d, w (n, d), x (d))` with `d` crossing every vector width and tail length.
fn mat(max_n: usize, max_d: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>)> {
    (0..max_n, 0..max_d).prop_flat_map(|(n, d)| (Just(n), Just(d), data(n * d), data(d)))
}

// ---------------------------------------------------------------- matvec / matmul, f32 and f16/bf16

pub(crate) fn prop_matvec_f32(k: &Kernels) {
    check(CASES, mat(13, 300), |(n, _, w, x)| {
        let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
        (k.matvec_f32)(&mut got, &w, &x);
        generic::matvec_f32(&mut want, &w, &x);
        close("matvec_f32", &got, &want, 1e-4, 1e-5)
    });
}

pub(crate) fn prop_matmul_f32(k: &Kernels) {
    let s = (1usize..9, 0usize..14, 0usize..90)
        .prop_flat_map(|(t, n, d)| (Just(t), Just(n), data(n * d), data(t * d)));
    check(CASES, s, |(t, n, w, x)| {
        let (mut got, mut want) = (vec![f32::NAN; t * n], vec![0.0; t * n]);
        (k.matmul_f32)(&mut got, &w, &x, t);
        generic::matmul_f32(&mut want, &w, &x, t);
        close("matmul_f32", &got, &want, 1e-4, 1e-5)
    });
}

pub(crate) fn prop_matvec_half(k: &Kernels) {
    check(CASES, mat(10, 300), |(n, d, w, x)| {
        let wh: Vec<f16> = w.iter().map(|v| f16::from_f32(*v)).collect();
        let wb: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
        for view in [WeightView::f16(&wh, d), WeightView::bf16(&wb, d)] {
            let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
            k.matvec(&mut got, view, &x);
            G.matvec(&mut want, view, &x);
            close(view.dtype().name(), &got, &want, 1e-4, 1e-5)?;
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- quantized

/// Raw q8_0 weight blocks over the whole i8 range (a hostile file may hold -128, which llama.cpp's
/// quantizer never writes) with scales from 2^-10 to 2.
pub(crate) fn q8_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ8_0>> {
    pvec(
        (any::<[i8; QK]>(), -10i32..2).prop_map(|(qs, e)| BlockQ8_0 {
            d: f16::from_f32(libm::exp2f(e as f32) * 0.77).to_bits(),
            qs,
        }),
        n,
    )
}

pub(crate) fn q4_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ4_0>> {
    pvec(
        (any::<[u8; QK / 2]>(), -10i32..2).prop_map(|(qs, e)| BlockQ4_0 {
            d: f16::from_f32(-libm::exp2f(e as f32) * 0.61).to_bits(),
            qs,
        }),
        n,
    )
}

/// `(n, nb, w (n, nb) blocks, x (nb * 32))`.
fn qmat<B: core::fmt::Debug>(
    max_n: usize,
    nbs: core::ops::Range<usize>,
    blocks: fn(usize) -> BoxedStrategy<Vec<B>>,
) -> impl Strategy<Value = (usize, usize, Vec<B>, Vec<f32>)> {
    (0..max_n, nbs).prop_flat_map(move |(n, nb)| (Just(n), Just(nb), blocks(n * nb), data(nb * QK)))
}

fn q8b(n: usize) -> BoxedStrategy<Vec<BlockQ8_0>> {
    q8_blocks(n).boxed()
}

fn q4b(n: usize) -> BoxedStrategy<Vec<BlockQ4_0>> {
    q4_blocks(n).boxed()
}

/// Tiers and the reference share the quantized x and the exact integer block sums; they differ in the float
/// sum over `nb` blocks only, so the budget is `atol = (nb + 4) · 2ε · Σ_j |w_j · x_j|` per row (cancellation
/// can make the result itself tiny, so no fixed atol fits raw blocks with large scales).
pub(crate) fn q_case(
    k: &Kernels,
    view: WeightView<'_>,
    n: usize,
    x: &[f32],
) -> Result<(), TestCaseError> {
    let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
    k.matvec(&mut got, view, x);
    G.matvec(&mut want, view, x);
    let d = x.len();
    let mut row = vec![0.0; d];
    for r in 0..n {
        view.row_to_f32(r, &mut row);
        let mag: f32 = row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        let atol = (d / QK + 4) as f32 * 2.0 * f32::EPSILON * mag;
        close(view.dtype().name(), &got[r..=r], &want[r..=r], atol, 1e-5)?;
    }
    Ok(())
}

pub(crate) fn prop_matvec_q8_0(k: &Kernels) {
    check(CASES, qmat(10, 0..12, q8b), |(n, nb, w, x)| {
        q_case(k, WeightView::q8_0(&w, nb * QK), n, &x)
    });
}

pub(crate) fn prop_matvec_q4_0(k: &Kernels) {
    check(CASES, qmat(10, 0..12, q4b), |(n, nb, w, x)| {
        q_case(k, WeightView::q4_0(&w, nb * QK), n, &x)
    });
}

/// Rows wider than the stack buffer of quantized x: several column chunks, the last one partial.
pub(crate) fn prop_matvec_q_chunks(k: &Kernels) {
    let nbs = crate::X_CHUNK_BLOCKS - 2..2 * crate::X_CHUNK_BLOCKS + 3;
    check(6, qmat(4, nbs.clone(), q8b), |(n, nb, w, x)| {
        q_case(k, WeightView::q8_0(&w, nb * QK), n, &x)
    });
    check(6, qmat(4, nbs, q4b), |(n, nb, w, x)| {
        q_case(k, WeightView::q4_0(&w, nb * QK), n, &x)
    });
}

/// The kernels on their own, with a row stride wider than the chunk (as the frame calls them) and
/// accumulating into what `out` already holds.
pub(crate) fn prop_qmatvec_stride(k: &Kernels) {
    let s = (1usize..6, 1usize..9, 0usize..4).prop_flat_map(|(n, nb, extra)| {
        (
            q8_blocks(n * (nb + extra)),
            q4_blocks(n * (nb + extra)),
            data(nb * QK),
            data(n),
            Just(nb + extra),
        )
    });
    check(CASES, s, |(w8, w4, x, init, stride)| {
        let mut xq = vec![BlockQ8_0::ZERO; x.len() / QK];
        quantize_q8_0(&x, &mut xq);
        for (name, f) in [
            ("qmatvec_q8_0", k.qmatvec_q8_0),
            ("qtile_q8_0", k.qtile_q8_0),
        ] {
            let (mut got, mut want) = (init.clone(), init.clone());
            f(&mut got, &w8, stride, &xq);
            generic::qmatvec_q8_0(&mut want, &w8, stride, &xq);
            close(name, &got, &want, 1e-4, 1e-5)?;
        }
        let (mut got, mut want) = (init.clone(), init);
        (k.qmatvec_q4_0)(&mut got, &w4, stride, &xq);
        generic::qmatvec_q4_0(&mut want, &w4, stride, &xq);
        close("qmatvec_q4_0", &got, &want, 1e-4, 1e-5)
    });
}

/// Prefill through the view for every dtype (f32 is the blocked kernel, q8_0/q4_0 tiles of tokens and weight
/// rows, f16/bf16 token by token), against the generic table's token-by-token matvec. Up to 19 tokens (two
/// full tiles and a tail) and rows of up to 700 blocks, so the tiles hold fewer rows than the matrix and
/// the columns span several quantization chunks.
pub(crate) fn prop_matmul_dtypes(k: &Kernels) {
    let s = (
        1usize..20,
        0usize..40,
        prop_oneof![0usize..4, Just(crate::X_CHUNK_BLOCKS + 3), Just(700usize)],
    )
        .prop_flat_map(|(t, n, nb)| {
            (
                Just(t),
                Just(n),
                Just(nb),
                data(n * nb * QK),
                data(t * nb * QK),
            )
        });
    check(16, s, |(t, n, nb, w, x)| {
        let d = nb * QK;
        let wh: Vec<f16> = w.iter().map(|v| f16::from_f32(*v)).collect();
        let wb: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
        let mut w8 = vec![BlockQ8_0::ZERO; n * nb];
        generic::quantize_q8_0(&w, &mut w8);
        let mut w4 = vec![BlockQ4_0::ZERO; n * nb];
        generic::quantize_q4_0(&w, &mut w4);
        for view in [
            WeightView::f32(&w, d),
            WeightView::f16(&wh, d),
            WeightView::bf16(&wb, d),
            WeightView::q8_0(&w8, d),
            WeightView::q4_0(&w4, d),
        ] {
            let (mut got, mut want) = (vec![f32::NAN; t * n], vec![0.0; t * n]);
            k.matmul(&mut got, view, &x, t);
            for (o, xt) in want
                .chunks_exact_mut(n.max(1))
                .zip(x.chunks_exact(d.max(1)))
            {
                G.matvec(o, view, xt);
            }
            // Summation-order differences grow with d: the table's 1e-4 is for rows under 300 columns.
            let atol = if d > 300 { 1e-3 } else { 1e-4 };
            close(view.dtype().name(), &got, &want, atol, 1e-5)?;
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- element-wise and attention

pub(crate) fn prop_rmsnorm(k: &Kernels) {
    let s = (1usize..300).prop_flat_map(|d| (data(d), data(d), 1e-6f32..1e-4));
    check(CASES, s, |(x, w, eps)| {
        let (mut got, mut want) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
        (k.rmsnorm)(&mut got, &x, &w, eps);
        generic::rmsnorm(&mut want, &x, &w, eps);
        close("rmsnorm", &got, &want, 1e-6, 1e-5)
    });
}

pub(crate) fn prop_softmax(k: &Kernels) {
    for range in [-1.0f32..1.0, -60.0..60.0, -1e4..1e4] {
        check(CASES, pvec(range, 1..300), |x| {
            let (mut got, mut want) = (x.clone(), x);
            (k.softmax)(&mut got);
            generic::softmax(&mut want);
            close("softmax", &got, &want, 1e-6, 1e-5)
        });
    }
}

pub(crate) fn prop_silu_mul(k: &Kernels) {
    let s = (0usize..300).prop_flat_map(|n| (pvec(-30.0f32..30.0, n), data(n)));
    check(CASES, s, |(a, b)| {
        let (mut got, mut want) = (a.clone(), a);
        (k.silu_mul)(&mut got, &b);
        generic::silu_mul(&mut want, &b);
        close("silu_mul", &got, &want, 1e-6, 1e-5)
    });
}

pub(crate) fn prop_rope(k: &Kernels) {
    let s = (1usize..5, 1usize..70, 0usize..4096)
        .prop_flat_map(|(nh, half, pos)| (data(nh * 2 * half), Just(2 * half), Just(pos)));
    check(CASES, s, |(x, hs, pos)| {
        let mut cs = vec![0.0; hs];
        generic::rope_table(&mut cs, hs, pos, 10000.0);
        let (mut got, mut want) = (x.clone(), x);
        (k.rope)(&mut got, &cs);
        generic::rope(&mut want, &cs);
        close("rope", &got, &want, 1e-6, 1e-5)
    });
}

pub(crate) fn prop_attn(k: &Kernels) {
    let s = (0usize..40, 1usize..150)
        .prop_flat_map(|(t, hs)| (data(hs), data(t * hs), pvec(0.0f32..1.0, t), Just(hs)));
    check(CASES, s, |(q, kv, p, hs)| {
        let t = p.len();
        let (mut got, mut want) = (vec![f32::NAN; t], vec![0.0; t]);
        (k.attn_scores)(&mut got, &q, &kv, 0.125);
        generic::attn_scores(&mut want, &q, &kv, 0.125);
        close("attn_scores", &got, &want, 1e-4, 1e-5)?;
        let (mut got, mut want) = (vec![f32::NAN; hs], vec![0.0; hs]);
        (k.attn_accum)(&mut got, &p, &kv);
        generic::attn_accum(&mut want, &p, &kv);
        close("attn_accum", &got, &want, 1e-6, 1e-5)
    });
}

/// Heads narrower than a vector that divide it (AVX-512 packs several positions per vector for these).
pub(crate) fn prop_attn_small_heads(k: &Kernels) {
    let s = (0usize..40, prop::sample::select(vec![1usize, 2, 4, 8, 16]))
        .prop_flat_map(|(t, hs)| (data(hs), data(t * hs), pvec(0.0f32..1.0, t), Just(hs)));
    check(CASES, s, |(q, kv, p, hs)| {
        let t = p.len();
        let (mut got, mut want) = (vec![f32::NAN; t], vec![0.0; t]);
        (k.attn_scores)(&mut got, &q, &kv, 0.125);
        generic::attn_scores(&mut want, &q, &kv, 0.125);
        close("attn_scores", &got, &want, 1e-4, 1e-5)?;
        let (mut got, mut want) = (vec![f32::NAN; hs], vec![0.0; hs]);
        (k.attn_accum)(&mut got, &p, &kv);
        generic::attn_accum(&mut want, &p, &kv);
        close("attn_accum", &got, &want, 1e-6, 1e-5)
    });
}

pub(crate) fn prop_add(k: &Kernels) {
    let s = (0usize..300).prop_flat_map(|n| (data(n), data(n)));
    check(CASES, s, |(a, b)| {
        let (mut got, mut want) = (a.clone(), a);
        (k.add)(&mut got, &b);
        generic::add(&mut want, &b);
        close("add", &got, &want, 0.0, 0.0)
    });
}

// ---------------------------------------------------------------- fixed edge cases

pub(crate) fn edge_matvec(k: &Kernels) {
    // No rows, no columns, one of each.
    (k.matvec_f32)(&mut [], &[], &[1.0, 2.0]);
    let mut out = [f32::NAN; 3];
    (k.matvec_f32)(&mut out, &[], &[]);
    assert_eq!(out, [0.0; 3], "d = 0 is an empty sum");
    let mut out = [0.0];
    (k.matvec_f32)(&mut out, &[2.0], &[3.0]);
    assert_eq!(out, [6.0]);
    // Prefill of zero tokens touches nothing.
    let mut out: [f32; 0] = [];
    (k.matmul_f32)(&mut out, &[1.0; 4], &[], 0);
    // Quantized: no rows; one row of one block, exactly representable.
    let w = [BlockQ8_0 {
        d: f16::from_f32(0.5).to_bits(),
        qs: [2; QK],
    }];
    k.matvec(&mut [], WeightView::q8_0(&[], QK), &[1.0; QK]);
    let mut out = [0.0];
    // amax 127 gives x the exact scale 1.
    k.matvec(&mut out, WeightView::q8_0(&w, QK), &[127.0; QK]);
    assert_eq!(out, [4064.0], "32 · (2 · 0.5) · 127");
}

pub(crate) fn edge_softmax(k: &Kernels) {
    (k.softmax)(&mut []);
    let mut one = [123.0];
    (k.softmax)(&mut one);
    assert_eq!(one, [1.0]);
    let cases: [(&[f32], &[f32]); 4] = [
        (&[1000.0, 1000.0], &[0.5, 0.5]),
        (&[-1e30, 0.0], &[0.0, 1.0]),
        (&[3e38, -3e38, 3e38], &[0.5, 0.0, 0.5]),
        (&[-1000.0; 20], &[0.05; 20]),
    ];
    for (x, want) in cases {
        let mut got = x.to_vec();
        (k.softmax)(&mut got);
        assert_close("softmax edge", &got, want, 1e-6, 1e-5);
    }
    // A tail after whole vectors, with the max in the tail.
    let mut x = [-100.0f32; 37];
    x[36] = 100.0;
    (k.softmax)(&mut x);
    assert!(x.iter().all(|v| v.is_finite()));
    assert_close("softmax tail max", &x[36..], &[1.0], 1e-6, 0.0);
}

pub(crate) fn edge_silu(k: &Kernels) {
    (k.silu_mul)(&mut [], &[]);
    let mut a = [0.0, -100.0, 100.0, -1e4, 1e4, -88.5, 89.0];
    (k.silu_mul)(&mut a, &[1.0; 7]);
    assert_close(
        "silu large",
        &a,
        &[0.0, 0.0, 100.0, 0.0, 1e4, 0.0, 89.0],
        1e-6,
        1e-6,
    );
}

pub(crate) fn edge_norm_rope_attn(k: &Kernels) {
    let mut o = [0.0];
    (k.rmsnorm)(&mut o, &[3.0], &[2.0], 0.0);
    assert_close("rmsnorm len 1", &o, &[2.0], 0.0, 1e-6);
    let mut o = [f32::NAN; 5];
    (k.rmsnorm)(&mut o, &[0.0; 5], &[1.0; 5], 1e-5);
    assert_eq!(o, [0.0; 5]);
    // Position 0 is the identity.
    let mut cs = [0.0; 2];
    generic::rope_table(&mut cs, 2, 0, 10000.0);
    let mut x = [1.5, -2.0, 0.25, 4.0];
    (k.rope)(&mut x, &cs);
    assert_eq!(x, [1.5, -2.0, 0.25, 4.0]);
    (k.attn_scores)(&mut [], &[1.0; 8], &[], 1.0);
    let mut out = [f32::NAN; 8];
    (k.attn_accum)(&mut out, &[], &[]);
    assert_eq!(out, [0.0; 8], "no positions: zero output");
    (k.add)(&mut [], &[]);
    let mut a = [1.0];
    (k.add)(&mut a, &[2.0]);
    assert_eq!(a, [3.0]);
}

/// The integer extremes of the quantized kernels, over a whole x chunk (`X_CHUNK_BLOCKS` blocks, the most a
/// kernel is handed): q8_0 weights of -128 and 127, q4_0 nibbles of 0 and 15, activations of ±127. Kernels that
/// bias weights to unsigned bytes and subtract `bias · Σx` (AVX-512 VNNI) must stay exact here.
pub(crate) fn edge_qmatvec_extremes(k: &Kernels) {
    let nb = crate::X_CHUNK_BLOCKS;
    let d1 = f16::from_f32(1.0).to_bits();
    for (wv, xv) in [(-128i8, 127i8), (-128, -127), (127, 127), (127, -127)] {
        let xq: Vec<BlockQ8_0> = (0..nb)
            .map(|j| BlockQ8_0 {
                d: d1,
                qs: [if j % 3 == 0 { -xv } else { xv }; QK],
            })
            .collect();
        let w8: Vec<BlockQ8_0> = (0..5 * nb)
            .map(|_| BlockQ8_0 {
                d: d1,
                qs: [wv; QK],
            })
            .collect();
        let nib = if wv < 0 { 0x00 } else { 0xff };
        let w4: Vec<BlockQ4_0> = (0..5 * nb)
            .map(|_| BlockQ4_0 {
                d: d1,
                qs: [nib; QK / 2],
            })
            .collect();
        for f in [k.qmatvec_q8_0, k.qtile_q8_0] {
            let (mut got, mut want) = (vec![0.0; 5], vec![0.0; 5]);
            f(&mut got, &w8, nb, &xq);
            generic::qmatvec_q8_0(&mut want, &w8, nb, &xq);
            assert_close("qmatvec_q8_0/qtile_q8_0 extremes", &got, &want, 0.0, 1e-6);
        }
        let (mut got, mut want) = (vec![0.0; 5], vec![0.0; 5]);
        (k.qmatvec_q4_0)(&mut got, &w4, nb, &xq);
        generic::qmatvec_q4_0(&mut want, &w4, nb, &xq);
        assert_close("qmatvec_q4_0 extremes", &got, &want, 0.0, 1e-6);
    }
}

/// Fixed edge cases of every op family, for one tier.
macro_rules! edge_tests {
    ($(#[$a:meta])*) => {
        $(#[$a])* #[test] fn matvec_edges() { ops::edge_matvec(k()) }
        $(#[$a])* #[test] fn qmatvec_extremes() { ops::edge_qmatvec_extremes(k()) }
        $(#[$a])* #[test] fn softmax_edges() { ops::edge_softmax(k()) }
        $(#[$a])* #[test] fn silu_edges() { ops::edge_silu(k()) }
        $(#[$a])* #[test] fn norm_rope_attn_edges() { ops::edge_norm_rope_attn(k()) }
    };
}
pub(crate) use edge_tests;

/// Property tests of every op family against the scalar reference, for one tier.
macro_rules! prop_tests {
    (false, $(#[$a:meta])*) => {};
    (true, $(#[$a:meta])*) => {
        $(#[$a])* #[test] fn matvec_f32() { ops::prop_matvec_f32(k()) }
        $(#[$a])* #[test] fn matmul_f32() { ops::prop_matmul_f32(k()) }
        $(#[$a])* #[test] fn gemm_f32() { gemm::prop_gemm(k()) }
        $(#[$a])* #[test] fn gemm_f32_blocks() { gemm::prop_gemm_blocks(k()) }
        $(#[$a])* #[test] fn matvec_f16_bf16() { ops::prop_matvec_half(k()) }
        $(#[$a])* #[test] fn matvec_q8_0() { ops::prop_matvec_q8_0(k()) }
        $(#[$a])* #[test] fn matvec_q4_0() { ops::prop_matvec_q4_0(k()) }
        $(#[$a])* #[test] fn matvec_q_chunks() { ops::prop_matvec_q_chunks(k()) }
        $(#[$a])* #[test] fn qmatvec_stride() { ops::prop_qmatvec_stride(k()) }
        $(#[$a])* #[test] fn matmul_dtypes() { ops::prop_matmul_dtypes(k()) }
        $(#[$a])* #[test] fn rmsnorm() { ops::prop_rmsnorm(k()) }
        $(#[$a])* #[test] fn softmax() { ops::prop_softmax(k()) }
        $(#[$a])* #[test] fn silu_mul() { ops::prop_silu_mul(k()) }
        $(#[$a])* #[test] fn rope() { ops::prop_rope(k()) }
        $(#[$a])* #[test] fn attention() { ops::prop_attn(k()) }
        $(#[$a])* #[test] fn attention_small_heads() { ops::prop_attn_small_heads(k()) }
        $(#[$a])* #[test] fn add() { ops::prop_add(k()) }
    };
}
pub(crate) use prop_tests;
