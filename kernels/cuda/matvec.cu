// Decode: `out (B, N) = x (B, D) · w (N, D)ᵀ` for a few rows (B = 1..8: one sequence, or the server's batched
// decode), memory-bound. One warp per weight row; each weight byte is read once for all B rows, so a batch of 8
// costs little more than one. 128-bit loads where the row length allows; activations of the quantized paths are
// quantized once per step to int8 blocks (`quantize_q8`) and multiplied with `dp4a`.
//
// `accumulate` != 0 adds into `out` instead of overwriting it: the residual adds of `wo` and `w2` ride along.
// Launch: grid (ceil(N / 4)), block 128 (4 warps, a row each). `__launch_bounds__(128, 1)` leaves registers uncapped:
// with `(128)` or `(128, 8)` ptxas aimed for more resident blocks, stopped at 40 registers and spilled (B = 3).

#define ROWS_PER_BLOCK 4

// Reference: enigma_kernels::quantize_q8_0 (llama.cpp's quantize_row_q8_0_ref), one warp per block of 32:
// `d = amax / 127` stored as f16 (the dot products use the rounded scale, as the CPU's do), `q = round(x / d)`.
// x (B, D) f32 -> qs (B, D) int8, d (B, D / 32) f32 (the f16-rounded scale, widened)
extern "C" __global__ void quantize_q8(const float* __restrict__ x, signed char* __restrict__ qs,
                                       float* __restrict__ d, int blocks) {
    int blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (blk >= blocks) return;
    float v = x[blk * QK + lane];
    float amax = warp_max(fabsf(v));
    float scale = amax / 127.0f;
    float id = scale != 0.0f ? 1.0f / scale : 0.0f;
    qs[blk * QK + lane] = (signed char)round_half_away(v * id);
    if (lane == 0) d[blk] = h2f(f2h(scale));
}

// Each lane's partial sums of one weight row against B rows of x, added into `acc`; the kernels below reduce
// them over the warp. One helper per weight type, shared by the plain and the SwiGLU-fused kernels.

// Reference: enigma_kernels::generic::matvec_f16 (and matvec_bf16): each weight widened exactly to f32.
template <int B, bool BF>
__device__ __forceinline__ void half_partial(float* acc, const half_bits* __restrict__ wr,
                                             const float* __restrict__ x, int D, int lane) {
    if ((D & 7) == 0) {
        // 8 weights (16 bytes) per lane per step; rows start 16-byte aligned because D is a multiple of 8.
        for (int c = lane * 8; c < D; c += 256) {
            uint4 raw = *reinterpret_cast<const uint4*>(wr + c);
            u32 words[4] = {raw.x, raw.y, raw.z, raw.w};
            float wf[8];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (BF) {
                    wf[2 * i] = __uint_as_float(words[i] << 16);
                    wf[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
                } else {
                    h2f2(words[i], wf[2 * i], wf[2 * i + 1]);
                }
            }
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float4* xv = reinterpret_cast<const float4*>(x + (size_t)b * D + c);
                float4 x0 = xv[0], x1 = xv[1];
                acc[b] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x +
                          wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
            }
        }
    } else {
        // Odd row lengths (stories260K's hidden 172): rows are not aligned for vector loads.
        for (int c = lane; c < D; c += 32) {
            float wf = BF ? bf2f(wr[c]) : h2f(wr[c]);
#pragma unroll
            for (int b = 0; b < B; b++) acc[b] += wf * x[(size_t)b * D + c];
        }
    }
}

// Reference: enigma_kernels::generic::matvec_f32. f32 weights (stories260K as llama2.c wrote it); 4 per load.
template <int B>
__device__ __forceinline__ void f32_partial(float* acc, const float* __restrict__ wr, const float* __restrict__ x,
                                            int D, int lane) {
    if ((D & 3) == 0) {
        for (int c = lane * 4; c < D; c += 128) {
            float4 wv = *reinterpret_cast<const float4*>(wr + c);
#pragma unroll
            for (int b = 0; b < B; b++) {
                float4 xv = *reinterpret_cast<const float4*>(x + (size_t)b * D + c);
                acc[b] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            }
        }
    } else {
        for (int c = lane; c < D; c += 32) {
            float wf = wr[c];
#pragma unroll
            for (int b = 0; b < B; b++) acc[b] += wf * x[(size_t)b * D + c];
        }
    }
}

// Reference: enigma_kernels::generic::vec_dot_q8_0_q8_0. One lane per block of 32: two 128-bit loads of
// weights, eight dp4a per row of x. wq: the row's D int8, wd: its D / 32 f16 scales; xq (B, D), xd (B, D / 32).
template <int B>
__device__ __forceinline__ void q8_partial(float* acc, const signed char* __restrict__ wq,
                                           const half_bits* __restrict__ wd, const signed char* __restrict__ xq,
                                           const float* __restrict__ xd, int D, int lane) {
    int nb = D / QK;
    for (int blk = lane; blk < nb; blk += 32) {
        const uint4* wp = reinterpret_cast<const uint4*>(wq + blk * QK);
        uint4 w0 = wp[0], w1 = wp[1];
        int ww[8] = {(int)w0.x, (int)w0.y, (int)w0.z, (int)w0.w, (int)w1.x, (int)w1.y, (int)w1.z, (int)w1.w};
        float dw = h2f(wd[blk]);
#pragma unroll
        for (int b = 0; b < B; b++) {
            const uint4* xp = reinterpret_cast<const uint4*>(xq + (size_t)b * D + blk * QK);
            uint4 x0 = xp[0], x1 = xp[1];
            int s = 0;
            s = dp4a(ww[0], (int)x0.x, s);
            s = dp4a(ww[1], (int)x0.y, s);
            s = dp4a(ww[2], (int)x0.z, s);
            s = dp4a(ww[3], (int)x0.w, s);
            s = dp4a(ww[4], (int)x1.x, s);
            s = dp4a(ww[5], (int)x1.y, s);
            s = dp4a(ww[6], (int)x1.z, s);
            s = dp4a(ww[7], (int)x1.w, s);
            acc[b] += (float)s * (dw * xd[(size_t)b * nb + blk]);
        }
    }
}

// Reference: enigma_kernels::generic::vec_dot_q4_0_q8_0. Byte j of a block holds element j in its low nibble
// and j + 16 in its high one (llama.cpp's order), so the low nibbles meet x's first 16 bytes and the high ones its
// last 16; the `- 8` is applied once per block as `8 · Σ x`. wq: the row's D / 2 bytes, wd: its scales.
template <int B>
__device__ __forceinline__ void q4_partial(float* acc, const unsigned char* __restrict__ wq,
                                           const half_bits* __restrict__ wd, const signed char* __restrict__ xq,
                                           const float* __restrict__ xd, int D, int lane) {
    int nb = D / QK;
    for (int blk = lane; blk < nb; blk += 32) {
        uint4 w = *reinterpret_cast<const uint4*>(wq + blk * (QK / 2));
        u32 ww[4] = {w.x, w.y, w.z, w.w};
        float dw = h2f(wd[blk]);
#pragma unroll
        for (int b = 0; b < B; b++) {
            const uint4* xp = reinterpret_cast<const uint4*>(xq + (size_t)b * D + blk * QK);
            uint4 x0 = xp[0], x1 = xp[1];
            int xl[4] = {(int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w};
            int xh[4] = {(int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w};
            int s = 0, sx = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s = dp4a((int)(ww[i] & 0x0f0f0f0fu), xl[i], s);
                s = dp4a((int)((ww[i] >> 4) & 0x0f0f0f0fu), xh[i], s);
                sx = dp4a(0x01010101, xl[i], sx);
                sx = dp4a(0x01010101, xh[i], sx);
            }
            acc[b] += (float)(s - 8 * sx) * (dw * xd[(size_t)b * nb + blk]);
        }
    }
}

// The partial sums reduced over the warp and written (or added) by lane 0. All reductions come before the one
// branch: shuffles interleaved with lane-0 stores made ptxas spill.
template <int B>
__device__ __forceinline__ void store_rows(float* __restrict__ out, float* acc, int row, int N, int lane,
                                           int accumulate) {
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = warp_sum(acc[b]);
    if (lane == 0) {
#pragma unroll
        for (int b = 0; b < B; b++) {
            float* o = out + (size_t)b * N + row;
            *o = accumulate ? *o + acc[b] : acc[b];
        }
    }
}

// SwiGLU fused into the gate and up products: `out = silu(w1 · x) * (w3 · x)` per row (reference:
// enigma_kernels::generic::silu_mul after the two products), so decode writes one hidden vector, not two, and
// launches once.
template <int B>
__device__ __forceinline__ void store_glu(float* __restrict__ out, float* gate, float* up, int row, int N,
                                          int lane) {
#pragma unroll
    for (int b = 0; b < B; b++) {
        gate[b] = warp_sum(gate[b]);
        up[b] = warp_sum(up[b]);
    }
    if (lane == 0) {
#pragma unroll
        for (int b = 0; b < B; b++) {
            float v = gate[b];
            out[(size_t)b * N + row] = v * (1.0f / (1.0f + expf(-v))) * up[b];
        }
    }
}

#define ROW() \
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); \
    int lane = threadIdx.x & 31; \
    if (row >= N) return;
#define ZERO(acc) \
    float acc[B]; \
    _Pragma("unroll") for (int b = 0; b < B; b++) acc[b] = 0.0f;

template <int B, bool BF>
__device__ __forceinline__ void mv_half(float* out, const half_bits* w, const float* x, int N, int D, int accumulate) {
    ROW();
    ZERO(acc);
    half_partial<B, BF>(acc, w + (size_t)row * D, x, D, lane);
    store_rows<B>(out, acc, row, N, lane, accumulate);
}
template <int B, bool BF>
__device__ __forceinline__ void glu_half(float* out, const half_bits* w1, const half_bits* w3, const float* x, int N,
                                         int D) {
    ROW();
    ZERO(gate);
    ZERO(up);
    half_partial<B, BF>(gate, w1 + (size_t)row * D, x, D, lane);
    half_partial<B, BF>(up, w3 + (size_t)row * D, x, D, lane);
    store_glu<B>(out, gate, up, row, N, lane);
}
template <int B>
__device__ __forceinline__ void mv_f32(float* out, const float* w, const float* x, int N, int D, int accumulate) {
    ROW();
    ZERO(acc);
    f32_partial<B>(acc, w + (size_t)row * D, x, D, lane);
    store_rows<B>(out, acc, row, N, lane, accumulate);
}
template <int B>
__device__ __forceinline__ void glu_f32(float* out, const float* w1, const float* w3, const float* x, int N, int D) {
    ROW();
    ZERO(gate);
    ZERO(up);
    f32_partial<B>(gate, w1 + (size_t)row * D, x, D, lane);
    f32_partial<B>(up, w3 + (size_t)row * D, x, D, lane);
    store_glu<B>(out, gate, up, row, N, lane);
}
template <int B>
__device__ __forceinline__ void mv_q8(float* out, const signed char* wq, const half_bits* wd, const signed char* xq,
                                      const float* xd, int N, int D, int accumulate) {
    ROW();
    ZERO(acc);
    q8_partial<B>(acc, wq + (size_t)row * D, wd + (size_t)row * (D / QK), xq, xd, D, lane);
    store_rows<B>(out, acc, row, N, lane, accumulate);
}
template <int B>
__device__ __forceinline__ void glu_q8(float* out, const signed char* w1, const half_bits* d1, const signed char* w3,
                                       const half_bits* d3, const signed char* xq, const float* xd, int N, int D) {
    ROW();
    ZERO(gate);
    ZERO(up);
    q8_partial<B>(gate, w1 + (size_t)row * D, d1 + (size_t)row * (D / QK), xq, xd, D, lane);
    q8_partial<B>(up, w3 + (size_t)row * D, d3 + (size_t)row * (D / QK), xq, xd, D, lane);
    store_glu<B>(out, gate, up, row, N, lane);
}
template <int B>
__device__ __forceinline__ void mv_q4(float* out, const unsigned char* wq, const half_bits* wd, const signed char* xq,
                                      const float* xd, int N, int D, int accumulate) {
    ROW();
    ZERO(acc);
    q4_partial<B>(acc, wq + (size_t)row * (D / 2), wd + (size_t)row * (D / QK), xq, xd, D, lane);
    store_rows<B>(out, acc, row, N, lane, accumulate);
}
template <int B>
__device__ __forceinline__ void glu_q4(float* out, const unsigned char* w1, const half_bits* d1,
                                       const unsigned char* w3, const half_bits* d3, const signed char* xq,
                                       const float* xd, int N, int D) {
    ROW();
    ZERO(gate);
    ZERO(up);
    q4_partial<B>(gate, w1 + (size_t)row * (D / 2), d1 + (size_t)row * (D / QK), xq, xd, D, lane);
    q4_partial<B>(up, w3 + (size_t)row * (D / 2), d3 + (size_t)row * (D / QK), xq, xd, D, lane);
    store_glu<B>(out, gate, up, row, N, lane);
}

// One entry point per dtype and batch size: the launcher picks `matvec_<dtype>_b<B>` (and `swiglu_<dtype>_b<B>`)
// for B rows.
#define KERNEL extern "C" __global__ void __launch_bounds__(128, 1)
#define MATVEC(B)                                                                                              \
    KERNEL matvec_f32_b##B(float* out, const float* w, const float* x, int N, int D, int accumulate) {         \
        mv_f32<B>(out, w, x, N, D, accumulate);                                                                \
    }                                                                                                          \
    KERNEL matvec_f16_b##B(float* out, const half_bits* w, const float* x, int N, int D, int accumulate) {     \
        mv_half<B, false>(out, w, x, N, D, accumulate);                                                        \
    }                                                                                                          \
    KERNEL matvec_bf16_b##B(float* out, const half_bits* w, const float* x, int N, int D, int accumulate) {    \
        mv_half<B, true>(out, w, x, N, D, accumulate);                                                         \
    }                                                                                                          \
    KERNEL matvec_q8_0_b##B(float* out, const signed char* wq, const half_bits* wd, const signed char* xq,     \
                            const float* xd, int N, int D, int accumulate) {                                   \
        mv_q8<B>(out, wq, wd, xq, xd, N, D, accumulate);                                                       \
    }                                                                                                          \
    KERNEL matvec_q4_0_b##B(float* out, const unsigned char* wq, const half_bits* wd, const signed char* xq,   \
                            const float* xd, int N, int D, int accumulate) {                                   \
        mv_q4<B>(out, wq, wd, xq, xd, N, D, accumulate);                                                       \
    }                                                                                                          \
    KERNEL swiglu_f32_b##B(float* out, const float* w1, const float* w3, const float* x, int N, int D) {       \
        glu_f32<B>(out, w1, w3, x, N, D);                                                                      \
    }                                                                                                          \
    KERNEL swiglu_f16_b##B(float* out, const half_bits* w1, const half_bits* w3, const float* x, int N,        \
                           int D) {                                                                            \
        glu_half<B, false>(out, w1, w3, x, N, D);                                                              \
    }                                                                                                          \
    KERNEL swiglu_bf16_b##B(float* out, const half_bits* w1, const half_bits* w3, const float* x, int N,       \
                            int D) {                                                                           \
        glu_half<B, true>(out, w1, w3, x, N, D);                                                               \
    }                                                                                                          \
    KERNEL swiglu_q8_0_b##B(float* out, const signed char* w1, const half_bits* d1, const signed char* w3,     \
                            const half_bits* d3, const signed char* xq, const float* xd, int N, int D) {       \
        glu_q8<B>(out, w1, d1, w3, d3, xq, xd, N, D);                                                          \
    }                                                                                                          \
    KERNEL swiglu_q4_0_b##B(float* out, const unsigned char* w1, const half_bits* d1, const unsigned char* w3, \
                            const half_bits* d3, const signed char* xq, const float* xd, int N, int D) {       \
        glu_q4<B>(out, w1, d1, w3, d3, xq, xd, N, D);                                                          \
    }
MATVEC(1)
MATVEC(2)
MATVEC(3)
MATVEC(4)
MATVEC(5)
MATVEC(6)
MATVEC(7)
MATVEC(8)
