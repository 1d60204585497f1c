//! AVX2 + FMA + F16C kernels, 8 f32 lanes (`fma_*_f32_8`). Every function is `#[target_feature]`: callers
//! reach them only through the wrappers in `super`, which only the detected table points to.
//!
//! Tails shorter than a vector go through a zero-padded stack copy, so every load is a whole, in-bounds vector.

use crate::frame::{exp as E, Weight};
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use core::arch::x86_64::*;
use half::{bf16, f16};

const L: usize = 8;
/// How far ahead (in f32s) matvec prefetches each weight row: 16 cache lines, enough to cover DRAM latency
/// at one line per row per loop iteration.
const PF: usize = 256;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld(c: &[f32]) -> __m256 {
    assert!(c.len() >= L);
    // SAFETY: `c` has at least 8 readable f32s (checked above); `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(c.as_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn st(c: &mut [f32], v: __m256) {
    assert!(c.len() >= L);
    // SAFETY: `c` has at least 8 writable f32s (checked above); `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) }
}

/// The first `c.len() < 8` values, zero-padded.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_tail(c: &[f32]) -> __m256 {
    let mut buf = [0.0f32; L];
    buf[..c.len()].copy_from_slice(c);
    ld(&buf)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn st_tail(c: &mut [f32], v: __m256) {
    let mut buf = [0.0f32; L];
    st(&mut buf, v);
    let n = c.len();
    c.copy_from_slice(&buf[..n]);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// f16 bits → f32 through F16C (the `half` crate's software path would cost more than the dot it scales).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_f32(c: &[f32]) -> __m256 {
    ld(c)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn ld_f16(c: &[f16]) -> __m256 {
    assert!(c.len() >= L);
    // SAFETY: 8 f16s (16 bytes) are readable (checked above); `loadu` needs no alignment.
    let h = unsafe { _mm_loadu_si128(c.as_ptr() as *const __m128i) };
    _mm256_cvtph_ps(h)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_bf16(c: &[bf16]) -> __m256 {
    assert!(c.len() >= L);
    // SAFETY: 8 bf16s (16 bytes) are readable (checked above); `loadu` needs no alignment.
    let h = unsafe { _mm_loadu_si128(c.as_ptr() as *const __m128i) };
    // bf16 is the top half of an f32.
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// f32/f16/bf16 rows at least this long are streamed one at a time in `matvec!`, as in the AVX-512 tier;
/// shorter ones (stories260K's 64 and 172) go four rows at a time.
const STREAM_D: usize = 256;

/// Stamps out `out (n) = w (n, d) · x (d)` for one weight dtype. Long rows are read one at a time; short
/// ones four at a time sharing each load of `x`, two accumulators per row hiding FMA latency, each row
/// prefetched `PF` ahead.
macro_rules! matvec {
    ($name:ident, $t:ty, $ld:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $name(out: &mut [f32], w: &[$t], x: &[f32]) {
            let d = x.len();
            assert_eq!(w.len(), out.len() * d, "w is not (n, d)");
            if d == 0 {
                out.fill(0.0);
                return;
            }
            let (main, rem) = (d / (2 * L) * (2 * L), d % L);
            if d >= STREAM_D {
                // One sequential stream that the hardware prefetchers follow (four interleaved rows are
                // four short streams they lose track of), four accumulators to cover FMA latency.
                for (o, row) in out.iter_mut().zip(w.chunks_exact(d)) {
                    let mut acc = [_mm256_setzero_ps(); 4];
                    let mut k = 0;
                    while k + 4 * L <= d {
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps($ld(&row[k + i * L..]), ld(&x[k + i * L..]), *a);
                        }
                        k += 4 * L;
                    }
                    while k + L <= d {
                        acc[0] = _mm256_fmadd_ps($ld(&row[k..]), ld(&x[k..]), acc[0]);
                        k += L;
                    }
                    let v =
                        _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                    let mut s = hsum(v);
                    for (wv, xv) in row[k..].iter().zip(&x[k..]) {
                        s += Weight::to_f32(*wv) * xv;
                    }
                    *o = s;
                }
                return;
            }
            let mut o4 = out.chunks_exact_mut(4);
            let mut w4 = w.chunks_exact(4 * d);
            for (o, wr) in (&mut o4).zip(&mut w4) {
                let r: [&[$t]; 4] = [&wr[..d], &wr[d..2 * d], &wr[2 * d..3 * d], &wr[3 * d..]];
                let z = _mm256_setzero_ps();
                let mut acc = [[z; 2]; 4];
                let mut k = 0;
                while k < main {
                    let x0 = ld(&x[k..]);
                    let x1 = ld(&x[k + L..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        prefetch_row(row, k + PF);
                        a[0] = _mm256_fmadd_ps($ld(&row[k..]), x0, a[0]);
                        a[1] = _mm256_fmadd_ps($ld(&row[k + L..]), x1, a[1]);
                    }
                    k += 2 * L;
                }
                if k + L <= d {
                    let x0 = ld(&x[k..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        a[0] = _mm256_fmadd_ps($ld(&row[k..]), x0, a[0]);
                    }
                }
                let mut s = [0.0f32; 4];
                for ((s, a), row) in s.iter_mut().zip(&acc).zip(&r) {
                    *s = hsum(_mm256_add_ps(a[0], a[1]));
                    for (wv, xv) in row[d - rem..].iter().zip(&x[d - rem..]) {
                        *s += Weight::to_f32(*wv) * xv;
                    }
                }
                o.copy_from_slice(&s);
            }
            for (o, row) in o4
                .into_remainder()
                .iter_mut()
                .zip(w4.remainder().chunks_exact(d))
            {
                let mut acc = _mm256_setzero_ps();
                let mut k = 0;
                while k + L <= d {
                    acc = _mm256_fmadd_ps($ld(&row[k..]), ld(&x[k..]), acc);
                    k += L;
                }
                let mut s = hsum(acc);
                for (wv, xv) in row[k..].iter().zip(&x[k..]) {
                    s += Weight::to_f32(*wv) * xv;
                }
                *o = s;
            }
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_row<T>(row: &[T], at: usize) {
    // A prefetch never faults, so an address past the row's end is harmless; `wrapping_add` keeps the
    // pointer arithmetic itself defined.
    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at) as *const i8)
}

matvec!(matvec_f32, f32, ld_f32);
matvec!(matvec_f16, f16, ld_f16);
matvec!(matvec_bf16, bf16, ld_bf16);

// Tiles of 4 rows × 3 tokens: 12 accumulators, 3 `x` and 1 `w` register fill the 16.
crate::matmul::matmul_tier!(
    feature = "avx2,fma,f16c",
    lanes = L,
    tile = 4 x 3,
    zero = _mm256_setzero_ps(),
    load = _mm256_loadu_ps,
    load_part = ld_tail,
    fma = _mm256_fmadd_ps,
    hsum = hsum,
);

/// `acc (n) += x (n)`
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn add(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    let mut a = acc.chunks_exact_mut(L);
    let mut b = x.chunks_exact(L);
    for (a, b) in (&mut a).zip(&mut b) {
        st(a, _mm256_add_ps(ld(a), ld(b)));
    }
    for (a, b) in a.into_remainder().iter_mut().zip(b.remainder()) {
        *a += b;
    }
}

/// `out (d) = weight (d) * (x (d) / sqrt(mean(x²) + eps))`
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = x.len();
    assert!(out.len() == d && weight.len() == d, "shapes");
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut c = x.chunks_exact(2 * L);
    for v in &mut c {
        let (a, b) = (ld(v), ld(&v[L..]));
        acc[0] = _mm256_fmadd_ps(a, a, acc[0]);
        acc[1] = _mm256_fmadd_ps(b, b, acc[1]);
    }
    let mut ss = hsum(_mm256_add_ps(acc[0], acc[1]));
    for v in c.remainder() {
        ss += v * v;
    }
    let inv = 1.0 / libm::sqrtf(ss / d as f32 + eps);
    let iv = _mm256_set1_ps(inv);
    let mut o = out.chunks_exact_mut(L);
    let mut xs = x.chunks_exact(L);
    let mut ws = weight.chunks_exact(L);
    for ((o, v), w) in (&mut o).zip(&mut xs).zip(&mut ws) {
        st(o, _mm256_mul_ps(ld(w), _mm256_mul_ps(iv, ld(v))));
    }
    for ((o, v), w) in o
        .into_remainder()
        .iter_mut()
        .zip(xs.remainder())
        .zip(ws.remainder())
    {
        *o = w * (inv * v);
    }
}

/// `e^x` per lane. Inputs are clamped to `[-87.34, 88]` so `2^n` stays a normal float: below, results are
/// `e^-87.34` (≈1.2e-38, i.e. 0 within any useful atol); above, they saturate at `e^88` (≈1.7e38).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn exp(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_55)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(E::LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(E::LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(E::LN2_LO), r);
    let mut p = _mm256_set1_ps(E::P[0]);
    for c in &E::P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
}

/// `out (n) = e^x (n)`; exposed for the accuracy sweep test.
#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn exp_slice(out: &mut [f32], x: &[f32]) {
    for (o, v) in out.chunks_mut(L).zip(x.chunks(L)) {
        st_tail_or_full(o, exp(ld_any(v)));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_any(c: &[f32]) -> __m256 {
    if c.len() >= L {
        ld(c)
    } else {
        ld_tail(c)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn st_tail_or_full(c: &mut [f32], v: __m256) {
    if c.len() >= L {
        st(c, v)
    } else {
        st_tail(c, v)
    }
}

/// In-place softmax of `x (n)`, max-subtracted.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn softmax(x: &mut [f32]) {
    let Some(&first) = x.first() else { return };
    let mut mv = _mm256_set1_ps(first);
    let mut c = x.chunks_exact(L);
    for v in &mut c {
        mv = _mm256_max_ps(mv, ld(v));
    }
    let max = c.remainder().iter().fold(hmax(mv), |m, &v| m.max(v));
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut c = x.chunks_exact_mut(L);
    for v in &mut c {
        let e = exp(_mm256_sub_ps(ld(v), m));
        st(v, e);
        sum = _mm256_add_ps(sum, e);
    }
    let tail = c.into_remainder();
    let mut total = hsum(sum);
    if !tail.is_empty() {
        st_tail(tail, exp(_mm256_sub_ps(ld_tail(tail), m)));
        total += tail.iter().sum::<f32>();
    }
    let inv = _mm256_set1_ps(1.0 / total);
    for v in x.chunks_mut(L) {
        st_tail_or_full(v, _mm256_mul_ps(ld_any(v), inv));
    }
}

/// `a (n) = a / (1 + e^-a) * b (n)`
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn silu_mul(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let one = _mm256_set1_ps(1.0);
    for (a, b) in a.chunks_mut(L).zip(b.chunks(L)) {
        let v = ld_any(a);
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), v));
        let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
        st_tail_or_full(a, _mm256_mul_ps(_mm256_mul_ps(v, s), ld_any(b)));
    }
}

/// Rotates `x (n_heads, head_size)` by `cos_sin (head_size / 2, 2)`, pairs adjacent.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn rope(x: &mut [f32], cos_sin: &[f32]) {
    let hs = cos_sin.len();
    if hs == 0 {
        return;
    }
    for head in x.chunks_exact_mut(hs) {
        for (p, cs) in head.chunks_mut(L).zip(cos_sin.chunks(L)) {
            let csv = ld_any(cs);
            let c = _mm256_moveldup_ps(csv);
            let s = _mm256_movehdup_ps(csv);
            let v = ld_any(p);
            let swapped = _mm256_permute_ps::<0b10_11_00_01>(v);
            // even lanes: v0·c − v1·s; odd lanes: v1·c + v0·s
            st_tail_or_full(p, _mm256_fmaddsub_ps(v, c, _mm256_mul_ps(swapped, s)));
        }
    }
}

/// `scores (t) = keys (t, hs) · q (hs) * scale`
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let hs = q.len();
    matvec_f32(scores, &keys[..scores.len() * hs], q);
    let sv = _mm256_set1_ps(scale);
    for s in scores.chunks_mut(L) {
        st_tail_or_full(s, _mm256_mul_ps(ld_any(s), sv));
    }
}

/// `out (hs) = Σₜ probs[t] · values[t]`, `values (t, hs)`: 32 columns at a time stay in registers over all `t`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]) {
    crate::frame::attn_accum::<_, _, L>(
        out,
        probs,
        values,
        |p| _mm256_set1_ps(p),
        |a, b, acc| _mm256_fmadd_ps(a, b, acc),
        |c| ld_any(c),
        |c, v| st_tail_or_full(c, v),
    )
}

/// Σ over 32 pairs of `x · y` as 8 f32 lanes, `x` any i8 and `|y| ≤ 127`: `maddubs` wants unsigned × signed,
/// so the sign of `x` moves onto `y` (llama.cpp's `mul_sum_i8_pairs_float`). With `|y| ≤ 127` the i16 pair
/// sums stay within ±2·128·127, so `maddubs` never saturates.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_i8(q: &[i8; QK]) -> __m256i {
    // SAFETY: a block's 32 quants are 32 readable bytes; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
}

/// A q4_0 block's 32 quants as i8 in element order: low nibbles (elements 0..16), then high nibbles, minus 8.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_q4(q: &[u8; QK / 2]) -> __m256i {
    // SAFETY: a block's 16 nibble bytes are readable; `loadu` needs no alignment.
    let b = unsafe { _mm_loadu_si128(q.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(b), b);
    let nib = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
    _mm256_sub_epi8(nib, _mm256_set1_epi8(8))
}

/// Stamps out `out (n) += w (n, stride)[:, ..nb] · xq (nb)` for one weight format, `$quants` giving a weight
/// block's 32 quants as i8 in element order.
macro_rules! qmatvec {
    ($name:ident, $blk:ty, $quants:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $name(out: &mut [f32], w: &[$blk], stride: usize, xq: &[BlockQ8_0]) {
            let nb = xq.len();
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * stride..r * stride + nb];
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut pairs = row.chunks_exact(2).zip(xq.chunks_exact(2));
                for (a, b) in &mut pairs {
                    for (acc, (a, b)) in acc.iter_mut().zip(a.iter().zip(b)) {
                        let d = _mm256_set1_ps(f16_to_f32(a.d) * f16_to_f32(b.d));
                        *acc = _mm256_fmadd_ps(d, mul_sum_i8($quants(&a.qs), ld_i8(&b.qs)), *acc);
                    }
                }
                if nb % 2 == 1 {
                    let (a, b) = (&row[nb - 1], &xq[nb - 1]);
                    let d = _mm256_set1_ps(f16_to_f32(a.d) * f16_to_f32(b.d));
                    acc[0] = _mm256_fmadd_ps(d, mul_sum_i8($quants(&a.qs), ld_i8(&b.qs)), acc[0]);
                }
                *o += hsum(_mm256_add_ps(acc[0], acc[1]));
            }
        }
    };
}

qmatvec!(qmatvec_q8_0, BlockQ8_0, ld_i8);
qmatvec!(qmatvec_q4_0, BlockQ4_0, unpack_q4);
