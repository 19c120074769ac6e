//! The fused REAR sampling step on the device (`kernels/rear_sample.cu`): from the K context rows
//! of logits of each response row to its next token(s), with only the choices coming back to
//! the host. The semantics are those of the CPU search layer:
//!
//! - `Argmax`: `rear::argmax` of `Mixture::combine` of the rows' log-softmax (guided greedy);
//! - `TopK(k)`: each row's `k` best expansions by `cum_score + s(v)` (ties: lower token id),
//!   best first — the shortlist from which guided beam search keeps its B beams;
//! - `Sample(params)`: `search::sampler::sample` over the REAR scores (or over the first
//!   context's log-probs with `from_context0`, as best-of-N draws), with the Philox uniform
//!   `uniform(seed, row.stream, row.step)`.
//!
//! Every choice carries the token's log-prob under each context and its REAR score, which is
//! what `Hyp::push` records.
use super::device::DevBuf;
use super::types::*;
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::rear::{log_softmax_rows, Mixture};
use crate::search::pick::{self, Choice, PickMode, PickRequest, PickScratch, PickSpec};

/// Whether the kernel handles `spec` (contexts and shortlist within its fixed bounds).
fn kernel_supports(spec: &PickSpec) -> bool {
    let k = spec.mixture.contexts();
    (1..=REAR_MAX_CONTEXTS as usize).contains(&k)
        && match spec.mode {
            PickMode::TopK(n) => (1..=REAR_MAX_TOPK as usize).contains(&n),
            _ => true,
        }
}

/// The kernel's parameters and its choices per row, for a spec `kernel_supports`.
fn kernel_params(spec: &PickSpec, rows: usize, vocab: usize) -> Result<(RearSampleParams, usize)> {
    debug_assert!(kernel_supports(spec));
    let (mixture, w): (u32, &[f32]) = match &spec.mixture {
        Mixture::Single => (REAR_MIX_SINGLE, &[]),
        Mixture::Guided { lambdas } => (REAR_MIX_GUIDED, lambdas),
        Mixture::Weighted { weights } => (REAR_MIX_WEIGHTED, weights),
    };
    let contexts = spec.mixture.contexts();
    let mut weights = [0f32; REAR_MAX_CONTEXTS as usize];
    weights[..w.len()].copy_from_slice(w);
    let mut p = RearSampleParams {
        rows: rows as u32,
        contexts: contexts as u32,
        vocab: u32::try_from(vocab).map_err(|_| Error::Input("vocabulary too large".into()))?,
        mode: REAR_MODE_ARGMAX,
        mixture,
        top_k: 0,
        temperature: 0.0,
        top_p: 1.0,
        sample_context0: spec.from_context0 as u32,
        pad: 0,
        seed: spec.seed,
        weights,
    };
    let per_row = match spec.mode {
        PickMode::Argmax => 1,
        PickMode::TopK(k) => {
            p.mode = REAR_MODE_TOPK;
            p.top_k = k as u32;
            k
        }
        PickMode::Sample(sp) => {
            p.mode = REAR_MODE_SAMPLE;
            p.temperature = sp.temperature;
            p.top_k = sp.top_k.min(u32::MAX as usize) as u32;
            p.top_p = sp.top_p;
            1
        }
    };
    Ok((p, per_row))
}

impl CudaBackend {
    /// `search::pick::rear_sample` over the logit rows `first..first + n` of the last forward
    /// pass (or `logits_device` call), left on the device: only the choices come back. A spec
    /// beyond the kernel's bounds (more than `REAR_MAX_CONTEXTS` contexts, a shortlist over
    /// `REAR_MAX_TOPK`) is picked on the host from downloaded rows instead.
    pub fn rear_sample(&self, first: usize, n: usize, req: &PickRequest) -> Result<Vec<Choice>> {
        let g = self.gpu();
        g.bind()?;
        let mut s = self.scratch();
        let (rows, vocab) = s.logits_shape;
        if first + n > rows {
            return Err(Error::Input(format!(
                "a pick over logit rows {first}..{} of {rows}",
                first + n
            )));
        }
        pick::check_groups(req, n)?;
        let logits = s.logits.ptr() + (first * vocab * 4) as u64;
        if !kernel_supports(&req.spec) {
            let mut host = vec![0f32; n * vocab];
            g.dtoh(&mut host, logits)?;
            drop(s);
            return host_pick(host, vocab, req);
        }
        run(self, &mut s, logits, vocab, req)
    }

    /// The same over logits given by the host (`[groups · contexts, vocab]`).
    pub fn rear_sample_host(
        &self,
        logits: &[f32],
        vocab: usize,
        req: &PickRequest,
    ) -> Result<Vec<Choice>> {
        if vocab == 0 || logits.len() % vocab != 0 {
            return Err(Error::Input(format!(
                "{} logits are not rows of {vocab}",
                logits.len()
            )));
        }
        pick::check_groups(req, logits.len() / vocab)?;
        if !kernel_supports(&req.spec) {
            return host_pick(logits.to_vec(), vocab, req);
        }
        let g = self.gpu();
        g.bind()?;
        let mut s = self.scratch();
        s.host_logits.ensure(logits.len() * 4)?;
        g.htod(s.host_logits.ptr(), logits)?;
        let ptr = s.host_logits.ptr();
        run(self, &mut s, ptr, vocab, req)
    }
}

/// The host fallback: log-softmax of the rows, then `search::pick::rear_sample`.
fn host_pick(mut logits: Vec<f32>, vocab: usize, req: &PickRequest) -> Result<Vec<Choice>> {
    log_softmax_rows(&mut logits, vocab);
    let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
    pick::rear_sample(&rows, req, &mut PickScratch::default())
}

fn run(
    b: &CudaBackend,
    s: &mut super::Scratch,
    logits: u64,
    vocab: usize,
    req: &PickRequest,
) -> Result<Vec<Choice>> {
    let (rows, spec) = (&req.rows, &req.spec);
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let g = b.gpu();
    let (p, per_row) = kernel_params(spec, rows.len(), vocab)?;
    let input: Vec<RearSampleRow> = rows
        .iter()
        .map(|r| RearSampleRow {
            cum_score: r.cum_score,
            group: r.group as u32,
            stream: r.stream,
            step: r.step,
        })
        .collect();
    s.sample_rows
        .ensure(std::mem::size_of_val(input.as_slice()))?;
    g.htod(s.sample_rows.ptr(), &input)?;
    let n_out = rows.len() * per_row;
    s.sample_out
        .ensure(n_out * std::mem::size_of::<RearCandidate>())?;
    let sampling = p.mode == REAR_MODE_SAMPLE;
    if sampling {
        s.ws_src.ensure(rows.len() * vocab * 4)?;
        s.ws_p.ensure(rows.len() * vocab * 8)?;
    }
    let ws = |b: &DevBuf| if sampling { b.ptr() } else { 0 };
    super::ops::rear_sample(
        g,
        p,
        logits,
        s.sample_rows.ptr(),
        s.sample_out.ptr(),
        ws(&s.ws_src),
        ws(&s.ws_p),
    )?;
    let mut out = vec![RearCandidate::default(); n_out];
    g.dtoh(&mut out, s.sample_out.ptr())?;
    let k = spec.mixture.contexts();
    Ok(out
        .into_iter()
        .filter(|c| c.token != u32::MAX)
        .map(|c| Choice {
            row: c.row as usize,
            token: c.token,
            score: c.score,
            total: c.total,
            logprobs: c.logprobs[..k].to_vec(),
        })
        .collect())
}
