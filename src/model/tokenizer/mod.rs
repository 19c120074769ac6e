//! Text tokenizer: a `tokenizers::Tokenizer` set up from a model directory the way HF transformers 5
//! `AutoTokenizer.from_pretrained(dir)` sets it up (class resolution and per-class backends in
//! [`classes`]; the `TokenizersBackend.__init__` steps here), so that `encode`/`decode` give the ids
//! and text of `tokenizer(text)` / `tokenizer.decode(ids)`. Also the parsed `tokenizer_config.json`
//! ([`TokenizerConfig`]), shared with the chat template.
pub mod classes;

use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, ModelWrapper, Tokenizer};

use crate::error::{Error, Result};
use classes::{ModelDirInfo, TokenizerClass};

/// The named special-token attributes of HF tokenizers (`SPECIAL_TOKENS_ATTRIBUTES`), in HF's order.
pub const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A special token as written in tokenizer_config.json: a plain string, or an `AddedToken` dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigToken {
    pub content: String,
    /// The AddedToken flags when the config gave them (a plain string gives none).
    pub added: Option<AddedToken>,
}

impl ConfigToken {
    /// Parses a string or a dict with a string `content`; anything else (null, numbers, ...) is `None`.
    fn parse(v: &Value) -> Option<Self> {
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
    fn to_added(&self, special: bool) -> AddedToken {
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
    map: Map<String, Value>,
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
    fn read_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let stm_path = dir.join("special_tokens_map.json");
        let mut cfg = if cfg_path.is_file() {
            Self::from_file(&cfg_path)?
        } else if stm_path.is_file() {
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
    fn with_class_defaults(mut self, class: TokenizerClass) -> Self {
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

    fn named_tokens(&self) -> Vec<(String, ConfigToken)> {
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
    fn extra_token_list(&self) -> Vec<ConfigToken> {
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
    fn added_tokens_decoder(&self) -> Result<Vec<(u32, AddedToken)>> {
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
fn legacy_added_tokens(
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

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: invalid JSON: {e}", path.display())))
}

/// A text tokenizer with its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    tok: Tokenizer,
    /// Apply HF's `clean_up_tokenization` after decoding.
    clean_up_spaces: bool,
    /// Named special tokens (`bos_token`, `eos_token`, ...) as `(name, token, id)`.
    special: Vec<(String, String, Option<u32>)>,
    /// The transformers class this tokenizer reproduces.
    class: TokenizerClass,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("clean_up_spaces", &self.clean_up_spaces)
            .field("special", &self.special)
            .field("class", &self.class)
            .finish()
    }
}

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl TextTokenizer {
    /// A `tokenizer.json` as it is (no tokenizer_config.json: no named special tokens, no
    /// clean-up of decoded text).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let tok = Tokenizer::from_file(path).map_err(|e| tok_err(path.display(), e))?;
        Ok(Self::from_tokenizer(tok))
    }

    /// Wraps an in-memory tokenizer (e.g. built from a GGUF file). Truncation and padding are
    /// turned off, as HF's `tokenizer(text)` does.
    pub fn from_tokenizer(mut tok: Tokenizer) -> Self {
        tok.with_padding(None);
        // Turning truncation off cannot fail.
        let _ = tok.with_truncation(None);
        TextTokenizer {
            tok,
            clean_up_spaces: false,
            special: Vec::new(),
            class: TokenizerClass::Backend,
        }
    }

    /// From a HF model directory, as transformers 5's `AutoTokenizer.from_pretrained(dir)`: the
    /// tokenizer class it picks (from tokenizer_config.json's `tokenizer_class` and config.json's
    /// `model_type`), that class's backend built from `tokenizer.json`, then tokenizer_config.json
    /// applied. `Ok(None)` when there is no tokenizer.json.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        let in_dir = |e: Error| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", dir.display())),
            e => e,
        };
        let json = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let raw = TokenizerConfig::read_model_dir(dir)?.unwrap_or_default();
        let info = ModelDirInfo::from_model_dir(dir)?;
        let class = classes::resolve_class(&info, &raw, &mut || json.contains("\"ByteLevel\""));
        let cfg = raw.with_class_defaults(class);
        // Legacy checkpoints (no added_tokens_decoder): added_tokens.json, then tokenizer.json's
        // added tokens, stand in for it.
        let decoder_tokens = if cfg.map.contains_key("added_tokens_decoder") {
            cfg.added_tokens_decoder()?
        } else {
            legacy_added_tokens(dir, &json, &cfg)?
        };
        let tok = classes::build_backend(class, &json, &cfg).map_err(in_dir)?;
        Self::setup(tok, &cfg, class, Some(&info), decoder_tokens)
            .map(Some)
            .map_err(in_dir)
    }

    /// Applies a tokenizer config the way transformers 5's `TokenizersBackend.__init__` does to a
    /// tokenizer.json loaded as it is: re-adds the config's `added_tokens_decoder`, adds
    /// named/extra special tokens that are not added tokens yet, honours `split_special_tokens`,
    /// and takes the decode clean-up flag. `add_bos_token`/`add_eos_token` are ignored, as
    /// transformers ignores them when there is a tokenizer.json: its post-processor decides what
    /// `encode` adds.
    pub fn from_tokenizer_and_config(tok: Tokenizer, cfg: &TokenizerConfig) -> Result<Self> {
        let decoder_tokens = cfg.added_tokens_decoder()?;
        Self::setup(tok, cfg, TokenizerClass::Backend, None, decoder_tokens)
    }

    /// `TokenizersBackend.__init__` (and the class's own steps after it) on the backend `tok` the
    /// class built. `decoder_tokens`: the `added_tokens_decoder` transformers passes in.
    fn setup(
        tok: Tokenizer,
        cfg: &TokenizerConfig,
        class: TokenizerClass,
        info: Option<&ModelDirInfo>,
        decoder_tokens: Vec<(u32, AddedToken)>,
    ) -> Result<Self> {
        let mut this = Self::from_tokenizer(tok);
        this.class = class;
        let explicit = class.explicit_add_bos_eos();
        let (add_bos, add_eos) = explicit.unwrap_or((false, false));
        let update_post_processor = explicit.is_some() || this.tok.get_post_processor().is_none();
        let tok = &mut this.tok;
        tok.set_encode_special_tokens(cfg.get_bool("split_special_tokens").unwrap_or(false));

        // Tokens from the added_tokens_decoder (all of them: transformers compares against the
        // ids of its decoder, so none is ever found "already added"), then the named and extra
        // special tokens that are not added tokens yet.
        let mut to_add: Vec<AddedToken> = decoder_tokens.into_iter().map(|(_, t)| t).collect();
        let mut known: Vec<String> = tok
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        known.extend(to_add.iter().map(|t| t.content.clone()));
        let named = cfg.named_tokens();
        let extra = cfg.extra_token_list();
        for t in named.iter().map(|(_, t)| t).chain(extra.iter()) {
            if !known.contains(&t.content) && !to_add.iter().any(|a| a.content == t.content) {
                to_add.push(t.to_added(true));
            }
        }
        if !to_add.is_empty() {
            tok.add_tokens(&to_add);
        }
        if let Some(info) = info {
            classes::patch_mistral_regex(tok, info, cfg)?;
        }
        let token_of = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.content.clone())
        };
        if update_post_processor {
            let bos = token_of("bos_token").filter(|_| add_bos);
            let eos = token_of("eos_token").filter(|_| add_eos);
            let unk = token_of("unk_token");
            let pp = template_processing(tok, bos.as_deref(), eos.as_deref(), unk.as_deref())?;
            tok.with_post_processor(Some(pp));
        }
        if class == TokenizerClass::Qwen2 {
            // Qwen2Tokenizer: `self.add_tokens([AddedToken(t, special=True) for t in
            // self.all_special_tokens])`.
            let mut all: Vec<AddedToken> = Vec::new();
            for t in named.iter().map(|(_, t)| t).chain(extra.iter()) {
                if !all.iter().any(|a| a.content == t.content) {
                    all.push(AddedToken::from(t.content.clone(), true));
                }
            }
            tok.add_tokens(&all);
        }

        let is_bpe = matches!(tok.get_model(), ModelWrapper::BPE(_));
        this.clean_up_spaces = cfg.clean_up_tokenization_spaces()
            && (!is_bpe
                || cfg
                    .get_bool(
                        "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
                    )
                    .unwrap_or(false));
        this.special = named
            .into_iter()
            .map(|(n, t)| {
                let id = this.tok.token_to_id(&t.content);
                (n, t.content, id)
            })
            .collect();
        Ok(this)
    }

    /// The transformers class this tokenizer reproduces (`"LlamaTokenizer"`, `"Qwen2Tokenizer"`,
    /// `"TokenizersBackend"`, ...).
    pub fn tokenizer_class(&self) -> &'static str {
        self.class.hf_name()
    }

    /// Sets (or clears) a named special token (`"bos_token"`, `"eos_token"`, ...), e.g. from GGUF
    /// metadata. Does not change what `encode` adds.
    pub fn set_special_token(&mut self, name: &str, token: Option<&str>) {
        self.special.retain(|(n, _, _)| n != name);
        if let Some(t) = token {
            let id = self.tok.token_to_id(t);
            self.special.push((name.to_string(), t.to_string(), id));
        }
    }

    /// Makes `encode(.., add_special_tokens=true)` add the bos and/or eos token (HF's
    /// `update_post_processor`, e.g. for GGUF `tokenizer.ggml.add_bos_token`); uses the
    /// `bos_token`/`eos_token` set on this tokenizer, and skips one that is not set.
    pub fn set_add_bos_eos(&mut self, add_bos: bool, add_eos: bool) -> Result<()> {
        let bos = self
            .special_token("bos_token")
            .filter(|_| add_bos)
            .map(str::to_string);
        let eos = self
            .special_token("eos_token")
            .filter(|_| add_eos)
            .map(str::to_string);
        let unk = self.special_token("unk_token").map(str::to_string);
        let pp = template_processing(&self.tok, bos.as_deref(), eos.as_deref(), unk.as_deref())?;
        self.tok.with_post_processor(Some(pp));
        Ok(())
    }

    /// Whether `decode` applies HF's `clean_up_tokenization` (space before punctuation etc.).
    pub fn set_clean_up_tokenization_spaces(&mut self, on: bool) {
        self.clean_up_spaces = on;
    }

    /// Token ids of `text`, like HF `tokenizer(text, add_special_tokens=...)["input_ids"]`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, like HF `tokenizer.decode(ids, skip_special_tokens=...)`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err("decode", e))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Vocabulary size including added tokens (HF `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.tok.token_to_id(tok)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tok
    }

    /// A named special token's text (`"bos_token"`, `"eos_token"`, `"pad_token"`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, t, _)| t.as_str())
    }

    /// A named special token's id, when it is in the vocabulary.
    pub fn special_token_id(&self, name: &str) -> Option<u32> {
        self.special
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, id)| *id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.special_token_id("bos_token")
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.special_token_id("eos_token")
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.special_token_id("pad_token")
    }

    pub fn unk_token_id(&self) -> Option<u32> {
        self.special_token_id("unk_token")
    }

    /// All named special tokens as `(name, token)` (HF `special_tokens_map`).
    pub fn special_tokens_map(&self) -> Vec<(String, String)> {
        self.special
            .iter()
            .map(|(n, t, _)| (n.clone(), t.clone()))
            .collect()
    }
}

/// HF's `update_post_processor`: `[bos] $A [eos]` (pair: `[bos] $A [eos] [bos] $B [eos]`). A token
/// not in the vocabulary takes the unk token's id, as `convert_tokens_to_ids` gives it.
fn template_processing(
    tok: &Tokenizer,
    bos: Option<&str>,
    eos: Option<&str>,
    unk: Option<&str>,
) -> Result<TemplateProcessing> {
    let mut specials: Vec<(String, u32)> = Vec::new();
    for t in [bos, eos].into_iter().flatten() {
        let id = tok
            .token_to_id(t)
            .or_else(|| unk.and_then(|u| tok.token_to_id(u)))
            .ok_or_else(|| {
                Error::Tokenizer(format!(
                    "special token {t:?} (add_bos_token/add_eos_token) is not in the vocabulary"
                ))
            })?;
        specials.push((t.to_string(), id));
    }
    let e = |seq: u8| eos.map(|t| format!(" {t}:{seq}")).unwrap_or_default();
    let single = format!(
        "{}$A:0{}",
        bos.map(|t| format!("{t}:0 ")).unwrap_or_default(),
        e(0)
    );
    let pair = format!(
        "{single}{} $B:1{}",
        bos.map(|t| format!(" {t}:1")).unwrap_or_default(),
        e(1)
    );
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|bld| bld.try_pair(pair.as_str()))
        .map_err(|e| Error::Tokenizer(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::Tokenizer(format!("post-processor template: {e}")))
}

/// HF `PreTrainedTokenizerBase.clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    /// A fixture model directory (byte-level BPE, vocab 449; see tests/fixtures/README.md).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn fixture_tokenizer() -> Tokenizer {
        Tokenizer::from_file(fixture("llama_f32").join("tokenizer.json")).unwrap()
    }

    #[test]
    fn special_tokens_map_like_hf() {
        let cfg = TokenizerConfig::from_value(json!({
            "add_bos_token": true,
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false,
                          "normalized": false, "rstrip": false, "single_word": false},
            "eos_token": "</s>",
            "pad_token": null,
            "image_token": "<img>",
            "not_a_token": 3,
            "extra_special_tokens": {"audio_token": "<aud>"},
        }))
        .unwrap();
        assert_eq!(
            cfg.special_tokens_map(),
            vec![
                ("bos_token".to_string(), "<s>".to_string()),
                ("eos_token".to_string(), "</s>".to_string()),
                ("image_token".to_string(), "<img>".to_string()),
                ("audio_token".to_string(), "<aud>".to_string()),
            ]
        );
        assert_eq!(cfg.token("bos_token").as_deref(), Some("<s>"));
        assert_eq!(cfg.token("pad_token"), None);
    }

    #[test]
    fn chat_template_forms() {
        let s = TokenizerConfig::from_value(json!({"chat_template": "{{ x }}"})).unwrap();
        assert_eq!(s.chat_template().unwrap().as_deref(), Some("{{ x }}"));
        let list = TokenizerConfig::from_value(json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
        .unwrap();
        assert_eq!(list.chat_template().unwrap().as_deref(), Some("D"));
        let no_default = TokenizerConfig::from_value(json!({"chat_template": [
            {"name": "tool_use", "template": "T"}]}))
        .unwrap();
        let err = no_default.chat_template().unwrap_err().to_string();
        assert!(err.contains("default") && err.contains("tool_use"), "{err}");
        let none = TokenizerConfig::from_value(json!({})).unwrap();
        assert_eq!(none.chat_template().unwrap(), None);
        assert!(TokenizerConfig::from_value(json!([1])).is_err());
    }

    #[test]
    fn from_model_dir_reads_fixture() {
        let tok = TextTokenizer::from_model_dir(&fixture("llama_f32"))
            .unwrap()
            .unwrap();
        assert_eq!(tok.vocab_size(), 449);
        assert_eq!(tok.special_token("bos_token"), Some("<|begin_of_text|>"));
        assert_eq!(tok.bos_token_id(), Some(442));
        assert_eq!(tok.eos_token_id(), Some(446));
        assert_eq!(tok.token_to_id("<|im_start|>"), Some(440));
        assert_eq!(tok.id_to_token(441).as_deref(), Some("<|im_end|>"));
        // The post-processor prepends BOS; special tokens in text are matched whole.
        let ids = tok.encode("<|im_start|>hi", true).unwrap();
        assert_eq!(&ids[..2], &[442, 440]);
        assert_eq!(tok.encode("<|im_start|>hi", false).unwrap(), ids[1..]);
        let text = "Arr, Paris it be! 🦜";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            format!("<|begin_of_text|>{text}")
        );
        // No tokenizer.json: no tokenizer.
        let empty = std::env::temp_dir().join(format!("rear-tok-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(TextTokenizer::from_model_dir(&empty).unwrap().is_none());
        std::fs::remove_dir_all(&empty).unwrap();
        // A missing file is an Io error naming it.
        let err = TextTokenizer::from_file(&empty.join("tokenizer.json")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    #[test]
    fn config_special_tokens_missing_from_vocab_are_added() {
        // transformers adds named special tokens that are not added tokens yet (new ids past the
        // vocabulary), so they encode as one token and are skipped when decoding.
        let cfg = TokenizerConfig::from_value(json!({
            "bos_token": "<|begin_of_text|>", "pad_token": "<pad>",
            "additional_special_tokens": ["<extra>"]
        }))
        .unwrap();
        let tok = TextTokenizer::from_tokenizer_and_config(fixture_tokenizer(), &cfg).unwrap();
        assert_eq!(tok.vocab_size(), 451);
        assert_eq!(tok.pad_token_id(), Some(449));
        assert_eq!(tok.token_to_id("<extra>"), Some(450));
        let ids = tok.encode("a<pad>b<extra>", false).unwrap();
        assert!(ids.contains(&449) && ids.contains(&450), "{ids:?}");
        assert_eq!(tok.decode(&ids, true).unwrap(), "ab");
    }

    #[test]
    fn clean_up_spaces_follows_hf() {
        let ids = fixture_tokenizer()
            .encode("Hello , world .", false)
            .unwrap()
            .get_ids()
            .to_vec();
        let with = |cfg: serde_json::Value| {
            let cfg = TokenizerConfig::from_value(cfg).unwrap();
            let tok = TextTokenizer::from_tokenizer_and_config(fixture_tokenizer(), &cfg).unwrap();
            tok.decode(&ids, false).unwrap()
        };
        // transformers 5 ignores clean_up_tokenization_spaces for BPE models ...
        assert_eq!(
            with(json!({"clean_up_tokenization_spaces": true})),
            "Hello , world ."
        );
        // ... unless forced.
        assert_eq!(
            with(json!({"clean_up_tokenization_spaces": true,
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": true})),
            "Hello, world."
        );
        assert_eq!(
            clean_up_tokenization("a , b . c ? d ! e 's f 're g n't"),
            "a, b. c? d! e's f're gn't"
        );
    }

    #[test]
    fn add_bos_eos_rebuilds_post_processor() {
        let mut tok = TextTokenizer::from_tokenizer(fixture_tokenizer());
        tok.set_special_token("bos_token", Some("<s>"));
        tok.set_special_token("eos_token", Some("</s>"));
        assert_eq!(tok.bos_token_id(), Some(0));
        let plain = tok.encode("hi", false).unwrap();
        tok.set_add_bos_eos(true, true).unwrap();
        let ids = tok.encode("hi", true).unwrap();
        assert_eq!(ids, [vec![0], plain.clone(), vec![1]].concat());
        tok.set_add_bos_eos(false, false).unwrap();
        assert_eq!(tok.encode("hi", true).unwrap(), plain);
    }
}
