//! Helpers shared by the tests that drive the `rear` binary from outside (cli, batch,
//! bad_inputs): fixture paths, running the binary, scratch directories, and the bad-input
//! contract (exit code 2, one stderr line naming the problem, nothing on stdout, no panic).
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

/// `tests/fixtures/<name>` as a string argument.
pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Runs the binary with `args`.
pub fn rear(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rear"))
        .args(args)
        .output()
        .unwrap()
}

/// A fresh scratch directory `rear-<group>-<pid>-<name>` under the temp dir.
pub fn tmp(group: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rear-{group}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts the bad-input contract and returns the one stderr line, which mentions `needle`.
pub fn fails_with(args: &[&str], needle: &str) -> String {
    let o = rear(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{args:?}: exit {:?}, stderr {err}",
        o.status.code()
    );
    assert!(
        o.stdout.is_empty(),
        "{args:?}: stdout not empty: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: stderr not one line: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} does not mention {needle:?}"
    );
    err
}
