//! GGUF files (v2 and v3, the `llama` architecture): header, metadata and tensor table parsed
//! over a memory map with checked arithmetic; tensors handed over as stored (F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1) or dequantized to f32 at load as gguf-py does it (Q5_0, Q5_1, Q2_K … Q6_K) under
//! their Hugging Face names and in HF's `[out, in]` order; the config from the
//! `llama.*` keys; the tokenizer rebuilt from `tokenizer.ggml.*` the way transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it; the chat template from
//! `tokenizer.chat_template`.
//!
//! Nothing read from the file is trusted: every count, length, dimension and offset is checked
//! against the bytes that remain before anything is allocated from it, so a malformed file is an
//! [`Error::Gguf`] naming the file, the key or tensor and the value, never a panic or a huge
//! allocation.
//!
//! This file holds the loader entry points: [`load_model`] and the config from the `llama.*` keys.
//! The parts: `parse` (the header, metadata and tensor table reader), `meta` (metadata values and
//! typed access to them), `names` (tensor names and the q/k un-permutation), `quants` (the
//! dequantizers of the K-quants and Q5_0 / Q5_1), `tokenizer` (the tokenizer and chat template
//! from metadata), `spm` (the SentencePiece kind of tokenizer).
//!
//! A file whose tokenizer kind rear cannot convert still loads, without a tokenizer: token ids
//! work, and text input fails with [`no_tokenizer_reason`]'s line.
mod meta;
mod names;
mod parse;
mod quants;
mod spm;
mod tokenizer;

pub use meta::{MetaArray, MetaValue};
pub use names::{gguf_tensor_name, hf_tensor_name, hf_tensors, unpermute_qk_rows};
pub use parse::{
    dtype_from_ggml, ggml_type_of, stored_type_from_ggml, GgufFile, StoredType, TensorInfo,
    DEFAULT_ALIGNMENT, MAGIC,
};
pub use quants::{dequantize, QuantType};
pub use tokenizer::{
    chat_template_from_gguf, pre_tokenizer_split, tokenizer_from_gguf, unsupported_tokenizer,
    SUPPORTED_TOKENIZERS,
};

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::weights::ModelWeights;
use crate::model::Model;
use std::path::Path;

/// The architectures this loader maps (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The model config from the `llama.*` keys (and the tensor table for `tie_word_embeddings` and
/// biases).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.architecture()?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(g.err(format!(
            "unsupported architecture `{arch}` (general.architecture; supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let k = |name: &str| format!("{arch}.{name}");
    if let Some(t) = g.tensor_infos().iter().find(|t| t.name.contains("_exps.")) {
        return Err(g.err(format!(
            "tensor `{}`: mixture-of-experts layers are not supported",
            t.name
        )));
    }
    let hidden_size = g.req_usize(&k("embedding_length"))?;
    let num_layers = g.req_usize(&k("block_count"))?;
    // Each layer has at least 9 tensors: a block count the tensor table cannot hold is an error
    // before anything is sized by it.
    if num_layers > g.tensor_infos().len() / 9 {
        return Err(g.err(format!(
            "`{}` is {num_layers} but the file has only {} tensors",
            k("block_count"),
            g.tensor_infos().len()
        )));
    }
    let intermediate_size = g.req_usize(&k("feed_forward_length"))?;
    let num_heads = g.req_usize(&k("attention.head_count"))?;
    let num_kv_heads = g
        .usize_key(&k("attention.head_count_kv"))?
        .unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(g.err(format!(
            "`{}` {num_heads} is not a multiple of `{}` {num_kv_heads}",
            k("attention.head_count"),
            k("attention.head_count_kv")
        )));
    }
    let rope_dim = g.usize_key(&k("rope.dimension_count"))?;
    let head_dim = match (g.usize_key(&k("attention.key_length"))?, rope_dim) {
        (Some(d), _) => d,
        (None, Some(d)) => d,
        (None, None) => {
            if hidden_size % num_heads != 0 {
                return Err(g.err(format!(
                    "`{}` {hidden_size} is not a multiple of `{}` {num_heads}",
                    k("embedding_length"),
                    k("attention.head_count")
                )));
            }
            hidden_size / num_heads
        }
    };
    if let Some(v) = g.usize_key(&k("attention.value_length"))? {
        if v != head_dim {
            return Err(g.err(format!(
                "`{}` {v} differs from the key length {head_dim}: not supported",
                k("attention.value_length")
            )));
        }
    }
    if let Some(r) = rope_dim {
        if r != head_dim {
            return Err(g.err(format!(
                "`{}` {r} differs from the head size {head_dim}: partial rotary embeddings are not supported",
                k("rope.dimension_count")
            )));
        }
    }
    if head_dim % 2 != 0 {
        return Err(g.err(format!("head size {head_dim} must be even for RoPE")));
    }
    // Sizes every later product is taken over; real models are far below this.
    const MAX_DIM: usize = 1 << 24;
    for (key, v) in [
        (k("embedding_length"), hidden_size),
        (k("feed_forward_length"), intermediate_size),
        (k("attention.head_count"), num_heads),
        ("head size".to_string(), head_dim),
    ] {
        if v > MAX_DIM {
            return Err(g.err(format!(
                "`{key}` is {v}, larger than rear supports ({MAX_DIM})"
            )));
        }
    }
    if num_heads * head_dim > MAX_DIM {
        return Err(g.err(format!(
            "{num_heads} heads × head size {head_dim} is larger than rear supports ({MAX_DIM})"
        )));
    }
    let eps_key = k("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = g
        .f64_key(&eps_key)?
        .ok_or_else(|| g.err(format!("metadata key `{eps_key}` is missing")))?;
    if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
        return Err(g.err(format!(
            "metadata key `{eps_key}` is {rms_norm_eps}, expected a positive number"
        )));
    }
    let rope_theta = g.f64_key(&k("rope.freq_base"))?.unwrap_or(10000.0);
    if !(rope_theta > 0.0 && rope_theta.is_finite()) {
        return Err(g.err(format!(
            "metadata key `{}` is {rope_theta}, expected a positive number",
            k("rope.freq_base")
        )));
    }
    let rope_scaling = match g.str_key(&k("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => {
            let key = k("rope.scaling.factor");
            let factor = g.f64_key(&key)?.ok_or_else(|| {
                g.err(format!(
                    "`{}` is \"linear\" but `{key}` is missing",
                    k("rope.scaling.type")
                ))
            })?;
            if factor <= 0.0 {
                return Err(g.err(format!(
                    "metadata key `{key}` is {factor}, expected a positive number"
                )));
            }
            if factor == 1.0 {
                RopeScaling::Default
            } else {
                RopeScaling::Linear { factor }
            }
        }
        Some(other) => {
            return Err(g.err(format!(
                "unsupported rope scaling `{other}` (`{}`; supported: none, linear)",
                k("rope.scaling.type")
            )))
        }
    };
    if g.has_tensor("rope_freqs.weight") {
        return Err(g.err(
            "tensor `rope_freqs.weight` (per-frequency RoPE factors, Llama 3.1-style scaling) is not supported"
                .into(),
        ));
    }
    let n_tokens = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => Some(a.len()),
        _ => None,
    };
    let vocab_size = match g.usize_key(&k("vocab_size"))? {
        Some(v) => v,
        None => match n_tokens {
            Some(n) if n > 0 => n,
            _ => match g
                .tensor_infos()
                .iter()
                .find(|t| t.name == "token_embd.weight")
            {
                Some(t) if t.dims.len() == 2 => t.dims[1],
                _ => {
                    return Err(g.err(format!(
                        "cannot tell the vocabulary size: no `{}`, no `tokenizer.ggml.tokens`",
                        k("vocab_size")
                    )))
                }
            },
        },
    };
    let max_position_embeddings = g.req_usize(&k("context_length"))?;
    let bos_token_id = g.token_id_key("tokenizer.ggml.bos_token_id", n_tokens)?;
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = g.token_id_key(key, n_tokens)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let qkv_bias = g.has_tensor("blk.0.attn_q.bias");
    let o_bias = g.has_tensor("blk.0.attn_output.bias");
    let mlp_bias = g.has_tensor("blk.0.ffn_gate.bias");
    Ok(ModelConfig {
        arch: Arch::Llama,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: rms_norm_eps as f32,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: !g.has_tensor("output.weight"),
        qkv_bias,
        o_bias,
        mlp_bias,
        qk_norm: false,
        sliding_window: vec![None; num_layers],
        bos_token_id,
        eos_token_ids,
    })
}

/// Loads a GGUF model file: config, weights (as stored, q/k un-permuted), tokenizer, template.
pub fn load_model(path: &Path) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let config = config_from_gguf(&g)?;
    let tensors = hf_tensors(&g, &config)?;
    let weights = ModelWeights::from_tensors(&config, tensors).map_err(|e| match e {
        Error::Weights(m) => g.err(with_gguf_names(&m)),
        other => other,
    })?;
    // A tokenizer kind rear does not convert leaves the model without one (token ids still work).
    let tokenizer = match unsupported_tokenizer(&g)? {
        Some(_) => None,
        None => tokenizer_from_gguf(&g)?,
    };
    let template = chat_template_from_gguf(&g, tokenizer.as_ref())?;
    Ok(Model {
        path: path.to_owned(),
        config,
        weights,
        tokenizer,
        template,
    })
}

/// Why a GGUF model file loaded without a tokenizer, as one line naming the file and its
/// `tokenizer.ggml.model`, for an error on text input (callers add what to give instead); `None` when `path` is not such a file (not
/// a GGUF file, no tokenizer metadata, or a tokenizer rear converts).
pub fn no_tokenizer_reason(path: &Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    let g = GgufFile::open(path).ok()?;
    let why = unsupported_tokenizer(&g).ok()??;
    Some(format!("{}: cannot tokenize text: {why}", path.display()))
}

/// Adds the GGUF name after each HF tensor name quoted in a weights message.
fn with_gguf_names(m: &str) -> String {
    let mut out = String::with_capacity(m.len() + 32);
    let mut rest = m;
    while let Some(start) = rest.find('`') {
        let Some(len) = rest[start + 1..].find('`') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start + len + 2]);
        if let Some(gn) = gguf_tensor_name(name) {
            out.push_str(&format!(" (GGUF `{gn}`)"));
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_gain_gguf_names() {
        let m = with_gguf_names("tensor `model.layers.0.mlp.down_proj.weight` is missing");
        assert_eq!(m, "tensor `model.layers.0.mlp.down_proj.weight` (GGUF `blk.0.ffn_down.weight`) is missing");
    }
}
