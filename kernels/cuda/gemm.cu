// Prefill: `out (T, N) = x (T, D) · w (N, D)ᵀ` on tensor cores (`mma.sync.m16n8k16`, f32 accumulators) for chunks
// of many tokens, where the weights are reused across tokens and the product is compute-bound.
// Reference: enigma_kernels::generic::matmul_f32 (each dtype's weights widened as `WeightView::row_to_f32` does).
//
// A block computes a 64 × 64 tile of `out` (64 tokens × 64 weight rows) stepping through D 32 at a time; its 4
// warps each own 32 × 32 (2 × 4 mma tiles). Each step stages x (converted to f16, or bf16 for bf16 weights) and
// the weights in shared memory. Tails in T, N and D are zero-filled. `accumulate` != 0 adds into `out`.
// Quantized weights take the int8 path further down.
// Launch: grid (ceil(N / 64), ceil(T / 64)), block 128.

#define BM 64
#define BN 64
#define BK 32
// Row stride of the shared tiles in 16-bit elements: 32 + 8 keeps fragment loads 4-byte aligned and spreads
// the 8 rows a fragment reads over different banks.
#define LDS 40

enum { W_F16 = 0, W_BF16 = 1 };

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

// w: f16/bf16 bits (N, D).
template <int KIND>
__device__ __forceinline__ void gemm_tile(float* __restrict__ out, const half_bits* __restrict__ w,
                                          const float* __restrict__ x, int T, int N, int D, int accumulate) {
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
            ws[r * LDS + k] = (gr < N && gk < D) ? w[(size_t)gr * D + gk] : (half_bits)0;
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
    gemm_tile<W_F16>(out, w, x, T, N, D, accumulate);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16(float* out, const half_bits* w, const float* x, int T, int N, int D, int accumulate) {
    gemm_tile<W_BF16>(out, w, x, T, N, D, accumulate);
}

// Quantized prefill on int8 tensor cores (`mma.sync.m16n8k32.s8`): x quantized to q8_0 blocks first
// (`quantize_q8`, as the decode path and the CPU's int8 GEMM do), so each K step of 32 is exactly one block
// of x and of w: its integer dot products come out of the tensor cores exact, and are scaled by
// `dw · dx` per block as enigma_kernels::generic::vec_dot_q8_0_q8_0 does. Reference: that function per
// (token, weight row). xq (T, D) int8, xd (T, D / 32) f32 (the f16-rounded scales); w as the matvecs take it: q8_0 bytes (N, D) or q4_0
// nibbles (N, D / 2), wd (N, D / 32) f16 scales.
// Launch: grid (ceil(N / 64), ceil(T / 64)), block 128.

// Row stride of the int8 tiles in bytes: 32 + 16 keeps 4-byte fragment loads aligned and off one bank.
#define LDQ 48

__device__ __forceinline__ void mma_s8(int* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <bool Q4>
__device__ __forceinline__ void gemm_int8_tile(float* __restrict__ out, const void* __restrict__ w,
                                               const half_bits* __restrict__ wd,
                                               const signed char* __restrict__ xq,
                                               const float* __restrict__ xd, int T, int N, int D,
                                               int accumulate) {
    __shared__ __align__(16) signed char xs[BM * LDQ];
    __shared__ __align__(16) signed char ws[BN * LDQ];
    __shared__ float xsc[BM], wsc[BN];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, t4 = lane & 3;
    int m_block = blockIdx.y * BM, n_block = blockIdx.x * BN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int nb = D / QK;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    for (int blk = 0; blk < nb; blk++) {
        // 64 rows × 32 bytes each of x and w, a 4-byte word per thread per pass.
        for (int i = tid; i < BM * 8; i += 128) {
            int r = i >> 3, c = (i & 7) * 4;
            int gr = m_block + r;
            u32 v = gr < T ? *reinterpret_cast<const u32*>(xq + (size_t)gr * D + blk * QK + c) : 0u;
            *reinterpret_cast<u32*>(xs + r * LDQ + c) = v;
        }
        for (int i = tid; i < BN * 8; i += 128) {
            int r = i >> 3, c = (i & 7) * 4;
            int gr = n_block + r;
            u32 v = 0u;
            if (gr < N) {
                if (!Q4) {
                    v = *reinterpret_cast<const u32*>(static_cast<const signed char*>(w) + (size_t)gr * D +
                                                      blk * QK + c);
                } else {
                    // Elements c..c+3 of the block: low nibbles of bytes c..c+3 for c < 16, else high
                    // nibbles of bytes c-16..c-13; each minus 8, as a signed byte.
                    u32 raw = *reinterpret_cast<const u32*>(static_cast<const unsigned char*>(w) +
                                                            (size_t)gr * (D / 2) + blk * (QK / 2) + (c & 15));
                    u32 nib = c < 16 ? (raw & 0x0f0f0f0fu) : ((raw >> 4) & 0x0f0f0f0fu);
                    // n - 8 per byte with no borrow between bytes: x = n ^ 8 is n - 8 for n >= 8 and n + 8
                    // for n < 8 (bit 3 set), where OR-ing 0xF0 into the byte makes it n - 8 as a signed byte.
                    u32 x = nib ^ 0x08080808u;
                    v = x | ((x & 0x08080808u) * 0x1Eu);
                }
            }
            *reinterpret_cast<u32*>(ws + r * LDQ + c) = v;
        }
        for (int i = tid; i < BM; i += 128) {
            int gr = m_block + i;
            xsc[i] = gr < T ? xd[(size_t)gr * nb + blk] : 0.0f;
        }
        for (int i = tid; i < BN; i += 128) {
            int gr = n_block + i;
            wsc[i] = gr < N ? h2f(wd[(size_t)gr * nb + blk]) : 0.0f;
        }
        __syncthreads();
        u32 a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const signed char* base = xs + (wm + i * 16 + g) * LDQ + 4 * t4;
            a[i][0] = *reinterpret_cast<const u32*>(base);
            a[i][1] = *reinterpret_cast<const u32*>(base + 8 * LDQ);
            a[i][2] = *reinterpret_cast<const u32*>(base + 16);
            a[i][3] = *reinterpret_cast<const u32*>(base + 8 * LDQ + 16);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const signed char* base = ws + (wn + j * 8 + g) * LDQ + 4 * t4;
            b[j][0] = *reinterpret_cast<const u32*>(base);
            b[j][1] = *reinterpret_cast<const u32*>(base + 16);
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int s[4] = {0, 0, 0, 0};
                mma_s8(s, a[i], b[j]);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int r = wm + i * 16 + g + (e >= 2 ? 8 : 0);
                    int c = wn + j * 8 + 2 * t4 + (e & 1);
                    acc[i][j][e] += (float)s[e] * (wsc[c] * xsc[r]);
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
    gemm_q8_0(float* out, const signed char* wq, const half_bits* wd, const signed char* xq, const float* xd,
                   int T, int N, int D, int accumulate) {
    gemm_int8_tile<false>(out, wq, wd, xq, xd, T, N, D, accumulate);
}
extern "C" __global__ void __launch_bounds__(128)
    gemm_q4_0(float* out, const unsigned char* wq, const half_bits* wd, const signed char* xq,
                   const float* xd, int T, int N, int D, int accumulate) {
    gemm_int8_tile<true>(out, wq, wd, xq, xd, T, N, D, accumulate);
}
