//! The two ops only the encoder (BERT) needs: LayerNorm with a bias and the exact (erf) GELU.
//!
//! They sit in a small table of their own rather than in [`Kernels`], so the decoder's table and every tier
//! that fills it (Cortex-M included) stay as they are; [`encoder_ops`] picks the table matching a `Kernels`
//! tier. The scalar functions here are the reference; tiers without their own variant use them.

use crate::Kernels;

/// `out (d) = (x - mean(x)) / sqrt(var(x) + eps) * weight (d) + bias (d)`
pub type LayerNormFn = fn(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32);

/// The encoder's ops for one tier.
pub struct EncoderOps {
    /// The instruction sets these functions use.
    pub variant: &'static str,
    /// `out (d) = (x - mean(x)) / sqrt(var(x) + eps) * weight (d) + bias (d)`
    pub layernorm: LayerNormFn,
    /// `x (n) = x * Φ(x)` in place, `Φ` the standard normal CDF through `erf`
    pub gelu: fn(x: &mut [f32]),
}

pub(crate) static GENERIC: EncoderOps = EncoderOps {
    variant: "generic",
    layernorm,
    gelu,
};

/// The encoder ops of `k`'s tier. A SIMD `Kernels` table exists only after its tier was detected, so the
/// matching table here runs on this CPU too.
pub fn encoder_ops(k: &Kernels) -> &'static EncoderOps {
    match k.tier {
        #[cfg(target_arch = "x86_64")]
        crate::Tier::Avx2 | crate::Tier::Avx512 if crate::x86_64::has_avx2() => {
            &crate::x86_64::ENCODER_AVX2
        }
        _ => &GENERIC,
    }
}

/// `out (d) = (x - mean) / sqrt(var + eps) * weight + bias`, two passes (mean, then squared deviations), as
/// PyTorch computes it.
pub fn layernorm(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = x.len();
    assert!(
        out.len() == d && weight.len() == d && bias.len() == d,
        "shapes"
    );
    if d == 0 {
        return;
    }
    let mean = x.iter().sum::<f32>() / d as f32;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
    let inv = 1.0 / libm::sqrtf(var + eps);
    for (((o, v), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * inv * w + b;
    }
}

/// `x = x * Φ(x) = x / 2 * (1 + erf(x / √2))`, BERT's GELU (not the tanh approximation).
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * core::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The coefficients of `erf(x) ≈ x·P(x²)/Q(x²)` on `[-4, 4]` (beyond, `erf` is ±1 in f32): Eigen's and XLA's
/// f32 rational approximation, a few ulp from the true value. The SIMD tiers evaluate it (only x86-64 has
/// one so far).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod erf {
    pub const CLAMP: f32 = 4.0;
    /// Numerator, odd powers, highest first.
    pub const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    /// Denominator, even powers, highest first.
    pub const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];

    /// The scalar form of what the SIMD tiers compute, for tests of the approximation itself.
    #[cfg(test)]
    pub fn approx(x: f32) -> f32 {
        let x = x.clamp(-CLAMP, CLAMP);
        if x.abs() >= CLAMP {
            return x / CLAMP;
        }
        let x2 = x * x;
        let p = ALPHA[1..].iter().fold(ALPHA[0], |p, c| p * x2 + c) * x;
        let q = BETA[1..].iter().fold(BETA[0], |q, c| q * x2 + c);
        p / q
    }
}
