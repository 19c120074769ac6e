//! All score math of REAR in one place: log-softmax of a logits row, and the token score that
//! combines the contexts' log-probabilities (DESIGN §1):
//!
//! `s_t(v) = log π(v|x) + Σ_i λ_i · [log π(v|x,p_i) − log π(v|x)]`
//!
//! with one preference this is `λ·log π(v|x,p) + (1−λ)·log π(v|x)`, computed in HF's
//! classifier-free-guidance order `λ·(pref − base) + base` (f32). A sequence's score is the sum of
//! its token scores, accumulated in f32 in token order.

/// How the contexts of a request combine into the token score.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Mixture {
    /// One context: `s = log π(v|ctx)` (λ ignored).
    Single,
    /// Contexts `[pref_1 … pref_n, base]`: `s = base + Σ λ_i (pref_i − base)`.
    /// With one preference and λ = 1 this is exactly `pref` (HF skips guidance at scale 1).
    Guided { lambdas: Vec<f32> },
    /// Explicit contexts with free weights: `s = Σ w_k · log π(v|ctx_k)`.
    Weighted { weights: Vec<f32> },
}

impl Mixture {
    /// Number of contexts the mixture reads.
    pub fn contexts(&self) -> usize {
        match self {
            Mixture::Single => 1,
            Mixture::Guided { lambdas } => lambdas.len() + 1,
            Mixture::Weighted { weights } => weights.len(),
        }
    }

    /// Index of the base context, if any.
    pub fn base(&self) -> Option<usize> {
        match self {
            Mixture::Guided { lambdas } => Some(lambdas.len()),
            _ => None,
        }
    }

    /// Token score from the token's log-prob under each context (`lps.len() == contexts()`).
    #[inline]
    pub fn token_score(&self, lps: &[f32]) -> f32 {
        match self {
            Mixture::Single => lps[0],
            Mixture::Guided { lambdas } => {
                let n = lambdas.len();
                if n == 1 && lambdas[0] == 1.0 {
                    return lps[0];
                }
                let base = lps[n];
                let mut s = base;
                for (l, &p) in lambdas.iter().zip(lps) {
                    s = l * (p - base) + s;
                }
                s
            }
            Mixture::Weighted { weights } => {
                let mut s = 0f32;
                for (w, &p) in weights.iter().zip(lps) {
                    s += w * p;
                }
                s
            }
        }
    }

    /// `out[v] = token_score([rows[k][v] for k])` over the whole vocabulary.
    pub fn combine(&self, rows: &[&[f32]], out: &mut Vec<f32>) {
        let v = rows[0].len();
        out.resize(v, 0.0);
        if rows.len() == 1 {
            out.copy_from_slice(rows[0]);
            return;
        }
        let mut lps = [0f32; 16];
        let mut big = Vec::new();
        let buf: &mut [f32] = if rows.len() <= 16 {
            &mut lps[..rows.len()]
        } else {
            big.resize(rows.len(), 0.0);
            &mut big
        };
        for (i, o) in out.iter_mut().enumerate() {
            for (b, r) in buf.iter_mut().zip(rows) {
                *b = r[i];
            }
            *o = self.token_score(buf);
        }
    }
}

/// `out = log_softmax(logits)` in f32: `x − max − log Σ exp(x − max)`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    let lse = sum.ln();
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = x - max - lse;
    }
}

/// In-place log-softmax of each `vocab`-row of `rows`.
pub fn log_softmax_rows(rows: &mut [f32], vocab: usize) {
    use rayon::prelude::*;
    rows.par_chunks_mut(vocab).for_each(|r| {
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = r.iter().map(|&x| (x - max).exp()).sum();
        let lse = sum.ln();
        for x in r.iter_mut() {
            *x = *x - max - lse;
        }
    });
}

/// Index of the largest value; ties go to the lowest index (as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guided_score_is_the_paper_formula() {
        let m = Mixture::Guided { lambdas: vec![3.0] };
        let (p, b) = (-1.0f32, -2.5f32);
        assert!((m.token_score(&[p, b]) - (3.0 * p + (1.0 - 3.0) * b)).abs() < 1e-6);
        let one = Mixture::Guided { lambdas: vec![1.0] };
        assert_eq!(one.token_score(&[p, b]), p);
        let zero = Mixture::Guided { lambdas: vec![0.0] };
        assert_eq!(zero.token_score(&[p, b]), b);
        let two = Mixture::Guided {
            lambdas: vec![2.0, 0.5],
        };
        let want = b + 2.0 * (p - b) + 0.5 * (-0.5 - b);
        assert!((two.token_score(&[p, -0.5, b]) - want).abs() < 1e-6);
        let w = Mixture::Weighted {
            weights: vec![0.5, 2.0],
        };
        assert_eq!(w.token_score(&[p, b]), 0.5 * p + 2.0 * b);
    }

    #[test]
    fn log_softmax_normalises() {
        let mut out = [0f32; 3];
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let s: f32 = out.iter().map(|x| x.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
