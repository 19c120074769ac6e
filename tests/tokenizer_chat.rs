//! Tokenizer and chat-template parity with transformers: every fixture model's golden.json
//! (`encode`, `decode`, `chat`, and the pref/base ids of its `cfg` and `greedy` cases) must be
//! reproduced exactly by `rear::model::tokenizer` and `rear::model::chat`.
use std::path::{Path, PathBuf};

use rear::error::Error;
use rear::model::chat::{
    build_contexts, build_contexts_multi, ChatTemplate, Message, PreferenceIn,
};
use rear::model::tokenizer::TextTokenizer;
use serde_json::Value;

/// The preference and questions `scripts/make_fixtures.py` builds its `cfg` cases from.
const PREFERENCE: &str = "Talk like a pirate.";
const Q1: &str = "Tell me about France.";
const Q2: &str = "What is the capital of France?";
/// The fixture whose template rejects a system message (its `cfg` cases put the preference in the
/// user message).
const REJECTS_SYSTEM: &str = "llama_linear_f16";

struct Fixture {
    name: String,
    dir: PathBuf,
    golden: Value,
    tok: TextTokenizer,
    template: Option<ChatTemplate>,
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.json").is_file() && p.join("tokenizer.json").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(dir.join("golden.json")).unwrap();
            let golden: Value = serde_json::from_str(&text).unwrap();
            let tok = TextTokenizer::from_model_dir(&dir)
                .unwrap_or_else(|e| panic!("[{name}] tokenizer: {e}"))
                .unwrap_or_else(|| panic!("[{name}] no tokenizer.json"));
            let template = ChatTemplate::from_model_dir(&dir)
                .unwrap_or_else(|e| panic!("[{name}] chat template: {e}"));
            Fixture {
                name,
                dir,
                golden,
                tok,
                template,
            }
        })
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("a list of token ids")
}

fn cases<'a>(f: &'a Fixture, key: &str) -> &'a [Value] {
    f.golden[key]
        .as_array()
        .unwrap_or_else(|| panic!("[{}] golden.json has no {key:?} list", f.name))
}

#[test]
fn encode_matches_golden() {
    let mut n = 0;
    for f in fixtures() {
        for c in cases(&f, "encode") {
            let text = c["text"].as_str().unwrap();
            let add = c["add_special_tokens"].as_bool().unwrap();
            let got = f.tok.encode(text, add).unwrap();
            assert_eq!(
                got,
                ids(&c["ids"]),
                "[{}] encode {text:?} add_special_tokens={add}",
                f.name
            );
            n += 1;
        }
    }
    assert!(n > 0);
}

#[test]
fn decode_matches_golden() {
    let mut n = 0;
    for f in fixtures() {
        for c in cases(&f, "decode") {
            let ids = ids(&c["ids"]);
            let skip = c["skip_special_tokens"].as_bool().unwrap();
            let got = f.tok.decode(&ids, skip).unwrap();
            assert_eq!(
                got,
                c["text"].as_str().unwrap(),
                "[{}] decode {ids:?} skip_special_tokens={skip}",
                f.name
            );
            n += 1;
        }
    }
    assert!(n > 0);
}

#[test]
fn chat_matches_golden() {
    let mut n = 0;
    for f in fixtures() {
        let chats = cases(&f, "chat");
        if chats.is_empty() {
            continue;
        }
        let tpl = f.template.as_ref().unwrap_or_else(|| {
            panic!(
                "[{}] golden has chat cases but no template was found in {}",
                f.name,
                f.dir.display()
            )
        });
        for c in chats {
            let msgs: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
            let agp = c["add_generation_prompt"].as_bool().unwrap();
            let got = tpl.render(&msgs, agp);
            match c.get("error").and_then(Value::as_str) {
                Some(want) => {
                    let err = got.expect_err(&format!(
                        "[{}] expected error {want:?} for {msgs:?}",
                        f.name
                    ));
                    assert!(matches!(err, Error::Template(_)), "[{}] {err:?}", f.name);
                    assert!(
                        err.to_string().contains(want),
                        "[{}] error {err} does not contain {want:?}",
                        f.name
                    );
                }
                None => {
                    let text = got.unwrap_or_else(|e| panic!("[{}] render {msgs:?}: {e}", f.name));
                    assert_eq!(
                        text,
                        c["text"].as_str().unwrap(),
                        "[{}] render {msgs:?}",
                        f.name
                    );
                    let got_ids = f.tok.encode(&text, false).unwrap();
                    assert_eq!(got_ids, ids(&c["ids"]), "[{}] ids of {text:?}", f.name);
                }
            }
            n += 1;
        }
    }
    assert!(n > 0);
}

/// The pref/base contexts of the golden CFG cases are those `build_contexts` builds from text.
#[test]
fn contexts_match_golden_cfg() {
    for f in fixtures() {
        let tpl = f.template.as_ref().unwrap();
        let cfg = cases(&f, "cfg");
        assert!(cfg.len() >= 2, "[{}] cfg cases", f.name);
        for (case, q) in [(&cfg[0], Q1), (&cfg[1], Q2)] {
            let c = build_contexts(
                &f.tok,
                Some(tpl),
                q,
                Some(PREFERENCE),
                PreferenceIn::System,
                false,
            )
            .unwrap_or_else(|e| panic!("[{}] {e}", f.name));
            assert_eq!(
                c.pref_ids,
                ids(&case["prompt_ids"]),
                "[{}] pref ids for {q:?}",
                f.name
            );
            assert_eq!(
                c.base_ids.as_ref(),
                Some(&ids(&case["base_ids"])),
                "[{}] base ids for {q:?}",
                f.name
            );
            assert_eq!(c.pref_ids, f.tok.encode(&c.pref_text, false).unwrap());
            assert_eq!(
                c.base_text.as_deref(),
                Some(tpl.render(&[Message::user(q)], true).unwrap().as_str())
            );
            if f.name == REJECTS_SYSTEM {
                let notice = c
                    .notice
                    .as_deref()
                    .unwrap_or_else(|| panic!("[{}] no fallback notice", f.name));
                assert!(notice.contains("System role not supported"), "{notice}");
                assert!(!notice.contains('\n'), "{notice}");
                // Explicit user placement gives the same contexts, without a notice.
                let u = build_contexts(
                    &f.tok,
                    Some(tpl),
                    q,
                    Some(PREFERENCE),
                    PreferenceIn::User,
                    false,
                )
                .unwrap();
                assert_eq!(
                    (u.pref_ids, u.base_ids, u.notice),
                    (c.pref_ids, c.base_ids, None)
                );
            } else {
                assert_eq!(c.notice, None, "[{}]", f.name);
                assert!(c.pref_text.contains(PREFERENCE));
            }
        }
    }
}

/// One context without a preference: the greedy cases' prompts through the template and raw.
#[test]
fn single_context_matches_golden_greedy() {
    for f in fixtures() {
        let tpl = f.template.as_ref().unwrap();
        let greedy = cases(&f, "greedy");
        let c = build_contexts(&f.tok, Some(tpl), Q2, None, PreferenceIn::System, false).unwrap();
        assert_eq!(
            c.pref_ids,
            ids(&greedy[0]["prompt_ids"]),
            "[{}] templated prompt",
            f.name
        );
        assert_eq!((c.base_text, c.base_ids, c.notice), (None, None, None));
        let raw = "Once upon a time, the pirate";
        let c = build_contexts(&f.tok, None, raw, None, PreferenceIn::System, true).unwrap();
        assert_eq!(
            c.pref_ids,
            ids(&greedy[1]["prompt_ids"]),
            "[{}] raw prompt",
            f.name
        );
        assert_eq!(c.pref_text, raw);
    }
}

#[test]
fn raw_contexts_and_missing_template() {
    for f in fixtures() {
        let c = build_contexts(
            &f.tok,
            f.template.as_ref(),
            Q1,
            Some(PREFERENCE),
            PreferenceIn::System,
            true,
        )
        .unwrap();
        let pref = format!("{PREFERENCE}\n\n{Q1}");
        assert_eq!(c.pref_text, pref);
        assert_eq!(c.pref_ids, f.tok.encode(&pref, true).unwrap());
        assert_eq!(c.base_text.as_deref(), Some(Q1));
        assert_eq!(c.base_ids, Some(f.tok.encode(Q1, true).unwrap()));

        let err = build_contexts(
            &f.tok,
            None,
            Q1,
            Some(PREFERENCE),
            PreferenceIn::System,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{err:?}");
        assert!(err.to_string().contains("--raw"), "{err}");
    }
}

#[test]
fn multi_preference_contexts() {
    for f in fixtures() {
        let tpl = f.template.as_ref().unwrap();
        let prefs = vec![PREFERENCE.to_string(), "Answer concisely.".to_string()];
        let (pref, base, _) =
            build_contexts_multi(&f.tok, Some(tpl), Q1, &prefs, PreferenceIn::System, false)
                .unwrap();
        assert_eq!(pref.len(), 2);
        let single = build_contexts(
            &f.tok,
            Some(tpl),
            Q1,
            Some(PREFERENCE),
            PreferenceIn::System,
            false,
        )
        .unwrap();
        assert_eq!(pref[0], (single.pref_text, single.pref_ids));
        assert_eq!(base, single.base_text.zip(single.base_ids));
        assert!(pref[1].0.contains("Answer concisely."));
    }
}
