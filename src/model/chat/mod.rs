//! Chat templates (HF `chat_template` Jinja source rendered with minijinja in an environment set up
//! like transformers' `apply_chat_template`), and the pref/base contexts built from text
//! (DESIGN §4 "Contexts from text").
//!
//! This file holds the messages, [`ChatTemplate`] and the contexts; `env` sets up the minijinja
//! environment (HF's functions, filters and tags), `pyjson` prints values as Python does and
//! emulates `json.dumps` for `tojson`.
mod env;
mod pyjson;

use std::path::Path;

use minijinja::value::Value;
use minijinja::Environment;

use crate::error::{Error, Result};
use crate::model::tokenizer::{TextTokenizer, TokenizerConfig};
use env::{hf_environment, raised_message, set_clock};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Why a render failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    /// The template called `raise_exception(message)`; holds the template's message as is.
    Raised(String),
    /// Any other template error (undefined operation, type error, ...), described on one line.
    Other(String),
}

impl RenderError {
    pub fn message(&self) -> &str {
        match self {
            RenderError::Raised(m) | RenderError::Other(m) => m,
        }
    }
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<RenderError> for Error {
    fn from(e: RenderError) -> Self {
        Error::Template(e.message().to_string())
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special-token variables it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    /// Template variables besides the messages: HF's `special_tokens_map` (bos_token, eos_token,
    /// unk_token, pad_token, ... and model-specific `*_token`s).
    vars: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("vars", &self.vars)
            .finish()
    }
}

impl ChatTemplate {
    /// From a HF model dir: `chat_template.jinja` if present, else tokenizer_config.json's
    /// `chat_template` (a string, or a list of `{"name","template"}` of which `"default"` is
    /// used). The special tokens (bos/eos/unk/pad/... strings or AddedToken dicts) come from
    /// tokenizer_config.json. `Ok(None)` when there is no template.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg = TokenizerConfig::from_model_dir(dir)?.unwrap_or_default();
        let jinja = dir.join("chat_template.jinja");
        // Anything at that path but a file (a directory, a broken link) is an error naming it.
        let source = if jinja.exists() || jinja.is_symlink() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            cfg.chat_template()?
        };
        match source {
            None => Ok(None),
            Some(s) => Self::with_vars(s, cfg.special_tokens_map()).map(Some),
        }
    }

    /// Compiles `source`; the error names the template problem (message and line).
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut vars = Vec::new();
        if let Some(b) = bos_token {
            vars.push(("bos_token".to_string(), b));
        }
        if let Some(e) = eos_token {
            vars.push(("eos_token".to_string(), e));
        }
        Self::with_vars(source, vars)
    }

    /// Compiles `source` with the given template variables (`("bos_token", "<s>")`, ...).
    pub fn with_vars(source: String, vars: Vec<(String, String)>) -> Result<Self> {
        let env = hf_environment(&source)?;
        Ok(ChatTemplate { source, env, vars })
    }

    /// The template source as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special-token variables the template is rendered with.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Sets (or adds) a string variable, e.g. `bos_token` from GGUF metadata.
    pub fn set_var(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
    }

    /// Makes `strftime_now` in the template report the fixed UTC unix time `unix_secs` instead of
    /// the current time (`None` restores the clock): reproducible renders of templates that put
    /// today's date in the prompt (Llama-3.2, Granite, SmolLM3).
    pub fn set_fixed_time(&mut self, unix_secs: Option<i64>) {
        set_clock(&mut self.env, unix_secs);
    }

    /// Renders like HF `apply_chat_template(messages, add_generation_prompt=..., tokenize=False)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        Ok(self.try_render(messages, add_generation_prompt, None)?)
    }

    /// Renders with extra template variables (HF's `**kwargs` of `apply_chat_template`, e.g.
    /// `enable_thinking`); they override the special-token variables of the same name.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        Ok(self.try_render(messages, add_generation_prompt, Some(kwargs))?)
    }

    /// Renders, telling a `raise_exception` from the template apart from other errors.
    pub fn try_render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> std::result::Result<String, RenderError> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| RenderError::Other(describe(&e)))?;
        let mut ctx: Vec<(String, Value)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        if let Some(kw) = kwargs {
            for (k, v) in kw {
                let v = Value::from_serialize(v);
                match ctx.iter_mut().find(|(n, _)| n == k) {
                    Some(slot) => slot.1 = v,
                    None => ctx.push((k.clone(), v)),
                }
            }
        }
        // `tools` and `documents` may come from kwargs (HF's named arguments); None otherwise.
        ctx.retain(|(k, _)| k != "messages" && k != "add_generation_prompt");
        for name in ["tools", "documents"] {
            if !ctx.iter().any(|(k, _)| k == name) {
                ctx.push((name.into(), Value::from(())));
            }
        }
        ctx.push(("messages".into(), Value::from_serialize(messages)));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx: Value = ctx.into_iter().collect();
        tmpl.render(ctx).map_err(|e| match raised_message(&e) {
            Some(m) => RenderError::Raised(m),
            None => RenderError::Other(describe(&e)),
        })
    }
}

/// One line describing a minijinja error, with the template line where known.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// How `--preference` is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PreferenceIn {
    /// As a system message before the user's prompt (falls back to `User` when the template
    /// rejects a system message).
    #[default]
    System,
    /// Before the prompt in the user message: `P + "\n\n" + prompt`.
    User,
}

/// The pref and base contexts built from text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contexts {
    pub pref_text: String,
    pub pref_ids: Vec<u32>,
    pub base_text: Option<String>,
    pub base_ids: Option<Vec<u32>>,
    /// A one-line note for stderr (e.g. the system-message fallback).
    pub notice: Option<String>,
}

/// Build the pref and base contexts from text as DESIGN §4 says (see [`build_contexts_multi`]).
/// Without a preference there is one context and `base_*` are `None`.
pub fn build_contexts(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    prompt: &str,
    preference: Option<&str>,
    placement: PreferenceIn,
    raw: bool,
) -> Result<Contexts> {
    let prefs: Vec<String> = preference.map(str::to_string).into_iter().collect();
    let (mut pref, base, notice) =
        build_contexts_multi(tok, template, prompt, &prefs, placement, raw)?;
    let (pref_text, pref_ids) = pref.remove(0);
    let (base_text, base_ids) = match base {
        Some((t, i)) => (Some(t), Some(i)),
        None => (None, None),
    };
    Ok(Contexts {
        pref_text,
        pref_ids,
        base_text,
        base_ids,
        notice,
    })
}

/// One pref context per preference (text, ids), the base context (the prompt without any
/// preference; `None` when `preferences` is empty, in which case the single returned "pref"
/// context is the prompt alone), and a notice for stderr.
///
/// - `raw`: pref = `P + "\n\n" + prompt`, base = prompt, tokenized with special tokens added
///   (HF `tokenizer(text)`).
/// - otherwise through the chat template with the generation prompt, tokenized without adding
///   special tokens (HF `apply_chat_template(tokenize=True)`): pref = `[system: P, user: prompt]`
///   (or `[user: P + "\n\n" + prompt]` with [`PreferenceIn::User`]), base = `[user: prompt]`.
///   When the template raises on the system message, or renders it without the preference text,
///   the preference goes into the user message instead and the notice says so.
/// - no template and not raw: an error suggesting `--raw`.
#[allow(clippy::type_complexity)]
pub fn build_contexts_multi(
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    prompt: &str,
    preferences: &[String],
    placement: PreferenceIn,
    raw: bool,
) -> Result<(
    Vec<(String, Vec<u32>)>,
    Option<(String, Vec<u32>)>,
    Option<String>,
)> {
    let in_user = |p: &str| format!("{p}\n\n{prompt}");
    if raw {
        let ctx = |text: String| -> Result<(String, Vec<u32>)> {
            let ids = tok.encode(&text, true)?;
            Ok((text, ids))
        };
        if preferences.is_empty() {
            return Ok((vec![ctx(prompt.to_string())?], None, None));
        }
        let prefs = preferences
            .iter()
            .map(|p| ctx(in_user(p)))
            .collect::<Result<Vec<_>>>()?;
        return Ok((prefs, Some(ctx(prompt.to_string())?), None));
    }
    let Some(tpl) = template else {
        return Err(Error::Template(
            "the model has no chat template; pass --raw to tokenize the prompt as is".into(),
        ));
    };
    let ctx = |text: String| -> Result<(String, Vec<u32>)> {
        let ids = tok.encode(&text, false)?;
        Ok((text, ids))
    };
    let base_text = tpl.render(&[Message::user(prompt)], true)?;
    if preferences.is_empty() {
        return Ok((vec![ctx(base_text)?], None, None));
    }
    let mut notice = None;
    let mut prefs = Vec::with_capacity(preferences.len());
    for p in preferences {
        let user_placed = || tpl.render(&[Message::user(in_user(p))], true);
        let text = match placement {
            PreferenceIn::User => user_placed()?,
            PreferenceIn::System => {
                match tpl.try_render(
                    &[Message::system(p.as_str()), Message::user(prompt)],
                    true,
                    None,
                ) {
                    Ok(t) if t.contains(p.trim()) => t,
                    Ok(_) => {
                        notice.get_or_insert_with(|| {
                            "the chat template drops the system message; the preference is put \
                             before the prompt in the user message instead"
                                .to_string()
                        });
                        user_placed()?
                    }
                    Err(RenderError::Raised(msg)) => {
                        notice.get_or_insert_with(|| {
                            format!(
                                "the chat template rejects a system message ({msg}); the preference \
                                 is put before the prompt in the user message instead"
                            )
                        });
                        user_placed()?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        prefs.push(ctx(text)?);
    }
    Ok((prefs, Some(ctx(base_text)?), notice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fixture model directory (see tests/fixtures/README.md).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A template with `<s>`/`</s>` as bos/eos (shared with the `env` and `pyjson` tests).
    pub(super) fn tpl(source: &str) -> ChatTemplate {
        ChatTemplate::new(source.into(), Some("<s>".into()), Some("</s>".into())).unwrap()
    }

    pub(super) fn render_one(source: &str) -> String {
        tpl(source).render(&[Message::user("hi")], true).unwrap()
    }

    /// A temporary model dir holding the fixture tokenizer and the given extra files.
    fn temp_model_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rear-chat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            fixture("llama_f32").join("tokenizer.json"),
            dir.join("tokenizer.json"),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn compile_errors_name_the_problem() {
        let err = ChatTemplate::new("{% if %}".into(), None, None).unwrap_err();
        assert!(matches!(err, Error::Template(_)));
        assert!(err.to_string().contains("syntax error"), "{err}");
    }

    #[test]
    fn kwargs_override_variables() {
        let t = tpl("{{ bos_token }}{% if enable_thinking is defined and enable_thinking is false %}-nothink{% endif %}");
        let mut kw = serde_json::Map::new();
        kw.insert("enable_thinking".into(), serde_json::Value::Bool(false));
        kw.insert("bos_token".into(), "<B>".into());
        assert_eq!(t.render_with(&[], true, &kw).unwrap(), "<B>-nothink");
        assert_eq!(t.render(&[], true).unwrap(), "<s>");
        // `tools` comes from kwargs when given, else it is None.
        let t = tpl("{{ tools is none }} {{ tools|length if tools else 0 }}");
        assert_eq!(t.render(&[], true).unwrap(), "True 0");
        let mut kw = serde_json::Map::new();
        kw.insert("tools".into(), serde_json::json!([{"name": "f"}]));
        assert_eq!(t.render_with(&[], true, &kw).unwrap(), "False 1");
    }

    #[test]
    fn template_sources_in_model_dir() {
        let cfg = r#"{"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>",
            "chat_template": [{"name": "default", "template": "cfg {{ bos_token }}{{ eos_token }}"}]}"#;
        let dir = temp_model_dir("src", &[("tokenizer_config.json", cfg)]);
        let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "cfg <s></s>");
        // chat_template.jinja wins over the config's template.
        std::fs::write(dir.join("chat_template.jinja"), "file {{ eos_token }}\n").unwrap();
        let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "file </s>");
        std::fs::remove_dir_all(&dir).unwrap();
        // No template anywhere.
        let dir = temp_model_dir("none", &[("tokenizer_config.json", "{}")]);
        assert!(ChatTemplate::from_model_dir(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn contexts_from_a_real_model_dir() {
        let dir = fixture("qwen3_f32");
        let tok = TextTokenizer::from_model_dir(&dir).unwrap().unwrap();
        let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
        let c = build_contexts(
            &tok,
            Some(&t),
            "Q?",
            Some("Be brief."),
            PreferenceIn::System,
            false,
        )
        .unwrap();
        assert_eq!(
            c.pref_text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            c.base_text.as_deref(),
            Some("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
        );
        assert_eq!(c.pref_ids, tok.encode(&c.pref_text, false).unwrap());
        assert_eq!(c.pref_ids[0], 440);
        assert_eq!(c.notice, None);
        let u = build_contexts(
            &tok,
            Some(&t),
            "Q?",
            Some("Be brief."),
            PreferenceIn::User,
            false,
        )
        .unwrap();
        assert_eq!(
            u.pref_text,
            "<|im_start|>user\nBe brief.\n\nQ?<|im_end|>\n<|im_start|>assistant\n"
        );
        // Raw: the text as is, with the tokenizer's special tokens (none added for this model).
        let r = build_contexts(
            &tok,
            None,
            "Q?",
            Some("Be brief."),
            PreferenceIn::System,
            true,
        )
        .unwrap();
        assert_eq!(r.pref_text, "Be brief.\n\nQ?");
        assert_eq!(r.base_ids, Some(tok.encode("Q?", true).unwrap()));
    }

    #[test]
    fn system_fallbacks_give_a_notice() {
        let tok = TextTokenizer::from_model_dir(&fixture("llama_f32"))
            .unwrap()
            .unwrap();
        // A template that silently drops system messages.
        let drops = tpl("{% for m in messages %}{% if m.role == 'user' %}U:{{ m.content }}\n{% endif %}{% endfor %}A:");
        let c = build_contexts(
            &tok,
            Some(&drops),
            "Q",
            Some("P"),
            PreferenceIn::System,
            false,
        )
        .unwrap();
        assert_eq!(c.pref_text, "U:P\n\nQ\nA:");
        assert_eq!(c.base_text.as_deref(), Some("U:Q\nA:"));
        assert!(c.notice.unwrap().contains("drops the system message"));
        // A template that raises on them.
        let raises = tpl("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ messages[0].content }}");
        let c = build_contexts(
            &tok,
            Some(&raises),
            "Q",
            Some("P"),
            PreferenceIn::System,
            false,
        )
        .unwrap();
        assert_eq!(c.pref_text, "P\n\nQ");
        let notice = c.notice.unwrap();
        assert!(notice.contains("System role not supported") && !notice.contains('\n'));
        // A template error that is not about the system message is reported.
        let broken = tpl("{{ messages[0].content + 1 }}");
        let err = build_contexts(
            &tok,
            Some(&broken),
            "Q",
            Some("P"),
            PreferenceIn::System,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{err:?}");
        // No preference: one context, no base.
        let c = build_contexts(&tok, Some(&drops), "Q", None, PreferenceIn::System, false).unwrap();
        assert_eq!(
            (c.pref_text.as_str(), c.base_text, c.base_ids),
            ("U:Q\nA:", None, None)
        );
    }
}
