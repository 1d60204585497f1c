//! Block layouts of the quantized weight formats, and their scalar quantizers and dequantizers.
//!
//! Both formats are llama.cpp's (`ggml-common.h`), byte for byte, so files converted by its tools and ours agree.
//! A block's scale is an f16 stored as its bits in a `u16`: that keeps the struct 2-byte aligned with no
//! padding, so a 64-byte-aligned tensor in a file can be viewed as `&[BlockQ8_0]` in place.

use core::mem::size_of;
use half::{bf16, f16};

/// Elements per quantization block.
pub const QK: usize = 32;

/// A block of quantized weights that the quantized matvec frame walks: `COLS` columns of one row, a multiple
/// of [`QK`], meeting `COLS / 32` q8_0 activation blocks.
pub trait QBlock {
    const COLS: usize;
}

impl QBlock for BlockQ8_0 {
    const COLS: usize = QK;
}

impl QBlock for BlockQ4_0 {
    const COLS: usize = QK;
}

/// 32 weights `qs[i] * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// 32 weights in 16 bytes of nibbles, `(nibble - 8) * d`.
///
/// Nibble order is llama.cpp's: byte `j`'s low nibble is element `j` and its high nibble element `j + 16`,
/// so unpacking a block is "low nibbles, then high nibbles" rather than an interleave.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

impl BlockQ8_0 {
    pub const ZERO: BlockQ8_0 = BlockQ8_0 { d: 0, qs: [0; QK] };

    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

impl BlockQ4_0 {
    pub const ZERO: BlockQ4_0 = BlockQ4_0 {
        d: 0,
        qs: [0; QK / 2],
    };

    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

/// Quantizes `src (nb * 32)` into `dst (nb)` blocks: `d = amax / 127`, `q = round(x / d)` (llama.cpp's
/// `quantize_row_q8_0_ref`, round half away from zero). Panics when the lengths disagree.
pub fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    quantize_q8_0_grouped(src, dst, 1);
}

/// [`quantize_q8_0`] with one scale for each `group` consecutive blocks, from their largest `|v|` together:
/// every block of a group carries the same `d` (GGML's Q8_K idea, what llama.cpp multiplies k-quants
/// with), so a kernel may sum a whole 256-weight super-block's integer dots before scaling once. The blocks
/// stay q8_0, so every reference reads them unchanged. A short last group is scaled on its own.
pub fn quantize_q8_0_grouped(src: &[f32], dst: &mut [BlockQ8_0], group: usize) {
    assert_eq!(src.len(), dst.len() * QK, "q8_0 needs whole blocks of 32");
    let group = group.max(1);
    for (bs, x) in dst.chunks_mut(group).zip(src.chunks(group * QK)) {
        let amax = abs_max(x);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (b, x) in bs.iter_mut().zip(x.chunks_exact(QK)) {
            b.d = f16::from_f32(d).to_bits();
            for (q, v) in b.qs.iter_mut().zip(x) {
                *q = round_half_away(v * id);
            }
        }
    }
}

/// The largest `|v|` of a block, NaNs skipped (as `f32::max` does), in 8 independent lanes: the compiler
/// turns this into vector compares, where a fold over `f32::max` stays scalar.
#[inline]
fn abs_max(x: &[f32]) -> f32 {
    let mut m = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for (m, v) in m.iter_mut().zip(c) {
            let a = v.abs();
            if a > *m {
                *m = a;
            }
        }
    }
    // Lanes are never NaN and never below +0, so a comparison gives `f32::max`'s result; on an MCU
    // without `VMAXNM` that is a call to libm's `fmaxf` per lane.
    m.into_iter().fold(0.0, |a, b| if b > a { b } else { a })
}

/// `roundf(y) as i8` (halves away from zero, saturating, NaN to 0) in integers after one conversion:
/// `2y` is exact, and `trunc(2y)` alone decides the rounding (`(t + sign t) / 2`, truncating). libm's
/// bit-twiddling `roundf` was a tenth of the activation quantizer's time in decode, and float compares for
/// the fraction and the clamp cost four instructions each on a Cortex-M4 (`VCMP`, `VMRS`, `IT`, `VMOV`).
#[inline]
pub(crate) fn round_half_away(y: f32) -> i8 {
    // The cast saturates (and maps NaN to 0); the clamp keeps `t + 1` from overflowing.
    let t = ((y + y) as i32).clamp(-512, 511);
    ((t + t.signum()) / 2).clamp(-128, 127) as i8
}

/// `dst (nb * 32) = q * d` for every block of `src (nb)`.
pub fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "q8_0 needs whole blocks of 32");
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.scale();
        for (o, q) in y.iter_mut().zip(b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Quantizes `src (nb * 32)` into `dst (nb)`: `max` is the signed value of largest magnitude, `d = max / -8`,
/// `q = min(15, (x / d + 8.5) as i8)` (llama.cpp's `quantize_row_q4_0_ref`: the extreme value maps to
/// nibble 0, i.e. -8, which uses the full asymmetric range).
pub fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    assert_eq!(src.len(), dst.len() * QK, "q4_0 needs whole blocks of 32");
    for (b, x) in dst.iter_mut().zip(src.chunks_exact(QK)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d).to_bits();
        for j in 0..QK / 2 {
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// `dst (nb * 32) = (nibble - 8) * d` for every block of `src (nb)`.
pub fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len() * QK, "q4_0 needs whole blocks of 32");
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.scale();
        let (lo, hi) = y.split_at_mut(QK / 2);
        for ((l, h), q) in lo.iter_mut().zip(hi).zip(b.qs) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `dst (n) = f16(src)`, round to nearest even.
pub fn quantize_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len());
    for (o, v) in dst.iter_mut().zip(src) {
        *o = f16::from_f32(*v);
    }
}

pub fn dequantize_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (o, v) in dst.iter_mut().zip(src) {
        *o = v.to_f32();
    }
}

/// `dst (n) = bf16(src)`, round to nearest even.
pub fn quantize_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len());
    for (o, v) in dst.iter_mut().zip(src) {
        *o = bf16::from_f32(*v);
    }
}

pub fn dequantize_bf16(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (o, v) in dst.iter_mut().zip(src) {
        *o = v.to_f32();
    }
}
