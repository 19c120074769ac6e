// Embedding gather: out[r, :] = table[tokens[r], :] decoded to f32. One block per row.
#include "common.cuh"

template <typename W>
__device__ __forceinline__ void embed_row(const RearEmbedParams& p, const typename W::T* table,
                                          const u32* tokens, float* out) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;
    const u64 base = (u64)tokens[r] * p.width;
    float* o = out + (u64)r * p.width;
    for (u32 i = threadIdx.x; i < p.width; i += blockDim.x) o[i] = W::one(table, base + i);
}

extern "C" __global__ void embedding_f32(RearEmbedParams p, const float* table, const u32* tokens, float* out) {
    embed_row<WF32>(p, table, tokens, out);
}
extern "C" __global__ void embedding_bf16(RearEmbedParams p, const u16* table, const u32* tokens, float* out) {
    embed_row<WBF16>(p, table, tokens, out);
}
extern "C" __global__ void embedding_f16(RearEmbedParams p, const u16* table, const u32* tokens, float* out) {
    embed_row<WF16>(p, table, tokens, out);
}
