//! `gemm_f32` against the scalar reference: random shapes (0, 1, every tail of the tiles' 6 rows and
//! 8/16/32 columns, inner sizes across the 256-step blocks), row-major and transposed `A`, padded row strides
//! of `B` and `C`, and accumulation into what `C` already holds or (`overwrite`) over it, NaN included.
//!
//! Tolerance `|got - want| <= 1e-5 + |want| · 1e-5`: both sum each element in the same order from the same
//! start, so they differ only where the tier fuses a multiply-add the reference rounds twice (at most one
//! rounding of each product, ≤ k · 2⁻²⁴ · Σ|a·b| ≤ 512 · 6e-8 · 0.5 for the inputs here).

use super::check;
use crate::{generic, Gemm, Kernels};
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::vec::Vec;

/// `(g, a, b, c)`: a random product with random padding of every stride.
fn case(
    max_m: usize,
    max_k: usize,
    max_n: usize,
) -> impl Strategy<Value = (Gemm, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (
        0..max_m,
        0..max_k,
        0..max_n,
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        0usize..3,
        0usize..3,
    )
        .prop_flat_map(|(m, k, n, trans, over, pa, pb, pc)| {
            let g = Gemm::new(m, k, n).ldb(n + pb).ldc(n + pc);
            let g = if over { g.overwrite() } else { g };
            // A as stored: (m, k + pa) row-major, or (k, m + pa) read transposed.
            let (g, alen) = if trans {
                (g.a_t(m + pa), k * (m + pa))
            } else {
                (g.lda(k + pa), m * (k + pa))
            };
            let blen = k * (n + pb);
            let clen = m * (n + pc);
            (
                Just(g),
                pvec(-1.0f32..1.0, alen),
                pvec(-1.0f32..1.0, blen),
                pvec(-1.0f32..1.0, clen),
            )
        })
}

fn one(
    k: &Kernels,
    (g, a, b, c): (Gemm, Vec<f32>, Vec<f32>, Vec<f32>),
) -> Result<(), TestCaseError> {
    // An overwriting product must not read C: poison what the reference will overwrite.
    let mut c = c;
    if g.overwrite && g.n > 0 {
        for row in c.chunks_mut(g.ldc) {
            let n = g.n.min(row.len());
            row[..n].fill(f32::NAN);
        }
    }
    let (mut got, mut want) = (c.clone(), c);
    (k.gemm_f32)(&mut got, &a, &b, g);
    generic::gemm_f32(&mut want, &a, &b, g);
    super::close("gemm_f32", &got, &want, 1e-5, 1e-5)
}

/// Small shapes: every row and column tail.
pub(crate) fn prop_gemm(k: &Kernels) {
    check(96, case(15, 40, 70), |x| one(k, x));
}

/// Inner sizes past one 256-step block and widths past one 512-column block.
pub(crate) fn prop_gemm_blocks(k: &Kernels) {
    check(8, case(9, 600, 40), |x| one(k, x));
    check(6, case(8, 20, 1100), |x| one(k, x));
}

/// Empty products leave `C` alone; padding between rows of `C` is never written.
pub(crate) fn edge_gemm(k: &Kernels) {
    let mut c = [5.0f32; 6];
    (k.gemm_f32)(&mut c, &[], &[], Gemm::new(2, 0, 3));
    assert_eq!(c, [5.0; 6], "k = 0 adds nothing");
    let mut c = [5.0f32; 6];
    (k.gemm_f32)(&mut c, &[], &[], Gemm::new(2, 0, 2).ldc(3).overwrite());
    assert_eq!(
        c,
        [0.0, 0.0, 5.0, 0.0, 0.0, 5.0],
        "k = 0 overwrites with zeros"
    );
    (k.gemm_f32)(&mut [], &[1.0], &[1.0], Gemm::new(0, 1, 0));
    let mut c = [1.0f32];
    (k.gemm_f32)(&mut c, &[2.0], &[3.0], Gemm::new(1, 1, 1));
    assert_eq!(c, [7.0]);
    // C (2, 3) in rows of 4: the pad column keeps its NaN.
    let mut c = [0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0, f32::NAN];
    let a = [1.0, 2.0];
    let b = [1.0, 2.0, 3.0];
    (k.gemm_f32)(&mut c, &a, &b, Gemm::new(2, 1, 3).ldc(4));
    assert_eq!(&c[..3], &[1.0, 2.0, 3.0]);
    assert_eq!(&c[4..7], &[2.0, 4.0, 6.0]);
    assert!(c[3].is_nan() && c[7].is_nan());
}

#[test]
#[should_panic(expected = "gemm: b too short")]
fn short_b_is_refused() {
    let mut c = [0.0f32; 4];
    generic::gemm_f32(&mut c, &[1.0; 4], &[1.0; 3], Gemm::new(2, 2, 2));
}
