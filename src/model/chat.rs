//! Chat templates (HF `chat_template` Jinja source rendered with minijinja in an environment set up
//! like transformers' `apply_chat_template`), and the pref/base contexts built from text
//! (DESIGN §4 "Contexts from text").
use std::path::Path;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};

use crate::error::{Error, Result};
use crate::model::tokenizer::{TextTokenizer, TokenizerConfig};

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

/// Marker attached (as error source) to the errors `raise_exception` produces.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

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
        let source = if jinja.is_file() {
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

fn raised_message(e: &minijinja::Error) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        src = s.source();
    }
    None
}

/// The Jinja environment of transformers' `_compile_jinja_template`: `trim_blocks`,
/// `lstrip_blocks`, no trailing newline kept, no autoescape, `loopcontrols`, python string and dict
/// methods, `raise_exception`, `strftime_now`, HF's `tojson`, and the `{% generation %}` tag (a
/// no-op when rendering). Values print as Python prints them (`None`, `True`, `['a']`).
fn hf_environment(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("truncate", truncate);
    env.add_filter("center", center);
    env.add_filter("wordcount", wordcount);
    env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))
        .map_err(|e| Error::Template(describe(&e)))?;
    Ok(env)
}

fn raise_exception(message: Value) -> std::result::Result<Value, minijinja::Error> {
    let msg = py_str(&message);
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// Python `str(value)` for printing.
fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        _ => py_repr(v),
    }
}

/// Python `repr(value)` (strings quoted; None/True/False; lists and dicts).
fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    write_py_repr(&mut out, v);
    out
}

fn write_py_repr(out: &mut String, v: &Value) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(v)),
        ValueKind::String => py_quote(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(it) = v.try_iter() {
                for (i, item) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_py_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(it) = v.try_iter() {
                for (i, key) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_py_repr(out, &key);
                    out.push_str(": ");
                    write_py_repr(out, &v.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
}

fn py_quote(out: &mut String, s: &str) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

fn py_number(v: &Value) -> String {
    if v.is_integer() {
        v.to_string()
    } else {
        match f64::try_from(v.clone()) {
            Ok(f) => py_float_repr(f),
            Err(_) => v.to_string(),
        }
    }
}

/// Python `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits as d.ddde±x.
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                s.push_str(&digits);
                for _ in digits.len()..point {
                    s.push('0');
                }
                s.push_str(".0");
            } else {
                s.push_str(&digits[..point]);
                s.push('.');
                s.push_str(&digits[point..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    s
}

/// Prints values as Jinja2 does (Python `str()`), instead of minijinja's `none`/`true`/`["a"]`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None
        | ValueKind::Bool
        | ValueKind::Number
        | ValueKind::Seq
        | ValueKind::Map
        | ValueKind::Iterable => out
            .write_str(&py_str(value))
            .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "formatting")),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Binds positional and keyword arguments to Python-style parameters `names` (all optional).
fn bind_args(
    func: &str,
    args: Rest<Value>,
    names: &[&str],
) -> std::result::Result<Vec<Option<Value>>, minijinja::Error> {
    let mut positional: Vec<Value> = args.0;
    let kwargs = match positional.last() {
        Some(v) if v.is_kwargs() => Some(Kwargs::try_from(positional.pop().unwrap_or_default())?),
        _ => None,
    };
    if positional.len() > names.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            format!(
                "{func} takes at most {} arguments ({})",
                names.len(),
                names.join(", ")
            ),
        ));
    }
    let mut slots: Vec<Option<Value>> = vec![None; names.len()];
    for (i, v) in positional.into_iter().enumerate() {
        slots[i] = Some(v);
    }
    if let Some(kw) = &kwargs {
        for (i, name) in names.iter().enumerate() {
            if kw.has(name) {
                if slots[i].is_some() {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("{func} got multiple values for argument '{name}'"),
                    ));
                }
                slots[i] = Some(kw.get::<Value>(name)?);
            }
        }
        kw.assert_all_used()?;
    }
    // Python's None means "use the default".
    Ok(slots
        .into_iter()
        .map(|v| v.filter(|v| !v.is_none() && !v.is_undefined()))
        .collect())
}

fn int_arg(
    func: &str,
    v: &Option<Value>,
    default: i64,
) -> std::result::Result<i64, minijinja::Error> {
    match v {
        None => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("{func}: expected an integer, got {v}"),
            )
        }),
    }
}

/// Jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`.
fn truncate(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let a = bind_args("truncate", args, &["length", "killwords", "end", "leeway"])?;
    let s = py_str(value);
    let length = int_arg("truncate", &a[0], 255)?.max(0) as usize;
    let killwords = a[1].as_ref().is_some_and(Value::is_true);
    let end = a[2]
        .as_ref()
        .map(py_str)
        .unwrap_or_else(|| "...".to_string());
    let leeway = int_arg("truncate", &a[3], 5)?.max(0) as usize;
    let chars: Vec<char> = s.chars().collect();
    let end_len = end.chars().count();
    if length < end_len {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("expected length >= {end_len}, got {length}"),
        ));
    }
    if chars.len() <= length + leeway {
        return Ok(Value::from(s));
    }
    let head: String = chars[..length - end_len].iter().collect();
    let head = if killwords {
        head
    } else {
        match head.rfind(' ') {
            Some(i) => head[..i].to_string(),
            None => head,
        }
    };
    Ok(Value::from(head + &end))
}

/// Jinja2's `center(s, width=80)` (Python `str.center`).
fn center(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let a = bind_args("center", args, &["width"])?;
    let s = py_str(value);
    let width = int_arg("center", &a[0], 80)?;
    let len = s.chars().count() as i64;
    if width <= len {
        return Ok(Value::from(s));
    }
    let marg = width - len;
    let left = marg / 2 + (marg & width & 1);
    let right = marg - left;
    Ok(Value::from(format!(
        "{}{s}{}",
        " ".repeat(left as usize),
        " ".repeat(right as usize)
    )))
}

/// Jinja2's `wordcount`: the number of `\w+` runs.
fn wordcount(value: &Value) -> usize {
    let s = py_str(value);
    let mut n = 0;
    let mut in_word = false;
    for c in s.chars() {
        let w = c.is_alphanumeric() || c == '_';
        if w && !in_word {
            n += 1;
        }
        in_word = w;
    }
    n
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, i.e.
/// Python `json.dumps` with those arguments (positional or keyword).
fn tojson(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let slots = bind_args(
        "tojson",
        args,
        &["ensure_ascii", "indent", "separators", "sort_keys"],
    )?;
    let ensure_ascii = slots[0].as_ref().is_some_and(Value::is_true);
    let indent = match &slots[1] {
        None => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                )
            })?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let (item_sep, key_sep) = match &slots[2] {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = slots[3].as_ref().is_some_and(Value::is_true);
    let dumper = JsonDumper {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    dumper.dump(&mut out, value, 0)?;
    Ok(Value::from(out))
}

/// Python `json.dumps` over minijinja values.
struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn dump(
        &self,
        out: &mut String,
        v: &Value,
        level: usize,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone())?;
                    out.push_str(&if f.is_nan() {
                        "NaN".to_string()
                    } else if f.is_infinite() {
                        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
                    } else {
                        py_float_repr(f)
                    });
                }
            }
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.dump(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for key in v.try_iter()? {
                    let k = match key.kind() {
                        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                        ValueKind::None => "null".into(),
                        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
                        ValueKind::Number => py_number(&key),
                        _ => {
                            return Err(minijinja::Error::new(
                                ErrorKind::InvalidOperation,
                                format!(
                                    "tojson: keys must be str, int, float, bool or None, not {}",
                                    key.kind()
                                ),
                            ))
                        }
                    };
                    let val = v.get_item(&key)?;
                    entries.push((k, val));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (k, val)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.string(out, k);
                    out.push_str(&self.key_sep);
                    self.dump(out, val, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.ensure_ascii && (c as u32) > 0x7e => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// HF's `strftime_now(format)`: the current time formatted with C `strftime` directives. The
/// time is UTC (the local time of a machine whose time zone is UTC).
fn strftime_now(format: &str) -> std::result::Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(format, secs)))
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `strftime` of a UTC unix time for the common directives (glibc's `%-d` style flags too).
fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (Monday = 0)
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let num = |v: i64, width: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        let s = match d {
            'a' => WEEKDAYS[weekday][..3].to_string(),
            'A' => WEEKDAYS[weekday].to_string(),
            'b' | 'h' => MONTHS[month as usize - 1][..3].to_string(),
            'B' => MONTHS[month as usize - 1].to_string(),
            'd' => num(day, 2),
            'e' => {
                if no_pad {
                    day.to_string()
                } else {
                    format!("{day:2}")
                }
            }
            'm' => num(month, 2),
            'y' => num(year.rem_euclid(100), 2),
            'Y' => year.to_string(),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'M' => num(minute, 2),
            'S' => num(second, 2),
            'p' => if hour < 12 { "AM" } else { "PM" }.to_string(),
            'j' => num(yday, 3),
            'u' => (weekday + 1).to_string(),
            'w' => ((weekday + 1) % 7).to_string(),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'D' => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            'R' => format!("{hour:02}:{minute:02}"),
            'c' => format!(
                "{} {} {day:2} {hour:02}:{minute:02}:{second:02} {year}",
                &WEEKDAYS[weekday][..3],
                &MONTHS[month as usize - 1][..3]
            ),
            'x' => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            'X' => format!("{hour:02}:{minute:02}:{second:02}"),
            'Z' => "UTC".to_string(),
            'z' => "+0000".to_string(),
            's' => unix_secs.to_string(),
            'n' => "\n".to_string(),
            't' => "\t".to_string(),
            '%' => "%".to_string(),
            other => format!("%{}{other}", if no_pad { "-" } else { "" }),
        };
        out.push_str(&s);
    }
    out
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Turns HF's `{% generation %}` / `{% endgeneration %}` tags (assistant-mask tracking, output
/// unchanged) into `{% if true %}` / `{% endif %}`, keeping whitespace-control markers so
/// trimming stays the same.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lmark, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, rmark) = match body.trim_end().chars().last() {
            Some(c @ ('-' | '+')) if body.trim().len() > 1 => {
                let t = body.trim_end();
                (&t[..t.len() - 1], c.to_string())
            }
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lmark} if true {rmark}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lmark} endif {rmark}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
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

    fn tpl(source: &str) -> ChatTemplate {
        ChatTemplate::new(source.into(), Some("<s>".into()), Some("</s>".into())).unwrap()
    }

    fn render_one(source: &str) -> String {
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
    fn jinja_settings_match_transformers() {
        // trim_blocks + lstrip_blocks, and the template's final newline dropped.
        let src = "{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(render_one(src), "[user]\n");
        // Python printing of values.
        assert_eq!(
            render_one("{{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': false} }} {{ 1e20 }} {{ 10/4 }}"),
            "None True [1, 'a', None] {'k': False} 1e+20 2.5"
        );
        // Python string and dict methods.
        assert_eq!(
            render_one("{{ '  A b '.strip().lower() }}|{{ 'a,b'.split(',') }}|{{ 'abc'.startswith('ab') }}|{% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}"),
            "a b|['a', 'b']|True|x1"
        );
        // Special-token variables, tools/documents as None, add_generation_prompt.
        assert_eq!(
            render_one("{{ bos_token }}{{ eos_token }} {{ tools is none }} {{ documents is none }} {{ add_generation_prompt }} {{ pad_token is defined }}"),
            "<s></s> True True True False"
        );
        // {% generation %} is accepted and renders its body.
        assert_eq!(
            render_one("a\n{%- generation -%}\n b {{ 1 }}\n{%- endgeneration %}\nc"),
            "ab 1c"
        );
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let value = "{'b': [1, 2.0, none, true], 'a': {'x': 'é\"\\n'}, 'c': {}}";
        assert_eq!(
            render_one(&format!("{{{{ {value}|tojson }}}}")),
            "{\"b\": [1, 2.0, null, true], \"a\": {\"x\": \"é\\\"\\n\"}, \"c\": {}}"
        );
        assert_eq!(
            render_one(&format!("{{{{ {value}|tojson(indent=2, sort_keys=true) }}}}")),
            "{\n  \"a\": {\n    \"x\": \"é\\\"\\n\"\n  },\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"c\": {}\n}"
        );
        assert_eq!(
            render_one("{{ ['ü🙂', '\\x01'] | tojson(ensure_ascii=true, separators=(',', ':')) }}"),
            "[\"\\u00fc\\ud83d\\ude42\",\"\\u0001\"]"
        );
        assert_eq!(render_one("{{ '<a&b>'|tojson }}"), "\"<a&b>\"");
        assert!(tpl("{{ x|tojson }}").render(&[], false).is_err());
    }

    #[test]
    fn python_float_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (123456.789, "123456.789"),
            (1e22, "1e+22"),
            (-2.5e-7, "-2.5e-07"),
            (0.0001, "0.0001"),
            (9999999999999998.0, "9999999999999998.0"),
            (1.5e300, "1.5e+300"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_directives() {
        // 2024-07-26 13:20:00 UTC, a Friday.
        let t = 1_722_000_000;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d %H:%M:%S %j %I%p %y %e|%a %w %u %%", t),
            "Friday July 26 13:20:00 208 01PM 24 26|Fri 5 5 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%F", 951_782_400), "2000-02-29");
        let now = render_one("{{ strftime_now('%Y') }}");
        assert_eq!(now.len(), 4, "{now}");
    }

    #[test]
    fn raise_exception_keeps_the_message() {
        let t = tpl("{% if messages[0].role == 'system' %}{{ raise_exception('No system: ' + messages[0].role) }}{% endif %}ok");
        let msgs = [Message::system("p"), Message::user("q")];
        assert_eq!(
            t.try_render(&msgs, true, None),
            Err(RenderError::Raised("No system: system".into()))
        );
        let err = t.render(&msgs, true).unwrap_err();
        assert!(
            matches!(&err, Error::Template(m) if m == "No system: system"),
            "{err:?}"
        );
        assert_eq!(t.render(&msgs[1..], true).unwrap(), "ok");
        // Other failures are not `Raised`.
        let t = tpl("{{ messages[0].content + 1 }}");
        assert!(matches!(
            t.try_render(&[Message::user("x")], true, None),
            Err(RenderError::Other(_))
        ));
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
