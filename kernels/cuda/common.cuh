// Helpers shared by every kernel file. The Rust side prepends this text to each `.cu` before NVRTC sees it
// (enigma-cuda's `source()`), so no file needs an include path and NVRTC needs no headers at all: f16/bf16 go
// through inline PTX conversions instead of cuda_fp16.h, which the pip NVRTC does not always ship.
//
// Conventions of every kernel (so backward kernels can join later with the same shapes and names):
// - activations are f32, row-major `(rows, cols)`; shapes are written on each argument;
// - each kernel's comment names its scalar reference in `enigma_kernels::generic` (or `enigma_core`), the
//   CPU code its GPU test compares it with;
// - quantized weights are uploaded split: the int8 / nibble bytes of every block in one array (16-byte
//   aligned, so 128-bit loads work) and the blocks' f16 scales in another; the math is llama.cpp's.

typedef unsigned short half_bits;
typedef unsigned int u32;

#define QK 32
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float h2f(half_bits h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ half_bits f2h(float f) {
    half_bits h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

// Both f16 halves of a 32-bit word (low half first), without moving through 16-bit registers.
__device__ __forceinline__ void h2f2(u32 w, float& lo, float& hi) {
    asm("{ .reg .b16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }"
        : "=f"(lo), "=f"(hi)
        : "r"(w));
}

// bf16 is the top half of an f32: widening is exact.
__device__ __forceinline__ float bf2f(half_bits h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ half_bits f2bf(float f) {
    half_bits h;
    asm("{ .reg .b16 t; cvt.rn.bf16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

// Two f32 packed into one register as f16x2 / bf16x2 (low half first), the operand form of `mma.sync`.
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}
__device__ __forceinline__ u32 pack_bf2(float lo, float hi) {
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
}

// Four int8 products summed into `c`; inline PTX because NVRTC without headers has no `__dp4a`.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < warps ? shared32[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < warps ? shared32[lane] : NEG_INF;
    return warp_max(v);
}

// llama.cpp's `roundf` for quantizing: half away from zero (enigma_kernels's `round_half_away`).
__device__ __forceinline__ int round_half_away(float v) { return (int)roundf(v); }
