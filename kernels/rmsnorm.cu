// RMSNorm in HF's order, as the CPU reference: ss = sum(x^2) in f64, r = 1 / sqrt(f32(ss / n) + eps),
// out = w * (x * r). One block per row.
#include "common.cuh"

__device__ __forceinline__ void norm_row(const RearNormParams& p, const float* x, const float* w, float* o) {
    __shared__ double sh[32];
    double ss = 0.0;
    for (u32 i = threadIdx.x; i < p.width; i += blockDim.x) {
        double v = (double)x[i];
        ss += v * v;
    }
    ss = block_sum_d(ss, sh);
    const float var = (float)(ss / (double)p.width);
    const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, p.eps)));
    for (u32 i = threadIdx.x; i < p.width; i += blockDim.x) o[i] = __fmul_rn(w[i], __fmul_rn(x[i], r));
}

// out[r] = norm(x[r]).
extern "C" __global__ void rmsnorm_f32(RearNormParams p, const float* x, const float* w, float* out) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;
    norm_row(p, x + (u64)r * p.width, w, out + (u64)r * p.width);
}

// x[r] += y[r]; out[r] = norm(x[r]) (the residual add fused into the next norm).
extern "C" __global__ void rmsnorm_add_f32(RearNormParams p, float* x, const float* y, const float* w, float* out) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;
    float* xr = x + (u64)r * p.width;
    const float* yr = y + (u64)r * p.width;
    for (u32 i = threadIdx.x; i < p.width; i += blockDim.x) xr[i] = __fadd_rn(xr[i], yr[i]);
    __syncthreads();
    norm_row(p, xr, w, out + (u64)r * p.width);
}

// out[i] = norm(x[src[i]]) for i < rows (the final norm of the rows whose logits are wanted).
extern "C" __global__ void rmsnorm_gather_f32(RearNormParams p, const float* x, const u32* src, const float* w, float* out) {
    const u32 r = blockIdx.x;
    if (r >= p.rows) return;
    norm_row(p, x + (u64)src[r] * p.width, w, out + (u64)r * p.width);
}
