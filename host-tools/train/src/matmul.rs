//! The matrix products of training, all on the kernels' accumulate GEMM `C += A · B` (`Kernels::gemm_f32`,
//! register-tiled on every SIMD tier), which reads `A` through strides, so a transposed left operand is free:
//! - forward `Y (R, N) = X (R, K) · Wᵀ`: `W (N, K)` transposed once per call into a reusable buffer (`O(N K)`
//!   against the product's `O(R N K)`), then [`mm`];
//! - `dX (R, K) = dY (R, N) · W (N, K)`: [`mm`] with `W` as it is;
//! - `dW (N, K) += dYᵀ · X`: [`mm_at`], `dYᵀ` read through swapped strides.
//!
//! Work is split over rayon's current pool by blocks of output rows; every output element is summed by one
//! kernel call over the whole inner dimension in a fixed order, so results do not depend on the number of
//! threads.

use enigma_core::kernels::{Gemm, Kernels};
use rayon::prelude::*;

/// Output rows per task: a multiple of the kernels' 6-row tiles, about two tasks per thread (stealing evens
/// out a busy core), and at least 48 so each task's pass over `B` (the classifier's is 4 MB) is paid by enough
/// rows.
fn row_block(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(2 * threads).div_ceil(6).max(8) * 6
}

/// Runs `f(out rows (m, N), x rows (m, K), m)` on matching blocks of rows of `out (R, N)` and `x (R, K)`
/// over rayon's pool: the split every row-parallel product below shares.
fn row_blocks(
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    f: impl Fn(&mut [f32], &[f32], usize) + Sync + Send,
) {
    if rows == 0 {
        return;
    }
    let (n, kd) = (out.len() / rows, x.len() / rows);
    let blk = row_block(rows);
    out.par_chunks_mut(blk * n)
        .zip(x.par_chunks(blk * kd))
        .for_each(|(o, xb)| f(o, xb, o.len() / n));
}

/// `out (R, N) = x (R, K) · b (K, N)`, or `+=` when `accumulate`; split over rows.
pub fn mm(k: &Kernels, out: &mut [f32], x: &[f32], b: &[f32], rows: usize, accumulate: bool) {
    let (n, kd) = (out.len() / rows.max(1), x.len() / rows.max(1));
    debug_assert_eq!(b.len(), n * kd);
    row_blocks(out, x, rows, |o, xb, m| {
        let g = Gemm::new(m, kd, n);
        (k.gemm_f32)(o, xb, b, if accumulate { g } else { g.overwrite() });
    });
}

/// `dw (N, K) += dyᵀ · x` for `dy (R, N)`, `x (R, K)`; split over rows of `dw`.
pub fn mm_at(k: &Kernels, dw: &mut [f32], dy: &[f32], x: &[f32], rows: usize) {
    if rows == 0 {
        return;
    }
    let (n, kd) = (dy.len() / rows, x.len() / rows);
    debug_assert_eq!(dw.len(), n * kd);
    let blk = row_block(n);
    dw.par_chunks_mut(blk * kd).enumerate().for_each(|(i, o)| {
        let j0 = i * blk;
        // dyᵀ[j0.., p] = dy[p, j0..]: rows of A are columns of dy.
        let g = Gemm::new(o.len() / kd, rows, kd).a_t(n);
        (k.gemm_f32)(o, &dy[j0..], x, g);
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

/// Columns per panel of [`transpose_panels`].
pub const PANEL: usize = 512;

/// `out = wᵀ` for `w (N, K)`, in panels of [`PANEL`] columns: panel `j` is the `(K, ≤ PANEL)` row-major
/// transpose of rows `j · PANEL..` of `w`. A wide `wᵀ` (the classifier's `(D, V)`) would put the rows of a
/// tile's `B` panel `4 V` bytes apart, a multiple of 4 KiB that keeps them in the same cache sets.
pub fn transpose_panels(out: &mut [f32], w: &[f32], n: usize, kd: usize) {
    debug_assert_eq!(out.len(), n * kd);
    out.par_chunks_mut(PANEL * kd)
        .zip(w.par_chunks(PANEL * kd))
        .for_each(|(o, w)| transpose_serial(o, w, w.len() / kd, kd));
}

/// `out (R, N) = x (R, K) · wᵀ` with `wᵀ` in the panels of [`transpose_panels`]; split over rows.
pub fn mm_panels(k: &Kernels, out: &mut [f32], x: &[f32], panels: &[f32], rows: usize) {
    let (n, kd) = (out.len() / rows.max(1), x.len() / rows.max(1));
    debug_assert_eq!(panels.len(), n * kd);
    row_blocks(out, x, rows, |o, xb, m| {
        for (j, pn) in panels.chunks(PANEL * kd).enumerate() {
            let g = Gemm::new(m, kd, pn.len() / kd).ldc(n).overwrite();
            (k.gemm_f32)(&mut o[j * PANEL..], xb, pn, g);
        }
    });
}

/// `out (cols, rows) = xᵀ` on the calling thread.
pub fn transpose_serial(out: &mut [f32], x: &[f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
}

/// A reusable buffer for transposed weights, so a step allocates nothing after the first.
#[derive(Default)]
pub struct Tmp {
    wt: Vec<f32>,
}

impl Tmp {
    /// A scratch slice of `n` elements (contents unspecified).
    pub fn scratch(&mut self, n: usize) -> &mut [f32] {
        if self.wt.len() < n {
            self.wt.resize(n, 0.0);
        }
        &mut self.wt[..n]
    }
}

/// `y (R, N) = x (R, K) · w (N, K)ᵀ`, the forward of a linear layer.
pub fn linear_forward(
    k: &Kernels,
    tmp: &mut Tmp,
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
) {
    if rows == 0 {
        return;
    }
    let (n, kd) = (y.len() / rows, x.len() / rows);
    let wt = tmp.scratch(n * kd);
    transpose(wt, w, n, kd);
    mm(k, y, x, wt, rows, false);
}

/// Backward of `y (R, N) = x (R, K) · w (N, K)ᵀ`, given `dy (R, N)`: `dw (N, K) += dyᵀ · x`, and
/// `dx (R, K) = dy · w` (or `+=` when `accumulate`).
pub fn linear_backward(
    k: &Kernels,
    dx: Option<(&mut [f32], bool)>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
) {
    mm_at(k, dw, dy, x, rows);
    if let Some((dx, accumulate)) = dx {
        mm(k, dx, dy, w, rows, accumulate);
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
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    pub(crate) fn fill(n: usize, seed: u64) -> Vec<f32> {
        enigma_testkit::XorShift::new(seed).fill(n, -1.0, 1.0)
    }

    fn close(a: &[f32], b: &[f32]) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn products_and_backward_match_the_triple_loop() {
        let k = enigma_core::kernels::kernels();
        // Odd sizes exercise the kernel's tails and the tiles of the transpose; 100 rows make several tasks.
        let (r, kd, n) = (100, 45, 29);
        let (x, w, dy) = (fill(r * kd, 1), fill(n * kd, 2), fill(r * n, 3));
        let mut want = vec![0.0; r * n];
        mm_reference(&mut want, &x, &w, r);
        let mut got = vec![f32::NAN; r * n];
        linear_forward(k, &mut Tmp::default(), &mut got, &x, &w, r);
        close(&got, &want);
        let mut wt = vec![0.0; n * kd];
        transpose(&mut wt, &w, n, kd);
        assert_eq!(wt[3 * n + 5], w[5 * kd + 3]);
        mm(k, &mut got, &x, &wt, r, true);
        close(&got, &want.iter().map(|v| 2.0 * v).collect::<Vec<_>>());

        let mut dx = vec![f32::NAN; r * kd];
        let mut dw = vec![1.0; n * kd];
        linear_backward(k, Some((&mut dx, false)), &mut dw, &dy, &x, &w, r);
        // dx = dy · w: the reference with wᵀ as its right operand.
        let mut want_dx = vec![0.0; r * kd];
        mm_reference(&mut want_dx, &dy, &wt, r);
        close(&dx, &want_dx);
        let (mut dyt, mut xt) = (vec![0.0; r * n], vec![0.0; r * kd]);
        transpose(&mut dyt, &dy, r, n);
        transpose(&mut xt, &x, r, kd);
        let mut want_dw = vec![0.0; n * kd];
        mm_reference(&mut want_dw, &dyt, &xt, n);
        close(&dw, &want_dw.iter().map(|v| v + 1.0).collect::<Vec<_>>());
    }

    #[test]
    fn panels_give_the_plain_product() {
        let k = enigma_core::kernels::kernels();
        // Two whole panels and a partial one.
        let (r, kd, n) = (20, 9, 2 * PANEL + 37);
        let (x, w) = (fill(r * kd, 6), fill(n * kd, 7));
        let mut want = vec![0.0; r * n];
        mm_reference(&mut want, &x, &w, r);
        let mut panels = vec![0.0; n * kd];
        transpose_panels(&mut panels, &w, n, kd);
        let mut got = vec![f32::NAN; r * n];
        mm_panels(k, &mut got, &x, &panels, r);
        close(&got, &want);
    }

    #[test]
    fn weight_gradient_does_not_depend_on_the_thread_count() {
        let k = enigma_core::kernels::kernels();
        let (r, kd, n) = (300, 40, 70);
        let (x, dy) = (fill(r * kd, 4), fill(r * n, 5));
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut dw = vec![0.5; n * kd];
            pool.install(|| mm_at(k, &mut dw, &dy, &x, r));
            dw
        };
        assert_eq!(run(1), run(3));
    }
}
