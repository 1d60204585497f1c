//! AVX2 `gemm_f32`: 6 rows × 16 columns per register tile (12 accumulators, 2 `B` vectors and a broadcast
//! of the 16 registers). Partial column vectors use `vmaskmovps`, which neither reads nor writes masked-off
//! lanes (and cannot fault on them).

use core::arch::x86_64::*;

crate::gemm::gemm_tier!(
    feature = "avx2,fma,f16c",
    vector = __m256,
    mask = __m256i,
    lanes = 8,
    mr = 6,
    rows = [6, 5, 4, 3, 2, 1],
    nr = 16,
    vs = [1, 2],
    primitives = {
        fn zero() -> __m256 {
            _mm256_setzero_ps()
        }

        fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }

        fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, acc)
        }

        /// The first `n ≤ 8` lanes (all bits set in each).
        fn mask(n: usize) -> __m256i {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }

        /// # Safety
        /// 8 readable f32 at `p`.
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract; `loadu` needs no alignment.
            unsafe { _mm256_loadu_ps(p) }
        }

        /// # Safety
        /// 8 writable f32 at `p`.
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(p, v) }
        }

        /// # Safety
        /// The lanes of `m` at `p` are readable.
        unsafe fn load_m(p: *const f32, m: __m256i) -> __m256 {
            // SAFETY: the caller's contract; masked-off lanes are not accessed.
            unsafe { _mm256_maskload_ps(p, m) }
        }

        /// # Safety
        /// The lanes of `m` at `p` are writable.
        unsafe fn store_m(p: *mut f32, m: __m256i, v: __m256) {
            // SAFETY: the caller's contract; masked-off lanes are not accessed.
            unsafe { _mm256_maskstore_ps(p, m, v) }
        }
    }
);
