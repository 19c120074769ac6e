//! Batch mode through the binary: mixed requests equal the same requests run one by one, an
//! interrupted run resumed writes the same file as an uninterrupted one, a malformed line is
//! reported with its line number and the others still run.
use serde_json::Value;

mod common;
use common::{fixture, rear, tmp};

const REQUESTS: &str = r#"{"id":"a","prompt":"What is the capital of France?","preference":"Always answer like a pirate.","lambda":3,"algo":"greedy"}
{"id":"b","prompt_ids":[1,2,3],"algo":"beam","beams":3}
{"id":"c","prompt":"Tell me a story.","preference":["Be brief.","Use rhymes."],"lambda":[2,1.5],"algo":"sample","n":2,"seed":4}
{"id":7,"prompt":"Hello","base_prompt":"Hi","lambda":0.5,"algo":"bon","n":3,"seed":1}
{"id":"e","prompt":"Why is the sky blue?","preference":"Answer in French.","lambda":2,"algo":"chunk","beams":2,"n":2,"chunk_tokens":3,"seed":9}
"#;

#[test]
fn batch_equals_one_by_one_and_resume_is_seamless() {
    let d = tmp("batch", "resume");
    let m = fixture("qwen2_bf16");
    let input = d.join("req.jsonl");
    std::fs::write(&input, REQUESTS).unwrap();
    let full = d.join("full.jsonl");
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        full.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty());
    let text = std::fs::read_to_string(&full).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<String> = lines.iter().map(|l| l["id"].to_string()).collect();
    assert_eq!(ids, ["\"a\"", "\"b\"", "\"c\"", "7", "\"e\""]);

    // Each request alone gives the same candidates.
    for (line, req) in lines.iter().zip(REQUESTS.lines()) {
        let one = d.join("one.jsonl");
        let _ = std::fs::remove_file(&one);
        let single = d.join("single.jsonl");
        std::fs::write(&single, format!("{req}\n")).unwrap();
        let o = rear(&[
            "generate",
            "--model",
            &m,
            "--input",
            single.to_str().unwrap(),
            "--output",
            one.to_str().unwrap(),
            "--max-new-tokens",
            "6",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let alone: Value =
            serde_json::from_str(std::fs::read_to_string(&one).unwrap().trim()).unwrap();
        assert_eq!(&alone, line);
    }

    // Interrupted after one and a half results: resume completes to the identical file.
    let cut = d.join("cut.jsonl");
    let first_nl = text.find('\n').unwrap();
    std::fs::write(&cut, &text[..first_nl + 1 + 20]).unwrap();
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        cut.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--resume",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), text);
    // Resuming a complete file adds nothing.
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        cut.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--resume",
    ]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), text);
    // Without --resume an existing output is not overwritten.
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        cut.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&cut).unwrap(), text);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn malformed_lines_are_reported_and_do_not_stop_the_others() {
    let d = tmp("batch", "malformed");
    let m = fixture("llama_f32");
    let input = d.join("req.jsonl");
    std::fs::write(
        &input,
        "{\"id\":1,\"prompt_ids\":[442,87]}\n{not json\n{\"id\":3,\"prompt_ids\":[442,9999]}\n\n{\"id\":4,\"prompt_ids\":[442,85],\"algo\":\"beam\",\"beams\":2}\n{\"id\":5,\"bogus\":1}\n",
    )
    .unwrap();
    let out = d.join("out.jsonl");
    let o = rear(&[
        "generate",
        "--model",
        &m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("req.jsonl:2:"), "{err}");
    assert!(err.contains("9999"), "{err}");
    assert!(
        err.contains("req.jsonl:6:") && err.contains("bogus"),
        "{err}"
    );
    let ids: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, [serde_json::json!(1), serde_json::json!(4)]);
    std::fs::remove_dir_all(&d).unwrap();
}
