//! Token-level guided beam search (DESIGN §2). Each step scores every expansion
//! `S(prefix) + s_t(v)` of the live beams over the whole vocabulary, ordered by score, then lower
//! token id, then lower beam index (beams are kept best first). Walking that order, a non-EOS
//! expansion joins the next beam until `B` are live; an EOS expansion ranked within the first `B`
//! leaves the beam as a finished candidate (as HF's beam scorer). The search stops when `B`
//! candidates have finished (their best `B` are returned) or at `--max-new-tokens` (finished and
//! live beams compete, also when the `B`-th finishes on that last step, as HF's `num_beams` with
//! `early_stopping=True`; the best `B` are returned). Without EOS and with one context this is HF's
//! `num_beams=B` search exactly.
use super::{
    pending_wants, prefill_wants, row_states, sort_best_first, Candidate, Choice, Hyp, PickMode,
    PickRequest, PickSpec, Prefill, Search, SearchParams, Want,
};
use crate::engine::StepApi;
use crate::error::{Error, Result};
use crate::rear::Mixture;
use std::cmp::Ordering;

pub struct Beam {
    root: Option<(Hyp, Prefill)>,
    live: Vec<Hyp>,
    finished: Vec<Hyp>,
    spec: PickSpec,
    p: SearchParams,
    /// (S(prefix) + s_t(v), v, parent, index of the choice)
    cands: Vec<(f32, u32, u32, usize)>,
}

impl Beam {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        // Enough candidates per parent (and overall) that B non-EOS ones are among them.
        let eos = if p.ignore_eos {
            0
        } else {
            p.eos_token_ids.len()
        };
        let keep = p.beams * (1 + eos.max(1));
        Beam {
            root: Some((root, prefill)),
            live: Vec::new(),
            finished: Vec::new(),
            spec: PickSpec {
                mixture: mix,
                mode: PickMode::TopK(keep),
                seed: p.seed,
                from_context0: false,
            },
            p,
            cands: Vec::new(),
        }
    }

    fn keep(&self) -> usize {
        match self.spec.mode {
            PickMode::TopK(k) => k,
            _ => unreachable!("beam search picks TopK"),
        }
    }

    /// One selection step over `parents` from each parent's best expansions (`choices`, whose
    /// rows are the parents' indices).
    fn step(&mut self, api: &mut dyn StepApi, mut parents: Vec<Hyp>, choices: &[Choice]) {
        let b = self.p.beams;
        let keep = self.keep();
        self.cands.clear();
        self.cands.extend(
            choices
                .iter()
                .enumerate()
                .map(|(ci, c)| (c.total, c.token, c.row as u32, ci)),
        );
        // Each parent's shortlist holds its share of the overall best `keep`; rank them all.
        let order = |a: &(f32, u32, u32, usize), c: &(f32, u32, u32, usize)| -> Ordering {
            c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2))
        };
        self.cands.sort_unstable_by(order);
        self.cands.truncate(keep);
        // Choose (parent, token) pairs in rank order.
        // (parent, choice, finishes here)
        let mut chosen: Vec<(usize, usize, bool)> = Vec::new();
        let mut live = 0;
        for (rank, &(_, v, bi, ci)) in self.cands.iter().enumerate() {
            if live == b {
                break;
            }
            if self.p.is_eos(v) {
                if rank < b {
                    chosen.push((bi as usize, ci, true));
                }
            } else {
                chosen.push((bi as usize, ci, false));
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
        for (ci, &(pi, choice, fin)) in chosen.iter().enumerate() {
            if fin || last_use[pi] != Some(ci) {
                let mut child = if fin {
                    let mut c = parents[pi].clone();
                    c.seqs.clear();
                    c
                } else {
                    parents[pi].fork(api)
                };
                child.push(&choices[choice], &self.p, api);
                next[ci] = Some(child);
            }
        }
        for (ci, &(pi, choice, _)) in chosen.iter().enumerate() {
            if last_use[pi] == Some(ci) {
                let mut child = std::mem::replace(&mut parents[pi], Hyp::root(Vec::new()));
                child.push(&choices[choice], &self.p, api);
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

    fn pick(&self) -> PickRequest {
        let rows = match &self.root {
            Some((root, _)) => vec![root.row_state(0)],
            None => row_states(self.live.iter()),
        };
        PickRequest {
            spec: self.spec.clone(),
            rows,
        }
    }

    fn got(&mut self, api: &mut dyn StepApi, choices: &[Choice]) -> Result<()> {
        let n = if self.root.is_some() {
            1
        } else {
            self.live.len()
        };
        if let Some(c) = choices.iter().find(|c| c.row >= n) {
            return Err(Error::Input(format!(
                "beam search got a choice for row {} of {n}",
                c.row
            )));
        }
        let parents = match self.root.take() {
            Some((root, _)) => vec![root],
            None => std::mem::take(&mut self.live),
        };
        self.step(api, parents, choices);
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
