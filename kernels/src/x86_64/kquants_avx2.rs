//! Q4_K and Q6_K products against q8_0 activations with AVX2 (`vpmaddubsw`, `vpmaddwd`), for the AVX2 and
//! AVX-512 tiers alike. The frame quantizes a super-block's 8 activation blocks with one scale
//! (`quant::quantize_q8_0_grouped`, GGML's Q8_K idea), so each super-block's integer dots, already times
//! their small sub-block scales, are summed in i32 lanes and meet the float scales once per super-block, as
//! llama.cpp does; what Q4_K's mins and Q6_K's `+32` take off is one `madd` per super-block.
//! References: `kquants::qmatvec_q4_k` and `qmatvec_q6_k` (which read each block's own scale).

use super::avx2::{f16_to_f32, hsum};
use crate::frame::X_CHUNK_BLOCKS;
use crate::kquants::{BlockQ4K, BlockQ6K, QK_K};
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

/// The sum of each activation block's quants, as i16 (|sum| ≤ 32 · 128): what Q4_K's sub-block mins
/// multiply.
fn block_sums(xq: &[BlockQ8_0]) -> [i16; X_CHUNK_BLOCKS] {
    assert!(xq.len() <= X_CHUNK_BLOCKS, "one chunk of activations");
    let mut sums = [0i16; X_CHUNK_BLOCKS];
    for (s, x) in sums.iter_mut().zip(xq) {
        *s = x.qs.iter().map(|v| i16::from(*v)).sum();
    }
    sums
}

/// The activation scale of each super-block: the frame quantizes a super-block's 8 activation blocks with
/// one scale (`quant::quantize_q8_0_grouped`), which lets a super-block's integer dots be summed before
/// one float step.
fn super_scales(xq: &[BlockQ8_0]) -> impl Iterator<Item = f32> + '_ {
    xq.chunks_exact(XB).map(|x| {
        debug_assert!(
            x.iter().all(|b| b.d == x[0].d),
            "k-quant activations share one scale per super-block"
        );
        x[0].scale()
    })
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q4_K weights; `xq`'s super-blocks each of one scale.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let mut da = [0f32; X_CHUNK_BLOCKS / XB];
    for (d, s) in da.iter_mut().zip(super_scales(xq)) {
        *d = s;
    }
    let bsums = block_sums(xq);
    let nib = _mm256_set1_epi8(0x0F);
    // Word j of a super-block's 8 scales, in every 16-bit lane.
    let pick: [__m256i; 8] =
        core::array::from_fn(|j| _mm256_set1_epi16((0x0101 * 2 * j + 0x0100) as i16));
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        for (i, b) in row.iter().enumerate() {
            let (sc, mn) = scales_mins_k4(&b.scales);
            let x = &xq[i * XB..];
            // The 8 scales and mins as i16.
            let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            // SAFETY: 8 i16 sums of this super-block's activation blocks.
            let bs = unsafe { _mm_loadu_si128(bsums[i * XB..].as_ptr() as *const __m128i) };
            // The mins' part: dmin · da · Σ min · Σ activation quants.
            let m = _mm_cvtepi32_ps(_mm_madd_epi16(mn16, bs));
            mins = _mm_fmadd_ps(m, _mm_set1_ps(f16_to_f32(b.dmin) * da[i]), mins);
            let mut dots = _mm256_setzero_si256();
            for c in 0..4 {
                let q = ld(&b.qs[c * 32..]);
                let halves = [
                    _mm256_and_si256(q, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), nib),
                ];
                for (h, q) in halves.into_iter().enumerate() {
                    let j = 2 * c + h;
                    // Nibbles are 0..15, so `maddubs` (u8 × i8) takes them as they are; pairs times the
                    // sub-block's scale (≤ 63) stay far inside i32 over a super-block.
                    let p = _mm256_maddubs_epi16(q, ld_x(&x[j]));
                    let s = _mm256_shuffle_epi8(sc16, pick[j]);
                    dots = _mm256_add_epi32(dots, _mm256_madd_epi16(p, s));
                }
            }
            acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(dots),
                _mm256_set1_ps(f16_to_f32(b.d) * da[i]),
                acc,
            );
        }
        let m = _mm_add_ps(mins, _mm_movehl_ps(mins, mins));
        let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
        *o += hsum(acc) - _mm_cvtss_f32(m);
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

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)`, Q6_K weights; `xq`'s super-blocks each of one scale.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len() / XB;
    let mut da = [0f32; X_CHUNK_BLOCKS / XB];
    for (d, s) in da.iter_mut().zip(super_scales(xq)) {
        *d = s;
    }
    let sums = half_sums(xq);
    let (nib, m3, m30) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(0x30),
    );
    // Run r of a half: lanes 0..4 take scale 2r, lanes 4..8 scale 2r + 1.
    let pick: [__m256i; 4] = core::array::from_fn(|r| {
        let (a, b) = (2 * r as i32, 2 * r as i32 + 1);
        _mm256_setr_epi32(a, a, a, a, b, b, b, b)
    });
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut acc = _mm256_setzero_ps();
        for (i, b) in row.iter().enumerate() {
            let x = &xq[i * XB..];
            // SAFETY: the block's 16 scale bytes are readable.
            let sc8 = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
            // The stored quants are the weights plus 32: `32 · Σ scale · (sum of its 16 activations)`,
            // one `madd` of the 16 scales with the 16 half sums, comes off the super-block's dot.
            // SAFETY: 16 i16 sums of this super-block (`half_sums` holds two per activation block).
            let hs = unsafe { _mm256_loadu_si256(sums[i * 2 * XB..].as_ptr() as *const __m256i) };
            let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), hs);
            let mut dots = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr));
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
                    // Σ q·a as i16 pairs (q is 0..63, so pairs stay within 2·63·127); pairs 0..8 are
                    // weights 0..16 (scale 2g), 8..16 the next 16 (scale 2g + 1). Times the scales, a
                    // super-block's sum stays within 8 · 2 · 16002 · 128 in each i32 lane.
                    let p = _mm256_maddubs_epi16(q, ld_x(&x[half * 4 + run]));
                    let s = _mm256_permutevar8x32_epi32(sc, pick[run]);
                    dots = _mm256_add_epi32(dots, _mm256_madd_epi16(p, s));
                }
            }
            let f = f16_to_f32(u16::from_le_bytes(b.d)) * da[i];
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(f), acc);
        }
        *o += hsum(acc);
    }
}
