//! The part of each op that is the same in every tier: splitting work into the pieces kernels see.

use crate::quant::{quantize_q8_0, BlockQ8_0, QK};
use half::{bf16, f16};

/// Columns of `x` quantized at a time. The buffer lives on the stack (34 B per block: 2 KiB here) so the
/// quantized matvec allocates nothing and runs on an MCU; wider rows are done in several column chunks.
#[cfg(target_pointer_width = "64")]
pub const X_CHUNK_BLOCKS: usize = 256;
#[cfg(not(target_pointer_width = "64"))]
pub const X_CHUNK_BLOCKS: usize = 32;

/// A kernel adding one column chunk: `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, `w` starting at the chunk.
pub type QMatvec<B> = fn(out: &mut [f32], w: &[B], stride: usize, xq: &[BlockQ8_0]);

/// `out (n) = w (n, d / 32) · x (d)` for block-quantized weights: quantizes `x` to q8_0 (llama.cpp's
/// activation format), one stack-sized chunk at a time, and lets `kernel` do the integer dot products.
///
/// Every tier quantizes `x` with the same scalar code, so tiers differ only in float summation order.
/// Panics when `d` is not a multiple of 32 or `w` is not `n` rows of `d / 32` blocks (caller bugs:
/// `WeightView::from_bytes` checks both).
pub fn matvec_quantized<B>(out: &mut [f32], w: &[B], x: &[f32], kernel: QMatvec<B>) {
    assert!(
        x.len().is_multiple_of(QK),
        "quantized matvec needs whole blocks of 32 columns"
    );
    let stride = x.len() / QK;
    assert_eq!(
        w.len(),
        out.len() * stride,
        "weights are not (n, d / 32) blocks"
    );
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    let mut xq = [BlockQ8_0::ZERO; X_CHUNK_BLOCKS];
    for (c, xc) in x.chunks(X_CHUNK_BLOCKS * QK).enumerate() {
        let nb = xc.len() / QK;
        quantize_q8_0(xc, &mut xq[..nb]);
        kernel(out, &w[c * X_CHUNK_BLOCKS..], stride, &xq[..nb]);
    }
}

/// Constants of the vectorised `exp` every SIMD tier uses (Cephes `expf`): `e^x = 2^n · e^r` with
/// `n = round(x · log2 e)`, `r = x - n · ln 2` (ln 2 split in two so `r` is exact), and a degree-6
/// polynomial for `e^r` on `[-ln2/2, ln2/2]`. Relative error at most about 2 ulp (measured ≤ 2.5e-7 against
/// f64 `exp` by the sweep test) for results in the normal range; see each tier for its handling of overflow.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub mod exp {
    pub const LOG2E: f32 = core::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Highest power first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// Scalar widening of one weight, for the tails of the SIMD matvecs (their vector loads widen 4-16 at once).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) trait Weight: Copy {
    fn to_f32(self) -> f32;
}
impl Weight for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}
impl Weight for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Weight for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
