//! The parsed `tokenizer_config.json` of a model directory (with `special_tokens_map.json` and
//! `added_tokens.json` for older checkpoints): special tokens, added tokens, the chat template
//! and the flags transformers reads from it. Shared by the tokenizer and the chat template.
use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::AddedToken;

use super::classes::{self, ModelDirInfo, TokenizerClass};
use super::SPECIAL_TOKEN_NAMES;
use crate::error::{Error, Result};

/// A special token as written in tokenizer_config.json: a plain string, or an `AddedToken` dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigToken {
    pub content: String,
    /// The AddedToken flags when the config gave them (a plain string gives none).
    pub added: Option<AddedToken>,
}

impl ConfigToken {
    /// Parses a string or a dict with a string `content`; anything else (null, numbers, ...) is `None`.
    pub(super) fn parse(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(ConfigToken {
                content: s.clone(),
                added: None,
            }),
            Value::Object(m) => {
                let content = m.get("content")?.as_str()?.to_string();
                Some(ConfigToken {
                    added: Some(added_token_from_map(m, &content, false)),
                    content,
                })
            }
            _ => None,
        }
    }

    /// The token as HF adds it to the backend: a string becomes a special, unnormalized token.
    pub(super) fn to_added(&self, special: bool) -> AddedToken {
        match &self.added {
            Some(t) => {
                let mut t = t.clone();
                t.special |= special;
                t
            }
            None => AddedToken::from(self.content.clone(), true),
        }
    }
}

/// An `AddedToken` from its serialized dict (`{"content", "single_word", "lstrip", "rstrip",
/// "normalized", "special"}`); missing flags take the `tokenizers` defaults.
fn added_token_from_map(
    m: &Map<String, Value>,
    content: &str,
    default_special: bool,
) -> AddedToken {
    let flag = |k: &str| m.get(k).and_then(Value::as_bool);
    let special = flag("special").unwrap_or(default_special);
    let mut t = AddedToken::from(content.to_string(), special);
    t.single_word = flag("single_word").unwrap_or(false);
    t.lstrip = flag("lstrip").unwrap_or(false);
    t.rstrip = flag("rstrip").unwrap_or(false);
    t.normalized = flag("normalized").unwrap_or(!special);
    t
}

/// `tokenizer_config.json` of a HF model directory (merged, like transformers does for old
/// checkpoints, with `special_tokens_map.json` when the config has no `added_tokens_decoder`).
#[derive(Clone, Debug, Default)]
pub struct TokenizerConfig {
    pub(super) map: Map<String, Value>,
}

impl TokenizerConfig {
    /// From a JSON object.
    pub fn from_value(v: Value) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(TokenizerConfig { map }),
            _ => Err(Error::Config(
                "tokenizer_config.json: expected a JSON object".into(),
            )),
        }
    }

    /// Reads one JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_value(v)
            .map_err(|_| Error::Config(format!("{}: expected a JSON object", path.display())))
    }

    /// `dir/tokenizer_config.json` (and `dir/special_tokens_map.json` for legacy checkpoints),
    /// with the special-token defaults of the tokenizer class transformers picks for the directory
    /// (e.g. Qwen2Tokenizer's `pad_token`), as HF's `special_tokens_map` has them. `Ok(None)`
    /// when there is neither a config nor a tokenizer.json.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let json_path = dir.join("tokenizer.json");
        let cfg = match Self::read_model_dir(dir)? {
            Some(c) => c,
            None if json_path.is_file() => TokenizerConfig::default(),
            None => return Ok(None),
        };
        if !json_path.is_file() {
            return Ok(Some(cfg));
        }
        let info = ModelDirInfo::from_model_dir(dir)?;
        let class = classes::resolve_class(&info, &cfg, &mut || {
            std::fs::read_to_string(&json_path).is_ok_and(|t| t.contains("\"ByteLevel\""))
        });
        Ok(Some(cfg.with_class_defaults(class)))
    }

    /// The config files as they are (no class defaults); `Ok(None)` when neither exists.
    pub(super) fn read_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let stm_path = dir.join("special_tokens_map.json");
        let has_stm = crate::model::optional_file(&stm_path)?;
        let mut cfg = if crate::model::optional_file(&cfg_path)? {
            Self::from_file(&cfg_path)?
        } else if has_stm {
            TokenizerConfig::default()
        } else {
            return Ok(None);
        };
        if !cfg.map.contains_key("added_tokens_decoder") && stm_path.is_file() {
            // transformers: "Legacy: read special_tokens_map.json and merge into init_kwargs"; a
            // dict there becomes `AddedToken(**value, special=True)`.
            let special = |v: Value| match v {
                Value::Object(mut m) => {
                    m.insert("special".into(), Value::Bool(true));
                    Value::Object(m)
                }
                v => v,
            };
            if let Value::Object(stm) = read_json(&stm_path)? {
                for (k, v) in stm {
                    if k == "additional_special_tokens" || k == "extra_special_tokens" {
                        let mut list = match cfg.map.get("extra_special_tokens") {
                            Some(Value::Array(a)) => a.clone(),
                            _ => match cfg.map.get("additional_special_tokens") {
                                Some(Value::Array(a)) => a.clone(),
                                _ => Vec::new(),
                            },
                        };
                        if let Value::Array(items) = v {
                            for it in items {
                                let it = special(it);
                                if !list.contains(&it) {
                                    list.push(it);
                                }
                            }
                            cfg.map.remove("additional_special_tokens");
                            cfg.map
                                .insert("extra_special_tokens".into(), Value::Array(list));
                        } else {
                            cfg.map.insert(k, v);
                        }
                    } else {
                        cfg.map.insert(k, special(v));
                    }
                }
            }
        }
        Ok(Some(cfg))
    }

    /// Adds the class's special-token defaults for the keys the config does not have.
    pub(super) fn with_class_defaults(mut self, class: TokenizerClass) -> Self {
        for (k, v) in class.default_tokens() {
            if !self.map.contains_key(*k) {
                self.map.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
        self
    }

    /// The raw value of a key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// A boolean key (`None` when absent or not a bool).
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.map.get(key).and_then(Value::as_bool)
    }

    /// A named special token (`"bos_token"`, `"eos_token"`, `"image_token"`, ...).
    pub fn token(&self, name: &str) -> Option<String> {
        self.map
            .get(name)
            .and_then(ConfigToken::parse)
            .map(|t| t.content)
    }

    /// HF's `special_tokens_map`: the standard named special tokens that are set, then the
    /// model-specific ones (other `*_token` keys holding a token, and the entries of an
    /// `extra_special_tokens` dict), as `(name, token)` pairs. These are the variables a chat
    /// template sees besides the messages.
    pub fn special_tokens_map(&self) -> Vec<(String, String)> {
        self.named_tokens()
            .into_iter()
            .map(|(k, t)| (k, t.content))
            .collect()
    }

    pub(super) fn named_tokens(&self) -> Vec<(String, ConfigToken)> {
        let mut out: Vec<(String, ConfigToken)> = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            if let Some(t) = self.map.get(name).and_then(ConfigToken::parse) {
                out.push((name.to_string(), t));
            }
        }
        let mut push = |k: &str, t: ConfigToken| {
            if let Some(slot) = out.iter_mut().find(|(n, _)| n == k) {
                slot.1 = t;
            } else {
                out.push((k.to_string(), t));
            }
        };
        for (k, v) in &self.map {
            if SPECIAL_TOKEN_NAMES.contains(&k.as_str()) || !k.ends_with("_token") {
                continue;
            }
            // Only strings and AddedToken dicts count (not `add_bos_token: true`).
            let is_token = v.is_string()
                || v.as_object().is_some_and(|m| {
                    m.get("__type").and_then(Value::as_str) == Some("AddedToken")
                        || m.get("content").is_some_and(Value::is_string)
                });
            if let (true, Some(t)) = (is_token, ConfigToken::parse(v)) {
                push(k, t);
            }
        }
        if let Some(Value::Object(extra)) = self.map.get("extra_special_tokens") {
            for (k, v) in extra {
                if let Some(t) = ConfigToken::parse(v) {
                    push(k, t);
                }
            }
        }
        out
    }

    /// The list form of `extra_special_tokens` / `additional_special_tokens`.
    pub(super) fn extra_token_list(&self) -> Vec<ConfigToken> {
        let list = match self.map.get("extra_special_tokens") {
            Some(Value::Array(a)) => Some(a),
            Some(Value::Object(_)) => None,
            _ => match self.map.get("additional_special_tokens") {
                Some(Value::Array(a)) => Some(a),
                _ => None,
            },
        };
        list.map(|a| a.iter().filter_map(ConfigToken::parse).collect())
            .unwrap_or_default()
    }

    /// `added_tokens_decoder` entries sorted by id.
    pub(super) fn added_tokens_decoder(&self) -> Result<Vec<(u32, AddedToken)>> {
        let Some(Value::Object(m)) = self.map.get("added_tokens_decoder") else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(m.len());
        for (id, v) in m {
            let id: u32 = id.parse().map_err(|_| {
                Error::Config(format!(
                    "tokenizer_config.json: added_tokens_decoder key {id:?} is not a token id"
                ))
            })?;
            let obj = v.as_object().ok_or_else(|| {
                Error::Config(format!(
                    "tokenizer_config.json: added_tokens_decoder[{id}] is not an object"
                ))
            })?;
            let content = obj.get("content").and_then(Value::as_str).ok_or_else(|| {
                Error::Config(format!(
                    "tokenizer_config.json: added_tokens_decoder[{id}] has no string \"content\""
                ))
            })?;
            out.push((id, added_token_from_map(obj, content, false)));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The chat template the tokenizer config holds: `chat_template` as a string, or as a list of
    /// `{"name", "template"}` of which `"default"` is used. `Ok(None)` when there is none.
    pub fn chat_template(&self) -> Result<Option<String>> {
        match self.map.get("chat_template") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for it in items {
                    let name = it.get("name").and_then(Value::as_str);
                    let tpl = it.get("template").and_then(Value::as_str);
                    match (name, tpl) {
                        (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                        (Some(n), Some(_)) => names.push(n.to_string()),
                        _ => {
                            return Err(Error::Template(
                                "tokenizer_config.json: chat_template list entries need string \"name\" and \"template\"".into(),
                            ))
                        }
                    }
                }
                Err(Error::Template(format!(
                    "tokenizer_config.json: chat_template has no \"default\" template (it has: {})",
                    names.join(", ")
                )))
            }
            Some(_) => Err(Error::Template(
                "tokenizer_config.json: chat_template must be a string or a list of {name, template}"
                    .into(),
            )),
        }
    }

    /// HF's `clean_up_tokenization_spaces` as `decode` applies it (default false).
    pub fn clean_up_tokenization_spaces(&self) -> bool {
        self.get_bool("clean_up_tokenization_spaces")
            .unwrap_or(false)
    }
}

/// The `added_tokens_decoder` transformers builds for a checkpoint whose tokenizer_config.json has
/// none: `added_tokens.json` (`{token: id}`, special when it is a named or extra special token),
/// then tokenizer.json's `added_tokens` (which win for the same id); sorted by id.
pub(super) fn legacy_added_tokens(
    dir: &Path,
    tokenizer_json: &str,
    cfg: &TokenizerConfig,
) -> Result<Vec<(u32, AddedToken)>> {
    let mut out: std::collections::BTreeMap<u32, AddedToken> = Default::default();
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let specials: Vec<String> = SPECIAL_TOKEN_NAMES
            .iter()
            .filter_map(|k| cfg.token(k))
            .chain(cfg.extra_token_list().into_iter().map(|t| t.content))
            .collect();
        if let Value::Object(m) = read_json(&added_path)? {
            for (content, id) in m {
                let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) else {
                    return Err(Error::Config(format!(
                        "{}: the id of {content:?} is not a token id",
                        added_path.display()
                    )));
                };
                let special = specials.contains(&content);
                let mut t = AddedToken::from(content, special);
                t.normalized = !special;
                out.insert(id, t);
            }
        }
    }
    let v: Value = serde_json::from_str(tokenizer_json)
        .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
    if let Some(Value::Array(items)) = v.get("added_tokens") {
        for it in items {
            let (Some(m), Some(id)) = (
                it.as_object(),
                it.get("id")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok()),
            ) else {
                continue;
            };
            if let Some(content) = m.get("content").and_then(Value::as_str) {
                out.insert(id, added_token_from_map(m, content, false));
            }
        }
    }
    Ok(out.into_iter().collect())
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: invalid JSON: {e}", path.display())))
}
