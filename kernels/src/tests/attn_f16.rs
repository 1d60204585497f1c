//! Attention over an f16 KV cache: each tier's pair against the scalar reference, at ragged head sizes and
//! context lengths (every vector width's tails, heads narrower than a vector), and the reference against
//! the f32 reference on the same widened cache.

use super::{check, close};
use crate::{generic, quantize_f16, Kernels};
use half::f16;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::{vec, vec::Vec};

const CASES: u32 = 48;

/// `(q (hs), cache (t, hs) as f16, probs (t), hs)`: values in [-1, 1] rounded to f16, as the cache stores them.
fn inputs() -> impl Strategy<Value = (Vec<f32>, Vec<f16>, Vec<f32>, usize)> {
    let hs = prop_oneof![
        1usize..150,
        prop::sample::select(vec![1usize, 2, 4, 8, 16, 48, 64])
    ];
    (0usize..70, hs).prop_flat_map(|(t, hs)| {
        (
            pvec(-1.0f32..1.0, hs),
            pvec(-1.0f32..1.0, t * hs).prop_map(|v| {
                let mut h = vec![f16::ZERO; v.len()];
                quantize_f16(&v, &mut h);
                h
            }),
            pvec(0.0f32..1.0, t),
            Just(hs),
        )
    })
}

/// Tolerances as for the f32 pair (`mod.rs`): widening is exact, so only the summation order differs.
pub(crate) fn prop_attn_f16(k: &Kernels) {
    check(CASES, inputs(), |(q, kv, p, hs)| {
        let t = p.len();
        let (mut got, mut want) = (vec![f32::NAN; t], vec![0.0; t]);
        (k.attn_scores_f16)(&mut got, &q, &kv, 0.125);
        generic::attn_scores_f16(&mut want, &q, &kv, 0.125);
        close("attn_scores_f16", &got, &want, 1e-4, 1e-5)?;
        let (mut got, mut want) = (vec![f32::NAN; hs], vec![0.0; hs]);
        (k.attn_accum_f16)(&mut got, &p, &kv);
        generic::attn_accum_f16(&mut want, &p, &kv);
        close("attn_accum_f16", &got, &want, 1e-6, 1e-5)
    });
}

pub(crate) fn edge_attn_f16(k: &Kernels) {
    (k.attn_scores_f16)(&mut [], &[1.0; 8], &[], 1.0);
    let mut out = [f32::NAN; 8];
    (k.attn_accum_f16)(&mut out, &[], &[]);
    assert_eq!(out, [0.0; 8], "no positions: zero output");
    // f16's extremes widen exactly: 65504 and the smallest subnormal.
    let big = [f16::MAX, f16::from_bits(1), f16::NEG_INFINITY];
    let mut out = [f32::NAN; 3];
    (k.attn_accum_f16)(&mut out, &[1.0], &big);
    assert_eq!(
        out,
        [65504.0, f16::from_bits(1).to_f32(), f32::NEG_INFINITY]
    );
}

/// The f16 reference is the f32 reference on the widened cache, to the bit: same products, same order.
#[test]
fn f16_reference_is_the_f32_reference_on_the_widened_cache() {
    check(CASES, inputs(), |(q, kv, p, hs)| {
        let wide: Vec<f32> = kv.iter().map(|v| v.to_f32()).collect();
        let t = p.len();
        let (mut a, mut b) = (vec![0.0; t], vec![0.0; t]);
        generic::attn_scores_f16(&mut a, &q, &kv, 0.125);
        generic::attn_scores(&mut b, &q, &wide, 0.125);
        prop_assert_eq!(&a, &b);
        let (mut a, mut b) = (vec![0.0; hs], vec![0.0; hs]);
        generic::attn_accum_f16(&mut a, &p, &kv);
        generic::attn_accum(&mut b, &p, &wide);
        prop_assert_eq!(&a, &b);
        Ok(())
    });
}
