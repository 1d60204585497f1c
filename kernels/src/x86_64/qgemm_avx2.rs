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
use crate::quant::QK;
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

feat! {
/// The largest lane of `v`.
#[inline]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

/// The sum of the lanes of `v`.
#[inline]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b00_00_00_01>(s)))
}

/// `v` with its NaN lanes set to 0.
#[inline]
fn nan_to_zero(v: __m256) -> __m256 {
    _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v))
}

/// [`crate::qgemm::quantize_x`] 8 lanes at a time, bit for bit, as the AVX-512 version
/// (`quantize_x_avx512`) does with 16.
pub(crate) fn quantize_x_avx2(x: &[f32], out: &mut [XBlock]) {
    assert_eq!(x.len(), out.len() * QK, "activations are whole blocks of 32");
    let magnitude = _mm256_set1_epi32(i32::MAX);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(128.0));
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let (qmin, qmax) = (_mm256_set1_epi32(-128), _mm256_set1_epi32(127));
    // `packs` interleaves 128-bit halves; this puts the 4-byte groups back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (o, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // SAFETY: `xs` is 32 readable f32s; `loadu` needs no alignment.
        let v: [__m256; 4] = core::array::from_fn(|i| unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * i)) });
        let a = v.map(|v| nan_to_zero(_mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), magnitude))));
        let amax = hmax(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let q = v.map(|v| {
            let y = nan_to_zero(_mm256_mul_ps(v, idv));
            let y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
            let t = _mm256_cvttps_epi32(y);
            let f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
            // A true compare is -1 as an integer: subtracting it adds 1.
            let t = _mm256_sub_epi32(t, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half)));
            let t = _mm256_add_epi32(t, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, neg_half)));
            _mm256_min_epi32(_mm256_max_epi32(t, qmin), qmax)
        });
        o.s = hsum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        // SAFETY: `q4` is 32 writable bytes; `storeu` needs no alignment. Lane order is byte order, the
        // little-endian packing of `q4`.
        unsafe { _mm256_storeu_si256(o.q4.as_mut_ptr() as *mut __m256i, bytes) };
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d));
        o.d = _mm_cvtss_f32(_mm_cvtph_ps(h)).to_bits();
    }
}
}
