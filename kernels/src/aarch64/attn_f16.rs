//! Attention over an f16 KV cache for NEON. Keys and values are widened by `fcvtl` as they are loaded (the
//! tier's own f16 load, which its f16 matvec uses), so the cache is read at half the bytes of an f32 one while
//! every product and sum stays f32, in the f32 kernels' order.

use super::neon::{fma, ld_f16, matvec_f16, st_any};
use core::arch::aarch64::*;
use half::f16;

const L: usize = 4;

/// `scores (t) = keys (t, hs) · q (hs) * scale`, f16 keys
#[target_feature(enable = "neon")]
pub(super) fn attn_scores_f16(scores: &mut [f32], q: &[f32], keys: &[f16], scale: f32) {
    matvec_f16(scores, &keys[..scores.len() * q.len()], q);
    for s in scores.iter_mut() {
        *s *= scale;
    }
}

/// Up to 4 f16s widened, zeros past `c.len()` (through a stack copy).
#[target_feature(enable = "neon")]
#[inline]
fn ld_any_f16(c: &[f16]) -> float32x4_t {
    if c.len() >= L {
        return ld_f16(c);
    }
    let mut buf = [f16::ZERO; L];
    buf[..c.len()].copy_from_slice(c);
    ld_f16(&buf)
}

/// `out (hs) = Σₜ probs[t] · values[t]`, f16 `values (t, hs)`: the f32 kernel's frame, widening loads.
#[target_feature(enable = "neon")]
pub(super) fn attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[f16]) {
    crate::frame::attn_accum::<_, _, L>(
        out,
        probs,
        values,
        |p| vdupq_n_f32(p),
        |a, b, acc| fma(a, b, acc),
        |c| ld_any_f16(c),
        |c, v| st_any(c, v),
    )
}
