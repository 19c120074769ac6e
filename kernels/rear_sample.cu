// rear_sample: REAR scoring fused with the choice of the next tokens. One block per response row
// (hypothesis); its K context rows of logits are consecutive, at row group `group` (several
// response rows may read one group: the first draws of forked hypotheses).
//
//   lp_k(v) = (x_k(v) - max_k) - log(sum_v exp(x_k(v) - max_k))      (src/rear.rs log_softmax)
//   s(v)    = Mixture::token_score(lp_0(v) .. lp_{K-1}(v))          (same operation order, no FMA)
//
// then, by mode:
//   ARGMAX  the token maximising s (ties: lowest id), as rear::argmax;
//   TOPK    the top_k candidates of cum_score + s(v), best first (ties: lower id) — the per-beam
//           shortlist of guided beam search (the host merges the beams' shortlists);
//   SAMPLE  src/search/sampler.rs `sample` over s (or over lp_0 with sample_context0: best-of-N)
//           with temperature, top-k and top-p, driven by the same Philox4x32-10 uniform.
// The sampler's inverse-CDF walk in a fixed order is computed as a bisection over a 64-bit rank
// key (score bits, then lower token id first; or the token id when nothing is cut), with the
// probability masses summed in f64: the pick is the CPU's whenever the scores agree, except when
// the uniform lands within ~1e-16 (relative) of a boundary, where the summation orders differ.
#include "common.cuh"

#define ST REAR_SAMPLE_THREADS
#define MAXC REAR_MAX_CONTEXTS

// ---- Philox4x32-10, exactly as src/search/sampler.rs ----------------------------------------------

__device__ __forceinline__ void philox4x32_10(u32* c, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int i = 0; i < 10; i++) {
        const u32 hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        const u32 hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        const u32 n0 = hi1 ^ c[1] ^ k0, n1 = lo1, n2 = hi0 ^ c[3] ^ k1, n3 = lo0;
        c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
        k0 += W0;
        k1 += W1;
    }
}

__device__ __forceinline__ double philox_uniform(u64 seed, u64 stream, u64 step) {
    u32 c[4] = {(u32)step, (u32)(step >> 32), (u32)stream, (u32)(stream >> 32)};
    philox4x32_10(c, (u32)seed, (u32)(seed >> 32));
    const u64 bits = ((u64)c[0] << 21) ^ ((u64)c[1] >> 11);
    return (double)(bits & ((1ull << 53) - 1)) / (double)(1ull << 53);
}

// ---- scores --------------------------------------------------------------------------------------

struct Rows {
    const float* lg;  // K rows of `vocab` logits
    u32 vocab;
    u32 k;
    float mx[MAXC];
    float lse[MAXC];
};

__device__ __forceinline__ float mix_score(const RearSampleParams& p, const float* lps) {
    if (p.mixture == REAR_MIX_GUIDED) {
        const u32 n = p.contexts - 1;
        if (n == 1 && p.weights[0] == 1.0f) return lps[0];
        const float base = lps[n];
        float s = base;
        for (u32 i = 0; i < n; i++) s = __fadd_rn(__fmul_rn(p.weights[i], __fsub_rn(lps[i], base)), s);
        return s;
    }
    if (p.mixture == REAR_MIX_WEIGHTED) {
        float s = 0.0f;
        for (u32 i = 0; i < p.contexts; i++) s = __fadd_rn(s, __fmul_rn(p.weights[i], lps[i]));
        return s;
    }
    return lps[0];
}

// Log-probs of token v under every context, and its REAR score.
__device__ __forceinline__ float token_lps(const RearSampleParams& p, const Rows& R, u32 v, float* lps) {
    for (u32 k = 0; k < R.k; k++)
        lps[k] = __fsub_rn(__fsub_rn(R.lg[(u64)k * R.vocab + v], R.mx[k]), R.lse[k]);
    return mix_score(p, lps);
}

// The value the mode ranks or samples: the REAR score, or lp_0 for best-of-N sampling.
__device__ __forceinline__ float source_value(const RearSampleParams& p, const Rows& R, u32 v) {
    float lps[MAXC];
    const float s = token_lps(p, R, v, lps);
    return p.sample_context0 ? lps[0] : s;
}

// (value, id) ordering: higher value first, then lower id; NaN ranks last.
__device__ __forceinline__ bool better(float a, u32 ia, float b, u32 ib) {
    const bool na = a != a, nb = b != b;
    if (na || nb) return !na && nb ? true : (na && nb ? ia < ib : false);
    return a > b || (a == b && ia < ib);
}

__device__ __forceinline__ void warp_best(float& v, u32& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, v, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, i, o);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// Block-wide best (value, id); every thread gets the result.
__device__ __forceinline__ void block_best(float& v, u32& i, float* shv, u32* shi) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    warp_best(v, i);
    if (lane == 0) {
        shv[warp] = v;
        shi[warp] = i;
    }
    __syncthreads();
    v = shv[0];
    i = shi[0];
    for (int w = 1; w < nw; w++)
        if (better(shv[w], shi[w], v, i)) {
            v = shv[w];
            i = shi[w];
        }
    __syncthreads();
}

__device__ __forceinline__ void write_candidate(const RearSampleParams& p, const Rows& R, const RearSampleRow& in,
                                                u32 row, u32 v, RearCandidate* out) {
    float lps[MAXC];
    const float s = token_lps(p, R, v, lps);
    out->token = v;
    out->row = row;
    out->score = s;
    out->total = __fadd_rn(in.cum_score, s);
    for (u32 k = 0; k < MAXC; k++) out->logprobs[k] = k < R.k ? lps[k] : 0.0f;
}

// ---- sampling helpers ------------------------------------------------------------------------------

// Monotone map of floats to u32 (the order of f32::total_cmp for non-NaN values).
__device__ __forceinline__ u32 ord_f32(float f) {
    const u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Keys {
    bool by_score;
    u32 idbits;
    u32 vocab;
    __device__ __forceinline__ u64 key(float src, u32 v) const {
        const u64 id = (u64)(vocab - 1 - v);
        return by_score ? (((u64)ord_f32(src) << idbits) | id) : id;
    }
    __device__ __forceinline__ u64 max_key() const {
        return by_score ? ((0xffffffffull << idbits) | ((1ull << idbits) - 1)) : (u64)(vocab - 1);
    }
};

// Sum of p over tokens with key >= lo (strict: key > lo).
__device__ __forceinline__ double mass_from(const Keys& K, const float* src, const double* pr, u32 V, u64 lo,
                                            bool strict, double* shd) {
    double m = 0.0;
    for (u32 v = threadIdx.x; v < V; v += ST) {
        const u64 k = K.key(src[v], v);
        if (strict ? k > lo : k >= lo) m += pr[v];
    }
    return block_sum_d(m, shd);
}

__device__ __forceinline__ u32 count_from(const Keys& K, const float* src, u32 V, u64 lo, u32* shu) {
    u32 c = 0;
    for (u32 v = threadIdx.x; v < V; v += ST) c += K.key(src[v], v) >= lo;
    return block_sum_u(c, shu);
}

// ---- the kernel ----------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(ST)
rear_sample_f32(RearSampleParams p, const float* logits, const RearSampleRow* rows, RearCandidate* out,
                float* ws_src, double* ws_p) {
    __shared__ float shf[32];
    __shared__ u32 shu[32];
    __shared__ double shd[32];
    __shared__ u32 top_i[REAR_MAX_TOPK];
    __shared__ double s_u;

    const u32 row = blockIdx.x, tid = threadIdx.x;
    if (row >= p.rows) return;
    const u32 V = p.vocab;
    const RearSampleRow in = rows[row];
    Rows R;
    R.lg = logits + (u64)in.group * p.contexts * V;
    R.vocab = V;
    R.k = min(p.contexts, (u32)MAXC);

    // Log-softmax constants of every context row.
    for (u32 k = 0; k < R.k; k++) {
        const float* x = R.lg + (u64)k * V;
        float m = -REAR_INF;
        for (u32 v = tid; v < V; v += ST) m = fmaxf(m, x[v]);
        m = block_max(m, shf);
        float s = 0.0f;
        for (u32 v = tid; v < V; v += ST) s += expf(x[v] - m);
        s = block_sum(s, shf);
        R.mx[k] = m;
        R.lse[k] = logf(s);
    }

    const bool argmax = p.mode == REAR_MODE_ARGMAX || (p.mode == REAR_MODE_SAMPLE && !(p.temperature > 0.0f));
    if (argmax) {
        float bv = -REAR_INF;
        u32 bi = 0xffffffffu;
        for (u32 v = tid; v < V; v += ST) {
            const float s = source_value(p, R, v);
            if (bi == 0xffffffffu || better(s, v, bv, bi)) {
                bv = s;
                bi = v;
            }
        }
        block_best(bv, bi, shf, shu);
        if (tid == 0) write_candidate(p, R, in, row, bi == 0xffffffffu ? 0 : bi, out + row);
        return;
    }

    if (p.mode == REAR_MODE_TOPK) {
        const u32 K = min(min(p.top_k, (u32)REAR_MAX_TOPK), V);
        if (K == 0) return;
        // Each thread's own best K of its tokens (tid, tid + ST, ...), best first.
        float lv[REAR_MAX_TOPK];
        u32 li[REAR_MAX_TOPK];
        u32 cnt = 0;
        for (u32 v = tid; v < V; v += ST) {
            float lps[MAXC];
            const float tv = __fadd_rn(in.cum_score, token_lps(p, R, v, lps));
            if (cnt == K && !better(tv, v, lv[K - 1], li[K - 1])) continue;
            u32 j = cnt < K ? cnt++ : K - 1;
            while (j > 0 && better(tv, v, lv[j - 1], li[j - 1])) {
                lv[j] = lv[j - 1];
                li[j] = li[j - 1];
                j--;
            }
            lv[j] = tv;
            li[j] = v;
        }
        // Merge: K rounds of a block-wide best over the threads' heads.
        u32 head = 0;
        for (u32 round = 0; round < K; round++) {
            float hv = head < cnt ? lv[head] : -REAR_INF;
            u32 hi = head < cnt ? li[head] : 0xffffffffu;
            block_best(hv, hi, shf, shu);
            if (head < cnt && li[head] == hi) head++;
            if (tid == 0) top_i[round] = hi;
        }
        __syncthreads();
        for (u32 j = tid; j < p.top_k; j += ST) {
            RearCandidate* o = out + (u64)row * p.top_k + j;
            if (j < K && top_i[j] != 0xffffffffu) {
                write_candidate(p, R, in, row, top_i[j], o);
            } else {
                o->token = 0xffffffffu;
                o->row = row;
                o->score = -REAR_INF;
                o->total = -REAR_INF;
                for (u32 k = 0; k < MAXC; k++) o->logprobs[k] = 0.0f;
            }
        }
        return;
    }

    // ---- SAMPLE (temperature > 0) ----
    float* src = ws_src + (u64)row * V;
    double* pr = ws_p + (u64)row * V;
    float m = -REAR_INF;
    for (u32 v = tid; v < V; v += ST) {
        const float s = source_value(p, R, v);
        src[v] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, shf);
    const float t = p.temperature;
    const float mt = __fdiv_rn(m, t);
    for (u32 v = tid; v < V; v += ST) pr[v] = exp((double)__fsub_rn(__fdiv_rn(src[v], t), mt));
    if (tid == 0) s_u = philox_uniform(p.seed, in.stream, in.step);
    __syncthreads();
    const double u = s_u;

    const bool cut_k = p.top_k > 0 && p.top_k < V;
    const bool cut_p = p.top_p < 1.0f;
    Keys keys;
    keys.by_score = cut_k || cut_p;
    keys.vocab = V;
    keys.idbits = V > 1 ? 32 - __clz(V - 1) : 1;
    const u64 kmax = keys.max_key();

    u64 lo_key = 0;
    if (cut_k) {
        // Key of the top_k-th ranked token: the largest key with >= top_k tokens at or above it.
        u64 lo = 0, hi = kmax;
        while (lo < hi) {
            const u64 mid = lo + ((hi - lo) >> 1) + ((hi - lo) & 1);
            if (count_from(keys, src, V, mid, shu) >= p.top_k) lo = mid;
            else hi = mid - 1;
        }
        lo_key = lo;
    }
    if (cut_p) {
        // Tokens are kept while the mass ranked before them is < top_p * total (at least one).
        const double total = mass_from(keys, src, pr, V, lo_key, false, shd);
        const double pt = (double)p.top_p * total;
        u64 lo = lo_key, hi = kmax;
        while (lo < hi) {
            const u64 mid = lo + (hi - lo) / 2;
            if (mass_from(keys, src, pr, V, mid, true, shd) < pt) hi = mid;
            else lo = mid + 1;
        }
        lo_key = lo;
    }
    // Inverse CDF over the kept tokens in rank order: the first whose inclusive mass > u * total.
    const double total = mass_from(keys, src, pr, V, lo_key, false, shd);
    const double target = u * total;
    u64 pick;
    if (!(mass_from(keys, src, pr, V, lo_key, false, shd) > target)) {
        // Rounding left nothing above the target: the last kept token (the CPU's fallback).
        u64 mn = ~0ull;
        for (u32 v = tid; v < V; v += ST) {
            const u64 k = keys.key(src[v], v);
            if (k >= lo_key && k < mn) mn = k;
        }
        // block min over u64 through two u32 halves of a double-free reduction
        __shared__ u64 shk[32];
        const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const u64 other = __shfl_xor_sync(FULL_MASK, mn, o);
            mn = other < mn ? other : mn;
        }
        if (lane == 0) shk[warp] = mn;
        __syncthreads();
        pick = shk[0];
        for (int w = 1; w < ST / 32; w++) pick = shk[w] < pick ? shk[w] : pick;
    } else {
        u64 lo = lo_key, hi = kmax;
        while (lo < hi) {
            const u64 mid = lo + ((hi - lo) >> 1) + ((hi - lo) & 1);
            if (mass_from(keys, src, pr, V, mid, false, shd) > target) lo = mid;
            else hi = mid - 1;
        }
        pick = lo;
    }
    const u32 token = V - 1 - (u32)(pick & ((1ull << keys.idbits) - 1));
    if (tid == 0) write_candidate(p, R, in, row, token, out + row);
}
