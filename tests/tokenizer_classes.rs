//! Tokenizer-class parity with transformers 5: every directory of tests/fixtures/tokenizers/
//! (written by scripts/make_tokenizer_fixtures.py) is loaded with `TextTokenizer::from_model_dir`
//! and must give the class `AutoTokenizer` picked, `len(tokenizer)`, the special tokens and their
//! ids, and for each golden string the ids of `tokenizer(text)` with and without special tokens and
//! `decode` of them, exactly as golden.json records; where golden.json has a `chat` entry, also
//! `apply_chat_template([user: prompt], add_generation_prompt=True)` (text and ids).
use std::path::{Path, PathBuf};

use rear::model::chat::{build_contexts, ChatTemplate, PreferenceIn};
use rear::model::tokenizer::{TextTokenizer, TokenizerConfig};
use serde_json::Value;

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 20,
        "too few fixtures under {}",
        root.display()
    );
    dirs
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("a list of token ids")
}

#[test]
fn tokenizer_classes_match_transformers() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in fixture_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let tok = match TextTokenizer::from_model_dir(&dir) {
            Ok(Some(t)) => t,
            Ok(None) => panic!("[{name}] no tokenizer.json"),
            Err(e) => {
                failures.push(format!("[{name}] load: {e}"));
                continue;
            }
        };
        let mut fail = |what: String| failures.push(format!("[{name}] {what}"));
        let class = golden["tokenizer_class"].as_str().unwrap();
        if tok.tokenizer_class() != class {
            fail(format!("class {} != {class}", tok.tokenizer_class()));
        }
        let len = golden["len"].as_u64().unwrap() as usize;
        if tok.vocab_size() != len {
            fail(format!("len {} != {len}", tok.vocab_size()));
        }
        // HF's special_tokens_map (named tokens with the class defaults) and their ids.
        let special = golden["special_tokens"].as_object().unwrap();
        let want: Vec<(String, String)> = special
            .iter()
            .map(|(k, v)| (k.clone(), v[0].as_str().unwrap().to_string()))
            .collect();
        let mut got = tok.special_tokens_map();
        got.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        if got != want_sorted {
            fail(format!("special tokens {got:?} != {want_sorted:?}"));
        }
        for (k, v) in special {
            let id = v[1].as_u64().map(|i| i as u32);
            if tok.special_token_id(k) != id {
                fail(format!("{k} id {:?} != {id:?}", tok.special_token_id(k)));
            }
        }
        // The chat template sees the same special tokens.
        let cfg = TokenizerConfig::from_model_dir(&dir).unwrap().unwrap();
        let mut cfg_map = cfg.special_tokens_map();
        cfg_map.sort();
        if cfg_map != want_sorted {
            fail(format!(
                "config special tokens {cfg_map:?} != {want_sorted:?}"
            ));
        }
        if let Some(chat) = golden.get("chat") {
            let template = ChatTemplate::from_model_dir(&dir)
                .unwrap()
                .expect("a chat template");
            let prompt = chat["prompt"].as_str().unwrap();
            match build_contexts(
                &tok,
                Some(&template),
                prompt,
                None,
                PreferenceIn::System,
                false,
            ) {
                Ok(c) => {
                    if c.pref_text != chat["text"].as_str().unwrap() {
                        fail(format!("chat text {:?} != {}", c.pref_text, chat["text"]));
                    }
                    if c.pref_ids != ids(&chat["ids"]) {
                        fail(format!("chat ids {:?} != {}", c.pref_ids, chat["ids"]));
                    }
                }
                Err(e) => fail(format!("chat: {e}")),
            }
        }
        for case in golden["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            for (key, add) in [("ids", true), ("ids_plain", false)] {
                let want = ids(&case[key]);
                match tok.encode(text, add) {
                    Ok(got) if got == want => {}
                    Ok(got) => fail(format!("encode({text:?}, {add}) = {got:?}, want {want:?}")),
                    Err(e) => fail(format!("encode({text:?}, {add}): {e}")),
                }
            }
            for (key, ids_key, skip) in [
                ("decode", "ids", false),
                ("decode_skip", "ids", true),
                ("decode_plain", "ids_plain", false),
            ] {
                let want = case[key].as_str().unwrap();
                match tok.decode(&ids(&case[ids_key]), skip) {
                    Ok(got) if got == want => {}
                    Ok(got) => fail(format!("{key} of {text:?} = {got:?}, want {want:?}")),
                    Err(e) => fail(format!("{key} of {text:?}: {e}")),
                }
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches with transformers ({checked} strings checked):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
