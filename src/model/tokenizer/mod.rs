//! Text tokenizer: a `tokenizers::Tokenizer` set up from a model directory the way HF transformers 5
//! `AutoTokenizer.from_pretrained(dir)` sets it up (class resolution and per-class backends in
//! [`classes`]; the `TokenizersBackend.__init__` steps here), so that `encode`/`decode` give the ids
//! and text of `tokenizer(text)` / `tokenizer.decode(ids)`. Also the parsed `tokenizer_config.json`
//! ([`TokenizerConfig`]), shared with the chat template.
pub mod classes;
mod config;

use config::legacy_added_tokens;
pub use config::{ConfigToken, TokenizerConfig};

use std::path::Path;

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
        if !crate::model::optional_file(&path)? {
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
