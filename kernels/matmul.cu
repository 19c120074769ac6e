// out[r, j] = sum_i x'[r, i] * W[j, i] (+ bias[j]) with W [out, in] read as stored (f32, bf16,
// f16) and x f32; x' = x, or silu(gate) * up when x rows are [gate | up] (SwiGLU fused into the
// down projection).
//
// matmul_<w>: the memory-bound path for few rows (decode). A block of REAR_MM_THREADS threads
// computes REAR_MM_OUT_TILE output features for up to REAR_MM_ROW_TILE rows (grid.y tiles the
// rows); its threads split the input dimension and read the weights with 16-byte coalesced loads,
// so every weight is read once for all rows of the tile; partial sums meet in shared memory.
//
// matmul_warp_<w>: the same for few rows with one warp per pair of outputs (see below).
//
// matmul_mma_bf16: the tensor-core path for many rows (prefill, wide batches). mma.sync
// m16n8k16 (bf16 in, f32 accumulate). x is split as hi + lo, both bf16, and both halves are
// multiplied, so the product keeps ~16 bits of x (and bf16 weights are exact): the result is as
// close to the f32 reference as the CUDA-core path. A block of REAR_MMA_WARPS warps computes
// REAR_MMA_OUT_TILE outputs for REAR_MMA_ROW_TILE rows; its warps split the input dimension in
// chunks of 32 and meet in shared memory. Each lane reads 16 bytes of one weight row per chunk;
// the k order inside a chunk is permuted identically for x and W (the sum does not care), so
// fragments load straight from global memory without shared-memory staging. Needs in % 8 == 0.
#include "common.cuh"

#define MM_T REAR_MM_THREADS
#define MM_NJ REAR_MM_OUT_TILE
#define MM_RT REAR_MM_ROW_TILE

// Loads VEC elements of x' at (row r, column k).
template <int VEC>
__device__ __forceinline__ void load_x(const RearMatmulParams& p, const float* x, u32 r, u32 k, float* xv) {
    const float* xr = x + (u64)r * p.x_stride;
    if (p.act == REAR_ACT_SWIGLU) {
#pragma unroll
        for (int v = 0; v < VEC; v += 4) {
            const float4 g = *reinterpret_cast<const float4*>(xr + k + v);
            const float4 u = *reinterpret_cast<const float4*>(xr + p.in_features + k + v);
            xv[v] = silu_mul(g.x, u.x);
            xv[v + 1] = silu_mul(g.y, u.y);
            xv[v + 2] = silu_mul(g.z, u.z);
            xv[v + 3] = silu_mul(g.w, u.w);
        }
    } else {
#pragma unroll
        for (int v = 0; v < VEC; v += 4) {
            const float4 a = *reinterpret_cast<const float4*>(xr + k + v);
            xv[v] = a.x;
            xv[v + 1] = a.y;
            xv[v + 2] = a.z;
            xv[v + 3] = a.w;
        }
    }
}

__device__ __forceinline__ float load_x1(const RearMatmulParams& p, const float* x, u32 r, u32 k) {
    const float* xr = x + (u64)r * p.x_stride;
    if (p.act == REAR_ACT_SWIGLU) return silu_mul(xr[k], xr[p.in_features + k]);
    return xr[k];
}

template <typename W, int RT>
__device__ __forceinline__ void mm_tile(const RearMatmulParams& p, const typename W::T* w, const float* x,
                                        const float* bias, float* out, u32 row0, u32 j0) {
    constexpr int VEC = W::VEC;
    __shared__ float red[MM_T / 32][MM_NJ * MM_RT];
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 in = p.in_features;
    const u32 nj = min((u32)MM_NJ, p.out_features - j0);
    float acc[MM_NJ][RT];
#pragma unroll
    for (int j = 0; j < MM_NJ; j++)
#pragma unroll
        for (int r = 0; r < RT; r++) acc[j][r] = 0.0f;

    if (p.vec) {
        const u32 nchunks = in / VEC;
        for (u32 c = tid; c < nchunks; c += MM_T) {
            const u32 k = c * VEC;
            float wv[MM_NJ][VEC];
#pragma unroll
            for (int j = 0; j < MM_NJ; j++) {
                if ((u32)j < nj) {
                    W::vec(w, (u64)(j0 + j) * in + k, wv[j]);
                } else {
#pragma unroll
                    for (int v = 0; v < VEC; v++) wv[j][v] = 0.0f;
                }
            }
#pragma unroll
            for (int r = 0; r < RT; r++) {
                float xv[VEC];
                load_x<VEC>(p, x, row0 + r, k, xv);
#pragma unroll
                for (int j = 0; j < MM_NJ; j++) {
                    float s = acc[j][r];
#pragma unroll
                    for (int v = 0; v < VEC; v++) s += wv[j][v] * xv[v];
                    acc[j][r] = s;
                }
            }
        }
    } else {
        for (u32 k = tid; k < in; k += MM_T) {
            float wv[MM_NJ];
#pragma unroll
            for (int j = 0; j < MM_NJ; j++) wv[j] = (u32)j < nj ? W::one(w, (u64)(j0 + j) * in + k) : 0.0f;
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const float xv = load_x1(p, x, row0 + r, k);
#pragma unroll
                for (int j = 0; j < MM_NJ; j++) acc[j][r] += wv[j] * xv;
            }
        }
    }
    // Reduce over the block: warps by shuffles, then across warps in shared memory.
#pragma unroll
    for (int j = 0; j < MM_NJ; j++)
#pragma unroll
        for (int r = 0; r < RT; r++) {
            const float s = warp_sum(acc[j][r]);
            if (lane == 0) red[warp][j * MM_RT + r] = s;
        }
    __syncthreads();
    if (tid < MM_NJ * MM_RT) {
        const u32 j = tid / MM_RT, r = tid % MM_RT;
        if (j < nj && (int)r < RT) {
            float s = 0.0f;
#pragma unroll
            for (int wi = 0; wi < MM_T / 32; wi++) s += red[wi][tid];
            if (p.has_bias) s += bias[j0 + j];
            out[(u64)(row0 + r) * p.out_stride + j0 + j] = s;
        }
    }
}

template <typename W>
__device__ __forceinline__ void mm_dispatch(const RearMatmulParams& p, const typename W::T* w, const float* x,
                                            const float* bias, float* out) {
    const u32 j0 = blockIdx.x * MM_NJ;
    const u32 row0 = blockIdx.y * MM_RT;
    if (j0 >= p.out_features || row0 >= p.rows) return;
    switch (min((u32)MM_RT, p.rows - row0)) {
        case 1: mm_tile<W, 1>(p, w, x, bias, out, row0, j0); break;
        case 2: mm_tile<W, 2>(p, w, x, bias, out, row0, j0); break;
        case 3: mm_tile<W, 3>(p, w, x, bias, out, row0, j0); break;
        case 4: mm_tile<W, 4>(p, w, x, bias, out, row0, j0); break;
        case 5: mm_tile<W, 5>(p, w, x, bias, out, row0, j0); break;
        case 6: mm_tile<W, 6>(p, w, x, bias, out, row0, j0); break;
        case 7: mm_tile<W, 7>(p, w, x, bias, out, row0, j0); break;
        default: mm_tile<W, 8>(p, w, x, bias, out, row0, j0); break;
    }
}

extern "C" __global__ void __launch_bounds__(MM_T)
matmul_f32(RearMatmulParams p, const float* w, const float* x, const float* bias, float* out) {
    mm_dispatch<WF32>(p, w, x, bias, out);
}
extern "C" __global__ void __launch_bounds__(MM_T)
matmul_bf16(RearMatmulParams p, const u16* w, const float* x, const float* bias, float* out) {
    mm_dispatch<WBF16>(p, w, x, bias, out);
}
extern "C" __global__ void __launch_bounds__(MM_T)
matmul_f16(RearMatmulParams p, const u16* w, const float* x, const float* bias, float* out) {
    mm_dispatch<WF16>(p, w, x, bias, out);
}

// ---- warp-per-output path (decode) ------------------------------------------------------------
// matmul_warp_<w>: a warp computes MMW_NJ consecutive outputs for up to REAR_MM_ROW_TILE rows;
// its lanes stride the input in 16-byte chunks with MMW_U chunks per output in flight per lane,
// and only shuffles reduce (no shared memory, no block barrier). A block's 8 warps cover 16
// consecutive outputs.

#define MMW_NJ 2
#define MMW_U 4
#define MMW_WARPS (MM_T / 32)

template <typename W, int RT>
__device__ __forceinline__ void mmw_tile(const RearMatmulParams& p, const typename W::T* w, const float* x,
                                         const float* bias, float* out, u32 row0, u32 j0) {
    constexpr int VEC = W::VEC;
    const u32 lane = threadIdx.x & 31;
    const u32 in = p.in_features;
    const u32 nj = min((u32)MMW_NJ, p.out_features - j0);
    float acc[MMW_NJ][RT];
#pragma unroll
    for (int j = 0; j < MMW_NJ; j++)
#pragma unroll
        for (int r = 0; r < RT; r++) acc[j][r] = 0.0f;
    if (p.vec) {
        const u32 nchunks = in / VEC;
        for (u32 c0 = lane; c0 < nchunks; c0 += 32 * MMW_U) {
            uint4 raw[MMW_U][MMW_NJ];
#pragma unroll
            for (int u = 0; u < MMW_U; u++) {
                const u32 c = c0 + 32 * u;
#pragma unroll
                for (int j = 0; j < MMW_NJ; j++) {
                    if (c < nchunks && (u32)j < nj) {
                        raw[u][j] = W::raw(w, (u64)(j0 + j) * in + (u64)c * VEC);
                    } else {
                        raw[u][j].x = raw[u][j].y = raw[u][j].z = raw[u][j].w = 0u;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < MMW_U; u++) {
                const u32 c = c0 + 32 * u;
                if (c < nchunks) {
                    float wv[MMW_NJ][VEC];
#pragma unroll
                    for (int j = 0; j < MMW_NJ; j++) W::dec(raw[u][j], wv[j]);
#pragma unroll
                    for (int r = 0; r < RT; r++) {
                        float xv[VEC];
                        load_x<VEC>(p, x, row0 + r, c * VEC, xv);
#pragma unroll
                        for (int j = 0; j < MMW_NJ; j++) {
                            float s = acc[j][r];
#pragma unroll
                            for (int v = 0; v < VEC; v++) s += wv[j][v] * xv[v];
                            acc[j][r] = s;
                        }
                    }
                }
            }
        }
    } else {
        for (u32 k = lane; k < in; k += 32) {
            float wv[MMW_NJ];
#pragma unroll
            for (int j = 0; j < MMW_NJ; j++) wv[j] = (u32)j < nj ? W::one(w, (u64)(j0 + j) * in + k) : 0.0f;
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const float xv = load_x1(p, x, row0 + r, k);
#pragma unroll
                for (int j = 0; j < MMW_NJ; j++) acc[j][r] += wv[j] * xv;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < MMW_NJ; j++)
#pragma unroll
        for (int r = 0; r < RT; r++) {
            float s = warp_sum(acc[j][r]);
            if (lane == 0 && (u32)j < nj) {
                if (p.has_bias) s += bias[j0 + j];
                out[(u64)(row0 + r) * p.out_stride + j0 + j] = s;
            }
        }
}

template <typename W>
__device__ __forceinline__ void mmw_dispatch(const RearMatmulParams& p, const typename W::T* w, const float* x,
                                             const float* bias, float* out) {
    const u32 j0 = (blockIdx.x * MMW_WARPS + (threadIdx.x >> 5)) * MMW_NJ;
    const u32 row0 = blockIdx.y * MM_RT;
    if (j0 >= p.out_features || row0 >= p.rows) return;
    switch (min((u32)MM_RT, p.rows - row0)) {
        case 1: mmw_tile<W, 1>(p, w, x, bias, out, row0, j0); break;
        case 2: mmw_tile<W, 2>(p, w, x, bias, out, row0, j0); break;
        case 3: mmw_tile<W, 3>(p, w, x, bias, out, row0, j0); break;
        case 4: mmw_tile<W, 4>(p, w, x, bias, out, row0, j0); break;
        case 5: mmw_tile<W, 5>(p, w, x, bias, out, row0, j0); break;
        case 6: mmw_tile<W, 6>(p, w, x, bias, out, row0, j0); break;
        case 7: mmw_tile<W, 7>(p, w, x, bias, out, row0, j0); break;
        default: mmw_tile<W, 8>(p, w, x, bias, out, row0, j0); break;
    }
}

extern "C" __global__ void __launch_bounds__(MM_T)
matmul_warp_f32(RearMatmulParams p, const float* w, const float* x, const float* bias, float* out) {
    mmw_dispatch<WF32>(p, w, x, bias, out);
}
extern "C" __global__ void __launch_bounds__(MM_T)
matmul_warp_bf16(RearMatmulParams p, const u16* w, const float* x, const float* bias, float* out) {
    mmw_dispatch<WBF16>(p, w, x, bias, out);
}
extern "C" __global__ void __launch_bounds__(MM_T)
matmul_warp_f16(RearMatmulParams p, const u16* w, const float* x, const float* bias, float* out) {
    mmw_dispatch<WF16>(p, w, x, bias, out);
}

// ---- tensor-core path ---------------------------------------------------------------------------

#define MMA_MT (REAR_MMA_ROW_TILE / 16)
#define MMA_NT (REAR_MMA_OUT_TILE / 8)
#define MMA_W REAR_MMA_WARPS

__device__ __forceinline__ void mma_bf16_16816(float* d, const u32* a, u32 b0, u32 b1) {
#ifdef REAR_EMU
    emu_mma_bf16_16816(d, a, b0, b1);  // kernels/emu: the PTX fragment layout, on the host
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Splits 8 floats into hi and lo bf16 pairs: hi[k] packs (x[2k], x[2k+1]), low half first.
__device__ __forceinline__ void split_pairs(const float* xv, u32* hi, u32* lo) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u32 h0 = f32_to_bf16_bits(xv[2 * k]), h1 = f32_to_bf16_bits(xv[2 * k + 1]);
        const float r0 = xv[2 * k] - __uint_as_float(h0 << 16);
        const float r1 = xv[2 * k + 1] - __uint_as_float(h1 << 16);
        hi[k] = h0 | (h1 << 16);
        lo[k] = f32_to_bf16_bits(r0) | (f32_to_bf16_bits(r1) << 16);
    }
}

extern "C" __global__ void __launch_bounds__(MMA_W * 32)
matmul_mma_bf16(RearMatmulParams p, const u16* w, const float* x, const float* bias, float* out) {
    __shared__ float red[MMA_W][REAR_MMA_ROW_TILE][REAR_MMA_OUT_TILE + 1];
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 j0 = blockIdx.x * REAR_MMA_OUT_TILE, row0 = blockIdx.y * REAR_MMA_ROW_TILE;
    if (j0 >= p.out_features || row0 >= p.rows) return;
    const u32 in = p.in_features;
    const u32 nchunks = (in + 31) / 32;

    float acc[MMA_MT][MMA_NT][4];
#pragma unroll
    for (int m = 0; m < MMA_MT; m++)
#pragma unroll
        for (int n = 0; n < MMA_NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[m][n][e] = 0.0f;

    for (u32 c = warp; c < nchunks; c += MMA_W) {
        const u32 k = c * 32 + t * 8;
        const bool kin = k < in;
        // B fragments: this lane's 8 consecutive weights of output row j0 + n*8 + g.
        u32 wb[MMA_NT][4];
#pragma unroll
        for (int n = 0; n < MMA_NT; n++) {
            const u32 j = j0 + n * 8 + g;
            if (kin && j < p.out_features) {
                const uint4 v = __ldg(reinterpret_cast<const uint4*>(w + (u64)j * in + k));
                wb[n][0] = v.x; wb[n][1] = v.y; wb[n][2] = v.z; wb[n][3] = v.w;
            } else {
                wb[n][0] = wb[n][1] = wb[n][2] = wb[n][3] = 0u;
            }
        }
        // A fragments: rows g and g + 8 of each m tile, the same 8 columns, split hi + lo.
        u32 ahi[MMA_MT][2][4], alo[MMA_MT][2][4];
#pragma unroll
        for (int m = 0; m < MMA_MT; m++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const u32 r = row0 + m * 16 + h * 8 + g;
                float xv[8];
                if (kin && r < p.rows) {
                    load_x<8>(p, x, r, k, xv);
                } else {
#pragma unroll
                    for (int v = 0; v < 8; v++) xv[v] = 0.0f;
                }
                split_pairs(xv, ahi[m][h], alo[m][h]);
            }
        // Two k16 steps: step s uses pairs 2s (mma k 2t, 2t+1) and 2s+1 (mma k 2t+8, 2t+9).
#pragma unroll
        for (int s = 0; s < 2; s++) {
#pragma unroll
            for (int m = 0; m < MMA_MT; m++) {
                const u32 a_hi[4] = {ahi[m][0][2 * s], ahi[m][1][2 * s], ahi[m][0][2 * s + 1], ahi[m][1][2 * s + 1]};
                const u32 a_lo[4] = {alo[m][0][2 * s], alo[m][1][2 * s], alo[m][0][2 * s + 1], alo[m][1][2 * s + 1]};
#pragma unroll
                for (int n = 0; n < MMA_NT; n++) {
                    mma_bf16_16816(acc[m][n], a_hi, wb[n][2 * s], wb[n][2 * s + 1]);
                    mma_bf16_16816(acc[m][n], a_lo, wb[n][2 * s], wb[n][2 * s + 1]);
                }
            }
        }
    }
    // C fragment: c0 (row g, col 2t), c1 (row g, col 2t+1), c2 (row g+8, col 2t), c3 (row g+8, col 2t+1).
#pragma unroll
    for (int m = 0; m < MMA_MT; m++)
#pragma unroll
        for (int n = 0; n < MMA_NT; n++) {
            const u32 rr = m * 16 + g, cc = n * 8 + 2 * t;
            red[warp][rr][cc] = acc[m][n][0];
            red[warp][rr][cc + 1] = acc[m][n][1];
            red[warp][rr + 8][cc] = acc[m][n][2];
            red[warp][rr + 8][cc + 1] = acc[m][n][3];
        }
    __syncthreads();
    for (u32 e = tid; e < REAR_MMA_ROW_TILE * REAR_MMA_OUT_TILE; e += MMA_W * 32) {
        const u32 rr = e / REAR_MMA_OUT_TILE, cc = e % REAR_MMA_OUT_TILE;
        const u32 r = row0 + rr, j = j0 + cc;
        if (r < p.rows && j < p.out_features) {
            float s = 0.0f;
#pragma unroll
            for (int wi = 0; wi < MMA_W; wi++) s += red[wi][rr][cc];
            if (p.has_bias) s += bias[j];
            out[(u64)r * p.out_stride + j] = s;
        }
    }
}
