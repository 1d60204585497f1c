//! The frame of `gemm_f32`, `C (m, n) += A (m, k) · B (k, n)`, shared by every SIMD tier: the shape and
//! stride description ([`Gemm`]), one bounds check per call, and the cache blocking. A tier supplies only the
//! register tile (`rows ≤ MR` × `cols ≤ NR`), which broadcasts `A[i, p]` against whole vectors of row `p`
//! of `B`, so no output element needs a horizontal sum (the cost that makes `matmul_f32` slow at training's
//! short inner sizes). An overwriting product starts the accumulators of its first inner block from zero
//! instead of loading `C`.
//!
//! Every tier sums each `C[i, j]` in the same order (`p` ascending, starting from the value already in `C`), so
//! tiers differ from the scalar reference only by FMA rounding, and a caller that splits `C` by rows or columns
//! gets the same bits whatever the split.

// The blocking and the tile macro serve the SIMD tiers only; 32-bit Arm uses the scalar reference.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_macros, unused_imports)
)]

/// Shapes and strides of one [`crate::Kernels::gemm_f32`] call: `C (m, n) += A (m, k) · B (k, n)` with
/// `A[i, p] = a[i * a_rs + p * a_cs]`, `B[p, j] = b[p * ldb + j]`, `C[i, j] = c[i * ldc + j]`.
///
/// `A` is read through two strides so a transposed operand (`Aᵀ` of a row-major `(k, m)` buffer) costs nothing;
/// `B` and `C` keep unit column stride because their rows are what the tiles load as vectors.
///
/// With `overwrite` ([`Gemm::overwrite`]) the product is `C = A · B`: what `C` held is never read (NaN
/// included), and the sums are those of accumulating into a zeroed `C`, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a_rs: usize,
    pub a_cs: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub overwrite: bool,
}

impl Gemm {
    /// All three operands row-major and dense: `a (m, k)`, `b (k, n)`, `c (m, n)`.
    pub const fn new(m: usize, k: usize, n: usize) -> Gemm {
        Gemm {
            m,
            k,
            n,
            a_rs: k,
            a_cs: 1,
            ldb: n,
            ldc: n,
            overwrite: false,
        }
    }

    /// `C = A · B` instead of `C += A · B`: saves zero-filling `C` first.
    pub const fn overwrite(self) -> Gemm {
        Gemm {
            overwrite: true,
            ..self
        }
    }

    /// `A` is the transpose of a row-major `(k, lda)` buffer: `A[i, p] = a[p * lda + i]`.
    pub const fn a_t(self, lda: usize) -> Gemm {
        Gemm {
            a_rs: 1,
            a_cs: lda,
            ..self
        }
    }

    /// `A` is row-major with rows `lda` apart.
    pub const fn lda(self, lda: usize) -> Gemm {
        Gemm {
            a_rs: lda,
            a_cs: 1,
            ..self
        }
    }

    /// `B` rows `ldb` apart.
    pub const fn ldb(self, ldb: usize) -> Gemm {
        Gemm { ldb, ..self }
    }

    /// `C` rows `ldc` apart.
    pub const fn ldc(self, ldc: usize) -> Gemm {
        Gemm { ldc, ..self }
    }

    /// Panics unless every element the product touches lies inside the slices; true when there is work.
    /// This is the only bounds check: the tiles index through raw pointers. An overwriting product with
    /// `k = 0` zeroes `C` here.
    pub(crate) fn check(&self, c: &mut [f32], a: usize, b: usize) -> bool {
        let g = self;
        if g.m == 0 || g.n == 0 {
            return false;
        }
        assert!(g.ldc >= g.n && g.ldb >= g.n, "gemm: row stride below n");
        assert!((g.m - 1) * g.ldc + g.n <= c.len(), "gemm: c too short");
        if g.k == 0 {
            if g.overwrite {
                for i in 0..g.m {
                    c[i * g.ldc..i * g.ldc + g.n].fill(0.0);
                }
            }
            return false;
        }
        assert!(
            (g.m - 1) * g.a_rs + (g.k - 1) * g.a_cs < a,
            "gemm: a too short"
        );
        assert!((g.k - 1) * g.ldb + g.n <= b, "gemm: b too short");
        true
    }
}

/// Rows of `B` per pass: one tile's `KC × NR` panel of `B` (16 KiB at NR = 32) stays in L1 while the `MR`
/// rows of `A` stream past.
pub(crate) const KC: usize = 128;
/// Columns per pass: the `KC × NC` block of `B` (512 KiB) stays in L2 while every row of `A` uses it.
pub(crate) const NC: usize = 512;

/// One register tile: `C[..rows, ..cols] += A[..rows, ..kc] · B[..kc, ..cols]` at the given corners, with the
/// strides of the call. `rows ≤ MR`, `cols ≤ NR` of the tier.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub c: *mut f32,
    pub a: *const f32,
    pub b: *const f32,
    pub rows: usize,
    pub cols: usize,
    pub kc: usize,
    pub g: Gemm,
    /// Start from zero instead of `C` (the first inner block of an overwriting product).
    pub fresh: bool,
}

/// Walks `C` in `MR × NR` tiles, blocked by `NC` columns and `KC` inner steps, calling `tile` on each.
/// `C` accumulates block after block in `p` order, so every element's sum runs over `p` ascending.
///
/// Inlined into each tier's `#[target_feature]` entry point, so `tile` is a direct call there.
#[inline(always)]
pub(crate) fn blocked<const MR: usize, const NR: usize>(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    g: Gemm,
    mut tile: impl FnMut(Tile),
) {
    if !g.check(c, a.len(), b.len()) {
        return;
    }
    let (cp, ap, bp) = (c.as_mut_ptr(), a.as_ptr(), b.as_ptr());
    for jc in (0..g.n).step_by(NC) {
        let je = (jc + NC).min(g.n);
        for pc in (0..g.k).step_by(KC) {
            let kc = (g.k - pc).min(KC);
            for ic in (0..g.m).step_by(MR) {
                let rows = (g.m - ic).min(MR);
                for jr in (jc..je).step_by(NR) {
                    // Offsets stay inside the slices: `check` bounded the last element of each operand.
                    tile(Tile {
                        c: cp.wrapping_add(ic * g.ldc + jr),
                        a: ap.wrapping_add(ic * g.a_rs + pc * g.a_cs),
                        b: bp.wrapping_add(pc * g.ldb + jr),
                        rows,
                        cols: (je - jr).min(NR),
                        kc,
                        g,
                        fresh: g.overwrite && pc == 0,
                    });
                }
            }
        }
    }
}

/// Stamps out a tier's `gemm_f32` and its `MR × NR` register tile from the tier's vector primitives, given as
/// `primitives = { fn ... }` (each gets the tier's `#[target_feature]`) with these names (`V` a vector of `$lanes` f32,
/// `M` a lane mask):
/// `zero() -> V`, `splat(f32) -> V`, `fma(a, b, acc) -> V` (`acc + a·b`), `mask(n) -> M` (first `n` lanes),
/// `load(*const f32) -> V`, `store(*mut f32, V)`, and the masked `load_m(*const f32, M) -> V` (zeros past the
/// mask, nothing read there) and `store_m(*mut f32, M, V)` (nothing written past it).
///
/// `$rows` lists the tile heights `[MR, ..., 1]`; `$vs` the vector counts a tile may have (`NR = $lanes · max($vs)`); a tile of `cols` columns uses
/// `⌈cols / $lanes⌉` of them, the last one masked when partial.
macro_rules! gemm_tier {
    (
        feature = $feat:literal,
        vector = $V:ty,
        mask = $M:ty,
        lanes = $l:literal,
        mr = $mr:literal,
        rows = $rows:tt,
        nr = $nr:literal,
        vs = [$($v:literal),*],
        primitives = { $($prim:item)* }
    ) => {
        $(
            #[target_feature(enable = $feat)]
            #[inline]
            $prim
        )*

        /// `C (m, n) += A (m, k) · B (k, n)`, strides in `g`.
        #[target_feature(enable = $feat)]
        pub(super) fn gemm_f32(c: &mut [f32], a: &[f32], b: &[f32], g: $crate::Gemm) {
            $crate::gemm::blocked::<$mr, $nr>(c, a, b, g, |t| {
                // SAFETY: `blocked` checked that every element of the tile lies inside `c`, `a` and `b`, and
                // the tile's shape matches the instance called; this function only runs on a CPU with
                // `$feat` (its table is handed out after detection).
                unsafe {
                    match t.cols.div_ceil($l) {
                        $($v => $crate::gemm::gemm_rows!(t, $v, $rows),)*
                        _ => unreachable!("tile wider than NR"),
                    }
                }
            });
        }

        /// A whole vector, or the lanes of `m`.
        ///
        /// # Safety
        /// The lanes read lie inside one buffer; the CPU has `$feat`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn ld(p: *const f32, m: Option<$M>) -> $V {
            // SAFETY: the caller's contract.
            unsafe {
                match m {
                    None => load(p),
                    Some(m) => load_m(p, m),
                }
            }
        }

        /// `R` rows × `V` vectors: `C += A · B` over the tile's `kc` steps, `A[i, p]` broadcast against row `p`
        /// of `B`. Accumulators start from `C`, so each element sums in `p` order after its old value.
        ///
        /// # Safety
        /// `t` lies inside its buffers (as `blocked` guarantees), `t.rows == R`,
        /// `$l (V - 1) < t.cols ≤ $l V`, and the CPU has `$feat`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn tile<const R: usize, const V: usize>(t: $crate::gemm::Tile) {
            let tail = t.cols - $l * (V - 1);
            let last = mask(tail);
            let (g, ap, bp, cp) = (t.g, t.a, t.b, t.c);
            // SAFETY: rows `< R = t.rows`, columns `< t.cols` (the last vector masked when partial), inner
            // steps `< t.kc`: all inside the buffers by the function's contract.
            unsafe {
                // Only the last vector of a partial tile goes through the mask.
                let part = |v: usize| (v + 1 == V && tail != $l).then_some(last);
                let mut acc = [[zero(); V]; R];
                if !t.fresh {
                    for (i, row) in acc.iter_mut().enumerate() {
                        for (v, x) in row.iter_mut().enumerate() {
                            *x = ld(cp.add(i * g.ldc + $l * v), part(v));
                        }
                    }
                }
                for p in 0..t.kc {
                    let mut bv = [zero(); V];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = ld(bp.add(p * g.ldb + $l * v), part(v));
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = splat(*ap.add(i * g.a_rs + p * g.a_cs));
                        for (x, b) in row.iter_mut().zip(&bv) {
                            *x = fma(av, *b, *x);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (v, x) in row.iter().enumerate() {
                        let p = cp.add(i * g.ldc + $l * v);
                        match part(v) {
                            None => store(p, *x),
                            Some(m) => store_m(p, m, *x),
                        }
                    }
                }
            }
        }
    };
}
pub(crate) use gemm_tier;

/// The match of [`gemm_tier`]'s tile instances of `V` vectors over the row counts `[MR, ..., 1]`.
macro_rules! gemm_rows {
    ($t:ident, $v:literal, [$($r:literal),*]) => {
        match $t.rows {
            $($r => tile::<$r, $v>($t),)*
            _ => unreachable!("tile taller than MR"),
        }
    };
}
pub(crate) use gemm_rows;
