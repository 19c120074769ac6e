//! Seeded sampling, defined identically for every device: a Philox4x32-10 counter-based
//! generator keyed by the seed and counted by (stream, step), then temperature, top-k and top-p
//! (in HF's warper order) over a score row and an inverse-CDF pick in a fixed token order.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: `counter` → four random u32 under `key`.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// A uniform number in `[0, 1)` for (`seed`, `stream`, `step`), with 53 random bits.
pub fn uniform(seed: u64, stream: u64, step: u64) -> f64 {
    let r = philox4x32(
        [
            step as u32,
            (step >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    let bits = ((r[0] as u64) << 21) ^ (r[1] as u64 >> 11);
    (bits & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

/// Sampling parameters applied to a row of scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    /// Keep the `top_k` best tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest best-first set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
}

/// Picks a token from `softmax(scores / T)` restricted by top-k then top-p, with the uniform
/// number `u`. Order of the inverse CDF: token id when nothing is cut, else best first (ties by
/// lower id). `T = 0` is argmax. `idx` and `probs` are scratch.
pub fn sample(
    scores: &[f32],
    p: SampleParams,
    u: f64,
    idx: &mut Vec<u32>,
    probs: &mut Vec<f64>,
) -> u32 {
    if p.temperature <= 0.0 {
        return crate::rear::argmax(scores) as u32;
    }
    let t = p.temperature;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) / t;
    let truncate = (p.top_k > 0 && p.top_k < scores.len()) || p.top_p < 1.0;
    idx.clear();
    idx.extend(0..scores.len() as u32);
    if truncate {
        let by_score = |a: &u32, b: &u32| {
            scores[*b as usize]
                .total_cmp(&scores[*a as usize])
                .then(a.cmp(b))
        };
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.select_nth_unstable_by(p.top_k - 1, by_score);
            idx.truncate(p.top_k);
        }
        idx.sort_unstable_by(by_score);
    }
    probs.clear();
    probs.extend(
        idx.iter()
            .map(|&i| ((scores[i as usize] / t - max) as f64).exp()),
    );
    if p.top_p < 1.0 {
        let total: f64 = probs.iter().sum();
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (k, &q) in probs.iter().enumerate() {
            if cum >= p.top_p as f64 * total {
                keep = k;
                break;
            }
            cum += q;
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    for (k, &q) in probs.iter().enumerate() {
        cum += q;
        if cum > target {
            return idx[k];
        }
    }
    idx[probs.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123's published known-answer vectors for philox4x32-10.
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn sampling_follows_the_distribution_and_cuts() {
        let scores = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let (mut i, mut p) = (vec![], vec![]);
        let sp = SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let n = 4000;
        let ones = (0..n)
            .filter(|&s| sample(&scores, sp, uniform(7, 0, s), &mut i, &mut p) == 1)
            .count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.03, "{ones}");
        let k1 = SampleParams { top_k: 1, ..sp };
        assert!((0..50).all(|s| sample(&scores, k1, uniform(7, 1, s), &mut i, &mut p) == 1));
        let p1 = SampleParams { top_p: 0.5, ..sp };
        assert!((0..50).all(|s| sample(&scores, p1, uniform(7, 2, s), &mut i, &mut p) == 1));
        assert_eq!(uniform(1, 2, 3), uniform(1, 2, 3));
        assert_ne!(uniform(1, 2, 3), uniform(1, 2, 4));
    }
}
