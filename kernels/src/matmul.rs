//! The frame of `matmul_f32`, `out (t, n) = x (t, d) · w (n, d)ᵀ` (prefill), shared by every SIMD tier: the
//! walk over `R`-row × `T`-token tiles ([`matmul`]) and the register tile itself, stamped out by
//! [`matmul_tier`] from the tier's vector primitives. A tier chooses only `R × T` and its primitives.
//!
//! Each output is the dot product of one weight row with one token row, accumulated lane-wise in column order
//! and reduced once at the end, whatever tile shape it falls in, so the edges give the bits a full tile would.

/// A tier's register tile: `R` weight rows against `T` tokens, each weight vector loaded once for all `T`
/// tokens. Returns `dots[r][t]`; all rows have the same length.
pub(crate) trait Dots {
    /// # Safety
    /// The CPU has the features of the tier that implements it.
    unsafe fn dots<const R: usize, const T: usize>(w: [&[f32]; R], x: [&[f32]; T])
        -> [[f32; T]; R];
}

/// `out (t, n) = x (t, d) · w (n, d)ᵀ` in tiles of `R` rows × `T` tokens. Rows are the outer loop, so a group
/// of `R` rows (64 KiB for 4 rows at d = 4096) stays in L2 while every token uses it: each weight row is read
/// from memory once per call.
/// A group's last tokens go one at a time through an `R × 1` tile, the last `n % R` rows through `1 × 1`.
///
/// Inlined into each tier's `#[target_feature]` entry point, so `K::dots` is a direct, inlinable call there.
///
/// # Safety
/// The CPU has the features `K::dots` needs.
#[inline(always)]
pub(crate) unsafe fn matmul<K: Dots, const R: usize, const T: usize>(
    out: &mut [f32],
    w: &[f32],
    x: &[f32],
    t: usize,
) {
    if t == 0 {
        return;
    }
    let (n, d) = (out.len() / t, x.len() / t);
    assert!(
        out.len() == t * n && x.len() == t * d && w.len() == n * d,
        "shapes"
    );
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let wrow = |r: usize| &w[r * d..(r + 1) * d];
    let xrow = |i: usize| &x[i * d..(i + 1) * d];
    let mut r0 = 0;
    while r0 < n {
        let rn = (n - r0).min(R);
        let mut t0 = 0;
        while t0 < t {
            let tn = (t - t0).min(T);
            if rn == R && tn == T {
                let (ws, xs) = (
                    core::array::from_fn(|r| wrow(r0 + r)),
                    core::array::from_fn(|j| xrow(t0 + j)),
                );
                // SAFETY: the caller's contract.
                let dots = unsafe { K::dots::<R, T>(ws, xs) };
                for (r, row) in dots.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        out[(t0 + j) * n + r0 + r] = *v;
                    }
                }
            } else if rn == R {
                for j in t0..t0 + tn {
                    let ws = core::array::from_fn(|r| wrow(r0 + r));
                    // SAFETY: the caller's contract.
                    let dots = unsafe { K::dots::<R, 1>(ws, [xrow(j)]) };
                    for (r, v) in dots.iter().enumerate() {
                        out[j * n + r0 + r] = v[0];
                    }
                }
            } else {
                for r in r0..r0 + rn {
                    for j in t0..t0 + tn {
                        // SAFETY: the caller's contract.
                        out[j * n + r] = unsafe { K::dots::<1, 1>([wrow(r)], [xrow(j)]) }[0][0];
                    }
                }
            }
            t0 += tn;
        }
        r0 += rn;
    }
}

/// Stamps out a tier's `matmul_f32` ([`matmul`] with `$r × $t` tiles) and its register tile, from the tier's
/// primitives (`V` a vector of `$lanes` f32): `zero`, an expression giving a zero `V`, and the names of functions
/// callable with `$feat` enabled: `load(*const f32) -> V`, unsafe, a whole vector; `load_part(&[f32]) -> V`,
/// fewer than `$lanes` values, zeros after them; `fma(a, b, acc) -> V`, `acc + a·b`; `hsum(V) -> f32`.
macro_rules! matmul_tier {
    (
        feature = $feat:literal,
        lanes = $l:expr,
        tile = $r:literal x $t:literal,
        zero = $zero:expr,
        load = $load:ident,
        load_part = $part:ident,
        fma = $fma:ident,
        hsum = $hsum:ident $(,)?
    ) => {
        /// The tier's `Dots`: whole vectors while they fit, then one zero-padded vector.
        struct F32Tile;

        impl $crate::matmul::Dots for F32Tile {
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn dots<const R: usize, const T: usize>(
                w: [&[f32]; R],
                x: [&[f32]; T],
            ) -> [[f32; T]; R] {
                let d = x[0].len();
                assert!(
                    w.iter().chain(&x).all(|r| r.len() == d),
                    "tile rows differ in length"
                );
                let (wp, xp) = (w.map(|r| r.as_ptr()), x.map(|r| r.as_ptr()));
                let z = $zero;
                let mut acc = [[z; T]; R];
                let mut xv = [z; T];
                let mut k = 0;
                while k + $l <= d {
                    for (v, p) in xv.iter_mut().zip(&xp) {
                        // SAFETY: every row has `d` elements (asserted above) and `k + $l <= d`.
                        *v = unsafe { $load(p.add(k)) };
                    }
                    for (a, p) in acc.iter_mut().zip(&wp) {
                        // SAFETY: as above.
                        let wv = unsafe { $load(p.add(k)) };
                        for (a, v) in a.iter_mut().zip(&xv) {
                            *a = $fma(wv, *v, *a);
                        }
                    }
                    k += $l;
                }
                if k < d {
                    for (v, xr) in xv.iter_mut().zip(&x) {
                        *v = $part(&xr[k..]);
                    }
                    for (a, wr) in acc.iter_mut().zip(&w) {
                        let wv = $part(&wr[k..]);
                        for (a, v) in a.iter_mut().zip(&xv) {
                            *a = $fma(wv, *v, *a);
                        }
                    }
                }
                let mut out = [[0.0f32; T]; R];
                for (o, a) in out.iter_mut().zip(&acc) {
                    for (o, a) in o.iter_mut().zip(a) {
                        *o = $hsum(*a);
                    }
                }
                out
            }
        }

        /// `out (t, n) = x (t, d) · w (n, d)ᵀ`
        #[target_feature(enable = $feat)]
        pub(super) fn matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize) {
            // SAFETY: this function only runs on a CPU with `$feat` (its table is handed out after detection),
            // all that `F32Tile::dots` needs.
            unsafe { $crate::matmul::matmul::<F32Tile, $r, $t>(out, w, x, t) }
        }
    };
}
pub(crate) use matmul_tier;
