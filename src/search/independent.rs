//! Searches whose candidates never interact: `greedy` (argmax of the REAR score), `sample`
//! (`--n` draws from softmax(s/T) with top-k/top-p), and `bon` (best-of-N: `--n` draws from the
//! first (pref) context at temperature T with top-k/top-p, each scored by S in the same pass,
//! returned best first). All share the prompt's cache blocks after one prefill.
use super::{
    pending_wants, prefill_wants, row_states, sort_best_first, Algo, Candidate, Choice, Hyp,
    PickMode, PickRequest, PickSpec, Prefill, Search, SearchParams, Want,
};
use crate::engine::StepApi;
use crate::error::{Error, Result};
use crate::rear::Mixture;

pub struct Independent {
    root: Option<(Hyp, Prefill)>,
    hyps: Vec<Hyp>,
    spec: PickSpec,
    p: SearchParams,
}

impl Independent {
    pub fn new(root: Hyp, prefill: Prefill, mix: Mixture, p: SearchParams) -> Self {
        let (mode, from_context0) = match p.algo {
            Algo::Greedy => (PickMode::Argmax, false),
            Algo::Bon => (PickMode::Sample(p.sampling), true),
            _ => (PickMode::Sample(p.sampling), false),
        };
        Independent {
            root: Some((root, prefill)),
            hyps: Vec::new(),
            spec: PickSpec {
                mixture: mix,
                mode,
                seed: p.seed,
                from_context0,
            },
            p,
        }
    }

    /// Hypotheses drawn from the prefill's rows (one for greedy).
    fn draws(&self) -> usize {
        if self.p.algo == Algo::Greedy {
            1
        } else {
            self.p.n
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

    fn pick(&self) -> PickRequest {
        let rows = match &self.root {
            // Every draw reads the prefill's rows; hypothesis i samples from stream i.
            Some((root, _)) => (0..self.draws())
                .map(|i| {
                    let mut st = root.row_state(0);
                    st.stream = i as u64;
                    st
                })
                .collect(),
            None => row_states(self.hyps.iter().filter(|h| h.pending && h.finish.is_none())),
        };
        PickRequest {
            spec: self.spec.clone(),
            rows,
        }
    }

    fn got(&mut self, api: &mut dyn StepApi, choices: &[Choice]) -> Result<()> {
        let short = || Error::Input("the pick returned fewer choices than rows".into());
        if self.root.is_some() {
            let n = self.draws();
            if choices.len() < n {
                return Err(short());
            }
            let (root, _) = self.root.take().expect("checked above");
            let mut hyps: Vec<Hyp> = (1..n).map(|_| root.fork(api)).collect();
            hyps.insert(0, root);
            for (i, (mut h, c)) in hyps.into_iter().zip(choices).enumerate() {
                h.stream = i as u64;
                h.push(c, &self.p, api);
                self.hyps.push(h);
            }
            return Ok(());
        }
        let live = self.hyps.iter().filter(|h| h.pending && h.finish.is_none());
        if live.count() > choices.len() {
            return Err(short());
        }
        let mut hyps = std::mem::take(&mut self.hyps);
        let live = hyps.iter_mut().filter(|h| h.pending && h.finish.is_none());
        for (h, c) in live.zip(choices) {
            h.push(c, &self.p, api);
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
