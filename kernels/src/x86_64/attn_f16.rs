//! Attention over an f16 KV cache for the x86-64 tiers. Keys and values are widened by F16C's `vcvtph2ps` as
//! they are loaded (the tiers' own f16 loads, which their f16 matvecs use), so the cache is read at half the
//! bytes of an f32 one while every product and sum stays f32, in the f32 kernels' order.

/// AVX2 + FMA + F16C, 8 lanes.
pub(super) mod avx2 {
    use super::super::avx2::{ld_f16, matvec_f16, st_tail_or_full};
    use core::arch::x86_64::*;
    use half::f16;

    const L: usize = 8;

    /// `scores (t) = keys (t, hs) · q (hs) * scale`, f16 keys
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::x86_64) fn attn_scores_f16(
        scores: &mut [f32],
        q: &[f32],
        keys: &[f16],
        scale: f32,
    ) {
        matvec_f16(scores, &keys[..scores.len() * q.len()], q);
        for s in scores.iter_mut() {
            *s *= scale;
        }
    }

    /// Up to 8 f16s widened, zeros past `c.len()` (a short head's row goes through a stack copy).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ld_any_f16(c: &[f16]) -> __m256 {
        if c.len() >= L {
            return ld_f16(c);
        }
        let mut buf = [f16::ZERO; L];
        buf[..c.len()].copy_from_slice(c);
        ld_f16(&buf)
    }

    /// `out (hs) = Σₜ probs[t] · values[t]`, f16 `values (t, hs)`: the f32 kernel's frame, widening loads.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::x86_64) fn attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[f16]) {
        crate::frame::attn_accum::<_, _, L>(
            out,
            probs,
            values,
            |p| _mm256_set1_ps(p),
            |a, b, acc| _mm256_fmadd_ps(a, b, acc),
            |c| ld_any_f16(c),
            |c, v| st_tail_or_full(c, v),
        )
    }
}

/// AVX-512 F + BW + VL, 16 lanes; tails are masked loads (BW's 16-bit masks), never a stack copy.
pub(super) mod avx512 {
    use super::super::avx512::{mask, matvec_f16, st_any};
    use core::arch::x86_64::*;
    use half::f16;

    const L: usize = 16;

    /// `scores (t) = keys (t, hs) · q (hs) * scale`, f16 keys
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(in crate::x86_64) fn attn_scores_f16(
        scores: &mut [f32],
        q: &[f32],
        keys: &[f16],
        scale: f32,
    ) {
        matvec_f16(scores, &keys[..scores.len() * q.len()], q);
        for s in scores.iter_mut() {
            *s *= scale;
        }
    }

    /// Up to 16 f16s widened, zeros past `c.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn ld_any_f16(c: &[f16]) -> __m512 {
        // SAFETY: the mask covers only the first `min(len, 16)` lanes, all inside `c`; masked-off lanes are not
        // accessed, so nothing past the slice is read.
        let h = unsafe { _mm256_maskz_loadu_epi16(mask(c.len()), c.as_ptr() as *const i16) };
        _mm512_cvtph_ps(h)
    }

    /// `out (hs) = Σₜ probs[t] · values[t]`, f16 `values (t, hs)`: the f32 kernel's frame, widening loads.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(in crate::x86_64) fn attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[f16]) {
        crate::frame::attn_accum::<_, _, L>(
            out,
            probs,
            values,
            |p| _mm512_set1_ps(p),
            |a, b, acc| _mm512_fmadd_ps(a, b, acc),
            |c| ld_any_f16(c),
            |c, v| st_any(c, v),
        )
    }
}
