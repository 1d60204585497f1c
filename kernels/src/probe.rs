//! Measures this CPU's peak f32 FMA throughput on the calling thread, so `enigma bench` can say what
//! fraction of it prefill reaches without hard-coding a number for any machine.

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

/// The widest FMA this CPU has, as (name, f32 lanes, function).
fn widest() -> (&'static str, usize, fn(usize) -> f32) {
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

/// Peak f32 flops per second of one thread, measured over about `seconds` (best of several short runs, so
/// a moment of preemption does not lower it), and the instructions used.
pub fn fma_peak_flops(seconds: f64) -> (&'static str, f64) {
    let (name, lanes, f) = widest();
    let iters = 1 << 20;
    let flops = (iters * CHAINS * lanes * 2) as f64;
    let start = Instant::now();
    let mut best = 0.0f64;
    while start.elapsed().as_secs_f64() < seconds || best == 0.0 {
        let t = Instant::now();
        std::hint::black_box(f(std::hint::black_box(iters)));
        best = best.max(flops / t.elapsed().as_secs_f64());
    }
    (name, best)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_measures_a_positive_rate() {
        let (name, flops) = super::fma_peak_flops(0.01);
        assert!(flops > 1e8, "{name}: {flops} flop/s is below any real CPU");
    }
}
