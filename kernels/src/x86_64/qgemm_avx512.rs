//! AVX-512 VNNI micro-kernels of the packed int8 GEMM ([`crate::qgemm`]): one zmm of i32 lanes is the 16
//! rows of a group, so `vpdpbusd` with 4 bytes of a token broadcast advances all 16 rows by 4 columns.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. q8_0 weights are made unsigned by flipping their sign bit
//! (`w + 128`) as they are loaded, once per register tile of up to 8 tokens (8 f32
//! and 8 i32 accumulators, with room left for the weights and scales), and q4_0 nibbles are
//! unsigned already; each token's accumulator starts at `-128 Σx` (or `-8 Σx`), which makes the block's
//! integer dot exact. Then one f32 multiply-add per (token, block) applies both scales to the 16 rows.

use crate::qgemm::{tiled_micro, XBlock, Q4_0X16_BYTES, Q8_0X16_BYTES, QG};
use crate::quant::QK;
use core::arch::x86_64::*;

macro_rules! feat {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            $item
        )*
    };
}

tiled_micro!(
    qgemm_q8_0_vnni,
    tile_q8_0,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    [8, 1, 2, 3, 4, 5, 6, 7]
);
tiled_micro!(
    qgemm_q4_0_vnni,
    tile_q4_0,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    [8, 1, 2, 3, 4, 5, 6, 7]
);

feat! {
/// The 16 f16 scales at the start of a group-block, widened.
#[inline]
fn scales(gblk: &[u8]) -> __m512 {
    let s = &gblk[..2 * QG];
    // SAFETY: `s` is 32 readable bytes; `loadu` needs no alignment.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) })
}

/// 64 bytes of a group-block.
#[inline]
fn chunk(gblk: &[u8], at: usize) -> __m512i {
    let c = &gblk[at..at + 64];
    // SAFETY: `c` is 64 readable bytes; `loadu` needs no alignment.
    unsafe { _mm512_loadu_si512(c.as_ptr() as *const __m512i) }
}

/// Adds `acc[m] += cvt(dot[m]) · dw · dx[m]` and stores the tile, the common end of both formats.
#[inline]
fn scale_acc<const M: usize>(acc: &mut [__m512; M], dot: &[__m512i; M], dw: __m512, x: &[XBlock], xstride: usize, b: usize) {
    for m in 0..M {
        let d = _mm512_mul_ps(dw, _mm512_set1_ps(x[m * xstride + b].scale()));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), d, acc[m]);
    }
}

#[inline]
fn store<const M: usize>(out: &mut [[f32; QG]], acc: &[__m512; M]) {
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32s; `storeu` needs no alignment.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) }
    }
}

#[inline]
fn tile_q8_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    assert!(out.len() == M && w.len() >= nb * Q8_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); M];
    for (b, gblk) in w.chunks_exact(Q8_0X16_BYTES).take(nb).enumerate() {
        let mut dot = [_mm512_setzero_si512(); M];
        for (m, d) in dot.iter_mut().enumerate() {
            *d = _mm512_set1_epi32(-128 * x[m * xstride + b].s);
        }
        for k in 0..8 {
            let wu = _mm512_xor_si512(chunk(gblk, 2 * QG + 64 * k), flip);
            for (m, d) in dot.iter_mut().enumerate() {
                *d = _mm512_dpbusd_epi32(*d, wu, _mm512_set1_epi32(x[m * xstride + b].q4[k]));
            }
        }
        scale_acc(&mut acc, &dot, scales(gblk), x, xstride, b);
    }
    store(out, &acc);
}

#[inline]
fn tile_q4_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    assert!(out.len() == M && w.len() >= nb * Q4_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); M];
    for (b, gblk) in w.chunks_exact(Q4_0X16_BYTES).take(nb).enumerate() {
        let mut dot = [_mm512_setzero_si512(); M];
        for (m, d) in dot.iter_mut().enumerate() {
            *d = _mm512_set1_epi32(-8 * x[m * xstride + b].s);
        }
        for k in 0..4 {
            let v = chunk(gblk, 2 * QG + 64 * k);
            let lo = _mm512_and_si512(v, low);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            for (m, d) in dot.iter_mut().enumerate() {
                let q = &x[m * xstride + b].q4;
                *d = _mm512_dpbusd_epi32(*d, lo, _mm512_set1_epi32(q[2 * k]));
                *d = _mm512_dpbusd_epi32(*d, hi, _mm512_set1_epi32(q[2 * k + 1]));
            }
        }
        scale_acc(&mut acc, &dot, scales(gblk), x, xstride, b);
    }
    store(out, &acc);
}
}

feat! {
/// [`crate::qgemm::quantize_x`] 16 lanes at a time, bit for bit: the same `amax / 127` and `1 / d` in
/// scalar f32, the same products, the same rounding (halves away from zero, NaN to 0), and the scale
/// through F16C, which rounds to nearest even as the `half` crate does. The scalar version converts f16 in
/// software and packs bytes one at a time: it was an eighth of a 32-token product's time.
pub(crate) fn quantize_x_avx512(x: &[f32], out: &mut [XBlock]) {
    assert_eq!(x.len(), out.len() * QK, "activations are whole blocks of 32");
    let magnitude = _mm512_set1_epi32(i32::MAX);
    let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(128.0));
    let (half, neg_half) = (_mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
    let one = _mm512_set1_epi32(1);
    for (o, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // SAFETY: `xs` is 32 readable f32s; `loadu` needs no alignment.
        let v = unsafe { [_mm512_loadu_ps(xs.as_ptr()), _mm512_loadu_ps(xs.as_ptr().add(16))] };
        // NaN lanes count as 0 in the maximum, as `f32::max` skips them.
        let a = v.map(|v| {
            let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), magnitude));
            _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a), a)
        });
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(a[0], a[1]));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm512_set1_ps(id);
        let q = v.map(|v| {
            let y = _mm512_mul_ps(v, idv);
            let y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y), y);
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            let t = _mm512_cvttps_epi32(y);
            let f = _mm512_sub_ps(y, _mm512_cvtepi32_ps(t));
            let t = _mm512_mask_add_epi32(t, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, half), t, one);
            let t = _mm512_mask_sub_epi32(t, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(f, neg_half), t, one);
            _mm512_min_epi32(_mm512_max_epi32(t, _mm512_set1_epi32(-128)), _mm512_set1_epi32(127))
        });
        o.s = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
        let bytes = o.q4.as_mut_ptr() as *mut __m128i;
        // SAFETY: `q4` is 32 writable bytes; `storeu` needs no alignment. Lane order is byte order, the
        // little-endian packing of `q4`.
        unsafe {
            _mm_storeu_si128(bytes, _mm512_cvtepi32_epi8(q[0]));
            _mm_storeu_si128(bytes.add(1), _mm512_cvtepi32_epi8(q[1]));
        }
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d));
        o.d = _mm_cvtss_f32(_mm_cvtph_ps(h)).to_bits();
    }
}
}
