//! Upload of a model's weights to the device, once, as stored: f32 / f16 / bf16 matrices keep
//! their bytes (q, k, v concatenated into one `[q_dim + 2·kv_dim, hidden]` matrix and gate, up
//! into one `[2·intermediate, hidden]` matrix, so that each is one launch reading the input once).
//! GGUF block-quantised matrices (Q8_0, Q4_0, Q4_1) are dequantised at upload to f16 (or to f32
//! when a value is out of f16's range), since the kernels read float weights only. Norm weights,
//! biases and RoPE frequencies are small and uploaded as f32.
use super::device::{DevBuf, Gpu};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::tensor::{DType, HostTensor};
use crate::model::weights::{Linear, ModelWeights};
use half::f16;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Element type of a matrix on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WType {
    F32,
    F16,
    BF16,
}

impl WType {
    pub fn bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 | WType::BF16 => 2,
        }
    }

    /// Elements per 16-byte vector load.
    pub fn vec(self) -> usize {
        16 / self.bytes()
    }
}

/// A row-major `[out, inp]` matrix on the device.
pub(crate) struct DevMat {
    pub buf: DevBuf,
    pub wtype: WType,
    pub out: usize,
    pub inp: usize,
}

pub(crate) struct CudaLayer {
    pub input_norm: DevBuf,
    pub post_norm: DevBuf,
    pub q_norm: Option<DevBuf>,
    pub k_norm: Option<DevBuf>,
    pub qkv: DevMat,
    pub qkv_bias: Option<DevBuf>,
    pub o: DevMat,
    pub o_bias: Option<DevBuf>,
    pub gate_up: DevMat,
    pub gate_up_bias: Option<DevBuf>,
    pub down: DevMat,
    pub down_bias: Option<DevBuf>,
}

/// A model's weights resident on one device.
pub struct CudaWeights {
    pub(crate) cfg: ModelConfig,
    pub(crate) embed: DevMat,
    /// `None` when the LM head is the (tied) embedding.
    pub(crate) lm_head: Option<DevMat>,
    pub(crate) layers: Vec<CudaLayer>,
    pub(crate) final_norm: DevBuf,
    pub(crate) inv_freq: DevBuf,
    step_bytes: usize,
    /// Unique per upload (captured step graphs hold these weights' addresses).
    pub(crate) id: u64,
}

impl CudaWeights {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Device bytes a decode step reads (every matrix, bias and norm once; the LM head once even
    /// when tied). The HBM floor of a step is this over the memory bandwidth.
    pub fn bytes_per_step(&self) -> usize {
        self.step_bytes
    }

    /// The element type of the layer matrices (the first layer's q/k/v).
    pub fn matrix_type(&self) -> WType {
        self.layers
            .first()
            .map_or(self.embed.wtype, |l| l.qkv.wtype)
    }

    pub(crate) fn lm_head(&self) -> &DevMat {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

fn is_quantized(d: DType) -> bool {
    d.block_elems() != 1
}

/// Uploads `parts` (matrices with the same number of columns) as one matrix, rows in order.
pub(crate) fn upload_mat(gpu: &Gpu, parts: &[&HostTensor]) -> Result<DevMat> {
    let inp = parts[0].row_len();
    if let Some(p) = parts
        .iter()
        .find(|p| p.shape.len() != 2 || p.row_len() != inp)
    {
        return Err(Error::Weights(format!(
            "tensor `{}`: shape {:?} cannot be concatenated with `{}` ({} columns)",
            p.name, p.shape, parts[0].name, inp
        )));
    }
    let out: usize = parts.iter().map(|p| p.rows()).sum();
    let d0 = parts[0].dtype;
    let plain = |d: DType| match d {
        DType::F32 => Some(WType::F32),
        DType::F16 => Some(WType::F16),
        DType::BF16 => Some(WType::BF16),
        _ => None,
    };
    if let (Some(wt), true) = (plain(d0), parts.iter().all(|p| p.dtype == d0)) {
        let buf = if parts.len() == 1 {
            DevBuf::from_slice(gpu, parts[0].bytes())?
        } else {
            let mut bytes = Vec::with_capacity(out * inp * wt.bytes());
            for p in parts {
                bytes.extend_from_slice(p.bytes());
            }
            DevBuf::from_slice(gpu, &bytes)?
        };
        return Ok(DevMat {
            buf,
            wtype: wt,
            out,
            inp,
        });
    }
    // Quantised or mixed types: decode to f32, store as f16 when every part is f16 or
    // quantised and every value fits, else as f32.
    let mut vals = Vec::with_capacity(out * inp);
    for p in parts {
        let start = vals.len();
        vals.resize(start + p.numel(), 0.0);
        crate::model::tensor::decode(p.dtype, p.bytes(), &mut vals[start..]);
    }
    let halfable = parts
        .iter()
        .all(|p| p.dtype == DType::F16 || is_quantized(p.dtype))
        && vals.iter().all(|v| v.is_finite() && v.abs() <= 65504.0);
    if halfable {
        let h: Vec<u16> = vals.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        Ok(DevMat {
            buf: DevBuf::from_slice(gpu, &h)?,
            wtype: WType::F16,
            out,
            inp,
        })
    } else {
        Ok(DevMat {
            buf: DevBuf::from_slice(gpu, &vals)?,
            wtype: WType::F32,
            out,
            inp,
        })
    }
}

/// The biases of `parts` as one f32 vector (zeros where a part has none); `None` if none has one.
fn upload_bias(gpu: &Gpu, parts: &[&Linear]) -> Result<Option<DevBuf>> {
    if parts.iter().all(|l| l.bias.is_none()) {
        return Ok(None);
    }
    let mut v = Vec::new();
    for l in parts {
        match &l.bias {
            Some(b) => v.extend(b.to_f32()),
            None => v.extend(std::iter::repeat_n(0.0f32, l.out_features())),
        }
    }
    Ok(Some(DevBuf::from_slice(gpu, &v)?))
}

fn upload_f32(gpu: &Gpu, t: &HostTensor) -> Result<DevBuf> {
    DevBuf::from_slice(gpu, &t.to_f32())
}

/// Checks what the kernels support and uploads every weight.
pub(crate) fn upload(gpu: &Gpu, cfg: &ModelConfig, w: &ModelWeights) -> Result<CudaWeights> {
    use super::types::{REAR_MAX_GROUP, REAR_MAX_HEAD_DIM};
    let unsupported = |m: String| Err(Error::Cuda(m));
    if cfg.head_dim % 4 != 0 || cfg.head_dim > REAR_MAX_HEAD_DIM as usize {
        return unsupported(format!(
            "head_dim {} is not supported by the CUDA attention kernel (a multiple of 4 up to {})",
            cfg.head_dim, REAR_MAX_HEAD_DIM
        ));
    }
    if cfg.num_heads / cfg.num_kv_heads > REAR_MAX_GROUP as usize {
        return unsupported(format!(
            "{} query heads per KV head are more than the CUDA attention kernel's {}",
            cfg.num_heads / cfg.num_kv_heads,
            REAR_MAX_GROUP
        ));
    }
    if w.layers.len() != cfg.num_layers {
        return Err(Error::Weights(format!(
            "{} layers of weights for num_hidden_layers {}",
            w.layers.len(),
            cfg.num_layers
        )));
    }
    gpu.bind()?;
    let embed = upload_mat(gpu, &[&w.embed])?;
    let tied = std::ptr::eq(w.lm_head.bytes().as_ptr(), w.embed.bytes().as_ptr())
        && w.lm_head.dtype == w.embed.dtype
        && w.lm_head.shape == w.embed.shape;
    let lm_head = if tied {
        None
    } else {
        Some(upload_mat(gpu, &[&w.lm_head])?)
    };
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        layers.push(CudaLayer {
            input_norm: upload_f32(gpu, &l.input_norm)?,
            post_norm: upload_f32(gpu, &l.post_attn_norm)?,
            q_norm: l.q_norm.as_ref().map(|t| upload_f32(gpu, t)).transpose()?,
            k_norm: l.k_norm.as_ref().map(|t| upload_f32(gpu, t)).transpose()?,
            qkv: upload_mat(gpu, &[&l.q.weight, &l.k.weight, &l.v.weight])?,
            qkv_bias: upload_bias(gpu, &[&l.q, &l.k, &l.v])?,
            o: upload_mat(gpu, &[&l.o.weight])?,
            o_bias: upload_bias(gpu, &[&l.o])?,
            gate_up: upload_mat(gpu, &[&l.gate.weight, &l.up.weight])?,
            gate_up_bias: upload_bias(gpu, &[&l.gate, &l.up])?,
            down: upload_mat(gpu, &[&l.down.weight])?,
            down_bias: upload_bias(gpu, &[&l.down])?,
        });
    }
    let final_norm = upload_f32(gpu, &w.norm)?;
    let inv_freq = DevBuf::from_slice(gpu, &cfg.rope_inv_freq())?;
    let mat = |m: &DevMat| m.out * m.inp * m.wtype.bytes();
    let mut step_bytes = cfg.hidden_size * 4;
    step_bytes += lm_head.as_ref().map_or(mat(&embed), mat);
    for (l, cl) in w.layers.iter().zip(&layers) {
        step_bytes += mat(&cl.qkv) + mat(&cl.o) + mat(&cl.gate_up) + mat(&cl.down);
        step_bytes += 2 * cfg.hidden_size * 4;
        let bias = |x: &Linear| x.bias.as_ref().map_or(0, |_| x.out_features() * 4);
        step_bytes += bias(&l.q) + bias(&l.k) + bias(&l.v) + bias(&l.o);
        step_bytes += bias(&l.gate) + bias(&l.up) + bias(&l.down);
    }
    gpu.sync()?;
    Ok(CudaWeights {
        cfg: cfg.clone(),
        embed,
        lm_head,
        layers,
        final_norm,
        inv_freq,
        step_bytes,
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}
