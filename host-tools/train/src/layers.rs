//! One forward/backward pair of free functions per layer, llm.c style: forward computes what inference
//! computes and leaves in its buffers what backward needs; backward adds into gradient buffers (zeroed once per
//! step by the caller) and writes input gradients.
//!
//! Rows are tokens: a `(R, D)` buffer is `R = B * T` rows of `D` values. Work is split over rayon's current
//! pool in fixed blocks of rows, and every sum over rows is taken block by block in a fixed order, so results
//! are identical whatever the number of threads (a resumed run repeats an uninterrupted one exactly).

use super::matmul;
use enigma_core::kernels::{generic, Gemm, Kernels};
use rayon::prelude::*;

/// Rows per parallel task for the cheap per-row ops. Fixed (not derived from the thread count) because the
/// reductions over rows are summed per block.
const ROWS: usize = 64;

/// `acc += x`, the residual connection, split over rows.
pub fn add(k: &Kernels, acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(ROWS * 64)
        .zip(x.par_chunks(ROWS * 64))
        .for_each(|(a, x)| (k.add)(a, x));
}

/// `out (R, D) = rmsnorm(x (R, D)) * w (D)`, the kernel inference uses.
pub fn rmsnorm_forward(k: &Kernels, out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    out.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(o, xs)| {
            for (o, x) in o.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                (k.rmsnorm)(o, x, w, eps);
            }
        });
}

/// Backward of [`rmsnorm_forward`]: `dx (R, D) += ∂`, `dw (D) += ∂`, from `dy (R, D)` and the input `x`.
///
/// With `r = 1 / sqrt(mean(x²) + eps)`, `x̂ = x r`, `g = dy ⊙ w`: `dx = r (g - x̂ · mean(g ⊙ x̂))`, `dw = Σ dy ⊙ x̂`.
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
) {
    let d = w.len();
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(ROWS * d)
        .zip(dy.par_chunks(ROWS * d))
        .zip(x.par_chunks(ROWS * d))
        .map(|((dxs, dys), xs)| {
            let mut dwp = vec![0.0f32; d];
            for ((dx, dy), x) in dxs
                .chunks_exact_mut(d)
                .zip(dys.chunks_exact(d))
                .zip(xs.chunks_exact(d))
            {
                let ss = dot(x, x) / d as f32;
                let r = 1.0 / (ss + eps).sqrt();
                let mut gx = [0.0f32; 8];
                for ((dy, w), x) in dy.chunks(8).zip(w.chunks(8)).zip(x.chunks(8)) {
                    for j in 0..dy.len() {
                        gx[j] += dy[j] * w[j] * x[j] * r;
                    }
                }
                for i in 0..d {
                    dwp[i] += dy[i] * x[i] * r;
                }
                let mean = gx.iter().sum::<f32>() / d as f32;
                for i in 0..d {
                    dx[i] += r * (dy[i] * w[i] - x[i] * r * mean);
                }
            }
            dwp
        })
        .collect();
    for p in &partial {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
}

/// The RoPE table for positions `0..t`: `(T, HS/2, 2)` of `(cos, sin)`, from the function inference uses.
pub fn rope_table(t: usize, hs: usize, theta: f32) -> Vec<f32> {
    let mut table = vec![0.0; t * hs];
    for (pos, row) in table.chunks_exact_mut(hs).enumerate() {
        generic::rope_table(row, hs, pos, theta);
    }
    table
}

/// Rotates every head of `x (B*T, n*HS)` by its position's row of `table (T, HS)`; `inverse` applies the
/// transpose rotation, which is the backward of the forward one.
pub fn rope(k: &Kernels, x: &mut [f32], table: &[f32], t: usize, width: usize, inverse: bool) {
    let hs = table.len() / t;
    x.par_chunks_mut(ROWS * width)
        .enumerate()
        .for_each(|(blk, xs)| {
            for (i, row) in xs.chunks_exact_mut(width).enumerate() {
                let pos = (blk * ROWS + i) % t;
                let cs = &table[pos * hs..(pos + 1) * hs];
                if inverse {
                    for head in row.chunks_exact_mut(hs) {
                        for (p, c) in head.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
                            let (d0, d1) = (p[0], p[1]);
                            p[0] = d0 * c[0] + d1 * c[1];
                            p[1] = -d0 * c[1] + d1 * c[0];
                        }
                    }
                } else {
                    (k.rope)(row, cs);
                }
            }
        });
}

/// `g (R, H) = silu(h1) * h3`.
pub fn swiglu_forward(k: &Kernels, g: &mut [f32], h1: &[f32], h3: &[f32]) {
    g.par_chunks_mut(ROWS * 64)
        .zip(h1.par_chunks(ROWS * 64))
        .zip(h3.par_chunks(ROWS * 64))
        .for_each(|((g, a), b)| {
            g.copy_from_slice(a);
            (k.silu_mul)(g, b);
        });
}

/// Backward of [`swiglu_forward`]: `dh1 = dg · h3 · σ(h1) (1 + h1 (1 - σ(h1)))`, `dh3 = dg · silu(h1)`.
///
/// `silu(h1)` comes from the kernels' SIMD `silu_mul` (against ones) and `σ(h1) = silu(h1) / h1`, so no scalar
/// `exp` runs here.
pub fn swiglu_backward(
    k: &Kernels,
    dh1: &mut [f32],
    dh3: &mut [f32],
    dg: &[f32],
    h1: &[f32],
    h3: &[f32],
) {
    const SUB: usize = 256;
    const ONES: [f32; SUB] = [1.0; SUB];
    dh1.par_chunks_mut(ROWS * 64)
        .zip(dh3.par_chunks_mut(ROWS * 64))
        .zip(dg.par_chunks(ROWS * 64))
        .zip(h1.par_chunks(ROWS * 64).zip(h3.par_chunks(ROWS * 64)))
        .for_each(|(((d1, d3), dg), (a, b))| {
            for ((((d1, d3), dg), a), b) in d1
                .chunks_mut(SUB)
                .zip(d3.chunks_mut(SUB))
                .zip(dg.chunks(SUB))
                .zip(a.chunks(SUB))
                .zip(b.chunks(SUB))
            {
                // d3 = silu(a) for now.
                d3.copy_from_slice(a);
                (k.silu_mul)(d3, &ONES[..a.len()]);
                for i in 0..d1.len() {
                    let silu = d3[i];
                    let s = if a[i] != 0.0 { silu / a[i] } else { 0.5 };
                    d1[i] = dg[i] * b[i] * (s + silu * (1.0 - s));
                    d3[i] = dg[i] * silu;
                }
            }
        });
}

/// Copies `rows (B*T, n*HS)` into head-major `heads (B, n, T, HS)` (or back, when `to_rows`).
pub fn heads_layout(
    rows: &mut [f32],
    heads: &mut [f32],
    t: usize,
    n: usize,
    hs: usize,
    to_rows: bool,
) {
    let width = n * hs;
    // One task per sequence: both sides of a sequence are contiguous.
    rows.par_chunks_mut(t * width)
        .zip(heads.par_chunks_mut(t * width))
        .for_each(|(r, h)| {
            for pos in 0..t {
                for head in 0..n {
                    let a = &mut r[pos * width + head * hs..pos * width + (head + 1) * hs];
                    let b = &mut h[(head * t + pos) * hs..(head * t + pos + 1) * hs];
                    if to_rows {
                        a.copy_from_slice(b);
                    } else {
                        b.copy_from_slice(a);
                    }
                }
            }
        });
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub t: usize,
    pub hs: usize,
    /// Query heads that share one key/value head.
    pub group: usize,
}

/// Query rows per causal block: block `[i0, i1)` only needs keys `< i1`, so scores and products skip most of the
/// masked half (a multiple of the kernels' 6-row tiles).
const CAUSAL_BLOCK: usize = 36;

/// The causal row blocks `[i0, i1)` of `t` positions.
fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(CAUSAL_BLOCK)
        .map(move |i0| (i0, (i0 + CAUSAL_BLOCK).min(t)))
}

/// Causal grouped-query attention over head-major buffers: for each sequence and query head `h`,
/// `P = softmax(mask(Q Kᵀ · scale))` and `O = P V`, with the key/value head `h / group`.
/// `q (B, NH, T, HS)`, `k, v (B, NKV, T, HS)`, `p (B, NH, T, T)` kept for backward (what lies above the
/// diagonal is unspecified: backward never reads it), `o (B, NH, T, HS)`.
pub fn attention_forward(
    kn: &Kernels,
    o: &mut [f32],
    p: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
) {
    let AttnDims { t, hs, group } = dims;
    let scale = 1.0 / (hs as f32).sqrt();
    // One task per (sequence, key/value head): its `group` query heads are contiguous.
    o.par_chunks_mut(group * t * hs)
        .zip(p.par_chunks_mut(group * t * t))
        .zip(q.par_chunks(group * t * hs))
        .zip(k.par_chunks(t * hs).zip(v.par_chunks(t * hs)))
        .for_each_init(Vec::new, |kt, (((o, p), q), (k, v))| {
            // kᵀ (HS, T): the scores' right operand, row-major.
            kt.resize(t * hs, 0.0);
            matmul::transpose_serial(kt, k, t, hs);
            for g in 0..group {
                let pg = &mut p[g * t * t..(g + 1) * t * t];
                let qg = &q[g * t * hs..(g + 1) * t * hs];
                let og = &mut o[g * t * hs..(g + 1) * t * hs];
                for (i0, i1) in causal_blocks(t) {
                    // S[i0..i1, ..i1] = Q[i0..i1] · Kᵀ[.., ..i1]
                    let sg = Gemm::new(i1 - i0, hs, i1).ldb(t).ldc(t).overwrite();
                    (kn.gemm_f32)(&mut pg[i0 * t..], &qg[i0 * hs..], kt, sg);
                    for i in i0..i1 {
                        let (seen, masked) = pg[i * t..i * t + i1].split_at_mut(i + 1);
                        for s in seen.iter_mut() {
                            *s *= scale;
                        }
                        (kn.softmax)(seen);
                        // The block computed scores past the diagonal too; zeros there add nothing to O
                        // (nor, in backward, to any gradient).
                        masked.fill(0.0);
                    }
                    // O[i0..i1] = P[i0..i1, ..i1] · V[..i1]
                    let og_g = Gemm::new(i1 - i0, i1, hs).lda(t).overwrite();
                    (kn.gemm_f32)(&mut og[i0 * hs..], &pg[i0 * t..], v, og_g);
                }
            }
        });
}

/// Backward of [`attention_forward`]: from `dout (B, NH, T, HS)` writes `dq (B, NH, T, HS)` and
/// `dk, dv (B, NKV, T, HS)`.
///
/// Per query head: `dP = dO Vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale`, `dQ = dS K`, `dK += dSᵀ Q`,
/// `dV += Pᵀ dO`; the heads of a group add into their shared `dK`, `dV`. `dSᵀ` and `Pᵀ` are read through the
/// kernel's strides; row block `[i0, i1)` of `dK`, `dV` sums over queries `≥ i0` only (`dS`, `P` are zero above
/// the diagonal).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    kn: &Kernels,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    p: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
) {
    let AttnDims { t, hs, group } = dims;
    let scale = 1.0 / (hs as f32).sqrt();
    dq.par_chunks_mut(group * t * hs)
        .zip(dk.par_chunks_mut(t * hs).zip(dv.par_chunks_mut(t * hs)))
        .zip(dout.par_chunks(group * t * hs))
        .zip(
            p.par_chunks(group * t * t)
                .zip(q.par_chunks(group * t * hs)),
        )
        .zip(k.par_chunks(t * hs).zip(v.par_chunks(t * hs)))
        .for_each(|((((dq, (dk, dv)), dout), (p, q)), (k, v))| {
            // Per-thread scratch kept across calls: a fresh `T²` buffer per task would be a fresh mapping
            // (page faults and zeroing) every time.
            SCRATCH.with_borrow_mut(|(ds, vt)| {
                ds.resize(t * t, 0.0);
                // vᵀ (HS, T): dP's right operand.
                vt.resize(t * hs, 0.0);
                matmul::transpose_serial(vt, v, t, hs);
                for g in 0..group {
                    let pg = &p[g * t * t..(g + 1) * t * t];
                    let dog = &dout[g * t * hs..(g + 1) * t * hs];
                    let qg = &q[g * t * hs..(g + 1) * t * hs];
                    let dqg = &mut dq[g * t * hs..(g + 1) * t * hs];
                    for (i0, i1) in causal_blocks(t) {
                        // dP[i0..i1, ..i1] = dO[i0..i1] · Vᵀ[.., ..i1]
                        let gp = Gemm::new(i1 - i0, hs, i1).ldb(t).ldc(t).overwrite();
                        (kn.gemm_f32)(&mut ds[i0 * t..], &dog[i0 * hs..], vt, gp);
                        for i in i0..i1 {
                            let (dsr, masked) = ds[i * t..i * t + i1].split_at_mut(i + 1);
                            masked.fill(0.0);
                            let pr = &pg[i * t..i * t + i + 1];
                            let sum = dot(pr, dsr);
                            for (d, a) in dsr.iter_mut().zip(pr) {
                                *d = a * (*d - sum) * scale;
                            }
                        }
                        // dQ[i0..i1] = dS[i0..i1, ..i1] · K[..i1]
                        let gq = Gemm::new(i1 - i0, i1, hs).lda(t).overwrite();
                        (kn.gemm_f32)(&mut dqg[i0 * hs..], &ds[i0 * t..], k, gq);
                    }
                    for (i0, i1) in causal_blocks(t) {
                        // dK[i0..i1] += dSᵀ[i0..i1, i0..] · Q[i0..], dV likewise with Pᵀ and dO.
                        // The group's first head writes dK, dV; the others add to them.
                        let gt = Gemm::new(i1 - i0, t - i0, hs).a_t(t);
                        let gt = if g == 0 { gt.overwrite() } else { gt };
                        let at = i0 * t + i0;
                        (kn.gemm_f32)(&mut dk[i0 * hs..], &ds[at..], &qg[i0 * hs..], gt);
                        (kn.gemm_f32)(&mut dv[i0 * hs..], &pg[at..], &dog[i0 * hs..], gt);
                    }
                }
            })
        });
}

thread_local! {
    /// `(dS (T, T), Vᵀ (HS, T))` of [`attention_backward`], one pair per pool thread.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Cross-entropy of `rows` rows of `xn (A, D)` against `classifier (V, D)`: returns the summed loss over
/// rows, and when `grad` is given (`(dxn (A, D), dclassifier (V, D), scale)`), writes
/// `dxn = scale · dlogits · W` and adds `scale · dlogitsᵀ · xn` into the classifier's gradient.
///
/// Rows go through in chunks of [`ce_chunk`] rows so the `(chunk, V)` logits are the only vocabulary-sized buffer.
pub struct CrossEntropy<'a> {
    pub kn: &'a Kernels,
    /// (V, D)
    pub classifier: &'a [f32],
    /// (D, V): the classifier transposed (once per step) in the panels of `matmul::transpose_panels`, the
    /// logits' right operand
    pub classifier_t: &'a [f32],
    pub vocab: usize,
}

/// Rows per logits chunk in [`CrossEntropy`].
pub fn ce_chunk(vocab: usize) -> usize {
    (CE_LOGITS / vocab.max(1)).max(64)
}

/// Logits per chunk of [`CrossEntropy`] (32 MiB): large chunks pass over the classifier's gradient fewer times
/// (it is read and written once per chunk) and meet fewer barriers; at V = 8000 a chunk is 1048 rows, faster
/// than 256 or 512 (measured on nano and micro).
const CE_LOGITS: usize = 1 << 23;

/// The gradient side of a cross-entropy call.
pub struct CeGrad<'a> {
    /// (A, D), written
    pub dxn: &'a mut [f32],
    /// (V, D), added to
    pub dclassifier: &'a mut [f32],
    /// Multiplies every row's gradient: 1 / (targets counted in the whole optimizer step).
    pub scale: f32,
}

impl CrossEntropy<'_> {
    /// Summed loss over the rows of `xn (A, D)` with `targets (A)`; see the type's docs for `grad`.
    pub fn run(
        &self,
        logits: &mut Vec<f32>,
        xn: &[f32],
        targets: &[u32],
        mut grad: Option<CeGrad<'_>>,
    ) -> f64 {
        let (v, kn) = (self.vocab, self.kn);
        let d = self.classifier.len() / v;
        let mut total = 0.0f64;
        let chunk = ce_chunk(v);
        for (c, (xs, ts)) in xn.chunks(chunk * d).zip(targets.chunks(chunk)).enumerate() {
            let a = ts.len();
            logits.resize(a * v, 0.0);
            let lg = &mut logits[..a * v];
            matmul::mm_panels(kn, lg, xs, self.classifier_t, a);
            let scale = grad.as_ref().map_or(0.0, |g| g.scale);
            let losses: Vec<f64> = lg
                .par_chunks_mut(v)
                .zip(ts.par_iter())
                .map(|(row, &tgt)| {
                    let zt = row[tgt as usize] - max_of(row);
                    // The kernels' softmax (SIMD exp). Its largest output is 1 / Σ exp(z - max), so the loss
                    // -log p(target) = log Σ exp(z - max) - (z_target - max) cannot underflow the way
                    // log p(target) itself can.
                    (kn.softmax)(row);
                    let log_sum = -(max_of(row) as f64).ln();
                    // The probabilities become the logits' gradient: (p - onehot) · scale.
                    for x in row.iter_mut() {
                        *x *= scale;
                    }
                    row[tgt as usize] -= scale;
                    log_sum - zt as f64
                })
                .collect();
            total += losses.iter().sum::<f64>();
            if let Some(g) = grad.as_mut() {
                let dxn = &mut g.dxn[c * chunk * d..c * chunk * d + a * d];
                matmul::mm(kn, dxn, lg, self.classifier, a, false);
                matmul::mm_at(kn, g.dclassifier, lg, xs, a);
            }
        }
        total
    }
}

/// `Σ a ⊙ b` in 8 running sums (so the loop vectorises), added in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element (`-∞` for none), in 16 independent lanes so the loop vectorises.
fn max_of(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks.remainder().iter();
    tail.chain(&m)
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

#[cfg(test)]
mod tests {
    use super::super::matmul::tests::fill;
    use super::*;

    /// Attention of one sequence with plain loops, in f64: `(o, p)` for `q (NH, T, HS)`, `k, v (NKV, T, HS)`.
    fn naive(q: &[f32], k: &[f32], v: &[f32], d: AttnDims) -> (Vec<f64>, Vec<f64>) {
        let AttnDims { t, hs, group } = d;
        let nh = q.len() / (t * hs);
        let (mut o, mut p) = (vec![0.0; nh * t * hs], vec![0.0; nh * t * t]);
        for h in 0..nh {
            let kv = h / group;
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hs)
                            .map(|c| {
                                q[(h * t + i) * hs + c] as f64 * k[(kv * t + j) * hs + c] as f64
                            })
                            .sum::<f64>()
                            / (hs as f64).sqrt()
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for j in 0..=i {
                    let pj = (s[j] - max).exp() / z;
                    p[(h * t + i) * t + j] = pj;
                    for c in 0..hs {
                        o[(h * t + i) * hs + c] += pj * v[(kv * t + j) * hs + c] as f64;
                    }
                }
            }
        }
        (o, p)
    }

    #[test]
    fn cross_entropy_over_several_chunks_matches_plain_loops() {
        let kn = enigma_core::kernels::kernels();
        // A vocabulary wide enough for 64-row chunks: 150 rows make two whole chunks and a partial one.
        let (v, d, rows) = (1 << 17, 4, 150);
        assert_eq!(ce_chunk(v), 64);
        let (w, x) = (fill(v * d, 8), fill(rows * d, 9));
        let targets: Vec<u32> = (0..rows as u32).map(|i| i * 7919 % v as u32).collect();
        let mut w_t = vec![0.0; v * d];
        matmul::transpose_panels(&mut w_t, &w, v, d);
        let ce = CrossEntropy {
            kn,
            classifier: &w,
            classifier_t: &w_t,
            vocab: v,
        };
        let (mut dxn, mut dw) = (vec![f32::NAN; rows * d], vec![0.0; v * d]);
        let grad = CeGrad {
            dxn: &mut dxn,
            dclassifier: &mut dw,
            scale: 0.5,
        };
        let loss = ce.run(&mut Vec::new(), &x, &targets, Some(grad));
        let mut want = 0.0f64;
        for (r, &tg) in targets.iter().enumerate() {
            let z: Vec<f64> = (0..v)
                .map(|j| (0..d).map(|i| (x[r * d + i] * w[j * d + i]) as f64).sum())
                .collect();
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = z.iter().map(|z| (z - max).exp()).sum();
            want += sum.ln() + max - z[tg as usize];
            for i in 0..d {
                let g: f64 = (0..v)
                    .map(|j| {
                        let p = (z[j] - max).exp() / sum - (j == tg as usize) as u8 as f64;
                        0.5 * p * w[j * d + i] as f64
                    })
                    .sum();
                let got = dxn[r * d + i] as f64;
                // f32 sums over the 2^17 classes: ~1e-5 of rounding.
                assert!(
                    (got - g).abs() < 1e-4 * (1.0 + g.abs()),
                    "dxn[{r}, {i}]: {got} vs {g}"
                );
            }
        }
        assert!((loss - want).abs() < 1e-6 * want, "{loss} vs {want}");
    }

    #[test]
    fn attention_forward_matches_plain_loops() {
        let kn = enigma_core::kernels::kernels();
        // Several causal blocks with a partial last one; two query heads per key/value head.
        let d = AttnDims {
            t: 80,
            hs: 12,
            group: 2,
        };
        let (q, k, v) = (
            fill(4 * 80 * 12, 1),
            fill(2 * 80 * 12, 2),
            fill(2 * 80 * 12, 3),
        );
        let (mut o, mut p) = (vec![f32::NAN; q.len()], vec![f32::NAN; 4 * 80 * 80]);
        attention_forward(kn, &mut o, &mut p, &q, &k, &v, d);
        let (wo, wp) = naive(&q, &k, &v, d);
        for (i, (a, b)) in p.iter().zip(&wp).enumerate() {
            if i % 80 > (i / 80) % 80 {
                continue; // above the diagonal
            }
            assert!((*a as f64 - b).abs() < 1e-5, "p[{i}]: {a} vs {b}");
        }
        for (i, (a, b)) in o.iter().zip(&wo).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-5, "o[{i}]: {a} vs {b}");
        }
    }
}
