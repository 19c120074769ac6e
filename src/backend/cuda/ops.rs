//! One Rust wrapper per kernel, each with the function that computes its launch geometry beside
//! it. Wrappers take raw device pointers (`u64`) and sizes; they check what the kernel assumes
//! and launch on the backend's stream (nothing here waits for the device).
use super::device::{kargs, Gpu, Launch, K};
use super::types::*;
use super::weights::{DevMat, WType};
use crate::error::{Error, Result};

fn u32_of(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        Error::Cuda(format!(
            "{what} = {n} does not fit the kernels' 32-bit sizes"
        ))
    })
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).min(u32::MAX as usize) as u32
}

/// Elementwise kernels: grid-stride loops, at most 8192 blocks of 256 threads.
pub(crate) fn elementwise_geometry(n: usize) -> Launch {
    Launch {
        grid: (blocks(n, 256).clamp(1, 8192), 1, 1),
        block: (256, 1, 1),
        smem: 0,
    }
}

/// One block of 256 threads per row.
pub(crate) fn row_geometry(rows: usize) -> Launch {
    Launch {
        grid: (rows as u32, 1, 1),
        block: (256, 1, 1),
        smem: 0,
    }
}

pub(crate) fn embedding(
    gpu: &Gpu,
    table: &DevMat,
    tokens: u64,
    rows: usize,
    out: u64,
) -> Result<()> {
    let p = RearEmbedParams {
        rows: u32_of("rows", rows)?,
        width: u32_of("hidden", table.inp)?,
    };
    let k = match table.wtype {
        WType::F32 => K::EmbeddingF32,
        WType::BF16 => K::EmbeddingBf16,
        WType::F16 => K::EmbeddingF16,
    };
    let t = table.buf.ptr();
    // SAFETY: table is [vocab, width] of its type; tokens [rows] (< vocab, checked by the
    // engine); out [rows, width] f32.
    unsafe { gpu.launch(k, row_geometry(rows), &mut kargs!(p, t, tokens, out)) }
}

/// `out[r] = rms_norm(x[r]) · w`.
pub(crate) fn rms_norm(
    gpu: &Gpu,
    x: u64,
    w: u64,
    rows: usize,
    width: usize,
    eps: f32,
    out: u64,
) -> Result<()> {
    let p = RearNormParams {
        rows: u32_of("rows", rows)?,
        width: u32_of("width", width)?,
        eps,
        pad: 0,
    };
    // SAFETY: x, out [rows, width] f32; w [width] f32.
    unsafe { gpu.launch(K::RmsNorm, row_geometry(rows), &mut kargs!(p, x, w, out)) }
}

/// `x[r] += y[r]; out[r] = rms_norm(x[r]) · w`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rms_norm(
    gpu: &Gpu,
    x: u64,
    y: u64,
    w: u64,
    rows: usize,
    width: usize,
    eps: f32,
    out: u64,
) -> Result<()> {
    let p = RearNormParams {
        rows: u32_of("rows", rows)?,
        width: u32_of("width", width)?,
        eps,
        pad: 0,
    };
    // SAFETY: x, y, out [rows, width] f32; w [width] f32.
    unsafe {
        gpu.launch(
            K::RmsNormAdd,
            row_geometry(rows),
            &mut kargs!(p, x, y, w, out),
        )
    }
}

/// `out[i] = rms_norm(x[src[i]]) · w` for `i < n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_gather(
    gpu: &Gpu,
    x: u64,
    src: u64,
    n: usize,
    w: u64,
    width: usize,
    eps: f32,
    out: u64,
) -> Result<()> {
    let p = RearNormParams {
        rows: u32_of("rows", n)?,
        width: u32_of("width", width)?,
        eps,
        pad: 0,
    };
    // SAFETY: src [n] row indices into x; out [n, width].
    unsafe {
        gpu.launch(
            K::RmsNormGather,
            row_geometry(n),
            &mut kargs!(p, x, src, w, out),
        )
    }
}

pub(crate) fn add(gpu: &Gpu, x: u64, y: u64, n: usize) -> Result<()> {
    let p = RearEltParams {
        n: n as u64,
        value: 0.0,
        width: 0,
    };
    // SAFETY: x, y hold n f32.
    unsafe { gpu.launch(K::Add, elementwise_geometry(n), &mut kargs!(p, x, y)) }
}

/// `out[r, i] = silu(gu[r, i]) · gu[r, width + i]`.
pub(crate) fn swiglu(gpu: &Gpu, gu: u64, rows: usize, width: usize, out: u64) -> Result<()> {
    let n = rows * width;
    let p = RearEltParams {
        n: n as u64,
        value: 0.0,
        width: u32_of("width", width)?,
    };
    // SAFETY: gu [rows, 2·width], out [rows, width].
    unsafe { gpu.launch(K::Swiglu, elementwise_geometry(n), &mut kargs!(p, gu, out)) }
}

pub(crate) fn fill(gpu: &Gpu, x: u64, n: usize, value: f32) -> Result<()> {
    let p = RearEltParams {
        n: n as u64,
        value,
        width: 0,
    };
    // SAFETY: x holds n f32.
    unsafe { gpu.launch(K::Fill, elementwise_geometry(n), &mut kargs!(p, x)) }
}

pub(crate) fn kv_copy_blocks_geometry(pairs: usize, block_stride: usize) -> Launch {
    Launch {
        grid: (pairs as u32, blocks(block_stride, 256).clamp(1, 64), 1),
        block: (256, 1, 1),
        smem: 0,
    }
}

/// Copies whole pool blocks `pairs[2i] → pairs[2i+1]` (`pairs` on the device).
pub(crate) fn kv_copy_blocks(
    gpu: &Gpu,
    pool: u64,
    block_stride: usize,
    pairs_dev: u64,
    pairs: usize,
) -> Result<()> {
    let p = RearCopyParams {
        block_stride: block_stride as u64,
        pairs: u32_of("block pairs", pairs)?,
        pad: 0,
    };
    let l = kv_copy_blocks_geometry(pairs, block_stride);
    // SAFETY: every block id in pairs is below the pool's block count.
    unsafe { gpu.launch(K::KvCopyBlocks, l, &mut kargs!(p, pool, pairs_dev)) }
}

/// Device pointers of one step's layout (see `StepLayout`), packed by the backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayoutPtrs {
    pub positions: u64,
    pub row_seq: u64,
    pub tables: u64,
}

/// One warp per head vector (q heads, k heads, v heads), four warps per block.
pub(crate) fn rope_geometry(rows: usize, heads: usize, kv_heads: usize) -> Launch {
    let vectors = heads + 2 * kv_heads;
    Launch {
        grid: (rows as u32, blocks(vectors, 4), 1),
        block: (128, 1, 1),
        smem: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_qk_cache(
    gpu: &Gpu,
    p: RearRopeParams,
    qkv: u64,
    inv_freq: u64,
    q_norm: u64,
    k_norm: u64,
    lay: LayoutPtrs,
    pool: u64,
) -> Result<()> {
    if p.head_dim as usize > REAR_MAX_HEAD_DIM as usize || p.head_dim % 2 != 0 {
        return Err(Error::Cuda(format!(
            "rope: head_dim {} unsupported",
            p.head_dim
        )));
    }
    let l = rope_geometry(p.rows as usize, p.heads as usize, p.kv_heads as usize);
    let (pos, seq, tab) = (lay.positions, lay.row_seq, lay.tables);
    // SAFETY: qkv [rows, qkv_stride]; inv_freq [d/2]; norms [d] (read only with has_qk_norm);
    // layout arrays cover every row and sequence; the pool holds every block in the tables.
    unsafe {
        gpu.launch(
            K::RopeQkCache,
            l,
            &mut kargs!(p, qkv, inv_freq, q_norm, k_norm, pos, seq, tab, pool),
        )
    }
}

/// One block of REAR_ATTN_THREADS per (row, kv head).
pub(crate) fn attention_geometry(rows: usize, kv_heads: usize) -> Launch {
    Launch {
        grid: (rows as u32, kv_heads as u32, 1),
        block: (REAR_ATTN_THREADS, 1, 1),
        smem: 0,
    }
}

pub(crate) fn attention(
    gpu: &Gpu,
    p: RearAttnParams,
    q: u64,
    pool: u64,
    lay: LayoutPtrs,
    out: u64,
) -> Result<()> {
    let g = (p.heads / p.kv_heads.max(1)) as usize;
    if p.head_dim % 4 != 0
        || p.head_dim > REAR_MAX_HEAD_DIM
        || g > REAR_MAX_GROUP as usize
        || p.heads % p.kv_heads.max(1) != 0
    {
        return Err(Error::Cuda(format!(
            "attention: head_dim {} with {} query heads per KV head is unsupported",
            p.head_dim, g
        )));
    }
    let l = attention_geometry(p.rows as usize, p.kv_heads as usize);
    let (pos, seq, tab) = (lay.positions, lay.row_seq, lay.tables);
    // SAFETY: q rows of q_stride, out rows of out_stride; layout and pool as for rope.
    unsafe { gpu.launch(K::Attention, l, &mut kargs!(p, q, pool, pos, seq, tab, out)) }
}

/// Which matmul kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// Tensor cores (bf16 weights with in % 8 == 0) when rows > `mma_min_rows`, else the
    /// CUDA-core kernel (`warp`: the warp-per-output one).
    Auto { mma_min_rows: usize, warp: bool },
    /// The memory-bound CUDA-core kernel whose blocks split the input dimension.
    CudaCore,
    /// The memory-bound CUDA-core kernel with one warp per pair of outputs.
    CudaCoreWarp,
    /// The mma.sync kernel (bf16 weights, in % 8 == 0 only).
    TensorCore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Block,
    Warp,
    Mma,
}

/// Outputs one block of the warp-per-output kernel covers (8 warps × 2).
const WARP_OUT_TILE: usize = 16;

fn matmul_geometry(rows: usize, out: usize, kind: Kind) -> Launch {
    if kind == Kind::Warp {
        return Launch {
            grid: (
                blocks(out, WARP_OUT_TILE),
                blocks(rows, REAR_MM_ROW_TILE as usize),
                1,
            ),
            block: (REAR_MM_THREADS, 1, 1),
            smem: 0,
        };
    }
    if kind == Kind::Mma {
        Launch {
            grid: (
                blocks(out, REAR_MMA_OUT_TILE as usize),
                blocks(rows, REAR_MMA_ROW_TILE as usize),
                1,
            ),
            block: (REAR_MMA_WARPS * 32, 1, 1),
            smem: 0,
        }
    } else {
        Launch {
            grid: (
                blocks(out, REAR_MM_OUT_TILE as usize),
                blocks(rows, REAR_MM_ROW_TILE as usize),
                1,
            ),
            block: (REAR_MM_THREADS, 1, 1),
            smem: 0,
        }
    }
}

/// `out[r, :] = x'[r, :] · Wᵀ (+ bias)` for `rows` rows. With `swiglu`, x rows are
/// `[gate | up]` of width `2·W.inp` and x' = silu(gate)·up. Strides are in floats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    gpu: &Gpu,
    w: &DevMat,
    bias: Option<u64>,
    x: u64,
    x_stride: usize,
    rows: usize,
    out: u64,
    out_stride: usize,
    swiglu: bool,
    path: MatmulPath,
) -> Result<()> {
    if rows == 0 || w.out == 0 {
        return Ok(());
    }
    let vec =
        w.inp % w.wtype.vec() == 0 && x_stride % 4 == 0 && x % 16 == 0 && w.buf.ptr() % 16 == 0;
    let mma_ok = vec && w.wtype == WType::BF16;
    let kind = match path {
        MatmulPath::Auto { mma_min_rows, warp } => {
            if mma_ok && rows > mma_min_rows {
                Kind::Mma
            } else if warp {
                Kind::Warp
            } else {
                Kind::Block
            }
        }
        MatmulPath::CudaCore => Kind::Block,
        MatmulPath::CudaCoreWarp => Kind::Warp,
        MatmulPath::TensorCore => {
            if !mma_ok {
                return Err(Error::Cuda(format!(
                    "the tensor-core matmul needs bf16 weights with in_features % 8 == 0 (got {:?}, {})",
                    w.wtype, w.inp
                )));
            }
            Kind::Mma
        }
    };
    let p = RearMatmulParams {
        rows: u32_of("rows", rows)?,
        in_features: u32_of("in_features", w.inp)?,
        out_features: u32_of("out_features", w.out)?,
        x_stride: u32_of("x stride", x_stride)?,
        out_stride: u32_of("out stride", out_stride)?,
        has_bias: bias.is_some() as u32,
        act: if swiglu {
            REAR_ACT_SWIGLU
        } else {
            REAR_ACT_NONE
        },
        vec: vec as u32,
    };
    let k = match (kind, w.wtype) {
        (Kind::Mma, _) => K::MatmulMmaBf16,
        (Kind::Block, WType::F32) => K::MatmulF32,
        (Kind::Block, WType::BF16) => K::MatmulBf16,
        (Kind::Block, WType::F16) => K::MatmulF16,
        (Kind::Warp, WType::F32) => K::MatmulWarpF32,
        (Kind::Warp, WType::BF16) => K::MatmulWarpBf16,
        (Kind::Warp, WType::F16) => K::MatmulWarpF16,
    };
    let l = matmul_geometry(rows, w.out, kind);
    let (wp, b) = (w.buf.ptr(), bias.unwrap_or(0));
    // SAFETY: W [out, inp] of its type; x rows of x_stride floats holding (2·)inp values; out
    // rows of out_stride floats holding `out` values; bias [out] when present.
    unsafe { gpu.launch(k, l, &mut kargs!(p, wp, x, b, out)) }
}

pub(crate) fn rear_sample_geometry(rows: usize) -> Launch {
    Launch {
        grid: (rows as u32, 1, 1),
        block: (REAR_SAMPLE_THREADS, 1, 1),
        smem: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rear_sample(
    gpu: &Gpu,
    p: RearSampleParams,
    logits: u64,
    rows: u64,
    out: u64,
    ws_src: u64,
    ws_p: u64,
) -> Result<()> {
    let l = rear_sample_geometry(p.rows as usize);
    // SAFETY: logits [rows·contexts, vocab]; rows [rows]; out [rows · per-row candidates];
    // workspaces [rows, vocab] (read only in SAMPLE mode).
    unsafe {
        gpu.launch(
            K::RearSample,
            l,
            &mut kargs!(p, logits, rows, out, ws_src, ws_p),
        )
    }
}
