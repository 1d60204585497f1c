// Picking the next token on the device, so only its id (4 bytes) crosses to the host per sequence and step.
// One block of 1024 threads per row of logits (B, V). Out-of-range cases the CPU sampler handles (non-finite
// logits, top-k, repetition penalty) are left to it: the launcher copies the logits back for those.

#define SAMPLE_THREADS 1024

// Reference: enigma_core::sampler::argmax (the first maximum on ties). Launch: grid (B), block 1024.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    argmax(int* __restrict__ out, const float* __restrict__ logits, int V) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* row = logits + (size_t)blockIdx.x * V;
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (row[i] > best) {
            best = row[i];
            idx = i;
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) {
            best = ov;
            idx = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (sv[w] > best || (sv[w] == best && si[w] < idx)) {
                best = sv[w];
                idx = si[w];
            }
        // All-NaN rows never pass `>`: token 0, as the CPU's argmax gives.
        out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
    }
}

// Reference: enigma_core::sampler::Sampler::sample with temperature > 0, top-p in (0, 1] and no top-k: the
// same nucleus (the most probable tokens whose mass first exceeds top_p) and the same distribution inside it.
// The CPU walks the nucleus sorted by probability; here it is found by bisecting a probability threshold and
// walked in token order, so one coin can pick a different (equally likely) token than the CPU does.
// probs (B, V) is scratch; coins (B) in [0, 1) come from the host's seeded generator. Launch: grid (B), block 1024.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_top_p(int* __restrict__ out, const float* __restrict__ logits, float* __restrict__ probs, int V,
                 float temperature, float top_p, const float* __restrict__ coins) {
    __shared__ float red[32];
    __shared__ float chunk_mass[SAMPLE_THREADS];
    const float* row = logits + (size_t)blockIdx.x * V;
    float* pr = probs + (size_t)blockIdx.x * V;
    float mx = NEG_INF;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i] / temperature);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float e = expf(row[i] / temperature - mx);
        pr[i] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    for (int i = threadIdx.x; i < V; i += blockDim.x) pr[i] /= sum;
    __syncthreads();
    // The nucleus is {p >= tau} for the largest tau whose mass still reaches top_p.
    float lo = 0.0f, hi = 1.0f;
    bool nucleus = top_p > 0.0f && top_p < 1.0f;
    for (int it = 0; nucleus && it < 30; it++) {
        float mid = 0.5f * (lo + hi), mass = 0.0f;
        for (int i = threadIdx.x; i < V; i += blockDim.x) mass += pr[i] >= mid ? pr[i] : 0.0f;
        mass = block_sum(mass, red);
        if (mass >= top_p)
            lo = mid;
        else
            hi = mid;
    }
    float tau = nucleus ? lo : 0.0f;
    // Each thread owns a contiguous run of tokens; thread 0 finds the run the coin lands in, its owner walks it.
    int per = (V + blockDim.x - 1) / blockDim.x;
    int start = threadIdx.x * per, end = min(start + per, V);
    float mine = 0.0f;
    for (int i = start; i < end; i++) mine += pr[i] >= tau ? pr[i] : 0.0f;
    chunk_mass[threadIdx.x] = mine;
    __syncthreads();
    __shared__ int owner;
    __shared__ float before;
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int t = 0; t < (int)blockDim.x; t++) total += chunk_mass[t];
        float r = coins[blockIdx.x] * total, cdf = 0.0f;
        owner = -1;
        bool found = false;
        for (int t = 0; t < (int)blockDim.x; t++) {
            if (chunk_mass[t] > 0.0f) owner = t;
            if (r < cdf + chunk_mass[t]) {
                owner = t;
                found = true;
                break;
            }
            cdf += chunk_mass[t];
        }
        // Rounding can leave r past the last run: its owner then walks to its last kept token (r never falls
        // below the running sum), the CPU's fallback.
        before = found || owner < 0 ? cdf : cdf - chunk_mass[owner];
        if (owner < 0) out[blockIdx.x] = 0;
    }
    __syncthreads();
    if ((int)threadIdx.x == owner) {
        float r = coins[blockIdx.x], total = 0.0f;
        for (int t = 0; t < (int)blockDim.x; t++) total += chunk_mass[t];
        r *= total;
        float cdf = before;
        int last = start;
        for (int i = start; i < end; i++) {
            if (pr[i] < tau) continue;
            last = i;
            cdf += pr[i];
            if (r < cdf) break;
        }
        out[blockIdx.x] = last;
    }
}
