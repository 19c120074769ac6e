//! The `rear` binary from outside: the DESIGN §4 JSON contract, and every bad input answered
//! with one line on stderr, exit code 2, nothing on stdout.
use serde_json::Value;
use std::path::Path;
use std::process::Output;

mod common;
use common::{fails_with, fixture, rear};

fn json_lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bad_model_files_are_named() {
    let cases = [
        ("bad/truncated", "model.safetensors"),
        ("bad/missing_tensor", "model.layers.0.mlp.down_proj.weight"),
        ("bad/wrong_shape", "model.layers.0.mlp.gate_proj.weight"),
        ("bad/bad_config", "config.json"),
        ("bad/unknown_arch", "GPT2LMHeadModel"),
    ];
    for (dir, needle) in cases {
        fails_with(
            &[
                "generate",
                "--model",
                &fixture(dir),
                "--prompt-ids",
                "1,2",
                "--max-new-tokens",
                "2",
            ],
            needle,
        );
    }
    fails_with(
        &["generate", "--model", "/no/such/model", "--prompt-ids", "1"],
        "/no/such/model",
    );
}

#[test]
fn missing_safetensors_is_named() {
    let tmp = std::env::temp_dir().join(format!("rear-cli-missing-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        let src = Path::new(&fixture("bad/valid")).join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f)).unwrap();
        }
    }
    fails_with(
        &[
            "generate",
            "--model",
            tmp.to_str().unwrap(),
            "--prompt-ids",
            "1",
        ],
        "model.safetensors",
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_requests_are_named() {
    let m = fixture("llama_f32");
    fails_with(&["generate", "--model", &m, "--prompt-ids", "1,449"], "449");
    fails_with(
        &[
            "score",
            "--model",
            &m,
            "--prompt-ids",
            "1",
            "--response-ids",
            "5000",
        ],
        "5000",
    );
    fails_with(&["generate", "--model", &m, "--prompt", ""], "empty prompt");
    fails_with(
        &["generate", "--model", &m, "--prompt-ids", ""],
        "empty prompt",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "255",
        ],
        "max_position_embeddings",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--prompt-ids",
            "1",
        ],
        "--prompt-ids",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--preference",
            "p",
            "--base-prompt",
            "b",
        ],
        "--base-prompt",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1",
            "--algo",
            "nope",
        ],
        "nope",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1",
            "--top-p",
            "1.5",
        ],
        "--top-p",
    );
    fails_with(&["generate", "--model", &m, "--prompt-ids", "1,x"], "x");
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1",
            "--device",
            "tpu",
        ],
        "tpu",
    );
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--preference",
            "a",
            "--preference",
            "b",
            "--lambda",
            "1",
            "--lambda",
            "2",
            "--lambda",
            "3",
        ],
        "--lambda",
    );
    fails_with(&["score", "--model", &m, "--prompt-ids", "1"], "response");
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-ids",
            "1",
            "--kv-cache-mib",
            "0",
        ],
        "kv-cache-mib",
    );
}

#[test]
fn generate_json_contract() {
    let m = fixture("qwen2_bf16");
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "What is the capital of France?",
        "--preference",
        "Always answer like a pirate.",
        "--lambda",
        "3",
        "--algo",
        "beam",
        "--beams",
        "3",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3, "all B beams are returned");
    let keys = [
        "rank",
        "token_ids",
        "text",
        "score",
        "logprob_pref",
        "logprob_base",
        "num_tokens",
        "finish_reason",
    ];
    let mut last = f64::INFINITY;
    for (i, l) in lines.iter().enumerate() {
        for k in keys {
            assert!(l.get(k).is_some(), "missing {k} in {l}");
        }
        assert_eq!(l["rank"], i);
        assert_eq!(
            l["num_tokens"].as_u64().unwrap() as usize,
            l["token_ids"].as_array().unwrap().len()
        );
        assert!(l["logprob_base"].is_number());
        let s = l["score"].as_f64().unwrap();
        assert!(s <= last, "best first");
        last = s;
        // S = λ·pref + (1−λ)·base.
        let (p, b) = (
            l["logprob_pref"].as_f64().unwrap(),
            l["logprob_base"].as_f64().unwrap(),
        );
        assert!(
            (s - (3.0 * p - 2.0 * b)).abs() < 1e-3 * (1.0 + s.abs()),
            "{s} vs {p} {b}"
        );
    }
    // Without a base context logprob_base is null and the score is logprob_pref.
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let l = &json_lines(&o)[0];
    assert!(l["logprob_base"].is_null());
    assert_eq!(l["score"], l["logprob_pref"]);
    assert_eq!(l["finish_reason"], "length");
}

#[test]
fn score_reproduces_generate_through_the_binary() {
    let m = fixture("llama_f32");
    let common = [
        "--model",
        m.as_str(),
        "--prompt-ids",
        "442,87,85,268",
        "--base-prompt-ids",
        "442,85",
        "--lambda",
        "2.5",
    ];
    let mut g = vec!["generate"];
    g.extend(common);
    g.extend(["--max-new-tokens", "6", "--json", "--ignore-eos"]);
    let cand = json_lines(&rear(&g))[0].clone();
    let ids: Vec<String> = cand["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let ids = ids.join(",");
    let mut s = vec!["score"];
    s.extend(common);
    s.extend(["--response-ids", ids.as_str(), "--json"]);
    let sc = json_lines(&rear(&s))[0].clone();
    for k in ["score", "logprob_pref", "logprob_base"] {
        assert_eq!(sc[k], cand[k], "{k}");
    }
    assert_eq!(sc["token_logprobs_pref"].as_array().unwrap().len(), 6);
    assert_eq!(sc["token_logprobs_base"].as_array().unwrap().len(), 6);
}

#[test]
fn tokenize_shows_both_contexts() {
    let m = fixture("qwen2_bf16");
    let o = rear(&[
        "tokenize",
        "--model",
        &m,
        "--prompt",
        "Hi there",
        "--preference",
        "Be brief.",
        "--json",
    ]);
    let j = &json_lines(&o)[0];
    assert!(j["pref_text"].as_str().unwrap().contains("Be brief."));
    assert!(j["base_text"]
        .as_str()
        .unwrap()
        .contains("You are a helpful assistant."));
    assert!(!j["base_text"].as_str().unwrap().contains("Be brief."));
    assert!(j["pref_ids"].as_array().unwrap().len() > 5);
    let o = rear(&["tokenize", "--model", &m, "--prompt", "Hi there", "--json"]);
    let j = &json_lines(&o)[0];
    assert!(j["base_ids"].is_null() && j["base_text"].is_null());
    // A template that rejects system messages falls back to the user message, with a notice.
    let g = fixture("llama_linear_f16");
    let o = rear(&[
        "tokenize",
        "--model",
        &g,
        "--prompt",
        "Hi",
        "--preference",
        "Be brief.",
        "--json",
    ]);
    let j = &json_lines(&o)[0];
    assert!(j["pref_text"].as_str().unwrap().contains("Be brief.\n\nHi"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("notice"));
}
