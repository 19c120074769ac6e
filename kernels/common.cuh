// Device helpers shared by the kernels: element types, conversions, warp and block reductions.
// Self-contained (no CUDA headers): NVRTC provides the intrinsics and vector types used here.
#pragma once
#include "rear_kernels.h"

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

#define FULL_MASK 0xffffffffu
#define REAR_INF __int_as_float(0x7f800000)

// ---- element conversions (bit exact, as torch / half::bf16 / half::f16 decode) ----------------

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 h) {
#ifdef REAR_EMU
    return emu_f16_to_f32(h);  // kernels/emu: the host emulator used to test without a GPU
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

// Round to nearest even (NaN stays NaN).
__device__ __forceinline__ u32 f32_to_bf16_bits(float x) {
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// Weight element types: how one element and one 16-byte vector decode to f32.
struct WF32 {
    typedef float T;
    static constexpr int VEC = 4;
    __device__ static __forceinline__ float one(const T* p, u64 i) { return __ldg(p + i); }
    __device__ static __forceinline__ void vec(const T* p, u64 i, float* out) { dec(raw(p, i), out); }
    // The 16 bytes at element i, undecoded, and their decoding.
    __device__ static __forceinline__ uint4 raw(const T* p, u64 i) { return __ldg(reinterpret_cast<const uint4*>(p + i)); }
    __device__ static __forceinline__ void dec(uint4 v, float* out) {
        out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y);
        out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
    }
};

struct WBF16 {
    typedef u16 T;
    static constexpr int VEC = 8;
    __device__ static __forceinline__ float one(const T* p, u64 i) { return bf16_to_f32(__ldg(p + i)); }
    __device__ static __forceinline__ void vec(const T* p, u64 i, float* out) { dec(raw(p, i), out); }
    __device__ static __forceinline__ uint4 raw(const T* p, u64 i) { return __ldg(reinterpret_cast<const uint4*>(p + i)); }
    __device__ static __forceinline__ void dec(uint4 v, float* out) {
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            out[2 * k] = __uint_as_float(w[k] << 16);
            out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
};

struct WF16 {
    typedef u16 T;
    static constexpr int VEC = 8;
    __device__ static __forceinline__ float one(const T* p, u64 i) { return f16_to_f32(__ldg(p + i)); }
    __device__ static __forceinline__ void vec(const T* p, u64 i, float* out) { dec(raw(p, i), out); }
    __device__ static __forceinline__ uint4 raw(const T* p, u64 i) { return __ldg(reinterpret_cast<const uint4*>(p + i)); }
    __device__ static __forceinline__ void dec(uint4 v, float* out) {
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            out[2 * k] = f16_to_f32((u16)(w[k] & 0xffffu));
            out[2 * k + 1] = f16_to_f32((u16)(w[k] >> 16));
        }
    }
};

// ---- exact f32 arithmetic (no FMA contraction), to match the CPU reference bit for bit ----------

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }

// SiLU(g) * u exactly as the CPU: s = g / (1 + exp(-g)); s * u.
__device__ __forceinline__ float silu_mul(float g, float u) {
    float s = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
    return __fmul_rn(s, u);
}

// ---- warp reductions ---------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ u32 warp_sum_u(u32 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// ---- block reductions (every thread of the block must call; result returned to all) -----------
// `sh` is caller-provided shared scratch of at least 32 elements; the call ends with a barrier so
// the scratch can be reused immediately.

__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += sh[i];
    __syncthreads();
    return t;
}

__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < nw; i++) t += sh[i];
    __syncthreads();
    return t;
}

__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = -REAR_INF;
    for (int i = 0; i < nw; i++) t = fmaxf(t, sh[i]);
    __syncthreads();
    return t;
}

__device__ __forceinline__ u32 block_sum_u(u32 v, u32* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_u(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    u32 t = 0;
    for (int i = 0; i < nw; i++) t += sh[i];
    __syncthreads();
    return t;
}

// ---- paged KV addressing -------------------------------------------------------------------------

// Offset (in floats) of the K row of (seq, pos) in the pool, for the layer in `kv.layer_offset`.
__device__ __forceinline__ u64 kv_row_offset(const RearKvLayout& kv, const u32* tables, u32 seq, u32 pos) {
    u32 blk = tables[(u64)seq * kv.table_stride + pos / kv.block_size];
    u32 slot = pos % kv.block_size;
    return (u64)blk * kv.block_stride + kv.layer_offset + (u64)slot * kv.kv_dim;
}
