//! The float ops of a Cortex-M4F decode step besides the products: `exp` as a polynomial instead of libm's
//! `expf` (softmax and the SwiGLU gate called it about 2,300 times per stories260K token, at 55 instructions
//! each), attention with a small head's query or output held in registers, and an f32 matvec that loads
//! each `x` once for four rows.
//!
//! Attention and the matvec give the scalar reference's bits (same products, same summation order per
//! output); softmax and the gate differ from it by `exp`'s error, at most a few ulp (see the tests).

use crate::frame::exp as E;
use crate::generic;

/// `e^x`, Cephes' polynomial (`frame::exp`, as the SIMD tiers), scalar and without FMA. Inputs are clamped
/// to `[-87.34, 88]` so `2^n` stays a normal float, as the SIMD tiers do.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_clamped(x.clamp(-87.336_55, 88.0))
}

/// [`exp`] of an `x` already in `[-87.34, 88]`. `n = round(x · log2 e)` by the 1.5 · 2^23 trick (ties to
/// even, as the SIMD tiers' rounding), which costs two adds where a compare costs four instructions on the
/// M4 (`VCMP`, `VMRS`, `IT`, `VMOV`).
#[inline(always)]
fn exp_clamped(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let y = x * E::LOG2E + MAGIC;
    let n = y.to_bits() as i32 - MAGIC.to_bits() as i32;
    let nf = y - MAGIC;
    let r = x - nf * E::LN2_HI;
    let r = r - nf * E::LN2_LO;
    let mut p = E::P[0];
    for c in &E::P[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// In-place softmax of `x (n)`: the reference's steps, with [`exp`].
pub fn softmax(x: &mut [f32]) {
    let Some(&first) = x.first() else { return };
    let max = x.iter().fold(first, |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        // `v - max` is at most 0, so only the lower clamp can apply (NaN passes through, as in `exp`).
        let d = *v - max;
        *v = exp_clamped(if d < -87.336_55 { -87.336_55 } else { d });
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `a (n) = silu(a) * b (n)` with [`exp`].
pub fn silu_mul(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        let v = *x;
        *x = v * (1.0 / (1.0 + exp(-v))) * y;
    }
}

/// `scores (t) = keys (t, hs) · q (hs) * scale`; a head of 8 (stories260K's) keeps `q` in registers. Wider
/// heads take the reference (each specialisation costs flash the Nucleo-F411RE image has little of).
pub fn attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    match q.len() {
        8 => scores_n::<8>(scores, q, keys, scale),
        _ => generic::attn_scores(scores, q, keys, scale),
    }
}

fn scores_n<const N: usize>(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let mut qr = [0.0f32; N];
    qr.copy_from_slice(q);
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(N)) {
        let mut acc = 0.0f32;
        for (a, b) in qr.iter().zip(k) {
            acc += a * b;
        }
        *s = acc * scale;
    }
}

/// `out (hs) = probs (t) · values (t, hs)`; a head of 8 keeps `out` in registers (as `attn_scores`).
pub fn attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]) {
    match out.len() {
        8 => accum_n::<8>(out, probs, values),
        _ => generic::attn_accum(out, probs, values),
    }
}

fn accum_n<const N: usize>(out: &mut [f32], probs: &[f32], values: &[f32]) {
    let mut acc = [0.0f32; N];
    for (p, v) in probs.iter().zip(values.chunks_exact(N)) {
        for (o, x) in acc.iter_mut().zip(v) {
            *o += p * x;
        }
    }
    out.copy_from_slice(&acc);
}

/// Rows done together by [`matvec_f32`]: each `x` is loaded once for all of them, and their 4 × 4
/// accumulators fit the FPU's 32 registers.
const ROWS: usize = 4;

/// `out (n) = w (n, d) · x (d)`, each row summed in four accumulators (columns `j mod 4`, as
/// [`super::matvec_f32`]), four rows at a time.
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let d = x.len();
    assert_eq!(w.len(), out.len() * d, "w is not (n, d)");
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let mut oc = out.chunks_exact_mut(ROWS);
    let mut wc = w.chunks_exact(ROWS * d);
    for (o, w) in (&mut oc).zip(&mut wc) {
        let mut acc = [[0.0f32; 4]; ROWS];
        let (r0, rest) = w.split_at(d);
        let (r1, rest) = rest.split_at(d);
        let (r2, r3) = rest.split_at(d);
        let quads = d / 4;
        for j in 0..quads {
            let xs = &x[4 * j..4 * j + 4];
            for (acc, row) in acc.iter_mut().zip([r0, r1, r2, r3]) {
                let ws = &row[4 * j..4 * j + 4];
                for ((a, p), q) in acc.iter_mut().zip(ws).zip(xs) {
                    *a += p * q;
                }
            }
        }
        for ((o, acc), row) in o.iter_mut().zip(&acc).zip([r0, r1, r2, r3]) {
            let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            for (p, q) in row[4 * quads..].iter().zip(&x[4 * quads..]) {
                s += p * q;
            }
            *o = s;
        }
    }
    super::matvec_f32(oc.into_remainder(), wc.remainder(), x);
}
