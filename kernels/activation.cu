// Elementwise kernels: SwiGLU and the residual add.
#include "common.cuh"

// out[r, i] = silu(gu[r, i]) * gu[r, width + i] for r*width + i < n (gu rows are [gate | up]).
extern "C" __global__ void swiglu_f32(RearEltParams p, const float* gu, float* out) {
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < p.n; e += (u64)gridDim.x * blockDim.x) {
        const u64 r = e / p.width, i = e % p.width;
        const float* row = gu + r * 2 * p.width;
        out[e] = silu_mul(row[i], row[p.width + i]);
    }
}

// x[i] += y[i].
extern "C" __global__ void add_f32(RearEltParams p, float* x, const float* y) {
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < p.n; e += (u64)gridDim.x * blockDim.x)
        x[e] = __fadd_rn(x[e], y[e]);
}
