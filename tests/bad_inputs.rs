//! Regressions of an adversarial sweep of the binary: each bad input gets one line on stderr
//! naming the problem, exit code 2, nothing on stdout, no panic or abort, and batch output files
//! are left as they were. Inputs are small files written into a temp dir at test time.
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{fails_with, fixture, rear, tmp};

/// A copy of `bad/valid` with `edit` applied to its directory.
fn model_copy(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let d = tmp("bad", name);
    for e in std::fs::read_dir(fixture("bad/valid")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    edit(&d);
    d
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&p, c.to_string()).unwrap();
}

#[test]
fn huge_widths_are_clear_errors_not_aborts() {
    let m = fixture("bad/valid");
    for (algo, flag, v) in [
        ("sample", "--n", "1000000000"),
        ("bon", "--n", "100000000000"),
        ("beam", "--beams", "18446744073709551615"),
        ("chunk", "--beams", "100000000000"),
    ] {
        fails_with(
            &[
                "generate",
                "--model",
                &m,
                "--prompt-ids",
                "1,2",
                "--max-new-tokens",
                "2",
                "--algo",
                algo,
                flag,
                v,
            ],
            flag,
        );
    }
    // Within the width bound but beyond what the KV cache holds: refused before any pass.
    fails_with(
        &[
            "generate",
            "--model",
            &fixture("llama_f32"),
            "--prompt-ids",
            "1,2",
            "--algo",
            "sample",
            "--n",
            "5000",
            "--kv-cache-mib",
            "1",
        ],
        "--kv-cache-mib",
    );
}

#[test]
fn bad_flag_values_are_named() {
    let m = fixture("bad/valid");
    let g = |extra: &[&str]| {
        let mut a = vec!["generate", "--model", &m, "--max-new-tokens", "2"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            g(&["--context-ids", "1,2", "--context-weight", "nan"]),
            "--context-weight",
        ),
        (
            g(&[
                "--context-ids",
                "1",
                "--context-weight",
                "inf",
                "--context-ids",
                "2",
                "--context-weight",
                "1",
            ]),
            "--context-weight",
        ),
        // λ is ignored without a base context, but a non-number is still an error.
        (g(&["--prompt-ids", "1,2", "--lambda", "NaN"]), "--lambda"),
        (g(&["--prompt-ids", "+1"]), "+1"),
        (
            g(&[
                "--prompt",
                "hi",
                "--preference",
                "p",
                "--raw",
                "--preference-in",
                "system",
            ]),
            "--raw",
        ),
    ];
    for (args, needle) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&a, needle);
    }
    // A prompt that is not UTF-8 is named by its flag.
    {
        use std::os::unix::ffi::OsStrExt;
        let o = Command::new(env!("CARGO_BIN_EXE_rear"))
            .args(["generate", "--model", &m, "--prompt"])
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfehi"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(o.stdout.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("--prompt") && err.contains("UTF-8"), "{err}");
    }
    // clap errors: one line that still names the argument.
    fails_with(&["tokenize", "--model", &m], "--prompt");
    fails_with(&[], "no command");
    // Valid edge cases still work.
    for extra in [
        &["--prompt-ids", " 1 , 2 ", "--max-new-tokens", "1"][..],
        &["--prompt-ids", "1", "--algo", "beam", "--beams", "1"],
        &["--prompt", "hi", "--preference", "p", "--lambda", "0"],
        &["--prompt", "hi", "--preference", "p", "--raw"],
    ] {
        let mut a = vec!["generate", "--model", &m];
        a.extend_from_slice(extra);
        let o = rear(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn bench_bad_values_are_named() {
    let m = fixture("bad/valid");
    fails_with(
        &[
            "bench",
            "--model",
            &m,
            "--prompt-len",
            "18446744073709551615",
        ],
        "--prompt-len",
    );
    fails_with(
        &["bench", "--model", &m, "--threads", "100000000"],
        "--threads",
    );
    fails_with(&["bench", "--model", &m, "--lambda", "nan"], "--lambda");
}

#[test]
fn bad_config_values_and_directories_for_files_are_named() {
    let run = |d: &Path, needle: &str| {
        fails_with(
            &[
                "generate",
                "--model",
                d.to_str().unwrap(),
                "--prompt-ids",
                "1,2",
                "--max-new-tokens",
                "2",
            ],
            needle,
        );
        std::fs::remove_dir_all(d).unwrap();
    };
    let d = model_copy("eps", |d| {
        edit_config(d, "rms_norm_eps", serde_json::json!(-1.0))
    });
    run(&d, "rms_norm_eps");
    let d = model_copy("theta", |d| {
        edit_config(
            d,
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 0.0}),
        )
    });
    run(&d, "rope_theta");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let d = model_copy(&format!("dir-{f}"), |d| {
            let _ = std::fs::remove_file(d.join(f));
            std::fs::create_dir(d.join(f)).unwrap();
        });
        run(&d, f);
    }
}

#[test]
fn batch_errors_are_one_line_and_leave_output_files_alone() {
    let d = tmp("bad", "batch");
    let m = fixture("bad/valid");
    let input = d.join("req.jsonl");
    let out = d.join("out.jsonl");
    let batch = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            &m,
            "--max-new-tokens",
            "2",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let as_strs = |v: &[String]| v.iter().map(String::clone).collect::<Vec<_>>();
    // One malformed line among good ones: the others are written, one stderr line names it.
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"prompt_ids\":[1,2]}\n{not json\n{\"id\":\"c\",\"prompt_ids\":[3]}\n",
    )
    .unwrap();
    let a = as_strs(&batch(&[]));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_with(&a, "req.jsonl:2:");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
    // A huge --n on a line is a clear error (not an abort).
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"prompt_ids\":[1],\"algo\":\"sample\",\"n\":1000000000}\n",
    )
    .unwrap();
    std::fs::remove_file(&out).unwrap();
    fails_with(&a, "--n");
    // --resume over an output file that is not UTF-8: refused, the file untouched.
    std::fs::write(&input, "{\"id\":\"a\",\"prompt_ids\":[1,2]}\n").unwrap();
    std::fs::write(&out, b"\xff\xfe\n").unwrap();
    let r = as_strs(&batch(&["--resume"]));
    let r: Vec<&str> = r.iter().map(String::as_str).collect();
    fails_with(&r, "out.jsonl");
    assert_eq!(std::fs::read(&out).unwrap(), b"\xff\xfe\n");
    // --output a directory.
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();
    fails_with(&a, "directory");
    std::fs::remove_dir(&out).unwrap();
    // --output in a missing directory: the I/O cause is said once.
    let missing = d.join("nope/out.jsonl");
    let err = fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--input",
            input.to_str().unwrap(),
            "--output",
            missing.to_str().unwrap(),
        ],
        "nope/out.jsonl",
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    // A UTF-8 byte-order mark before the first line is not an error.
    std::fs::write(&input, "\u{feff}{\"id\":\"a\",\"prompt_ids\":[1,2]}\n").unwrap();
    let o = rear(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}
