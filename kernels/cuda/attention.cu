// The KV cache on the device and attention over it. The cache is the CPU's paged layout (enigma_core's
// `KvCache`): keys and values in two arrays of blocks of BLK positions, element
// `(((block * L + layer) * NKV + kv_head) * BLK + offset) * HS`; a single sequence is one block of S positions
// with table [0]. Each row b of a step has its position pos[b] and its sequence's block table tables[b] (TB ids).
// Elements are f32, or f16 at half the memory and bytes read (keys and values rounded, arithmetic in f32).

#define MAX_HS 256
#define EPL (MAX_HS / 32)
#define ATT_WARPS 4

__device__ __forceinline__ float kv_load(const float* c, size_t i) { return c[i]; }
__device__ __forceinline__ float kv_load(const half_bits* c, size_t i) { return h2f(c[i]); }
__device__ __forceinline__ void kv_put(float* c, size_t i, float v) { c[i] = v; }
__device__ __forceinline__ void kv_put(half_bits* c, size_t i, float v) { c[i] = f2h(v); }

__device__ __forceinline__ size_t kv_at(int blk, int layer, int L, int kh, int NKV, int off, int BLK, int HS) {
    return ((((size_t)blk * L + layer) * NKV + kh) * BLK + off) * HS;
}

// Reference: enigma_core's KvCache::store (f16: enigma_kernels::quantize_f16, round to nearest).
// k, v (B, NKV * HS) -> the cache at each row's position. Launch: grid (B), block 128.
template <typename T>
__device__ __forceinline__ void kv_store(T* kc, T* vc, const float* k, const float* v, const int* pos,
                                         const int* tables, int TB, int layer, int L, int NKV, int HS, int BLK) {
    int b = blockIdx.x, p = pos[b];
    int blk = tables[(size_t)b * TB + p / BLK];
    for (int i = threadIdx.x; i < NKV * HS; i += blockDim.x) {
        int kh = i / HS, e = i % HS;
        size_t at = kv_at(blk, layer, L, kh, NKV, p % BLK, BLK, HS) + e;
        kv_put(kc, at, k[(size_t)b * NKV * HS + i]);
        kv_put(vc, at, v[(size_t)b * NKV * HS + i]);
    }
}

// Reference: enigma_core's `KvView::attend` (attn_scores, softmax, attn_accum of enigma_kernels::generic).
// out (B, NH * HS) = softmax(q · Kᵀ · scale) · V over positions 0..=pos[b] of row b's sequence, query head h
// reading KV head h / (NH / NKV). One block per (head, row); its 4 warps take every 4th position and keep an
// online softmax (running max, sum and weighted values), merged at the end, so no score array is stored and the
// context is not limited by shared memory. Lane l holds dimensions l, l + 32, ... (HS <= 256).
// Launch: grid (NH, B), block 128.
template <typename T>
__device__ __forceinline__ void attention(float* __restrict__ out, const float* __restrict__ q, const T* kc,
                                          const T* vc, const int* pos, const int* tables, int TB, int layer,
                                          int L, int NH, int NKV, int HS, int BLK, float scale) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS * MAX_HS];
    int h = blockIdx.x, b = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int kh = h / (NH / NKV);
    int ctx = pos[b] + 1;
    const float* qh = q + ((size_t)b * NH + h) * HS;
    float qv[EPL], acc[EPL];
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        int d = lane + 32 * i;
        qv[i] = d < HS ? qh[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int p = warp; p < ctx; p += ATT_WARPS) {
        int blk = tables[(size_t)b * TB + p / BLK];
        size_t at = kv_at(blk, layer, L, kh, NKV, p % BLK, BLK, HS);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            int d = lane + 32 * i;
            if (d < HS) s += qv[i] * kv_load(kc, at + d);
        }
        s = warp_sum(s) * scale;
        float m_new = fmaxf(m, s);
        float corr = expf(m - m_new), e = expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * corr + (d < HS ? e * kv_load(vc, at + d) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        int d = lane + 32 * i;
        if (d < HS) sacc[warp * MAX_HS + d] = acc[i];
    }
    __syncthreads();
    float mm = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) mm = fmaxf(mm, sm[w]);
    float total = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) total += sm[w] == NEG_INF ? 0.0f : sl[w] * expf(sm[w] - mm);
    float* o = out + ((size_t)b * NH + h) * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm[w] != NEG_INF) v += sacc[w * MAX_HS + d] * expf(sm[w] - mm);
        o[d] = v / total;
    }
}

// Prefill, flash-style: the rows of one prompt chunk are consecutive positions of one sequence (the rows of
// `tables` are all that sequence's), so a block takes 16 of them for one head and streams the cached keys and
// values through shared memory 16 positions at a time, each tile read once for all 16 rows instead of once per
// row. Each warp owns 4 rows and keeps their online softmax in registers. Same reference as `attention`.
// Launch: grid (NH, ceil(T / 16)), block 128.
#define PF_ROWS 16
#define PF_TILE 16
#define PF_ROWS_PER_WARP (PF_ROWS / ATT_WARPS)

template <typename T>
__device__ __forceinline__ void attention_prefill(float* __restrict__ out, const float* __restrict__ q,
                                                  const T* kc, const T* vc, const int* pos, const int* tables,
                                                  int TB, int layer, int L, int NH, int NKV, int HS, int BLK,
                                                  float scale, int rows) {
    __shared__ float ks[PF_TILE * MAX_HS], vs[PF_TILE * MAX_HS];
    int h = blockIdx.x, r0 = blockIdx.y * PF_ROWS;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int kh = h / (NH / NKV);
    int last = min(r0 + PF_ROWS, rows) - 1;
    int max_pos = 0;
    for (int r = r0; r <= last; r++) max_pos = max(max_pos, pos[r]);
    float qv[PF_ROWS_PER_WARP][EPL], acc[PF_ROWS_PER_WARP][EPL], m[PF_ROWS_PER_WARP], l[PF_ROWS_PER_WARP];
    int my_pos[PF_ROWS_PER_WARP];
#pragma unroll
    for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
        int r = r0 + warp * PF_ROWS_PER_WARP + i;
        // A row past the chunk's end attends to nothing (-1) and writes nothing.
        my_pos[i] = r < rows ? pos[r] : -1;
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int k = 0; k < EPL; k++) {
            int d = lane + 32 * k;
            qv[i][k] = (r < rows && d < HS) ? q[((size_t)r * NH + h) * HS + d] : 0.0f;
            acc[i][k] = 0.0f;
        }
    }
    for (int p0 = 0; p0 <= max_pos; p0 += PF_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < PF_TILE * HS; idx += blockDim.x) {
            int p = p0 + idx / HS, e = idx % HS;
            float kv = 0.0f, vv = 0.0f;
            if (p <= max_pos) {
                int blk = tables[(size_t)r0 * TB + p / BLK];
                size_t at = kv_at(blk, layer, L, kh, NKV, p % BLK, BLK, HS) + e;
                kv = kv_load(kc, at);
                vv = kv_load(vc, at);
            }
            ks[idx] = kv;
            vs[idx] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
            for (int j = 0; j < PF_TILE && p0 + j <= my_pos[i]; j++) {
                float s = 0.0f;
#pragma unroll
                for (int k = 0; k < EPL; k++) {
                    int d = lane + 32 * k;
                    if (d < HS) s += qv[i][k] * ks[j * HS + d];
                }
                s = warp_sum(s) * scale;
                float m_new = fmaxf(m[i], s);
                float corr = expf(m[i] - m_new), e = expf(s - m_new);
                l[i] = l[i] * corr + e;
#pragma unroll
                for (int k = 0; k < EPL; k++) {
                    int d = lane + 32 * k;
                    acc[i][k] = acc[i][k] * corr + (d < HS ? e * vs[j * HS + d] : 0.0f);
                }
                m[i] = m_new;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < PF_ROWS_PER_WARP; i++) {
        int r = r0 + warp * PF_ROWS_PER_WARP + i;
        if (r >= rows) continue;
#pragma unroll
        for (int k = 0; k < EPL; k++) {
            int d = lane + 32 * k;
            if (d < HS) out[((size_t)r * NH + h) * HS + d] = acc[i][k] / l[i];
        }
    }
}

#define KV_KERNELS(SUFFIX, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        kv_store_##SUFFIX(T* kc, T* vc, const float* k, const float* v, const int* pos, const int* tables, \
                          int TB, int layer, int L, int NKV, int HS, int BLK) {                            \
        kv_store<T>(kc, vc, k, v, pos, tables, TB, layer, L, NKV, HS, BLK);                                \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        attention_##SUFFIX(float* out, const float* q, const T* kc, const T* vc, const int* pos,           \
                           const int* tables, int TB, int layer, int L, int NH, int NKV, int HS, int BLK,  \
                           float scale) {                                                                  \
        attention<T>(out, q, kc, vc, pos, tables, TB, layer, L, NH, NKV, HS, BLK, scale);                  \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        attention_prefill_##SUFFIX(float* out, const float* q, const T* kc, const T* vc, const int* pos,   \
                                   const int* tables, int TB, int layer, int L, int NH, int NKV, int HS,   \
                                   int BLK, float scale, int rows) {                                       \
        attention_prefill<T>(out, q, kc, vc, pos, tables, TB, layer, L, NH, NKV, HS, BLK, scale, rows);    \
    }
KV_KERNELS(f32, float)
KV_KERNELS(f16, half_bits)
