// Prefill: `out (T, N) = x (T, D) · w (N, D)ᵀ` on tensor cores (`mma.sync.m16n8k16`, f32 accumulators) for chunks
// of many tokens, where the weights are reused across tokens and the product is compute-bound.
// Reference: enigma_kernels::generic::matmul_f32 (each dtype's weights widened as `WeightView::row_to_f32` does).
//
// A block computes a 64 × 64 tile of `out` (64 tokens × 64 weight rows) stepping through D 32 at a time; its 4
// warps each own 32 × 32 (2 × 4 mma tiles). Each step stages x (converted to f16, or bf16 for bf16 weights) and
// the weights in shared memory: f16/bf16 weights are copied, q8_0/q4_0 blocks (32 wide, exactly one K step) are
// dequantized into f16 there, so the quantized paths reuse the same tensor-core loop. Tails in T, N and D are
// zero-filled. `accumulate` != 0 adds into `out`.
// Launch: grid (ceil(N / 64), ceil(T / 64)), block 128.

#define BM 64
#define BN 64
#define BK 32
// Row stride of the shared tiles in 16-bit elements: 32 + 8 keeps fragment loads 4-byte aligned and spreads
// the 8 rows a fragment reads over different banks.
#define LDS 40

enum { W_F16 = 0, W_BF16 = 1, W_Q8 = 2, W_Q4 = 3 };

__device__ __forceinline__ void mma_f16(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// w: f16/bf16 bits (N, D), or q8_0 bytes (N, D) / q4_0 nibbles (N, D / 2); wd: block scales (N, D / 32) for
// the quantized kinds (unused otherwise).
template <int KIND>
__device__ __forceinline__ void gemm_tile(float* __restrict__ out, const void* __restrict__ w,
                                          const half_bits* __restrict__ wd, const float* __restrict__ x, int T,
                                          int N, int D, int accumulate) {
    __shared__ __align__(16) half_bits xs[BM * LDS];
    __shared__ __align__(16) half_bits ws[BN * LDS];
    const bool bf = KIND == W_BF16;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, t4 = lane & 3;
    int m_block = blockIdx.y * BM, n_block = blockIdx.x * BN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < D; k0 += BK) {
        // x tile: 64 × 32 f32, 16 per thread, converted as it is stored.
        for (int i = tid; i < BM * BK; i += 128) {
            int r = i / BK, k = i % BK;
            int gr = m_block + r, gk = k0 + k;
            float v = (gr < T && gk < D) ? x[(size_t)gr * D + gk] : 0.0f;
            xs[r * LDS + k] = bf ? f2bf(v) : f2h(v);
        }
        // weight tile: 64 rows × 32.
        for (int i = tid; i < BN * BK; i += 128) {
            int r = i / BK, k = i % BK;
            int gr = n_block + r, gk = k0 + k;
            half_bits h = 0;
            if (gr < N && gk < D) {
                if (KIND == W_F16 || KIND == W_BF16) {
                    h = static_cast<const half_bits*>(w)[(size_t)gr * D + gk];
                } else if (KIND == W_Q8) {
                    signed char q = static_cast<const signed char*>(w)[(size_t)gr * D + gk];
                    h = f2h((float)q * h2f(wd[(size_t)gr * (D / QK) + gk / QK]));
                } else {
                    // k0 is a block boundary (BK == QK), so k is the element's index in its block.
                    unsigned char byte =
                        static_cast<const unsigned char*>(w)[(size_t)gr * (D / 2) + (k0 / 2) + (k & 15)];
                    int q = (k < 16 ? (byte & 15) : (byte >> 4)) - 8;
                    h = f2h((float)q * h2f(wd[(size_t)gr * (D / QK) + gk / QK]));
                }
            }
            ws[r * LDS + k] = h;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const half_bits* base = xs + (wm + i * 16 + g) * LDS + kk + 2 * t4;
                a[i][0] = *reinterpret_cast<const u32*>(base);
                a[i][1] = *reinterpret_cast<const u32*>(base + 8 * LDS);
                a[i][2] = *reinterpret_cast<const u32*>(base + 8);
                a[i][3] = *reinterpret_cast<const u32*>(base + 8 * LDS + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const half_bits* base = ws + (wn + j * 8 + g) * LDS + kk + 2 * t4;
                b[j][0] = *reinterpret_cast<const u32*>(base);
                b[j][1] = *reinterpret_cast<const u32*>(base + 8);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    if (bf)
                        mma_bf16(acc[i][j], a[i], b[j]);
                    else
                        mma_f16(acc[i][j], a[i], b[j]);
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = m_block + wm + i * 16 + g + (e >= 2 ? 8 : 0);
                int c = n_block + wn + j * 8 + 2 * t4 + (e & 1);
                if (r < T && c < N) {
                    float* o = out + (size_t)r * N + c;
                    *o = accumulate ? *o + acc[i][j][e] : acc[i][j][e];
                }
            }
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_f16(float* out, const half_bits* w, const float* x, int T, int N, int D, int accumulate) {
    gemm_tile<W_F16>(out, w, 0, x, T, N, D, accumulate);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16(float* out, const half_bits* w, const float* x, int T, int N, int D, int accumulate) {
    gemm_tile<W_BF16>(out, w, 0, x, T, N, D, accumulate);
}
extern "C" __global__ void __launch_bounds__(128) gemm_q8_0(float* out, const signed char* wq,
                                                            const half_bits* wd, const float* x, int T, int N,
                                                            int D, int accumulate) {
    gemm_tile<W_Q8>(out, wq, wd, x, T, N, D, accumulate);
}
extern "C" __global__ void __launch_bounds__(128) gemm_q4_0(float* out, const unsigned char* wq,
                                                            const half_bits* wd, const float* x, int T, int N,
                                                            int D, int accumulate) {
    gemm_tile<W_Q4>(out, wq, wd, x, T, N, D, accumulate);
}
