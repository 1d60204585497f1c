//! AVX2 + FMA LayerNorm and GELU for [`crate::encoder_ops`]; the AVX-512 tier uses these too (a 384-wide
//! row is 48 vectors here, and the ops are a small share of an encoder's time next to its matrix products).

use crate::encoder_ops::{erf, EncoderOps};
use core::arch::x86_64::*;

const L: usize = 8;

#[target_feature(enable = "avx2,fma")]
#[inline]
fn ld(c: &[f32]) -> __m256 {
    assert!(c.len() >= L);
    // SAFETY: `c` has at least 8 readable f32s (checked above); `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(c.as_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn st(c: &mut [f32], v: __m256) {
    assert!(c.len() >= L);
    // SAFETY: `c` has at least 8 writable f32s (checked above); `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let mut buf = [0.0f32; L];
    st(&mut buf, v);
    buf.iter().sum()
}

#[target_feature(enable = "avx2,fma")]
fn layernorm_avx2(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = x.len();
    assert!(
        out.len() == d && weight.len() == d && bias.len() == d,
        "shapes"
    );
    if d == 0 {
        return;
    }
    let mut acc = _mm256_setzero_ps();
    let mut c = x.chunks_exact(L);
    for v in &mut c {
        acc = _mm256_add_ps(acc, ld(v));
    }
    let mean = (hsum(acc) + c.remainder().iter().sum::<f32>()) / d as f32;
    let m = _mm256_set1_ps(mean);
    let mut acc = _mm256_setzero_ps();
    let mut c = x.chunks_exact(L);
    for v in &mut c {
        let dv = _mm256_sub_ps(ld(v), m);
        acc = _mm256_fmadd_ps(dv, dv, acc);
    }
    let tail: f32 = c.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    let inv = 1.0 / libm::sqrtf((hsum(acc) + tail) / d as f32 + eps);
    let iv = _mm256_set1_ps(inv);
    let mut o = out.chunks_exact_mut(L);
    let mut xs = x.chunks_exact(L);
    let mut ws = weight.chunks_exact(L);
    let mut bs = bias.chunks_exact(L);
    for (((o, v), w), b) in (&mut o).zip(&mut xs).zip(&mut ws).zip(&mut bs) {
        let n = _mm256_mul_ps(_mm256_sub_ps(ld(v), m), iv);
        st(o, _mm256_fmadd_ps(n, ld(w), ld(b)));
    }
    let rest = o.into_remainder();
    for (((o, v), w), b) in rest
        .iter_mut()
        .zip(xs.remainder())
        .zip(ws.remainder())
        .zip(bs.remainder())
    {
        *o = (v - mean) * inv * w + b;
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu8(v: __m256) -> __m256 {
    let z = _mm256_mul_ps(v, _mm256_set1_ps(core::f32::consts::FRAC_1_SQRT_2));
    let z = _mm256_min_ps(
        _mm256_max_ps(z, _mm256_set1_ps(-erf::CLAMP)),
        _mm256_set1_ps(erf::CLAMP),
    );
    let z2 = _mm256_mul_ps(z, z);
    let mut p = _mm256_set1_ps(erf::ALPHA[0]);
    for c in &erf::ALPHA[1..] {
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(*c));
    }
    let mut q = _mm256_set1_ps(erf::BETA[0]);
    for c in &erf::BETA[1..] {
        q = _mm256_fmadd_ps(q, z2, _mm256_set1_ps(*c));
    }
    let e = _mm256_div_ps(_mm256_mul_ps(z, p), q);
    // At the clamp the rational form gives ±0.99999994, not f32's ±1: far-left GELU would be x·3e-8, not 0.
    let at_clamp = _mm256_cmp_ps::<_CMP_GE_OQ>(
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), z),
        _mm256_set1_ps(erf::CLAMP),
    );
    let e = _mm256_blendv_ps(
        e,
        _mm256_mul_ps(z, _mm256_set1_ps(1.0 / erf::CLAMP)),
        at_clamp,
    );
    let half = _mm256_mul_ps(v, _mm256_set1_ps(0.5));
    _mm256_fmadd_ps(half, e, half)
}

/// Below this, GELU is `x/2 · (1 + erf)` with `1 + erf` under 3e-3: the rational erf's absolute error
/// (up to 5e-7) times `x/2` would exceed the kernels' 1e-6 bound from about -4, so such values go
/// through the scalar reference (libm's erff) instead.
const SCALAR_BELOW: f32 = -3.0;

#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(x: &mut [f32]) {
    let mut c = x.chunks_exact_mut(L);
    for v in &mut c {
        let xv = ld(v);
        let far_left = _mm256_cmp_ps::<_CMP_LT_OQ>(xv, _mm256_set1_ps(SCALAR_BELOW));
        if _mm256_movemask_ps(far_left) != 0 {
            crate::encoder_ops::gelu(v);
        } else {
            st(v, gelu8(xv));
        }
    }
    let tail = c.into_remainder();
    if tail.iter().any(|v| *v < SCALAR_BELOW) {
        crate::encoder_ops::gelu(tail);
    } else if !tail.is_empty() {
        let mut buf = [0.0f32; L];
        buf[..tail.len()].copy_from_slice(tail);
        let v = gelu8(ld(&buf));
        st(&mut buf, v);
        let n = tail.len();
        tail.copy_from_slice(&buf[..n]);
    }
}

fn layernorm(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    // SAFETY: only ENCODER_AVX2 holds this wrapper, and `encoder_ops` hands that table out only after
    // `has_avx2` confirmed AVX2 and FMA.
    unsafe { layernorm_avx2(out, x, weight, bias, eps) }
}

fn gelu(x: &mut [f32]) {
    // SAFETY: as `layernorm` above.
    unsafe { gelu_avx2(x) }
}

pub(crate) static ENCODER_AVX2: EncoderOps = EncoderOps {
    variant: "avx2+fma",
    layernorm,
    gelu,
};
