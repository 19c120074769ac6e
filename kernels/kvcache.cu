// KV pool maintenance: NaN fill of fresh blocks and whole-block copies (copy-on-write).
#include "common.cuh"

// x[i] = value for i < n.
extern "C" __global__ void fill_f32(RearEltParams p, float* x) {
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < p.n; e += (u64)gridDim.x * blockDim.x)
        x[e] = p.value;
}

// For each pair (src, dst) = (pairs[2i], pairs[2i+1]): block dst := block src (all layers, K and V).
// grid.x = pairs, grid.y splits a block's floats.
extern "C" __global__ void kv_copy_blocks_f32(RearCopyParams p, float* pool, const u32* pairs) {
    const u32 i = blockIdx.x;
    if (i >= p.pairs) return;
    const float* s = pool + (u64)pairs[2 * i] * p.block_stride;
    float* d = pool + (u64)pairs[2 * i + 1] * p.block_stride;
    for (u64 e = (u64)blockIdx.y * blockDim.x + threadIdx.x; e < p.block_stride; e += (u64)gridDim.y * blockDim.x)
        d[e] = s[e];
}
