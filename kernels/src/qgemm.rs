//! Quantized matrix–matrix products as int8 GEMMs over weights repacked for the micro-kernels.
//!
//! The row-major q8_0/q4_0 layout of a `.enigma` file makes a kernel that serves several tokens reduce
//! each (row, token) pair's vector of partial sums on its own, and apply one scale product per pair and
//! block. Repacked (llama.cpp's Q8_0x8/Q4_0x8 idea, with [`QG`] = 16 rows), the 32-bit lane `r` of a
//! 64-byte chunk holds 4 quants of row `r` of a group, so one int8 dot-product instruction with 4 bytes of
//! a token broadcast to every lane (`vpdpbusd`, `vpmaddubsw`, `sdot` by lane) advances 16 rows at once,
//! the lanes are already the outputs (no horizontal sums), and a block costs one float multiply-add per
//! token for all 16 rows.
//!
//! Packed layout, per group of 16 rows (the last group padded with zero rows), per 32-column block `b`,
//! groups outermost so a group's blocks are one sequential stream:
//! - q8_0, [`Q8_0X16_BYTES`] bytes: the 16 rows' f16 scales (32 B), then 8 chunks of 64 B: chunk `k`, lane
//!   `r` = quants `4k..4k+4` of row `r`, as stored (signed).
//! - q4_0, [`Q4_0X16_BYTES`] bytes: the 16 scales, then 4 chunks: chunk `k`, lane `r` = 4 bytes whose low
//!   nibbles are elements `8k..8k+4` of row `r` and whose high nibbles are elements `8k+4..8k+8` (nibble
//!   values as stored, `0..16`, meaning `nibble - 8`), so a mask and a shift give the kernel two chunks of
//!   unsigned bytes.
//!
//! Activations are quantized to q8_0 once per call (per stack-sized tile of tokens and columns) into
//! [`XBlock`]s that also carry their quant sum: an unsigned × signed dot of `w + 128` (q8_0) or the raw
//! nibble (q4_0) then needs only its accumulator started at `-128 Σx` or `-8 Σx` to be exact.
//!
//! The packed copy is a load-time view built by the std runtime; the file and the no_std forward pass (an
//! MCU runs the row-major kernels) are unchanged.

use crate::quant::{quantize_q8_0, BlockQ4_0, BlockQ8_0, QK};
use half::f16;

/// Rows per packed group: one 512-bit vector of i32 lanes (two 256-bit ones, four 128-bit ones).
pub const QG: usize = 16;
/// Bytes of one q8_0 group-block: 16 f16 scales and 16 × 32 quants.
pub const Q8_0X16_BYTES: usize = 2 * QG + QG * QK;
/// Bytes of one q4_0 group-block: 16 f16 scales and 16 × 16 bytes of nibbles.
pub const Q4_0X16_BYTES: usize = 2 * QG + QG * QK / 2;

/// One block of q8_0 activations, as the micro-kernels read it: the scale already widened to f32, the sum
/// of the quants for the zero-point correction, and the quants in groups of 4 that a kernel broadcasts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct XBlock {
    /// The scale's f32 bits (the f16 scale of `quantize_q8_0`, widened: same value as the row-major path).
    pub d: u32,
    /// Σ of the 32 quants.
    pub s: i32,
    /// The 32 quants, 4 to an `i32` in little-endian byte order.
    pub q4: [i32; QK / 4],
}
const _: () = assert!(core::mem::size_of::<XBlock>() == 40);

impl XBlock {
    pub const ZERO: XBlock = XBlock {
        d: 0,
        s: 0,
        q4: [0; QK / 4],
    };

    pub fn scale(&self) -> f32 {
        f32::from_bits(self.d)
    }

    /// Quant `j` (0..32).
    pub fn q(&self, j: usize) -> i8 {
        self.q4[j / 4].to_le_bytes()[j % 4] as i8
    }
}

/// Quantizes `x (nb * 32)` into `out (nb)` with the row-major path's q8_0 rounding (the same quants and
/// f16 scales), so packed and row-major products see the same activations.
pub fn quantize_x(x: &[f32], out: &mut [XBlock]) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "activations are whole blocks of 32"
    );
    let mut b = [BlockQ8_0::ZERO];
    for (o, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        quantize_q8_0(xs, &mut b);
        let qs = b[0].qs;
        o.d = b[0].scale().to_bits();
        o.s = qs.iter().map(|&q| q as i32).sum();
        for (k, q) in o.q4.iter_mut().enumerate() {
            *q = i32::from_le_bytes([
                qs[4 * k] as u8,
                qs[4 * k + 1] as u8,
                qs[4 * k + 2] as u8,
                qs[4 * k + 3] as u8,
            ]);
        }
    }
}

/// A packed q8_0 or q4_0 matrix `(rows, cols)`, or a window of its rows: rows `[row0, row0 + rows)` of the
/// packed whole, whose groups start at row 0 of `data`. Windows need not start on a group boundary (a
/// thread's share of a decode, one layer of stacked matrices): the frame computes whole groups and keeps the
/// window's lanes.
#[derive(Clone, Copy, Debug)]
pub struct Packed<'a> {
    pub data: &'a [u8],
    pub cols: usize,
    pub row0: usize,
    pub rows: usize,
}

/// Which packed format a micro-kernel reads; the frame needs its group-block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedFormat {
    Q8_0,
    Q4_0,
}

impl PackedFormat {
    pub fn group_block_bytes(self) -> usize {
        match self {
            PackedFormat::Q8_0 => Q8_0X16_BYTES,
            PackedFormat::Q4_0 => Q4_0X16_BYTES,
        }
    }

    /// Bytes of the packed copy of a `(rows, cols)` matrix, or `None` when `cols` is not whole blocks or the
    /// size overflows.
    pub fn packed_len(self, rows: usize, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(QK) {
            return None;
        }
        rows.div_ceil(QG)
            .checked_mul(cols / QK)?
            .checked_mul(self.group_block_bytes())
    }
}

/// Writes the packed copy of `w (rows, cols / 32)` into `out` ([`PackedFormat::packed_len`] bytes).
pub fn pack_q8_0(w: &[BlockQ8_0], rows: usize, cols: usize, out: &mut [u8]) {
    pack(w, rows, cols, out, PackedFormat::Q8_0, |blk, r, data| {
        for (j, q) in blk.qs.iter().enumerate() {
            data[(j / 4) * 4 * QG + 4 * r + j % 4] = *q as u8;
        }
        blk.d
    })
}

/// Writes the packed copy of `w (rows, cols / 32)` into `out` ([`PackedFormat::packed_len`] bytes).
pub fn pack_q4_0(w: &[BlockQ4_0], rows: usize, cols: usize, out: &mut [u8]) {
    pack(w, rows, cols, out, PackedFormat::Q4_0, |blk, r, data| {
        for j in 0..QK / 2 {
            let (k, i) = (j / 4, j % 4);
            let lo = nibble(blk, 8 * k + i);
            let hi = nibble(blk, 8 * k + 4 + i);
            data[k * 4 * QG + 4 * r + i] = lo | (hi << 4);
        }
        blk.d
    })
}

/// Element `j` (0..32) of a q4_0 block as its stored nibble (llama.cpp order: low nibbles are `0..16`).
fn nibble(b: &BlockQ4_0, j: usize) -> u8 {
    if j < QK / 2 {
        b.qs[j] & 0x0f
    } else {
        b.qs[j - QK / 2] >> 4
    }
}

/// The loop shared by both formats: `put(block, lane, data)` stores one row's block in a group-block's data
/// part and returns its f16 scale bits.
fn pack<B>(
    w: &[B],
    rows: usize,
    cols: usize,
    out: &mut [u8],
    f: PackedFormat,
    put: impl Fn(&B, usize, &mut [u8]) -> u16,
) {
    let nb = cols / QK;
    assert_eq!(
        w.len(),
        rows * nb,
        "weights are not (rows, cols / 32) blocks"
    );
    assert_eq!(Some(out.len()), f.packed_len(rows, cols), "packed size");
    let gb = f.group_block_bytes();
    out.fill(0);
    for (g, group) in out.chunks_exact_mut(nb * gb).enumerate() {
        for (b, gblk) in group.chunks_exact_mut(gb).enumerate() {
            let (scales, data) = gblk.split_at_mut(2 * QG);
            for r in 0..QG.min(rows - g * QG) {
                let d = put(&w[(g * QG + r) * nb + b], r, data);
                scales[2 * r..2 * r + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
    }
}

/// The f16 scale of lane `r` of a group-block.
fn scale(gblk: &[u8], r: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([gblk[2 * r], gblk[2 * r + 1]])).to_f32()
}

/// Writes row `r` of a packed matrix as f32 into `out (cols)`: the embedding lookup, and the check that
/// packing loses nothing.
pub fn unpack_row(f: PackedFormat, p: &Packed<'_>, r: usize, out: &mut [f32]) {
    let nb = p.cols / QK;
    let gb = f.group_block_bytes();
    let row = p.row0 + r;
    let (g, lane) = (row / QG, row % QG);
    let group = &p.data[g * nb * gb..(g + 1) * nb * gb];
    for (gblk, o) in group.chunks_exact(gb).zip(out.chunks_exact_mut(QK)) {
        let d = scale(gblk, lane);
        for (j, v) in o.iter_mut().enumerate() {
            *v = weight(f, gblk, lane, j) as f32 * d;
        }
    }
}

/// Element `j` of lane `r` of a group-block, as the integer it stands for.
fn weight(f: PackedFormat, gblk: &[u8], r: usize, j: usize) -> i32 {
    let data = &gblk[2 * QG..];
    match f {
        PackedFormat::Q8_0 => data[(j / 4) * 4 * QG + 4 * r + j % 4] as i8 as i32,
        PackedFormat::Q4_0 => {
            let (k, half, i) = (j / 8, (j / 4) % 2, j % 4);
            ((data[k * 4 * QG + 4 * r + i] >> (4 * half)) & 0x0f) as i32 - 8
        }
    }
}

/// A micro-kernel: `out[t][r] = Σ_b dw[r][b] · dx[t][b] · (w[r][b] · x[t][b])` for the 16 rows of one group
/// and `out.len()` tokens, over `nb` blocks. `w` is the group's `nb` group-blocks; token `t`'s blocks are
/// `x[t * xstride..][..nb]`. Overwrites `out`.
pub type QGemmMicro = fn(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize);

/// Quantizes activations for the micro-kernels: [`quantize_x`], or a tier's version giving the same blocks.
pub type QuantizeX = fn(x: &[f32], out: &mut [XBlock]);

/// Stamps out a tier's micro-kernel ([`QGemmMicro`]) from `$tile::<M>(out (M), w, x, xstride, nb)`, a
/// register tile of `M` tokens: the tokens go in tiles of the first `M` listed, then one tile of the rest, each
/// a const-generic instance so that its accumulators stay in registers. `$feat`: the tile's target features.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! tiled_micro {
    ($name:ident, $tile:ident, $feat:literal, [$mt:literal $(, $m:literal)*]) => {
        #[target_feature(enable = $feat)]
        pub(super) fn $name(
            out: &mut [[f32; $crate::qgemm::QG]],
            w: &[u8],
            x: &[$crate::qgemm::XBlock],
            xstride: usize,
            nb: usize,
        ) {
            let mut t0 = 0;
            while t0 < out.len() {
                let m = (out.len() - t0).min($mt);
                let (o, xs) = (&mut out[t0..t0 + m], &x[t0 * xstride..]);
                match m {
                    $($m => $tile::<$m>(o, w, xs, xstride, nb),)*
                    _ => $tile::<$mt>(o, w, xs, xstride, nb),
                }
                t0 += m;
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use tiled_micro;

/// The scalar reference micro-kernel of packed q8_0 (integer block dots, one float multiply-add per block).
pub fn micro_q8_0(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    micro_ref(PackedFormat::Q8_0, out, w, x, xstride, nb)
}

/// The scalar reference micro-kernel of packed q4_0.
pub fn micro_q4_0(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    micro_ref(PackedFormat::Q4_0, out, w, x, xstride, nb)
}

fn micro_ref(
    f: PackedFormat,
    out: &mut [[f32; QG]],
    w: &[u8],
    x: &[XBlock],
    xstride: usize,
    nb: usize,
) {
    let gb = f.group_block_bytes();
    for (t, o) in out.iter_mut().enumerate() {
        let xs = &x[t * xstride..t * xstride + nb];
        for (r, o) in o.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (gblk, xb) in w.chunks_exact(gb).take(nb).zip(xs) {
                let dot: i32 = (0..QK)
                    .map(|j| weight(f, gblk, r, j) * xb.q(j) as i32)
                    .sum();
                acc += dot as f32 * (scale(gblk, r) * xb.scale());
            }
            *o = acc;
        }
    }
}

/// Tokens quantized together: each group's weights are read once per tile (from L2 at worst) and serve
/// every token of it, so 32 tokens (a server's batch, a prefill chunk's half) stream the matrix once: that
/// took a 32-token 2048x768 q8_0 product from DRAM-streamed weights from about 850 to 600 µs here. Their
/// activations live on the stack (32 × 128 blocks × 40 B = 160 KiB on 64-bit hosts); fewer tokens get a
/// smaller tile, since the tile is zeroed on every call.
#[cfg(target_pointer_width = "64")]
const T_TILE: usize = 32;
#[cfg(not(target_pointer_width = "64"))]
const T_TILE: usize = 1;
/// The tile of a small batch (up to 8 tokens).
const T_SMALL: usize = if T_TILE < 8 { T_TILE } else { 8 };
/// Columns (in blocks) quantized at a time; wider rows are summed over several column chunks.
#[cfg(target_pointer_width = "64")]
const C_TILE: usize = 128;
#[cfg(not(target_pointer_width = "64"))]
const C_TILE: usize = 8;

/// `out (t, n) = x (t, d) · w (n, d)ᵀ` for a packed matrix window `w` (`n = w.rows`, `d = w.cols`): quantizes
/// `x` with `quantize` once per tile of tokens and columns and runs `micro` on every group the window touches.
///
/// Each output is summed over the same column chunks in the same order for every tier, so tiers differ
/// only in float summation order inside the micro-kernel. Panics when `d` is not a multiple of 32, the
/// shapes disagree or `w.data` is shorter than its window needs (caller bugs).
pub fn qgemm(
    out: &mut [f32],
    w: Packed<'_>,
    f: PackedFormat,
    x: &[f32],
    t: usize,
    micro: QGemmMicro,
    quantize: QuantizeX,
) {
    out.fill(0.0);
    let (n, d) = (w.rows, w.cols);
    if t == 0 || n == 0 || d == 0 {
        return;
    }
    assert!(
        d.is_multiple_of(QK) && x.len() == t * d && out.len() == t * n,
        "quantized matmul needs whole blocks of 32 columns"
    );
    let nbr = d / QK;
    let gb = f.group_block_bytes();
    assert!(
        w.data.len() >= (w.row0 + n).div_ceil(QG) * nbr * gb,
        "packed weights shorter than their window"
    );
    // The tile buffer is zeroed on every call: a decode or a small batch gets a small one.
    match t {
        1 => tiles::<1>(out, w, gb, x, micro, quantize),
        2..=8 => tiles::<T_SMALL>(out, w, gb, x, micro, quantize),
        _ => tiles::<T_TILE>(out, w, gb, x, micro, quantize),
    }
}

fn tiles<const TT: usize>(
    out: &mut [f32],
    w: Packed<'_>,
    gb: usize,
    x: &[f32],
    micro: QGemmMicro,
    quantize: QuantizeX,
) {
    let (n, d) = (w.rows, w.cols);
    let nbr = d / QK;
    let (g0, g1) = (w.row0 / QG, (w.row0 + n).div_ceil(QG));
    let mut xq = [[XBlock::ZERO; C_TILE]; TT];
    let mut acc = [[0.0f32; QG]; TT];
    for (xs, os) in x.chunks(TT * d).zip(out.chunks_mut(TT * n)) {
        let tt = xs.len() / d;
        for c0 in (0..nbr).step_by(C_TILE) {
            let nb = (nbr - c0).min(C_TILE);
            for (q, xt) in xq.iter_mut().zip(xs.chunks_exact(d)) {
                quantize(&xt[c0 * QK..(c0 + nb) * QK], &mut q[..nb]);
            }
            for g in g0..g1 {
                let at = (g * nbr + c0) * gb;
                micro(
                    &mut acc[..tt],
                    &w.data[at..at + nb * gb],
                    xq.as_flattened(),
                    C_TILE,
                    nb,
                );
                // The window's lanes of this group, as output columns.
                let lo = (g * QG).max(w.row0);
                let hi = ((g + 1) * QG).min(w.row0 + n);
                for (a, o) in acc[..tt].iter().zip(os.chunks_exact_mut(n)) {
                    for (o, a) in o[lo - w.row0..hi - w.row0]
                        .iter_mut()
                        .zip(&a[lo - g * QG..hi - g * QG])
                    {
                        *o += a;
                    }
                }
            }
        }
    }
}
