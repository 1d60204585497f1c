//! NEON dotprod micro-kernels of the packed int8 GEMM ([`crate::qgemm`]): a group's 16 rows are four q
//! registers of i32 lanes, and `sdot` by element (`sdot v.4s, w.16b, x.4b[i]`) multiplies 4 quants of each of
//! 4 rows by 4 quants of a token held in one lane of a register: the 32 quants of a token's block are two
//! registers, loaded once per block. `sdot` is signed × signed, so q8_0 needs no correction; q4_0 nibbles
//! (`0..16`, positive as signed bytes) start their accumulator at `-8 Σx`.

use crate::qgemm::{tiled_micro, XBlock, Q4_0X16_BYTES, Q8_0X16_BYTES, QG};
use core::arch::aarch64::*;
use core::arch::asm;

macro_rules! feat {
    ($($item:item)*) => {
        $(
            #[target_feature(enable = "neon,dotprod")]
            $item
        )*
    };
}

/// `sdot` by element, one function per lane (the lane is an immediate).
macro_rules! sdot_lane {
    ($($name:ident = $lane:literal),*) => {
        $(
            feat! {
                #[inline]
                fn $name(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
                    let mut acc = acc;
                    // SAFETY: `sdot` is a register-only instruction of the dotprod extension, enabled on this
                    // function (reached only from a dotprod-detected table); asm because `vdotq_laneq_s32` is
                    // unstable.
                    unsafe {
                        asm!(concat!("sdot {a:v}.4s, {w:v}.16b, {x:v}.4b[", $lane, "]"),
                            a = inout(vreg) acc, w = in(vreg) w, x = in(vreg) x,
                            options(pure, nomem, nostack, preserves_flags))
                    };
                    acc
                }
            }
        )*
    };
}
sdot_lane!(sdot0 = "0", sdot1 = "1", sdot2 = "2", sdot3 = "3");

tiled_micro!(qgemm_q8_0_dotprod, tile_q8_0, "neon,dotprod", [2, 1]);
tiled_micro!(qgemm_q4_0_dotprod, tile_q4_0, "neon,dotprod", [2, 1]);

feat! {
/// The 16 f16 scales of a group-block, widened (scalar: the f16 vector type is unstable), as 4 registers.
#[inline]
fn scales(gblk: &[u8]) -> [float32x4_t; 4] {
    let mut s = [0.0f32; QG];
    for (r, v) in s.iter_mut().enumerate() {
        *v = half::f16::from_bits(u16::from_le_bytes([gblk[2 * r], gblk[2 * r + 1]])).to_f32();
    }
    // SAFETY: each load reads 4 of the 16 f32s of `s`.
    core::array::from_fn(|j| unsafe { vld1q_f32(s[4 * j..].as_ptr()) })
}

/// The 4 registers (4 rows each) of the 64-byte chunk at `at`.
#[inline]
fn chunk(gblk: &[u8], at: usize) -> [int8x16_t; 4] {
    let c = &gblk[at..at + 64];
    // SAFETY: `c` is 64 readable bytes; each load reads 16 of them.
    core::array::from_fn(|j| unsafe { vld1q_s8(c[16 * j..].as_ptr() as *const i8) })
}

/// A token's block as two registers (quants 0..16 and 16..32).
#[inline]
fn xregs(b: &XBlock) -> [int8x16_t; 2] {
    let q = &b.q4;
    // SAFETY: `q` is 8 i32s = 32 readable bytes; each load reads 16 of them.
    unsafe { [vld1q_s8(q.as_ptr() as *const i8), vld1q_s8(q[4..].as_ptr() as *const i8)] }
}

/// `acc[m][j] += cvt(dot[m][j]) · dw[j] · dx[m]`, the common end of a block in both formats.
#[inline]
fn scale_acc<const M: usize>(acc: &mut [[float32x4_t; 4]; M], dot: &[[int32x4_t; 4]; M], dw: &[float32x4_t; 4], x: &[XBlock], xstride: usize, b: usize) {
    for m in 0..M {
        let dx = x[m * xstride + b].scale();
        for j in 0..4 {
            acc[m][j] = vfmaq_f32(acc[m][j], vcvtq_f32_s32(dot[m][j]), vmulq_n_f32(dw[j], dx));
        }
    }
}

#[inline]
fn store<const M: usize>(out: &mut [[f32; QG]], acc: &[[float32x4_t; 4]; M]) {
    for (o, a) in out.iter_mut().zip(acc) {
        for (j, v) in a.iter().enumerate() {
            let o = &mut o[4 * j..4 * j + 4];
            // SAFETY: `o` is 4 writable f32s.
            unsafe { vst1q_f32(o.as_mut_ptr(), *v) }
        }
    }
}

#[inline]
fn tile_q8_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    assert!(out.len() == M && w.len() >= nb * Q8_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let mut acc = [[vdupq_n_f32(0.0); 4]; M];
    for (b, gblk) in w.chunks_exact(Q8_0X16_BYTES).take(nb).enumerate() {
        let xr: [[int8x16_t; 2]; M] = core::array::from_fn(|m| xregs(&x[m * xstride + b]));
        let mut dot = [[vdupq_n_s32(0); 4]; M];
        // Chunk k holds quants 4k..4k+4: register k / 4 of a token, lane k % 4.
        macro_rules! step {
            ($k:literal, $reg:literal, $sdot:ident) => {
                let wv = chunk(gblk, 2 * QG + 64 * $k);
                for m in 0..M {
                    for j in 0..4 {
                        dot[m][j] = $sdot(dot[m][j], wv[j], xr[m][$reg]);
                    }
                }
            };
        }
        step!(0, 0, sdot0);
        step!(1, 0, sdot1);
        step!(2, 0, sdot2);
        step!(3, 0, sdot3);
        step!(4, 1, sdot0);
        step!(5, 1, sdot1);
        step!(6, 1, sdot2);
        step!(7, 1, sdot3);
        scale_acc(&mut acc, &dot, &scales(gblk), x, xstride, b);
    }
    store(out, &acc);
}

#[inline]
fn tile_q4_0<const M: usize>(out: &mut [[f32; QG]], w: &[u8], x: &[XBlock], xstride: usize, nb: usize) {
    assert!(out.len() == M && w.len() >= nb * Q4_0X16_BYTES && x.len() >= (M - 1) * xstride + nb);
    let low = vdupq_n_u8(0x0f);
    let mut acc = [[vdupq_n_f32(0.0); 4]; M];
    for (b, gblk) in w.chunks_exact(Q4_0X16_BYTES).take(nb).enumerate() {
        let xr: [[int8x16_t; 2]; M] = core::array::from_fn(|m| xregs(&x[m * xstride + b]));
        let mut dot: [[int32x4_t; 4]; M] =
            core::array::from_fn(|m| [vdupq_n_s32(-8 * x[m * xstride + b].s); 4]);
        // Chunk k: low nibbles are quants 8k..8k+4 (register 2k / 4, lane 2k % 4), high nibbles the next 4.
        macro_rules! step {
            ($k:literal, $reg:literal, $slo:ident, $shi:ident) => {
                let v = chunk(gblk, 2 * QG + 64 * $k);
                let lo = v.map(|c| vreinterpretq_s8_u8(vandq_u8(vreinterpretq_u8_s8(c), low)));
                let hi = v.map(|c| vreinterpretq_s8_u8(vshrq_n_u8::<4>(vreinterpretq_u8_s8(c))));
                for m in 0..M {
                    for j in 0..4 {
                        dot[m][j] = $slo(dot[m][j], lo[j], xr[m][$reg]);
                        dot[m][j] = $shi(dot[m][j], hi[j], xr[m][$reg]);
                    }
                }
            };
        }
        step!(0, 0, sdot0, sdot1);
        step!(1, 0, sdot2, sdot3);
        step!(2, 1, sdot0, sdot1);
        step!(3, 1, sdot2, sdot3);
        scale_acc(&mut acc, &dot, &scales(gblk), x, xstride, b);
    }
    store(out, &acc);
}
}
