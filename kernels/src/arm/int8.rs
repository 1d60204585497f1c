//! Integer decode on Cortex-M: the q8_0 and q4_0 matvecs with the activations prepared once per call.
//!
//! `frame` has already quantized `x` to q8_0 blocks. Each call first widens every activation block to the
//! form `SMLAD` consumes (pairs of i16 in a word, in the order `SXTB16`/`UXTB16` leave a weight word's bytes),
//! and converts its scale to f32 once. Each weight block is then 8 word loads and two `SMLAD`s per word (one
//! `SXTB16` each, the activation half being ready): about 1.4 instructions per multiply-add with no float work
//! per element, where unpacking both sides cost twice as many. Per block there is one f16 to f32 conversion of
//! the weight's scale (`VCVTB` on an FPU; the `half` crate's bit manipulation elsewhere) and one multiply-add.
//!
//! Results equal the scalar reference (`generic::vec_dot_*`) bit for bit: the block sums are exact integers
//! and the float operations per block are the reference's, in its order.
//!
//! On targets without the DSP extension (Armv6-M, hosts) the asm is replaced by portable Rust with the same
//! arithmetic, which is what the host tests run; the M0+ thus gets an integer inner loop too (its `MULS` is
//! single-cycle), with the float work left per block.

use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use crate::X_CHUNK_BLOCKS;
use core::mem::MaybeUninit;

/// Words per prepared activation block: 32 values as 16 pairs of i16.
const WORDS: usize = QK / 2;

/// One activation block as `SMLAD` operands, and its scale.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Prepared {
    /// q8_0: for weight word `k` (bytes `4k..4k+4`), `pairs[2k] = (x[4k], x[4k+2])` and
    /// `pairs[2k+1] = (x[4k+1], x[4k+3])`. q4_0: for weight word `k` (nibbles of elements `4k..4k+4` low,
    /// `16+4k..` high), `pairs[4k..4k+4]` = low (0, 2), low (1, 3), high (0, 2), high (1, 3).
    pairs: [u32; WORDS],
}

/// The prepared blocks of one call. Left uninitialised: zeroing 2 KiB per matvec cost the M4 more than
/// preparing the few blocks a small model's rows have.
struct Scratch {
    prep: [MaybeUninit<Prepared>; X_CHUNK_BLOCKS],
    d: [f32; X_CHUNK_BLOCKS],
    off: [i32; X_CHUNK_BLOCKS],
}

impl Scratch {
    #[inline(always)]
    fn new() -> Self {
        Scratch {
            prep: [const { MaybeUninit::uninit() }; X_CHUNK_BLOCKS],
            d: [0.0; X_CHUNK_BLOCKS],
            off: [0; X_CHUNK_BLOCKS],
        }
    }
}

/// `prep[..n]` after every one of them was written.
#[inline(always)]
fn written(prep: &[MaybeUninit<Prepared>], n: usize) -> &[Prepared] {
    let prep = &prep[..n];
    // SAFETY: the callers' `prepare_*` wrote each of the first `n` elements (`n` is at most the number of
    // blocks they were given, and they write one element per block), and `MaybeUninit<T>` has `T`'s layout.
    unsafe { &*(prep as *const [MaybeUninit<Prepared>] as *const [Prepared]) }
}

/// Two i8 as the halves of a word (`lo` in bits 0..16).
#[inline(always)]
fn pair(lo: i8, hi: i8) -> u32 {
    (lo as i16 as u16 as u32) | ((hi as i16 as u16 as u32) << 16)
}

/// An f16 scale as f32, exactly as `half` converts it. With an FPU: the f16's bits moved into an f32's
/// places and scaled by 2^112 (one multiply, exact for normal and subnormal halves, FPSCR.FZ being 0 out of
/// reset), where `half`'s bit manipulation took 17 instructions and two branches per block. (`VCVTB` would
/// be one instruction, but stable Rust cannot name the FPU's registers in asm on this target.)
#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    if cfg!(target_abi = "eabihf") {
        f16_to_f32_fast(bits)
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

/// [`f16_to_f32`]'s FPU form, built everywhere so the host tests check it against `half`.
#[inline(always)]
pub(crate) fn f16_to_f32_fast(bits: u16) -> f32 {
    let h = bits as u32;
    if h & 0x7c00 == 0x7c00 {
        return half::f16::from_bits(bits).to_f32();
    }
    f32::from_bits(((h & 0x8000) << 16) | ((h & 0x7fff) << 13)) * f32::from_bits(0x7780_0000)
}

/// Widens `xq` into `prep` for the q8_0 kernel, and its scales into `d`.
fn prepare_q8(xq: &[BlockQ8_0], prep: &mut [MaybeUninit<Prepared>], d: &mut [f32]) {
    for ((b, p), d) in xq.iter().zip(prep.iter_mut()).zip(d.iter_mut()) {
        *d = f16_to_f32(b.d);
        let mut pairs = [0u32; WORDS];
        for (k, c) in b.qs.chunks_exact(4).enumerate() {
            pairs[2 * k] = pair(c[0], c[2]);
            pairs[2 * k + 1] = pair(c[1], c[3]);
        }
        p.write(Prepared { pairs });
    }
}

/// Widens `xq` into `prep` for the q4_0 kernel, its scales into `d` and each block's `8 · Σ x` (the nibbles'
/// offset, subtracted once per block instead of once per element).
fn prepare_q4(
    xq: &[BlockQ8_0],
    prep: &mut [MaybeUninit<Prepared>],
    d: &mut [f32],
    off: &mut [i32],
) {
    for (((b, p), d), off) in xq
        .iter()
        .zip(prep.iter_mut())
        .zip(d.iter_mut())
        .zip(off.iter_mut())
    {
        *d = f16_to_f32(b.d);
        *off = 8 * b.qs.iter().map(|&v| v as i32).sum::<i32>();
        let (lo, hi) = b.qs.split_at(QK / 2);
        let mut pairs = [0u32; WORDS];
        for (k, (l, h)) in lo.chunks_exact(4).zip(hi.chunks_exact(4)).enumerate() {
            pairs[4 * k] = pair(l[0], l[2]);
            pairs[4 * k + 1] = pair(l[1], l[3]);
            pairs[4 * k + 2] = pair(h[0], h[2]);
            pairs[4 * k + 3] = pair(h[1], h[3]);
        }
        p.write(Prepared { pairs });
    }
}

/// `Σ_b isum_b · (d_w,b · dx_b)` of one q8_0 row over the prepared blocks: the reference's float steps per
/// block, in its order. Raw pointers, because the row loop's slicing and bounds checks cost as much per row
/// as a block's products on a 64-wide model.
///
/// # Safety
/// `pw` points at `dx.len()` readable `BlockQ8_0`s and `px` at as many `Prepared` blocks. One asm block per weight block loads its scale (`LDRSH`) and its 32 quants, and
/// leaves both pointers on the next block, so the loop keeps no other state than the scales' pointer.
#[cfg(enigma_arm_dsp)]
#[inline(always)]
unsafe fn row_q8(mut pw: *const u8, mut px: *const u32, dx: &[f32]) -> f32 {
    let mut sumf = 0.0f32;
    for dx in dx {
        let (acc, h): (i32, i32);
        // SAFETY: the caller guarantees `dx.len()` blocks at `pw` and at `px`; each pass reads one of each
        // (34 bytes at `pw`: LDRSH and LDR allow 2-byte alignment on Armv7-M, whose unaligned-access trap is off out
        // of reset and stays off; 16 words of `prep`, 8-byte aligned, by LDM) and moves both pointers past
        // it. The DSP instructions are register-only. LDM lists registers in ascending order, hence named
        // ones. Written out, not `.rept`: LLVM sizes inline asm by its lines, and a loop it under-counts
        // puts the function's literal pool out of reach.
        unsafe {
            core::arch::asm!(
                "ldrsh {h}, [{pw}], #2",
                "ldm {px}!, {{r2, r3, r4, r5}}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smuad {acc}, {t}, r2",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r3, {acc}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r4, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r5, {acc}",
                "ldm {px}!, {{r2, r3, r4, r5}}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r2, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r3, {acc}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r4, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r5, {acc}",
                "ldm {px}!, {{r2, r3, r4, r5}}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r2, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r3, {acc}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r4, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r5, {acc}",
                "ldm {px}!, {{r2, r3, r4, r5}}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r2, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r3, {acc}",
                "ldr {w}, [{pw}], #4",
                "sxtb16 {t}, {w}",
                "smlad {acc}, {t}, r4, {acc}",
                "sxtb16 {t}, {w}, ror #8",
                "smlad {acc}, {t}, r5, {acc}",
                acc = out(reg) acc,
                h = out(reg) h,
                px = inout(reg) px,
                pw = inout(reg) pw,
                w = out(reg) _,
                t = out(reg) _,
                out("r2") _, out("r3") _, out("r4") _, out("r5") _,
                options(pure, readonly, nostack),
            )
        };
        sumf += acc as f32 * (f16_from_i16(h) * dx);
    }
    sumf
}

/// An f16 scale loaded sign-extended (`LDRSH`) as f32: [`f16_to_f32_fast`] without masking the sign.
#[cfg(enigma_arm_dsp)]
#[inline(always)]
fn f16_from_i16(h: i32) -> f32 {
    if !cfg!(target_abi = "eabihf") || h & 0x7c00 == 0x7c00 {
        return half::f16::from_bits(h as u16).to_f32();
    }
    // Bits 28..31 of `h << 13` are copies of the sign; bit 31 is the one to keep.
    f32::from_bits(((h << 13) as u32) & !0x7000_0000) * f32::from_bits(0x7780_0000)
}

#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn row_q8(row: &[BlockQ8_0], prep: &[Prepared], dx: &[f32]) -> f32 {
    let mut sumf = 0.0f32;
    for ((b, p), dx) in row.iter().zip(prep).zip(dx) {
        sumf += dot_q8(&b.qs, p) as f32 * (f16_to_f32(b.d) * dx);
    }
    sumf
}

#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn dot_q8(w: &[i8; QK], x: &Prepared) -> i32 {
    let mut acc = 0i32;
    for (c, p) in w.chunks_exact(4).zip(x.pairs.chunks_exact(2)) {
        acc = smlad(pair(c[0], c[2]), p[0], acc);
        acc = smlad(pair(c[1], c[3]), p[1], acc);
    }
    acc
}

/// `Σ_j nibble_j · x[j]` of one q4_0 weight block (nibbles unsigned; the caller subtracts `8 · Σ x`).
/// Low nibbles are masked in place; high ones are left in bits 4..8 of each byte (`BIC`), summed separately
/// and shifted down once, which is exact: every product is a multiple of 16.
#[cfg(enigma_arm_dsp)]
#[inline(always)]
fn dot_q4(w: &[u8; QK / 2], x: &Prepared) -> i32 {
    let acc: i32;
    // SAFETY: as `dot_q8`: 16 bytes of `w` by unaligned LDR, the 16 words of `x` by LDM, register-only DSP.
    unsafe {
        core::arch::asm!(
            "ldm {px}!, {{r2, r3, r4, r5}}",
            "ldr {w}, [{pw}], #4",
            "and {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smuad {lo}, {t}, r2",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {lo}, {t}, r3, {lo}",
            "bic {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smuad {hi}, {t}, r4",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {hi}, {t}, r5, {hi}",
            "ldm {px}!, {{r2, r3, r4, r5}}",
            "ldr {w}, [{pw}], #4",
            "and {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {lo}, {t}, r2, {lo}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {lo}, {t}, r3, {lo}",
            "bic {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {hi}, {t}, r4, {hi}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {hi}, {t}, r5, {hi}",
            "ldm {px}!, {{r2, r3, r4, r5}}",
            "ldr {w}, [{pw}], #4",
            "and {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {lo}, {t}, r2, {lo}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {lo}, {t}, r3, {lo}",
            "bic {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {hi}, {t}, r4, {hi}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {hi}, {t}, r5, {hi}",
            "ldm {px}!, {{r2, r3, r4, r5}}",
            "ldr {w}, [{pw}], #4",
            "and {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {lo}, {t}, r2, {lo}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {lo}, {t}, r3, {lo}",
            "bic {n}, {w}, #0x0f0f0f0f",
            "uxtb16 {t}, {n}",
            "smlad {hi}, {t}, r4, {hi}",
            "uxtb16 {t}, {n}, ror #8",
            "smlad {hi}, {t}, r5, {hi}",
            "add {lo}, {lo}, {hi}, asr #4",
            lo = out(reg) acc,
            hi = out(reg) _,
            px = inout(reg) x.pairs.as_ptr() => _,
            pw = inout(reg) w.as_ptr() => _,
            w = out(reg) _,
            n = out(reg) _,
            t = out(reg) _,
            out("r2") _, out("r3") _, out("r4") _, out("r5") _,
            options(pure, readonly, nostack),
        )
    };
    acc
}

#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn dot_q4(w: &[u8; QK / 2], x: &Prepared) -> i32 {
    let (mut lo, mut hi) = (0i32, 0i32);
    for (c, p) in w.chunks_exact(4).zip(x.pairs.chunks_exact(4)) {
        let n = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let (l, h) = (n & 0x0f0f_0f0f, n & 0xf0f0_f0f0);
        lo = smlad(l & 0x00ff_00ff, p[0], lo);
        lo = smlad((l >> 8) & 0x00ff_00ff, p[1], lo);
        hi = smlad(h & 0x00ff_00ff, p[2], hi);
        hi = smlad((h >> 8) & 0x00ff_00ff, p[3], hi);
    }
    lo + (hi >> 4)
}

/// `SMLAD` in Rust: `acc + lo(a)·lo(b) + hi(a)·hi(b)`, halves as i16.
#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let lo = (a as u16 as i16 as i32) * (b as u16 as i16 as i32);
    let hi = ((a >> 16) as u16 as i16 as i32) * ((b >> 16) as u16 as i16 as i32);
    acc.wrapping_add(lo).wrapping_add(hi)
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q8_0 × q8_0 (at most [`X_CHUNK_BLOCKS`] blocks, as
/// `frame` hands them).
pub fn qmatvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len().min(X_CHUNK_BLOCKS);
    let mut s = Scratch::new();
    prepare_q8(&xq[..nb], &mut s.prep, &mut s.d);
    let prep = written(&s.prep, nb);
    let dx = &s.d[..nb];
    if stride == 0 {
        // No blocks (and no rows to step over): the reference adds its empty sum.
        out.iter_mut().for_each(|o| *o += 0.0);
        return;
    }
    #[cfg(enigma_arm_dsp)]
    {
        // `w` ends `nb` blocks into its last row (frame's column chunks), so that is all it must hold.
        let rows = out.len();
        assert!(
            rows == 0 || w.len() >= (rows - 1) * stride + nb,
            "w is not (n, stride) blocks"
        );
        let mut pw = w.as_ptr() as *const u8;
        for o in out.iter_mut() {
            // SAFETY: row `r` starts `r * stride` blocks into `w` and the assert keeps its `nb` blocks
            // inside `w`; `prep` holds `nb` blocks.
            *o += unsafe { row_q8(pw, prep.as_ptr() as *const u32, dx) };
            pw = pw.wrapping_add(stride * core::mem::size_of::<BlockQ8_0>());
        }
    }
    #[cfg(not(enigma_arm_dsp))]
    for (o, row) in out.iter_mut().zip(w.chunks(stride)) {
        *o += row_q8(row, prep, dx);
    }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q4_0 × q8_0.
pub fn qmatvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len().min(X_CHUNK_BLOCKS);
    let mut s = Scratch::new();
    prepare_q4(&xq[..nb], &mut s.prep, &mut s.d, &mut s.off);
    let prep = written(&s.prep, nb);
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * stride..r * stride + nb];
        let mut sumf = 0.0f32;
        for (((b, p), dx), off) in row.iter().zip(prep).zip(&s.d).zip(&s.off) {
            sumf += (dot_q4(&b.qs, p) - off) as f32 * f16_to_f32(b.d) * dx;
        }
        *o += sumf;
    }
}
