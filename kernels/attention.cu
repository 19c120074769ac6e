// Paged causal attention over the KV pool, for prefill and decode rows alike.
//
// One block per (row, kv head): the block handles the G = heads / kv_heads query heads that share
// that KV head (GQA / MQA), so each K and V row is read once for the whole group. The row's keys
// start..=pos (start = pos + 1 - window with a sliding window) are visited in chunks of
// REAR_ATTN_THREADS: each thread scores one key against the G queries, the chunk's softmax is
// merged into a running (max, sum) per head (online softmax), and the threads then accumulate
// p * V over the chunk, each owning (head, element) entries of the output. Only slots of
// positions <= pos are ever read, so NaN in unused cache slots cannot leak.
#include "common.cuh"

#define ATT_T REAR_ATTN_THREADS
#define ATT_MAX_QE (REAR_MAX_GROUP * REAR_MAX_HEAD_DIM)
#define ATT_MAX_OWN (ATT_MAX_QE / ATT_T)

extern "C" __global__ void __launch_bounds__(ATT_T)
attention_f32(RearAttnParams p, const float* q, const float* pool, const u32* positions, const u32* row_seq,
              const u32* tables, float* out) {
    __shared__ __align__(16) float q_s[ATT_MAX_QE];
    __shared__ float p_s[REAR_MAX_GROUP * ATT_T];
    __shared__ u64 off_s[ATT_T];
    __shared__ float m_s[REAR_MAX_GROUP], l_s[REAR_MAX_GROUP], corr_s[REAR_MAX_GROUP];

    const u32 r = blockIdx.x, kh = blockIdx.y, tid = threadIdx.x;
    const u32 lane = tid & 31, warp = tid >> 5, nwarps = ATT_T / 32;
    const u32 d = p.head_dim, G = p.heads / p.kv_heads, GE = G * d;
    const u32 pos = positions[r], seq = row_seq[r];
    const u32 start = (p.window > 0 && pos + 1 > p.window) ? pos + 1 - p.window : 0;

    const float* qr = q + (u64)r * p.q_stride + (u64)kh * G * d;
    for (u32 e = tid; e < GE; e += ATT_T) q_s[e] = qr[e];
    if (tid < G) {
        m_s[tid] = -REAR_INF;
        l_s[tid] = 0.0f;
    }
    float acc[ATT_MAX_OWN];
#pragma unroll
    for (int i = 0; i < ATT_MAX_OWN; i++) acc[i] = 0.0f;
    __syncthreads();

    for (u32 c0 = start; c0 <= pos; c0 += ATT_T) {
        const u32 nc = min((u32)ATT_T, pos + 1 - c0);
        // Scores of this chunk's keys.
        if (tid < nc) {
            const u64 off = kv_row_offset(p.kv, tables, seq, c0 + tid) + (u64)kh * d;
            off_s[tid] = off;
            float s[REAR_MAX_GROUP];
#pragma unroll
            for (int g = 0; g < REAR_MAX_GROUP; g++) s[g] = 0.0f;
            const float* kp = pool + off;
            for (u32 i = 0; i < d; i += 4) {
                const float4 k4 = *reinterpret_cast<const float4*>(kp + i);
#pragma unroll
                for (int g = 0; g < REAR_MAX_GROUP; g++) {
                    if (g < (int)G) {
                        const float4 q4 = *reinterpret_cast<const float4*>(q_s + g * d + i);
                        s[g] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < REAR_MAX_GROUP; g++)
                if (g < (int)G) p_s[g * ATT_T + tid] = s[g] * p.scale;
        }
        __syncthreads();
        // Online softmax update, one warp per head.
        for (u32 g = warp; g < G; g += nwarps) {
            float mx = -REAR_INF;
            for (u32 t = lane; t < nc; t += 32) mx = fmaxf(mx, p_s[g * ATT_T + t]);
            mx = warp_max(mx);
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            for (u32 t = lane; t < nc; t += 32) {
                const float e = expf(p_s[g * ATT_T + t] - m_new);
                p_s[g * ATT_T + t] = e;
                sum += e;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float corr = m_old == -REAR_INF ? 0.0f : expf(m_old - m_new);
                l_s[g] = l_s[g] * corr + sum;
                m_s[g] = m_new;
                corr_s[g] = corr;
            }
        }
        __syncthreads();
        // acc = acc * corr + sum_t p_t * V_t.
#pragma unroll
        for (int j = 0; j < ATT_MAX_OWN; j++) {
            const u32 e = tid + j * ATT_T;
            if (e < GE) {
                const u32 g = e / d, i = e % d;
                float a = acc[j] * corr_s[g];
                const float* pg = p_s + g * ATT_T;
                const float* vp = pool + p.kv.plane_stride + i;
                for (u32 t = 0; t < nc; t++) a += pg[t] * vp[off_s[t]];
                acc[j] = a;
            }
        }
        __syncthreads();
    }
    float* o = out + (u64)r * p.out_stride + (u64)kh * G * d;
#pragma unroll
    for (int j = 0; j < ATT_MAX_OWN; j++) {
        const u32 e = tid + j * ATT_T;
        if (e < GE) o[e] = acc[j] / l_s[e / d];
    }
}
