//! Attention over an f16 KV cache for NEON. Keys and values are widened by `fcvtl` as they are loaded (the
//! tier's own f16 load, which its f16 matvec uses), so the cache is read at half the bytes of an f32 one while
//! every product and sum stays f32, in the f32 kernels' order.

use super::neon::{fma, ld_f16, matvec_f16, st_any};
use core::arch::aarch64::*;
use half::f16;

const L: usize = 4;

/// Up to 4 f16s widened, zeros past `c.len()` (through a stack copy).
#[target_feature(enable = "neon")]
#[inline]
fn ld_any_f16(c: &[f16]) -> float32x4_t {
    match c.len() >= L {
        true => ld_f16(c),
        false => ld_f16(&crate::frame::padded_f16::<L>(c)),
    }
}

crate::frame::attn_f16_pair!(
    pub(super),
    feature = "neon",
    lanes = L,
    matvec = matvec_f16,
    splat = vdupq_n_f32,
    fma = fma,
    load = ld_any_f16,
    store = st_any,
);
