//! One typed model configuration, read from a Hugging Face `config.json` (transformers 4.x and
//! 5.x spellings) or built by the GGUF loader. Unsupported architectures and options are errors
//! that name the field and value.
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The decoder families the engine runs. They share one forward pass and differ in biases,
/// q/k normalisation and sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

/// RoPE frequency scaling (HF `rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: frequencies blended between interpolation and extrapolation by a linear ramp over
    /// the dimensions, and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_position_embeddings: f64,
        truncate: bool,
    },
    /// Dynamic NTK: transformers recomputes the frequencies only once a sequence grows past
    /// `max_position_embeddings`, which rear never allows, so within its limits this is the
    /// default RoPE.
    Dynamic {
        factor: f64,
    },
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// o projection carries a bias.
    pub o_bias: bool,
    /// gate/up/down projections carry a bias.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding attention window per layer (keys with `q_pos - k_pos < window`), `None` = full.
    pub sliding_window: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn req_usize(v: &Value, key: &str) -> Result<usize> {
    let x = field(v, key).ok_or_else(|| Error::Config(format!("missing field `{key}`")))?;
    x.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| Error::Config(format!("field `{key}` must be a positive integer, got {x}")))
}

fn opt_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match field(v, key) {
        None => Ok(None),
        Some(_) => req_usize(v, key).map(Some),
    }
}

fn opt_f64(v: &Value, key: &str) -> Result<Option<f64>> {
    match field(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("field `{key}` must be a number, got {x}"))),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>> {
    match field(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("field `{key}` must be true or false, got {x}"))),
    }
}

/// Token ids given as an int or a list of ints (HF allows both for `eos_token_id`).
pub fn token_id_list(v: &Value, key: &str) -> Result<Vec<u32>> {
    let bad = || {
        Error::Config(format!(
            "field `{key}` must be a token id or a list of token ids"
        ))
    };
    match field(v, key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|n| n as u32).ok_or_else(bad))
            .collect(),
        Some(x) => x.as_u64().map(|n| vec![n as u32]).ok_or_else(bad),
    }
}

impl ModelConfig {
    /// Reads `config.json` from `dir` and, when present, EOS ids from `generation_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: malformed JSON: {e}", path.display())))?;
        let mut cfg = Self::from_json(&v)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip(e))))?;
        let gen_path = dir.join("generation_config.json");
        let gen_text = match std::fs::read_to_string(&gen_path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&gen_path, e)),
        };
        if let Some(text) = gen_text {
            let g: Value = serde_json::from_str(&text).map_err(|e| {
                Error::Config(format!("{}: malformed JSON: {e}", gen_path.display()))
            })?;
            let eos = token_id_list(&g, "eos_token_id")
                .map_err(|e| Error::Config(format!("{}: {}", gen_path.display(), strip(e))))?;
            // As HF generate(): when generation_config.json exists, its EOS ids (possibly none)
            // replace config.json's.
            cfg.eos_token_ids = eos;
            if cfg.bos_token_id.is_none() {
                cfg.bos_token_id = token_id_list(&g, "bos_token_id")?.first().copied();
            }
        }
        Ok(cfg)
    }

    /// Parses a config.json value.
    pub fn from_json(v: &Value) -> Result<Self> {
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .or_else(|| {
                field(v, "model_type")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .ok_or_else(|| Error::Config("missing field `architectures`".into()))?;
        let arch = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            other => {
                return Err(Error::Config(format!(
                    "unsupported architecture `{other}` (supported: LlamaForCausalLM, \
                     MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
                )))
            }
        };
        if let Some(act) = field(v, "hidden_act").or_else(|| field(v, "hidden_activation")) {
            if act.as_str() != Some("silu") {
                return Err(Error::Config(format!(
                    "unsupported `hidden_act` {act} (only \"silu\")"
                )));
            }
        }
        let hidden_size = req_usize(v, "hidden_size")?;
        let num_heads = req_usize(v, "num_attention_heads")?;
        let num_kv_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(Error::Config(format!(
                "`num_attention_heads` {num_heads} is not a multiple of `num_key_value_heads` {num_kv_heads}"
            )));
        }
        let head_dim = match opt_usize(v, "head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(Error::Config(format!(
                        "`hidden_size` {hidden_size} is not a multiple of `num_attention_heads` {num_heads}"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::Config(format!(
                "`head_dim` {head_dim} must be even for RoPE"
            )));
        }
        let num_layers = req_usize(v, "num_hidden_layers")?;
        let max_pos = opt_usize(v, "max_position_embeddings")?.unwrap_or(2048);
        let (rope_theta, rope_scaling) = parse_rope(v, max_pos)?;
        let attention_bias = opt_bool(v, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Mistral => (false, false),
            Arch::Llama | Arch::Qwen3 => (attention_bias, attention_bias),
        };
        let mlp_bias = arch == Arch::Llama && opt_bool(v, "mlp_bias")?.unwrap_or(false);
        let sliding_window = parse_sliding(v, arch, num_layers)?;
        let tie = opt_bool(v, "tie_word_embeddings")?.unwrap_or(false);
        let eps = opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-6);
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::Config(format!(
                "`rms_norm_eps` must be a non-negative number, got {eps}"
            )));
        }
        Ok(ModelConfig {
            arch,
            vocab_size: req_usize(v, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(v, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: eps as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            tie_word_embeddings: tie,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: arch == Arch::Qwen3,
            sliding_window,
            bos_token_id: token_id_list(v, "bos_token_id")?.first().copied(),
            eos_token_ids: token_id_list(v, "eos_token_id")?,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), as HF computes them, in f32.
    /// Factor on RoPE's cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn rope_attention_scale(&self) -> f32 {
        match self.rope_scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// RoPE inverse frequencies (`[head_dim / 2]`), computed as transformers' rotary module
    /// computes them: the same float32 operations in the same order (Python scalars rounded to
    /// f32 where torch rounds them, `scalar / tensor` as `reciprocal · scalar`), with `base ** e`
    /// correctly rounded (torch's f32 `pow` agrees with that in all but rare last-bit cases).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let half = d / 2;
        // `base ** (arange(0, d, 2).float() / d)` in f32.
        let pow = |base: f64| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    let e = (2 * i) as f32 / d as f32;
                    ((base as f32) as f64).powf(e as f64) as f32
                })
                .collect()
        };
        let default = |base: f64| -> Vec<f32> { pow(base).iter().map(|&p| 1.0 / p).collect() };
        match &self.rope_scaling {
            RopeScaling::Default => default(self.rope_theta),
            RopeScaling::Dynamic { factor } => {
                // `_compute_dynamic_ntk_parameters` at seq_len = max_position_embeddings.
                let (dim, m) = (d as f64, self.max_position_embeddings as f64);
                let base =
                    self.rope_theta * ((factor * m / m) - (factor - 1.0)).powf(dim / (dim - 2.0));
                default(base)
            }
            RopeScaling::Linear { factor } => default(self.rope_theta)
                .iter()
                .map(|&f| f / *factor as f32)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = (old / low_freq_factor) as f32;
                let high_wavelen = (old / high_freq_factor) as f32;
                let (factor, lff) = (*factor as f32, *low_freq_factor as f32);
                let span = (high_freq_factor - low_freq_factor) as f32;
                default(self.rope_theta)
                    .iter()
                    .map(|&f| {
                        // `scalar / tensor` is `tensor.reciprocal() * scalar` in torch.
                        let wavelen = (1.0 / f) * (2.0 * std::f64::consts::PI) as f32;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = ((1.0 / wavelen) * *old as f32 - lff) / span;
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                original_max_position_embeddings: old,
                truncate,
                ..
            } => {
                // `_compute_yarn_parameters`: the correction range in Python floats, the rest in f32.
                let dim = d as f64;
                let theta = self.rope_theta;
                let corr = |rot: f64| {
                    (dim * (old / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (lo, span) = (low as f32, (high - low) as f32);
                let factor = *factor as f32;
                pow(theta)
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (factor * p);
                        let ramp = ((i as f32 - lo) / span).clamp(0.0, 1.0);
                        let w = 1.0 - ramp;
                        interpolation * (1.0 - w) + extrapolation * w
                    })
                    .collect()
            }
        }
    }
}

fn strip(e: Error) -> String {
    match e {
        Error::Config(s) => s,
        other => other.to_string(),
    }
}

/// RoPE base and scaling from either `rope_parameters` (transformers 5) or the older
/// `rope_theta` + `rope_scaling` pair.
/// `max_pos` is `max_position_embeddings`, the default of `original_max_position_embeddings`
/// (after a top-level `original_max_position_embeddings`, as transformers' standardisation).
fn parse_rope(v: &Value, max_pos: usize) -> Result<(f64, RopeScaling)> {
    let params = field(v, "rope_parameters").or_else(|| field(v, "rope_scaling"));
    let theta = match params
        .map(|p| opt_f64(p, "rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(t) => t,
        None => opt_f64(v, "rope_theta")?.unwrap_or(10000.0),
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(Error::Config(format!(
            "`rope_theta` must be a positive number, got {theta}"
        )));
    }
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    if !p.is_object() {
        return Err(Error::Config(format!(
            "`rope_scaling` must be an object, got {p}"
        )));
    }
    let kind = field(p, "rope_type")
        .or_else(|| field(p, "type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let need = |key: &str| -> Result<f64> {
        opt_f64(p, key)?.ok_or_else(|| Error::Config(format!("rope type `{kind}` needs `{key}`")))
    };
    let original_max = || -> Result<f64> {
        match opt_f64(v, "original_max_position_embeddings")? {
            Some(o) => Ok(o),
            None => Ok(opt_f64(p, "original_max_position_embeddings")?.unwrap_or(max_pos as f64)),
        }
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
        },
        "yarn" => {
            let old = original_max()?;
            if !(old > 0.0) {
                return Err(Error::Config(format!(
                    "rope `original_max_position_embeddings` must be positive, got {old}"
                )));
            }
            // transformers: a missing factor is max_position_embeddings / original.
            let factor = opt_f64(p, "factor")?.unwrap_or(max_pos as f64 / old);
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match opt_f64(p, "attention_factor")? {
                Some(a) => a,
                None => match (opt_f64(p, "mscale")?, opt_f64(p, "mscale_all_dim")?) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        mscale(factor, m) / mscale(factor, ma)
                    }
                    _ => mscale(factor, 1.0),
                },
            };
            // `x or default` in transformers: 0 and null both take the default.
            let or = |key: &str, d: f64| -> Result<f64> {
                Ok(opt_f64(p, key)?.filter(|&x| x != 0.0).unwrap_or(d))
            };
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast: or("beta_fast", 32.0)?,
                beta_slow: or("beta_slow", 1.0)?,
                original_max_position_embeddings: old,
                truncate: field(p, "truncate")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(true),
            }
        }
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original_max()?,
        },
        other => {
            return Err(Error::Config(format!(
            "unsupported rope type `{other}` (supported: default, linear, llama3, yarn, dynamic)"
        )))
        }
    };
    if let RopeScaling::Linear { factor }
    | RopeScaling::Llama3 { factor, .. }
    | RopeScaling::Yarn { factor, .. }
    | RopeScaling::Dynamic { factor } = &scaling
    {
        if !(*factor > 0.0) {
            return Err(Error::Config(format!(
                "rope `factor` must be positive, got {factor}"
            )));
        }
    }
    Ok((theta, scaling))
}

fn parse_sliding(v: &Value, arch: Arch, num_layers: usize) -> Result<Vec<Option<usize>>> {
    let window = opt_usize(v, "sliding_window")?;
    let full = vec![None; num_layers];
    match arch {
        Arch::Llama => Ok(full),
        Arch::Mistral => Ok(vec![window; num_layers]),
        Arch::Qwen2 | Arch::Qwen3 => {
            // As transformers: the window applies only with `use_sliding_window`.
            let window = if opt_bool(v, "use_sliding_window")?.unwrap_or(false) {
                window
            } else {
                None
            };
            if let Some(types) = field(v, "layer_types").and_then(|t| t.as_array()) {
                if types.len() != num_layers {
                    return Err(Error::Config(format!(
                        "`layer_types` has {} entries for {num_layers} layers",
                        types.len()
                    )));
                }
                return types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(None),
                        Some("sliding_attention") => Ok(window),
                        _ => Err(Error::Config(format!("unsupported layer type {t}"))),
                    })
                    .collect();
            }
            if opt_bool(v, "use_sliding_window")?.unwrap_or(false) {
                // 0 is valid here (every layer slides).
                let from = match field(v, "max_window_layers") {
                    None => num_layers,
                    Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
                        Error::Config(format!(
                            "field `max_window_layers` must be an integer, got {x}"
                        ))
                    })?,
                };
                return Ok((0..num_layers)
                    .map(|l| if l >= from { window } else { None })
                    .collect());
            }
            Ok(full)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
               "num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":2,"vocab_size":100})
    }

    #[test]
    fn max_window_layers_may_be_zero() {
        let mut q = base();
        q["architectures"] = json!(["Qwen2ForCausalLM"]);
        q["max_window_layers"] = json!(0);
        assert_eq!(
            ModelConfig::from_json(&q).unwrap().sliding_window,
            vec![None, None]
        );
        q["use_sliding_window"] = json!(true);
        q["sliding_window"] = json!(8);
        assert_eq!(
            ModelConfig::from_json(&q).unwrap().sliding_window,
            vec![Some(8), Some(8)]
        );
    }

    #[test]
    fn reads_both_rope_spellings() {
        let mut a = base();
        a["rope_parameters"] = json!({"rope_type":"linear","factor":2.0,"rope_theta":500.0});
        let c = ModelConfig::from_json(&a).unwrap();
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let mut b = base();
        b["rope_theta"] = json!(700.0);
        b["rope_scaling"] = json!({"type":"linear","factor":4.0});
        let c = ModelConfig::from_json(&b).unwrap();
        assert_eq!(c.rope_theta, 700.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.head_dim, 16);
    }

    /// Inverse frequencies and cos/sin factor of transformers' rotary module
    /// (tests/fixtures/rope_goldens.json, scripts/make_rope_goldens.py): default, linear, llama3
    /// with and without `original_max_position_embeddings`, four yarn variants, dynamic.
    #[test]
    fn rope_matches_transformers_goldens() {
        let g: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rope_goldens.json")).unwrap();
        let cases = g["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 9);
        let (mut exact, mut total) = (0, 0);
        for case in cases {
            let c = ModelConfig::from_json(&case["config"]).unwrap();
            let want: Vec<f32> = case["inv_freq"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got = c.rope_inv_freq();
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // torch's f32 pow is not always correctly rounded: one ulp at most.
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(
                    ulps <= 1,
                    "{:?} inv_freq[{i}]: {a} vs transformers {b}",
                    c.rope_scaling
                );
                exact += (ulps == 0) as usize;
                total += 1;
            }
            let af = case["attention_factor"].as_f64().unwrap() as f32;
            assert_eq!(c.rope_attention_scale(), af, "{:?}", c.rope_scaling);
        }
        assert!(exact * 50 >= total * 49, "{exact} of {total} bit-identical");
    }

    #[test]
    fn rejects_unknown_things_by_name() {
        let mut a = base();
        a["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_json(&a).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
        let mut b = base();
        b["rope_scaling"] = json!({"rope_type":"longrope","factor":4.0});
        let e = ModelConfig::from_json(&b).unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
        let mut c = base();
        c["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_json(&c).is_err());
    }

    #[test]
    fn llama3_rope_keeps_high_and_divides_low_frequencies() {
        let mut a = base();
        a["rope_parameters"] = json!({"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":32,"rope_theta":500000.0});
        let c = ModelConfig::from_json(&a).unwrap();
        let mut d = base();
        d["rope_theta"] = json!(500000.0);
        let plain = ModelConfig::from_json(&d).unwrap().rope_inv_freq();
        let scaled = c.rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
