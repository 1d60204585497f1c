//! NEON kernels, 4 f32 lanes, and `sdot` (dotprod) variants of the int8 dots. Every function is
//! `#[target_feature]`: callers reach them only through the wrappers in `super`.
//!
//! Intrinsics that are still unstable in Rust (f16 vectors, `vdotq_s32`) are written as one-instruction
//! `asm!` blocks instead.

use crate::frame::exp as E;
use crate::frame::Weight;
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use core::arch::aarch64::*;
use core::arch::asm;
use half::{bf16, f16};

const L: usize = 4;
/// Prefetch distance in elements per weight row.
const PF: usize = 256;

macro_rules! feat {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "neon")]
            $item
        )*
    };
}

feat! {
#[inline]
fn ld(c: &[f32]) -> float32x4_t {
    assert!(c.len() >= L);
    // SAFETY: 4 readable f32s (checked above); `ld1` needs no alignment beyond the element's.
    unsafe { vld1q_f32(c.as_ptr()) }
}

#[inline]
fn st(c: &mut [f32], v: float32x4_t) {
    assert!(c.len() >= L);
    // SAFETY: 4 writable f32s (checked above).
    unsafe { vst1q_f32(c.as_mut_ptr(), v) }
}

/// Up to 4 values, zero-padded through a stack copy.
#[inline]
fn ld_any(c: &[f32]) -> float32x4_t {
    if c.len() >= L {
        return ld(c);
    }
    let mut buf = [0.0f32; L];
    buf[..c.len()].copy_from_slice(c);
    ld(&buf)
}

#[inline]
pub(super) fn st_any(c: &mut [f32], v: float32x4_t) {
    if c.len() >= L {
        return st(c, v);
    }
    let mut buf = [0.0f32; L];
    st(&mut buf, v);
    let n = c.len();
    c.copy_from_slice(&buf[..n]);
}

#[inline]
fn prefetch_row<T>(row: &[T], at: usize) {
    let p = row.as_ptr().wrapping_add(at);
    // SAFETY: `prfm` is a hint that never faults, whatever the address; it reads and writes nothing.
    unsafe { asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags)) }
}

#[inline]
fn ld_f32(c: &[f32]) -> float32x4_t {
    ld(c)
}

#[inline]
pub(super) fn ld_f16(c: &[f16]) -> float32x4_t {
    assert!(c.len() >= L);
    // SAFETY: 4 f16s (8 bytes) are readable (checked above).
    let h = unsafe { vld1_u16(c.as_ptr() as *const u16) };
    let out: float32x4_t;
    // SAFETY: `fcvtl` (f16 → f32 widening) is base Armv8 FP/SIMD and touches registers only. It is written
    // as asm because Rust's f16 vector intrinsics are unstable.
    unsafe { asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h, options(pure, nomem, nostack, preserves_flags)) };
    out
}

#[inline]
fn ld_bf16(c: &[bf16]) -> float32x4_t {
    assert!(c.len() >= L);
    // SAFETY: 4 bf16s (8 bytes) are readable (checked above).
    let h = unsafe { vld1_u16(c.as_ptr() as *const u16) };
    // bf16 is the top half of an f32.
    vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
}
}

/// Stamps out `out (n) = w (n, d) · x (d)` for one weight dtype: four rows share each `x` load, two
/// accumulators per row, each row prefetched `PF` ahead.
macro_rules! matvec {
    ($name:ident, $t:ty, $ld:ident) => {
        feat! {
        pub(super) fn $name(out: &mut [f32], w: &[$t], x: &[f32]) {
            let d = x.len();
            assert_eq!(w.len(), out.len() * d, "w is not (n, d)");
            if d == 0 {
                out.fill(0.0);
                return;
            }
            let (main, rem) = (d / (2 * L) * (2 * L), d % L);
            let mut o4 = out.chunks_exact_mut(4);
            let mut w4 = w.chunks_exact(4 * d);
            for (o, wr) in (&mut o4).zip(&mut w4) {
                let r: [&[$t]; 4] = [&wr[..d], &wr[d..2 * d], &wr[2 * d..3 * d], &wr[3 * d..]];
                let z = vdupq_n_f32(0.0);
                let mut acc = [[z; 2]; 4];
                let mut k = 0;
                while k < main {
                    let x0 = ld(&x[k..]);
                    let x1 = ld(&x[k + L..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        if k % 16 == 0 {
                            prefetch_row(row, k + PF);
                        }
                        a[0] = vfmaq_f32(a[0], $ld(&row[k..]), x0);
                        a[1] = vfmaq_f32(a[1], $ld(&row[k + L..]), x1);
                    }
                    k += 2 * L;
                }
                if k + L <= d {
                    let x0 = ld(&x[k..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        a[0] = vfmaq_f32(a[0], $ld(&row[k..]), x0);
                    }
                }
                let mut s = [0.0f32; 4];
                for ((s, a), row) in s.iter_mut().zip(&acc).zip(&r) {
                    *s = vaddvq_f32(vaddq_f32(a[0], a[1]));
                    for (wv, xv) in row[d - rem..].iter().zip(&x[d - rem..]) {
                        *s += Weight::to_f32(*wv) * xv;
                    }
                }
                o.copy_from_slice(&s);
            }
            for (o, row) in o4.into_remainder().iter_mut().zip(w4.remainder().chunks_exact(d)) {
                let mut acc = vdupq_n_f32(0.0);
                let mut k = 0;
                while k + L <= d {
                    acc = vfmaq_f32(acc, $ld(&row[k..]), ld(&x[k..]));
                    k += L;
                }
                let mut s = vaddvq_f32(acc);
                for (wv, xv) in row[k..].iter().zip(&x[k..]) {
                    s += Weight::to_f32(*wv) * xv;
                }
                *o = s;
            }
        }
        }
    };
}

matvec!(matvec_f32, f32, ld_f32);
matvec!(matvec_f16, f16, ld_f16);
matvec!(matvec_bf16, bf16, ld_bf16);

// Tiles of 4 rows × 4 tokens: 16 accumulators, 4 `x` and 1 `w` of the 32 registers.
crate::matmul::matmul_tier!(
    feature = "neon",
    lanes = L,
    tile = 4 x 4,
    zero = vdupq_n_f32(0.0),
    load = vld1q_f32,
    load_part = ld_any,
    fma = fma,
    hsum = vaddvq_f32,
);

feat! {
/// `acc + a·b`, in the argument order of the shared frames (x86's).
#[inline]
pub(super) fn fma(a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
    vfmaq_f32(acc, a, b)
}

/// `acc (n) += x (n)`
pub(super) fn add(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    for (a, b) in acc.chunks_mut(L).zip(x.chunks(L)) {
        st_any(a, vaddq_f32(ld_any(a), ld_any(b)));
    }
}

/// `out (d) = weight (d) * (x (d) / sqrt(mean(x²) + eps))`
pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = x.len();
    assert!(out.len() == d && weight.len() == d, "shapes");
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut c = x.chunks_exact(2 * L);
    for v in &mut c {
        let (a, b) = (ld(v), ld(&v[L..]));
        acc[0] = vfmaq_f32(acc[0], a, a);
        acc[1] = vfmaq_f32(acc[1], b, b);
    }
    let mut ss = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
    for v in c.remainder() {
        ss += v * v;
    }
    let inv = 1.0 / libm::sqrtf(ss / d as f32 + eps);
    let iv = vdupq_n_f32(inv);
    for ((o, v), w) in out.chunks_mut(L).zip(x.chunks(L)).zip(weight.chunks(L)) {
        st_any(o, vmulq_f32(ld_any(w), vmulq_f32(iv, ld_any(v))));
    }
}

/// `e^x` per lane, as in the AVX2 tier: inputs clamped to `[-87.34, 88]` so `2^n` stays a normal float.
#[inline]
fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.336_55)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(E::LOG2E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(E::LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(E::LN2_LO));
    let mut p = vdupq_n_f32(E::P[0]);
    for c in &E::P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let r2 = vmulq_f32(r, r);
    let y = vaddq_f32(vfmaq_f32(r, p, r2), vdupq_n_f32(1.0));
    let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32::<23>(e)))
}

/// `out (n) = e^x (n)`; exposed for the accuracy sweep test.
#[cfg(test)]
pub(super) fn exp_slice(out: &mut [f32], x: &[f32]) {
    for (o, v) in out.chunks_mut(L).zip(x.chunks(L)) {
        st_any(o, exp(ld_any(v)));
    }
}

/// In-place softmax of `x (n)`, max-subtracted.
pub(super) fn softmax(x: &mut [f32]) {
    let Some(&first) = x.first() else { return };
    let mut mv = vdupq_n_f32(first);
    let mut c = x.chunks_exact(L);
    for v in &mut c {
        mv = vmaxq_f32(mv, ld(v));
    }
    let max = c.remainder().iter().fold(vmaxvq_f32(mv), |m, &v| m.max(v));
    let m = vdupq_n_f32(max);
    let mut sum = vdupq_n_f32(0.0);
    let mut c = x.chunks_exact_mut(L);
    for v in &mut c {
        let e = exp(vsubq_f32(ld(v), m));
        st(v, e);
        sum = vaddq_f32(sum, e);
    }
    let tail = c.into_remainder();
    let mut total = vaddvq_f32(sum);
    if !tail.is_empty() {
        st_any(tail, exp(vsubq_f32(ld_any(tail), m)));
        total += tail.iter().sum::<f32>();
    }
    let inv = vdupq_n_f32(1.0 / total);
    for v in x.chunks_mut(L) {
        st_any(v, vmulq_f32(ld_any(v), inv));
    }
}

/// `a (n) = a / (1 + e^-a) * b (n)`
pub(super) fn silu_mul(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let one = vdupq_n_f32(1.0);
    for (a, b) in a.chunks_mut(L).zip(b.chunks(L)) {
        let v = ld_any(a);
        let e = exp(vnegq_f32(v));
        let s = vdivq_f32(one, vaddq_f32(one, e));
        st_any(a, vmulq_f32(vmulq_f32(v, s), ld_any(b)));
    }
}

/// Rotates `x (n_heads, head_size)` by `cos_sin (head_size / 2, 2)`, pairs adjacent.
pub(super) fn rope(x: &mut [f32], cos_sin: &[f32]) {
    let hs = cos_sin.len();
    if hs == 0 {
        return;
    }
    let sign = ld(&[-1.0, 1.0, -1.0, 1.0]);
    for head in x.chunks_exact_mut(hs) {
        for (p, cs) in head.chunks_mut(L).zip(cos_sin.chunks(L)) {
            let csv = ld_any(cs);
            let c = vtrn1q_f32(csv, csv);
            let s = vtrn2q_f32(csv, csv);
            let v = ld_any(p);
            let swapped = vmulq_f32(vrev64q_f32(v), sign);
            // even lanes: v0·c − v1·s; odd lanes: v1·c + v0·s
            st_any(p, vfmaq_f32(vmulq_f32(v, c), swapped, s));
        }
    }
}

/// `scores (t) = keys (t, hs) · q (hs) * scale`
pub(super) fn attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let hs = q.len();
    matvec_f32(scores, &keys[..scores.len() * hs], q);
    for s in scores.iter_mut() {
        *s *= scale;
    }
}

/// `out (hs) = Σₜ probs[t] · values[t]`, `values (t, hs)`: 16 columns at a time stay in registers over all `t`.
pub(super) fn attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]) {
    crate::frame::attn_accum::<_, _, L>(
        out,
        probs,
        values,
        |p| vdupq_n_f32(p),
        |a, b, acc| fma(a, b, acc),
        |c| ld_any(c),
        |c, v| st_any(c, v),
    )
}

#[inline]
pub(super) fn ld_i8(q: &[i8]) -> int8x16_t {
    assert!(q.len() >= 16);
    // SAFETY: 16 readable bytes (checked above).
    unsafe { vld1q_s8(q.as_ptr()) }
}

/// A q4_0 block's quants as two i8 vectors in element order (low nibbles, then high nibbles), minus 8.
#[inline]
fn unpack_q4(q: &[u8; QK / 2]) -> (int8x16_t, int8x16_t) {
    // SAFETY: a block's 16 nibble bytes are readable.
    let b = unsafe { vld1q_u8(q.as_ptr()) };
    let eight = vdupq_n_s8(8);
    (
        vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f))), eight),
        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)), eight),
    )
}

/// `acc + Σ x·y` over 16 i8 pairs, widening through i16 (`smull` can't overflow: |x·y| ≤ 2^14).
#[inline]
pub(super) fn dot16(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(x), vget_low_s8(y));
    let hi = vmull_high_s8(x, y);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}
}

#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot16_sdot(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` is a register-only instruction of the dotprod extension, enabled on this function
    // (which only a dotprod-detected table reaches); written as asm because `vdotq_s32` is unstable.
    unsafe {
        asm!("sdot {a:v}.4s, {x:v}.16b, {y:v}.16b", a = inout(vreg) acc, x = in(vreg) x, y = in(vreg) y, options(pure, nomem, nostack, preserves_flags))
    };
    acc
}

/// Stamps out `out (n) += w (n, stride)[:, ..nb] · xq (nb)` for one weight format and dot instruction.
macro_rules! qmatvec {
    ($name:ident, $blk:ty, $halves:expr, $dot:ident, $feat:literal) => {
        #[target_feature(enable = $feat)]
        pub(super) fn $name(out: &mut [f32], w: &[$blk], stride: usize, xq: &[BlockQ8_0]) {
            let nb = xq.len();
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * stride..r * stride + nb];
                let mut sumf = vdupq_n_f32(0.0);
                for (a, b) in row.iter().zip(xq) {
                    let (x0, x1) = $halves(a);
                    let z = vdupq_n_s32(0);
                    let s = $dot($dot(z, x0, ld_i8(&b.qs)), x1, ld_i8(&b.qs[16..]));
                    let d = a.scale() * b.scale();
                    sumf = vfmaq_n_f32(sumf, vcvtq_f32_s32(s), d);
                }
                *o += vaddvq_f32(sumf);
            }
        }
    };
}

feat! {
#[inline]
fn q8_halves(a: &BlockQ8_0) -> (int8x16_t, int8x16_t) {
    (ld_i8(&a.qs), ld_i8(&a.qs[16..]))
}

#[inline]
fn q4_halves(a: &BlockQ4_0) -> (int8x16_t, int8x16_t) {
    unpack_q4(&a.qs)
}
}

qmatvec!(qmatvec_q8_0, BlockQ8_0, q8_halves, dot16, "neon");
qmatvec!(qmatvec_q4_0, BlockQ4_0, q4_halves, dot16, "neon");
qmatvec!(
    qmatvec_q8_0_dotprod,
    BlockQ8_0,
    q8_halves,
    dot16_sdot,
    "neon,dotprod"
);
qmatvec!(
    qmatvec_q4_0_dotprod,
    BlockQ4_0,
    q4_halves,
    dot16_sdot,
    "neon,dotprod"
);
