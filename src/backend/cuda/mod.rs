//! The CUDA backend: the layer-level `Backend` trait on an NVIDIA GPU through cudarc, with the
//! hand-written kernels of `kernels/` (compiled by build.rs with NVRTC and embedded in the
//! binary; only the NVIDIA driver is needed at run time).
//!
//! - Weights are uploaded once, as stored (`weights.rs`); q/k/v and gate/up are concatenated so
//!   each is one matmul reading its input once.
//! - Activations are f32 `[rows, width]` device buffers; every row of a step (prefill rows, the
//!   decode rows of every hypothesis of both the pref and the base context) goes through each
//!   layer in one launch per op, so the weights are read once per step.
//! - The KV cache is one device pool (`[block][layer][K|V][slot][kv_head][head_dim]`, f32), grown
//!   geometrically; new blocks hold NaN until written, and kernels only read written slots.
//! - A decode step's only host round trips are the token/layout upload and the choices of the
//!   search's picks (`Backend::pick` → the fused `rear_sample` kernel: chosen ids, their
//!   per-context log-probs and scores); logits stay on the device. `score` (all rows' log-probs)
//!   is the one path that copies logits back.
//!
//! Without a driver or a device, `cuda_available()` says why and `CudaBackend::new` returns the
//! same reason as an error; nothing here panics for lack of a GPU.
pub mod device;
mod host;
pub mod ops;
pub mod sample;
mod step;
pub mod types;
pub mod weights;

use crate::backend::{Backend, Norm, StepLayout};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::ModelWeights;
pub use crate::search::pick::{Choice, PickMode, PickRequest, PickSpec, RowState};
pub use device::{cuda_available, kernels_embedded};
use device::{DevBuf, Gpu};
pub use ops::MatmulPath;
use std::sync::{Arc, Mutex, MutexGuard};
use types::RearKvLayout;
pub use weights::{CudaWeights, WType};

/// Tunables of the backend.
#[derive(Clone, Copy, Debug)]
pub struct CudaOptions {
    /// Matmuls over more rows than this use the tensor-core kernel (bf16 weights); fewer rows use
    /// the memory-bound CUDA-core kernel. `REAR_CUDA_MMA_MIN_ROWS` overrides the default (8).
    pub mma_min_rows: usize,
    /// The CUDA-core kernel with one warp per pair of outputs (`true`) or the one whose blocks
    /// split the input dimension. `REAR_CUDA_DECODE_MATMUL=warp|block` overrides the default
    /// (warp).
    pub warp_matmul: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        let mma_min_rows = std::env::var("REAR_CUDA_MMA_MIN_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(REAR_DEFAULT_MMA_MIN_ROWS);
        let warp_matmul = std::env::var("REAR_CUDA_DECODE_MATMUL").map_or(true, |v| v != "block");
        CudaOptions {
            mma_min_rows,
            warp_matmul,
        }
    }
}

const REAR_DEFAULT_MMA_MIN_ROWS: usize = 8;

/// Device buffers reused from step to step (grown, never shrunk).
pub(crate) struct Scratch {
    tokens: DevBuf,
    layout: DevBuf,
    layout_host: Vec<u32>,
    layout_valid: bool,
    qkv: DevBuf,
    attn: DevBuf,
    gu: DevBuf,
    sel: DevBuf,
    xsel: DevBuf,
    pub(crate) logits: DevBuf,
    /// Rows and vocabulary of the logits in `logits` (the last `logits`/`logits_device`).
    pub(crate) logits_shape: (usize, usize),
    pairs: DevBuf,
    pub(crate) sample_rows: DevBuf,
    pub(crate) sample_out: DevBuf,
    pub(crate) ws_src: DevBuf,
    pub(crate) ws_p: DevBuf,
    pub(crate) host_logits: DevBuf,
    pub(crate) step: step::StepState,
}

impl Scratch {
    fn new(gpu: &Gpu) -> Scratch {
        let e = || DevBuf::empty(gpu);
        Scratch {
            tokens: e(),
            layout: e(),
            layout_host: Vec::new(),
            layout_valid: false,
            qkv: e(),
            attn: e(),
            gu: e(),
            sel: e(),
            xsel: e(),
            logits: e(),
            logits_shape: (0, 0),
            pairs: e(),
            sample_rows: e(),
            sample_out: e(),
            ws_src: e(),
            ws_p: e(),
            host_logits: e(),
            step: step::StepState::new(gpu),
        }
    }

    /// Uploads `[positions | row_seq | block tables]` unless the same layout is already there
    /// (every layer of a step reads the same one). Returns the pointers and the table stride.
    fn upload_layout(
        &mut self,
        gpu: &Gpu,
        layout: &StepLayout,
    ) -> Result<(ops::LayoutPtrs, usize)> {
        let rows = layout.rows();
        let stride = layout
            .seqs
            .iter()
            .map(|s| s.blocks.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut packed = std::mem::take(&mut self.layout_host);
        let same = self.layout_valid && {
            // Compare in place without building a second vector.
            let mut it = packed.iter();
            layout.positions.iter().all(|p| it.next() == Some(p))
                && layout.row_seq.iter().all(|p| it.next() == Some(p))
                && layout
                    .seqs
                    .iter()
                    .all(|s| (0..stride).all(|j| it.next() == Some(s.blocks.get(j).unwrap_or(&0))))
                && it.next().is_none()
        };
        if !same {
            packed.clear();
            packed.extend_from_slice(&layout.positions);
            packed.extend_from_slice(&layout.row_seq);
            for s in &layout.seqs {
                packed.extend_from_slice(&s.blocks);
                packed.extend(std::iter::repeat_n(0u32, stride - s.blocks.len()));
            }
            self.layout.ensure(packed.len() * 4)?;
            gpu.htod(self.layout.ptr(), &packed)?;
        }
        self.layout_host = packed;
        self.layout_valid = true;
        let base = self.layout.ptr();
        Ok((
            ops::LayoutPtrs {
                positions: base,
                row_seq: base + 4 * rows as u64,
                tables: base + 8 * rows as u64,
            },
            stride,
        ))
    }
}

/// `[rows, width]` f32 activations on the device.
pub struct CudaAct {
    buf: DevBuf,
    rows: usize,
    width: usize,
}

impl CudaAct {
    fn shape(&mut self, rows: usize, width: usize) -> Result<()> {
        self.buf.ensure(rows * width * 4)?;
        self.rows = rows;
        self.width = width;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// The paged KV pool: `[block][layer][K | V][slot][kv_dim]` f32 in one device buffer.
pub struct CudaKv {
    pool: DevBuf,
    cap: usize,
    blocks: usize,
    block_size: usize,
    layers: usize,
    kv_dim: usize,
}

impl CudaKv {
    fn plane_stride(&self) -> usize {
        self.block_size * self.kv_dim
    }

    fn block_stride(&self) -> usize {
        self.layers * 2 * self.plane_stride()
    }

    fn layout(&self, layer: usize, table_stride: usize) -> RearKvLayout {
        RearKvLayout {
            block_stride: self.block_stride() as u64,
            layer_offset: (layer * 2 * self.plane_stride()) as u64,
            plane_stride: self.plane_stride() as u32,
            block_size: self.block_size as u32,
            table_stride: table_stride as u32,
            kv_dim: self.kv_dim as u32,
        }
    }

    /// Blocks usable now.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Checks that `layout` addresses this cache: its block size, a block for every row's
    /// position, every block within the reserved ones (the kernels index the pool unchecked).
    fn check_layout(&self, layout: &StepLayout) -> Result<()> {
        if layout.block_size != self.block_size {
            return Err(Error::KvCache(format!(
                "layout block size {} != cache block size {}",
                layout.block_size, self.block_size
            )));
        }
        for (i, (&s, &pos)) in layout.row_seq.iter().zip(&layout.positions).enumerate() {
            let (s, pos) = (s as usize, pos as usize);
            let ok = s < layout.seqs.len() && pos / layout.block_size < layout.seqs[s].blocks.len();
            if !ok {
                return Err(Error::KvCache(format!(
                    "row {i}: position {pos} of sequence {s} has no block"
                )));
            }
        }
        if let Some(b) = layout
            .seqs
            .iter()
            .flat_map(|s| s.blocks.iter())
            .find(|&&b| b as usize >= self.blocks)
        {
            return Err(Error::KvCache(format!(
                "block {b} is outside the {} reserved blocks",
                self.blocks
            )));
        }
        Ok(())
    }
}

/// The CUDA backend on one device. Cloning shares the device, its kernels and scratch.
#[derive(Clone)]
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    scratch: Arc<Mutex<Scratch>>,
    opts: CudaOptions,
}

impl CudaBackend {
    /// Opens device `ordinal`: driver, context, stream, and the embedded kernels loaded for its
    /// architecture. Errors (never panics) when there is no driver, no such device, a device
    /// older than compute capability 8.0, or no kernels embedded in this build.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, CudaOptions::default())
    }

    pub fn with_options(ordinal: usize, opts: CudaOptions) -> Result<Self> {
        let gpu = Arc::new(Gpu::new(ordinal)?);
        let scratch = Arc::new(Mutex::new(Scratch::new(&gpu)));
        Ok(CudaBackend { gpu, scratch, opts })
    }

    /// "NVIDIA H200 (cc 9.0, sm_90 cubin)".
    pub fn describe(&self) -> String {
        format!(
            "{} (device {}, compute capability {}.{}, {})",
            self.gpu.name, self.gpu.ordinal, self.gpu.cc.0, self.gpu.cc.1, self.gpu.image
        )
    }

    pub fn options(&self) -> CudaOptions {
        self.opts
    }

    pub fn set_options(&mut self, opts: CudaOptions) {
        self.opts = opts;
    }

    /// Free and total device memory, in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.gpu.mem_info()
    }

    /// Waits for every launched kernel (and reports asynchronous kernel errors).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.bind()?;
        self.gpu.sync()
    }

    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn scratch(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self) -> MatmulPath {
        MatmulPath::Auto {
            mma_min_rows: self.opts.mma_min_rows,
            warp: self.opts.warp_matmul,
        }
    }

    /// Device-to-device copy bandwidth in bytes/s (read + write traffic: 2·bytes per copy),
    /// measured over `iters` copies of `bytes` — the memory bandwidth the HBM floor is taken
    /// against.
    pub fn copy_bandwidth(&self, bytes: usize, iters: usize) -> Result<f64> {
        let g = &self.gpu;
        g.bind()?;
        let a = DevBuf::alloc(g, bytes)?;
        let b = DevBuf::alloc(g, bytes)?;
        g.dtod(b.ptr(), a.ptr(), bytes)?;
        g.sync()?;
        let t = std::time::Instant::now();
        for i in 0..iters {
            let (s, d) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            g.dtod(d.ptr(), s.ptr(), bytes)?;
        }
        g.sync()?;
        Ok(2.0 * bytes as f64 * iters as f64 / t.elapsed().as_secs_f64())
    }

    fn norm_weight<'w>(&self, w: &'w CudaWeights, which: Norm) -> &'w DevBuf {
        match which {
            Norm::Input(l) => &w.layers[l].input_norm,
            Norm::PostAttention(l) => &w.layers[l].post_norm,
        }
    }

    /// `x += y; out = rms_norm(x)` in one kernel (the residual add fused into the next norm).
    /// The same as `add` then `rms_norm`; the forward driver can use it when the trait offers it.
    pub fn add_rms_norm(
        &self,
        w: &CudaWeights,
        which: Norm,
        x: &mut CudaAct,
        y: &CudaAct,
        out: &mut CudaAct,
    ) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        if (x.rows, x.width) != (y.rows, y.width) {
            return Err(Error::Cuda(format!(
                "add_rms_norm: shapes {}x{} and {}x{} differ",
                x.rows, x.width, y.rows, y.width
            )));
        }
        out.shape(x.rows, x.width)?;
        let gw = self.norm_weight(w, which).ptr();
        ops::add_rms_norm(
            g,
            x.ptr(),
            y.ptr(),
            gw,
            x.rows,
            x.width,
            w.cfg.rms_norm_eps,
            out.ptr(),
        )
    }

    /// Final norm and LM head over `rows` of `x`, leaving the logits on the device (for
    /// `rear_sample`); returns nothing to the host.
    pub fn logits_device(&self, w: &CudaWeights, x: &CudaAct, rows: &[u32]) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        let mut s = self.scratch();
        let n = rows.len();
        let (h, vocab) = (w.cfg.hidden_size, w.cfg.vocab_size);
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= x.rows) {
            return Err(Error::Cuda(format!("logits: row {r} of {} rows", x.rows)));
        }
        s.logits_shape = (n, vocab);
        if n == 0 {
            return Ok(());
        }
        s.sel.ensure(n * 4)?;
        g.htod(s.sel.ptr(), rows)?;
        s.xsel.ensure(n * h * 4)?;
        ops::rms_norm_gather(
            g,
            x.ptr(),
            s.sel.ptr(),
            n,
            w.final_norm.ptr(),
            h,
            w.cfg.rms_norm_eps,
            s.xsel.ptr(),
        )?;
        s.logits.ensure(n * vocab * 4)?;
        ops::matmul(
            g,
            w.lm_head(),
            None,
            s.xsel.ptr(),
            h,
            n,
            s.logits.ptr(),
            vocab,
            false,
            self.path(),
        )
    }
}

/// Layer `layer`'s q/k RMSNorm (Qwen3), RoPE and K/V cache write over its q/k/v rows `qkv`
/// (`[rows, q_dim + 2·kv_dim]`) in one launch; the per-layer `attention` and the fused step both
/// call it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_qk_cache(
    g: &Gpu,
    w: &CudaWeights,
    layer: usize,
    rows: usize,
    qkv: u64,
    kvl: types::RearKvLayout,
    lay: ops::LayoutPtrs,
    kv: &CudaKv,
) -> Result<()> {
    let cfg = &w.cfg;
    let lw = &w.layers[layer];
    let p = types::RearRopeParams {
        rows: rows as u32,
        heads: cfg.num_heads as u32,
        kv_heads: cfg.num_kv_heads as u32,
        head_dim: cfg.head_dim as u32,
        qkv_stride: (cfg.q_dim() + 2 * cfg.kv_dim()) as u32,
        has_qk_norm: (lw.q_norm.is_some() && lw.k_norm.is_some()) as u32,
        eps: cfg.rms_norm_eps,
        attn_scale: cfg.rope_attention_scale(),
        kv: kvl,
    };
    let qn = lw.q_norm.as_ref().map_or(0, |b| b.ptr());
    let kn = lw.k_norm.as_ref().map_or(0, |b| b.ptr());
    ops::rope_qk_cache(g, p, qkv, w.inv_freq.ptr(), qn, kn, lay, kv.pool.ptr())
}

impl Backend for CudaBackend {
    type Weights = CudaWeights;
    type Act = CudaAct;
    type Kv = CudaKv;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn load_weights(&self, cfg: &ModelConfig, w: &ModelWeights) -> Result<CudaWeights> {
        weights::upload(&self.gpu, cfg, w)
    }

    /// The fused step (fewer launches, CUDA-graph replay of repeated shapes); computes what
    /// `backend::forward` computes through the layer methods.
    fn forward(
        &self,
        _cfg: &ModelConfig,
        w: &CudaWeights,
        layout: &StepLayout,
        kv: &mut CudaKv,
        _s: &mut crate::backend::Scratch<Self>,
        logits: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        self.forward_fused(w, layout, kv, logits)
    }

    /// Picks run in the fused `rear_sample` kernel over the logits the step left on the device.
    fn device_pick(&self) -> bool {
        true
    }

    fn pick(&self, first: usize, n: usize, req: &PickRequest) -> Result<Vec<Choice>> {
        self.rear_sample(first, n, req)
    }

    fn new_act(&self) -> CudaAct {
        CudaAct {
            buf: DevBuf::empty(&self.gpu),
            rows: 0,
            width: 0,
        }
    }

    fn new_kv(&self, cfg: &ModelConfig, block_size: usize) -> Result<CudaKv> {
        if block_size == 0 {
            return Err(Error::KvCache("block size 0".into()));
        }
        Ok(CudaKv {
            pool: DevBuf::empty(&self.gpu),
            cap: 0,
            blocks: 0,
            block_size,
            layers: cfg.num_layers,
            kv_dim: cfg.kv_dim(),
        })
    }

    fn reserve_blocks(&self, kv: &mut CudaKv, n: usize) -> Result<()> {
        if n <= kv.blocks {
            return Ok(());
        }
        if n <= kv.cap {
            kv.blocks = n;
            return Ok(());
        }
        let g = &self.gpu;
        g.bind()?;
        let stride = kv.block_stride();
        let floats = |blocks: usize| {
            blocks
                .checked_mul(stride)
                .filter(|f| f.checked_mul(4).is_some())
                .ok_or_else(|| Error::KvCache(format!("{blocks} blocks overflow")))
        };
        // Grow by half again (amortised copies), or exactly to `n` if that does not fit.
        let want = n.max(kv.cap + kv.cap / 2).max(16);
        let (pool, cap) = match DevBuf::alloc(g, floats(want)? * 4) {
            Ok(b) => (b, want),
            Err(_) => (
                DevBuf::alloc(g, floats(n)? * 4).map_err(|e| {
                    Error::KvCache(format!("cannot allocate {n} KV blocks on the device: {e}"))
                })?,
                n,
            ),
        };
        g.dtod(pool.ptr(), kv.pool.ptr(), kv.cap * stride * 4)?;
        let old = kv.cap * stride;
        ops::fill(g, pool.ptr() + old as u64 * 4, cap * stride - old, f32::NAN)?;
        kv.pool = pool;
        kv.cap = cap;
        kv.blocks = n;
        Ok(())
    }

    fn copy_blocks(&self, kv: &mut CudaKv, pairs: &[(u32, u32)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        if let Some(&(s, d)) = pairs
            .iter()
            .find(|&&(s, d)| s as usize >= kv.blocks || d as usize >= kv.blocks)
        {
            return Err(Error::KvCache(format!(
                "block copy {s} → {d} outside the {} reserved blocks",
                kv.blocks
            )));
        }
        let g = &self.gpu;
        g.bind()?;
        let mut s = self.scratch();
        let flat: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        s.pairs.ensure(flat.len() * 4)?;
        g.htod(s.pairs.ptr(), &flat)?;
        ops::kv_copy_blocks(
            g,
            kv.pool.ptr(),
            kv.block_stride(),
            s.pairs.ptr(),
            pairs.len(),
        )
    }

    fn embed(&self, w: &CudaWeights, tokens: &[u32], x: &mut CudaAct) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        let mut s = self.scratch();
        let vocab = w.cfg.vocab_size as u32;
        if let Some(&t) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Input(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        x.shape(tokens.len(), w.cfg.hidden_size)?;
        s.tokens.ensure(tokens.len() * 4)?;
        g.htod(s.tokens.ptr(), tokens)?;
        ops::embedding(g, &w.embed, s.tokens.ptr(), tokens.len(), x.ptr())
    }

    fn rms_norm(&self, w: &CudaWeights, which: Norm, x: &CudaAct, out: &mut CudaAct) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        out.shape(x.rows, x.width)?;
        let gw = self.norm_weight(w, which).ptr();
        ops::rms_norm(
            g,
            x.ptr(),
            gw,
            x.rows,
            x.width,
            w.cfg.rms_norm_eps,
            out.ptr(),
        )
    }

    fn attention(
        &self,
        w: &CudaWeights,
        layer: usize,
        x: &CudaAct,
        layout: &StepLayout,
        kv: &mut CudaKv,
        out: &mut CudaAct,
    ) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        let cfg = &w.cfg;
        let rows = x.rows;
        if layout.rows() != rows || layout.positions.len() != rows || layout.row_seq.len() != rows {
            return Err(Error::Cuda(format!(
                "attention: {rows} activation rows for a layout of {} rows",
                layout.rows()
            )));
        }
        kv.check_layout(layout)?;
        let mut s = self.scratch();
        let (lay, stride) = s.upload_layout(g, layout)?;
        let lw = &w.layers[layer];
        let (d, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let qkv_w = qd + 2 * kvd;
        s.qkv.ensure(rows * qkv_w * 4)?;
        let qkv = s.qkv.ptr();
        let path = self.path();
        let bias = |b: &Option<DevBuf>| b.as_ref().map(|b| b.ptr());
        ops::matmul(
            g,
            &lw.qkv,
            bias(&lw.qkv_bias),
            x.ptr(),
            x.width,
            rows,
            qkv,
            qkv_w,
            false,
            path,
        )?;
        let kvl = kv.layout(layer, stride);
        rope_qk_cache(g, w, layer, rows, qkv, kvl, lay, kv)?;
        s.attn.ensure(rows * qd * 4)?;
        let ap = types::RearAttnParams {
            rows: rows as u32,
            heads: cfg.num_heads as u32,
            kv_heads: cfg.num_kv_heads as u32,
            head_dim: d as u32,
            q_stride: qkv_w as u32,
            out_stride: qd as u32,
            window: cfg.sliding_window[layer].map_or(0, |w| w.min(u32::MAX as usize) as u32),
            scale: (d as f64).powf(-0.5) as f32,
            kv: kvl,
        };
        ops::attention(g, ap, qkv, kv.pool.ptr(), lay, s.attn.ptr())?;
        out.shape(rows, cfg.hidden_size)?;
        ops::matmul(
            g,
            &lw.o,
            bias(&lw.o_bias),
            s.attn.ptr(),
            qd,
            rows,
            out.ptr(),
            cfg.hidden_size,
            false,
            path,
        )
    }

    fn mlp(&self, w: &CudaWeights, layer: usize, x: &CudaAct, out: &mut CudaAct) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        let mut s = self.scratch();
        let lw = &w.layers[layer];
        let rows = x.rows;
        let im = w.cfg.intermediate_size;
        s.gu.ensure(rows * 2 * im * 4)?;
        let path = self.path();
        let gu = s.gu.ptr();
        let gub = lw.gate_up_bias.as_ref().map(|b| b.ptr());
        ops::matmul(
            g,
            &lw.gate_up,
            gub,
            x.ptr(),
            x.width,
            rows,
            gu,
            2 * im,
            false,
            path,
        )?;
        out.shape(rows, w.cfg.hidden_size)?;
        let db = lw.down_bias.as_ref().map(|b| b.ptr());
        ops::matmul(
            g,
            &lw.down,
            db,
            gu,
            2 * im,
            rows,
            out.ptr(),
            w.cfg.hidden_size,
            true,
            path,
        )
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        let g = &self.gpu;
        g.bind()?;
        if (x.rows, x.width) != (y.rows, y.width) {
            return Err(Error::Cuda(format!(
                "add: shapes {}x{} and {}x{} differ",
                x.rows, x.width, y.rows, y.width
            )));
        }
        ops::add(g, x.ptr(), y.ptr(), x.rows * x.width)
    }

    fn logits(&self, w: &CudaWeights, x: &CudaAct, rows: &[u32], out: &mut Vec<f32>) -> Result<()> {
        self.logits_device(w, x, rows)?;
        let s = self.scratch();
        out.resize(rows.len() * w.cfg.vocab_size, 0.0);
        self.gpu.dtoh(out, s.logits.ptr())
    }
}
