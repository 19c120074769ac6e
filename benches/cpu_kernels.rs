//! Criterion benches of the CPU backend's hot kernels, ids `{backend}_{op}_{shape}`, throughput in
//! bytes (the bytes the kernel must read: weights for matmul, K/V for attention, logits for
//! scoring). Short on purpose: `cargo bench --bench cpu_kernels` takes about a minute;
//! `cargo bench --no-run` only compiles. Threads: rayon's default (all cores, or
//! `RAYON_NUM_THREADS`).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use rear::backend::cpu::ops::{self, AttnDims};
use rear::backend::{SeqBlocks, StepLayout};
use rear::model::tensor::{DType, HostTensor};
use rear::model::weights::Linear;
use rear::rear::{log_softmax_rows, Mixture};
use std::hint::black_box;
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    fn byte(&mut self) -> u8 {
        self.f();
        (self.0 >> 32) as u8
    }
}

fn weight(dt: DType, o: usize, i: usize, rng: &mut Rng) -> Linear {
    let n = o * i;
    let bytes: Vec<u8> = match dt {
        DType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.f() * 0.05).to_le_bytes())
            .collect(),
        DType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.f() * 0.05).to_le_bytes())
            .collect(),
        DType::F32 => (0..n)
            .flat_map(|_| (rng.f() * 0.05).to_le_bytes())
            .collect(),
        q => {
            let mut b = Vec::with_capacity(n / 32 * q.block_bytes());
            for _ in 0..n / 32 {
                b.extend(f16::from_f32(0.003).to_le_bytes());
                if q == DType::Q4_1 {
                    b.extend(f16::from_f32(-0.02).to_le_bytes());
                }
                let payload = q.block_bytes() - if q == DType::Q4_1 { 4 } else { 2 };
                b.extend((0..payload).map(|_| rng.byte()));
            }
            b
        }
    };
    Linear {
        weight: HostTensor::from_bytes("w", dt, vec![o, i], bytes).unwrap(),
        bias: None,
    }
}

fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700));
    g
}

fn matmul(c: &mut Criterion) {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut g = quick(c);
    let shapes = [
        (DType::BF16, 2048, 2048),
        (DType::BF16, 8192, 2048),
        (DType::Q4_1, 2048, 2048),
        (DType::Q8_0, 2048, 2048),
    ];
    for (dt, o, i) in shapes {
        let lin = weight(dt, o, i, &mut rng);
        let bytes = lin.weight.bytes().len() as u64;
        for rows in [1usize, 2, 8, 32] {
            if dt != DType::BF16 && rows > 2 {
                continue;
            }
            let x: Vec<f32> = (0..rows * i).map(|_| rng.f()).collect();
            let mut out = vec![0f32; rows * o];
            let mut tmp = Vec::new();
            g.throughput(Throughput::Bytes(bytes));
            let id = format!("cpu_matmul_{}_{o}x{i}", dt.name().to_lowercase());
            g.bench_with_input(
                BenchmarkId::new(id, format!("rows{rows}")),
                &rows,
                |b, &rows| b.iter(|| ops::matmul(black_box(&x), rows, &lin, &mut out, &mut tmp)),
            );
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut g = quick(c);
    // Llama-3.2-1B geometry: 32 query heads over 8 KV heads of 64; one sequence per row, each
    // with 2048 cached positions.
    let (heads, kv_heads, d, ctx, bs) = (32usize, 8usize, 64usize, 2048usize, 16usize);
    let kvd = kv_heads * d;
    for rows in [1usize, 2] {
        let blocks_per_seq = ctx / bs;
        let slots = rows * ctx;
        let k: Vec<f32> = (0..slots * kvd).map(|_| rng.f()).collect();
        let v: Vec<f32> = (0..slots * kvd).map(|_| rng.f()).collect();
        let q: Vec<f32> = (0..rows * heads * d).map(|_| rng.f()).collect();
        let layout = StepLayout {
            block_size: bs,
            tokens: vec![0; rows],
            positions: vec![(ctx - 1) as u32; rows],
            row_seq: (0..rows as u32).collect(),
            seqs: (0..rows)
                .map(|r| SeqBlocks {
                    blocks: (0..blocks_per_seq as u32)
                        .map(|b| (r * blocks_per_seq) as u32 + b)
                        .collect(),
                })
                .collect(),
            logit_rows: vec![],
        };
        let dims = AttnDims {
            heads,
            kv_heads,
            head_dim: d,
            scale: (d as f32).powf(-0.5),
            window: None,
        };
        let mut out = vec![0f32; rows * heads * d];
        g.throughput(Throughput::Bytes((2 * slots * kvd * 4) as u64));
        g.bench_function(
            BenchmarkId::new("cpu_attention_h32kv8d64_ctx2048", format!("rows{rows}")),
            |b| b.iter(|| ops::attention(black_box(&q), &k, &v, &layout, dims, &mut out)),
        );
    }
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let mut rng = Rng(0xdeadbeefcafef00d);
    let mut g = quick(c);
    let vocab = 50_000usize;
    let logits: Vec<f32> = (0..2 * vocab).map(|_| rng.f() * 20.0).collect();
    g.throughput(Throughput::Bytes((2 * vocab * 4) as u64));
    let mut buf = logits.clone();
    g.bench_function("cpu_log_softmax_rows_2x50k", |b| {
        b.iter(|| {
            buf.copy_from_slice(&logits);
            log_softmax_rows(black_box(&mut buf), vocab)
        })
    });
    let mut lp = logits.clone();
    log_softmax_rows(&mut lp, vocab);
    let mix = Mixture::Guided { lambdas: vec![3.0] };
    let mut out = Vec::with_capacity(vocab);
    g.bench_function("cpu_rear_combine_2x50k", |b| {
        b.iter(|| {
            let rows = [&lp[..vocab], &lp[vocab..]];
            mix.combine(black_box(&rows), &mut out)
        })
    });
    g.finish();
}

criterion_group!(benches, matmul, attention, scoring);
criterion_main!(benches);
