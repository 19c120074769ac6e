//! Chunk-level tree search (DESIGN §2). `B` beams (`--beams`); in each round every unfinished
//! beam forks `M` (`--n`) continuations, each sampled token by token from the first (pref)
//! context at temperature T with top-k/top-p, until it has `L` (`--chunk-tokens`) new tokens, hits
//! a delimiter token (one whose text holds a newline), EOS or `--max-new-tokens`. When every
//! continuation of the round has stopped, the pool (finished beams carried over plus all new
//! continuations) is ranked by S (or S/len with `--length-norm`) and the best `B` are kept. The
//! search ends when every kept beam has finished. Continuation `j` of beam rank `b` in round `r`
//! samples from random stream `r·B·M + b·M + j`, so a seed reproduces the same tree.
use super::sampler::{sample, uniform};
use super::{
    pending_wants, prefill_wants, sort_best_first, Candidate, Hyp, Prefill, Search, SearchParams,
    Want,
};
use crate::engine::StepApi;
use crate::error::Result;
use crate::rear::Mixture;

pub struct Chunk {
    root: Option<(Hyp, Prefill)>,
    /// Kept beams, best first; unfinished ones have a pending token (their rows come next pass).
    beams: Vec<Hyp>,
    /// Continuations of the current round.
    growing: Vec<Hyp>,
    round: u64,
    mix: Mixture,
    p: SearchParams,
    idx: Vec<u32>,
    probs: Vec<f64>,
}

impl Chunk {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        Chunk {
            root: Some((root, prefill)),
            beams: Vec::new(),
            growing: Vec::new(),
            round: 0,
            mix,
            p,
            idx: Vec::new(),
            probs: Vec::new(),
        }
    }

    fn draw(&mut self, h: &Hyp, rows: &[&[f32]]) -> u32 {
        let u = uniform(self.p.seed, h.stream, h.tokens.len() as u64);
        sample(rows[0], self.p.sampling, u, &mut self.idx, &mut self.probs)
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

    /// Forks `M` continuations of each parent (with its rows) and draws their first tokens.
    fn expand(&mut self, api: &mut dyn StepApi, parents: Vec<Hyp>, rows: &[&[f32]]) {
        let (k, m, b) = (self.mix.contexts(), self.p.n, self.p.beams as u64);
        for (bi, parent) in parents.into_iter().enumerate() {
            let hr = &rows[bi * k..(bi + 1) * k];
            let mut kids: Vec<Hyp> = (1..m).map(|_| parent.fork(api)).collect();
            kids.push(parent);
            for (j, mut kid) in kids.into_iter().enumerate() {
                kid.stream = self.round * b * m as u64 + bi as u64 * m as u64 + j as u64;
                kid.chunk_len = 0;
                let t = self.draw(&kid, hr);
                kid.push(t, hr, &self.mix, &self.p, api);
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

    fn got(&mut self, api: &mut dyn StepApi, rows: &[&[f32]]) -> Result<()> {
        let k = self.mix.contexts();
        if let Some((root, _)) = self.root.take() {
            self.expand(api, vec![root], rows);
        } else if self.growing.is_empty() {
            // Rows of the kept unfinished beams: start the next round.
            let (parents, done): (Vec<Hyp>, Vec<Hyp>) = std::mem::take(&mut self.beams)
                .into_iter()
                .partition(|h| h.finish.is_none());
            self.beams = done;
            self.expand(api, parents, rows);
        } else {
            let mut growing = std::mem::take(&mut self.growing);
            let mut r = 0;
            for h in growing.iter_mut() {
                if !self.in_chunk(h) {
                    continue;
                }
                let hr = &rows[r..r + k];
                r += k;
                let t = self.draw(h, hr);
                h.push(t, hr, &self.mix, &self.p, api);
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
