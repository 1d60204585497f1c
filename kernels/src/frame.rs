//! The part of each op that is the same in every tier: splitting work into the pieces kernels see.

use crate::quant::{quantize_q8_0_grouped, BlockQ8_0, QBlock, QK};
use core::mem::size_of;
use half::{bf16, f16};

/// Columns of `x` quantized at a time. The buffer lives on the stack (34 B per block: 2 KiB here) so the
/// quantized matvec allocates nothing and runs on an MCU; wider rows are done in several column chunks.
#[cfg(target_pointer_width = "64")]
pub const X_CHUNK_BLOCKS: usize = 256;
#[cfg(not(target_pointer_width = "64"))]
pub const X_CHUNK_BLOCKS: usize = 32;

/// A kernel adding one column chunk: `out (n) += w (n, stride)[:, ..nb] · xq (nb · B::COLS / 32)`, `w`
/// starting at the chunk.
pub type QMatvec<B> = fn(out: &mut [f32], w: &[B], stride: usize, xq: &[BlockQ8_0]);

/// Tokens quantized together by [`matmul_quantized`]: a block of weight rows is fetched from memory once and
/// reused from L1 by each of them, which turns prefill from memory-bound into compute-bound. The tile's
/// quantized activations live on the stack (8 x 8.5 KiB on 64-bit hosts; one token on an MCU).
#[cfg(target_pointer_width = "64")]
const T_TILE: usize = 8;
#[cfg(not(target_pointer_width = "64"))]
const T_TILE: usize = 1;

/// Bytes of weights per row block in [`matmul_quantized`]: an eighth of a 1 MiB L2 (large enough that a
/// kernel's per-call preparation of `x` is small beside the rows it serves).
const W_TILE_BYTES: usize = 128 * 1024;

/// `out (n) = w (n, d / B::COLS) · x (d)` for block-quantized weights: [`matmul_quantized`] with one token.
pub fn matvec_quantized<B: QBlock>(out: &mut [f32], w: &[B], x: &[f32], kernel: QMatvec<B>) {
    matmul_quantized(out, w, x, 1, [kernel; 2])
}

/// `out (t, n) = x (t, d) · w (n, d / B::COLS)ᵀ` for block-quantized weights: quantizes `x` to q8_0 (llama.cpp's
/// activation format; one scale per `B::COLS` columns, see [`quantize_q8_0_grouped`]), one stack-sized column chunk of up to [`T_TILE`] tokens at a time, and lets
/// `[stream, tile]` do the integer dot products. One token streams all rows through `stream` in one call;
/// several go through `tile` in L2-sized blocks of rows, each used by every token of the tile before the
/// next is fetched (a kernel may prepare `x` once per call, so blocks are not made smaller).
///
/// Every tier quantizes `x` with the same scalar code, and each output is summed over the same column chunks
/// in the same order whatever the tiling, so tiers differ only in float summation order inside a kernel.
/// Panics when `d` is not a multiple of `B::COLS` or `w` is not `n` rows of `d / B::COLS` blocks (caller
/// bugs: `WeightView::from_bytes` checks both).
pub fn matmul_quantized<B: QBlock>(
    out: &mut [f32],
    w: &[B],
    x: &[f32],
    t: usize,
    [stream, tile]: [QMatvec<B>; 2],
) {
    out.fill(0.0);
    if t == 0 || out.is_empty() {
        return;
    }
    let (n, d) = (out.len() / t, x.len() / t);
    if d == 0 {
        return;
    }
    assert!(
        d.is_multiple_of(B::COLS) && x.len() == t * d && out.len() == t * n,
        "quantized matmul needs whole blocks of columns"
    );
    let stride = d / B::COLS;
    assert_eq!(w.len(), n * stride, "weights are not (n, d / cols) blocks");
    // One token (decode) gets a one-token buffer: the stack buffer is zeroed on every call.
    if t == 1 {
        tiles::<B, 1>(out, w, x, n, d, stream)
    } else {
        tiles::<B, T_TILE>(out, w, x, n, d, tile)
    }
}

fn tiles<B: QBlock, const TT: usize>(
    out: &mut [f32],
    w: &[B],
    x: &[f32],
    n: usize,
    d: usize,
    kernel: QMatvec<B>,
) {
    let stride = d / B::COLS;
    // Activation blocks per weight block, and weight blocks per chunk of activations.
    let per = B::COLS / QK;
    let chunk = X_CHUNK_BLOCKS / per;
    let mut xq = [[BlockQ8_0::ZERO; X_CHUNK_BLOCKS]; TT];
    for (xs, os) in x.chunks(TT * d).zip(out.chunks_mut(TT * n)) {
        let tt = xs.len() / d;
        for c0 in (0..stride).step_by(chunk) {
            let nb = (stride - c0).min(chunk);
            for (q, xt) in xq.iter_mut().zip(xs.chunks_exact(d)) {
                // One scale per weight block's columns (a k-quant super-block's 8 activation blocks
                // share theirs), so a kernel may sum a weight block's integer dots before scaling.
                quantize_q8_0_grouped(
                    &xt[c0 * B::COLS..(c0 + nb) * B::COLS],
                    &mut q[..nb * per],
                    per,
                );
            }
            let rows = if tt == 1 {
                n
            } else {
                (W_TILE_BYTES / (nb * size_of::<B>())).max(1)
            };
            for r0 in (0..n).step_by(rows) {
                let rn = (n - r0).min(rows);
                for (q, o) in xq.iter().zip(os.chunks_exact_mut(n)) {
                    kernel(
                        &mut o[r0..r0 + rn],
                        &w[r0 * stride + c0..],
                        stride,
                        &q[..nb * per],
                    );
                }
            }
        }
    }
}

/// `out (hs) = Σₜ probs[t] · values[t]`, `values (t, hs)`, for a SIMD tier of `L`-lane vectors `V`: four vectors
/// of columns stay in registers over all `t`, so each output is stored once. `load` (which widens the cache's
/// element type `T`, f32 or f16, to f32 lanes) and `store` take a whole or partial vector (`1..=L` values,
/// zeros loaded past them); `fma(a, b, acc)` is `acc + a·b`.
///
/// Inlined into each tier's `#[target_feature]` `attn_accum`, whose closures inherit its features.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[inline(always)]
pub(crate) fn attn_accum<T, V: Copy, const L: usize>(
    out: &mut [f32],
    probs: &[f32],
    values: &[T],
    splat: impl Fn(f32) -> V,
    fma: impl Fn(V, V, V) -> V,
    load: impl Fn(&[T]) -> V,
    store: impl Fn(&mut [f32], V),
) {
    let hs = out.len();
    let values = &values[..probs.len() * hs];
    if hs == 0 {
        return;
    }
    let mut c = 0;
    while c < hs {
        let width = (hs - c).min(4 * L);
        let nv = width.div_ceil(L);
        let mut acc = [splat(0.0); 4];
        for (p, row) in probs.iter().zip(values.chunks_exact(hs)) {
            let pv = splat(*p);
            for (j, a) in acc.iter_mut().enumerate().take(nv) {
                let lo = c + j * L;
                let hi = (lo + L).min(c + width);
                *a = fma(pv, load(&row[lo..hi]), *a);
            }
        }
        for (j, a) in acc.iter().enumerate().take(nv) {
            let lo = c + j * L;
            let hi = (lo + L).min(c + width);
            store(&mut out[lo..hi], *a);
        }
        c += width;
    }
}

/// Stamps out a SIMD tier's attention pair over an f16 KV cache from its own parts: `$matvec` its f16 matvec
/// (keys are the rows, `q` the vector), `$ld` a whole-or-partial f16 load widening to f32 lanes, and the
/// splat, FMA and whole-or-partial store its f32 `attn_accum` uses, so the f16 pair runs the f32 one's frames.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! attn_f16_pair {
    (
        $vis:vis,
        feature = $feat:literal,
        lanes = $l:expr,
        matvec = $matvec:path,
        splat = $splat:path,
        fma = $fma:path,
        load = $ld:path,
        store = $st:path $(,)?
    ) => {
        /// `scores (t) = keys (t, hs) · q (hs) * scale`, f16 keys
        #[target_feature(enable = $feat)]
        $vis fn attn_scores_f16(scores: &mut [f32], q: &[f32], keys: &[half::f16], scale: f32) {
            $matvec(scores, &keys[..scores.len() * q.len()], q);
            for s in scores.iter_mut() {
                *s *= scale;
            }
        }

        /// `out (hs) = Σₜ probs[t] · values[t]`, f16 `values (t, hs)`
        #[target_feature(enable = $feat)]
        $vis fn attn_accum_f16(out: &mut [f32], probs: &[f32], values: &[half::f16]) {
            $crate::frame::attn_accum::<_, _, { $l }>(
                out,
                probs,
                values,
                |p| $splat(p),
                |a, b, acc| $fma(a, b, acc),
                |c| $ld(c),
                |c, v| $st(c, v),
            )
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use attn_f16_pair;

/// The first `c.len() < N` f16s, zero-padded to a whole vector's worth, for the tiers' partial f16 loads.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[inline(always)]
pub(crate) fn padded_f16<const N: usize>(c: &[f16]) -> [f16; N] {
    let mut buf = [f16::ZERO; N];
    buf[..c.len()].copy_from_slice(c);
    buf
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

/// Scalar widening of one weight (or KV cache element), for the tails of the SIMD matvecs (their vector loads
/// widen 4-16 at once) and the scalar attention over an f16 cache.
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
