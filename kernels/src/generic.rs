//! Scalar reference of every op. These define what each op computes; faster tiers are tested against them.
//!
//! The summation order is llama2.c's (`run.c`): one running sum, left to right, so an f32 model run on this tier
//! reproduces llama2.c's greedy output token for token.

/// `out (n) = w (n, d) · x (d)`.
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let d = x.len();
    debug_assert_eq!(w.len(), out.len() * d);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(d)) {
        *o = dot_f32(row, x);
    }
}

/// `out (t, n) = x (t, d) · w (n, d)ᵀ`: a prompt chunk of `t` tokens against one weight matrix.
pub fn matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize) {
    if t == 0 {
        return;
    }
    let d = x.len() / t;
    let n = out.len() / t;
    for (o, xr) in out.chunks_exact_mut(n).zip(x.chunks_exact(d)) {
        matvec_f32(o, w, xr);
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
    out.fill(0.0);
    for (p, v) in probs.iter().zip(values.chunks_exact(out.len())) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
}
