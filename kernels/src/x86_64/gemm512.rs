//! AVX-512 `gemm_f32`: 12 rows × 32 columns per register tile (24 accumulators, 2 `B` vectors and a broadcast
//! of the 32 registers). Measured on Zen 4 at training's shapes: 12 rows ~10-20% faster than 6 or 8 (fewer
//! `B` loads per FMA), except for attention's short products.
//! Partial column vectors use AVX-512's lane masks: masked-off lanes are neither read nor written.

use core::arch::x86_64::*;

crate::gemm::gemm_tier!(
    feature = "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    vector = __m512,
    mask = __mmask16,
    lanes = 16,
    mr = 12,
    rows = [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1],
    nr = 32,
    vs = [1, 2],
    primitives = {
        fn zero() -> __m512 {
            _mm512_setzero_ps()
        }

        fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }

        fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, acc)
        }

        /// The first `n ≤ 16` lanes.
        fn mask(n: usize) -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        }

        /// # Safety
        /// 16 readable f32 at `p`.
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller's contract; `loadu` needs no alignment.
            unsafe { _mm512_loadu_ps(p) }
        }

        /// # Safety
        /// 16 writable f32 at `p`.
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_ps(p, v) }
        }

        /// # Safety
        /// The lanes of `m` at `p` are readable.
        unsafe fn load_m(p: *const f32, m: __mmask16) -> __m512 {
            // SAFETY: the caller's contract; masked-off lanes are not accessed.
            unsafe { _mm512_maskz_loadu_ps(m, p) }
        }

        /// # Safety
        /// The lanes of `m` at `p` are writable.
        unsafe fn store_m(p: *mut f32, m: __mmask16, v: __m512) {
            // SAFETY: the caller's contract; masked-off lanes are not accessed.
            unsafe { _mm512_mask_storeu_ps(p, m, v) }
        }
    }
);
