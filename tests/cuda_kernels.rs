//! Each CUDA kernel family against the CPU function of the same name (src/backend/cpu/ops.rs,
//! src/rear.rs, src/search/sampler.rs), over grids of shapes: odd sizes, GQA ratios, block sizes,
//! NaN-poisoned unused cache slots. Without a CUDA device each test prints
//! `skipped: no CUDA device (<reason>)` on stderr and passes.
//!
//! Without a GPU they can also run on the host emulator of the kernels (kernels/emu/build.sh):
//! `LD_LIBRARY_PATH=target/rear-emu cargo test --test cuda_kernels`.
use rear::backend::cpu::ops::{self, AttnDims};
use rear::backend::cuda::{
    cuda_available, Choice, CudaBackend, MatmulPath, PickMode, PickRequest, PickSpec, RowState,
};
use rear::backend::{SeqBlocks, StepLayout};
use rear::model::tensor::{DType, HostTensor};
use rear::model::weights::Linear;
use rear::rear::{log_softmax_rows, Mixture};
use rear::search::pick::{self, PickScratch};
use rear::search::SampleParams;
use std::io::Write;

/// The backend, or `None` after printing why the test is skipped. A device that is present but
/// unusable (no embedded kernels, too old) fails the test.
fn gpu(test: &str) -> Option<CudaBackend> {
    if let Err(why) = cuda_available() {
        // Written to the real stderr (not the captured test output) so that it shows.
        let _ = std::io::stderr()
            .write_all((format!("{test}: skipped: no CUDA device ({why})") + "\n").as_bytes());
        return None;
    }
    match CudaBackend::new(0) {
        Ok(b) => {
            let _ = std::io::stderr()
                .write_all((format!("{test}: on {}", b.describe()) + "\n").as_bytes());
            Some(b)
        }
        Err(e) => panic!("{test}: a CUDA device is present but the backend failed: {e}"),
    }
}

/// A small deterministic generator (xorshift), values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn tensor(name: &str, dtype: DType, shape: Vec<usize>, vals: &[f32]) -> HostTensor {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    };
    HostTensor::from_bytes(name, dtype, shape, bytes).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

#[test]
fn matmul_matches_cpu() {
    let Some(b) = gpu("matmul_matches_cpu") else {
        return;
    };
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // (rows, in, out): decode and prefill sizes, odd in (scalar path), odd out (partial tiles).
    let shapes = [
        (1, 64, 33),
        (2, 96, 17),
        (3, 37, 21),
        (5, 128, 64),
        (8, 64, 4),
        (9, 176, 40),
        (16, 160, 19),
        (32, 64, 48),
        (33, 96, 50),
        (70, 72, 13),
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for &(rows, i, o) in &shapes {
            for with_bias in [false, true] {
                let w = rng.vec(o * i, 0.5);
                let lin = Linear {
                    weight: tensor("w", dtype, vec![o, i], &w),
                    bias: with_bias.then(|| tensor("b", DType::F32, vec![o], &rng.vec(o, 1.0))),
                };
                let x = rng.vec(rows * i, 1.0);
                let mut want = vec![0f32; rows * o];
                ops::matmul(&x, rows, &lin, &mut want, &mut Vec::new());
                // Tolerance from the size of the terms: sum_i |x_i w_ji|.
                let wd = lin.weight.to_f32();
                let mut paths = vec![
                    MatmulPath::CudaCore,
                    MatmulPath::CudaCoreWarp,
                    MatmulPath::Auto {
                        mma_min_rows: 8,
                        warp: true,
                    },
                ];
                if dtype == DType::BF16 && i % 8 == 0 {
                    paths.push(MatmulPath::TensorCore);
                }
                for path in paths {
                    let got = b.matmul_host(&x, rows, &lin, path).unwrap();
                    for r in 0..rows {
                        for j in 0..o {
                            let mag: f32 =
                                (0..i).map(|k| (x[r * i + k] * wd[j * i + k]).abs()).sum();
                            let (g, e) = (got[r * o + j], want[r * o + j]);
                            assert!(
                                (g - e).abs() <= 2e-5 * mag + 1e-6,
                                "{dtype:?} {path:?} rows {rows} in {i} out {o} bias {with_bias}: \
                                 [{r},{j}] {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_with_fused_swiglu_matches_cpu() {
    let Some(b) = gpu("matmul_with_fused_swiglu_matches_cpu") else {
        return;
    };
    let mut rng = Rng(77);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for &(rows, i, o) in &[
            (1, 64, 24),
            (2, 176, 64),
            (4, 37, 9),
            (12, 128, 40),
            (40, 64, 17),
        ] {
            let lin = Linear {
                weight: tensor("down", dtype, vec![o, i], &rng.vec(o * i, 0.5)),
                bias: None,
            };
            let gu = rng.vec(rows * 2 * i, 2.0);
            let (mut gate, mut up) = (Vec::new(), Vec::new());
            for r in 0..rows {
                gate.extend_from_slice(&gu[r * 2 * i..r * 2 * i + i]);
                up.extend_from_slice(&gu[r * 2 * i + i..(r + 1) * 2 * i]);
            }
            ops::swiglu(&mut gate, &up);
            let mut want = vec![0f32; rows * o];
            ops::matmul(&gate, rows, &lin, &mut want, &mut Vec::new());
            for path in [
                MatmulPath::CudaCore,
                MatmulPath::CudaCoreWarp,
                MatmulPath::Auto {
                    mma_min_rows: 8,
                    warp: true,
                },
            ] {
                let got = b.matmul_swiglu_host(&gu, rows, &lin, path).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d < 2e-4, "{dtype:?} {path:?} {rows}x{i}->{o}: max diff {d}");
            }
        }
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(b) = gpu("rms_norm_matches_cpu") else {
        return;
    };
    let mut rng = Rng(5);
    for &(rows, width) in &[(1, 1), (3, 7), (2, 64), (5, 96), (1, 300), (4, 2048)] {
        let x = rng.vec(rows * width, 3.0);
        let y = rng.vec(rows * width, 3.0);
        let g: Vec<f32> = rng.vec(width, 0.2).iter().map(|v| 1.0 + v).collect();
        let eps = 1e-5;
        let mut want = vec![0f32; rows * width];
        ops::rms_norm(&x, &g, eps, &mut want);
        let got = b.rms_norm_host(&x, &g, eps).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "rms_norm {rows}x{width}: max diff {d}");
        // Fused residual add.
        let sum: Vec<f32> = x.iter().zip(&y).map(|(a, c)| a + c).collect();
        ops::rms_norm(&sum, &g, eps, &mut want);
        let (gx, got) = b.add_rms_norm_host(&x, &y, &g, eps).unwrap();
        assert_eq!(gx, sum, "add_rms_norm {rows}x{width}: x += y");
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "add_rms_norm {rows}x{width}: max diff {d}");
    }
}

#[test]
fn swiglu_matches_cpu() {
    let Some(b) = gpu("swiglu_matches_cpu") else {
        return;
    };
    let mut rng = Rng(11);
    for &(rows, width) in &[(1, 1), (3, 5), (2, 128), (7, 176)] {
        let mut gate = rng.vec(rows * width, 6.0);
        let up = rng.vec(rows * width, 2.0);
        let got = b.swiglu_host(&gate, &up, width).unwrap();
        ops::swiglu(&mut gate, &up);
        for (g, w) in got.iter().zip(&gate) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "swiglu {g} vs {w}");
        }
    }
}

#[test]
fn embedding_matches_decode_row() {
    let Some(b) = gpu("embedding_matches_decode_row") else {
        return;
    };
    let mut rng = Rng(3);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for &(vocab, width) in &[(5, 7), (449, 64), (100, 96)] {
            let table = tensor(
                "emb",
                dtype,
                vec![vocab, width],
                &rng.vec(vocab * width, 1.0),
            );
            let tokens: Vec<u32> = (0..9).map(|_| rng.below(vocab) as u32).collect();
            let got = b.embedding_host(&table, &tokens).unwrap();
            let mut row = vec![0f32; width];
            for (r, &t) in tokens.iter().enumerate() {
                table.decode_row(t as usize, &mut row);
                assert_eq!(
                    &got[r * width..(r + 1) * width],
                    &row[..],
                    "{dtype:?} token {t}"
                );
            }
        }
    }
}

/// A layout of `seqs` sequences with the given (first position, rows) each, random distinct
/// blocks, and `blocks` blocks in the pool.
fn layout(rng: &mut Rng, block_size: usize, seqs: &[(usize, usize)]) -> (StepLayout, usize) {
    let mut l = StepLayout {
        block_size,
        ..Default::default()
    };
    let need: usize = seqs
        .iter()
        .map(|&(s, n)| (s + n).div_ceil(block_size))
        .sum();
    let total = need + 3;
    // A shuffled set of block ids so that tables are not contiguous.
    let mut ids: Vec<u32> = (0..total as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let mut next = 0;
    for (si, &(start, n)) in seqs.iter().enumerate() {
        let nb = (start + n).div_ceil(block_size);
        l.seqs.push(SeqBlocks {
            blocks: ids[next..next + nb].to_vec(),
        });
        next += nb;
        for p in start..start + n {
            l.tokens.push(0);
            l.positions.push(p as u32);
            l.row_seq.push(si as u32);
        }
    }
    (l, total)
}

#[test]
fn rope_and_cache_write_match_cpu() {
    let Some(b) = gpu("rope_and_cache_write_match_cpu") else {
        return;
    };
    let mut rng = Rng(21);
    for &(heads, kv_heads, d) in &[
        (4, 2, 16),
        (4, 1, 32),
        (2, 2, 6),
        (8, 2, 64),
        (4, 4, 80),
        (2, 1, 128),
        (1, 1, 256),
    ] {
        for &block_size in &[1, 4, 16] {
            for qk_norm in [false, true] {
                // YaRN's attention factor on cos/sin in some cases.
                let scale = if block_size == 4 { 1.1386 } else { 1.0 };
                let (lay, blocks) = layout(&mut rng, block_size, &[(0, 5), (17, 1), (3, 2)]);
                let rows = lay.rows();
                let kvd = kv_heads * d;
                let w = (heads + 2 * kv_heads) * d;
                let qkv = rng.vec(rows * w, 2.0);
                let inv: Vec<f32> = (0..d / 2)
                    .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
                    .collect();
                let qn: Vec<f32> = rng.vec(d, 0.2).iter().map(|v| 1.0 + v).collect();
                let kn: Vec<f32> = rng.vec(d, 0.2).iter().map(|v| 1.0 + v).collect();
                let eps = 1e-6;
                let k0 = vec![f32::NAN; blocks * block_size * kvd];
                let v0 = vec![f32::NAN; blocks * block_size * kvd];
                let (q, k, v) = b
                    .rope_host(
                        &qkv,
                        heads,
                        kv_heads,
                        d,
                        &inv,
                        scale,
                        qk_norm.then_some((&qn[..], &kn[..])),
                        eps,
                        &lay,
                        &k0,
                        &v0,
                    )
                    .unwrap();
                let mut want_k = k0.clone();
                let mut want_v = v0.clone();
                for r in 0..rows {
                    let pos = lay.positions[r];
                    let row = &qkv[r * w..(r + 1) * w];
                    for h in 0..heads {
                        let mut hv = row[h * d..(h + 1) * d].to_vec();
                        if qk_norm {
                            ops::rms_norm_inplace(&mut hv, &qn, eps);
                        }
                        ops::rope(&mut hv, pos, &inv, scale);
                        let got = &q[r * heads * d + h * d..][..d];
                        assert!(
                            max_abs_diff(got, &hv) <= 1e-6,
                            "q head {h} row {r} d {d}: {got:?} vs {hv:?}"
                        );
                    }
                    let slot = lay.slot(lay.row_seq[r] as usize, pos as usize);
                    for h in 0..kv_heads {
                        let mut hv = row[heads * d + h * d..][..d].to_vec();
                        if qk_norm {
                            ops::rms_norm_inplace(&mut hv, &kn, eps);
                        }
                        ops::rope(&mut hv, pos, &inv, scale);
                        want_k[slot * kvd + h * d..][..d].copy_from_slice(&hv);
                        want_v[slot * kvd + h * d..][..d]
                            .copy_from_slice(&row[(heads + kv_heads) * d + h * d..][..d]);
                    }
                }
                let dk = max_abs_diff(&k, &want_k);
                let dv = max_abs_diff(&v, &want_v);
                assert!(
                    dk <= 1e-6 && dv == 0.0,
                    "cache write ({heads},{kv_heads},{d}) bs {block_size}: K {dk} V {dv}"
                );
            }
        }
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(b) = gpu("attention_matches_cpu") else {
        return;
    };
    let mut rng = Rng(1234);
    let head_cfgs = [
        (4, 2, 16),
        (4, 1, 32),
        (6, 3, 64),
        (8, 8, 16),
        (16, 1, 16),
        (2, 2, 80),
        (4, 2, 96),
        (2, 1, 128),
    ];
    // (first position, rows) per sequence: prefill of one sequence, decode rows of several
    // sequences, a mix, and a context longer than one 128-key chunk.
    let scenarios: [&[(usize, usize)]; 4] = [
        &[(0, 13)],
        &[(4, 1), (0, 1), (30, 1), (9, 1)],
        &[(0, 6), (11, 1), (2, 3)],
        &[(140, 2), (0, 1)],
    ];
    for &(heads, kv_heads, d) in &head_cfgs {
        for &block_size in &[1, 3, 16] {
            for (si, sc) in scenarios.iter().enumerate() {
                for window in [None, Some(5)] {
                    let (lay, blocks) = layout(&mut rng, block_size, sc);
                    let rows = lay.rows();
                    let kvd = kv_heads * d;
                    // Written slots hold values; every other slot is NaN.
                    let mut kc = vec![f32::NAN; blocks * block_size * kvd];
                    let mut vc = vec![f32::NAN; blocks * block_size * kvd];
                    for (s, &(start, n)) in sc.iter().enumerate() {
                        for p in 0..start + n {
                            let slot = lay.slot(s, p);
                            for e in 0..kvd {
                                kc[slot * kvd + e] = rng.f();
                                vc[slot * kvd + e] = rng.f();
                            }
                        }
                    }
                    let q = rng.vec(rows * heads * d, 1.5);
                    let dims = AttnDims {
                        heads,
                        kv_heads,
                        head_dim: d,
                        scale: (d as f64).powf(-0.5) as f32,
                        window,
                    };
                    let mut want = vec![0f32; rows * heads * d];
                    ops::attention(&q, &kc, &vc, &lay, dims, &mut want);
                    let got = b.attention_host(&q, &kc, &vc, &lay, dims).unwrap();
                    assert!(
                        got.iter().all(|x| x.is_finite()),
                        "NaN leaked: ({heads},{kv_heads},{d}) bs {block_size} scenario {si}"
                    );
                    let diff = max_abs_diff(&got, &want);
                    assert!(
                        diff <= 2e-5,
                        "attention ({heads},{kv_heads},{d}) bs {block_size} scenario {si} window {window:?}: max diff {diff}"
                    );
                }
            }
        }
    }
}

/// The CPU side of rear_sample (`search::pick::rear_sample`) over the host log-softmax of `logits`.
fn cpu_pick(logits: &[f32], vocab: usize, req: &PickRequest) -> Vec<Choice> {
    let mut lps = logits.to_vec();
    log_softmax_rows(&mut lps, vocab);
    let rows: Vec<&[f32]> = lps.chunks(vocab).collect();
    pick::rear_sample(&rows, req, &mut PickScratch::default()).unwrap()
}

/// Same tokens in the same order; scores, totals and log-probs within `tol`.
fn assert_same_choices(got: &[Choice], want: &[Choice], tol: f32, what: &str) {
    let ids = |c: &[Choice]| c.iter().map(|c| (c.row, c.token)).collect::<Vec<_>>();
    assert_eq!(ids(got), ids(want), "{what}");
    for (g, w) in got.iter().zip(want) {
        let close = |a: f32, b: f32| (a - b).abs() <= tol * (1.0 + b.abs()) || a == b;
        assert!(
            close(g.score, w.score),
            "{what}: score {} vs {}",
            g.score,
            w.score
        );
        assert!(
            close(g.total, w.total),
            "{what}: total {} vs {}",
            g.total,
            w.total
        );
        for (a, b) in g.logprobs.iter().zip(&w.logprobs) {
            assert!(close(*a, *b), "{what}: logprob {a} vs {b}");
        }
    }
}

fn mixtures() -> Vec<Mixture> {
    vec![
        Mixture::Single,
        Mixture::Guided { lambdas: vec![1.0] },
        Mixture::Guided { lambdas: vec![3.0] },
        Mixture::Guided { lambdas: vec![0.0] },
        Mixture::Guided {
            lambdas: vec![2.0, 0.5],
        },
        Mixture::Weighted {
            weights: vec![0.5, 2.0],
        },
    ]
}

#[test]
fn rear_sample_argmax_and_topk_match_cpu() {
    let Some(b) = gpu("rear_sample_argmax_and_topk_match_cpu") else {
        return;
    };
    let mut rng = Rng(99);
    for &vocab in &[2usize, 449, 1000, 3001] {
        for mix in mixtures() {
            let k = mix.contexts();
            let groups = 3;
            let mut logits = rng.vec(groups * k * vocab, 8.0);
            // Ties and masked tokens: the lower id must win ties; -inf never wins.
            if vocab > 10 {
                for r in 0..groups * k {
                    logits[r * vocab + 7] = f32::NEG_INFINITY;
                }
                logits[3] = 100.0;
                logits[5] = 100.0;
            }
            // Four response rows over three groups: rows 0 and 3 read group 2.
            let states: Vec<RowState> = [2usize, 0, 1, 2]
                .iter()
                .enumerate()
                .map(|(i, &group)| RowState {
                    group,
                    cum_score: -(i as f32) * 0.37,
                    stream: i as u64,
                    step: 3,
                })
                .collect();
            for mode in [PickMode::Argmax, PickMode::TopK(5), PickMode::TopK(64)] {
                let req = PickRequest {
                    spec: PickSpec {
                        mixture: mix.clone(),
                        mode,
                        seed: 1,
                        from_context0: false,
                    },
                    rows: states.clone(),
                };
                let got = b.rear_sample_host(&logits, vocab, &req).unwrap();
                let want = cpu_pick(&logits, vocab, &req);
                assert_same_choices(
                    &got,
                    &want,
                    1e-5,
                    &format!("{mode:?} {mix:?} vocab {vocab}"),
                );
            }
        }
    }
}

#[test]
fn rear_sample_sampling_matches_cpu() {
    let Some(b) = gpu("rear_sample_sampling_matches_cpu") else {
        return;
    };
    let mut rng = Rng(7);
    let mut checked = 0;
    for &vocab in &[3usize, 449, 2000] {
        for mix in [Mixture::Single, Mixture::Guided { lambdas: vec![2.0] }] {
            let k = mix.contexts();
            let groups = 4;
            let logits = rng.vec(groups * k * vocab, 4.0);
            let states: Vec<RowState> = (0..groups + 1)
                .map(|i| RowState {
                    group: i % groups,
                    cum_score: 0.0,
                    stream: 10 + i as u64,
                    step: i as u64 * 7,
                })
                .collect();
            for &temperature in &[0.0f32, 0.7, 1.0, 1.5] {
                for &top_k in &[0usize, 1, 5, 50] {
                    for &top_p in &[1.0f32, 0.9, 0.3] {
                        for from_context0 in [false, true] {
                            let sp = SampleParams {
                                temperature,
                                top_k,
                                top_p,
                            };
                            let req = PickRequest {
                                spec: PickSpec {
                                    mixture: mix.clone(),
                                    mode: PickMode::Sample(sp),
                                    seed: 42,
                                    from_context0,
                                },
                                rows: states.clone(),
                            };
                            let got = b.rear_sample_host(&logits, vocab, &req).unwrap();
                            let want = cpu_pick(&logits, vocab, &req);
                            assert_same_choices(
                                &got,
                                &want,
                                1e-5,
                                &format!(
                                    "sample {mix:?} vocab {vocab} T {temperature} top-k {top_k} \
                                     top-p {top_p} ctx0 {from_context0}"
                                ),
                            );
                            checked += got.len();
                        }
                    }
                }
            }
        }
    }
    let _ = std::io::stderr().write_all(
        (format!("rear_sample_sampling_matches_cpu: {checked} draws identical") + "\n").as_bytes(),
    );
}

#[test]
fn quantized_weights_dequantized_at_upload() {
    let Some(b) = gpu("quantized_weights_dequantized_at_upload") else {
        return;
    };
    let mut rng = Rng(404);
    let (rows, i, o) = (3, 64, 9);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
        let mut bytes = Vec::new();
        for _ in 0..o * i / 32 {
            let d = half::f16::from_f32(0.01 + 0.02 * rng.f().abs());
            bytes.extend_from_slice(&d.to_le_bytes());
            match dtype {
                DType::Q8_0 => bytes.extend((0..32).map(|_| (rng.next() % 256) as u8)),
                DType::Q4_0 => bytes.extend((0..16).map(|_| (rng.next() % 256) as u8)),
                _ => {
                    bytes.extend_from_slice(
                        &half::f16::from_f32(-0.1 * rng.f().abs()).to_le_bytes(),
                    );
                    bytes.extend((0..16).map(|_| (rng.next() % 256) as u8));
                }
            }
        }
        let lin = Linear {
            weight: HostTensor::from_bytes("wq", dtype, vec![o, i], bytes).unwrap(),
            bias: None,
        };
        let x = rng.vec(rows * i, 1.0);
        let mut want = vec![0f32; rows * o];
        ops::matmul(&x, rows, &lin, &mut want, &mut Vec::new());
        let wd = lin.weight.to_f32();
        let got = b
            .matmul_host(
                &x,
                rows,
                &lin,
                MatmulPath::Auto {
                    mma_min_rows: 8,
                    warp: true,
                },
            )
            .unwrap();
        for r in 0..rows {
            for j in 0..o {
                let mag: f32 = (0..i).map(|k| (x[r * i + k] * wd[j * i + k]).abs()).sum();
                let (g, e) = (got[r * o + j], want[r * o + j]);
                assert!(
                    (g - e).abs() <= 1e-3 * mag + 1e-6,
                    "{dtype:?} [{r},{j}] {g} vs {e}"
                );
            }
        }
    }
}
