//! AVX-512 (F + BW + VL) kernels, 16 f32 lanes, with `vpdpbusd` variants of the int8 dots for CPUs with
//! AVX-512 VNNI. Every function is `#[target_feature]`: callers reach them only through the wrappers in
//! `super`, which only a detected table points to.
//!
//! Tails use masked loads and stores (masked-off lanes are never touched, so they cannot fault).

use crate::frame::exp as E;
use crate::frame::X_CHUNK_BLOCKS;
/// f32/f16/bf16 rows at least this long are streamed one at a time in `matvec!`; shorter ones (stories260K's
/// 64 and 172, attention's heads) go four rows at a time, reduced together.
const STREAM_D: usize = 256;
/// Prefetch distance of the quantized row streams, in blocks.
const PFB: usize = 16;
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use half::{bf16, f16};

const L: usize = 16;

macro_rules! feat {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            $item
        )*
    };
}

feat! {
#[inline]
fn ld(c: &[f32]) -> __m512 {
    assert!(c.len() >= L);
    // SAFETY: 16 readable f32s (checked above); `loadu` needs no alignment.
    unsafe { _mm512_loadu_ps(c.as_ptr()) }
}

/// Lane mask of the first `n ≤ 16` lanes.
#[inline]
pub(super) fn mask(n: usize) -> __mmask16 {
    if n >= L { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
}

/// Up to 16 values, zeros beyond `c.len()`.
#[inline]
fn ld_any(c: &[f32]) -> __m512 {
    // SAFETY: the mask covers only the first `min(len, 16)` lanes, all inside `c`; masked-off lanes are not
    // accessed, so nothing past the slice is read.
    unsafe { _mm512_maskz_loadu_ps(mask(c.len()), c.as_ptr()) }
}

#[inline]
pub(super) fn st_any(c: &mut [f32], v: __m512) {
    // SAFETY: the mask covers only the first `min(len, 16)` lanes, all inside `c`; masked-off lanes are not written.
    unsafe { _mm512_mask_storeu_ps(c.as_mut_ptr(), mask(c.len()), v) }
}

#[inline]
fn prefetch_row<T>(row: &[T], at: usize) {
    // A prefetch never faults, so an address past the row's end is harmless; `wrapping_add` keeps the
    // pointer arithmetic itself defined.
    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at) as *const i8)
}

#[inline]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
fn ld_f32(c: &[f32]) -> __m512 {
    ld(c)
}

#[inline]
fn ld_f16(c: &[f16]) -> __m512 {
    assert!(c.len() >= L);
    // SAFETY: 16 f16s (32 bytes) are readable (checked above); `loadu` needs no alignment.
    let h = unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) };
    _mm512_cvtph_ps(h)
}

#[inline]
fn ld_bf16(c: &[bf16]) -> __m512 {
    assert!(c.len() >= L);
    // SAFETY: 16 bf16s (32 bytes) are readable (checked above); `loadu` needs no alignment.
    let h = unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) };
    // bf16 is the top half of an f32.
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}
}

/// Stamps out `out (n) = w (n, d) · x (d)` for one weight dtype: four rows share each `x` load, two
/// accumulators per row; each row prefetches the next group's row at the same columns. The last `d % 16` columns are one masked load (not a
/// scalar loop: `w2`'s rows of 172 and attention's heads of 8 would spend most of their time there), and
/// the four rows are reduced together (`hsum4`), which matters when rows are short.
macro_rules! matvec {
    ($name:ident, $t:ty, $ld:ident, $ldm:ident) => {
        feat! {
        pub(super) fn $name(out: &mut [f32], w: &[$t], x: &[f32]) {
            let d = x.len();
            assert_eq!(w.len(), out.len() * d, "w is not (n, d)");
            if d == 0 {
                out.fill(0.0);
                return;
            }
            let main = d / (2 * L) * (2 * L);
            let full = d / L * L;
            let tail = mask(d - full);
            let xt = ld_any(&x[full..]);
            if d >= STREAM_D {
                // Long rows: one row at a time, so the weights are one sequential stream that the
                // hardware prefetchers follow (as in the bandwidth probe); four accumulators.
                for (o, row) in out.iter_mut().zip(w.chunks_exact(d)) {
                    let mut acc = [_mm512_setzero_ps(); 4];
                    let mut k = 0;
                    while k + 4 * L <= d {
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps($ld(&row[k + i * L..]), ld(&x[k + i * L..]), *a);
                        }
                        k += 4 * L;
                    }
                    while k < full {
                        acc[0] = _mm512_fmadd_ps($ld(&row[k..]), ld(&x[k..]), acc[0]);
                        k += L;
                    }
                    if full < d {
                        acc[1] = _mm512_fmadd_ps($ldm(&row[full..], tail), xt, acc[1]);
                    }
                    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                    *o = _mm512_reduce_add_ps(s);
                }
                return;
            }
            let mut o4 = out.chunks_exact_mut(4);
            let mut w4 = w.chunks_exact(4 * d);
            for (o, wr) in (&mut o4).zip(&mut w4) {
                let r: [&[$t]; 4] = [&wr[..d], &wr[d..2 * d], &wr[2 * d..3 * d], &wr[3 * d..]];
                let z = _mm512_setzero_ps();
                let mut acc = [[z; 2]; 4];
                let mut k = 0;
                while k < main {
                    let x0 = ld(&x[k..]);
                    let x1 = ld(&x[k + L..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        // The next group's row at the same columns: each row alone is too short a stream
                        // for the hardware prefetchers once four are interleaved.
                        prefetch_row(row, k + 4 * d);
                        prefetch_row(row, k + 4 * d + L);
                        a[0] = _mm512_fmadd_ps($ld(&row[k..]), x0, a[0]);
                        a[1] = _mm512_fmadd_ps($ld(&row[k + L..]), x1, a[1]);
                    }
                    k += 2 * L;
                }
                if k < full {
                    let x0 = ld(&x[k..]);
                    for (a, row) in acc.iter_mut().zip(&r) {
                        a[0] = _mm512_fmadd_ps($ld(&row[k..]), x0, a[0]);
                    }
                }
                if full < d {
                    for (a, row) in acc.iter_mut().zip(&r) {
                        a[1] = _mm512_fmadd_ps($ldm(&row[full..], tail), xt, a[1]);
                    }
                }
                let s = hsum4(acc.map(|a| _mm512_add_ps(a[0], a[1])));
                // SAFETY: `o` is a chunk of exactly 4 f32s; `storeu` needs no alignment.
                unsafe { _mm_storeu_ps(o.as_mut_ptr(), s) };
            }
            for (o, row) in o4.into_remainder().iter_mut().zip(w4.remainder().chunks_exact(d)) {
                let mut acc = _mm512_setzero_ps();
                let mut k = 0;
                while k < full {
                    acc = _mm512_fmadd_ps($ld(&row[k..]), ld(&x[k..]), acc);
                    k += L;
                }
                if full < d {
                    acc = _mm512_fmadd_ps($ldm(&row[full..], tail), xt, acc);
                }
                *o = _mm512_reduce_add_ps(acc);
            }
        }
        }
    };
}

feat! {
/// The sums of four vectors, `[Σa0, Σa1, Σa2, Σa3]`: 128-bit lanes are paired up across vectors first, so the
/// four reductions share their shuffles (about 14 instructions instead of 4 × 8).
#[inline]
fn hsum4(a: [__m512; 4]) -> __m128 {
    // [a0 L0+L2, a0 L1+L3, a1 L0+L2, a1 L1+L3], same for a2, a3
    let s01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a[0], a[1]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a[0], a[1]),
    );
    let s23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a[2], a[3]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a[2], a[3]),
    );
    // 128-bit lane r holds four partial sums of row r.
    let t = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(s01, s23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(s01, s23),
    );
    let u = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
    let v = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, v))
}

/// The first lanes of `c` that `m` selects; the others are zero and never read.
#[inline]
fn ldm_f32(c: &[f32], m: __mmask16) -> __m512 {
    assert!(c.len() >= m.count_ones() as usize);
    // SAFETY: `m` selects only the first `c.len()` or fewer lanes (checked above); masked-off lanes are not read.
    unsafe { _mm512_maskz_loadu_ps(m, c.as_ptr()) }
}

#[inline]
fn ldm_f16(c: &[f16], m: __mmask16) -> __m512 {
    assert!(c.len() >= m.count_ones() as usize);
    // SAFETY: as in `ldm_f32`, for 16-bit elements.
    let h = unsafe { _mm256_maskz_loadu_epi16(m, c.as_ptr() as *const i16) };
    _mm512_cvtph_ps(h)
}

#[inline]
fn ldm_bf16(c: &[bf16], m: __mmask16) -> __m512 {
    assert!(c.len() >= m.count_ones() as usize);
    // SAFETY: as in `ldm_f32`, for 16-bit elements.
    let h = unsafe { _mm256_maskz_loadu_epi16(m, c.as_ptr() as *const i16) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}
}

matvec!(matvec_f32, f32, ld_f32, ldm_f32);
matvec!(matvec_f16, f16, ld_f16, ldm_f16);
matvec!(matvec_bf16, bf16, ld_bf16, ldm_bf16);

// Tiles of 4 rows × 6 tokens: 24 accumulators, 6 `x` and 1 `w` of the 32 registers.
crate::matmul::matmul_tier!(
    feature = "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    lanes = L,
    tile = 4 x 6,
    zero = _mm512_setzero_ps(),
    load = _mm512_loadu_ps,
    load_part = ld_any,
    fma = _mm512_fmadd_ps,
    hsum = _mm512_reduce_add_ps,
);

feat! {
/// `acc (n) += x (n)`
pub(super) fn add(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    for (a, b) in acc.chunks_mut(L).zip(x.chunks(L)) {
        st_any(a, _mm512_add_ps(ld_any(a), ld_any(b)));
    }
}

/// `out (d) = weight (d) * (x (d) / sqrt(mean(x²) + eps))`
pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = x.len();
    assert!(out.len() == d && weight.len() == d, "shapes");
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut c = x.chunks_exact(2 * L);
    for v in &mut c {
        let (a, b) = (ld(v), ld(&v[L..]));
        acc[0] = _mm512_fmadd_ps(a, a, acc[0]);
        acc[1] = _mm512_fmadd_ps(b, b, acc[1]);
    }
    for v in c.remainder().chunks(L) {
        let a = ld_any(v);
        acc[0] = _mm512_fmadd_ps(a, a, acc[0]);
    }
    let ss = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    let inv = 1.0 / libm::sqrtf(ss / d as f32 + eps);
    let iv = _mm512_set1_ps(inv);
    for ((o, v), w) in out.chunks_mut(L).zip(x.chunks(L)).zip(weight.chunks(L)) {
        st_any(o, _mm512_mul_ps(ld_any(w), _mm512_mul_ps(iv, ld_any(v))));
    }
}

/// `e^x` per lane. `vscalefps` applies `2^n` with correct overflow to inf and gradual underflow to 0, so
/// only the input is clamped (to `[-104, 89]`, beyond which the result is 0 or inf anyway), which also
/// keeps `r` finite for infinite inputs.
#[inline]
fn exp(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0)), _mm512_set1_ps(89.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(E::LOG2E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(E::LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(E::LN2_LO), r);
    let mut p = _mm512_set1_ps(E::P[0]);
    for c in &E::P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
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
    let mut mv = _mm512_set1_ps(first);
    for v in x.chunks(L) {
        // Masked-off lanes keep the running max, so the zero padding of a tail never wins.
        // SAFETY: the mask covers only lanes inside `v`; others are not read.
        let lv = unsafe { _mm512_mask_loadu_ps(mv, mask(v.len()), v.as_ptr()) };
        mv = _mm512_max_ps(mv, lv);
    }
    let m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    let mut sum = _mm512_setzero_ps();
    for v in x.chunks_mut(L) {
        let k = mask(v.len());
        let e = _mm512_maskz_mov_ps(k, exp(_mm512_sub_ps(ld_any(v), m)));
        st_any(v, e);
        sum = _mm512_add_ps(sum, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for v in x.chunks_mut(L) {
        st_any(v, _mm512_mul_ps(ld_any(v), inv));
    }
}

/// `a (n) = a / (1 + e^-a) * b (n)`
pub(super) fn silu_mul(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let one = _mm512_set1_ps(1.0);
    for (a, b) in a.chunks_mut(L).zip(b.chunks(L)) {
        let v = ld_any(a);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), v));
        let s = _mm512_div_ps(one, _mm512_add_ps(one, e));
        st_any(a, _mm512_mul_ps(_mm512_mul_ps(v, s), ld_any(b)));
    }
}

/// Rotates `x (n_heads, head_size)` by `cos_sin (head_size / 2, 2)`, pairs adjacent.
pub(super) fn rope(x: &mut [f32], cos_sin: &[f32]) {
    let hs = cos_sin.len();
    if hs == 0 {
        return;
    }
    for head in x.chunks_exact_mut(hs) {
        for (p, cs) in head.chunks_mut(L).zip(cos_sin.chunks(L)) {
            let csv = ld_any(cs);
            let c = _mm512_moveldup_ps(csv);
            let s = _mm512_movehdup_ps(csv);
            let v = ld_any(p);
            let swapped = _mm512_permute_ps::<0b10_11_00_01>(v);
            // even lanes: v0·c − v1·s; odd lanes: v1·c + v0·s
            st_any(p, _mm512_fmaddsub_ps(v, c, _mm512_mul_ps(swapped, s)));
        }
    }
}

/// `scores (t) = keys (t, hs) · q (hs) * scale`
pub(super) fn attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let hs = q.len();
    matvec_f32(scores, &keys[..scores.len() * hs], q);
    let sv = _mm512_set1_ps(scale);
    for s in scores.chunks_mut(L) {
        st_any(s, _mm512_mul_ps(ld_any(s), sv));
    }
}

/// `out (hs) = Σₜ probs[t] · values[t]`, `values (t, hs)`: 64 columns at a time stay in registers over all `t`.
pub(super) fn attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]) {
    let hs = out.len();
    if hs < L && hs > 0 && L.is_multiple_of(hs) {
        return attn_accum_small(out, probs, &values[..probs.len() * hs]);
    }
    crate::frame::attn_accum::<_, _, L>(
        out,
        probs,
        values,
        |p| _mm512_set1_ps(p),
        |a, b, acc| _mm512_fmadd_ps(a, b, acc),
        |c| ld_any(c),
        |c, v| st_any(c, v),
    )
}

/// `attn_accum` for heads narrower than a vector that divide it (stories260K's 8): `g = 16 / hs` positions per
/// vector, each lane weighted by its position's probability, then the `g` lane groups are summed. One load
/// and one FMA per `g` positions instead of a masked load per position.
fn attn_accum_small(out: &mut [f32], probs: &[f32], values: &[f32]) {
    let hs = out.len();
    let g = L / hs;
    // Lane i takes the probability of position i / hs of the vector's g positions.
    let mut idx = [0i32; L];
    for (i, v) in idx.iter_mut().enumerate() {
        *v = (i / hs) as i32;
    }
    // SAFETY: `idx` is 16 readable i32s.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) };
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut pc = probs.chunks_exact(2 * g);
    let mut vc = values.chunks_exact(2 * L);
    for (p, v) in (&mut pc).zip(&mut vc) {
        for (i, a) in acc.iter_mut().enumerate() {
            let pv = _mm512_permutexvar_ps(idx, ld_any(&p[i * g..(i + 1) * g]));
            *a = _mm512_fmadd_ps(pv, ld(&v[i * L..]), *a);
        }
    }
    for (p, v) in pc.remainder().chunks(g).zip(vc.remainder().chunks(L)) {
        // Lanes past the last position load zeros for both, so they add nothing.
        let pv = _mm512_permutexvar_ps(idx, ld_any(p));
        acc[0] = _mm512_fmadd_ps(pv, ld_any(v), acc[0]);
    }
    let mut lanes = [0.0f32; L];
    st_any(&mut lanes, _mm512_add_ps(acc[0], acc[1]));
    out.fill(0.0);
    for grp in lanes.chunks_exact(hs) {
        for (o, v) in out.iter_mut().zip(grp) {
            *o += v;
        }
    }
}

/// Two blocks' 32 quants each, as one 64-byte vector (block `a` in the low half).
#[inline]
fn ld_i8x2(a: &[i8; QK], b: &[i8; QK]) -> __m512i {
    // SAFETY: each block holds 32 readable bytes; `loadu` needs no alignment.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(a.as_ptr() as *const __m256i),
            _mm256_loadu_si256(b.as_ptr() as *const __m256i),
        )
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// A q4_0 block's quants as i8 in element order (low nibbles, then high nibbles), minus 8.
#[inline]
fn unpack_q4(q: &[u8; QK / 2]) -> __m256i {
    // SAFETY: a block's 16 nibble bytes are readable; `loadu` needs no alignment.
    let b = unsafe { _mm_loadu_si128(q.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(b), b);
    _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8))
}

#[inline]
fn unpack_q4x2(a: &[u8; QK / 2], b: &[u8; QK / 2]) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unpack_q4(a)), unpack_q4(b))
}

/// `|x|` as unsigned bytes and `y` with `x`'s sign, so an unsigned × signed instruction gives `x · y`.
/// `|y| ≤ 127` (activations), so the sign flip cannot overflow; `|x| = 128` is fine as unsigned.
#[inline]
fn abs_sign(x: __m512i, y: __m512i) -> (__m512i, __m512i) {
    let neg = _mm512_movepi8_mask(x);
    (_mm512_abs_epi8(x), _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y))
}

/// Σ over groups of 4 of `x · y` as 16 i32 lanes, through `maddubs` (pair sums stay within i16) + `madd`.
#[inline]
fn dot_i8_bw(x: __m512i, y: __m512i) -> __m512 {
    let (ax, sy) = abs_sign(x, y);
    let s16 = _mm512_maddubs_epi16(ax, sy);
    _mm512_cvtepi32_ps(_mm512_madd_epi16(s16, _mm512_set1_epi16(1)))
}

/// Per-lane scales for a pair of blocks: `da0·db0` in lanes 0..8, `da1·db1` in lanes 8..16.
#[inline]
fn scales2(a0: u16, b0: u16, a1: u16, b1: u16) -> __m512 {
    let d0 = _mm512_set1_ps(f16_to_f32(a0) * f16_to_f32(b0));
    let d1 = _mm512_set1_ps(f16_to_f32(a1) * f16_to_f32(b1));
    _mm512_mask_blend_ps(0xff00, d0, d1)
}
}

macro_rules! feat_vnni {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            $item
        )*
    };
}

feat_vnni! {
/// q4_0 weights of one block as their raw nibbles (`value + 8`, already unsigned), in element order.
#[inline]
fn wq_q4(a: &BlockQ4_0) -> __m256i {
    // SAFETY: a block's 16 nibble bytes are readable; `loadu` needs no alignment.
    let v = unsafe { _mm_loadu_si128(a.qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// q8_0 weights of one block moved to unsigned (`value + 128`, by flipping the sign bit).
#[inline]
fn wq_q8(a: &BlockQ8_0) -> __m256i {
    // SAFETY: a block's 32 quants are readable; `loadu` needs no alignment.
    let v = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
    _mm256_xor_si256(v, _mm256_set1_epi8(-128))
}
}

/// Stamps out the VNNI `out (n) += w (n, stride)[:, ..nb] · xq (nb)` for q4_0 and for q8_0 weights in cache
/// (prefill tiles), one row at a time (interleaving rows breaks the hardware prefetchers' streams at these row
/// lengths, and on Zen 4 a 512-bit op costs two 256-bit ones, so 256-bit vectors lose nothing). Weights are made unsigned for `vpdpbusd` by a
/// bias (q8_0: `+128`, a sign-bit flip; q4_0: the raw nibbles are `value + 8`), and each `x` block's scale and
/// bias correction `-bias · Σx` (per lane of 4 bytes) are computed once per call; a weight block then costs
/// one load (and flip or unpack), one `vpdpbusd` started at the correction, one conversion and one FMA with
/// the product of the scales. The integer sum per lane is exact, as in `generic`. Measured on this Zen 4
/// with q8_0 weights in L1/L2 (compute-bound, as prefill is): ~35 GB/s against ~25 for the 512-bit
/// sign-moving `qmatvec_q8_0_vnni`, which streams from memory faster.
macro_rules! qmatvec_vnni {
    ($name:ident, $blk:ty, $wq:ident, $shift:literal) => {
        feat_vnni! {
        pub(super) fn $name(out: &mut [f32], w: &[$blk], stride: usize, xq: &[BlockQ8_0]) {
            let nb = xq.len();
            // Uninitialised: zeroing 9 KiB on every call cost as much as a prefill tile's weights.
            let mut corr = [const { MaybeUninit::<__m256i>::uninit() }; X_CHUNK_BLOCKS];
            let mut dx = [const { MaybeUninit::<f32>::uninit() }; X_CHUNK_BLOCKS];
            for ((c, s), b) in corr[..nb].iter_mut().zip(&mut dx[..nb]).zip(xq) {
                // SAFETY: a block holds 32 readable quants; `loadu` needs no alignment.
                let x = unsafe { _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i) };
                let sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), x);
                c.write(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<$shift>(sum)));
                s.write(f16_to_f32(b.d));
            }
            // SAFETY: the loop wrote all of the first `nb` entries (slicing `..nb` above panics, not UB, if
            // `nb` exceeds the arrays), and `MaybeUninit<T>` has `T`'s layout.
            let (corr, dx) = unsafe {
                (
                    &*(&corr[..nb] as *const [MaybeUninit<__m256i>] as *const [__m256i]),
                    &*(&dx[..nb] as *const [MaybeUninit<f32>] as *const [f32]),
                )
            };
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * stride..r * stride + nb];
                // Two accumulators: one FMA chain would wait on its own latency. Pairs of blocks, so each
                // accumulator is a register (a `j % 2` index would put them in memory).
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut j = 0;
                while j + 2 <= nb {
                    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(j + PFB) as *const i8);
                    for (a, i) in acc.iter_mut().zip(j..j + 2) {
                        // SAFETY: a block holds 32 readable quants; `loadu` needs no alignment.
                        let x = unsafe { _mm256_loadu_si256(xq[i].qs.as_ptr() as *const __m256i) };
                        let dot = _mm256_dpbusd_epi32(corr[i], $wq(&row[i]), x);
                        let s = _mm256_set1_ps(f16_to_f32(row[i].d) * dx[i]);
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *a);
                    }
                    j += 2;
                }
                if nb % 2 == 1 {
                    let j = nb - 1;
                    // SAFETY: as above.
                    let x = unsafe { _mm256_loadu_si256(xq[j].qs.as_ptr() as *const __m256i) };
                    let dot = _mm256_dpbusd_epi32(corr[j], $wq(&row[j]), x);
                    let s = _mm256_set1_ps(f16_to_f32(row[j].d) * dx[j]);
                    acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[0]);
                }
                let v = _mm256_add_ps(acc[0], acc[1]);
                let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
                *o += _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
            }
        }
        }
    };
}

qmatvec_vnni!(qmatvec_q4_0_vnni, BlockQ4_0, wq_q4, 3);
qmatvec_vnni!(qtile_q8_0_vnni, BlockQ8_0, wq_q8, 7);
/// Stamps out `out (n) += w (n, stride)[:, ..nb] · xq (nb)`: two blocks per 512-bit vector; an odd last
/// block is paired with a zero block of scale 0.
macro_rules! qmatvec {
    ($name:ident, $blk:ty, $unpack2:ident, $zero:expr, $dot:ident, $feat:literal) => {
        #[target_feature(enable = $feat)]
        pub(super) fn $name(out: &mut [f32], w: &[$blk], stride: usize, xq: &[BlockQ8_0]) {
            let nb = xq.len();
            let zero: $blk = $zero;
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * stride..r * stride + nb];
                let mut acc = _mm512_setzero_ps();
                let mut pairs = row.chunks_exact(2).zip(xq.chunks_exact(2));
                for (a, b) in &mut pairs {
                    let d = scales2(a[0].d, b[0].d, a[1].d, b[1].d);
                    let p = $dot($unpack2(&a[0].qs, &a[1].qs), ld_i8x2(&b[0].qs, &b[1].qs));
                    acc = _mm512_fmadd_ps(d, p, acc);
                }
                if nb % 2 == 1 {
                    let (a, b) = (&row[nb - 1], &xq[nb - 1]);
                    let d = scales2(a.d, b.d, 0, 0);
                    let p = $dot(
                        $unpack2(&a.qs, &zero.qs),
                        ld_i8x2(&b.qs, &BlockQ8_0::ZERO.qs),
                    );
                    acc = _mm512_fmadd_ps(d, p, acc);
                }
                *o += _mm512_reduce_add_ps(acc);
            }
        }
    };
}

qmatvec!(
    qmatvec_q8_0,
    BlockQ8_0,
    ld_i8x2,
    BlockQ8_0::ZERO,
    dot_i8_bw,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
);
qmatvec!(
    qmatvec_q4_0,
    BlockQ4_0,
    unpack_q4x2,
    BlockQ4_0::ZERO,
    dot_i8_bw,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot_i8_vnni(x: __m512i, y: __m512i) -> __m512 {
    let (ax, sy) = abs_sign(x, y);
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy))
}
// Streaming q8_0 from memory (decode), the sign-moving form measured faster than the biased one of
// `qtile_q8_0_vnni` (enigma bench, 110M q8_0, 1 thread, medians of 5 alternating runs: 155 vs 120-134
// tok/s), which wins when the weights are already in cache (prefill: 275 vs 242 tok/s).
qmatvec!(
    qmatvec_q8_0_vnni,
    BlockQ8_0,
    ld_i8x2,
    BlockQ8_0::ZERO,
    dot_i8_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);
