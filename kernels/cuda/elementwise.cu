// The small ops between the products: RMSNorm, RoPE, SwiGLU, residual add, embedding lookup. Each is one pass
// over its rows; the forward pass launches them for all B (decode) or T (prefill) rows at once.

// Reference: enigma_kernels::generic::rmsnorm. out (B, D) = weight (D) * x / sqrt(mean(x²) + eps).
// Launch: grid (B), block 256.
extern "C" __global__ void __launch_bounds__(256)
    rmsnorm(float* __restrict__ out, const float* __restrict__ x, const float* __restrict__ weight, int D,
            float eps) {
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * D;
    float* o = out + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = weight[i] * (inv * xr[i]);
}

// Reference: enigma_kernels::generic::rope_table + rope (llama2.c's adjacent pairs). Rotates the query heads
// q (B, NH, HS) and key heads k (B, NKV, HS) of row b by position pos[b]: θᵢ = pos · theta^(-2i / HS).
// Launch: grid (B), block 128.
extern "C" __global__ void __launch_bounds__(128)
    rope(float* __restrict__ q, float* __restrict__ k, const int* __restrict__ pos, int NH, int NKV, int HS,
         float theta) {
    int b = blockIdx.x;
    float p = (float)pos[b];
    int pairs = HS / 2;
    for (int u = threadIdx.x; u < (NH + NKV) * pairs; u += blockDim.x) {
        int head = u / pairs, i = u % pairs;
        float freq = 1.0f / powf(theta, (float)(2 * i) / (float)HS);
        float val = p * freq;
        float c = cosf(val), s = sinf(val);
        float* v = head < NH ? q + ((size_t)b * NH + head) * HS : k + ((size_t)b * NKV + head - NH) * HS;
        float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * c - v1 * s;
        v[2 * i + 1] = v0 * s + v1 * c;
    }
}

// Reference: enigma_kernels::generic::silu_mul. a (n) = silu(a) * b. Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void silu_mul(float* __restrict__ a, const float* __restrict__ b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = a[i];
        a[i] = v * (1.0f / (1.0f + expf(-v))) * b[i];
    }
}

// Reference: enigma_kernels::generic::add. acc (n) += x (n). Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void add(float* __restrict__ acc, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

// Reference: enigma_kernels::WeightView::row_to_f32. out (B, D) = table[tokens[b]] widened; the token ids were
// checked against the vocabulary on the host. Launch: grid (B), block 256.
extern "C" __global__ void embed_f32(float* out, const float* table, const int* tokens, int D) {
    const float* row = table + (size_t)tokens[blockIdx.x] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[(size_t)blockIdx.x * D + i] = row[i];
}
extern "C" __global__ void embed_f16(float* out, const half_bits* table, const int* tokens, int D) {
    const half_bits* row = table + (size_t)tokens[blockIdx.x] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[(size_t)blockIdx.x * D + i] = h2f(row[i]);
}
extern "C" __global__ void embed_bf16(float* out, const half_bits* table, const int* tokens, int D) {
    const half_bits* row = table + (size_t)tokens[blockIdx.x] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[(size_t)blockIdx.x * D + i] = bf2f(row[i]);
}
// qs (V, D) int8, d (V, D / 32) f16 bits.
extern "C" __global__ void embed_q8_0(float* out, const signed char* qs, const half_bits* d, const int* tokens,
                                      int D) {
    size_t t = (size_t)tokens[blockIdx.x];
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        out[(size_t)blockIdx.x * D + i] = (float)qs[t * D + i] * h2f(d[t * (D / QK) + i / QK]);
}
// qs (V, D / 2) nibbles in llama.cpp's order, d (V, D / 32).
extern "C" __global__ void embed_q4_0(float* out, const unsigned char* qs, const half_bits* d, const int* tokens,
                                      int D) {
    size_t t = (size_t)tokens[blockIdx.x];
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        int blk = i / QK, j = i % QK;
        unsigned char byte = qs[t * (D / 2) + blk * (QK / 2) + (j & 15)];
        int q = (j < 16 ? (byte & 15) : (byte >> 4)) - 8;
        out[(size_t)blockIdx.x * D + i] = (float)q * h2f(d[t * (D / QK) + blk]);
    }
}
