//! Decode-step timings on a real checkpoint, for scripts/gpu-check.sh (not a pass/fail check):
//! runs only when `REAR_BENCH_MODEL` names a model directory and a CUDA device is present, and
//! prints one line `BENCH_JSON {...}` with
//!
//! - the weight bytes a step reads and the device-to-device copy bandwidth measured here, whose
//!   quotient is the HBM floor of a decode step;
//! - device decode steps (`forward_fused`: fused kernels replayed as a CUDA graph; and, for
//!   comparison, the trait's layer calls one by one), then the LM head and the fused
//!   `rear_sample`; only token ids come back, for 1 row, 2 rows (guided greedy: pref + base) and
//!   32 rows (guided beam search, B = 16: 16 hypotheses × 2 contexts, top-32 shortlist per
//!   hypothesis);
//! - engine steps (`StepApi::extend`, logits copied to the host) for the same row counts;
//! - guided greedy through the search layer (λ = 3), per generated token.
//!
//! `REAR_BENCH_STEPS` (default 64) decode steps are timed after 4 warm-up steps; the prompt is
//! `REAR_BENCH_PROMPT` (default 64) tokens; the copy bandwidth is measured over 20 copies of
//! `REAR_BENCH_COPY_MIB` (default 1024) MiB.
use rear::backend::cuda::{
    cuda_available, CudaBackend, CudaWeights, PickMode, PickRequest, PickSpec, RowState,
};
use rear::backend::{Backend, Norm, SeqBlocks, StepLayout};
use rear::engine::{Engine, EngineOptions, Extend, StepApi};
use rear::model::Model;
use rear::rear::Mixture;
use rear::search::{self, Algo, Prompt, SearchParams};
use std::io::Write;
use std::time::Instant;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn say(msg: &str) {
    let _ = std::io::stderr().write_all((format!("{msg}") + "\n").as_bytes());
}

/// `rows` sequences prefilled with `prompt` (each its own blocks), then `warm + steps` decode
/// steps of one token per row, the logits left on the device and the fused sampler choosing
/// (only token ids come back). `fused`: `forward_fused` (fused kernels, CUDA graph replay);
/// else the trait's layer calls one by one. Returns ms per timed step.
fn device_steps(
    b: &CudaBackend,
    w: &CudaWeights,
    prompt: &[u32],
    rows: usize,
    warm: usize,
    steps: usize,
    fused: bool,
) -> f64 {
    let cfg = w.config();
    let bs = 16;
    let mut kv = b.new_kv(cfg, bs).unwrap();
    let per = (prompt.len() + warm + steps + 1).div_ceil(bs);
    b.reserve_blocks(&mut kv, per * rows).unwrap();
    let mut layout = StepLayout {
        block_size: bs,
        ..Default::default()
    };
    for r in 0..rows {
        layout.seqs.push(SeqBlocks {
            blocks: ((r * per) as u32..((r + 1) * per) as u32).collect(),
        });
    }
    let (mut h, mut xn, mut tmp) = (b.new_act(), b.new_act(), b.new_act());
    let mut run = |layout: &StepLayout, kv: &mut rear::backend::cuda::CudaKv| {
        if fused {
            b.forward_fused(w, layout, kv, None).unwrap();
            return;
        }
        b.embed(w, &layout.tokens, &mut h).unwrap();
        for l in 0..cfg.num_layers {
            b.rms_norm(w, Norm::Input(l), &h, &mut xn).unwrap();
            b.attention(w, l, &xn, layout, kv, &mut tmp).unwrap();
            b.add(&mut h, &tmp).unwrap();
            b.rms_norm(w, Norm::PostAttention(l), &h, &mut xn).unwrap();
            b.mlp(w, l, &xn, &mut tmp).unwrap();
            b.add(&mut h, &tmp).unwrap();
        }
        b.logits_device(w, &h, &layout.logit_rows).unwrap();
    };
    // Prefill every row's prompt in one pass (logits of the last row of each).
    for r in 0..rows {
        for (p, &t) in prompt.iter().enumerate() {
            layout.tokens.push(t);
            layout.positions.push(p as u32);
            layout.row_seq.push(r as u32);
        }
        layout.logit_rows.push(((r + 1) * prompt.len() - 1) as u32);
    }
    run(&layout, &mut kv);
    b.synchronize().unwrap();
    // Decode: rows of 2 contexts each form one response row of the sampler.
    let guided = Mixture::Guided { lambdas: vec![3.0] };
    let (mix, hyps) = if rows == 1 {
        (Mixture::Single, 1)
    } else {
        (guided, rows / 2)
    };
    let mode = if rows > 2 {
        PickMode::TopK(rows.min(64))
    } else {
        PickMode::Argmax
    };
    let req = PickRequest {
        spec: PickSpec {
            mixture: mix,
            mode,
            seed: 0,
            from_context0: false,
        },
        rows: (0..hyps)
            .map(|group| RowState {
                group,
                ..Default::default()
            })
            .collect(),
    };
    let mut t0 = Instant::now();
    for s in 0..warm + steps {
        if s == warm {
            b.synchronize().unwrap();
            t0 = Instant::now();
        }
        layout.tokens.clear();
        layout.positions.clear();
        layout.row_seq.clear();
        layout.logit_rows.clear();
        for r in 0..rows {
            layout
                .tokens
                .push(((s * 31 + r * 7) % cfg.vocab_size) as u32);
            layout.positions.push((prompt.len() + s) as u32);
            layout.row_seq.push(r as u32);
            layout.logit_rows.push(r as u32);
        }
        run(&layout, &mut kv);
        b.rear_sample(0, rows, &req).unwrap();
    }
    b.synchronize().unwrap();
    t0.elapsed().as_secs_f64() * 1e3 / steps as f64
}

/// The same through the engine's step API (logits copied to the host each step).
fn engine_steps(
    e: &mut Engine<CudaBackend>,
    prompt: &[u32],
    rows: usize,
    warm: usize,
    steps: usize,
) -> f64 {
    let vocab = e.config().vocab_size;
    let root = e.new_seq();
    let mut logits = Vec::new();
    e.extend(
        &[Extend {
            seq: root,
            tokens: prompt,
            all_logits: false,
        }],
        &mut logits,
    )
    .unwrap();
    let mut seqs = vec![root];
    for _ in 1..rows {
        seqs.push(e.fork(root));
    }
    let mut t0 = Instant::now();
    for s in 0..warm + steps {
        if s == warm {
            t0 = Instant::now();
        }
        let toks: Vec<[u32; 1]> = (0..rows)
            .map(|r| [((s * 31 + r * 7) % vocab) as u32])
            .collect();
        let items: Vec<Extend<'_>> = seqs
            .iter()
            .zip(&toks)
            .map(|(&seq, t)| Extend {
                seq,
                tokens: t,
                all_logits: false,
            })
            .collect();
        e.extend(&items, &mut logits).unwrap();
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    for s in seqs {
        e.free(s);
    }
    ms
}

/// Guided greedy through the search layer: ms per generated token (two lengths differenced, so
/// the prefill cancels).
fn guided_greedy(
    e: &mut Engine<CudaBackend>,
    prompt: &[u32],
    base: &[u32],
    n1: usize,
    n2: usize,
) -> f64 {
    let p = Prompt {
        contexts: vec![prompt.to_vec(), base.to_vec()],
        mixture: Mixture::Guided { lambdas: vec![3.0] },
    };
    let mut time = |n: usize| {
        let sp = SearchParams {
            algo: Algo::Greedy,
            max_new_tokens: n,
            ignore_eos: true,
            ..SearchParams::default()
        };
        let t0 = Instant::now();
        let s = search::start(e, &p, &sp).unwrap();
        let out = search::run(e, &mut [s]).unwrap();
        assert_eq!(out[0][0].token_ids.len(), n);
        t0.elapsed().as_secs_f64() * 1e3
    };
    time(4);
    let (t1, t2) = (time(n1), time(n2));
    (t2 - t1) / (n2 - n1) as f64
}

#[test]
fn decode_step_timings() {
    let Ok(dir) = std::env::var("REAR_BENCH_MODEL") else {
        say("decode_step_timings: skipped: REAR_BENCH_MODEL is not set (scripts/gpu-check.sh sets it)");
        return;
    };
    if let Err(why) = cuda_available() {
        say(&format!(
            "decode_step_timings: skipped: no CUDA device ({why})"
        ));
        return;
    }
    let b = CudaBackend::new(0).unwrap();
    let m = Model::load(dir.as_ref()).unwrap();
    let cfg = m.config.clone();
    let (warm, steps) = (4, env_usize("REAR_BENCH_STEPS", 64));
    let plen = env_usize("REAR_BENCH_PROMPT", 64);
    let prompt: Vec<u32> = (0..plen)
        .map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32)
        .collect();
    let base: Vec<u32> = prompt[plen / 2..].to_vec();
    let bytes = m.weights.bytes_per_step();
    let bw = b
        .copy_bandwidth(env_usize("REAR_BENCH_COPY_MIB", 1024) << 20, 20)
        .unwrap();
    let floor_ms = bytes as f64 / bw * 1e3;
    say(&format!(
        "{}: {} weight bytes per step, copy bandwidth {:.0} GB/s, floor {floor_ms:.3} ms",
        b.describe(),
        bytes,
        bw / 1e9
    ));
    let w = b.load_weights(&cfg, &m.weights).unwrap();
    let (mut dev, mut unfused) = (Vec::new(), Vec::new());
    for rows in [1, 2, 32] {
        let ms = device_steps(&b, &w, &prompt, rows, warm, steps, true);
        say(&format!(
            "device step (fused, graph), {rows} rows: {ms:.3} ms"
        ));
        dev.push((rows, ms));
        let ms = device_steps(&b, &w, &prompt, rows, warm, steps, false);
        say(&format!("device step (trait ops), {rows} rows: {ms:.3} ms"));
        unfused.push((rows, ms));
    }
    // The other CUDA-core decode matmul, for comparison (REAR_CUDA_DECODE_MATMUL picks the default).
    let mut other = b.clone();
    let mut o = b.options();
    o.warp_matmul = !o.warp_matmul;
    other.set_options(o);
    let mut alt = Vec::new();
    for rows in [1, 2] {
        let ms = device_steps(&other, &w, &prompt, rows, warm, steps, true);
        say(&format!(
            "device step (fused, graph), {rows} rows, warp_matmul={}: {ms:.3} ms",
            o.warp_matmul
        ));
        alt.push((rows, ms));
    }
    // 32 rows on the CUDA-core kernel (each weight re-read per tile of 8 rows) instead of mma.
    let mut nomma = b.clone();
    let mut o = b.options();
    o.mma_min_rows = usize::MAX;
    nomma.set_options(o);
    let ms = device_steps(&nomma, &w, &prompt, 32, warm, steps, true);
    say(&format!(
        "device step (fused, graph), 32 rows, no tensor cores: {ms:.3} ms"
    ));
    let no_mma_32 = ms;
    let (replays, eager) = b.step_counts();
    say(&format!(
        "fused steps: {replays} graph replays, {eager} eager"
    ));
    drop(w);
    let mut e = Engine::new(
        b.clone(),
        &cfg,
        &m.weights,
        &EngineOptions {
            block_size: 16,
            kv_cache_mib: 8192,
        },
    )
    .unwrap();
    let mut eng = Vec::new();
    for rows in [1, 2, 32] {
        let ms = engine_steps(&mut e, &prompt, rows, warm, steps);
        say(&format!("engine step, {rows} rows: {ms:.3} ms"));
        eng.push((rows, ms));
    }
    let gg = guided_greedy(&mut e, &prompt, &base, 16, 16 + steps);
    say(&format!("guided greedy (search layer): {gg:.3} ms/token"));
    let obj = |v: &[(usize, f64)]| {
        serde_json::Value::Object(
            v.iter()
                .map(|(r, ms)| (r.to_string(), serde_json::json!(ms)))
                .collect(),
        )
    };
    let json = serde_json::json!({
        "device": b.describe(),
        "weight_bytes": bytes,
        "copy_bandwidth_gbs": bw / 1e9,
        "floor_ms": floor_ms,
        "device_step_ms": obj(&dev),
        "device_step_unfused_ms": obj(&unfused),
        "warp_matmul": b.options().warp_matmul,
        "device_step_other_matmul_ms": obj(&alt),
        "device_step_32_no_mma_ms": no_mma_32,
        "graph_replays": replays,
        "engine_step_ms": obj(&eng),
        "guided_greedy_ms_per_token": gg,
        "steps": steps,
        "prompt_tokens": plen,
        "mma_min_rows": b.options().mma_min_rows,
        "graphs": std::env::var("REAR_CUDA_GRAPHS").as_deref() != Ok("0"),
    });
    println!("BENCH_JSON {json}");
    say(&format!("BENCH_JSON {json}"));
}
