//! Chunk-level tree search (DESIGN §2). `B` beams (`--beams`); in each round every unfinished
//! beam forks `M` (`--n`) continuations, each sampled token by token from the first (pref)
//! context at temperature T with top-k/top-p, until it has `L` (`--chunk-tokens`) new tokens, hits
//! a delimiter token (one whose text holds a newline), EOS or `--max-new-tokens`. When every
//! continuation of the round has stopped, the pool (finished beams carried over plus all new
//! continuations) is ranked by S (or S/len with `--length-norm`) and the best `B` are kept. The
//! search ends when every kept beam has finished. Continuation `j` of beam rank `b` in round `r`
//! samples from random stream `r·B·M + b·M + j`, so a seed reproduces the same tree.
use super::{
    pending_wants, prefill_wants, row_states, sort_best_first, Candidate, Choice, Hyp, PickMode,
    PickRequest, PickSpec, Prefill, RowState, Search, SearchParams, Want,
};
use crate::engine::StepApi;
use crate::error::{Error, Result};
use crate::rear::Mixture;

pub struct Chunk {
    root: Option<(Hyp, Prefill)>,
    /// Kept beams, best first; unfinished ones have a pending token (their rows come next pass).
    beams: Vec<Hyp>,
    /// Continuations of the current round.
    growing: Vec<Hyp>,
    round: u64,
    spec: PickSpec,
    p: SearchParams,
}

impl Chunk {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        Chunk {
            root: Some((root, prefill)),
            beams: Vec::new(),
            growing: Vec::new(),
            round: 0,
            spec: PickSpec {
                mixture: mix,
                mode: PickMode::Sample(p.sampling),
                seed: p.seed,
                from_context0: true,
            },
            p,
        }
    }

    /// Random stream of continuation `j` of parent `bi` in the current round.
    fn stream(&self, bi: usize, j: usize) -> u64 {
        let (m, b) = (self.p.n as u64, self.p.beams as u64);
        self.round * b * m + bi as u64 * m + j as u64
    }

    /// Parents that start a round this step (with their rows), when one starts.
    fn parents(&self) -> Option<Vec<&Hyp>> {
        if let Some((root, _)) = &self.root {
            Some(vec![root])
        } else if self.growing.is_empty() {
            Some(self.beams.iter().filter(|h| h.finish.is_none()).collect())
        } else {
            None
        }
    }

    /// A continuation still in its chunk: unfinished, and its last token neither ended the chunk
    /// by length nor was a delimiter.
    fn in_chunk(&self, h: &Hyp) -> bool {
        h.finish.is_none()
            && h.chunk_len < self.p.chunk_tokens
            && !h
                .tokens
                .last()
                .is_some_and(|t| self.p.chunk_delimiters.contains(t))
    }

    /// Forks `M` continuations of each parent and gives them their first tokens (the choices,
    /// `M` per parent in order).
    fn expand(&mut self, api: &mut dyn StepApi, parents: Vec<Hyp>, choices: &[Choice]) {
        let m = self.p.n;
        for (bi, parent) in parents.into_iter().enumerate() {
            let mut kids: Vec<Hyp> = (1..m).map(|_| parent.fork(api)).collect();
            kids.push(parent);
            for (j, mut kid) in kids.into_iter().enumerate() {
                kid.stream = self.stream(bi, j);
                kid.chunk_len = 0;
                kid.push(&choices[bi * m + j], &self.p, api);
                self.growing.push(kid);
            }
        }
        self.round += 1;
    }

    /// Ranks the pool once every continuation has stopped and keeps the best `B`.
    fn select(&mut self, api: &mut dyn StepApi) {
        let mut pool = std::mem::take(&mut self.beams);
        pool.append(&mut self.growing);
        sort_best_first(&mut pool, &self.p);
        for mut h in pool.drain(self.p.beams.min(pool.len())..) {
            h.release(api);
        }
        self.beams = pool;
    }
}

impl Search for Chunk {
    fn want(&mut self, out: &mut Vec<Want>) {
        if let Some((root, prefill)) = &self.root {
            return prefill_wants(root, prefill, out);
        }
        if self.growing.is_empty() {
            pending_wants(self.beams.iter(), out);
        } else {
            let growing: Vec<&Hyp> = self.growing.iter().filter(|h| self.in_chunk(h)).collect();
            pending_wants(growing.into_iter(), out);
        }
    }

    fn pick(&self) -> PickRequest {
        let rows = match self.parents() {
            // Continuation j of parent bi draws its first token from the parent's rows.
            Some(parents) => parents
                .iter()
                .enumerate()
                .flat_map(|(bi, h)| {
                    (0..self.p.n).map(move |j| RowState {
                        stream: self.stream(bi, j),
                        ..h.row_state(bi)
                    })
                })
                .collect(),
            None => row_states(self.growing.iter().filter(|h| self.in_chunk(h))),
        };
        PickRequest {
            spec: self.spec.clone(),
            rows,
        }
    }

    fn got(&mut self, api: &mut dyn StepApi, choices: &[Choice]) -> Result<()> {
        let want = match self.parents() {
            Some(p) => p.len() * self.p.n,
            None => self.growing.iter().filter(|h| self.in_chunk(h)).count(),
        };
        if choices.len() < want {
            return Err(Error::Input(format!(
                "chunk search got {} choices for {want} rows",
                choices.len()
            )));
        }
        if let Some((root, _)) = self.root.take() {
            self.expand(api, vec![root], choices);
        } else if self.growing.is_empty() {
            // Choices from the kept unfinished beams' rows: start the next round.
            let (parents, done): (Vec<Hyp>, Vec<Hyp>) = std::mem::take(&mut self.beams)
                .into_iter()
                .partition(|h| h.finish.is_none());
            self.beams = done;
            self.expand(api, parents, choices);
        } else {
            let mut growing = std::mem::take(&mut self.growing);
            let mut r = 0;
            for h in growing.iter_mut() {
                if !self.in_chunk(h) {
                    continue;
                }
                h.push(&choices[r], &self.p, api);
                r += 1;
            }
            self.growing = growing;
        }
        if !self.growing.iter().any(|h| self.in_chunk(h)) {
            self.select(api);
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.root.is_none()
            && self.growing.is_empty()
            && self.beams.iter().all(|h| h.finish.is_some())
    }

    fn finish(&mut self, api: &mut dyn StepApi) -> Vec<Candidate> {
        if let Some((mut root, _)) = self.root.take() {
            root.release(api);
        }
        let mut all = std::mem::take(&mut self.beams);
        all.append(&mut self.growing);
        for h in all.iter_mut() {
            h.release(api);
        }
        sort_best_first(&mut all, &self.p);
        all.truncate(self.p.beams);
        all.into_iter().map(Hyp::into_candidate).collect()
    }
}
