//! REAR decoding semantics (DESIGN §2, issue 3): guided beam search against a brute-force
//! reference without a cache, identities between algorithms, scores reproduced by `score`,
//! seeded repeatability, several preferences, no leaked KV blocks, the cache budget.
use rear::api::{LoadOptions, Rear};
use rear::engine::{EngineOptions, Extend, StepApi};
use rear::rear::{log_softmax_rows, Mixture};
use rear::search::{Algo, Candidate, Prompt, SearchParams};
use std::path::PathBuf;

fn load(name: &str) -> Rear {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Rear::load(&dir, &LoadOptions::default()).unwrap()
}

fn guided(lambda: f32) -> Prompt {
    Prompt {
        contexts: vec![vec![442, 87, 85, 268, 57, 74, 280], vec![442, 293, 85, 267]],
        mixture: Mixture::Guided {
            lambdas: vec![lambda],
        },
    }
}

fn params(r: &Rear, algo: Algo) -> SearchParams {
    SearchParams {
        algo,
        max_new_tokens: 7,
        ignore_eos: true,
        ..r.default_params()
    }
}

/// Next-token log-probs of `prefix` after each context, recomputed from scratch (fresh
/// sequences, full prefill: no cache reuse).
fn fresh_rows(api: &mut dyn StepApi, prompt: &Prompt, prefix: &[u32]) -> Vec<Vec<f32>> {
    let v = api.config().vocab_size;
    prompt
        .contexts
        .iter()
        .map(|c| {
            let toks: Vec<u32> = c.iter().chain(prefix).copied().collect();
            let s = api.new_seq();
            let mut logits = Vec::new();
            api.extend(
                &[Extend {
                    seq: s,
                    tokens: &toks,
                    all_logits: false,
                }],
                &mut logits,
            )
            .unwrap();
            api.free(s);
            log_softmax_rows(&mut logits, v);
            logits
        })
        .collect()
}

/// DESIGN §2 beam search written out plainly: all B×V expansions, order (score desc, token
/// asc, beam asc), keep B (no EOS).
fn brute_force_beam(
    api: &mut dyn StepApi,
    prompt: &Prompt,
    b: usize,
    steps: usize,
) -> Vec<(Vec<u32>, f32)> {
    let mut beams: Vec<(Vec<u32>, f32)> = vec![(vec![], 0.0)];
    for _ in 0..steps {
        let mut cands = Vec::new();
        for (bi, (toks, s)) in beams.iter().enumerate() {
            let rows = fresh_rows(api, prompt, toks);
            for t in 0..rows[0].len() {
                let lps: Vec<f32> = rows.iter().map(|r| r[t]).collect();
                cands.push((s + prompt.mixture.token_score(&lps), t as u32, bi));
            }
        }
        cands.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2)));
        beams = cands[..b]
            .iter()
            .map(|&(s, t, bi)| {
                let mut toks = beams[bi].0.clone();
                toks.push(t);
                (toks, s)
            })
            .collect();
    }
    beams
}

#[test]
fn guided_beam_matches_brute_force_reference() {
    for (name, lambda, b) in [
        ("llama_f32", 2.5f32, 3usize),
        ("qwen3_f32", 0.5, 4),
        ("llama3_bf16_tied", 4.0, 2),
    ] {
        let mut r = load(name);
        let prompt = guided(lambda);
        let mut p = params(&r, Algo::Beam);
        p.beams = b;
        p.max_new_tokens = 5;
        let got = r.generate(&prompt, &p).unwrap();
        let want = brute_force_beam(r.engine(), &prompt, b, 5);
        assert_eq!(got.len(), b);
        for (c, (toks, s)) in got.iter().zip(&want) {
            assert_eq!(&c.token_ids, toks, "{name} λ={lambda}");
            assert!((c.score - s).abs() < 1e-4, "{name}: {} vs {s}", c.score);
        }
        assert_eq!(r.engine().used_blocks(), 0);
    }
}

#[test]
fn beam_of_one_is_greedy_and_lambda_one_is_no_base() {
    let mut r = load("qwen2_bf16");
    let prompt = guided(3.0);
    let greedy = r.generate(&prompt, &params(&r, Algo::Greedy)).unwrap();
    let mut p = params(&r, Algo::Beam);
    p.beams = 1;
    let beam = r.generate(&prompt, &p).unwrap();
    assert_eq!(beam[0].token_ids, greedy[0].token_ids);
    assert_eq!(beam[0].score, greedy[0].score);

    let with_base = r.generate(&guided(1.0), &params(&r, Algo::Greedy)).unwrap();
    let single = Prompt {
        contexts: vec![guided(1.0).contexts[0].clone()],
        mixture: Mixture::Single,
    };
    let without = r.generate(&single, &params(&r, Algo::Greedy)).unwrap();
    assert_eq!(with_base[0].token_ids, without[0].token_ids);
    assert_eq!(with_base[0].score, without[0].score);
    assert_eq!(
        with_base[0].logprob_contexts[0],
        without[0].logprob_contexts[0]
    );
    assert_eq!(r.engine().used_blocks(), 0);
}

fn assert_scores_reproduced(r: &mut Rear, prompt: &Prompt, cands: &[Candidate]) {
    for c in cands {
        let s = r.score(prompt, &c.token_ids).unwrap();
        assert_eq!(s.score, c.score);
        assert_eq!(s.logprob_contexts, c.logprob_contexts);
        assert_eq!(s.token_logprobs, c.token_logprobs);
    }
}

#[test]
fn every_algorithm_reports_scores_that_score_reproduces() {
    let mut r = load("llama_f32");
    let prompt = guided(2.0);
    for algo in [
        Algo::Greedy,
        Algo::Sample,
        Algo::Beam,
        Algo::Bon,
        Algo::Chunk,
    ] {
        let mut p = params(&r, algo);
        p.n = if algo == Algo::Greedy { 1 } else { 3 };
        p.beams = 2;
        p.chunk_tokens = 3;
        p.seed = 11;
        let cands = r.generate(&prompt, &p).unwrap();
        let want = match algo {
            Algo::Greedy => 1,
            Algo::Sample | Algo::Bon => 3,
            Algo::Beam | Algo::Chunk => 2,
        };
        assert_eq!(cands.len(), want, "{algo:?}");
        for w in cands.windows(2) {
            assert!(w[0].score >= w[1].score, "{algo:?}: best first");
        }
        assert_scores_reproduced(&mut r, &prompt, &cands);
        assert_eq!(r.engine().used_blocks(), 0, "{algo:?}: blocks leaked");
    }
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let mut r = load("mistral_f16_sharded");
    let prompt = guided(1.5);
    for algo in [Algo::Sample, Algo::Bon, Algo::Chunk] {
        let mut p = params(&r, algo);
        p.n = 4;
        p.beams = 2;
        p.chunk_tokens = 2;
        p.max_new_tokens = 8;
        p.seed = 5;
        let a = r.generate(&prompt, &p).unwrap();
        let b = r.generate(&prompt, &p).unwrap();
        assert_eq!(a, b, "{algo:?} not reproducible");
        let toks = |v: &[Candidate]| v.iter().map(|c| c.token_ids.clone()).collect::<Vec<_>>();
        let distinct: std::collections::HashSet<Vec<u32>> = toks(&a).into_iter().collect();
        assert!(distinct.len() > 1, "{algo:?}: all samples identical");
        p.seed = 6;
        let c = r.generate(&prompt, &p).unwrap();
        assert_ne!(toks(&a), toks(&c), "{algo:?}: seed has no effect");
        assert_eq!(r.engine().used_blocks(), 0);
    }
}

#[test]
fn bon_draws_from_the_pref_context_and_ranks_by_rear_score() {
    let mut r = load("qwen3_f32");
    let prompt = guided(3.0);
    let mut p = params(&r, Algo::Bon);
    p.n = 5;
    p.seed = 3;
    let guided_bon = r.generate(&prompt, &p).unwrap();
    // The draws do not depend on λ (they come from the pref context); only the ranking does.
    let plain = r.generate(&guided(1.0), &p).unwrap();
    let set = |v: &[Candidate]| {
        let mut t: Vec<Vec<u32>> = v.iter().map(|c| c.token_ids.clone()).collect();
        t.sort();
        t
    };
    assert_eq!(set(&guided_bon), set(&plain));
    assert_scores_reproduced(&mut r, &prompt, &guided_bon);
}

#[test]
fn several_preferences_combine_as_documented() {
    let mut r = load("llama_f32");
    let prompt = Prompt {
        contexts: vec![vec![442, 87, 85, 268], vec![442, 57, 74], vec![442, 293]],
        mixture: Mixture::Guided {
            lambdas: vec![2.0, -0.5],
        },
    };
    let cands = r.generate(&prompt, &params(&r, Algo::Greedy)).unwrap();
    let s = r.score(&prompt, &cands[0].token_ids).unwrap();
    for t in 0..cands[0].token_ids.len() {
        let (p1, p2, b) = (
            s.token_logprobs[0][t],
            s.token_logprobs[1][t],
            s.token_logprobs[2][t],
        );
        let want = b + 2.0 * (p1 - b) - 0.5 * (p2 - b);
        assert!((s.token_scores[t] - want).abs() < 1e-5);
    }
    assert_eq!(s.score, cands[0].score);
    // Weighted explicit contexts.
    let w = Prompt {
        contexts: prompt.contexts.clone(),
        mixture: Mixture::Weighted {
            weights: vec![0.7, 0.2, 0.4],
        },
    };
    let c = r.generate(&w, &params(&r, Algo::Greedy)).unwrap();
    let s = r.score(&w, &c[0].token_ids).unwrap();
    let want: f32 = (0..3)
        .map(|k| [0.7, 0.2, 0.4][k] * s.logprob_contexts[k])
        .sum();
    assert!((c[0].score - want).abs() < 1e-3);
}

#[test]
fn many_requests_together_equal_one_by_one() {
    let mut r = load("llama_f32");
    let mut reqs = Vec::new();
    for (i, algo) in [
        Algo::Greedy,
        Algo::Beam,
        Algo::Sample,
        Algo::Bon,
        Algo::Chunk,
        Algo::Greedy,
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = params(&r, algo);
        p.n = if algo == Algo::Greedy { 1 } else { 2 };
        p.beams = 2;
        p.seed = i as u64;
        p.max_new_tokens = 4 + i;
        let prompt = if i % 2 == 0 {
            guided(1.0 + i as f32)
        } else {
            Prompt {
                contexts: vec![vec![442, 70 + i as u32]],
                mixture: Mixture::Single,
            }
        };
        reqs.push((prompt, p));
    }
    let alone: Vec<Vec<Candidate>> = reqs
        .iter()
        .map(|(pr, p)| r.generate(pr, p).unwrap())
        .collect();
    let passes_alone = r.engine().passes();
    let mut together = vec![Vec::new(); reqs.len()];
    r.generate_many(&reqs, &mut |i, c| together[i] = c.unwrap())
        .unwrap();
    let passes_together = r.engine().passes() - passes_alone;
    assert_eq!(together, alone);
    assert!(
        passes_together < passes_alone / 2,
        "requests did not share passes: {passes_together} vs {passes_alone}"
    );
    assert_eq!(r.engine().used_blocks(), 0);
}

#[test]
fn kv_budget_is_a_clear_error_and_leaves_nothing_held() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_f32");
    // 1 MiB = 128 blocks of 16 tokens for this model (2 layers × 32 K/V floats per token).
    let opts = LoadOptions {
        engine: EngineOptions {
            block_size: 16,
            kv_cache_mib: 1,
        },
        ..Default::default()
    };
    let mut r = Rear::load(&dir, &opts).unwrap();
    let mut p = params(&r, Algo::Bon);
    p.n = 300;
    let e = r.generate(&guided(2.0), &p).unwrap_err().to_string();
    assert!(
        e.contains("out of KV cache") && e.contains("--kv-cache-mib"),
        "{e}"
    );
    assert_eq!(r.engine().used_blocks(), 0);
    // Still usable afterwards.
    p.n = 2;
    assert_eq!(r.generate(&guided(2.0), &p).unwrap().len(), 2);
}
