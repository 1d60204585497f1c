//! Q4_K and Q6_K products against q8_0 activations with AVX2 (`vpmaddubsw`, `vpmaddwd`), for the AVX2 and
//! AVX-512 tiers alike: k-quant decode is bound by reading the weights, which 256-bit loads already keep up
//! with. Each 32-weight run of a super-block meets one activation block, so, as for q4_0, an integer dot per
//! run is scaled once in float; what is left over per super-block (Q4_K's mins) is a handful of scalar FMAs.
//! References: `kquants::qmatvec_q4_k` and `qmatvec_q6_k`.

use super::avx2::{f16_to_f32, hsum};
use crate::frame::X_CHUNK_BLOCKS;
use crate::kquants::{activation_scales, BlockQ4K, BlockQ6K, QK_K};
use crate::quant::{BlockQ8_0, QK};
use core::arch::x86_64::*;

const XB: usize = QK_K / QK;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld(q: &[u8]) -> __m256i {
    assert!(q.len() >= 32);
    // SAFETY: 32 readable bytes (checked above); `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_x(x: &BlockQ8_0) -> __m256i {
    ld(bytemuck::cast_slice(&x.qs))
}

/// A Q4_K super-block's 8 six-bit scales and 8 mins, each as 8 bytes in sub-block order:
/// `kquants::scale_min_k4` for all of them at once, on 32-bit words.
#[inline]
fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let sc = (w0 & low6, (w2 & low4) | (((w0 >> 6) & top2) << 4));
    let mn = (w1 & low6, ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4));
    let join = |(lo, hi): (u32, u32)| u64::from(lo) | u64::from(hi) << 32;
    (join(sc), join(mn))
}

/// 8 bytes as 8 f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bytes_f32(b: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b as i64)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_f32(v: &[f32]) -> __m256 {
    assert!(v.len() >= 8);
    // SAFETY: 8 readable f32s (checked above).
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q4_K weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let (da, dsum) = activation_scales(xq, true);
    let (nib, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut mins = _mm256_setzero_ps();
        for (i, b) in row.iter().enumerate() {
            let (sc, mn) = scales_mins_k4(&b.scales);
            let x = &xq[i * XB..];
            // Each sub-block's whole float factor, d · scale · (its activation block's scale), as 8 lanes;
            // and the mins' part of the row: dmin · Σ min · (activation scale · Σ activation quants).
            let f = _mm256_mul_ps(
                _mm256_mul_ps(bytes_f32(sc), _mm256_set1_ps(f16_to_f32(b.d))),
                ld_f32(&da[i * XB..]),
            );
            let m = _mm256_mul_ps(bytes_f32(mn), _mm256_set1_ps(f16_to_f32(b.dmin)));
            mins = _mm256_fmadd_ps(m, ld_f32(&dsum[i * XB..]), mins);
            for c in 0..4 {
                let q = ld(&b.qs[c * 32..]);
                let halves = [
                    _mm256_and_si256(q, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), nib),
                ];
                for (h, (q, acc)) in halves.into_iter().zip(acc.iter_mut()).enumerate() {
                    let j = 2 * c + h;
                    // Nibbles are 0..15, so `maddubs` (u8 × i8) takes them as they are.
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, ld_x(&x[j])), ones);
                    let s = _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(j as i32));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
                }
            }
        }
        *o += hsum(_mm256_add_ps(acc[0], acc[1])) - hsum(mins);
    }
}

/// The sums of each 16 activation quants, as i16 (|sum| ≤ 16 · 128): Q6_K's weights are stored plus 32, and
/// `32 · Σ scale · sum` over a run's two halves is what that adds to its dot.
fn half_sums(xq: &[BlockQ8_0]) -> [i16; 2 * X_CHUNK_BLOCKS] {
    assert!(xq.len() <= X_CHUNK_BLOCKS, "one chunk of activations");
    let mut sums = [0i16; 2 * X_CHUNK_BLOCKS];
    for (s, q) in sums
        .iter_mut()
        .zip(xq.iter().flat_map(|x| x.qs.chunks_exact(16)))
    {
        *s = q.iter().map(|v| i16::from(*v)).sum();
    }
    sums
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q6_K weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let (da, _) = activation_scales(xq, false);
    let sums = half_sums(xq);
    let (nib, m3, m30) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(0x30),
    );
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut plus32 = _mm256_setzero_ps();
        for (i, b) in row.iter().enumerate() {
            let x = &xq[i * XB..];
            // Run g's float factor, d · (its activation block's scale), as lane g.
            let f = _mm256_mul_ps(
                _mm256_set1_ps(f16_to_f32(u16::from_le_bytes(b.d))),
                ld_f32(&da[i * XB..]),
            );
            // The 16 scales as i16; run g's two are 2g and 2g + 1, so one `madd` with the 16 half sums gives
            // every run's `Σ scale · sum` in its lane.
            // SAFETY: the block's 16 scale bytes are readable.
            let sc8 = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            // SAFETY: 16 i16 sums of this super-block (`half_sums` holds two per activation block).
            let hs = unsafe { _mm256_loadu_si256(sums[i * 2 * XB..].as_ptr() as *const __m256i) };
            let corr = _mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, hs));
            plus32 = _mm256_fmadd_ps(corr, f, plus32);
            // Each scale as an i16 pair in a 32-bit lane, for `madd` against the i16 pair sums of a run.
            let lanes = |h: usize| {
                let s = _mm256_cvtepi8_epi32(if h == 0 {
                    sc8
                } else {
                    _mm_srli_si128::<8>(sc8)
                });
                _mm256_or_si256(
                    _mm256_and_si256(s, _mm256_set1_epi32(0xFFFF)),
                    _mm256_slli_epi32::<16>(s),
                )
            };
            for half in 0..2 {
                let sc = lanes(half);
                let (la, lb) = (ld(&b.ql[half * 64..]), ld(&b.ql[half * 64 + 32..]));
                let qh = ld(&b.qh[half * 32..]);
                // `kquants::q6_k_quant` for 32 weights at once: 16-bit shifts carry bits across bytes, and
                // the masks drop exactly those.
                let runs = [
                    _mm256_or_si256(
                        _mm256_and_si256(la, nib),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(lb, nib),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(la), nib),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(lb), nib),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (run, q) in runs.into_iter().enumerate() {
                    let g = half * 4 + run;
                    // Σ q·a as i16 pairs (q is 0..63, so pairs stay within 2·63·127); pairs 0..8 are
                    // weights 0..16 (scale 2g), 8..16 the next 16 (scale 2g + 1).
                    let p = _mm256_maddubs_epi16(q, ld_x(&x[g]));
                    let pick = _mm256_setr_epi32(
                        2 * run as i32,
                        2 * run as i32,
                        2 * run as i32,
                        2 * run as i32,
                        2 * run as i32 + 1,
                        2 * run as i32 + 1,
                        2 * run as i32 + 1,
                        2 * run as i32 + 1,
                    );
                    let dot = _mm256_madd_epi16(p, _mm256_permutevar8x32_epi32(sc, pick));
                    let s = _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(g as i32));
                    acc[run & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[run & 1]);
                }
            }
        }
        *o += hsum(_mm256_add_ps(acc[0], acc[1])) - 32.0 * hsum(plus32);
    }
}
