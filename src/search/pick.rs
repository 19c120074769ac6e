//! Picking a step's next tokens: every decision of the search algorithms (the argmax of the REAR
//! score, a beam's best expansions, a seeded draw) is a `PickRequest` over the step's context
//! rows, answered by `Choice`s. The engine answers it where the logits are: on the host with
//! [`rear_sample`] (the CPU function of `kernels/rear_sample.cu`), or on the device by the fused
//! kernel (`Backend::pick`), so that only the choices cross to the host.
//!
//! Rows come in groups of `K` (the mixture's contexts, consecutive, in mixture order): group `g`
//! is the `g`-th hypothesis extended this step. Several response rows may read one group (the
//! first draws of hypotheses forked from one prefill).
use super::sampler::{sample, uniform, SampleParams};
use crate::error::{Error, Result};
use crate::rear::{argmax, Mixture};

/// What to choose for each response row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PickMode {
    /// The token maximising the REAR score `s` (ties: lower id).
    Argmax,
    /// The row's best `k` expansions by `cum_score + s(v)` (ties: lower id), best first.
    TopK(usize),
    /// A draw from softmax(s / T) (or the first context's log-probs, `from_context0`) with
    /// top-k / top-p, using the Philox uniform `uniform(seed, stream, step)`.
    Sample(SampleParams),
}

/// How a search picks this step.
#[derive(Clone, Debug, PartialEq)]
pub struct PickSpec {
    pub mixture: Mixture,
    pub mode: PickMode,
    pub seed: u64,
    /// Sample from the first context's log-probs instead of the REAR score (best-of-N, chunk).
    pub from_context0: bool,
}

/// One response row of a pick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowState {
    /// Its row group (the `K` context rows it reads).
    pub group: usize,
    /// `S(prefix)`, added to every candidate by `TopK`.
    pub cum_score: f32,
    /// Philox stream and step (`Sample`).
    pub stream: u64,
    pub step: u64,
}

/// A search's pick for one step: its spec and one state per response row.
#[derive(Clone, Debug, PartialEq)]
pub struct PickRequest {
    pub spec: PickSpec,
    pub rows: Vec<RowState>,
}

/// One chosen token of response row `row`.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub row: usize,
    pub token: u32,
    /// `s_t(token)`.
    pub score: f32,
    /// `cum_score + s_t(token)` (the beam ranking key).
    pub total: f32,
    /// `log π(token | context k)` for each context.
    pub logprobs: Vec<f32>,
}

/// Checks that every row's group lies within `groups` row groups of `k` contexts.
pub fn check_groups(req: &PickRequest, n_rows: usize) -> Result<()> {
    let k = req.spec.mixture.contexts();
    if k == 0 || n_rows % k != 0 {
        return Err(Error::Input(format!(
            "a pick over {n_rows} rows cannot hold groups of {k} contexts"
        )));
    }
    if let Some(r) = req.rows.iter().find(|r| r.group >= n_rows / k) {
        return Err(Error::Input(format!(
            "a pick reads row group {} of {}",
            r.group,
            n_rows / k
        )));
    }
    Ok(())
}

/// Reusable buffers of [`rear_sample`].
#[derive(Default)]
pub struct PickScratch {
    combined: Vec<f32>,
    idx: Vec<u32>,
    probs: Vec<f64>,
    top: Vec<(f32, u32)>,
}

/// The host pick: `rows` are log-prob rows (`groups × K`, each `[vocab]`); returns the choices of
/// `req.rows` in order (`TopK`: up to `k` per row, best first).
pub fn rear_sample(rows: &[&[f32]], req: &PickRequest, s: &mut PickScratch) -> Result<Vec<Choice>> {
    check_groups(req, rows.len())?;
    let spec = &req.spec;
    let mix = &spec.mixture;
    let k = mix.contexts();
    let mut out = Vec::with_capacity(req.rows.len());
    let choice = |row: usize, token: u32, total_base: f32, g: &[&[f32]]| {
        let logprobs: Vec<f32> = g.iter().map(|r| r[token as usize]).collect();
        let score = mix.token_score(&logprobs);
        Choice {
            row,
            token,
            score,
            total: total_base + score,
            logprobs,
        }
    };
    // Requests list the rows of one group together; the combination is computed once per group
    // (draws from the first context alone need none).
    let needs_combined = !(matches!(spec.mode, PickMode::Sample(_)) && spec.from_context0);
    let mut combined_group = usize::MAX;
    for (i, st) in req.rows.iter().enumerate() {
        let g = &rows[st.group * k..(st.group + 1) * k];
        if needs_combined && combined_group != st.group {
            mix.combine(g, &mut s.combined);
            combined_group = st.group;
        }
        match spec.mode {
            PickMode::Argmax => {
                let t = argmax(&s.combined) as u32;
                out.push(choice(i, t, st.cum_score, g));
            }
            PickMode::Sample(params) => {
                let u = uniform(spec.seed, st.stream, st.step);
                let src: &[f32] = if spec.from_context0 {
                    g[0]
                } else {
                    &s.combined
                };
                let t = sample(src, params, u, &mut s.idx, &mut s.probs);
                out.push(choice(i, t, st.cum_score, g));
            }
            PickMode::TopK(n) => {
                // Ranked by cum + combined[v] exactly as the beam step compares expansions.
                s.top.clear();
                s.top.extend(
                    s.combined
                        .iter()
                        .enumerate()
                        .map(|(v, &x)| (st.cum_score + x, v as u32)),
                );
                let order =
                    |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                let n = n.min(s.top.len());
                if n == 0 {
                    continue;
                }
                if s.top.len() > n {
                    s.top.select_nth_unstable_by(n - 1, order);
                    s.top.truncate(n);
                }
                s.top.sort_unstable_by(order);
                // `choice` recomputes the same total: `combine` is `token_score` per token.
                for &(_, v) in &s.top {
                    out.push(choice(i, v, st.cum_score, g));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rear::log_softmax_rows;

    fn rows(n: usize, vocab: usize, seed: u32) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n * vocab)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 97.0)
            .collect();
        log_softmax_rows(&mut x, vocab);
        x
    }

    #[test]
    fn topk_is_the_best_expansions_with_lower_ids_first_on_ties() {
        let vocab = 37;
        let mut x = rows(2, vocab, 7);
        // A tie between tokens 3 and 5 of the pref row makes the combined scores tie too.
        x[5] = x[3];
        x[vocab + 5] = x[vocab + 3];
        let r: Vec<&[f32]> = x.chunks(vocab).collect();
        let mix = Mixture::Guided { lambdas: vec![2.0] };
        let req = PickRequest {
            spec: PickSpec {
                mixture: mix.clone(),
                mode: PickMode::TopK(vocab + 3),
                seed: 0,
                from_context0: false,
            },
            rows: vec![RowState {
                group: 0,
                cum_score: -1.5,
                ..Default::default()
            }],
        };
        let got = rear_sample(&r, &req, &mut PickScratch::default()).unwrap();
        assert_eq!(got.len(), vocab, "TopK(k > vocab) returns the whole row");
        let mut combined = Vec::new();
        mix.combine(&r, &mut combined);
        let mut want: Vec<(f32, u32)> = combined
            .iter()
            .enumerate()
            .map(|(v, &s)| (-1.5 + s, v as u32))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (c, w) in got.iter().zip(&want) {
            assert_eq!((c.total, c.token), *w);
            assert_eq!(
                c.logprobs,
                vec![r[0][c.token as usize], r[1][c.token as usize]]
            );
            assert_eq!(c.score, mix.token_score(&c.logprobs));
        }
        let p3 = got.iter().position(|c| c.token == 3).unwrap();
        assert_eq!(got[p3 + 1].token, 5, "tie broken by the lower id");
    }

    #[test]
    fn rows_may_share_a_group_and_groups_are_checked() {
        let vocab = 11;
        let x = rows(4, vocab, 3);
        let r: Vec<&[f32]> = x.chunks(vocab).collect();
        let spec = PickSpec {
            mixture: Mixture::Guided { lambdas: vec![3.0] },
            mode: PickMode::Argmax,
            seed: 0,
            from_context0: false,
        };
        let st = |group| RowState {
            group,
            ..Default::default()
        };
        let req = PickRequest {
            spec: spec.clone(),
            rows: vec![st(1), st(0), st(1)],
        };
        let got = rear_sample(&r, &req, &mut PickScratch::default()).unwrap();
        let mut c = Vec::new();
        for (i, g) in [1usize, 0, 1].into_iter().enumerate() {
            spec.mixture.combine(&r[2 * g..2 * g + 2], &mut c);
            assert_eq!(got[i].row, i);
            assert_eq!(got[i].token, argmax(&c) as u32);
        }
        let bad = PickRequest {
            spec,
            rows: vec![st(2)],
        };
        assert!(rear_sample(&r, &bad, &mut PickScratch::default()).is_err());
    }
}
