//! The tokenizer class transformers 5's `AutoTokenizer.from_pretrained(dir)` picks for a model
//! directory (`models/auto/tokenization_auto.py`), and the backend each class builds from
//! tokenizer.json: `TokenizersBackend` loads the file as it is; classes with their own `__init__`
//! (LlamaTokenizer, CodeLlamaTokenizer, Qwen2Tokenizer, GPT2Tokenizer, GemmaTokenizer) keep only
//! its vocab, merges and post-processor (`TokenizersBackend.convert_to_native_format`) and set
//! their own model options, normalizer, pre-tokenizer and decoder. Also the class defaults of the
//! special tokens and `TokenizersBackend._patch_mistral_regex`.
use std::path::Path;

use serde_json::{json, Map, Value};
use std::str::FromStr;

use tokenizers::{PreTokenizerWrapper, Tokenizer};

use super::TokenizerConfig;
use crate::error::{Error, Result};

/// A transformers tokenizer class, as far as it changes what `encode`/`decode` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerClass {
    /// `TokenizersBackend` (alias `PreTrainedTokenizerFast`), and every class without a port
    /// here: tokenizer.json as it is.
    Backend,
    Llama,
    CodeLlama,
    Qwen2,
    Gpt2,
    Gemma,
}

impl TokenizerClass {
    /// The class name transformers reports (`type(tokenizer).__name__`).
    pub fn hf_name(self) -> &'static str {
        match self {
            TokenizerClass::Backend => "TokenizersBackend",
            TokenizerClass::Llama => "LlamaTokenizer",
            TokenizerClass::CodeLlama => "CodeLlamaTokenizer",
            TokenizerClass::Qwen2 => "Qwen2Tokenizer",
            TokenizerClass::Gpt2 => "GPT2Tokenizer",
            TokenizerClass::Gemma => "GemmaTokenizer",
        }
    }

    /// `tokenizer_class_from_name`, for the classes ported here (a `...Fast` name is the same
    /// class in transformers 5). Every other name (known to transformers or not, `PythonBackend`,
    /// `BloomTokenizerFast`, ...) ends up as `TokenizersBackend` here.
    fn from_name(name: &str) -> Self {
        match name.strip_suffix("Fast").unwrap_or(name) {
            "LlamaTokenizer" => TokenizerClass::Llama,
            "CodeLlamaTokenizer" => TokenizerClass::CodeLlama,
            "Qwen2Tokenizer" => TokenizerClass::Qwen2,
            "GPT2Tokenizer" => TokenizerClass::Gpt2,
            "GemmaTokenizer" => TokenizerClass::Gemma,
            _ => TokenizerClass::Backend,
        }
    }

    /// The special-token defaults of the class `__init__` (used for the keys tokenizer_config.json
    /// does not have; a `null` there keeps the token unset).
    pub(crate) fn default_tokens(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TokenizerClass::Backend => &[],
            TokenizerClass::Llama => &[
                ("unk_token", "<unk>"),
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
            ],
            TokenizerClass::CodeLlama => &[
                ("unk_token", "<unk>"),
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
                ("prefix_token", "▁<PRE>"),
                ("middle_token", "▁<MID>"),
                ("suffix_token", "▁<SUF>"),
                ("eot_token", "▁<EOT>"),
                ("fill_token", "<FILL_ME>"),
            ],
            TokenizerClass::Qwen2 => &[
                ("unk_token", "<|endoftext|>"),
                ("eos_token", "<|endoftext|>"),
                ("pad_token", "<|endoftext|>"),
            ],
            TokenizerClass::Gpt2 => &[
                ("unk_token", "<|endoftext|>"),
                ("bos_token", "<|endoftext|>"),
                ("eos_token", "<|endoftext|>"),
            ],
            TokenizerClass::Gemma => &[
                ("unk_token", "<unk>"),
                ("bos_token", "<bos>"),
                ("eos_token", "<eos>"),
                ("pad_token", "<pad>"),
                ("mask_token", "<mask>"),
            ],
        }
    }

    /// The class passes `add_bos_token`/`add_eos_token` to `TokenizersBackend.__init__` itself
    /// (tokenizer_config.json's values are dropped when there is a tokenizer.json), which then
    /// rebuilds the post-processor.
    pub(crate) fn explicit_add_bos_eos(self) -> Option<(bool, bool)> {
        match self {
            TokenizerClass::CodeLlama => Some((true, false)),
            _ => None,
        }
    }
}

/// What `AutoTokenizer` reads from `config.json` (all absent without one).
#[derive(Clone, Debug, Default)]
pub struct ModelDirInfo {
    /// The directory as given (`config._name_or_path`).
    pub name_or_path: String,
    pub has_config: bool,
    pub model_type: Option<String>,
    pub tokenizer_class: Option<String>,
    pub transformers_version: Option<String>,
}

impl ModelDirInfo {
    /// Reads `dir/config.json` when there is one.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let mut info = ModelDirInfo {
            name_or_path: dir.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(info);
        }
        let v = super::config::read_json(&path)?;
        info.has_config = true;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        info.model_type = s("model_type");
        info.tokenizer_class = s("tokenizer_class");
        info.transformers_version = s("transformers_version");
        Ok(info)
    }
}

/// `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS` (transformers 5.25).
const INCORRECT_HUB_CLASS: &[&str] = &[
    "arctic",
    "chatlm",
    "ernie4_5",
    "ernie4_5_moe",
    "fuyu",
    "h2ovl_chat",
    "hyperclovax",
    "hyperclovax_vlm",
    "hyperclovax_vision_v2",
    "internlm2",
    "internlm3",
    "iquestcoder",
    "jamba",
    "llava",
    "llava_next",
    "minicpm3",
    "minicpmv",
    "minimax_m2",
    "modernbert",
    "modernbert-decoder",
    "molmo",
    "molmo2",
    "nemotron",
    "nvfp4",
    "opencua",
    "openvla",
    "paddleocr_vl",
    "phi3",
    "phi3_v",
    "phimoe",
    "qwen2",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen4_exp",
    "step3_vl",
    "vipllava",
    "cohere_asr",
    "siglip2",
    "smolvlm",
];

/// `MODEL_IDS_TO_TOKENIZERS_BACKEND`: `config._name_or_path` patterns (fnmatch, lower case).
const IDS_TO_BACKEND: &[&str] = &[
    "deepseek-ai/deepseek-r1-distill-llama-*",
    "deepseek-ai/deepseek-coder-*",
    "allenai/dolma2-tokenizer",
    "google/umt5-small",
    "naver-clova-ix/donut-*",
    "salesforce/blip2-opt-*",
    "salesforce/blip2-flan-t5-*",
    "salesforce/instructblip-flan-t5-*",
    "stepfun-ai/step-3.7-*",
];

/// `TOKENIZER_MAPPING_NAMES[model_type]` for the model types of the families this engine runs
/// and their relatives (mistral_common not installed, so the Mistral family maps to
/// `TokenizersBackend`); `llama` has no entry. Model types of `INCORRECT_HUB_CLASS` without an
/// entry map to `TokenizersBackend`.
fn registered_class(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "qwen2"
        | "qwen2_moe"
        | "qwen2_vl"
        | "qwen2_5_vl"
        | "qwen2_audio"
        | "qwen2_5_omni"
        | "qwen3"
        | "qwen3_moe"
        | "qwen3_next"
        | "qwen3_vl"
        | "qwen3_vl_moe"
        | "qwen3_omni_moe"
        | "qwen3_asr"
        | "colqwen2"
        | "audioflamingo3"
        | "moss_transcribe_diarize" => "Qwen2Tokenizer",
        "qwen3_5" | "qwen3_5_moe" | "qwen3_5_moe_text" | "qwen3_5_text" | "qwen4_exp" => {
            "Qwen3_5Tokenizer"
        }
        "mistral" | "mistral3" | "mixtral" | "ministral" | "ministral3" | "mistral_large4" => {
            "TokenizersBackend"
        }
        "gemma" | "gemma2" | "gemma3" | "gemma3_text" | "gemma3n" | "gemma3n_text"
        | "diffusion_gemma" => "GemmaTokenizer",
        "code_llama" => "CodeLlamaTokenizer",
        "gpt2" | "blip-2" => "GPT2Tokenizer",
        "idefics" | "idefics2" => "LlamaTokenizer",
        "glm" | "glm4" | "glm4_moe" | "granite" | "granitemoe" | "granitemoehybrid"
        | "granitemoeshared" | "gpt_bigcode" | "flex_olmo" | "kimi_linear" => "TokenizersBackend",
        t if INCORRECT_HUB_CLASS.contains(&t) => "TokenizersBackend",
        _ => return None,
    })
}

/// fnmatch with `*` (any run of characters) and `?` only.
fn fnmatch(s: &str, pat: &str) -> bool {
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), pat.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while i < s.len() {
        if j < p.len() && (p[j] == '?' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '*' {
            star = Some(j);
            mark = i;
            j += 1;
        } else if let Some(st) = star {
            j = st + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    p[j..].iter().all(|&c| c == '*')
}

/// `AutoTokenizer.from_pretrained`'s choice of class. `byte_level` says whether tokenizer.json
/// contains `"ByteLevel"` (only asked when the hub class is LlamaTokenizer). Remote code
/// (`auto_map`) is never run: such a checkpoint gets the class transformers would use without
/// `trust_remote_code`, or `TokenizersBackend` where transformers would ask.
pub fn resolve_class(
    info: &ModelDirInfo,
    cfg: &TokenizerConfig,
    byte_level: &mut dyn FnMut() -> bool,
) -> TokenizerClass {
    let tc_class = cfg.get("tokenizer_class").and_then(Value::as_str);
    let auto_map = match cfg.get("auto_map") {
        Some(Value::Array(_)) => true,
        Some(Value::Object(m)) => m.get("AutoTokenizer").is_some_and(|v| !v.is_null()),
        _ => false,
    };
    let model_type = info.model_type.as_deref().unwrap_or("");
    let registered = registered_class(model_type);
    let incorrect = INCORRECT_HUB_CLASS.contains(&model_type);

    let name = info.name_or_path.to_lowercase();
    if !auto_map && IDS_TO_BACKEND.iter().any(|p| fnmatch(&name, p)) {
        return TokenizerClass::Backend;
    }
    let hub = tc_class.or(info.tokenizer_class.as_deref());
    let strip = |s: &str| s.strip_suffix("Fast").unwrap_or(s).to_string();
    if let Some(h) = hub {
        if !auto_map && strip(h) == "LlamaTokenizer" && !incorrect && byte_level() {
            return TokenizerClass::Backend;
        }
        if !auto_map && !model_type.is_empty() {
            if let Some(reg) = registered.map(strip).filter(|r| *r != strip(h)) {
                if ![
                    "TokenizersBackend",
                    "PythonBackend",
                    "PreTrainedTokenizerFast",
                    "MistralCommonBackend",
                ]
                .contains(&reg.as_str())
                {
                    let class = if incorrect { reg.as_str() } else { h };
                    return TokenizerClass::from_name(class);
                }
                return TokenizerClass::Backend;
            }
        }
    }
    if let Some(c) = tc_class {
        return TokenizerClass::from_name(c);
    }
    if let Some(c) = info.tokenizer_class.as_deref() {
        return TokenizerClass::from_name(c);
    }
    registered
        .map(TokenizerClass::from_name)
        .unwrap_or(TokenizerClass::Backend)
}

/// A pattern-less `Replace`, `Strip`, ... as the `tokenizers` JSON format writes them.
fn replace(pattern: &str, content: &str) -> Value {
    json!({"type": "Replace", "pattern": {"String": pattern}, "content": content})
}

/// The Qwen2 pre-tokenizer regex (`models/qwen2/tokenization_qwen2.py`).
const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The backend tokenizer the class builds. `json` is tokenizer.json's text; `cfg` the tokenizer
/// config with the class defaults applied. For `Backend` this is tokenizer.json as it is; the
/// other classes keep its vocab, merges and post-processor only (its added tokens come back
/// through the config's `added_tokens_decoder`).
pub fn build_backend(
    class: TokenizerClass,
    json: &str,
    cfg: &TokenizerConfig,
) -> Result<Tokenizer> {
    let err = |e: &dyn std::fmt::Display| Error::Tokenizer(format!("tokenizer.json: {e}"));
    if class == TokenizerClass::Backend {
        return Tokenizer::from_str(json).map_err(|e| err(&e));
    }
    let file: Value = serde_json::from_str(json).map_err(|e| err(&e))?;
    let model = file.get("model").unwrap_or(&Value::Null);
    // convert_to_native_format: a list vocab (Unigram) becomes {token: index}; merges as pairs.
    let vocab: Option<Map<String, Value>> = match model.get("vocab") {
        Some(Value::Object(m)) => Some(m.clone()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| {
                    let tok = match it {
                        Value::Array(pair) => pair.first()?.as_str()?,
                        Value::String(s) => s.as_str(),
                        _ => return None,
                    };
                    Some((tok.to_string(), json!(i)))
                })
                .collect(),
        ),
        _ => None,
    };
    let merges: Vec<Value> = match model.get("merges") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| match m {
                Value::String(s) => Value::Array(s.split(' ').map(|p| json!(p)).collect()),
                other => other.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let tok_str = |k: &str, default: &str| -> String {
        match cfg.get(k) {
            None => default.to_string(),
            Some(v) => super::ConfigToken::parse(v)
                .map(|t| t.content)
                .unwrap_or_else(|| "None".to_string()),
        }
    };
    let default_vocab = |names: &[(&str, &str)]| -> Map<String, Value> {
        names
            .iter()
            .enumerate()
            .map(|(i, (k, d))| (tok_str(k, d), json!(i)))
            .collect()
    };
    let opt_bool = |k: &str| cfg.get(k).and_then(Value::as_bool);

    let (model, normalizer, pre_tokenizer, decoder) = match class {
        TokenizerClass::Backend => unreachable!("handled above"),
        TokenizerClass::Llama => {
            let add_prefix_space = opt_bool("add_prefix_space").unwrap_or(true);
            // `legacy=False` by default; `_get_prepend_scheme` reads `getattr(self, "legacy", True)`,
            // so a null `legacy` counts as legacy=False too.
            let legacy = opt_bool("legacy").unwrap_or(false);
            let scheme = match (add_prefix_space, legacy) {
                (false, _) => "never",
                (true, true) => "always",
                (true, false) => "first",
            };
            let vocab = vocab.unwrap_or_else(|| {
                default_vocab(&[
                    ("unk_token", "<unk>"),
                    ("bos_token", "<s>"),
                    ("eos_token", "</s>"),
                ])
            });
            let mut dec = vec![
                replace("▁", " "),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix_space {
                dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                bpe(vocab, merges, None, None, true, true),
                Value::Null,
                metaspace(scheme),
                json!({"type": "Sequence", "decoders": dec}),
            )
        }
        TokenizerClass::CodeLlama => {
            let add_prefix_space = opt_bool("add_prefix_space").unwrap_or(true);
            let scheme = if add_prefix_space { "first" } else { "never" };
            let unk = tok_str("unk_token", "<unk>");
            let vocab = vocab.unwrap_or_else(|| {
                default_vocab(&[
                    ("unk_token", "<unk>"),
                    ("bos_token", "<s>"),
                    ("eos_token", "</s>"),
                ])
            });
            let dec = vec![
                replace("▁", " "),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
                json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}),
            ];
            (
                bpe(vocab, merges, Some(&unk), None, true, true),
                Value::Null,
                metaspace(scheme),
                json!({"type": "Sequence", "decoders": dec}),
            )
        }
        TokenizerClass::Qwen2 => {
            let add_prefix_space = opt_bool("add_prefix_space").unwrap_or(false);
            let vocab = vocab.unwrap_or_else(|| default_vocab(&[("", "<|endoftext|>")]));
            (
                bpe(vocab, merges, None, Some(""), false, false),
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                     "trim_offsets": true, "use_regex": false},
                ]}),
                byte_level_decoder(),
            )
        }
        TokenizerClass::Gpt2 => {
            let add_prefix_space = opt_bool("add_prefix_space").unwrap_or(false);
            let vocab = vocab.unwrap_or_default();
            (
                bpe(vocab, merges, None, Some(""), false, false),
                Value::Null,
                json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                       "trim_offsets": true, "use_regex": true}),
                byte_level_decoder(),
            )
        }
        TokenizerClass::Gemma => {
            let unk = tok_str("unk_token", "<unk>");
            let vocab = vocab.unwrap_or_else(|| {
                default_vocab(&[
                    ("pad_token", "<pad>"),
                    ("eos_token", "<eos>"),
                    ("bos_token", "<bos>"),
                    ("unk_token", "<unk>"),
                    ("mask_token", "<mask>"),
                ])
            });
            (
                bpe(vocab, merges, Some(&unk), None, true, true),
                replace(" ", "▁"),
                json!({"type": "Split", "pattern": {"String": " "},
                       "behavior": "MergedWithPrevious", "invert": false}),
                json!({"type": "Sequence", "decoders": [
                    replace("▁", " "), {"type": "ByteFallback"}, {"type": "Fuse"}]}),
            )
        }
    };
    let rebuilt = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        // `TokenizersBackend.__init__` puts tokenizer.json's post-processor back.
        "post_processor": file.get("post_processor").cloned().unwrap_or(Value::Null),
        "decoder": decoder,
        "model": model,
    });
    let text = serde_json::to_string(&rebuilt).map_err(|e| err(&e))?;
    Tokenizer::from_str(&text).map_err(|e| {
        Error::Tokenizer(format!(
            "tokenizer.json rebuilt as {}: {e}",
            class.hf_name()
        ))
    })
}

fn bpe(
    vocab: Map<String, Value>,
    merges: Vec<Value>,
    unk: Option<&str>,
    affix: Option<&str>,
    fuse_unk: bool,
    byte_fallback: bool,
) -> Value {
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk,
        "continuing_subword_prefix": affix,
        "end_of_word_suffix": affix,
        "fuse_unk": fuse_unk,
        "byte_fallback": byte_fallback,
        "ignore_merges": false,
        "vocab": vocab,
        "merges": merges,
    })
}

fn metaspace(scheme: &str) -> Value {
    json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false})
}

fn byte_level_decoder() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true})
}

/// The regex `_patch_mistral_regex` puts in front of the pre-tokenizer.
const MISTRAL_FIXED_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Whether a PEP 440 version is below 5.0.0 (pre-releases of 5.0.0 are). `None` when it does
/// not parse.
fn version_below_5(v: &str) -> Option<bool> {
    let v = v.trim().trim_start_matches(['v', 'V']);
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (release, rest) = v.split_at(end);
    let release = release.trim_end_matches('.');
    let nums: Vec<u64> = release
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let major = *nums.first()?;
    if major != 5 {
        return Some(major < 5);
    }
    if nums.iter().skip(1).any(|&n| n > 0) {
        return Some(false);
    }
    // 5.0.0 itself: a pre-release or dev release sorts before it, a post release after.
    let rest = rest
        .trim_start_matches(['.', '-', '_'])
        .to_ascii_lowercase();
    Some(
        [
            "a", "b", "c", "rc", "alpha", "beta", "pre", "preview", "dev",
        ]
        .iter()
        .any(|p| rest.starts_with(p)),
    )
}

/// `TokenizersBackend._patch_mistral_regex` for a local directory: with `fix_mistral_regex: true`
/// in tokenizer_config.json, a vocabulary over 100000 and a config.json of a Mistral model saved
/// before transformers 5 (or without model_type), the pre-tokenizer gets the fixed split regex.
pub fn patch_mistral_regex(
    tok: &mut Tokenizer,
    info: &ModelDirInfo,
    cfg: &TokenizerConfig,
) -> Result<()> {
    if tok.get_vocab_size(true) <= 100_000 || cfg.get_bool("fix_mistral_regex") != Some(true) {
        return Ok(());
    }
    let Some(pre) = tok.get_pre_tokenizer() else {
        return Ok(());
    };
    if !info.has_config {
        return Ok(());
    }
    let old = info
        .transformers_version
        .as_deref()
        .map_or(Some(true), version_below_5);
    if old != Some(true) {
        return Ok(());
    }
    if let Some(mt) = &info.model_type {
        if !["mistral", "mistral3", "voxtral", "ministral", "pixtral"].contains(&mt.as_str()) {
            return Ok(());
        }
    }
    let err = |e: &dyn std::fmt::Display| Error::Tokenizer(format!("fix_mistral_regex: {e}"));
    let split = json!({"type": "Split", "pattern": {"Regex": MISTRAL_FIXED_REGEX},
                       "behavior": "Isolated", "invert": false});
    let mut cur = serde_json::to_value(pre).map_err(|e| err(&e))?;
    let new = if cur.get("type").and_then(Value::as_str) == Some("Sequence") {
        match cur.get_mut("pretokenizers").and_then(Value::as_array_mut) {
            Some(list) if !list.is_empty() => list[0] = split,
            _ => return Err(err(&"empty pre-tokenizer sequence")),
        }
        cur
    } else {
        if cur.get("type").and_then(Value::as_str) == Some("Metaspace") {
            cur = json!({"type": "ByteLevel", "add_prefix_space": false,
                         "trim_offsets": true, "use_regex": false});
        }
        json!({"type": "Sequence", "pretokenizers": [split, cur]})
    };
    let wrapper: PreTokenizerWrapper = serde_json::from_value(new).map_err(|e| err(&e))?;
    tok.with_pre_tokenizer(Some(wrapper));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(model_type: Option<&str>) -> ModelDirInfo {
        ModelDirInfo {
            name_or_path: "/m".into(),
            has_config: true,
            model_type: model_type.map(str::to_string),
            ..Default::default()
        }
    }

    fn cfg(class: Option<&str>) -> TokenizerConfig {
        let mut m = Map::new();
        if let Some(c) = class {
            m.insert("tokenizer_class".into(), json!(c));
        }
        TokenizerConfig::from_value(Value::Object(m)).unwrap()
    }

    #[test]
    fn class_resolution_like_auto_tokenizer() {
        use TokenizerClass::*;
        let r = |mt: Option<&str>, c: Option<&str>, bl: bool| {
            resolve_class(&info(mt), &cfg(c), &mut || bl)
        };
        assert_eq!(r(Some("llama"), Some("LlamaTokenizerFast"), true), Backend);
        assert_eq!(r(Some("llama"), Some("LlamaTokenizerFast"), false), Llama);
        assert_eq!(r(Some("qwen2"), Some("LlamaTokenizerFast"), true), Qwen2);
        assert_eq!(r(Some("qwen2"), Some("TokenizersBackend"), true), Qwen2);
        assert_eq!(r(Some("qwen3"), Some("TokenizersBackend"), true), Backend);
        assert_eq!(r(Some("qwen3"), Some("LlamaTokenizer"), false), Llama);
        assert_eq!(r(Some("qwen3"), None, true), Qwen2);
        assert_eq!(
            r(Some("mistral"), Some("LlamaTokenizerFast"), false),
            Backend
        );
        assert_eq!(
            r(Some("mistral"), Some("Qwen2TokenizerFast"), false),
            Backend
        );
        assert_eq!(r(Some("llama"), Some("GPT2Tokenizer"), true), Gpt2);
        assert_eq!(
            r(Some("llama"), Some("CodeLlamaTokenizerFast"), false),
            CodeLlama
        );
        assert_eq!(r(Some("llama"), Some("BloomTokenizerFast"), true), Backend);
        assert_eq!(r(Some("llama"), None, true), Backend);
        assert_eq!(r(None, Some("Qwen2TokenizerFast"), true), Qwen2);
        let mut i = info(Some("llama"));
        i.name_or_path = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B".into();
        assert_eq!(
            resolve_class(&i, &cfg(Some("LlamaTokenizerFast")), &mut || false),
            Backend
        );
    }

    #[test]
    fn fnmatch_and_versions() {
        assert!(fnmatch(
            "deepseek-ai/deepseek-coder-1.3b",
            "deepseek-ai/deepseek-coder-*"
        ));
        assert!(!fnmatch(
            "/x/deepseek-ai/deepseek-coder-1.3b",
            "deepseek-ai/deepseek-coder-*"
        ));
        assert!(fnmatch("google/umt5-small", "google/umt5-small"));
        assert_eq!(version_below_5("4.57.1"), Some(true));
        assert_eq!(version_below_5("5.0.0.dev0"), Some(true));
        assert_eq!(version_below_5("5.0.0rc1"), Some(true));
        assert_eq!(version_below_5("5.0.0"), Some(false));
        assert_eq!(version_below_5("5.2.0"), Some(false));
        assert_eq!(version_below_5("x"), None);
    }
}
