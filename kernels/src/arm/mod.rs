//! Cortex-M kernels (Armv7E-M and up): the q8_0 dot product on the DSP extension's `SXTB16` + `SMLAD`
//! (four int8 multiply-adds in four instructions, not counting loads), and an f32 matvec with four
//! independent accumulators so the FPU's multiply-add latency overlaps.
//!
//! The same code is built on every target: where the DSP instructions are missing (Armv6-M, hosts) the two
//! primitives are portable Rust with the instructions' exact semantics, which is what the host tests run.

use crate::quant::{BlockQ4_0, BlockQ8_0, QK};

/// `SXTB16`: bytes 0 and 2 of `x`, each sign-extended into a 16-bit half.
#[cfg(enigma_arm_dsp)]
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a register-only instruction of the DSP extension, which this target (Armv7E-M/v8-M Main) has.
    unsafe {
        core::arch::asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
            options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// `SMLAD`: `acc + lo(a)·lo(b) + hi(a)·hi(b)`, halves as i16.
#[cfg(enigma_arm_dsp)]
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: a register-only DSP instruction (it may set the sticky Q flag, which nothing here reads).
    unsafe {
        core::arch::asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
            acc = in(reg) acc, options(pure, nomem, nostack))
    };
    r
}

#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let lo = x as u8 as i8 as i16 as u16 as u32;
    let hi = (x >> 16) as u8 as i8 as i16 as u16 as u32;
    lo | (hi << 16)
}

#[cfg(not(enigma_arm_dsp))]
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let lo = (a as u16 as i16 as i32) * (b as u16 as i16 as i32);
    let hi = ((a >> 16) as u16 as i16 as i32) * ((b >> 16) as u16 as i16 as i32);
    acc.wrapping_add(lo).wrapping_add(hi)
}

/// `acc + Σ_{k<4} a_k · b_k` for four packed i8 each: bytes 0 and 2 via one `SXTB16`, 1 and 3 via the
/// rotated one, then one `SMLAD` per pair.
#[inline(always)]
fn dot4(a: u32, b: u32, acc: i32) -> i32 {
    let acc = smlad(sxtb16(a), sxtb16(b), acc);
    smlad(sxtb16(a.rotate_right(8)), sxtb16(b.rotate_right(8)), acc)
}

/// 32 i8 as 8 little-endian words (LLVM folds each into one `LDR`, unaligned loads being legal on v7-M).
#[inline(always)]
fn words(q: &[i8; QK]) -> [u32; QK / 4] {
    let mut w = [0u32; QK / 4];
    for (w, c) in w.iter_mut().zip(q.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
    }
    w
}

#[inline(always)]
fn dot_block(a: &[i8; QK], b: &[i8; QK]) -> i32 {
    let (a, b) = (words(a), words(b));
    let mut acc = 0i32;
    for (x, y) in a.iter().zip(&b) {
        acc = dot4(*x, *y, acc);
    }
    acc
}

/// `Σ_blocks d_w · d_x · Σ_j w_j x_j` over `w (nb)` and `x (nb)`; same result as the generic reference up
/// to float rounding (the integer part is exact).
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sumf += dot_block(&a.qs, &b.qs) as f32 * (a.scale() * b.scale());
    }
    sumf
}

/// q4_0 × q8_0: nibbles are unpacked to i8 (minus 8) into a stack block, then the q8_0 dot runs.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let mut q = [0i8; QK];
        let (lo, hi) = q.split_at_mut(QK / 2);
        for ((l, h), n) in lo.iter_mut().zip(hi).zip(a.qs) {
            *l = (n & 0x0f) as i8 - 8;
            *h = (n >> 4) as i8 - 8;
        }
        sumf += dot_block(&q, &b.qs) as f32 * a.scale() * b.scale();
    }
    sumf
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q8_0 × q8_0.
pub fn qmatvec_q8_0(out: &mut [f32], w: &[BlockQ8_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o += vec_dot_q8_0_q8_0(&w[r * stride..r * stride + nb], xq);
    }
}

/// `out (n) += w (n, stride)[:, ..nb] · xq (nb)`, q4_0 × q8_0.
pub fn qmatvec_q4_0(out: &mut [f32], w: &[BlockQ4_0], stride: usize, xq: &[BlockQ8_0]) {
    let nb = xq.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o += vec_dot_q4_0_q8_0(&w[r * stride..r * stride + nb], xq);
    }
}

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
        matvec_f32(&mut out[i * n..(i + 1) * n], w, &x[i * d..(i + 1) * d]);
    }
}

/// The Cortex-M table: the kernels above, the generic ones elsewhere.
#[cfg(target_arch = "arm")]
pub(crate) static CORTEX_M: crate::Kernels = crate::Kernels {
    tier: crate::Tier::CortexM,
    variant: if cfg!(enigma_arm_dsp) {
        "cortex-m+dsp"
    } else {
        "cortex-m"
    },
    matvec_f32,
    matmul_f32,
    qmatvec_q8_0,
    qtile_q8_0: qmatvec_q8_0,
    qmatvec_q4_0,
    ..crate::dispatch::GENERIC
};
