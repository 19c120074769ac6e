//! Batch mode for research runs: a JSONL file of requests decoded together (continuous
//! batching: up to `window` requests share every forward pass, a finished one makes room for
//! the next), results appended to a JSONL file in input order and flushed as soon as they can
//! be, `--resume` skipping ids already written. A malformed line does not stop the others; its
//! error (with its line number) is kept in the summary, for the caller to report on one line.
//!
//! Results are written in input order (a finished result waits only for earlier requests still
//! in the window), so an interrupted-and-resumed run writes the same file as an uninterrupted
//! one: each request's result does not depend on which others share its passes.
use crate::api::Rear;
use crate::error::{Error, Result};
use crate::request::{candidate_json, RequestSpec};
use crate::search::{self, Prompt, Search, SearchParams, StepBuffers};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// Counts of one batch run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub total: usize,
    pub written: usize,
    pub skipped: usize,
    pub failed: usize,
    /// One message per failed request (`input:line: ...`), in input order.
    pub errors: Vec<String>,
    /// Notices (e.g. a template's system-message fallback), for stderr on success.
    pub notices: Vec<String>,
}

/// The key of a request id (its JSON text).
fn id_key(v: &Value) -> String {
    v.to_string()
}

/// Ids already in `output` (for `--resume`). A last line cut short by an interruption is
/// removed from the file, so that request runs again.
pub fn finished_ids(output: &Path) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let text = match std::fs::read(output) {
        Ok(b) => String::from_utf8(b).map_err(|e| {
            Error::Input(format!(
                "{}: not a result file (not UTF-8 at byte {})",
                output.display(),
                e.utf8_error().valid_up_to()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(Error::io(output, e)),
    };
    let complete = match text.rfind('\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < text.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(output)
            .map_err(|e| Error::io(output, e))?;
        f.set_len(complete as u64)
            .map_err(|e| Error::io(output, e))?;
    }
    for (i, line) in text[..complete].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{}:{}: not a result line ({e})",
                output.display(),
                i + 1
            ))
        })?;
        let id = v.get("id").ok_or_else(|| {
            Error::Input(format!(
                "{}:{}: result line without `id`",
                output.display(),
                i + 1
            ))
        })?;
        ids.insert(id_key(id));
    }
    Ok(ids)
}

struct Job {
    id: Value,
    prompt: Prompt,
    params: SearchParams,
}

/// Parses the request lines; bad ones are reported on stderr and counted.
fn parse_jobs(
    rear: &Rear,
    text: &str,
    defaults: &RequestSpec,
    done: &HashSet<String>,
    input: &Path,
    s: &mut BatchSummary,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        s.total += 1;
        let lineno = i + 1;
        let parsed = serde_json::from_str::<RequestSpec>(line)
            .map_err(|e| Error::Input(format!("malformed request: {e}")))
            .and_then(|spec| {
                let id = spec.id.clone().unwrap_or_else(|| json!(lineno));
                let spec = spec.with_defaults(defaults);
                let (prompt, notice) = spec.prompt(rear)?;
                let params = spec.params(rear)?;
                Ok((Job { id, prompt, params }, notice))
            });
        match parsed {
            Ok((job, notice)) => {
                let key = id_key(&job.id);
                if done.contains(&key) {
                    s.skipped += 1;
                } else if !seen.insert(key) {
                    s.errors.push(format!(
                        "{}:{lineno}: duplicate request id {}",
                        input.display(),
                        job.id
                    ));
                    s.failed += 1;
                } else {
                    if let Some(n) = notice {
                        s.notices
                            .push(format!("{}:{lineno}: notice: {n}", input.display()));
                    }
                    jobs.push(job);
                }
            }
            Err(e) => {
                s.errors.push(format!(
                    "{}:{lineno}: {}",
                    input.display(),
                    e.to_string().replace('\n', " ")
                ));
                s.failed += 1;
            }
        }
    }
    jobs
}

/// Runs the requests of `text` (JSONL) with `defaults` under each, appending results to
/// `output`.
pub fn run_batch(
    rear: &mut Rear,
    text: &str,
    defaults: &RequestSpec,
    done: &HashSet<String>,
    output: &Path,
    window: usize,
    input: &Path,
) -> Result<BatchSummary> {
    let mut summary = BatchSummary::default();
    let jobs = parse_jobs(rear, text, defaults, done, input, &mut summary);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .map_err(|e| Error::io(output, e))?;
    let progress = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut tokens = 0usize;
    let mut active: Vec<(usize, Box<dyn Search>)> = Vec::new();
    let mut finished: BTreeMap<usize, String> = BTreeMap::new();
    let (mut next_job, mut next_write) = (0usize, 0usize);
    let mut bufs = StepBuffers::default();
    loop {
        while active.len() < window && next_job < jobs.len() {
            let j = &jobs[next_job];
            match search::start(rear.engine(), &j.prompt, &j.params) {
                Ok(s) => active.push((next_job, s)),
                Err(e) => {
                    summary.errors.push(format!(
                        "{}: request {}: {}",
                        input.display(),
                        j.id,
                        e.to_string().replace('\n', " ")
                    ));
                    summary.failed += 1;
                    finished.insert(next_job, String::new());
                }
            }
            next_job += 1;
        }
        // Harvest finished searches.
        let mut k = 0;
        while k < active.len() {
            if active[k].1.is_done() {
                let (ji, mut s) = active.swap_remove(k);
                let cands = s.finish(rear.engine());
                tokens += cands.iter().map(|c| c.token_ids.len()).sum::<usize>();
                let j = &jobs[ji];
                let out: Vec<Value> = cands
                    .iter()
                    .enumerate()
                    .map(|(r, c)| candidate_json(rear, r, c, &j.prompt.mixture))
                    .collect();
                let line = serde_json::to_string(&json!({"id": j.id, "candidates": out}))
                    .map_err(|e| Error::Input(e.to_string()))?;
                finished.insert(ji, line);
            } else {
                k += 1;
            }
        }
        while let Some(line) = finished.remove(&next_write) {
            if !line.is_empty() {
                file.write_all(line.as_bytes())
                    .and_then(|_| file.write_all(b"\n"))
                    .and_then(|_| file.flush())
                    .map_err(|e| Error::io(output, e))?;
                summary.written += 1;
            }
            next_write += 1;
        }
        if progress {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r{}/{} requests  {:.1} tok/s   ",
                next_write,
                jobs.len(),
                tokens as f64 / secs
            );
        }
        if active.is_empty() && next_job >= jobs.len() {
            break;
        }
        active.sort_by_key(|(ji, _)| *ji);
        let (ids, mut searches): (Vec<usize>, Vec<Box<dyn Search>>) = active.drain(..).unzip();
        let r = search::step(rear.engine(), &mut searches, &mut bufs);
        active = ids.into_iter().zip(searches).collect();
        if let Err(e) = r {
            for (_, s) in active.iter_mut() {
                s.finish(rear.engine());
            }
            return Err(e);
        }
    }
    if progress {
        eprintln!();
    }
    Ok(summary)
}
