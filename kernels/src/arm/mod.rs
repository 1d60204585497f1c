//! Cortex-M kernels: the q8_0 and q4_0 matvecs on integers ([`int8`]: the DSP extension's `SXTB16` +
//! `SMLAD` on Armv7E-M and up), and an f32 matvec with four independent accumulators so the FPU's
//! multiply-add latency overlaps.
//!
//! The same code is built on every target: where the DSP instructions are missing (Armv6-M, hosts) the
//! primitives are portable Rust with the instructions' exact semantics, which is what the host tests run.

mod int8;
mod ops;

#[cfg(test)]
pub(crate) use int8::f16_to_f32_fast;
pub use int8::{qmatvec_q4_0, qmatvec_q8_0};
pub use ops::{attn_accum, attn_scores, silu_mul, softmax};
#[cfg(test)]
pub(crate) use ops::{exp, matvec_f32 as matvec_f32_rows};

/// `out (n) = w (n, d) · x (d)` with four accumulators (columns `j mod 4`), so consecutive `VFMA`s do not
/// wait on each other; Cortex-M4F's FPU has the registers for it.
pub fn matvec_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    let d = x.len();
    assert_eq!(w.len(), out.len() * d, "w is not (n, d)");
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * d..(r + 1) * d];
        let mut acc = [0.0f32; 4];
        let mut rc = row.chunks_exact(4);
        let mut xc = x.chunks_exact(4);
        for (a, b) in (&mut rc).zip(&mut xc) {
            for ((s, p), q) in acc.iter_mut().zip(a).zip(b) {
                *s += p * q;
            }
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for (p, q) in rc.remainder().iter().zip(xc.remainder()) {
            s += p * q;
        }
        *o = s;
    }
}

/// `out (t, n) = x (t, d) · w (n, d)ᵀ`, token by token (an MCU prefills one token at a time anyway).
pub fn matmul_f32(out: &mut [f32], w: &[f32], x: &[f32], t: usize) {
    if t == 0 {
        return;
    }
    let (n, d) = (out.len() / t, x.len() / t);
    for i in 0..t {
        ops::matvec_f32(&mut out[i * n..(i + 1) * n], w, &x[i * d..(i + 1) * d]);
    }
}

/// The Cortex-M table: the kernels above, the generic ones elsewhere. Built on the host for the tests,
/// which run the whole tier suite on its portable form.
#[cfg(any(target_arch = "arm", test))]
pub(crate) static CORTEX_M: crate::Kernels = crate::Kernels {
    tier: crate::Tier::CortexM,
    variant: if cfg!(enigma_arm_dsp) {
        "cortex-m+dsp"
    } else {
        "cortex-m"
    },
    matvec_f32: ops::matvec_f32,
    matmul_f32,
    qmatvec_q8_0,
    qtile_q8_0: qmatvec_q8_0,
    qmatvec_q4_0,
    // Without an FPU the polynomial's dozen float operations are software calls that cost more than libm's
    // `expf` (measured on the M0+: +1.5% per token); there the reference stays.
    softmax: if cfg!(target_abi = "eabihf") {
        softmax
    } else {
        crate::generic::softmax
    },
    silu_mul: if cfg!(target_abi = "eabihf") {
        silu_mul
    } else {
        crate::generic::silu_mul
    },
    attn_scores,
    attn_accum,
    ..crate::dispatch::GENERIC
};
