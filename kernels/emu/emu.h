// Host emulation of the CUDA subset the kernels use, so that kernels/*.cu run (slowly) on a CPU:
// each block's threads are fibers scheduled cooperatively on one OS thread, __syncthreads and
// warp shuffles are barriers, __shared__ is a static (blocks run one at a time), and mma.sync
// is computed from the PTX ISA's fragment layout. Together with emu_runtime.cpp (a fake
// libcuda.so with the driver-API calls cudarc makes) it lets the Rust CUDA backend and its tests
// run on a machine without a GPU: see kernels/emu/build.sh.
//
// What it does not model: timing, memory coalescing, resource limits (registers, shared memory
// size), warp divergence, or the rounding of the hardware's exp/log (the host libm is used).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <algorithm>

#define REAR_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
};
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

using std::max;
using std::min;

template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }

float emu_f16_to_f32(unsigned short h);
void __syncthreads();
void emu_warp_sync();
// Per-warp exchange area: 32 lanes × 64 bytes.
unsigned char* emu_warp_slot(unsigned lane);
unsigned emu_lane();

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const unsigned lane = emu_lane();
    memcpy(emu_warp_slot(lane), &v, sizeof(T));
    emu_warp_sync();
    T r;
    memcpy(&r, emu_warp_slot(lane ^ (unsigned)mask), sizeof(T));
    emu_warp_sync();
    return r;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for the calling lane's fragments.
void emu_mma_bf16_16816(float* d, const unsigned* a, unsigned b0, unsigned b1);
