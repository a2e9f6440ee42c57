// subspec's CUDA kernels: every leaf operation of the forward pass, the f16/bf16/f32 and
// low-bit matrix products included (batch-invariant; cuBLAS is an option). Compiled
// ahead of time to PTX (compute_80) by
// scripts/build-kernels.py with a pinned NVRTC; the PTX is committed next to this file and
// embedded in the library, so a GPU host needs only the driver.
//
// Conventions (shared with src/backend/cuda):
// - activations are row-major f32 `[rows, cols]`, one row per token;
// - the KV cache of a sequence is one f32 allocation `[layers][2][capacity][kv_dim]`
//   (index 0 keys with rotary applied, 1 values);
// - launch shapes are stated above each kernel; every kernel checks its bounds.
//
// No fast-math: expf, sinf and cosf are the accurate versions, as on the CPU backend.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define FULL_MASK 0xffffffffu
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `part` may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = (lane < warps) ? part[lane] : 0.0f;
    v = warp_sum(v);
    return v;
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// ---------------------------------------------------------------------------------------
// Element-wise and row-wise operations.

// out = rmsnorm(x) * w, row by row. Grid: rows; block: 256.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ out, int cols, float eps) {
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

// y = (half) x. Grid-stride over n.
extern "C" __global__ void f32_to_f16(const float* __restrict__ x, __half* __restrict__ y,
                                      long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}

// y = (bfloat16) x. Grid-stride over n.
extern "C" __global__ void f32_to_bf16(const float* __restrict__ x,
                                       __nv_bfloat16* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

template <typename T>
__device__ void embed_rows(const T* __restrict__ table, const unsigned* __restrict__ ids,
                           float* __restrict__ out, int hidden) {
    const T* src = table + (size_t)ids[blockIdx.x] * hidden;
    float* dst = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(src[i]);
}

// out[i] = table[ids[i]] (ids validated on the host). Grid: tokens; block: 256.
extern "C" __global__ void embed_f32(const float* t, const unsigned* ids, float* out, int hidden) {
    embed_rows(t, ids, out, hidden);
}
extern "C" __global__ void embed_f16(const __half* t, const unsigned* ids, float* out, int hidden) {
    embed_rows(t, ids, out, hidden);
}
extern "C" __global__ void embed_bf16(const __nv_bfloat16* t, const unsigned* ids, float* out,
                                      int hidden) {
    embed_rows(t, ids, out, hidden);
}

// x[r, c] += b[c]. Grid-stride over rows * cols.
extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b, int rows,
                                    int cols) {
    const long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += b[i % cols];
}

// Rotary embedding in place, rotate-half layout, heads of width 2 * half, row r at
// position pos[r]. Grid: rows; block: 128.
extern "C" __global__ void rope(float* __restrict__ x, const unsigned* __restrict__ pos,
                                const float* __restrict__ inv_freq, int cols, int half) {
    float* row = x + (size_t)blockIdx.x * cols;
    const float p = (float)pos[blockIdx.x];
    const int pairs = cols / 2;
    for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        const int head = idx / half, j = idx % half;
        float* h = row + head * 2 * half;
        const float a = p * inv_freq[j];
        const float c = cosf(a), s = sinf(a);
        const float x1 = h[j], x2 = h[j + half];
        h[j] = x1 * c - x2 * s;
        h[j + half] = x2 * c + x1 * s;
    }
}

// g = silu(g) * u. Grid-stride over n.
extern "C" __global__ void silu_mul(float* __restrict__ g, const float* __restrict__ u,
                                    long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

// g = gelu_tanh(g) * u, GeLU's tanh approximation in PyTorch's order. Grid-stride over n.
extern "C" __global__ void gelu_tanh_mul(float* __restrict__ g, const float* __restrict__ u,
                                         long long n) {
    const float beta = 0.7978845608028654f;  // sqrt(2 / pi)
    const float kappa = 0.044715f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = g[i];
        const float inner = beta * (v + kappa * (v * v * v));
        g[i] = 0.5f * v * (1.0f + tanhf(inner)) * u[i];
    }
}

// x *= s. Grid-stride over n.
extern "C" __global__ void scale_inplace(float* __restrict__ x, float s, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] *= s;
}

// x += y. Grid-stride over n.
extern "C" __global__ void add_inplace(float* __restrict__ x, const float* __restrict__ y,
                                       long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

// out[i] = x[rows[i]]. Grid: output rows; block: 256.
extern "C" __global__ void gather_rows(const float* __restrict__ x,
                                       const unsigned* __restrict__ rows,
                                       float* __restrict__ out, int cols) {
    const float* src = x + (size_t)rows[blockIdx.x] * cols;
    float* dst = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------
// KV cache compaction, in two race-free steps through a temporary: gather the kept slots
// of every layer, then write them back at dst_first. Grid: (len, layers * 2); block: 128.

extern "C" __global__ void kv_gather(const float* __restrict__ kv, float* __restrict__ tmp,
                                     const unsigned* __restrict__ src, int len, int capacity,
                                     int kv_dim) {
    const size_t plane = blockIdx.y;  // layer * 2 + (0: K, 1: V)
    const float* s = kv + (plane * capacity + src[blockIdx.x]) * (size_t)kv_dim;
    float* d = tmp + (plane * len + blockIdx.x) * (size_t)kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) d[c] = s[c];
}

extern "C" __global__ void kv_scatter(float* __restrict__ kv, const float* __restrict__ tmp,
                                      int dst_first, int len, int capacity, int kv_dim) {
    const size_t plane = blockIdx.y;
    const float* s = tmp + (plane * len + blockIdx.x) * (size_t)kv_dim;
    float* d = kv + (plane * capacity + dst_first + blockIdx.x) * (size_t)kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) d[c] = s[c];
}

// ---------------------------------------------------------------------------------------
// Tree attention over the KV cache.
//
// Query row i, head h attends to cache slots starts[i]..committed (starts[i] > 0 under a
// sliding window) and to the scratch slots committed + slots[offs[i] .. offs[i + 1]] (its
// ancestors and itself). Each warp runs an
// online softmax over a strided share of the slots; the warps' partial results are merged
// through shared memory. head_dim is a multiple of 32, at most 256.
// Grid: (rows, n_heads); block: ATT_WARPS * 32.

#define ATT_WARPS 8
#define ATT_MAX_PER_LANE 8

extern "C" __global__ void attention(const float* __restrict__ q, const float* __restrict__ kv,
                                     const unsigned* __restrict__ offs,
                                     const unsigned* __restrict__ slots,
                                     const unsigned* __restrict__ starts,
                                     float* __restrict__ out, int layer, int capacity,
                                     int committed, int n_heads, int n_kv_heads, int head_dim,
                                     float scale) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][ATT_MAX_PER_LANE * 32];
    const int i = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int per = head_dim / 32;
    const int kvh = h / (n_heads / n_kv_heads);
    const int kv_dim = n_kv_heads * head_dim;
    const float* K = kv + (size_t)(layer * 2) * capacity * kv_dim + kvh * head_dim;
    const float* V = K + (size_t)capacity * kv_dim;
    const float* qr = q + (size_t)i * n_heads * head_dim + h * head_dim;
    float qv[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int e = 0; e < ATT_MAX_PER_LANE; e++) {
        qv[e] = (e < per) ? qr[lane + 32 * e] : 0.0f;
        acc[e] = 0.0f;
    }
    const unsigned first = offs[i], own = offs[i + 1] - first;
    const int start = (int)starts[i], past = committed - start;
    const int total = past + (int)own;
    float m = NEG_INF, l = 0.0f;
    for (int t = warp; t < total; t += ATT_WARPS) {
        const size_t slot = t < past ? (size_t)(start + t) : (size_t)committed + slots[first + t - past];
        const float* kr = K + slot * kv_dim;
        const float* vr = V + slot * kv_dim;
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_MAX_PER_LANE; e++)
            if (e < per) d += qv[e] * kr[lane + 32 * e];
        const float s = warp_sum(d) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // 0 on the first slot (m = -inf)
        const float p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < ATT_MAX_PER_LANE; e++)
            if (e < per) acc[e] = acc[e] * corr + p * vr[lane + 32 * e];
        m = mn;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < ATT_MAX_PER_LANE; e++)
        if (e < per) s_acc[warp][lane + 32 * e] = acc[e];
    __syncthreads();
    float M = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, s_m[w]);
    float L = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_m[w] != NEG_INF) L += s_l[w] * expf(s_m[w] - M);
    float* o = out + (size_t)i * n_heads * head_dim + h * head_dim;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (s_m[w] != NEG_INF) v += s_acc[w][c] * expf(s_m[w] - M);
        o[c] = v / L;
    }
}

// ---------------------------------------------------------------------------------------
// Fused dequantize-and-multiply for the draft's substitutes (layout: src/quant/format.rs):
// out[t, r] = sum_c x[t, c] * fma(code[r, c], scale[r, g], min[r, g]), g = c / group.
//
// One warp computes MM_ROWS rows for a tile of up to QL_TILE tokens. It walks the columns
// 128 at a time; lane l takes columns 4l .. 4l + 3 of each 128, so the warp's loads of x
// (one float4 per lane and token) and of the codes are contiguous, and each x load serves
// MM_ROWS rows. Each lane keeps one running sum per (row, token), adding its columns in
// order with fmaf; the warp then sums its lanes (warp_sum). Every output is reduced in one
// fixed order that depends only on `cols`, never on how many tokens share the batch or
// which rows share the warp: a token's draft logits are the same alone or in a batch.
// cols must be a multiple of 32. (Requesting four column steps' codes before using any
// was measured slower on an H200: 106 against 62 us per call; docs/GPU-NOTES.md.)
// Grid: (ceil(rows / (MM_WARPS * MM_ROWS)), ceil(tokens / QL_TILE)); block: MM_WARPS * 32.

#define MM_WARPS 4
#define MM_ROWS 4
#define QL_TILE 8
template <int TILE, typename Load>
__device__ __forceinline__ void mm_impl(const Load& load, const float* __restrict__ x,
                                        float* __restrict__ out, int rows, int cols,
                                        int tokens) {
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * MM_WARPS + (threadIdx.x >> 5)) * MM_ROWS;
    if (r0 >= rows) return;
    const int t0 = blockIdx.y * TILE;
    const int tn = min(TILE, tokens - t0);
    float acc[MM_ROWS][TILE];
#pragma unroll
    for (int r = 0; r < MM_ROWS; r++)
#pragma unroll
        for (int t = 0; t < TILE; t++) acc[r][t] = 0.0f;
    const float* xt = x + (size_t)t0 * cols;
    for (int c = 4 * lane; c < cols; c += 128) {
        float w[MM_ROWS][4];
#pragma unroll
        for (int r = 0; r < MM_ROWS; r++)  // rows past the end repeat the last: never written
            load(min(r0 + r, rows - 1), c, w[r]);
#pragma unroll
        for (int t = 0; t < TILE; t++) {
            if (t < tn) {
                const float4 xv = *reinterpret_cast<const float4*>(xt + (size_t)t * cols + c);
#pragma unroll
                for (int r = 0; r < MM_ROWS; r++) {
                    float a = acc[r][t];
                    a = fmaf(w[r][0], xv.x, a);
                    a = fmaf(w[r][1], xv.y, a);
                    a = fmaf(w[r][2], xv.z, a);
                    a = fmaf(w[r][3], xv.w, a);
                    acc[r][t] = a;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < MM_ROWS; r++) {
#pragma unroll
        for (int t = 0; t < TILE; t++) {
            if (t < tn) {
                const float v = warp_sum(acc[r][t]);
                if (lane == 0 && r0 + r < rows) out[(size_t)(t0 + t) * rows + r0 + r] = v;
            }
        }
    }
}

// Codes of columns 4m .. 4m + 3 of one 32-code block `p` (4 * BITS bytes). 4 bits: byte j
// holds code j (low nibble) and j + 16 (high); 2 bits: byte j holds codes j, j + 8, j + 16,
// j + 24 (two bits each, low first); 3 bits: the 2-bit block, then a 32-bit plane of the
// third bits (bit j for code j); 8 bits: byte j is code j.
template <int BITS>
__device__ __forceinline__ void decode4(const unsigned char* __restrict__ p, int m,
                                        unsigned (&c)[4]) {
    if (BITS == 4) {
        const unsigned w = reinterpret_cast<const unsigned*>(p)[m & 3];
        const int sh = (m >> 2) * 4;
#pragma unroll
        for (int k = 0; k < 4; k++) c[k] = (w >> (8 * k + sh)) & 0xfu;
    } else if (BITS == 8) {
        const unsigned w = reinterpret_cast<const unsigned*>(p)[m];
#pragma unroll
        for (int k = 0; k < 4; k++) c[k] = (w >> (8 * k)) & 0xffu;
    } else {  // 2 bits, and the low two bits of 3 (a 3-bit block is only 4-byte aligned)
        const unsigned w = reinterpret_cast<const unsigned*>(p)[m & 1];
        const int sh = (m >> 1) * 2;
#pragma unroll
        for (int k = 0; k < 4; k++) c[k] = (w >> (8 * k + sh)) & 3u;
        if (BITS == 3) {
            const unsigned hi = reinterpret_cast<const unsigned*>(p)[2];
#pragma unroll
            for (int k = 0; k < 4; k++) c[k] |= ((hi >> (4 * m + k)) & 1u) << 2;
        }
    }
}

// The four weights of row r at columns c .. c + 3, decoded.
template <int BITS>
struct QuantLoad {
    const unsigned char* __restrict__ codes;
    const __half* __restrict__ params;
    size_t row_bytes;
    int groups, group;
    __device__ __forceinline__ void operator()(int r, int c, float (&w)[4]) const {
        unsigned q[4];
        decode4<BITS>(codes + (size_t)r * row_bytes + (size_t)(c >> 5) * 4 * BITS, (c >> 2) & 7, q);
        const __half2 sm =
            reinterpret_cast<const __half2*>(params)[(size_t)r * groups + c / group];
        const float scale = __low2float(sm), mn = __high2float(sm);
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = fmaf((float)q[k], scale, mn);
    }
};

template <int BITS>
__device__ __forceinline__ void qlinear_impl(const unsigned char* codes, const __half* params,
                                             const float* x, float* out, int rows, int cols,
                                             int group, int tokens) {
    const QuantLoad<BITS> load{codes, params, (size_t)cols * BITS / 8, cols / group, group};
    mm_impl<QL_TILE>(load, x, out, rows, cols, tokens);
}

extern "C" __global__ void qlinear_b2(const unsigned char* codes, const __half* params,
                                      const float* x, float* out, int rows, int cols, int group,
                                      int tokens) {
    qlinear_impl<2>(codes, params, x, out, rows, cols, group, tokens);
}
extern "C" __global__ void qlinear_b3(const unsigned char* codes, const __half* params,
                                      const float* x, float* out, int rows, int cols, int group,
                                      int tokens) {
    qlinear_impl<3>(codes, params, x, out, rows, cols, group, tokens);
}
extern "C" __global__ void qlinear_b4(const unsigned char* codes, const __half* params,
                                      const float* x, float* out, int rows, int cols, int group,
                                      int tokens) {
    qlinear_impl<4>(codes, params, x, out, rows, cols, group, tokens);
}
extern "C" __global__ void qlinear_b8(const unsigned char* codes, const __half* params,
                                      const float* x, float* out, int rows, int cols, int group,
                                      int tokens) {
    qlinear_impl<8>(codes, params, x, out, rows, cols, group, tokens);
}

// ---------------------------------------------------------------------------------------
// Batch-invariant dense products for f32/f16/bf16 weights: out[t, r] = sum_c x[t, c] w[r, c].
//
// One warp per output row, lane l takes the 8-column chunks
// l, l + 32, ..., and the warp sums its lanes at the end. Every output element is reduced
// in one fixed order that depends only on `cols`, never on how many tokens share the batch,
// so a token's result is bit-identical alone, in a chain or in a tree (what makes
// speculative output equal plain output exactly). cols must be a multiple of 8.
// Grid: (ceil(rows / QL_WARPS), ceil(tokens / DN_TILE)); block: QL_WARPS * 32.

#define QL_WARPS 8
#define DN_TILE 16

__device__ __forceinline__ void load8(const float* p, float (&w)[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}

__device__ __forceinline__ void load8(const __half* p, float (&w)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[2 * i] = __half2float(__ushort_as_half((unsigned short)(u[i] & 0xffffu)));
        w[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(u[i] >> 16)));
    }
}

__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&w)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[2 * i] = __uint_as_float(u[i] << 16);
        w[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

template <typename T>
__device__ void dense_impl(const T* __restrict__ w, const float* __restrict__ x,
                           float* __restrict__ out, int rows, int cols, int tokens) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * QL_WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int t0 = blockIdx.y * DN_TILE;
    const int tn = min(DN_TILE, tokens - t0);
    const T* wr = w + (size_t)r * cols;
    float acc[DN_TILE];
#pragma unroll
    for (int t = 0; t < DN_TILE; t++) acc[t] = 0.0f;
    const int chunks = cols / 8;
    for (int c = lane; c < chunks; c += 32) {
        float wv[8];
        load8(wr + (size_t)c * 8, wv);
#pragma unroll
        for (int t = 0; t < DN_TILE; t++) {
            if (t < tn) {
                float xv[8];
                load8(x + (size_t)(t0 + t) * cols + (size_t)c * 8, xv);
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; j++) s = fmaf(wv[j], xv[j], s);
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < DN_TILE; t++) {
        if (t < tn) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) out[(size_t)(t0 + t) * rows + r] = s;
        }
    }
}

extern "C" __global__ void dense_f32(const float* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_impl(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void dense_f16(const __half* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_impl(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void dense_bf16(const __nv_bfloat16* w, const float* x, float* out,
                                      int rows, int cols, int tokens) {
    dense_impl(w, x, out, rows, cols, tokens);
}

// ---------------------------------------------------------------------------------------
// GGUF's block-quantized weights (ggml layouts): rows of whole blocks, each row
// `cols / BS * BB` bytes. load8q gives the 8 weights of chunk c (elements 8c .. 8c + 8, all
// in one block) exactly as gguf-py's dequantizer does (every product below is exact in
// f32, so fmaf's single rounding of the last step equals numpy's), and the products and
// embeddings reuse dense_impl's order.

__device__ __forceinline__ float half_at(const unsigned char* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

__device__ __forceinline__ unsigned u32_at(const unsigned char* p) {
    return (unsigned)p[0] | ((unsigned)p[1] << 8) | ((unsigned)p[2] << 16) | ((unsigned)p[3] << 24);
}

// The 6-bit scale and minimum of sub-block j of a Q4_K/Q5_K block (scales at s).
__device__ __forceinline__ void k4_scale_min(const unsigned char* s, int j, int& sc, int& mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

#define GGML_Q4_0 2
#define GGML_Q4_1 3
#define GGML_Q5_0 6
#define GGML_Q5_1 7
#define GGML_Q8_0 8
#define GGML_Q4_K 12
#define GGML_Q5_K 13
#define GGML_Q6_K 14

template <int T> struct GgmlBlock;
template <> struct GgmlBlock<GGML_Q4_0> { enum { BS = 32, BB = 18 }; };
template <> struct GgmlBlock<GGML_Q4_1> { enum { BS = 32, BB = 20 }; };
template <> struct GgmlBlock<GGML_Q5_0> { enum { BS = 32, BB = 22 }; };
template <> struct GgmlBlock<GGML_Q5_1> { enum { BS = 32, BB = 24 }; };
template <> struct GgmlBlock<GGML_Q8_0> { enum { BS = 32, BB = 34 }; };
template <> struct GgmlBlock<GGML_Q4_K> { enum { BS = 256, BB = 144 }; };
template <> struct GgmlBlock<GGML_Q5_K> { enum { BS = 256, BB = 176 }; };
template <> struct GgmlBlock<GGML_Q6_K> { enum { BS = 256, BB = 210 }; };

template <int T>
__device__ __forceinline__ void load8q(const unsigned char* __restrict__ row, int c, float (&w)[8]) {
    const int bs = GgmlBlock<T>::BS, bb = GgmlBlock<T>::BB;
    const int e0 = 8 * c;
    const unsigned char* p = row + (size_t)(e0 / bs) * bb;
    const int k = e0 % bs;  // first element inside the block
    if (T == GGML_Q8_0) {
        const float d = half_at(p);
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = (float)(signed char)p[2 + k + j] * d;
    } else if (T == GGML_Q4_0 || T == GGML_Q4_1) {
        const float d = half_at(p);
        const unsigned char* qs = p + (T == GGML_Q4_0 ? 2 : 4);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int e = k + j;
            const int q = e < 16 ? (qs[e] & 15) : (qs[e - 16] >> 4);
            if (T == GGML_Q4_0) w[j] = d * (float)(q - 8);
            else w[j] = fmaf(d, (float)q, half_at(p + 2));
        }
    } else if (T == GGML_Q5_0 || T == GGML_Q5_1) {
        const float d = half_at(p);
        const unsigned qh = u32_at(p + (T == GGML_Q5_0 ? 2 : 4));
        const unsigned char* qs = p + (T == GGML_Q5_0 ? 6 : 8);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int e = k + j;
            const int lo = e < 16 ? (qs[e] & 15) : (qs[e - 16] >> 4);
            const int q = lo | (((qh >> e) & 1) << 4);
            if (T == GGML_Q5_0) w[j] = d * (float)(q - 16);
            else w[j] = fmaf(d, (float)q, half_at(p + 2));
        }
    } else if (T == GGML_Q4_K || T == GGML_Q5_K) {
        const float d = half_at(p), dmin = half_at(p + 2);
        const int sub = k / 32, l0 = k % 32;
        int sc, mn;
        k4_scale_min(p + 4, sub, sc, mn);
        const float dj = d * (float)sc, mj = dmin * (float)mn;
        const unsigned char* qs = p + (T == GGML_Q4_K ? 16 : 48) + 32 * (sub / 2);
        const int shift = 4 * (sub % 2);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int q = (qs[l0 + j] >> shift) & 15;
            if (T == GGML_Q5_K) q |= ((p[16 + l0 + j] >> sub) & 1) << 4;
            w[j] = fmaf(dj, (float)q, -mj);
        }
    } else {  // GGML_Q6_K
        const float d = half_at(p + 208);
        const unsigned char* ql = p;
        const unsigned char* qh = p + 128;
        const float dk = d * (float)(signed char)p[192 + k / 16];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int e = k + j, h = e / 128, r = e % 128;
            const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
            const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            w[j] = dk * (float)((lo | (hi << 4)) - 32);
        }
    }
}

template <int T>
__device__ void dense_q_impl(const unsigned char* __restrict__ w, const float* __restrict__ x,
                             float* __restrict__ out, int rows, int cols, int tokens) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * QL_WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int t0 = blockIdx.y * DN_TILE;
    const int tn = min(DN_TILE, tokens - t0);
    const unsigned char* wr = w + (size_t)r * (cols / GgmlBlock<T>::BS) * GgmlBlock<T>::BB;
    float acc[DN_TILE];
#pragma unroll
    for (int t = 0; t < DN_TILE; t++) acc[t] = 0.0f;
    const int chunks = cols / 8;
    for (int c = lane; c < chunks; c += 32) {
        float wv[8];
        load8q<T>(wr, c, wv);
#pragma unroll
        for (int t = 0; t < DN_TILE; t++) {
            if (t < tn) {
                float xv[8];
                load8(x + (size_t)(t0 + t) * cols + (size_t)c * 8, xv);
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; j++) s = fmaf(wv[j], xv[j], s);
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < DN_TILE; t++) {
        if (t < tn) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) out[(size_t)(t0 + t) * rows + r] = s;
        }
    }
}

template <int T>
__device__ void embed_q_rows(const unsigned char* __restrict__ table, const unsigned* __restrict__ ids,
                             float* __restrict__ out, int hidden) {
    const unsigned char* src = table + (size_t)ids[blockIdx.x] * (hidden / GgmlBlock<T>::BS) * GgmlBlock<T>::BB;
    float* dst = out + (size_t)blockIdx.x * hidden;
    for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
        float wv[8];
        load8q<T>(src, c, wv);
#pragma unroll
        for (int j = 0; j < 8; j++) dst[8 * c + j] = wv[j];
    }
}

// The products and embeddings of the GGUF block types, written out one by one (so that
// scripts/build-kernels.py sees every signature). Grids and blocks as dense_f32 and
// embed_f32.
extern "C" __global__ void dense_q4_0(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q4_0>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q4_0(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q4_0>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q4_1(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q4_1>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q4_1(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q4_1>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q5_0(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q5_0>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q5_0(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q5_0>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q5_1(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q5_1>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q5_1(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q5_1>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q8_0(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q8_0>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q8_0(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q8_0>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q4_k(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q4_K>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q4_k(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q4_K>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q5_k(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q5_K>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q5_k(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q5_K>(t, ids, out, hidden);
}
extern "C" __global__ void dense_q6_k(const unsigned char* w, const float* x, float* out, int rows,
                                     int cols, int tokens) {
    dense_q_impl<GGML_Q6_K>(w, x, out, rows, cols, tokens);
}
extern "C" __global__ void embed_q6_k(const unsigned char* t, const unsigned* ids, float* out,
                                     int hidden) {
    embed_q_rows<GGML_Q6_K>(t, ids, out, hidden);
}
