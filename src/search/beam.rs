//! Token-level guided beam search (DESIGN §2). Each step scores every expansion
//! `S(prefix) + s_t(v)` of the live beams over the whole vocabulary, ordered by score, then lower
//! token id, then lower beam index (beams are kept best first). Walking that order, a non-EOS
//! expansion joins the next beam until `B` are live; an EOS expansion ranked within the first `B`
//! leaves the beam as a finished candidate (as HF's beam scorer). The search stops when `B`
//! candidates have finished (their best `B` are returned) or at `--max-new-tokens` (finished and
//! live beams compete; the best `B` are returned). Without EOS and with one context this is HF's
//! `num_beams=B` search exactly.
use super::{
    pending_wants, prefill_wants, sort_best_first, Candidate, Hyp, Prefill, Search, SearchParams,
    Want,
};
use crate::engine::StepApi;
use crate::error::Result;
use crate::rear::Mixture;
use std::cmp::Ordering;

pub struct Beam {
    root: Option<(Hyp, Prefill)>,
    live: Vec<Hyp>,
    finished: Vec<Hyp>,
    mix: Mixture,
    p: SearchParams,
    combined: Vec<f32>,
    cands: Vec<(f32, u32, u32)>,
}

impl Beam {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        Beam {
            root: Some((root, prefill)),
            live: Vec::new(),
            finished: Vec::new(),
            mix,
            p,
            combined: Vec::new(),
            cands: Vec::new(),
        }
    }

    /// One selection step over `parents` with their context rows (`k` rows each).
    fn step(&mut self, api: &mut dyn StepApi, mut parents: Vec<Hyp>, rows: &[&[f32]]) {
        let k = self.mix.contexts();
        let b = self.p.beams;
        // Enough candidates that B non-EOS ones are among them.
        let eos = if self.p.ignore_eos {
            0
        } else {
            self.p.eos_token_ids.len()
        };
        let keep = b * (1 + eos.max(1));
        self.cands.clear();
        for (bi, h) in parents.iter().enumerate() {
            self.mix
                .combine(&rows[bi * k..(bi + 1) * k], &mut self.combined);
            for (v, &s) in self.combined.iter().enumerate() {
                self.cands.push((h.score + s, v as u32, bi as u32));
            }
        }
        let order = |a: &(f32, u32, u32), c: &(f32, u32, u32)| -> Ordering {
            c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2))
        };
        if self.cands.len() > keep {
            self.cands.select_nth_unstable_by(keep - 1, order);
            self.cands.truncate(keep);
        }
        self.cands.sort_unstable_by(order);
        // Choose (parent, token) pairs in rank order.
        let mut chosen: Vec<(usize, u32, bool)> = Vec::new(); // (parent, token, finishes here)
        let mut live = 0;
        for (rank, &(_, v, bi)) in self.cands.iter().enumerate() {
            if live == b {
                break;
            }
            if self.p.is_eos(v) {
                if rank < b {
                    chosen.push((bi as usize, v, true));
                }
            } else {
                chosen.push((bi as usize, v, false));
                live += 1;
            }
        }
        // Build children: finishing children and forks first, then the last live child of
        // each parent takes over the parent's own sequences.
        let mut last_use: Vec<Option<usize>> = vec![None; parents.len()];
        for (ci, &(pi, _, fin)) in chosen.iter().enumerate() {
            if !fin {
                last_use[pi] = Some(ci);
            }
        }
        let mut next: Vec<Option<Hyp>> = vec![None; chosen.len()];
        for (ci, &(pi, v, fin)) in chosen.iter().enumerate() {
            let hr = &rows[pi * k..(pi + 1) * k];
            if fin || last_use[pi] != Some(ci) {
                let mut child = if fin {
                    let mut c = parents[pi].clone();
                    c.seqs.clear();
                    c
                } else {
                    parents[pi].fork(api)
                };
                child.push(v, hr, &self.mix, &self.p, api);
                next[ci] = Some(child);
            }
        }
        for (ci, &(pi, v, _)) in chosen.iter().enumerate() {
            if last_use[pi] == Some(ci) {
                let mut child = std::mem::replace(&mut parents[pi], Hyp::root(Vec::new()));
                child.push(v, &rows[pi * k..(pi + 1) * k], &self.mix, &self.p, api);
                next[ci] = Some(child);
            }
        }
        for (pi, h) in parents.iter_mut().enumerate() {
            if last_use[pi].is_none() {
                h.release(api);
            }
        }
        self.live.clear();
        for h in next.into_iter().flatten() {
            if h.finish.is_some() {
                self.finished.push(h);
            } else {
                self.live.push(h);
            }
        }
    }
}

impl Search for Beam {
    fn want(&mut self, out: &mut Vec<Want>) {
        match &self.root {
            Some((root, prefill)) => prefill_wants(root, prefill, out),
            None => pending_wants(self.live.iter(), out),
        }
    }

    fn got(&mut self, api: &mut dyn StepApi, rows: &[&[f32]]) -> Result<()> {
        let parents = match self.root.take() {
            Some((root, _)) => vec![root],
            None => std::mem::take(&mut self.live),
        };
        self.step(api, parents, rows);
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.root.is_none() && (self.live.is_empty() || self.finished.len() >= self.p.beams)
    }

    fn finish(&mut self, api: &mut dyn StepApi) -> Vec<Candidate> {
        if let Some((mut root, _)) = self.root.take() {
            root.release(api);
        }
        let mut all = std::mem::take(&mut self.finished);
        let stopped_early = all.len() >= self.p.beams;
        for mut h in std::mem::take(&mut self.live) {
            h.release(api);
            if !stopped_early {
                all.push(h);
            }
        }
        sort_best_first(&mut all, &self.p);
        all.truncate(self.p.beams);
        all.into_iter().map(Hyp::into_candidate).collect()
    }
}
