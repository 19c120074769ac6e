//! Test-time-scaling algorithms over the engine's `StepApi` (DESIGN §2). Every algorithm is a
//! resumable state machine (`Search`): it says which sequences to extend by which tokens and how
//! to pick from their rows (`pick::PickRequest`: argmax of the REAR score, each beam's best
//! expansions, a seeded draw), gets the choices back, and decides. The driver (`run`) batches the
//! wants of many searches, of many requests, into one forward pass per step; the engine makes
//! the picks where the logits are (on a CUDA device only the choices come back to the host).
//!
//! A hypothesis (`Hyp`) is one response decoded under every context of its request in lockstep:
//! one cache sequence per context, the same response tokens appended to all of them.
pub mod beam;
pub mod chunk;
pub mod independent;
pub mod pick;
pub mod sampler;

use crate::engine::{Extend, SeqId, StepApi};
use crate::error::{Error, Result};
use crate::rear::Mixture;
pub use pick::{Choice, PickMode, PickRequest, PickSpec, RowState};
pub use sampler::SampleParams;

/// The algorithms of DESIGN §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Greedy,
    Sample,
    Beam,
    Bon,
    Chunk,
}

impl std::str::FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "greedy" => Algo::Greedy,
            "sample" => Algo::Sample,
            "beam" => Algo::Beam,
            "bon" => Algo::Bon,
            "chunk" => Algo::Chunk,
            other => {
                return Err(Error::Input(format!(
                    "unknown algorithm `{other}` (greedy, sample, beam, bon, chunk)"
                )))
            }
        })
    }
}

/// Why a candidate stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Length,
}

/// Parameters of one search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchParams {
    pub algo: Algo,
    /// Beams kept by `beam` and `chunk`.
    pub beams: usize,
    /// Sequences returned by `sample`, candidates of `bon`, continuations per beam of `chunk`.
    pub n: usize,
    /// Maximum tokens of one `chunk` step.
    pub chunk_tokens: usize,
    pub max_new_tokens: usize,
    pub sampling: SampleParams,
    pub seed: u64,
    /// Keep generating after EOS.
    pub ignore_eos: bool,
    /// Rank finished candidates by `S / num_tokens` instead of `S`.
    pub length_norm: bool,
    pub eos_token_ids: Vec<u32>,
    /// Tokens that end a `chunk` step early (e.g. those whose text holds a newline).
    pub chunk_delimiters: Vec<u32>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            algo: Algo::Greedy,
            beams: 4,
            n: 1,
            chunk_tokens: 16,
            max_new_tokens: 128,
            sampling: SampleParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            seed: 0,
            ignore_eos: false,
            length_norm: false,
            eos_token_ids: Vec::new(),
            chunk_delimiters: Vec::new(),
        }
    }
}

/// Most hypotheses one search keeps at once (`--beams`, `--n`, `--beams × --n` for chunk): a
/// bound far above any useful width that keeps the per-step buffers of a huge value from
/// exhausting memory (the KV cache bound in `start` is usually tighter).
pub const MAX_WIDTH: usize = 1 << 16;

impl SearchParams {
    /// Hypotheses this search keeps at once (saturating).
    pub fn width(&self) -> usize {
        match self.algo {
            Algo::Greedy => 1,
            Algo::Sample | Algo::Bon => self.n,
            Algo::Beam => self.beams,
            Algo::Chunk => self.beams.saturating_mul(self.n),
        }
    }

    /// Checks the parameters; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens must be at least 1".into());
        }
        if matches!(self.algo, Algo::Beam | Algo::Chunk) && self.beams == 0 {
            return bad("--beams must be at least 1".into());
        }
        if self.n == 0 {
            return bad("--n must be at least 1".into());
        }
        if self.algo == Algo::Chunk && self.chunk_tokens == 0 {
            return bad("--chunk-tokens must be at least 1".into());
        }
        for (flag, v) in [("--beams", self.beams), ("--n", self.n)] {
            if v > MAX_WIDTH {
                return bad(format!("{flag} {v} is too large (at most {MAX_WIDTH})"));
            }
        }
        if self.width() > MAX_WIDTH {
            return bad(format!(
                "--beams {} × --n {} is too large (at most {MAX_WIDTH} hypotheses)",
                self.beams, self.n
            ));
        }
        let t = self.sampling.temperature;
        if !(t >= 0.0) || !t.is_finite() {
            return bad(format!("--temperature must be ≥ 0, got {t}"));
        }
        let p = self.sampling.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return bad(format!("--top-p must be in (0, 1], got {p}"));
        }
        Ok(())
    }

    /// Ranking key of a candidate: `S`, or `S / num_tokens` with `--length-norm`.
    pub fn rank_key(&self, h: &Hyp) -> f32 {
        if self.length_norm && !h.tokens.is_empty() {
            h.score / h.tokens.len() as f32
        } else {
            h.score
        }
    }

    fn is_eos(&self, t: u32) -> bool {
        !self.ignore_eos && self.eos_token_ids.contains(&t)
    }
}

/// One returned response with its scores (DESIGN §4 fields, plus token-level detail).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    pub token_ids: Vec<u32>,
    /// `S(y) = Σ_t s_t(y_t)`.
    pub score: f32,
    /// `Σ_t log π(y_t | ctx_k, y<t)` for each context, in request order.
    pub logprob_contexts: Vec<f32>,
    /// Per-token log-probs: `[context][t]`.
    pub token_logprobs: Vec<Vec<f32>>,
    /// Per-token scores `s_t(y_t)`.
    pub token_scores: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// A response in progress under every context of its request.
#[derive(Clone, Debug)]
pub struct Hyp {
    /// One cache sequence per context (empty once finished).
    pub seqs: Vec<SeqId>,
    pub tokens: Vec<u32>,
    /// The last token of `tokens` is chosen but not yet appended to `seqs`.
    pub pending: bool,
    pub token_lps: Vec<Vec<f32>>,
    pub token_scores: Vec<f32>,
    pub ctx_sums: Vec<f32>,
    pub score: f32,
    pub finish: Option<FinishReason>,
    /// Random stream of this hypothesis (sampling algorithms).
    pub stream: u64,
    /// Tokens added in the current chunk (`chunk`).
    pub chunk_len: usize,
}

impl Hyp {
    fn root(seqs: Vec<SeqId>) -> Self {
        let k = seqs.len();
        Hyp {
            seqs,
            tokens: Vec::new(),
            pending: false,
            token_lps: vec![Vec::new(); k],
            token_scores: Vec::new(),
            ctx_sums: vec![0.0; k],
            score: 0.0,
            finish: None,
            stream: 0,
            chunk_len: 0,
        }
    }

    /// A copy whose sequences share this one's cache blocks.
    pub fn fork(&self, api: &mut dyn StepApi) -> Hyp {
        let mut h = self.clone();
        h.seqs = self.seqs.iter().map(|&s| api.fork(s)).collect();
        h
    }

    pub fn release(&mut self, api: &mut dyn StepApi) {
        for s in self.seqs.drain(..) {
            api.free(s);
        }
    }

    /// Appends the chosen token with its per-context log-probs and score, finishing on EOS or
    /// length.
    pub fn push(&mut self, c: &Choice, p: &SearchParams, api: &mut dyn StepApi) {
        for (k, &lp) in c.logprobs.iter().enumerate() {
            self.token_lps[k].push(lp);
            self.ctx_sums[k] += lp;
        }
        self.token_scores.push(c.score);
        self.score += c.score;
        self.tokens.push(c.token);
        self.chunk_len += 1;
        self.pending = true;
        if p.is_eos(c.token) {
            self.finish = Some(FinishReason::Eos);
        } else if self.tokens.len() >= p.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() {
            self.pending = false;
            self.release(api);
        }
    }

    /// The pick state of this hypothesis reading row group `group`.
    pub fn row_state(&self, group: usize) -> RowState {
        RowState {
            group,
            cum_score: self.score,
            stream: self.stream,
            step: self.tokens.len() as u64,
        }
    }

    pub fn into_candidate(self) -> Candidate {
        Candidate {
            token_ids: self.tokens,
            score: self.score,
            logprob_contexts: self.ctx_sums,
            token_logprobs: self.token_lps,
            token_scores: self.token_scores,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
        }
    }
}

/// What a search wants appended in the next pass: `tokens` to `seq`.
#[derive(Clone, Debug)]
pub struct Want {
    pub seq: SeqId,
    pub tokens: Vec<u32>,
}

/// A resumable search.
pub trait Search {
    /// Pushes this search's extensions for the next pass (one row of log-probs each, in groups
    /// of the mixture's contexts).
    fn want(&mut self, out: &mut Vec<Want>);
    /// How to pick from the rows of the wants just pushed.
    fn pick(&self) -> PickRequest;
    /// The choices of that pick (in its rows' order); decides the next tokens.
    fn got(&mut self, api: &mut dyn StepApi, choices: &[Choice]) -> Result<()>;
    fn is_done(&self) -> bool;
    /// Candidates best first; frees every sequence still held.
    fn finish(&mut self, api: &mut dyn StepApi) -> Vec<Candidate>;
}

/// The contexts of a request (prompt token ids, in mixture order) and how they combine.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub contexts: Vec<Vec<u32>>,
    pub mixture: Mixture,
}

/// Starts the search `p.algo` for `prompt`.
pub fn start(api: &mut dyn StepApi, prompt: &Prompt, p: &SearchParams) -> Result<Box<dyn Search>> {
    p.validate()?;
    if prompt.contexts.len() != prompt.mixture.contexts() {
        return Err(Error::Input(format!(
            "{} contexts given for a score over {}",
            prompt.contexts.len(),
            prompt.mixture.contexts()
        )));
    }
    let max_pos = api.config().max_position_embeddings;
    for c in &prompt.contexts {
        if c.is_empty() {
            return Err(Error::Input("empty prompt: a context has no tokens".into()));
        }
        if c.len() + p.max_new_tokens > max_pos {
            return Err(Error::Input(format!(
                "prompt of {} tokens plus --max-new-tokens {} exceeds max_position_embeddings {max_pos}",
                c.len(),
                p.max_new_tokens
            )));
        }
        let vocab = api.config().vocab_size;
        if let Some(&t) = c.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "prompt token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
    }
    // Every kept hypothesis holds at least one block of its own per context.
    let need = p.width().saturating_mul(prompt.contexts.len());
    if need > api.max_blocks() {
        return Err(Error::KvCache(format!(
            "out of KV cache: {} hypotheses × {} contexts need at least {need} blocks, the cache holds {} \
             (lower --beams/--n or raise --kv-cache-mib)",
            p.width(),
            prompt.contexts.len(),
            api.max_blocks()
        )));
    }
    let seqs: Vec<SeqId> = prompt.contexts.iter().map(|_| api.new_seq()).collect();
    let root = Hyp::root(seqs);
    let prefill = Prefill {
        tokens: prompt.contexts.clone(),
    };
    Ok(match p.algo {
        Algo::Greedy | Algo::Sample | Algo::Bon => Box::new(independent::Independent::new(
            root,
            prefill,
            prompt.mixture.clone(),
            p.clone(),
        )),
        Algo::Beam => Box::new(beam::Beam::new(
            root,
            prefill,
            prompt.mixture.clone(),
            p.clone(),
        )),
        Algo::Chunk => Box::new(chunk::Chunk::new(
            root,
            prefill,
            prompt.mixture.clone(),
            p.clone(),
        )),
    })
}

/// The prompt tokens still to be prefilled into a root hypothesis.
#[derive(Clone, Debug)]
pub struct Prefill {
    pub tokens: Vec<Vec<u32>>,
}

/// Wants of hypotheses with a pending token: one per context sequence.
pub(crate) fn pending_wants<'a>(hyps: impl Iterator<Item = &'a Hyp>, out: &mut Vec<Want>) {
    for h in hyps.filter(|h| h.pending && h.finish.is_none()) {
        let t = *h.tokens.last().unwrap();
        for &s in &h.seqs {
            out.push(Want {
                seq: s,
                tokens: vec![t],
            });
        }
    }
}

/// Pick states of `hyps`, one row group each, in order.
pub(crate) fn row_states<'a>(hyps: impl Iterator<Item = &'a Hyp>) -> Vec<RowState> {
    hyps.enumerate().map(|(g, h)| h.row_state(g)).collect()
}

pub(crate) fn prefill_wants(root: &Hyp, prefill: &Prefill, out: &mut Vec<Want>) {
    for (s, t) in root.seqs.iter().zip(&prefill.tokens) {
        out.push(Want {
            seq: *s,
            tokens: t.clone(),
        });
    }
}

/// Sorts candidates best first (by rank key, ties by token ids for a stable order).
pub(crate) fn sort_best_first(hyps: &mut [Hyp], p: &SearchParams) {
    hyps.sort_by(|a, b| {
        p.rank_key(b)
            .total_cmp(&p.rank_key(a))
            .then_with(|| a.tokens.cmp(&b.tokens))
    });
}

/// Runs every search to completion, batching all their wants into one forward pass per step.
/// Returns each search's candidates, best first, in the searches' order.
pub fn run(api: &mut dyn StepApi, searches: &mut [Box<dyn Search>]) -> Result<Vec<Vec<Candidate>>> {
    let mut out = vec![Vec::new(); searches.len()];
    let r = drive(api, searches, &mut |i, c| out[i] = c);
    if r.is_err() {
        // Free whatever the failed run still holds.
        for s in searches.iter_mut() {
            s.finish(api);
        }
    }
    r.map(|_| out)
}

/// Steps the searches until all are done, calling `on_done(i, candidates)` as each finishes
/// (its sequences are freed then). Searches that finish early are not stepped again.
pub fn drive(
    api: &mut dyn StepApi,
    searches: &mut [Box<dyn Search>],
    on_done: &mut dyn FnMut(usize, Vec<Candidate>),
) -> Result<()> {
    let mut reported = vec![false; searches.len()];
    let mut bufs = StepBuffers::default();
    loop {
        for (i, s) in searches.iter_mut().enumerate() {
            if s.is_done() && !reported[i] {
                reported[i] = true;
                on_done(i, s.finish(api));
            }
        }
        if !step(api, searches, &mut bufs)? {
            return Ok(());
        }
    }
}

/// Reusable buffers of `step`.
#[derive(Default)]
pub struct StepBuffers {
    wants: Vec<Want>,
    spans: Vec<(usize, usize, usize)>,
    picks: Vec<PickRequest>,
    choices: Vec<Vec<Choice>>,
}

/// One forward pass for every unfinished search in `searches` (all their wants batched), the
/// picks made where the logits are; returns false when none wanted anything.
pub fn step(
    api: &mut dyn StepApi,
    searches: &mut [Box<dyn Search>],
    b: &mut StepBuffers,
) -> Result<bool> {
    b.wants.clear();
    b.spans.clear();
    b.picks.clear();
    for (i, s) in searches.iter_mut().enumerate() {
        if !s.is_done() {
            let start = b.wants.len();
            s.want(&mut b.wants);
            b.spans.push((i, start, b.wants.len()));
            b.picks.push(s.pick());
        }
    }
    if b.wants.is_empty() {
        return Ok(false);
    }
    let items: Vec<Extend<'_>> = b
        .wants
        .iter()
        .map(|w| Extend {
            seq: w.seq,
            tokens: &w.tokens,
            all_logits: false,
        })
        .collect();
    let groups: Vec<(usize, usize, &PickRequest)> = b
        .spans
        .iter()
        .zip(&b.picks)
        .map(|(&(_, a, e), p)| (a, e - a, p))
        .collect();
    api.extend_pick(&items, &groups, &mut b.choices)?;
    for (&(i, _, _), c) in b.spans.iter().zip(&b.choices) {
        searches[i].got(api, c)?;
    }
    Ok(true)
}
