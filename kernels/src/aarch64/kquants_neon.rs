//! Q4_K and Q6_K products against q8_0 activations with NEON, for the aarch64 tier: each 32-weight run of a
//! super-block meets one activation block and gets an integer dot (`smull` + pairwise adds, as q4_0 has)
//! scaled once in float. References: `kquants::qmatvec_q4_k` and `qmatvec_q6_k`.

use super::neon::{dot16, ld_i8};
use crate::kquants::{activation_scales, scale_min_k4, BlockQ4K, BlockQ6K, QK_K};
use crate::quant::{BlockQ8_0, QK};
use core::arch::aarch64::*;

const XB: usize = QK_K / QK;

#[target_feature(enable = "neon")]
#[inline]
fn ld_u8(q: &[u8]) -> uint8x16_t {
    assert!(q.len() >= 16);
    // SAFETY: 16 readable bytes (checked above).
    unsafe { vld1q_u8(q.as_ptr()) }
}

/// `Σ x·a` over 32 weights given as two i8 vectors, against activation block `a`.
#[target_feature(enable = "neon")]
#[inline]
fn dot32(x: [int8x16_t; 2], a: &BlockQ8_0) -> int32x4_t {
    dot16(
        dot16(vdupq_n_s32(0), x[0], ld_i8(&a.qs)),
        x[1],
        ld_i8(&a.qs[16..]),
    )
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q4_K weights.
#[target_feature(enable = "neon")]
pub(super) fn qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let (da, dsum) = activation_scales(xq, true);
    let nib = vdupq_n_u8(0x0F);
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = vdupq_n_f32(0.0);
        let mut mins = 0.0f32;
        for (i, (b, x)) in row.iter().zip(xq.chunks_exact(XB)).enumerate() {
            let (da, dsum) = (&da[i * XB..], &dsum[i * XB..]);
            let (d, dmin) = b.scales_f32();
            let mut m = 0.0f32;
            for c in 0..4 {
                let q = [ld_u8(&b.qs[c * 32..]), ld_u8(&b.qs[c * 32 + 16..])];
                for h in 0..2 {
                    let j = 2 * c + h;
                    // Nibbles 0..15 are already valid i8.
                    let v = q.map(|q| {
                        let n = if h == 0 {
                            vandq_u8(q, nib)
                        } else {
                            vshrq_n_u8::<4>(q)
                        };
                        vreinterpretq_s8_u8(n)
                    });
                    let (sc, mn) = scale_min_k4(j, &b.scales);
                    let s = vcvtq_f32_s32(dot32(v, &x[j]));
                    acc = vfmaq_n_f32(acc, s, d * f32::from(sc) * da[j]);
                    m += f32::from(mn) * dsum[j];
                }
            }
            mins += dmin * m;
        }
        *o += vaddvq_f32(acc) - mins;
    }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q6_K weights.
#[target_feature(enable = "neon")]
pub(super) fn qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let (nib, m3, k32) = (vdupq_n_u8(0x0F), vdupq_n_u8(3), vdupq_n_s8(32));
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = 0.0f32;
        for (b, x) in row.iter().zip(xq.chunks_exact(XB)) {
            let mut s = 0.0f32;
            for (g, x) in x.iter().enumerate() {
                let (half, run) = (g / 4, g % 4);
                let (lo_shift, hi_shift) = (4 * (run >> 1) as i8, 2 * run as i8);
                let mut dots = [0i32; 2];
                for (p, dot) in dots.iter_mut().enumerate() {
                    // `kquants::q6_k_quant` for 16 weights; a negative `ushl` count shifts right.
                    let ql = ld_u8(&b.ql[half * 64 + 32 * (run & 1) + 16 * p..]);
                    let qh = ld_u8(&b.qh[half * 32 + 16 * p..]);
                    let low = vandq_u8(vshlq_u8(ql, vdupq_n_s8(-lo_shift)), nib);
                    let high = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(qh, vdupq_n_s8(-hi_shift)), m3));
                    let q = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), k32);
                    let a = ld_i8(&x.qs[16 * p..]);
                    *dot = vaddvq_s32(dot16(vdupq_n_s32(0), q, a));
                }
                let sc = &b.scales[half * 8 + 2 * run..];
                let isum = i32::from(sc[0]) * dots[0] + i32::from(sc[1]) * dots[1];
                s += x.scale() * isum as f32;
            }
            acc += b.scale() * s;
        }
        *o += acc;
    }
}
