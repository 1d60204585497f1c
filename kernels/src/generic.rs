//! Scalar reference of every op. These define what each op computes; faster tiers are tested against them.
//!
//! The summation order is llama2.c's (`run.c`): one running sum, left to right, so an f32 model run on this tier
//! reproduces llama2.c's greedy output token for token. The quantized dot products are llama.cpp's
//! `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0` reference loops.

use crate::frame::Weight;
use crate::gemm::Gemm;
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use half::{bf16, f16};

pub use crate::quant::{
    dequantize_bf16, dequantize_f16, dequantize_q4_0, dequantize_q8_0, quantize_bf16, quantize_f16,
    quantize_q4_0, quantize_q8_0,
};

/// `out (n) = w (n, d) · x (d)`.
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let d = x.len();
    debug_assert_eq!(w.len(), out.len() * d);
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_f32(&w[r * d..(r + 1) * d], x);
    }
}

/// `out (t, n) = x (t, d) · w (n, d)ᵀ`: a prompt chunk of `t` tokens against one weight matrix.
pub fn matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize) {
    if t == 0 {
        return;
    }
    let d = x.len() / t;
    let n = out.len() / t;
    for i in 0..t {
        matvec_f32(&mut out[i * n..(i + 1) * n], w, &x[i * d..(i + 1) * d]);
    }
}

/// `C (m, n) += A (m, k) · B (k, n)` (or `=` when `g.overwrite`) with the strides of `g` (see [`Gemm`]): each
/// `C[i, j]` adds `A[i, p] · B[p, j]` for `p` ascending, the order every tier keeps.
pub fn gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    if !g.check(c, a.len(), b.len()) {
        return;
    }
    for i in 0..g.m {
        let crow = &mut c[i * g.ldc..i * g.ldc + g.n];
        if g.overwrite {
            crow.fill(0.0);
        }
        for p in 0..g.k {
            let av = a[i * g.a_rs + p * g.a_cs];
            for (cv, bv) in crow.iter_mut().zip(&b[p * g.ldb..p * g.ldb + g.n]) {
                *cv += av * bv;
            }
        }
    }
}

/// `acc (n) += x (n)`: the residual connection.
pub fn add(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `sum_i a[i] * b[i]`, one running sum.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// `out (d) = weight (d) * x (d) / sqrt(mean(x²) + eps)`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let mut ss = 0.0f32;
    for v in x {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += eps;
    let inv = 1.0 / libm::sqrtf(ss);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (inv * v);
    }
}

/// In-place softmax of `x (n)`, max-subtracted so large logits do not overflow.
pub fn softmax(x: &mut [f32]) {
    let Some(&first) = x.first() else { return };
    let max = x.iter().fold(first, |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Fills `cos_sin (head_size / 2, 2)` with `(cos θᵢ, sin θᵢ)`, `θᵢ = pos · theta^(-2i / head_size)`, as llama2.c does.
pub fn rope_table(cos_sin: &mut [f32], head_size: usize, pos: usize, theta: f32) {
    for (i, cs) in cos_sin.chunks_exact_mut(2).enumerate() {
        let freq = 1.0 / libm::powf(theta, (2 * i) as f32 / head_size as f32);
        let val = pos as f32 * freq;
        cs[0] = libm::cosf(val);
        cs[1] = libm::sinf(val);
    }
}

/// Rotates each head of `x (n_heads, head_size)` in place by `cos_sin (head_size / 2, 2)`; pairs are adjacent
/// elements (llama2.c's layout, not the half-split one of Hugging Face checkpoints).
pub fn rope(x: &mut [f32], cos_sin: &[f32]) {
    let head_size = cos_sin.len();
    for head in x.chunks_exact_mut(head_size) {
        for (p, cs) in head.chunks_exact_mut(2).zip(cos_sin.chunks_exact(2)) {
            let (v0, v1) = (p[0], p[1]);
            p[0] = v0 * cs[0] - v1 * cs[1];
            p[1] = v0 * cs[1] + v1 * cs[0];
        }
    }
}

/// `a (n) = silu(a) * b`, the SwiGLU gate: `silu(v) = v / (1 + e^-v)`.
pub fn silu_mul(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        let v = *x;
        *x = v * (1.0 / (1.0 + libm::expf(-v))) * y;
    }
}

/// `scores (t) = keys (t, head_size) · q (head_size) * scale`.
pub fn attn_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(q.len())) {
        *s = dot_f32(q, k) * scale;
    }
}

/// `out (head_size) = Σₜ probs[t] · values[t]`, `values (t, head_size)`.
pub fn attn_accum(out: &mut [f32], probs: &[f32], values: &[f32]) {
    accum(out, probs, values)
}

/// [`attn_scores`] over an f16 KV cache: each key widened exactly to f32, then the same dot product.
pub fn attn_scores_f16(scores: &mut [f32], q: &[f32], keys: &[f16], scale: f32) {
    matvec_f16(scores, &keys[..scores.len() * q.len()], q);
    for s in scores.iter_mut() {
        *s *= scale;
    }
}

/// [`attn_accum`] over an f16 KV cache: each value widened exactly to f32, then the same sums.
pub fn attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[f16]) {
    accum(out, probs, values)
}

fn accum<T: Weight>(out: &mut [f32], probs: &[f32], values: &[T]) {
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    for (p, v) in probs.iter().zip(values.chunks_exact(out.len())) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x.to_f32();
        }
    }
}

/// `out (n) = w (n, d) · x (d)` with f16 weights widened one at a time.
pub fn matvec_f16(out: &mut [f32], w: &[f16], x: &[f32]) {
    let d = x.len();
    debug_assert_eq!(w.len(), out.len() * d);
    for (r, o) in out.iter_mut().enumerate() {
        let mut s = 0.0f32;
        for (a, b) in w[r * d..(r + 1) * d].iter().zip(x) {
            s += a.to_f32() * b;
        }
        *o = s;
    }
}

/// `out (n) = w (n, d) · x (d)` with bf16 weights widened one at a time.
pub fn matvec_bf16(out: &mut [f32], w: &[bf16], x: &[f32]) {
    let d = x.len();
    debug_assert_eq!(w.len(), out.len() * d);
    for (r, o) in out.iter_mut().enumerate() {
        let mut s = 0.0f32;
        for (a, b) in w[r * d..(r + 1) * d].iter().zip(x) {
            s += a.to_f32() * b;
        }
        *o = s;
    }
}

/// `Σ_blocks d_w · d_x · Σ_j w.qs[j] · x.qs[j]` over `w (nb)` and `x (nb)`.
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for (p, q) in a.qs.iter().zip(&b.qs) {
            sumi += *p as i32 * *q as i32;
        }
        sumf += sumi as f32 * (a.scale() * b.scale());
    }
    sumf
}

/// `Σ_blocks d_w · d_x · Σ_j (nibble_j - 8) · x.qs[j]` over `w (nb)` and `x (nb)`, nibbles in llama.cpp order.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            s0 += ((a.qs[j] & 0x0f) as i32 - 8) * b.qs[j] as i32;
            s1 += ((a.qs[j] >> 4) as i32 - 8) * b.qs[j + QK / 2] as i32;
        }
        sumf += (s0 + s1) as f32 * a.scale() * b.scale();
    }
    sumf
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`: one column chunk of a q8_0 matvec whose activations
/// were quantized to `xq`. `w` starts at the chunk's first block of row 0; rows are `stride` blocks apart.
pub fn qmatvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o += vec_dot_q8_0_q8_0(&w[r * stride..r * stride + nb], xq);
    }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)` for q4_0 weights; see [`qmatvec_q8_0`].
pub fn qmatvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o += vec_dot_q4_0_q8_0(&w[r * stride..r * stride + nb], xq);
    }
}

/// `out (n) = w (n, d) · x (d)` for q8_0 weights: `x` is quantized to q8_0 chunk by chunk, as every tier does.
pub fn matvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], x: &[f32]) {
    crate::frame::matvec_quantized(out, w, x, qmatvec_q8_0);
}

/// `out (n) = w (n, d) · x (d)` for q4_0 weights: `x` is quantized to q8_0 chunk by chunk, as every tier does.
pub fn matvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], x: &[f32]) {
    crate::frame::matvec_quantized(out, w, x, qmatvec_q4_0);
}
