//! NEON `gemm_f32`: 6 rows × 16 columns per register tile (24 accumulators, 4 `B` vectors and a broadcast of
//! the 32 registers). NEON has no masked loads, so a partial last vector goes through a zero-padded stack copy.

use core::arch::aarch64::*;

crate::gemm::gemm_tier!(
    feature = "neon",
    vector = float32x4_t,
    mask = usize,
    lanes = 4,
    mr = 6,
    rows = [6, 5, 4, 3, 2, 1],
    nr = 16,
    vs = [1, 2, 3, 4],
    primitives = {
        fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }

        fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }

        fn fma(a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
            vfmaq_f32(acc, a, b)
        }

        /// The first `n ≤ 4` lanes, as a count.
        fn mask(n: usize) -> usize {
            n.min(4)
        }

        /// # Safety
        /// 4 readable f32 at `p`.
        unsafe fn load(p: *const f32) -> float32x4_t {
            // SAFETY: the caller's contract; `vld1q_f32` needs only element alignment.
            unsafe { vld1q_f32(p) }
        }

        /// # Safety
        /// 4 writable f32 at `p`.
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            // SAFETY: the caller's contract.
            unsafe { vst1q_f32(p, v) }
        }

        /// # Safety
        /// `n ≤ 4` readable f32 at `p`.
        unsafe fn load_m(p: *const f32, n: usize) -> float32x4_t {
            let mut buf = [0.0f32; 4];
            // SAFETY: the caller's contract: `n` values at `p`, copied into a local buffer of 4.
            unsafe {
                core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
                vld1q_f32(buf.as_ptr())
            }
        }

        /// # Safety
        /// `n ≤ 4` writable f32 at `p`.
        unsafe fn store_m(p: *mut f32, n: usize, v: float32x4_t) {
            let mut buf = [0.0f32; 4];
            // SAFETY: the caller's contract: only the first `n` lanes are copied out to `p`.
            unsafe {
                vst1q_f32(buf.as_mut_ptr(), v);
                core::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
            }
        }
    }
);
