//! Attention over an f16 KV cache for the x86-64 tiers. Keys and values are widened by F16C's `vcvtph2ps` as
//! they are loaded (the tiers' own f16 loads, which their f16 matvecs use), so the cache is read at half the
//! bytes of an f32 one while every product and sum stays f32, in the f32 kernels' order.

/// AVX2 + FMA + F16C, 8 lanes.
pub(super) mod avx2 {
    use super::super::avx2::{ld_f16, matvec_f16, st_tail_or_full};
    use core::arch::x86_64::*;
    use half::f16;

    const L: usize = 8;

    /// Up to 8 f16s widened, zeros past `c.len()` (a short head's row goes through a stack copy).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ld_any_f16(c: &[f16]) -> __m256 {
        match c.len() >= L {
            true => ld_f16(c),
            false => ld_f16(&crate::frame::padded_f16::<L>(c)),
        }
    }

    crate::frame::attn_f16_pair!(
        pub(in crate::x86_64),
        feature = "avx2,fma,f16c",
        lanes = L,
        matvec = matvec_f16,
        splat = _mm256_set1_ps,
        fma = _mm256_fmadd_ps,
        load = ld_any_f16,
        store = st_tail_or_full,
    );
}

/// AVX-512 F + BW + VL, 16 lanes; tails are masked loads (BW's 16-bit masks), never a stack copy.
pub(super) mod avx512 {
    use super::super::avx512::{mask, matvec_f16, st_any};
    use core::arch::x86_64::*;
    use half::f16;

    /// Up to 16 f16s widened, zeros past `c.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ld_any_f16(c: &[f16]) -> __m512 {
        // SAFETY: the mask covers only the first `min(len, 16)` lanes, all inside `c`; masked-off lanes are not
        // accessed, so nothing past the slice is read.
        let h = unsafe { _mm256_maskz_loadu_epi16(mask(c.len()), c.as_ptr() as *const i16) };
        _mm512_cvtph_ps(h)
    }

    crate::frame::attn_f16_pair!(
        pub(in crate::x86_64),
        feature = "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        lanes = 16,
        matvec = matvec_f16,
        splat = _mm512_set1_ps,
        fma = _mm512_fmadd_ps,
        load = ld_any_f16,
        store = st_any,
    );
}
