//! The matrix products of training, all built on the kernels' one f32 product `out = x · wᵀ`
//! (`Kernels::matmul_f32`, SIMD on every tier that has it).
//!
//! Backward needs two more forms: `dX = dY · W` and `dW += dYᵀ · X`. Rather than a second (scalar) GEMM,
//! each is turned into the kernel's form by transposing one operand, which costs `O(rows · cols)` against the
//! product's `O(rows · cols · inner)`:
//! - `dX (R, K) = dY (R, N) · W (N, K)   = dY · (Wᵀ)ᵀ`      → `mm(dX, dY, Wᵀ)`;
//! - `dW (N, K) += dYᵀ (N, R) · X (R, K) = dYᵀ · (Xᵀ)ᵀ`   → `mm_acc(dW, dYᵀ, Xᵀ)`.
//!
//! Work is split over rayon's current pool by blocks of rows of `x`; every output element is computed by one
//! kernel call over the whole inner dimension, so results do not depend on the number of threads.

use enigma_core::kernels::Kernels;
use rayon::prelude::*;

/// Rows of `x` per kernel call: enough to keep the kernel's 6-row tiles full, few enough that the block of
/// `x` and `out` stays in L2 while `w` streams past, and enough blocks to feed every thread.
fn row_block(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows.div_ceil(threads * 4)).div_ceil(6).clamp(1, 16) * 6
}

/// `out (R, N) = x (R, K) · w (N, K)ᵀ`, split over rows.
pub fn mm(k: &Kernels, out: &mut [f32], x: &[f32], w: &[f32], rows: usize) {
    if rows == 0 {
        return;
    }
    let (n, kd) = (out.len() / rows, x.len() / rows);
    debug_assert_eq!(w.len(), n * kd);
    let blk = row_block(rows);
    out.par_chunks_mut(blk * n)
        .zip(x.par_chunks(blk * kd))
        .for_each(|(o, xb)| (k.matmul_f32)(o, w, xb, xb.len() / kd));
}

/// `out (R, N) += x (R, K) · w (N, K)ᵀ`, split over rows; each block goes through a small temporary.
pub fn mm_acc(k: &Kernels, out: &mut [f32], x: &[f32], w: &[f32], rows: usize) {
    if rows == 0 {
        return;
    }
    let (n, kd) = (out.len() / rows, x.len() / rows);
    debug_assert_eq!(w.len(), n * kd);
    let blk = row_block(rows);
    out.par_chunks_mut(blk * n)
        .zip(x.par_chunks(blk * kd))
        .for_each_init(Vec::new, |tmp, (o, xb)| {
            tmp.clear();
            tmp.resize(o.len(), 0.0);
            (k.matmul_f32)(tmp, w, xb, xb.len() / kd);
            (k.add)(o, tmp);
        });
}

/// `out (cols, rows) = xᵀ` for `x (rows, cols)`, in 32 x 32 tiles so both sides stay in cache.
pub fn transpose(out: &mut [f32], x: &[f32], rows: usize, cols: usize) {
    const TILE: usize = 32;
    debug_assert_eq!(x.len(), rows * cols);
    debug_assert_eq!(out.len(), rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    // Parallel over bands of output rows (= input columns).
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, o)| {
            let c0 = band * TILE;
            let cn = o.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let rn = (rows - r0).min(TILE);
                for c in 0..cn {
                    let orow = &mut o[c * rows + r0..c * rows + r0 + rn];
                    for (r, v) in orow.iter_mut().enumerate() {
                        *v = x[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
}

/// Reusable buffers for the transposed operands, so a step allocates nothing after the first.
#[derive(Default)]
pub struct Tmp {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Tmp {
    /// A scratch slice of `n` elements (contents unspecified), separate from the ones backward uses.
    pub fn scratch(&mut self, n: usize) -> &mut [f32] {
        sized(&mut self.c, n)
    }
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Backward of `y (R, N) = x (R, K) · w (N, K)ᵀ`, given `dy (R, N)` and `xt = xᵀ (K, R)`:
/// `dw (N, K) += dyᵀ · x`, and `dx (R, K) = dy · w` (or `+=` when `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    k: &Kernels,
    tmp: &mut Tmp,
    dx: Option<(&mut [f32], bool)>,
    dw: &mut [f32],
    dy: &[f32],
    xt: &[f32],
    w: &[f32],
    rows: usize,
) {
    let n = dy.len() / rows;
    let kd = xt.len() / rows;
    debug_assert_eq!(w.len(), n * kd);
    // dyᵀ (N, R)
    let dyt = sized(&mut tmp.a, n * rows);
    transpose(dyt, dy, rows, n);
    mm_acc(k, dw, dyt, xt, n);
    if let Some((dx, accumulate)) = dx {
        // wᵀ (K, N)
        let wt = sized(&mut tmp.b, kd * n);
        transpose(wt, w, n, kd);
        if accumulate {
            mm_acc(k, dx, dy, wt, rows);
        } else {
            mm(k, dx, dy, wt, rows);
        }
    }
}

/// The plain triple loop the fast paths are tested against: `out (R, N) = x (R, K) · w (N, K)ᵀ`.
pub fn mm_reference(out: &mut [f32], x: &[f32], w: &[f32], rows: usize) {
    let (n, kd) = (out.len() / rows, x.len() / rows);
    for r in 0..rows {
        for j in 0..n {
            let mut s = 0.0f64;
            for i in 0..kd {
                s += x[r * kd + i] as f64 * w[j * kd + i] as f64;
            }
            out[r * n + j] = s as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn products_and_backward_match_the_triple_loop() {
        let k = enigma_core::kernels::kernels();
        // Odd sizes exercise the kernel's tails and the tiles of the transpose.
        let (r, kd, n) = (37, 45, 29);
        let (x, w, dy) = (fill(r * kd, 1), fill(n * kd, 2), fill(r * n, 3));
        let mut want = vec![0.0; r * n];
        mm_reference(&mut want, &x, &w, r);
        let mut got = vec![0.0; r * n];
        mm(k, &mut got, &x, &w, r);
        close(&got, &want);
        mm_acc(k, &mut got, &x, &w, r);
        close(&got, &want.iter().map(|v| 2.0 * v).collect::<Vec<_>>());

        let mut xt = vec![0.0; r * kd];
        transpose(&mut xt, &x, r, kd);
        assert_eq!(xt[3 * r + 5], x[5 * kd + 3]);
        let mut dx = vec![0.0; r * kd];
        let mut dw = vec![1.0; n * kd];
        linear_backward(
            k,
            &mut Tmp::default(),
            Some((&mut dx, false)),
            &mut dw,
            &dy,
            &xt,
            &w,
            r,
        );
        // dx = dy · w: the reference with wᵀ as its right operand.
        let mut wt = vec![0.0; n * kd];
        transpose(&mut wt, &w, n, kd);
        let mut want_dx = vec![0.0; r * kd];
        mm_reference(&mut want_dx, &dy, &wt, r);
        close(&dx, &want_dx);
        let mut dyt = vec![0.0; r * n];
        transpose(&mut dyt, &dy, r, n);
        let mut want_dw = vec![0.0; n * kd];
        mm_reference(&mut want_dw, &dyt, &xt, n);
        close(&dw, &want_dw.iter().map(|v| v + 1.0).collect::<Vec<_>>());
    }
}
