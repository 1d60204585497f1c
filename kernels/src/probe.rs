//! Measures this CPU's peak f32 FMA throughput, and its peak int8 dot-product throughput, on the calling
//! thread, so `enigma bench` can say what fraction of the right one prefill reaches (float weights multiply
//! as f32 FMAs, block-quantized ones as int8 dots) without hard-coding a number for any machine.

use std::time::Instant;

/// Independent accumulator chains: enough to cover FMA latency (4 cycles) times issue width (2 per cycle).
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use core::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub fn avx512(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }

    /// `vpdpbusd`: 64 multiply-adds per instruction.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub fn vnni(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_epi32(*v) as f32).sum()
    }

    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd`, the AVX2 int8 dot of the GEMM: 32 multiply-adds per three
    /// instructions. The accumulator feeds the bytes of the next product so nothing is hoisted out of the loop.
    #[target_feature(enable = "avx2")]
    pub fn avx2_int8(iters: usize) -> f32 {
        let (b, ones) = (_mm256_set1_epi8(-2), _mm256_set1_epi16(1));
        let mut acc = [_mm256_set1_epi8(3); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*v, b), ones);
                *v = _mm256_add_epi32(*v, p);
            }
        }
        let mut out = [0i32; 8];
        let mut total = 0.0;
        for v in acc {
            // SAFETY: `out` holds exactly the 8 lanes of a __m256i.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v) };
            total += out.iter().map(|&x| x as f32).sum::<f32>();
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn avx2(iters: usize) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut total = 0.0;
        for v in acc {
            // SAFETY: `out` holds exactly the 8 lanes of a __m256.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            total += out.iter().sum::<f32>();
        }
        total
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::CHAINS;
    use core::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub fn neon(iters: usize) -> f32 {
        let (a, b) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
        let mut acc = [vdupq_n_f32(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = vfmaq_f32(b, *v, a);
            }
        }
        acc.iter().map(|v| vaddvq_f32(*v)).sum()
    }

    /// `sdot`: 16 multiply-adds per instruction; asm because `vdotq_s32` is unstable.
    #[target_feature(enable = "neon,dotprod")]
    pub fn sdot(iters: usize) -> f32 {
        let (a, b) = (vdupq_n_s8(3), vdupq_n_s8(-2));
        let mut acc = [vdupq_n_s32(0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                // SAFETY: `sdot` is a register-only instruction of the dotprod extension enabled here.
                unsafe {
                    core::arch::asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) *v,
                        a = in(vreg) a, b = in(vreg) b, options(pure, nomem, nostack, preserves_flags))
                };
            }
        }
        acc.iter().map(|v| vaddvq_s32(*v) as f32).sum()
    }
}

/// Scalar chains, for CPUs with no vector FMA tier.
fn scalar(iters: usize) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * 0.999_999 + 1e-7;
        }
    }
    acc.iter().sum()
}

/// A probe: (name, operations per iteration per chain, function of the iteration count).
type Probe = (&'static str, usize, fn(usize) -> f32);

/// The widest FMA this CPU has, as (name, f32 lanes, function).
fn widest() -> Probe {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: avx512f was detected on this CPU just above.
            return ("avx512 fma", 16, |n| unsafe { x86::avx512(n) });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: avx2 and fma were detected on this CPU just above.
            return ("avx2 fma", 8, |n| unsafe { x86::avx2(n) });
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            // SAFETY: neon was detected on this CPU just above.
            return ("neon fma", 4, |n| unsafe { arm::neon(n) });
        }
    }
    ("scalar", 1, scalar)
}

/// The widest int8 dot this CPU has, as (name, multiply-adds per call per chain, function); `None` where
/// the int8 products run as scalar code (no SIMD dot to measure).
fn widest_int8() -> Option<Probe> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni") {
            // SAFETY: avx512f and avx512vnni were detected on this CPU just above.
            return Some(("avx512 vnni", 64, |n| unsafe { x86::vnni(n) }));
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: avx2 was detected on this CPU just above.
            return Some(("avx2 maddubs", 32, |n| unsafe { x86::avx2_int8(n) }));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            // SAFETY: neon and dotprod were detected on this CPU just above.
            return Some(("neon sdot", 16, |n| unsafe { arm::sdot(n) }));
        }
    }
    None
}

/// The best rate of `f` (operations per second, `ops` per call of `iters` iterations) over about
/// `seconds`: best of several short runs, so a moment of preemption does not lower it.
fn best_rate(seconds: f64, iters: usize, ops: f64, f: fn(usize) -> f32) -> f64 {
    let start = Instant::now();
    let mut best = 0.0f64;
    while start.elapsed().as_secs_f64() < seconds || best == 0.0 {
        let t = Instant::now();
        std::hint::black_box(f(std::hint::black_box(iters)));
        best = best.max(ops / t.elapsed().as_secs_f64());
    }
    best
}

/// Peak f32 flops per second of one thread, measured over about `seconds`, and the instructions used.
pub fn fma_peak_flops(seconds: f64) -> (&'static str, f64) {
    let (name, lanes, f) = widest();
    let iters = 1 << 20;
    (
        name,
        best_rate(seconds, iters, (iters * CHAINS * lanes * 2) as f64, f),
    )
}

/// Peak int8 dot-product operations per second of one thread (2 per multiply-add, as flops count), measured
/// over about `seconds`, and the instructions used; `None` without a SIMD int8 dot.
pub fn int8_peak_ops(seconds: f64) -> Option<(&'static str, f64)> {
    let (name, macs, f) = widest_int8()?;
    let iters = 1 << 20;
    Some((
        name,
        best_rate(seconds, iters, (iters * CHAINS * macs * 2) as f64, f),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_measures_a_positive_rate() {
        let (name, flops) = super::fma_peak_flops(0.01);
        assert!(flops > 1e8, "{name}: {flops} flop/s is below any real CPU");
    }

    #[test]
    fn the_int8_probe_measures_a_positive_rate_where_there_is_a_simd_dot() {
        if let Some((name, ops)) = super::int8_peak_ops(0.01) {
            assert!(ops > 1e8, "{name}: {ops} op/s is below any real CPU");
        }
    }
}
