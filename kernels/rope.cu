// RoPE with optional per-head q/k RMSNorm (Qwen3), and the cache write of this step's K and V.
//
// qkv rows are [q (heads*d) | k (kv_heads*d) | v (kv_heads*d)]. One warp per head vector:
// vector v < heads is a q head (normalised, rotated in place), then kv_heads k heads
// (normalised, rotated, written to the K plane of the row's cache slot), then kv_heads v heads
// (copied to the V plane). Frequencies come from the host (ModelConfig::rope_inv_freq: default,
// linear, llama3, yarn and dynamic scaling); the angle is inv_freq[i] * position in f32 and its
// sine and cosine are taken in f64, rounded to f32 and multiplied by p.attn_scale (YaRN), as the
// CPU reference does. grid = (rows, ceil(vectors / warps)).
#include "common.cuh"

#define ROPE_MAX_PAIRS_PER_LANE (REAR_MAX_HEAD_DIM / 64)

extern "C" __global__ void rope_qk_cache_f32(RearRopeParams p, float* qkv, const float* inv_freq,
                                             const float* q_norm, const float* k_norm, const u32* positions,
                                             const u32* row_seq, const u32* tables, float* pool) {
    const u32 r = blockIdx.x;
    const u32 lane = threadIdx.x & 31;
    const u32 vi = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const u32 nvec = p.heads + 2 * p.kv_heads;
    if (r >= p.rows || vi >= nvec) return;
    const u32 d = p.head_dim, half = d / 2;
    float* row = qkv + (u64)r * p.qkv_stride;
    const u32 pos = positions[r];
    const u64 kv_off = kv_row_offset(p.kv, tables, row_seq[r], pos);

    if (vi >= p.heads + p.kv_heads) {
        // V head: copy to the V plane.
        const u32 h = vi - p.heads - p.kv_heads;
        const float* src = row + (u64)(p.heads + p.kv_heads) * d + (u64)h * d;
        float* dst = pool + kv_off + p.kv.plane_stride + (u64)h * d;
        for (u32 i = lane; i < d; i += 32) dst[i] = src[i];
        return;
    }
    const bool is_q = vi < p.heads;
    float* v = is_q ? row + (u64)vi * d : row + (u64)p.heads * d + (u64)(vi - p.heads) * d;

    // Each lane holds the pairs (i, i + half) for i = lane, lane + 32, ...
    float a[ROPE_MAX_PAIRS_PER_LANE], b[ROPE_MAX_PAIRS_PER_LANE];
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const u32 i = lane + 32 * j;
        a[j] = i < half ? v[i] : 0.0f;
        b[j] = i < half ? v[i + half] : 0.0f;
    }
    if (p.has_qk_norm) {
        const float* g = is_q ? q_norm : k_norm;
        double ss = 0.0;
#pragma unroll
        for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
            ss += (double)a[j] * (double)a[j];
            ss += (double)b[j] * (double)b[j];
        }
        ss = warp_sum_d(ss);
        const float rr = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(ss / (double)d), p.eps)));
#pragma unroll
        for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
            const u32 i = lane + 32 * j;
            if (i < half) {
                a[j] = __fmul_rn(g[i], __fmul_rn(a[j], rr));
                b[j] = __fmul_rn(g[i + half], __fmul_rn(b[j], rr));
            }
        }
    }
    float* dst = is_q ? v : pool + kv_off + (u64)(vi - p.heads) * d;
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const u32 i = lane + 32 * j;
        if (i < half) {
            const float ang = __fmul_rn(inv_freq[i], (float)pos);
            double s, c;
            sincos((double)ang, &s, &c);
            const float sf = __fmul_rn((float)s, p.attn_scale), cf = __fmul_rn((float)c, p.attn_scale);
            dst[i] = __fsub_rn(__fmul_rn(a[j], cf), __fmul_rn(b[j], sf));
            dst[i + half] = __fadd_rn(__fmul_rn(b[j], cf), __fmul_rn(a[j], sf));
        }
    }
}
