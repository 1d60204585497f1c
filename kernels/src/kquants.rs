//! GGML's k-quant super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), for weights read from GGUF files: scalar
//! dequantizers for all five, and for Q4_K and Q6_K (what a Q4_K_M file is made of) the scalar references of
//! the products the model runs on them, `out += w · xq` against q8_0 activations as for q8_0 and q4_0
//! weights. The SIMD tiers' versions are property-tested against these. The other three are widened to q8_0
//! by the GGUF importer (docs/FORMAT.md, "GGUF").
//!
//! Every format packs 256 weights (`QK_K`) into one super-block of 16 or 8 sub-blocks, each with its own
//! small integer scale (and, for the "affine" formats Q2_K/Q4_K/Q5_K, a minimum) that multiplies one f16
//! super-block scale. The functions read raw little-endian bytes, so a tensor inside an mmap needs no
//! alignment. Layouts, per super-block, in byte order:
//!
//! ```text
//! Q2_K  84 B: scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), d f16, dmin f16
//! Q3_K 110 B: hmask[32] (the 3rd bit), qs[64] (low 2 bits), scales[12] (16 packed 6-bit), d f16
//! Q4_K 144 B: d f16, dmin f16, scales[12] (8 packed 6-bit scales and 8 mins), qs[128] (nibbles)
//! Q5_K 176 B: d f16, dmin f16, scales[12], qh[32] (the 5th bit), qs[128]
//! Q6_K 210 B: ql[128] (low nibbles), qh[64] (2 high bits), scales[16] (i8), d f16
//! ```

use crate::frame::X_CHUNK_BLOCKS;
use crate::quant::{BlockQ8_0, QBlock, QK};
use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;

/// q8_0 activation blocks per super-block.
const XB: usize = QK_K / QK;

/// A Q4_K super-block as it lies in the file (144 bytes, align 2).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    /// The super-block scale of the sub-block scales, as f16 bits.
    pub d: u16,
    /// The super-block scale of the sub-block mins, as f16 bits.
    pub dmin: u16,
    /// 8 six-bit scales and 8 six-bit mins ([`scale_min_k4`]).
    pub scales: [u8; 12],
    /// Four runs of 32 bytes: low nibbles are sub-block `2c`, high nibbles sub-block `2c + 1`.
    pub qs: [u8; 128],
}
const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);

/// A Q6_K super-block as it lies in the file (210 bytes, align 1: its f16 is kept as bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of each quant ([`q6_k_quant`]).
    pub ql: [u8; 128],
    /// High 2 bits of each quant.
    pub qh: [u8; 64],
    /// One signed scale per 16 weights.
    pub scales: [i8; 16],
    /// The super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);

impl BlockQ4K {
    pub fn scales_f32(&self) -> (f32, f32) {
        (
            f16::from_bits(self.d).to_f32(),
            f16::from_bits(self.dmin).to_f32(),
        )
    }
}

impl BlockQ6K {
    pub fn scale(&self) -> f32 {
        f16::from_bits(u16::from_le_bytes(self.d)).to_f32()
    }
}

impl QBlock for BlockQ4K {
    const COLS: usize = QK_K;
}

impl QBlock for BlockQ6K {
    const COLS: usize = QK_K;
}

/// The k-quant formats, by their GGML names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KQuant {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl KQuant {
    /// Bytes of one super-block of [`QK_K`] weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            KQuant::Q2K => 84,
            KQuant::Q3K => 110,
            KQuant::Q4K => 144,
            KQuant::Q5K => 176,
            KQuant::Q6K => 210,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            KQuant::Q2K => "q2_K",
            KQuant::Q3K => "q3_K",
            KQuant::Q4K => "q4_K",
            KQuant::Q5K => "q5_K",
            KQuant::Q6K => "q6_K",
        }
    }

    /// `dst (nb * 256)` from `src (nb * block_bytes)`. Panics when the lengths disagree; callers size both
    /// from one checked element count.
    pub fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        let bb = self.block_bytes();
        assert!(
            src.len().is_multiple_of(bb) && dst.len() == src.len() / bb * QK_K,
            "{}: {} bytes do not dequantize into {} values",
            self.name(),
            src.len(),
            dst.len()
        );
        let f = match self {
            KQuant::Q2K => q2_k,
            KQuant::Q3K => q3_k,
            KQuant::Q4K => q4_k,
            KQuant::Q5K => q5_k,
            KQuant::Q6K => q6_k,
        };
        for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(QK_K)) {
            f(b, y);
        }
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 bytes Q4_K and Q5_K pack them in: sub-blocks 0..4
/// keep 6 bits in bytes `j` (scale) and `j + 4` (min); 4..8 keep their low 4 bits in byte `j + 4` and their
/// top 2 bits in the spare top bits of bytes `j - 4` (scale) and `j` (min).
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn scale_min_k4_f32(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = scale_min_k4(j, s);
    (f32::from(sc), f32::from(m))
}

/// Quant `l` (0..32) of run `run` (0..4) of one 128-weight half of a Q6_K block, 0..64 (the weight is
/// `scale · (q - 32)`): runs 0 and 2 take the low and high nibbles of `ql[l]`, runs 1 and 3 those of
/// `ql[l + 32]`, each with two bits of `qh[l]` on top.
#[inline]
pub fn q6_k_quant(ql: &[u8], qh: &[u8], run: usize, l: usize) -> u8 {
    let low = (ql[l + 32 * (run & 1)] >> (4 * (run >> 1))) & 0x0F;
    low | (((qh[l] >> (2 * run)) & 3) << 4)
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    // Two halves of 128 weights; each reads 32 bytes of qs four times, two bits deeper each time, and
    // each pass covers two sub-blocks of 16.
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for pass in 0..4 {
            let shift = 2 * pass;
            for sub in 0..2 {
                let sc = scales[half * 8 + pass * 2 + sub];
                let (dl, ml) = (d * f32::from(sc & 0x0F), dmin * f32::from(sc >> 4));
                let out = half * 128 + pass * 32 + sub * 16;
                for l in 0..16 {
                    let v = (q[sub * 16 + l] >> shift) & 3;
                    y[out + l] = dl * f32::from(v) - ml;
                }
            }
        }
    }
}

/// Q3_K's 16 signed 6-bit scales: the low 4 bits of scale `i` are nibble `i / 8` of byte `i % 8`, the top
/// 2 bits sit in bytes 8..12, two bits per scale; each is stored plus 32.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((low | high << 4) as i8) - 32;
    }
    out
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = half_at(b, 108);
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for pass in 0..4 {
            let shift = 2 * pass;
            // The high-bit plane: one bit of hmask per weight, bit `half * 4 + pass`.
            let m = 1u8 << (half * 4 + pass);
            for sub in 0..2 {
                let dl = d * f32::from(scales[half * 8 + pass * 2 + sub]);
                let out = half * 128 + pass * 32 + sub * 16;
                for l in 0..16 {
                    let k = sub * 16 + l;
                    let low = ((q[k] >> shift) & 3) as i8;
                    let v = low - if hmask[k] & m != 0 { 0 } else { 4 };
                    y[out + l] = dl * f32::from(v);
                }
            }
        }
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    // Four chunks of 64 weights: the low nibbles of 32 bytes are one sub-block, the high nibbles the next.
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (s0, m0) = scale_min_k4_f32(2 * chunk, scales);
        let (s1, m1) = scale_min_k4_f32(2 * chunk + 1, scales);
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            out[l] = d * s0 * f32::from(q[l] & 0x0F) - dmin * m0;
            out[32 + l] = d * s1 * f32::from(q[l] >> 4) - dmin * m1;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (s0, m0) = scale_min_k4_f32(2 * chunk, scales);
        let (s1, m1) = scale_min_k4_f32(2 * chunk + 1, scales);
        // The fifth bits: two bit planes of qh per chunk.
        let (u0, u1) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            let lo = (q[l] & 0x0F) + if qh[l] & u0 != 0 { 16 } else { 0 };
            let hi = (q[l] >> 4) + if qh[l] & u1 != 0 { 16 } else { 0 };
            out[l] = d * s0 * f32::from(lo) - dmin * m0;
            out[32 + l] = d * s1 * f32::from(hi) - dmin * m1;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    // Two halves of 128 weights; in each, 64 bytes of ql and 32 of qh give four runs of 32 weights.
    for half in 0..2 {
        let (ql, qh) = (
            &ql[half * 64..half * 64 + 64],
            &qh[half * 32..half * 32 + 32],
        );
        let sc = &sc[half * 8..half * 8 + 8];
        let out = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            for run in 0..4 {
                let s = f32::from(sc[is + 2 * run] as i8);
                let q = q6_k_quant(ql, qh, run, l) as i8 - 32;
                out[run * 32 + l] = d * s * f32::from(q);
            }
        }
    }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)` for Q4_K weights and q8_0 activations: the scalar
/// reference. Sub-block `j` of a super-block meets activation block `j`, so its weight `d·sc·q - dmin·m`
/// splits into an integer dot scaled once and the block's sum of quants times the min.
pub fn qmatvec_q4_k(out: &mut [f32], w: &[BlockQ4K], stride: usize, xq: &[BlockQ8_0]) {
    by_block(out, w, stride, xq, |b, x| {
        let (d, dmin) = b.scales_f32();
        let (mut s, mut m) = (0.0f32, 0.0f32);
        for (j, x) in x.iter().enumerate() {
            let (sc, mn) = scale_min_k4(j, &b.scales);
            let q = &b.qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let shift = 4 * (j % 2);
            let (mut dot, mut xs) = (0i32, 0i32);
            for (q, a) in q.iter().zip(&x.qs) {
                dot += i32::from((q >> shift) & 0x0F) * i32::from(*a);
                xs += i32::from(*a);
            }
            let da = x.scale();
            s += da * f32::from(sc) * dot as f32;
            m += da * f32::from(mn) * xs as f32;
        }
        d * s - dmin * m
    })
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (8 nb)` for Q6_K weights and q8_0 activations: the scalar
/// reference. Activation block `g` meets run `g % 4` of half `g / 4`, whose two 16-weight halves have a
/// scale each.
pub fn qmatvec_q6_k(out: &mut [f32], w: &[BlockQ6K], stride: usize, xq: &[BlockQ8_0]) {
    by_block(out, w, stride, xq, |b, x| {
        let mut s = 0.0f32;
        for (g, x) in x.iter().enumerate() {
            let (half, run) = (g / 4, g % 4);
            let (ql, qh) = (&b.ql[half * 64..], &b.qh[half * 32..]);
            let mut dot = 0i32;
            for (l, a) in x.qs.iter().enumerate() {
                let sc = i32::from(b.scales[half * 8 + 2 * run + l / 16]);
                dot += sc * (i32::from(q6_k_quant(ql, qh, run, l)) - 32) * i32::from(*a);
            }
            s += x.scale() * dot as f32;
        }
        b.scale() * s
    })
}

/// The activation blocks' scales, and for Q4_K each block's scale times the sum of its quants (what a
/// sub-block's min multiplies): computed once per call by the NEON kernels, used by every row.
#[cfg_attr(
    not(all(feature = "kquants", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn activation_scales(
    xq: &[BlockQ8_0],
    sums: bool,
) -> ([f32; X_CHUNK_BLOCKS], [f32; X_CHUNK_BLOCKS]) {
    assert!(xq.len() <= X_CHUNK_BLOCKS, "one chunk of activations");
    let (mut da, mut dsum) = ([0f32; X_CHUNK_BLOCKS], [0f32; X_CHUNK_BLOCKS]);
    for (i, x) in xq.iter().enumerate() {
        da[i] = x.scale();
        if sums {
            dsum[i] = da[i] * x.qs.iter().map(|q| i32::from(*q)).sum::<i32>() as f32;
        }
    }
    (da, dsum)
}

/// Adds to each output the sum over its row's first `xq.len() / 8` super-blocks of `dot(block, its 8
/// activation blocks)`.
fn by_block<B>(
    out: &mut [f32],
    w: &[B],
    stride: usize,
    xq: &[BlockQ8_0],
    dot: impl Fn(&B, &[BlockQ8_0]) -> f32,
) {
    let nb = xq.len() / XB;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        *o += row
            .iter()
            .zip(xq.chunks_exact(XB))
            .map(|(b, x)| dot(b, x))
            .sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_scale_block_is_zero_and_lengths_are_checked() {
        for k in [
            KQuant::Q2K,
            KQuant::Q3K,
            KQuant::Q4K,
            KQuant::Q5K,
            KQuant::Q6K,
        ] {
            let src = [0u8; 2 * 210];
            let src = &src[..2 * k.block_bytes()];
            let mut y = [1.0f32; 2 * QK_K];
            k.dequantize(src, &mut y);
            assert!(y.iter().all(|v| *v == 0.0), "{}", k.name());
        }
    }

    #[test]
    fn q4_k_unpacks_scales_mins_and_nibbles() {
        // d = 1, dmin = 0.5; sub-block 0 scale 2 min 4, sub-block 1 scale 3 min 1; every nibble pair (5, 7).
        let mut b = [0u8; 144];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[4] = 2;
        b[5] = 3;
        b[8] = 4;
        b[9] = 1;
        b[16..].fill(0x75);
        let mut y = [0f32; QK_K];
        KQuant::Q4K.dequantize(&b, &mut y);
        assert_eq!(y[0], 2.0 * 5.0 - 0.5 * 4.0);
        assert_eq!(y[32], 3.0 * 7.0 - 0.5 * 1.0);
        // Sub-blocks without a scale: only minus their min (0).
        assert_eq!(y[64], 0.0);
    }
}
