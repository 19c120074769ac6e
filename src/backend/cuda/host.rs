//! Host-slice entry points to single kernels, for the kernel tests (`tests/cuda_kernels.rs`
//! compares each with the CPU function of the same name) and for debugging. Each uploads its
//! inputs, runs one kernel family and copies the result back; none is on the decode path.
use super::device::DevBuf;
use super::ops::{self, LayoutPtrs, MatmulPath};
use super::types::*;
use super::weights::upload_mat;
use super::CudaBackend;
use crate::backend::cpu::ops::AttnDims;
use crate::backend::StepLayout;
use crate::error::{Error, Result};
use crate::model::tensor::HostTensor;
use crate::model::weights::Linear;

fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Input(format!(
            "{what}: {got} values, expected {want}"
        )));
    }
    Ok(())
}

/// A one-layer KV pool in the kernels' layout built from CPU-layout caches (`[slot, kv_dim]`,
/// slot = block · block_size + offset), and back.
fn pool_from_cpu(k: &[f32], v: &[f32], block_size: usize, kv_dim: usize) -> Vec<f32> {
    let plane = block_size * kv_dim;
    let blocks = k.len() / plane;
    let mut pool = vec![f32::NAN; blocks * 2 * plane];
    for b in 0..blocks {
        pool[b * 2 * plane..b * 2 * plane + plane].copy_from_slice(&k[b * plane..(b + 1) * plane]);
        pool[b * 2 * plane + plane..(b + 1) * 2 * plane]
            .copy_from_slice(&v[b * plane..(b + 1) * plane]);
    }
    pool
}

fn pool_to_cpu(pool: &[f32], block_size: usize, kv_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let plane = block_size * kv_dim;
    let blocks = pool.len() / (2 * plane);
    let (mut k, mut v) = (
        Vec::with_capacity(blocks * plane),
        Vec::with_capacity(blocks * plane),
    );
    for b in 0..blocks {
        k.extend_from_slice(&pool[b * 2 * plane..b * 2 * plane + plane]);
        v.extend_from_slice(&pool[b * 2 * plane + plane..(b + 1) * 2 * plane]);
    }
    (k, v)
}

/// Layout arrays on the device: `[positions | row_seq | tables]`, and the table stride.
fn upload_layout(b: &CudaBackend, layout: &StepLayout) -> Result<(DevBuf, LayoutPtrs, usize)> {
    let rows = layout.rows();
    let stride = layout
        .seqs
        .iter()
        .map(|s| s.blocks.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut packed = Vec::new();
    packed.extend_from_slice(&layout.positions);
    packed.extend_from_slice(&layout.row_seq);
    for s in &layout.seqs {
        packed.extend_from_slice(&s.blocks);
        packed.extend(std::iter::repeat_n(0u32, stride - s.blocks.len()));
    }
    let buf = DevBuf::from_slice(b.gpu(), &packed)?;
    let base = buf.ptr();
    let ptrs = LayoutPtrs {
        positions: base,
        row_seq: base + 4 * rows as u64,
        tables: base + 8 * rows as u64,
    };
    Ok((buf, ptrs, stride))
}

fn download(b: &CudaBackend, buf: &DevBuf, n: usize) -> Result<Vec<f32>> {
    let mut v = vec![0f32; n];
    b.gpu().dtoh(&mut v, buf.ptr())?;
    Ok(v)
}

impl CudaBackend {
    /// `matmul` of `x: [rows, in]` by `lin` (as `backend::cpu::ops::matmul`).
    #[doc(hidden)]
    pub fn matmul_host(
        &self,
        x: &[f32],
        rows: usize,
        lin: &Linear,
        path: MatmulPath,
    ) -> Result<Vec<f32>> {
        self.matmul_host_inner(x, rows, lin, path, false)
    }

    /// `matmul` of `swiglu(gate, up)` by `lin`, with `gu: [rows, 2·in]` rows `[gate | up]` (the
    /// down projection with SwiGLU fused into its input).
    #[doc(hidden)]
    pub fn matmul_swiglu_host(
        &self,
        gu: &[f32],
        rows: usize,
        lin: &Linear,
        path: MatmulPath,
    ) -> Result<Vec<f32>> {
        self.matmul_host_inner(gu, rows, lin, path, true)
    }

    fn matmul_host_inner(
        &self,
        x: &[f32],
        rows: usize,
        lin: &Linear,
        path: MatmulPath,
        swiglu: bool,
    ) -> Result<Vec<f32>> {
        let g = self.gpu();
        g.bind()?;
        let (o, i) = (lin.out_features(), lin.in_features());
        let width = if swiglu { 2 * i } else { i };
        check("matmul x", x.len(), rows * width)?;
        let w = upload_mat(g, &[&lin.weight])?;
        let bias = lin
            .bias
            .as_ref()
            .map(|b| DevBuf::from_slice(g, &b.to_f32()))
            .transpose()?;
        let xd = DevBuf::from_slice(g, x)?;
        let out = DevBuf::alloc(g, rows * o * 4)?;
        ops::matmul(
            g,
            &w,
            bias.as_ref().map(|b| b.ptr()),
            xd.ptr(),
            width,
            rows,
            out.ptr(),
            o,
            swiglu,
            path,
        )?;
        download(self, &out, rows * o)
    }

    /// RMSNorm of each `weight.len()`-row of `x` (as `backend::cpu::ops::rms_norm`).
    #[doc(hidden)]
    pub fn rms_norm_host(&self, x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>> {
        let g = self.gpu();
        g.bind()?;
        let width = weight.len();
        let rows = x.len() / width.max(1);
        check("rms_norm x", x.len(), rows * width)?;
        let (xd, wd) = (DevBuf::from_slice(g, x)?, DevBuf::from_slice(g, weight)?);
        let out = DevBuf::alloc(g, x.len() * 4)?;
        ops::rms_norm(g, xd.ptr(), wd.ptr(), rows, width, eps, out.ptr())?;
        download(self, &out, x.len())
    }

    /// `x += y; out = rms_norm(x)`: returns (x, out).
    #[doc(hidden)]
    pub fn add_rms_norm_host(
        &self,
        x: &[f32],
        y: &[f32],
        weight: &[f32],
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.gpu();
        g.bind()?;
        let width = weight.len();
        let rows = x.len() / width.max(1);
        check("add_rms_norm x", x.len(), rows * width)?;
        check("add_rms_norm y", y.len(), x.len())?;
        let (xd, yd, wd) = (
            DevBuf::from_slice(g, x)?,
            DevBuf::from_slice(g, y)?,
            DevBuf::from_slice(g, weight)?,
        );
        let out = DevBuf::alloc(g, x.len() * 4)?;
        ops::add_rms_norm(g, xd.ptr(), yd.ptr(), wd.ptr(), rows, width, eps, out.ptr())?;
        Ok((
            download(self, &xd, x.len())?,
            download(self, &out, x.len())?,
        ))
    }

    /// `silu(gate) · up` elementwise (as `backend::cpu::ops::swiglu`).
    #[doc(hidden)]
    pub fn swiglu_host(&self, gate: &[f32], up: &[f32], width: usize) -> Result<Vec<f32>> {
        let g = self.gpu();
        g.bind()?;
        check("swiglu up", up.len(), gate.len())?;
        let rows = gate.len() / width.max(1);
        check("swiglu gate", gate.len(), rows * width)?;
        let mut gu = Vec::with_capacity(2 * gate.len());
        for r in 0..rows {
            gu.extend_from_slice(&gate[r * width..(r + 1) * width]);
            gu.extend_from_slice(&up[r * width..(r + 1) * width]);
        }
        let gud = DevBuf::from_slice(g, &gu)?;
        let out = DevBuf::alloc(g, gate.len() * 4)?;
        ops::swiglu(g, gud.ptr(), rows, width, out.ptr())?;
        download(self, &out, gate.len())
    }

    /// Rows `tokens` of `table` as f32 (as `HostTensor::decode_row`).
    #[doc(hidden)]
    pub fn embedding_host(&self, table: &HostTensor, tokens: &[u32]) -> Result<Vec<f32>> {
        let g = self.gpu();
        g.bind()?;
        let t = upload_mat(g, &[table])?;
        let td = DevBuf::from_slice(g, tokens)?;
        let out = DevBuf::alloc(g, tokens.len() * t.inp * 4)?;
        ops::embedding(g, &t, td.ptr(), tokens.len(), out.ptr())?;
        download(self, &out, tokens.len() * t.inp)
    }

    /// The rope / q-k norm / cache-write kernel on `qkv: [rows, (heads + 2·kv_heads)·d]` with a
    /// one-layer cache given in CPU layout (`[blocks·block_size, kv_heads·d]`, K and V).
    /// Returns (rotated q `[rows, heads·d]`, K cache, V cache) in the same layouts.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn rope_host(
        &self,
        qkv: &[f32],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        inv_freq: &[f32],
        attn_scale: f32,
        qk_norm: Option<(&[f32], &[f32])>,
        eps: f32,
        layout: &StepLayout,
        k_cache: &[f32],
        v_cache: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let g = self.gpu();
        g.bind()?;
        let rows = layout.rows();
        let w = (heads + 2 * kv_heads) * head_dim;
        let kvd = kv_heads * head_dim;
        check("rope qkv", qkv.len(), rows * w)?;
        check("rope inv_freq", inv_freq.len(), head_dim / 2)?;
        let bs = layout.block_size;
        let pool = pool_from_cpu(k_cache, v_cache, bs, kvd);
        let pd = DevBuf::from_slice(g, &pool)?;
        let qd = DevBuf::from_slice(g, qkv)?;
        let fd = DevBuf::from_slice(g, inv_freq)?;
        let (qn, kn) = match qk_norm {
            Some((q, k)) => (
                Some(DevBuf::from_slice(g, q)?),
                Some(DevBuf::from_slice(g, k)?),
            ),
            None => (None, None),
        };
        let (_lay_buf, lay, stride) = upload_layout(self, layout)?;
        let p = RearRopeParams {
            rows: rows as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: head_dim as u32,
            qkv_stride: w as u32,
            has_qk_norm: qk_norm.is_some() as u32,
            eps,
            attn_scale,
            kv: RearKvLayout {
                block_stride: (2 * bs * kvd) as u64,
                layer_offset: 0,
                plane_stride: (bs * kvd) as u32,
                block_size: bs as u32,
                table_stride: stride as u32,
                kv_dim: kvd as u32,
            },
        };
        let ptr = |b: &Option<DevBuf>| b.as_ref().map_or(0, |b| b.ptr());
        ops::rope_qk_cache(g, p, qd.ptr(), fd.ptr(), ptr(&qn), ptr(&kn), lay, pd.ptr())?;
        let all = download(self, &qd, qkv.len())?;
        let q: Vec<f32> = (0..rows)
            .flat_map(|r| all[r * w..r * w + heads * head_dim].iter().copied())
            .collect();
        let pool = download(self, &pd, pool.len())?;
        let (k, v) = pool_to_cpu(&pool, bs, kvd);
        Ok((q, k, v))
    }

    /// Paged attention (as `backend::cpu::ops::attention`): `q: [rows, heads·d]`, caches in CPU
    /// layout (`[blocks·block_size, kv_heads·d]`).
    #[doc(hidden)]
    pub fn attention_host(
        &self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        layout: &StepLayout,
        dims: AttnDims,
    ) -> Result<Vec<f32>> {
        let g = self.gpu();
        g.bind()?;
        let rows = layout.rows();
        let (d, kvd) = (dims.head_dim, dims.kv_heads * dims.head_dim);
        check("attention q", q.len(), rows * dims.heads * d)?;
        let bs = layout.block_size;
        let pool = pool_from_cpu(k_cache, v_cache, bs, kvd);
        let pd = DevBuf::from_slice(g, &pool)?;
        let qd = DevBuf::from_slice(g, q)?;
        let out = DevBuf::alloc(g, q.len() * 4)?;
        let (_lay_buf, lay, stride) = upload_layout(self, layout)?;
        let p = RearAttnParams {
            rows: rows as u32,
            heads: dims.heads as u32,
            kv_heads: dims.kv_heads as u32,
            head_dim: d as u32,
            q_stride: (dims.heads * d) as u32,
            out_stride: (dims.heads * d) as u32,
            window: dims.window.map_or(0, |w| w as u32),
            scale: dims.scale,
            kv: RearKvLayout {
                block_stride: (2 * bs * kvd) as u64,
                layer_offset: 0,
                plane_stride: (bs * kvd) as u32,
                block_size: bs as u32,
                table_stride: stride as u32,
                kv_dim: kvd as u32,
            },
        };
        ops::attention(g, p, qd.ptr(), pd.ptr(), lay, out.ptr())?;
        download(self, &out, q.len())
    }
}
