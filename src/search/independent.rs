//! Searches whose candidates never interact: `greedy` (argmax of the REAR score), `sample`
//! (`--n` draws from softmax(s/T) with top-k/top-p), and `bon` (best-of-N: `--n` draws from the
//! first (pref) context at temperature T with top-k/top-p, each scored by S in the same pass,
//! returned best first). All share the prompt's cache blocks after one prefill.
use super::sampler::{sample, uniform};
use super::{
    pending_wants, prefill_wants, sort_best_first, Algo, Candidate, Hyp, Prefill, Search,
    SearchParams, Want,
};
use crate::engine::StepApi;
use crate::error::Result;
use crate::rear::{argmax, Mixture};

pub struct Independent {
    root: Option<(Hyp, Prefill)>,
    hyps: Vec<Hyp>,
    mix: Mixture,
    p: SearchParams,
    combined: Vec<f32>,
    idx: Vec<u32>,
    probs: Vec<f64>,
}

impl Independent {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        Independent {
            root: Some((root, prefill)),
            hyps: Vec::new(),
            mix,
            p,
            combined: Vec::new(),
            idx: Vec::new(),
            probs: Vec::new(),
        }
    }

    /// Next token of hypothesis `h` from its context rows.
    fn choose(&mut self, h: &Hyp, rows: &[&[f32]]) -> u32 {
        let step = h.tokens.len() as u64;
        match self.p.algo {
            Algo::Greedy => {
                self.mix.combine(rows, &mut self.combined);
                argmax(&self.combined) as u32
            }
            Algo::Bon => {
                let u = uniform(self.p.seed, h.stream, step);
                sample(rows[0], self.p.sampling, u, &mut self.idx, &mut self.probs)
            }
            _ => {
                self.mix.combine(rows, &mut self.combined);
                let u = uniform(self.p.seed, h.stream, step);
                sample(
                    &self.combined,
                    self.p.sampling,
                    u,
                    &mut self.idx,
                    &mut self.probs,
                )
            }
        }
    }
}

impl Search for Independent {
    fn want(&mut self, out: &mut Vec<Want>) {
        match &self.root {
            Some((root, prefill)) => prefill_wants(root, prefill, out),
            None => pending_wants(self.hyps.iter(), out),
        }
    }

    fn got(&mut self, api: &mut dyn StepApi, rows: &[&[f32]]) -> Result<()> {
        let k = self.mix.contexts();
        if let Some((root, _)) = self.root.take() {
            let n = if self.p.algo == Algo::Greedy {
                1
            } else {
                self.p.n
            };
            let mut hyps: Vec<Hyp> = (1..n).map(|_| root.fork(api)).collect();
            hyps.insert(0, root);
            for (i, h) in hyps.iter_mut().enumerate() {
                h.stream = i as u64;
            }
            for mut h in hyps {
                let t = self.choose(&h, rows);
                h.push(t, rows, &self.mix, &self.p, api);
                self.hyps.push(h);
            }
            return Ok(());
        }
        let mut hyps = std::mem::take(&mut self.hyps);
        let mut r = 0;
        for h in hyps.iter_mut().filter(|h| h.pending && h.finish.is_none()) {
            let hr = &rows[r..r + k];
            r += k;
            let t = self.choose(h, hr);
            h.push(t, hr, &self.mix, &self.p, api);
        }
        self.hyps = hyps;
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.root.is_none() && self.hyps.iter().all(|h| h.finish.is_some())
    }

    fn finish(&mut self, api: &mut dyn StepApi) -> Vec<Candidate> {
        if let Some((mut root, _)) = self.root.take() {
            root.release(api);
        }
        let mut hyps = std::mem::take(&mut self.hyps);
        for h in hyps.iter_mut() {
            h.release(api);
        }
        sort_best_first(&mut hyps, &self.p);
        hyps.into_iter().map(Hyp::into_candidate).collect()
    }
}
