//! Tensor names: llama GGUF names to Hugging Face names and back, and the q/k row
//! un-permutation that turns llama.cpp's interleaved rotary layout back into HF's.
use super::parse::GgufFile;
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::tensor::HostTensor;
use std::collections::HashMap;

/// The HF name of a llama GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for a name this loader does not map.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor name (inverse of [`hf_tensor_name`]), for messages.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let g = match part {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// The row order that undoes llama.cpp's q/k permutation for one projection of `n_head` heads of
/// `head_dim` rows: row `h·d + j·d/2 + i` of the HF tensor is row `h·d + 2i + j` of the GGUF one
/// (llama.cpp interleaves the two rotary halves so that ggml's RoPE rotates adjacent pairs; HF
/// rotates halves). The same as transformers' `_reverse_permute_weights`.
pub fn unpermute_qk_rows(n_head: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut perm = Vec::with_capacity(n_head * head_dim);
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                perm.push(h * head_dim + 2 * i + j);
            }
        }
    }
    perm
}

fn unpermute(
    g: &GgufFile,
    t: HostTensor,
    n_head: usize,
    head_dim: usize,
    gguf_name: &str,
) -> Result<HostTensor> {
    let rows = n_head.saturating_mul(head_dim);
    // Only once the tensor (bounded by the file) has that many rows is the permutation built.
    let fits = !t.shape.is_empty() && t.shape.len() <= 2 && t.shape[0] == rows;
    let perm = if fits {
        unpermute_qk_rows(n_head, head_dim)
    } else {
        Vec::new()
    };
    match t.shape.len() {
        2 if fits => t.permute_rows(&perm),
        1 if fits => {
            // A bias: one element per row.
            let mut m = t;
            m.shape = vec![rows, 1];
            let mut p = m.permute_rows(&perm)?;
            p.shape = vec![rows];
            Ok(p)
        }
        _ => Err(g.err(format!(
            "tensor `{gguf_name}` has shape {:?} (GGUF dims {:?}), expected {rows} rows ({n_head} heads × {head_dim})",
            t.shape,
            t.shape.iter().rev().collect::<Vec<_>>()
        ))),
    }
}

/// Every tensor under its HF name, q/k rows un-permuted; unknown tensors are left out.
pub fn hf_tensors(g: &GgufFile, cfg: &ModelConfig) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::new();
    for info in g.tensor_infos() {
        let Some(hf) = hf_tensor_name(&info.name) else {
            continue;
        };
        let t = g.host_tensor(info, &hf)?;
        let t = if info.name.contains(".attn_q.") {
            unpermute(g, t, cfg.num_heads, cfg.head_dim, &info.name)?
        } else if info.name.contains(".attn_k.") {
            unpermute(g, t, cfg.num_kv_heads, cfg.head_dim, &info.name)?
        } else {
            t
        };
        out.insert(hf, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.12.attn_q.weight",
            "blk.0.attn_output.bias",
            "blk.3.ffn_down.weight",
            "blk.29.ffn_norm.weight",
            "blk.1.attn_norm.weight",
        ] {
            let hf = hf_tensor_name(g).unwrap();
            assert_eq!(gguf_tensor_name(&hf).as_deref(), Some(g), "{hf}");
        }
        assert_eq!(
            hf_tensor_name("blk.4.attn_k.weight").unwrap(),
            "model.layers.4.self_attn.k_proj.weight"
        );
        assert!(hf_tensor_name("rope_freqs.weight").is_none());
        assert!(hf_tensor_name("blk.x.attn_q.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2): HF row (h, j, i) → GGUF row (h, i, j).
        let (n_head, d) = (3, 8);
        let mut gguf_of_hf = vec![0; n_head * d];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..d / 2 {
                    gguf_of_hf[h * d + j * d / 2 + i] = h * d + 2 * i + j;
                }
            }
        }
        assert_eq!(unpermute_qk_rows(n_head, d), gguf_of_hf);
    }
}
