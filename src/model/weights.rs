//! Model weights as stored: safetensors files (single or sharded through
//! `model.safetensors.index.json`) memory-mapped, gathered into per-layer structs whose shapes are
//! checked against the config. No tensor is converted or copied at load.
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::tensor::{Backing, DType, HostTensor};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A projection `y = x·Wᵀ (+ b)`; `weight` is `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: HostTensor,
    pub bias: Option<HostTensor>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_norm: HostTensor,     // [hidden]
    pub q: Linear,                  // [heads*head_dim, hidden]
    pub k: Linear,                  // [kv_heads*head_dim, hidden]
    pub v: Linear,                  // [kv_heads*head_dim, hidden]
    pub o: Linear,                  // [hidden, heads*head_dim]
    pub q_norm: Option<HostTensor>, // [head_dim] (Qwen3)
    pub k_norm: Option<HostTensor>, // [head_dim] (Qwen3)
    pub post_attn_norm: HostTensor, // [hidden]
    pub gate: Linear,               // [intermediate, hidden]
    pub up: Linear,                 // [intermediate, hidden]
    pub down: Linear,               // [hidden, intermediate]
}

/// All weights of a decoder, as stored.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub embed: HostTensor, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub norm: HostTensor,    // [hidden]
    pub lm_head: HostTensor, // [vocab, hidden] (the embedding when tied)
}

impl ModelWeights {
    /// Bytes of every weight a decode step reads once (the lm head once even when tied).
    pub fn bytes_per_step(&self) -> usize {
        let lin =
            |l: &Linear| l.weight.bytes().len() + l.bias.as_ref().map_or(0, |b| b.bytes().len());
        let mut n = self.norm.bytes().len() + self.lm_head.bytes().len();
        for l in &self.layers {
            n += l.input_norm.bytes().len() + l.post_attn_norm.bytes().len();
            n += lin(&l.q)
                + lin(&l.k)
                + lin(&l.v)
                + lin(&l.o)
                + lin(&l.gate)
                + lin(&l.up)
                + lin(&l.down);
        }
        n
    }

    /// Gathers the weights from a name → tensor map using HF's names
    /// (`model.layers.{i}.self_attn.q_proj.weight`, …) and checks every shape.
    pub fn from_tensors(cfg: &ModelConfig, mut t: HashMap<String, HostTensor>) -> Result<Self> {
        let h = cfg.hidden_size;
        let mut take = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            let x = t
                .remove(name)
                .ok_or_else(|| Error::Weights(format!("tensor `{name}` is missing")))?;
            if x.shape != shape {
                return Err(Error::Weights(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} from the config",
                    x.shape
                )));
            }
            Ok(x)
        };
        let embed = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                Ok(Linear {
                    weight: take(&format!("{p}.{name}.weight"), &[out, inp])?,
                    bias: if bias {
                        Some(take(&format!("{p}.{name}.bias"), &[out])?)
                    } else {
                        None
                    },
                })
            };
            let (qd, kvd, im) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
            let q = lin("self_attn.q_proj", qd, h, cfg.qkv_bias)?;
            let k = lin("self_attn.k_proj", kvd, h, cfg.qkv_bias)?;
            let v = lin("self_attn.v_proj", kvd, h, cfg.qkv_bias)?;
            let o = lin("self_attn.o_proj", h, qd, cfg.o_bias)?;
            let gate = lin("mlp.gate_proj", im, h, cfg.mlp_bias)?;
            let up = lin("mlp.up_proj", im, h, cfg.mlp_bias)?;
            let down = lin("mlp.down_proj", h, im, cfg.mlp_bias)?;
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(take(
                        &format!("{p}.self_attn.q_norm.weight"),
                        &[cfg.head_dim],
                    )?),
                    Some(take(
                        &format!("{p}.self_attn.k_norm.weight"),
                        &[cfg.head_dim],
                    )?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                input_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attn_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                q,
                k,
                v,
                o,
                q_norm,
                k_norm,
                gate,
                up,
                down,
            });
        }
        let norm = take("model.norm.weight", &[h])?;
        let lm_head = match t.remove("lm_head.weight") {
            Some(x) if !cfg.tie_word_embeddings => {
                if x.shape != [cfg.vocab_size, h] {
                    return Err(Error::Weights(format!(
                        "tensor `lm_head.weight` has shape {:?}, expected {:?} from the config",
                        x.shape,
                        [cfg.vocab_size, h]
                    )));
                }
                x
            }
            _ if cfg.tie_word_embeddings => embed.clone(),
            _ => {
                return Err(Error::Weights(
                    "tensor `lm_head.weight` is missing and `tie_word_embeddings` is false".into(),
                ))
            }
        };
        for w in [&embed, &norm, &lm_head] {
            if w.dtype.block_elems() != 1 && w.name.contains("norm") {
                return Err(Error::Weights(format!(
                    "tensor `{}`: norms must be float",
                    w.name
                )));
            }
        }
        Ok(ModelWeights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

fn st_dtype(name: &str, d: safetensors::Dtype) -> Result<DType> {
    match d {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::Weights(format!(
            "tensor `{name}` has unsupported dtype {other:?} (supported: F32, F16, BF16)"
        ))),
    }
}

/// Memory-maps one safetensors file and lists its tensors (views into the map).
pub fn load_safetensors_file(path: &Path) -> Result<Vec<HostTensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; the file is not expected to change while we run (as with
    // every memory-mapped model loader).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
        Error::Weights(format!(
            "{}: not a valid safetensors file: {e}",
            path.display()
        ))
    })?;
    let data_start = 8 + header_len;
    let backing = Backing::Mmap(Arc::new(mmap));
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let in_file = |e: Error| e.in_file(path);
        let dtype = st_dtype(&name, info.dtype).map_err(in_file)?;
        let (s, e) = info.data_offsets;
        let t = HostTensor::new(
            &name,
            dtype,
            info.shape.clone(),
            backing.clone(),
            data_start + s,
            e - s,
        )
        .map_err(in_file)?;
        out.push(t);
    }
    Ok(out)
}

/// The safetensors files of a HF model directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Weights(format!("{}: malformed JSON: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::Weights(format!("{}: missing object `weight_map`", index.display()))
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| {
                Error::Weights(format!(
                    "{}: `weight_map.{tensor}` is not a file name",
                    index.display()
                ))
            })?;
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Weights(format!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )))
}

/// Loads every tensor of a HF model directory into a name → tensor map.
pub fn load_dir_tensors(dir: &Path) -> Result<HashMap<String, HostTensor>> {
    let mut map = HashMap::new();
    for f in safetensors_files(dir)? {
        for t in load_safetensors_file(&f)? {
            map.insert(t.name.clone(), t);
        }
    }
    Ok(map)
}
