//! Real chat templates (tests/fixtures/chat_templates/templates, see its README for where each
//! came from) rendered by `rear::model::chat` must give exactly transformers'
//! `apply_chat_template` text and ids (goldens.json, written by
//! scripts/make_chat_template_goldens.py), and the pref/base contexts of DESIGN §4 built from them
//! must be transformers' renderings of the right message lists, with the system-message fallback
//! where the template rejects or drops a system message.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rear::model::chat::{build_contexts, ChatTemplate, Message, PreferenceIn, RenderError};
use rear::model::tokenizer::TextTokenizer;
use serde_json::Value;

/// The fixture dir, or `CHAT_TEMPLATE_FIXTURES` (a scratch sweep the script wrote there).
fn root() -> PathBuf {
    match std::env::var_os("CHAT_TEMPLATE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates"),
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One template's model dir, as the script builds it: the shared tokenizer.json, a
/// tokenizer_config.json with the model's special tokens, and the template as chat_template.jinja.
struct Model {
    tok: TextTokenizer,
    template: ChatTemplate,
}

fn load_model(source: &Value, tmp: &Path, frozen: i64) -> Model {
    let name = source["name"].as_str().unwrap().to_string();
    let dir = tmp.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut cfg = serde_json::json!({
        "backend": "tokenizers",
        "tokenizer_class": "TokenizersBackend",
        "clean_up_tokenization_spaces": false,
    });
    for (k, v) in source["special_tokens"].as_object().unwrap() {
        if !v.is_null() {
            cfg[k] = v.clone();
        }
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        root().join("templates").join(format!("{name}.jinja")),
        dir.join("chat_template.jinja"),
    )
    .unwrap();
    let tok = TextTokenizer::from_model_dir(&dir)
        .unwrap_or_else(|e| panic!("[{name}] tokenizer: {e}"))
        .unwrap();
    let mut template = ChatTemplate::from_model_dir(&dir)
        .unwrap_or_else(|e| panic!("[{name}] template: {e}"))
        .unwrap_or_else(|| panic!("[{name}] no template"));
    template.set_fixed_time(Some(frozen));
    Model { tok, template }
}

fn messages(set: &Value) -> Vec<Message> {
    set["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("a list of token ids")
}

/// The first differing character of two strings, for the failure report.
fn first_diff(a: &str, b: &str) -> String {
    let i = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()));
    let ctx = |s: &str| {
        let mut start = i.saturating_sub(30).min(s.len());
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (i + 50).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!("at byte {i}: rear {} vs transformers {}", ctx(a), ctx(b))
}

#[test]
fn real_templates_render_like_transformers() {
    let goldens = read_json(&root().join("goldens.json"));
    let sources = read_json(&root().join("sources.json"));
    let frozen = goldens["frozen_unix_time"].as_i64().unwrap();
    let sets = goldens["message_sets"].as_object().unwrap();
    let tmp = std::env::temp_dir().join(format!("rear-chat-templates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    let mut failures: Vec<String> = Vec::new();
    let mut identical = 0usize;
    let mut total = 0usize;
    let mut per_template: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for golden in goldens["templates"].as_array().unwrap() {
        let name = golden["name"].as_str().unwrap();
        let source = sources
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("[{name}] not in sources.json"));
        let m = load_model(source, &tmp, frozen);

        // The template variables are transformers' special_tokens_map.
        let mut want: Vec<(String, String)> = golden["special_tokens_map"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let mut got = m.template.vars().to_vec();
        want.sort();
        got.sort();
        if want != got {
            failures.push(format!(
                "[{name}] template variables {got:?} vs transformers {want:?}"
            ));
        }

        let stats = per_template.entry(name.to_string()).or_default();
        for (case_name, case) in golden["cases"].as_object().unwrap() {
            total += 1;
            stats.1 += 1;
            let set = &sets[case_name];
            let msgs = messages(set);
            let agp = set["add_generation_prompt"].as_bool().unwrap();
            let kwargs = set["kwargs"].as_object().unwrap();
            let kwargs = (!kwargs.is_empty()).then_some(kwargs);
            let got = m.template.try_render(&msgs, agp, kwargs);
            let tag = format!("[{name}/{case_name}]");
            let ok = match (&got, case.get("text")) {
                (Ok(text), Some(want)) => {
                    let want = want.as_str().unwrap();
                    if text != want {
                        failures.push(format!("{tag} text differs {}", first_diff(text, want)));
                        false
                    } else {
                        let got_ids = m.tok.encode(text, false).unwrap();
                        if got_ids != ids(&case["ids"]) {
                            failures.push(format!("{tag} ids differ"));
                            false
                        } else {
                            true
                        }
                    }
                }
                (Ok(text), None) => {
                    failures.push(format!(
                        "{tag} rear renders {:?} but transformers raises {}",
                        text.chars().take(80).collect::<String>(),
                        case["error"]
                    ));
                    false
                }
                (Err(e), Some(_)) => {
                    failures.push(format!("{tag} rear fails: {e:?}"));
                    false
                }
                (Err(e), None) => {
                    let want = case["error"].as_str().unwrap();
                    match (e, case["raised"].as_bool().unwrap()) {
                        (RenderError::Raised(msg), true) if msg == want => true,
                        (RenderError::Other(_), false) => true,
                        _ => {
                            failures.push(format!(
                                "{tag} rear error {e:?} vs transformers {want:?} (raise_exception: {})",
                                case["raised"]
                            ));
                            false
                        }
                    }
                }
            };
            if ok {
                identical += 1;
                stats.0 += 1;
            }
        }

        // DESIGN §4: `rear tokenize --prompt X --preference P [--preference-in user]`.
        let ctx = &golden["contexts"];
        if ctx.is_null() {
            continue;
        }
        let prompt = goldens["prompt"].as_str().unwrap();
        let pref = goldens["preference"].as_str().unwrap();
        let case_of = |n: &Value| &golden["cases"][n.as_str().unwrap()];
        for (placement, key) in [
            (PreferenceIn::System, "system"),
            (PreferenceIn::User, "user"),
        ] {
            let tag = format!("[{name}/contexts --preference-in {key}]");
            let want_pref = case_of(&ctx[key]["pref"]);
            let want_base = case_of(&ctx["base"]);
            let fallback = !ctx[key]["fallback"].is_null();
            let got = build_contexts(
                &m.tok,
                Some(&m.template),
                prompt,
                Some(pref),
                placement,
                false,
            );
            // Where transformers fails on a context (other than raise_exception on the system
            // message, which falls back), `rear tokenize` fails too.
            let expect_error = want_base.get("error").is_some() || want_pref.get("error").is_some();
            match got {
                Err(_) if expect_error => {}
                Err(e) => failures.push(format!("{tag} fails: {e}")),
                Ok(c) if expect_error => failures.push(format!(
                    "{tag} rear builds {:?} but transformers fails",
                    c.pref_text
                )),
                Ok(c) => {
                    let same = Some(c.pref_text.as_str()) == want_pref["text"].as_str()
                        && c.pref_ids == ids(&want_pref["ids"])
                        && c.base_text.as_deref() == want_base["text"].as_str()
                        && c.base_ids == Some(ids(&want_base["ids"]))
                        && c.notice.is_some() == fallback;
                    if !same {
                        failures.push(format!(
                            "{tag} pref {:?} base {:?} notice {:?}; want pref case {} base case {} fallback {}",
                            c.pref_text, c.base_text, c.notice, ctx[key]["pref"], ctx["base"],
                            ctx[key]["fallback"]
                        ));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);

    eprintln!(
        "chat templates: {identical}/{total} renders identical to transformers over {} templates",
        per_template.len()
    );
    for (name, (ok, n)) in &per_template {
        if ok != n {
            eprintln!("  {name}: {ok}/{n}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if std::env::var_os("CHAT_TEMPLATE_FIXTURES").is_none() {
        assert!(
            per_template.len() >= 15 && total >= 15 * 10,
            "too few goldens"
        );
    }
}
