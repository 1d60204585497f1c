//! AVX2 micro-kernels of the packed int8 GEMM ([`crate::qgemm`]): a ymm of i32 lanes is 8 rows of a group,
//! so a group is done as two halves (the second re-reads its group-blocks from L1), over register tiles of
//! up to 4 tokens (4 f32 and 4 i32 accumulators of the 16 ymm). Also the AVX-512 tier's kernels on CPUs
//! without VNNI.
//!
//! `vpmaddubsw` (unsigned × signed bytes, pairs summed into saturating i16) then `vpmaddwd` by ones:
//! - q8_0: the pair sums of `(w + 128) · x` could saturate, so the sign moves onto the activations
//!   (`|w| · sign(x, w)`, pair sums within ±32 512), one `vpsignb` per (token, chunk).
//! - q4_0: nibbles `0..16` times `|x| ≤ 127` stay within ±3 810 a pair, so a block's 8 pair sums add up in
//!   i16 (±30 480) before one `vpmaddwd`; the accumulator starts at `-8 Σx`, as in the VNNI kernel.

use crate::qgemm::{tiled_micro, XBlock, Q4_0X16_BYTES, Q8_0X16_BYTES, QG};
use core::arch::x86_64::*;

/// Rows per ymm of i32 lanes.
const H: usize = QG / 2;

macro_rules! feat {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            $item
        )*
    };
}

tiled_micro!(qgemm_q8_0, tile_q8_0, "avx2,fma,f16c", [4, 1, 2, 3]);
tiled_micro!(qgemm_q4_0, tile_q4_0, "avx2,fma,f16c", [4, 1, 2, 3]);

feat! {
/// The 8 f16 scales of half `h` of a group-block, widened.
#[inline]
fn scales(gblk: &[u8], h: usize) -> __m256 {
    let s = &gblk[2 * H * h..2 * H * (h + 1)];
    // SAFETY: `s` is 16 readable bytes; `loadu` needs no alignment.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr() as *const __m128i) })
}

/// Half `h` (32 bytes) of the 64-byte chunk at `at`.
#[inline]
fn chunk(gblk: &[u8], at: usize, h: usize) -> __m256i {
    let c = &gblk[at + 32 * h..at + 32 * (h + 1)];
    // SAFETY: `c` is 32 readable bytes; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) }
}

/// `acc[m] += cvt(dot[m]) · dw · dx[m]`, the common end of a block in both formats.
#[inline]
fn scale_acc<const M: usize>(acc: &mut [__m256; M], dot: &[__m256i; M], dw: __m256, x: &[XBlock], xstride: usize, b: usize) {
    for m in 0..M {
        let d = _mm256_mul_ps(dw, _mm256_set1_ps(x[m * xstride + b].scale()));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[m]), d, acc[m]);
    }
}

#[inline]
fn store<const M: usize>(out: &mut [[f32; QG]], acc: &[__m256; M], h: usize) {
    for (o, a) in out.iter_mut().zip(acc) {
        let o = &mut o[H * h..H * (h + 1)];
        // SAFETY: `o` is 8 writable f32s; `storeu` needs no alignment.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) }
    }
}

/// Both halves of the group, the second reading its group-blocks from L1.
#[inline]
fn tile_q8_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    for h in 0..2 {
        half_q8_0::<M>(out, w, x, xstride, nb, h);
    }
}

#[inline]
fn tile_q4_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    for h in 0..2 {
        half_q4_0::<M>(out, w, x, xstride, nb, h);
    }
}

#[inline]
fn half_q8_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize, h: usize) {
    assert!(out.len() == M && w.len() >= nb * Q8_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); M];
    for (b, gblk) in w.chunks_exact(Q8_0X16_BYTES).take(nb).enumerate() {
        let mut dot = [_mm256_setzero_si256(); M];
        for k in 0..8 {
            let wv = chunk(gblk, 2 * QG + 64 * k, h);
            let aw = _mm256_sign_epi8(wv, wv);
            for (m, d) in dot.iter_mut().enumerate() {
                let xs = _mm256_sign_epi8(_mm256_set1_epi32(x[m * xstride + b].q4[k]), wv);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones);
                *d = _mm256_add_epi32(*d, p);
            }
        }
        scale_acc(&mut acc, &dot, scales(gblk, h), x, xstride, b);
    }
    store(out, &acc, h);
}

#[inline]
fn half_q4_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize, h: usize) {
    assert!(out.len() == M && w.len() >= nb * Q4_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let (ones, low) = (_mm256_set1_epi16(1), _mm256_set1_epi8(0x0f));
    let mut acc = [_mm256_setzero_ps(); M];
    for (b, gblk) in w.chunks_exact(Q4_0X16_BYTES).take(nb).enumerate() {
        let mut s16 = [_mm256_setzero_si256(); M];
        for k in 0..4 {
            let v = chunk(gblk, 2 * QG + 64 * k, h);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
            for (m, s) in s16.iter_mut().enumerate() {
                let q = &x[m * xstride + b].q4;
                let p = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, _mm256_set1_epi32(q[2 * k])),
                    _mm256_maddubs_epi16(hi, _mm256_set1_epi32(q[2 * k + 1])),
                );
                *s = _mm256_add_epi16(*s, p);
            }
        }
        let mut dot = [_mm256_setzero_si256(); M];
        for (m, d) in dot.iter_mut().enumerate() {
            let bias = _mm256_set1_epi32(-8 * x[m * xstride + b].s);
            *d = _mm256_add_epi32(_mm256_madd_epi16(s16[m], ones), bias);
        }
        scale_acc(&mut acc, &dot, scales(gblk, h), x, xstride, b);
    }
    store(out, &acc, h);
}
}
