//! The Jinja environment of transformers' `apply_chat_template` in minijinja: its settings,
//! `raise_exception`, `strftime_now`, Jinja2's `truncate`/`center`/`wordcount` filters with
//! Python-style arguments, and the `{% generation %}` tag.
use minijinja::value::{Kwargs, Rest, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

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
}
