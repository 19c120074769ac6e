//! The Jinja environment of transformers' `apply_chat_template` in minijinja: its settings,
//! `raise_exception`, `strftime_now`, Jinja2's `truncate`/`center`/`wordcount` filters with
//! Python-style arguments, and the `{% generation %}` tag.
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};

use super::pyjson::{py_str, python_formatter, tojson};
use super::{describe, TEMPLATE_NAME};
use crate::error::{Error, Result};

/// Marker attached (as error source) to the errors `raise_exception` produces.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}
pub(super) fn raised_message(e: &minijinja::Error) -> Option<String> {
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
pub(super) fn hf_environment(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(python_methods);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("truncate", truncate);
    env.add_filter("center", center);
    env.add_filter("wordcount", wordcount);
    env.add_filter("string", |v: &Value| Value::from(py_str(v)));
    env.add_filter("trim", trim);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("int", int_filter);
    env.add_filter("float", float_filter);
    env.add_test("iterable", is_iterable);
    env.add_test("sequence", is_sequence);
    env.add_test("number", |v: &Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });
    // Jinja2 turns every newline of the template source (\r\n, \r) into \n.
    let source = source.replace("\r\n", "\n").replace('\r', "\n");
    env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(&source))
        .map_err(|e| Error::Template(describe(&e)))?;
    Ok(env)
}

fn raise_exception(message: Value) -> std::result::Result<Value, minijinja::Error> {
    let msg = py_str(&message);
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// Binds positional and keyword arguments to Python-style parameters `names` (all optional).
pub(super) fn bind_args(
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
/// Python's `str.isspace` characters: Rust's White_Space plus the separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip`/`lstrip`/`rstrip` (`chars` None: Python whitespace).
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let set: Option<Vec<char>> = chars.map(|c| c.chars().collect());
    let strip = |c: char| match &set {
        Some(set) => set.contains(&c),
        None => py_space(c),
    };
    let s = if left { s.trim_start_matches(strip) } else { s };
    if right {
        s.trim_end_matches(strip)
    } else {
        s
    }
}

/// Python `str.split(sep=None, maxsplit=-1)` and `rsplit`.
fn py_split(s: &str, sep: Option<&str>, maxsplit: i64, from_right: bool) -> Result<Vec<String>> {
    let max = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    match sep {
        Some("") => Err(Error::Template("empty separator".into())),
        Some(sep) => Ok(if from_right {
            let mut v: Vec<String> = s
                .rsplitn(max.saturating_add(1), sep)
                .map(String::from)
                .collect();
            v.reverse();
            v
        } else {
            s.splitn(max.saturating_add(1), sep)
                .map(String::from)
                .collect()
        }),
        None => {
            // Runs of whitespace separate; no empty strings; the rest after maxsplit is kept
            // with its inner whitespace (stripped on the split side).
            let chars: Vec<char> = s.chars().collect();
            let mut out = Vec::new();
            if from_right {
                let mut end = chars.len();
                while end > 0 {
                    while end > 0 && py_space(chars[end - 1]) {
                        end -= 1;
                    }
                    if end == 0 {
                        break;
                    }
                    if out.len() == max {
                        let rest: String = chars[..end].iter().collect();
                        out.push(py_strip(&rest, None, true, false).to_string());
                        break;
                    }
                    let mut start = end;
                    while start > 0 && !py_space(chars[start - 1]) {
                        start -= 1;
                    }
                    out.push(chars[start..end].iter().collect());
                    end = start;
                }
                out.reverse();
            } else {
                let mut i = 0;
                while i < chars.len() {
                    while i < chars.len() && py_space(chars[i]) {
                        i += 1;
                    }
                    if i == chars.len() {
                        break;
                    }
                    if out.len() == max {
                        let rest: String = chars[i..].iter().collect();
                        out.push(py_strip(&rest, None, false, true).to_string());
                        break;
                    }
                    let start = i;
                    while i < chars.len() && !py_space(chars[i]) {
                        i += 1;
                    }
                    out.push(chars[start..i].iter().collect());
                }
            }
            Ok(out)
        }
    }
}

/// Python `str.splitlines(keepends=False)`: every Python line boundary.
fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < chars.len() {
        let c = chars[i];
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if is_break {
            let mut end = i + 1;
            if c == '\r' && chars.get(i + 1) == Some(&'\n') {
                end += 1;
            }
            let stop = if keepends { end } else { i };
            out.push(chars[start..stop].iter().collect());
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    if start < chars.len() {
        out.push(chars[start..].iter().collect());
    }
    out
}

fn method_err(e: Error) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string())
}

fn opt_str(v: Option<&Value>) -> std::result::Result<Option<String>, minijinja::Error> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => match v.as_str() {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("expected a string or None, got {}", py_str(v)),
            )),
        },
    }
}

/// Python string, list and dict methods: Python whitespace for `strip`/`split`, `rsplit`,
/// `splitlines` on every Python line boundary, `find`/`rfind`/`index` in characters, `list.index`;
/// the rest from minijinja-contrib's pycompat.
fn python_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let kw = args.last().filter(|v| v.is_kwargs()).cloned();
        let pos: Vec<&Value> = args.iter().filter(|v| !v.is_kwargs()).collect();
        let kwarg = |name: &str| -> Option<Value> {
            kw.as_ref()
                .and_then(|k| Kwargs::try_from(k.clone()).ok())
                .and_then(|k| k.get::<Value>(name).ok())
        };
        match method {
            "strip" | "lstrip" | "rstrip" if kw.is_none() && pos.len() <= 1 => {
                let chars = opt_str(pos.first().copied())?;
                let (l, r) = match method {
                    "strip" => (true, true),
                    "lstrip" => (true, false),
                    _ => (false, true),
                };
                return Ok(Value::from(py_strip(s, chars.as_deref(), l, r)));
            }
            "split" | "rsplit" if pos.len() <= 2 => {
                let sep = match kwarg("sep") {
                    Some(v) => opt_str(Some(&v))?,
                    None => opt_str(pos.first().copied())?,
                };
                let max = match kwarg("maxsplit").or_else(|| pos.get(1).map(|v| (*v).clone())) {
                    Some(v) => v.as_i64().unwrap_or(-1),
                    None => -1,
                };
                let parts =
                    py_split(s, sep.as_deref(), max, method == "rsplit").map_err(method_err)?;
                return Ok(Value::from(parts));
            }
            "splitlines" if pos.len() <= 1 => {
                let keep = pos
                    .first()
                    .map(|v| v.is_true())
                    .or_else(|| kwarg("keepends").map(|v| v.is_true()))
                    .unwrap_or(false);
                return Ok(Value::from(py_splitlines(s, keep)));
            }
            "find" | "rfind" | "index" | "rindex" if pos.len() == 1 => {
                let Some(what) = pos[0].as_str() else {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("{method}: expected a string"),
                    ));
                };
                let at = if method.starts_with('r') {
                    s.rfind(what)
                } else {
                    s.find(what)
                };
                return match at {
                    Some(b) => Ok(Value::from(s[..b].chars().count() as i64)),
                    None if method.ends_with("find") => Ok(Value::from(-1)),
                    None => Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "substring not found",
                    )),
                };
            }
            _ => {}
        }
    } else if value.kind() == ValueKind::Seq && method == "index" && args.len() == 1 {
        if let Ok(it) = value.try_iter() {
            for (i, item) in it.enumerate() {
                if item == args[0] {
                    return Ok(Value::from(i as i64));
                }
            }
        }
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("{} is not in list", py_str(&args[0])),
        ));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Jinja2's `trim(value, chars=None)`: Python `str.strip` of `str(value)`.
fn trim(value: &Value, chars: Option<Value>) -> std::result::Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Ok(Value::from(""));
    }
    let s = py_str(value);
    let chars = opt_str(chars.as_ref())?;
    Ok(Value::from(py_strip(&s, chars.as_deref(), true, true)))
}

/// Jinja2's `length`/`count`: Python `len`, 0 for an undefined value.
fn length(value: &Value) -> std::result::Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Ok(Value::from(0));
    }
    match value.len() {
        Some(n) => Ok(Value::from(n)),
        None => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("object of type {} has no len()", value.kind()),
        )),
    }
}

/// Jinja2's `int(value, default=0, base=10)`: strings parse as int (any base, with `0x`, `0o`,
/// `0b` prefixes for base 0/16/8/2) or else as a float truncated; anything unparsable gives
/// `default`.
fn int_filter(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let a = bind_args("int", args, &["default", "base"])?;
    let default = a[0].clone().unwrap_or(Value::from(0));
    let base = int_arg("int", &a[1], 10)?;
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "undefined value",
        ));
    }
    if let Some(s) = value.as_str() {
        let t = py_strip(s, None, true, true).replace('_', "");
        let (neg, digits) = match t.strip_prefix('-') {
            Some(d) => (true, d.to_string()),
            None => (false, t.strip_prefix('+').unwrap_or(&t).to_string()),
        };
        let lower = digits.to_ascii_lowercase();
        let (radix, body) = match (base, lower.get(..2)) {
            (0 | 16, Some("0x")) => (16, &lower[2..]),
            (0 | 8, Some("0o")) => (8, &lower[2..]),
            (0 | 2, Some("0b")) => (2, &lower[2..]),
            (0, _) => (10, lower.as_str()),
            (b, _) => (b as u32, lower.as_str()),
        };
        if (2..=36).contains(&radix) && !body.is_empty() {
            if let Ok(v) = i64::from_str_radix(body, radix) {
                return Ok(Value::from(if neg { -v } else { v }));
            }
        }
        if let Ok(f) = t.parse::<f64>() {
            if f.is_finite() {
                return Ok(Value::from(f.trunc() as i64));
            }
        }
        return Ok(default);
    }
    match value.kind() {
        ValueKind::Bool => Ok(Value::from(value.is_true() as i64)),
        ValueKind::Number if value.is_integer() => Ok(value.clone()),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_finite() => Ok(Value::from(f.trunc() as i64)),
            _ => Ok(default),
        },
        _ => Ok(default),
    }
}

/// Jinja2's `float(value, default=0.0)`.
fn float_filter(value: &Value, args: Rest<Value>) -> std::result::Result<Value, minijinja::Error> {
    let a = bind_args("float", args, &["default"])?;
    let default = a[0].clone().unwrap_or(Value::from(0.0));
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "undefined value",
        ));
    }
    if let Some(s) = value.as_str() {
        let t = py_strip(s, None, true, true).replace('_', "");
        let lower = t.to_ascii_lowercase();
        let special = match lower.trim_start_matches(['+', '-']) {
            "inf" | "infinity" => Some(f64::INFINITY),
            "nan" => Some(f64::NAN),
            _ => None,
        };
        if let Some(v) = special {
            return Ok(Value::from(if lower.starts_with('-') { -v } else { v }));
        }
        return Ok(t.parse::<f64>().map(Value::from).unwrap_or(default));
    }
    match value.kind() {
        ValueKind::Bool => Ok(Value::from(if value.is_true() { 1.0 } else { 0.0 })),
        ValueKind::Number => Ok(f64::try_from(value.clone())
            .map(Value::from)
            .unwrap_or(default)),
        _ => Ok(default),
    }
}

/// Jinja2's `iterable` test: Python `iter(value)` works (undefined iterates as empty; None does
/// not iterate).
fn is_iterable(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined => true,
        ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
        _ => v.try_iter().is_ok(),
    }
}

/// Jinja2's `sequence` test: `len(value)` and `value.__getitem__` exist (strings, lists, dicts,
/// undefined).
fn is_sequence(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Bytes => true,
        _ => false,
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

/// Makes `strftime_now` report the fixed UTC unix time `unix_secs` (`None`: the clock again), for
/// reproducible renders of date-dependent templates.
pub(super) fn set_clock(env: &mut Environment<'static>, unix_secs: Option<i64>) {
    match unix_secs {
        None => env.add_function("strftime_now", strftime_now),
        Some(t) => env.add_function(
            "strftime_now",
            move |format: &str| -> std::result::Result<Value, minijinja::Error> {
                Ok(Value::from(strftime(format, t)))
            },
        ),
    }
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
            // transformers formats a naive `datetime.now()`: no zone.
            'Z' | 'z' => String::new(),
            'U' => num((yday + 6 - ((weekday as i64 + 1) % 7)) / 7, 2),
            'W' => num((yday + 6 - weekday as i64) / 7, 2),
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
#[cfg(test)]
mod tests {
    use super::super::tests::{render_one, tpl};
    use super::*;
    use crate::model::chat::{Message, RenderError};

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
    fn jinja2_tests_filters_and_methods() {
        // Each expected value is what transformers' Jinja2 environment renders (checked by the
        // probe sweep of scripts/make_chat_template_goldens.py).
        assert_eq!(
            render_one("{{ none is iterable }} {{ nosuch is iterable }} {{ 'a' is sequence }} {{ {'a': 1} is sequence }} {{ none is sequence }} {{ true is number }} {{ true is integer }}"),
            "False True True True False True False"
        );
        assert_eq!(
            render_one("{{ [1, 'a', none]|string }} {{ {'k': true}|string }} {{ nosuch|length }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ '0x1A'|int(0, 16) }} {{ ''|float }} {{ '2.5'|float }}"),
            "[1, 'a', None] {'k': True} 0 3 0 7 26 0.0 2.5"
        );
        // Python whitespace (U+001C..U+001F included) and character offsets.
        assert_eq!(
            render_one("{{ '\x1c a \x1f'|trim|length }} {{ '\x1c a \x1f'.strip()|length }} {{ ' a\x1fb  c '.split() }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'a b  c'.split(none, 1) }} {{ 'é<x>'.find('<') }} {{ 'a\\rb\\r\\nc\\u0085d'.splitlines() }} {{ [3, 1].index(1) }}"),
            "1 1 ['a', 'b', 'c'] ['a,b', 'c'] ['a', 'b  c'] 1 ['a', 'b', 'c', 'd'] 1"
        );
        // Template source newlines are \n whatever the file used.
        assert_eq!(
            render_one("a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc"),
            "a\nb\nc"
        );
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
        // transformers formats a naive datetime: %Z and %z are empty.
        assert_eq!(strftime("%U %W|%Z|%z", t), "29 30||");
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
}
