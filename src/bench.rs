//! `rear bench`: a fixed decoding job timed against its own baselines in the same run
//! (DESIGN §5). It reports prefill tokens/s, the decode step time (median, min, max), decode
//! tokens/s, rows per step, the weight bytes a step reads, and the step time over the memory
//! floor (weight bytes / bandwidth, the bandwidth measured by a probe of its own in the same run),
//! plus the guided (two-context) step over the single-context step.
//!
//! Benchmarks need no download: `--shape llama-170m|llama-1b` writes a random-weight bf16
//! checkpoint of that shape (HF layout: config.json + model.safetensors, loadable by transformers)
//! into the cache directory once and reuses it.
use crate::api::{Device, LoadOptions, Rear};
use crate::engine::{EngineOptions, Extend, SeqId, StepApi};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::Model;
use crate::rear::Mixture;
use crate::search::{self, Algo, Choice, PickRequest, Prompt, SearchParams};
use half::bf16;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Random-weight checkpoints of named shapes.

/// A Llama-architecture shape.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling (factor 32, as Llama-3.2).
    pub llama3_rope: bool,
    pub max_position_embeddings: usize,
}

/// The named shapes `--shape` accepts.
pub const SHAPES: &[Shape] = &[
    // 169.6M parameters: a GPT-2-small-sized Llama with a 32k vocabulary, untied head.
    Shape {
        name: "llama-170m",
        hidden: 768,
        intermediate: 3328,
        layers: 12,
        heads: 12,
        kv_heads: 12,
        vocab: 32000,
        tied: false,
        rope_theta: 10000.0,
        llama3_rope: false,
        max_position_embeddings: 2048,
    },
    // Llama-3.2-1B's shape: 1.24B parameters, tied embeddings, GQA 32/8.
    Shape {
        name: "llama-1b",
        hidden: 2048,
        intermediate: 8192,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        tied: true,
        rope_theta: 500000.0,
        llama3_rope: true,
        max_position_embeddings: 131072,
    },
    // For tests: a few hundred kB.
    Shape {
        name: "llama-tiny",
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 512,
        tied: false,
        rope_theta: 10000.0,
        llama3_rope: false,
        max_position_embeddings: 512,
    },
];

impl Shape {
    pub fn by_name(name: &str) -> Result<&'static Shape> {
        SHAPES.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
            Error::Input(format!(
                "unknown --shape `{name}` (known: {})",
                names.join(", ")
            ))
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Every tensor of the checkpoint: HF name and shape.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, im, d) = (self.hidden, self.intermediate, self.head_dim());
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * d, h],
            ));
            t.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.heads * d],
            ));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![im, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![im, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, im]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    pub fn parameters(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// HF `config.json` (transformers ≥ 5 spelling of RoPE, which rear also reads).
    pub fn config_json(&self) -> serde_json::Value {
        let rope = if self.llama3_rope {
            serde_json::json!({"rope_type": "llama3", "rope_theta": self.rope_theta, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        } else {
            serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta})
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tied,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "dtype": "bfloat16",
            "use_cache": true,
        })
    }
}

/// A small, fast, seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes a safetensors file of bf16 tensors, each produced chunk by chunk by `fill(name, i, out)`
/// (element offset `i`), without holding a whole tensor in memory.
pub fn write_safetensors_bf16(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    fill: &mut dyn FnMut(&str, usize, &mut [f32]),
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}),
        );
        off += 2 * n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Input(format!("safetensors header: {e}")))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let io = |e| Error::io(path, e);
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut vals = vec![0f32; 1 << 16];
    let mut bytes = vec![0u8; 2 << 16];
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let mut i = 0;
        while i < n {
            let m = (n - i).min(vals.len());
            fill(name, i, &mut vals[..m]);
            for (b, v) in bytes.chunks_exact_mut(2).zip(&vals[..m]) {
                b.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
            w.write_all(&bytes[..2 * m]).map_err(io)?;
            i += m;
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// The cache directory of generated checkpoints: `$REAR_HOME/bench`, else
/// `$XDG_CACHE_HOME/rear/bench`, else `~/.cache/rear/bench`, else the temp directory.
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = var("REAR_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rear")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("rear")))
        .unwrap_or_else(|| std::env::temp_dir().join("rear"));
    root.join("bench")
}

/// The random-weight bf16 checkpoint of `shape` under `cache`, written on first use (matrices
/// uniform with std 0.02, norms 1; deterministic). Returns its directory.
pub fn random_checkpoint(shape: &Shape, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!("{}-bf16-random-v1", shape.name));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let tmp = cache.join(format!(".{}-{}.tmp", shape.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let cfg = serde_json::to_string_pretty(&shape.config_json()).expect("json");
    std::fs::write(tmp.join("config.json"), cfg).map_err(|e| Error::io(&tmp, e))?;
    let gen = serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "do_sample": false});
    std::fs::write(tmp.join("generation_config.json"), gen.to_string())
        .map_err(|e| Error::io(&tmp, e))?;
    let a = 0.02f32 * 3f32.sqrt();
    let mut rng = Rng::new(0);
    let mut cur = String::new();
    write_safetensors_bf16(
        &tmp.join("model.safetensors"),
        &shape.tensors(),
        &mut |name, i, out| {
            if i == 0 || name != cur {
                cur = name.to_string();
                rng = Rng::new(name_seed(name));
            }
            if name.ends_with("norm.weight") {
                out.fill(1.0);
            } else {
                for v in out.iter_mut() {
                    *v = a * rng.unit();
                }
            }
        },
    )?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process made it first.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::io(&dir, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory bandwidth probe.

/// The GPU's device-to-device copy bandwidth over a buffer as large as the weights (within
/// [64 MiB, 2 GiB]), best of three runs of 10 copies; `read` is set to the same figure (a decode
/// step streams the weights from HBM at about the copy rate).
/// Also returns the device's description.
fn device_bandwidth(bytes: usize) -> Result<(Bandwidth, String)> {
    let bytes = bytes.clamp(64 << 20, 2 << 30);
    let b = crate::backend::cuda::CudaBackend::new(0)?;
    let mut best = 0f64;
    for _ in 0..3 {
        best = best.max(b.copy_bandwidth(bytes, 10)?);
    }
    let bw = Bandwidth {
        bytes,
        copy: best,
        read: best,
    };
    Ok((bw, b.describe()))
}

/// Bandwidth measured by the probe, bytes/s.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Bandwidth {
    /// Buffer size of the probe (as large as the weights, within [64 MiB, 2 GiB]).
    pub bytes: usize,
    /// `memcpy` over all threads, counted as bytes read + bytes written (STREAM's convention).
    pub copy: f64,
    /// Reading a buffer once over all threads (what a decode step does to its weights).
    pub read: f64,
}

struct ProbeBufs {
    src: Vec<u64>,
    dst: Vec<u64>,
}

impl ProbeBufs {
    fn new(bytes: usize) -> Self {
        let n = bytes / 8;
        // Written, so every page is really there before timing.
        let src: Vec<u64> = (0..n as u64).collect();
        ProbeBufs {
            src,
            dst: vec![1u64; n],
        }
    }

    fn copy_once(&mut self) -> Duration {
        use rayon::prelude::*;
        let per = self
            .src
            .len()
            .div_ceil(rayon::current_num_threads() * 4)
            .max(1 << 14);
        let t = Instant::now();
        self.dst
            .par_chunks_mut(per)
            .zip(self.src.par_chunks(per))
            .for_each(|(d, s)| d.copy_from_slice(s));
        t.elapsed()
    }

    fn read_once(&self) -> (Duration, u64) {
        use rayon::prelude::*;
        let per = self
            .src
            .len()
            .div_ceil(rayon::current_num_threads() * 4)
            .max(1 << 14);
        let t = Instant::now();
        let s: u64 = self
            .src
            .par_chunks(per)
            .map(|c| {
                let mut acc = [0u64; 8];
                for b in c.chunks_exact(8) {
                    for k in 0..8 {
                        acc[k] = acc[k].wrapping_add(b[k]);
                    }
                }
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        (t.elapsed(), s)
    }
}

/// Copy and read bandwidth over a buffer of `bytes` (best of `reps`), in the current thread
/// pool.
pub fn probe_bandwidth(bytes: usize, reps: usize) -> Bandwidth {
    let bytes = bytes.clamp(64 << 20, 2 << 30);
    let mut b = ProbeBufs::new(bytes);
    let mut copy = Duration::MAX;
    let mut read = Duration::MAX;
    let mut sink = 0u64;
    b.copy_once();
    for _ in 0..reps.max(1) {
        copy = copy.min(b.copy_once());
        let (t, s) = b.read_once();
        read = read.min(t);
        sink ^= s;
    }
    std::hint::black_box(sink);
    let len = b.src.len() * 8;
    Bandwidth {
        bytes: len,
        copy: 2.0 * len as f64 / copy.as_secs_f64(),
        read: len as f64 / read.as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// The timed job.

/// What `rear bench` runs.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Model: a Hugging Face directory, a .gguf file, or a default model's name.
    #[arg(long)]
    pub model: Option<String>,
    /// Instead of --model: a random-weight bf16 checkpoint of this shape (llama-170m, llama-1b),
    /// made once in the cache directory.
    #[arg(long)]
    pub shape: Option<String>,
    /// Where --shape checkpoints are kept (default: $REAR_HOME/bench or ~/.cache/rear/bench).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Algorithm of the main job: greedy, sample, beam, bon or chunk.
    #[arg(long, default_value = "greedy")]
    pub algo: String,
    /// Beams of beam/chunk.
    #[arg(long, default_value_t = 4)]
    pub beams: usize,
    /// Samples of sample/bon, continuations of chunk.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Contexts of the main job: 2 = guided (pref + base), 1 = the pref context alone.
    #[arg(long, default_value_t = 2)]
    pub contexts: usize,
    /// REAR λ of guided jobs.
    #[arg(long, default_value_t = 3.0)]
    pub lambda: f32,
    /// Prompt tokens per context (random ids).
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    /// Tokens decoded per job (EOS ignored).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// CPU threads (the rayon pool); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed runs of each job first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs of each job (jobs alternate).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            model: None,
            shape: None,
            cache_dir: None,
            device: "auto".into(),
            algo: "greedy".into(),
            beams: 4,
            n: 1,
            contexts: 2,
            lambda: 3.0,
            prompt_len: 64,
            new_tokens: 64,
            threads: None,
            warmup: 1,
            reps: 5,
            json: false,
        }
    }
}

/// One kind of job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSpec {
    pub name: String,
    pub algo: Algo,
    pub beams: usize,
    pub n: usize,
    pub contexts: usize,
}

/// Timings of one job kind over all repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub job: JobSpec,
    /// Prompt tokens of all contexts per second in the prefill pass (median over reps).
    pub prefill_tokens_per_s: f64,
    pub prefill_ms: f64,
    /// Decode step wall time (forward pass + scoring + search), over every step of every rep.
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    /// Response tokens per second per hypothesis (1 / median step).
    pub decode_tokens_per_s: f64,
    /// Token rows per decode step (mean; e.g. 2 for guided greedy, 2·beams for guided beam).
    pub rows_per_step: f64,
    pub decode_steps: usize,
    /// Median step / memory floor (copy bandwidth).
    pub step_over_floor: f64,
    /// Median step / memory floor at the read bandwidth (stricter).
    pub step_over_read_floor: f64,
    /// Total wall time of one job (median over reps).
    pub job_ms: f64,
}

/// Everything `rear bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub shape: Option<Shape>,
    pub parameters: usize,
    pub weight_dtypes: Vec<String>,
    pub device: String,
    pub cpu_isa: String,
    pub threads: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub reps: usize,
    /// `ModelWeights::bytes_per_step`.
    pub weight_bytes_per_step: usize,
    pub bandwidth: Bandwidth,
    /// weight bytes / copy bandwidth.
    pub floor_ms: f64,
    /// weight bytes / read bandwidth.
    pub read_floor_ms: f64,
    pub jobs: Vec<JobReport>,
    /// The main job's figures.
    pub main: usize,
    /// Guided greedy (2 rows) median step / single-context greedy (1 row) median step.
    pub guided_over_single: f64,
}

/// A `StepApi` that forwards to an engine and records when each forward pass starts.
struct Timed<'a> {
    inner: &'a mut dyn StepApi,
    marks: Vec<(Instant, usize, bool)>,
}

impl Timed<'_> {
    fn mark(&mut self, items: &[Extend<'_>]) {
        let rows = items.iter().map(|i| i.tokens.len()).sum();
        let prefill = items.iter().any(|i| i.tokens.len() > 1);
        self.marks.push((Instant::now(), rows, prefill));
    }
}

impl StepApi for Timed<'_> {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn new_seq(&mut self) -> SeqId {
        self.inner.new_seq()
    }
    fn fork(&mut self, s: SeqId) -> SeqId {
        self.inner.fork(s)
    }
    fn free(&mut self, s: SeqId) {
        self.inner.free(s)
    }
    fn seq_len(&self, s: SeqId) -> usize {
        self.inner.seq_len(s)
    }
    fn extend(&mut self, items: &[Extend<'_>], logits: &mut Vec<f32>) -> Result<()> {
        self.mark(items);
        self.inner.extend(items, logits)
    }
    fn extend_pick(
        &mut self,
        items: &[Extend<'_>],
        picks: &[(usize, usize, &PickRequest)],
        out: &mut Vec<Vec<Choice>>,
    ) -> Result<()> {
        self.mark(items);
        self.inner.extend_pick(items, picks, out)
    }
    fn used_blocks(&self) -> usize {
        self.inner.used_blocks()
    }
    fn max_blocks(&self) -> usize {
        self.inner.max_blocks()
    }
    fn passes(&self) -> u64 {
        self.inner.passes()
    }
}

/// One run's raw timings.
struct RunTimes {
    prefill: Duration,
    prefill_rows: usize,
    steps: Vec<(Duration, usize)>,
    total: Duration,
}

fn run_job(api: &mut dyn StepApi, prompt: &Prompt, params: &SearchParams) -> Result<RunTimes> {
    let mut t = Timed {
        inner: api,
        marks: Vec::with_capacity(params.max_new_tokens + 8),
    };
    let start = Instant::now();
    let s = search::start(&mut t, prompt, params)?;
    search::run(&mut t, &mut [s])?;
    let end = Instant::now();
    let m = &t.marks;
    let next = |i: usize| m.get(i + 1).map_or(end, |x| x.0);
    let mut rt = RunTimes {
        prefill: Duration::ZERO,
        prefill_rows: 0,
        steps: Vec::with_capacity(m.len()),
        total: end - start,
    };
    for (i, &(at, rows, prefill)) in m.iter().enumerate() {
        if prefill {
            rt.prefill += next(i) - at;
            rt.prefill_rows += rows;
        } else {
            rt.steps.push((next(i) - at, rows));
        }
    }
    Ok(rt)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn prompt_for(contexts: usize, len: usize, vocab: usize, lambda: f32, salt: u64) -> Prompt {
    let mut rng = Rng::new(0xbe9c4 + salt);
    let pref: Vec<u32> = (0..len).map(|_| rng.below(vocab) as u32).collect();
    if contexts == 1 {
        return Prompt {
            contexts: vec![pref],
            mixture: Mixture::Single,
        };
    }
    // The base context: the same prompt with its first tokens (the "preference") replaced.
    let mut base = pref.clone();
    for t in base.iter_mut().take(len / 4) {
        *t = rng.below(vocab) as u32;
    }
    Prompt {
        contexts: vec![pref, base],
        mixture: Mixture::Guided {
            lambdas: vec![lambda],
        },
    }
}

/// Runs the benchmark described by `a` (in a thread pool of `--threads`).
pub fn run(a: &BenchArgs) -> Result<BenchReport> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Error::Input("--threads must be at least 1".into()));
    }
    const MAX_THREADS: usize = 4096;
    if threads > MAX_THREADS {
        return Err(Error::Input(format!(
            "--threads {threads} is too large (at most {MAX_THREADS})"
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?;
    pool.install(|| run_in_pool(a, threads))
}

fn run_in_pool(a: &BenchArgs, threads: usize) -> Result<BenchReport> {
    if a.reps == 0 {
        return Err(Error::Input("--reps must be at least 1".into()));
    }
    if a.new_tokens == 0 || a.prompt_len == 0 {
        return Err(Error::Input(
            "--new-tokens and --prompt-len must be at least 1".into(),
        ));
    }
    if !(1..=2).contains(&a.contexts) {
        return Err(Error::Input("--contexts must be 1 or 2".into()));
    }
    if !a.lambda.is_finite() {
        return Err(Error::Input(format!(
            "--lambda must be a finite number, got {}",
            a.lambda
        )));
    }
    let (path, shape) = match (&a.model, &a.shape) {
        (Some(_), Some(_)) => return Err(Error::Input("give --model or --shape, not both".into())),
        (None, Some(s)) => {
            let shape = Shape::by_name(s)?;
            let cache = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
            (random_checkpoint(shape, &cache)?, Some(shape.clone()))
        }
        (Some(m), None) => (PathBuf::from(m), None),
        (None, None) => {
            return Err(Error::Input(
                "give --model DIR|FILE.gguf|NAME or --shape llama-170m|llama-1b".into(),
            ))
        }
    };
    let device: Device = a.device.parse()?;
    let probe_reps = 3;
    let model = Model::load(&path)?;
    let weight_bytes = model.weights.bytes_per_step();
    let mut dtypes: Vec<String> = Vec::new();
    let mut parameters = model.weights.embed.numel() + model.weights.norm.numel();
    for l in &model.weights.layers {
        for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
            let d = lin.weight.dtype.name().to_string();
            if !dtypes.contains(&d) {
                dtypes.push(d);
            }
            parameters += lin.weight.numel() + lin.bias.as_ref().map_or(0, |b| b.numel());
        }
        parameters += l.input_norm.numel() + l.post_attn_norm.numel();
    }
    if !model.config.tie_word_embeddings {
        parameters += model.weights.lm_head.numel();
    }
    let vocab = model.config.vocab_size;
    let max_pos = model.config.max_position_embeddings;
    drop(model);
    if a.prompt_len.saturating_add(a.new_tokens) > max_pos {
        return Err(Error::Input(format!(
            "--prompt-len {} plus --new-tokens {} exceeds max_position_embeddings {max_pos}",
            a.prompt_len, a.new_tokens
        )));
    }
    let opts = LoadOptions {
        device: Some(device),
        engine: EngineOptions::default(),
    };
    let mut rear = Rear::load(&path, &opts)?;
    let mut device_name = match (device, rear.device_notice()) {
        (Device::Cpu, _) => "cpu".to_string(),
        (Device::Cuda, _) => "cuda".to_string(),
        // `auto` says why when it falls back to the CPU.
        (Device::Auto, Some(_)) => "cpu (auto)".to_string(),
        (Device::Auto, None) => "cuda (auto)".to_string(),
    };
    let on_cuda = device_name.starts_with("cuda");
    // The floor is taken against the memory the weights live in: host RAM, or the GPU's HBM.
    let mut gpu = None;
    let mut probe = |bytes: usize| -> Result<Bandwidth> {
        if on_cuda {
            let (bw, desc) = device_bandwidth(bytes)?;
            gpu = Some(desc);
            Ok(bw)
        } else {
            Ok(probe_bandwidth(bytes, probe_reps))
        }
    };

    let main_algo: Algo = a.algo.parse()?;
    let spec = |algo: Algo, contexts: usize, beams: usize, n: usize| {
        let what = match algo {
            Algo::Greedy => "greedy".to_string(),
            Algo::Beam => format!("beam-{beams}"),
            Algo::Chunk => format!("chunk-{beams}x{n}"),
            Algo::Sample => format!("sample-{n}"),
            Algo::Bon => format!("bon-{n}"),
        };
        JobSpec {
            name: format!("{} {what}", if contexts == 2 { "guided" } else { "single" }),
            algo,
            beams,
            n,
            contexts,
        }
    };
    let single = spec(Algo::Greedy, 1, a.beams, 1);
    let guided = spec(Algo::Greedy, 2, a.beams, 1);
    let main = spec(
        main_algo,
        a.contexts,
        a.beams,
        if main_algo == Algo::Greedy { 1 } else { a.n },
    );
    let mut jobs = vec![single.clone(), guided.clone()];
    let main_idx = match jobs.iter().position(|j| *j == main) {
        Some(i) => i,
        None => {
            jobs.push(main);
            jobs.len() - 1
        }
    };
    let base_params = SearchParams {
        max_new_tokens: a.new_tokens,
        ignore_eos: true,
        ..rear.default_params()
    };
    let make = |j: &JobSpec| {
        let p = SearchParams {
            algo: j.algo,
            beams: j.beams,
            n: j.n,
            ..base_params.clone()
        };
        (prompt_for(j.contexts, a.prompt_len, vocab, a.lambda, 0), p)
    };
    let prepared: Vec<(Prompt, SearchParams)> = jobs.iter().map(make).collect();

    let mut bw = probe(weight_bytes)?;
    for _ in 0..a.warmup {
        for (p, sp) in &prepared {
            run_job(rear.engine(), p, sp)?;
        }
    }
    let mut times: Vec<Vec<RunTimes>> = jobs.iter().map(|_| Vec::new()).collect();
    for rep in 0..a.reps {
        // Alternate: every rep runs every job, starting from a different one.
        for k in 0..jobs.len() {
            let j = (rep + k) % jobs.len();
            let (p, sp) = &prepared[j];
            times[j].push(run_job(rear.engine(), p, sp)?);
        }
    }
    let bw2 = probe(weight_bytes)?;
    if let Some(desc) = gpu {
        device_name = format!("{device_name}: {desc}");
    }
    bw.copy = bw.copy.max(bw2.copy);
    bw.read = bw.read.max(bw2.read);

    let floor = weight_bytes as f64 / bw.copy;
    let read_floor = weight_bytes as f64 / bw.read;
    let reports: Vec<JobReport> = jobs
        .iter()
        .zip(&times)
        .map(|(j, runs)| {
            let mut steps: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.steps.iter().map(|s| s.0.as_secs_f64()))
                .collect();
            let nsteps = steps.len();
            let rows: usize = runs.iter().flat_map(|r| r.steps.iter().map(|s| s.1)).sum();
            let mut pre: Vec<f64> = runs.iter().map(|r| r.prefill.as_secs_f64()).collect();
            let pre_rows = runs.first().map_or(0, |r| r.prefill_rows);
            let mut tot: Vec<f64> = runs.iter().map(|r| r.total.as_secs_f64()).collect();
            let med = median(&mut steps);
            let pre_med = median(&mut pre);
            JobReport {
                job: j.clone(),
                prefill_tokens_per_s: pre_rows as f64 / pre_med,
                prefill_ms: pre_med * 1e3,
                step_ms_median: med * 1e3,
                step_ms_min: steps.first().copied().unwrap_or(f64::NAN) * 1e3,
                step_ms_max: steps.last().copied().unwrap_or(f64::NAN) * 1e3,
                decode_tokens_per_s: 1.0 / med,
                rows_per_step: rows as f64 / nsteps.max(1) as f64,
                decode_steps: nsteps / runs.len().max(1),
                step_over_floor: med / floor,
                step_over_read_floor: med / read_floor,
                job_ms: median(&mut tot) * 1e3,
            }
        })
        .collect();
    let guided_over_single = reports[1].step_ms_median / reports[0].step_ms_median;
    Ok(BenchReport {
        model: shape.as_ref().map_or(path.display().to_string(), |s| {
            format!("{} (random bf16, {})", s.name, path.display())
        }),
        parameters,
        shape,
        weight_dtypes: dtypes,
        device: device_name,
        cpu_isa: crate::backend::cpu::matmul::isa().name().into(),
        threads,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        reps: a.reps,
        weight_bytes_per_step: weight_bytes,
        bandwidth: bw,
        floor_ms: floor * 1e3,
        read_floor_ms: read_floor * 1e3,
        jobs: reports,
        main: main_idx,
        guided_over_single,
    })
}

/// The human-readable table of a report.
pub fn format_table(r: &BenchReport) -> String {
    let mut s = String::new();
    let gb = |b: f64| b / 1e9;
    let device = if r.device.starts_with("cuda") {
        r.device.clone()
    } else {
        format!("{} ({}), {} threads", r.device, r.cpu_isa, r.threads)
    };
    s += &format!(
        "model    {}\n         {:.1}M parameters, weights {}; device {device}\n",
        r.model,
        r.parameters as f64 / 1e6,
        r.weight_dtypes.join("/"),
    );
    s += &format!(
        "memory   {:.1} MB of weights read per step; probe over {} MB: copy {:.1} GB/s, read {:.1} GB/s\n",
        r.weight_bytes_per_step as f64 / 1e6,
        r.bandwidth.bytes >> 20,
        gb(r.bandwidth.copy),
        gb(r.bandwidth.read)
    );
    s += &format!(
        "floor    {:.2} ms/step at copy bandwidth ({:.2} ms at read bandwidth)\n",
        r.floor_ms, r.read_floor_ms
    );
    s += &format!(
        "job      prompt {} tokens/context, {} new tokens, {} reps (jobs alternate)\n\n",
        r.prompt_len, r.new_tokens, r.reps
    );
    s += &format!(
        "{:<22} {:>9} {:>13} {:>26} {:>12} {:>11} {:>10}\n",
        "job",
        "rows/step",
        "prefill tok/s",
        "step ms median/min/max",
        "decode tok/s",
        "step/floor",
        "(read)"
    );
    for (i, j) in r.jobs.iter().enumerate() {
        let name = format!("{}{}", j.job.name, if i == r.main { " *" } else { "" });
        s += &format!(
            "{:<22} {:>9.1} {:>13.0} {:>26} {:>12.1} {:>11.2} {:>10.2}\n",
            name,
            j.rows_per_step,
            j.prefill_tokens_per_s,
            format!(
                "{:.2} / {:.2} / {:.2}",
                j.step_ms_median, j.step_ms_min, j.step_ms_max
            ),
            j.decode_tokens_per_s,
            j.step_over_floor,
            j.step_over_read_floor
        );
    }
    s += &format!(
        "\nguided (2-row) step / single-context step: {:.3}\n",
        r.guided_over_single
    );
    s
}

/// `rear bench`: runs and prints (a table, or one JSON object with `--json`).
pub fn main(a: &BenchArgs) -> Result<()> {
    let r = run(a)?;
    let out = if a.json {
        serde_json::to_string(&r).expect("report serialises") + "\n"
    } else {
        format_table(&r)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Error::io(Path::new("<stdout>"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_advertised_sizes() {
        let p = Shape::by_name("llama-170m").unwrap().parameters();
        assert!((165_000_000..175_000_000).contains(&p), "{p}");
        let p = Shape::by_name("llama-1b").unwrap().parameters();
        assert!((1_200_000_000..1_300_000_000).contains(&p), "{p}");
        assert!(Shape::by_name("nope").is_err());
    }

    #[test]
    fn bench_runs_on_a_tiny_random_checkpoint() {
        let dir = std::env::temp_dir().join(format!("rear-bench-test-{}", std::process::id()));
        let a = BenchArgs {
            shape: Some("llama-tiny".into()),
            cache_dir: Some(dir.clone()),
            device: "cpu".into(),
            algo: "beam".into(),
            beams: 2,
            prompt_len: 8,
            new_tokens: 4,
            threads: Some(2),
            warmup: 0,
            reps: 2,
            ..BenchArgs::default()
        };
        let r = run(&a).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(r.jobs.len(), 3);
        assert_eq!(r.jobs[0].rows_per_step, 1.0);
        assert_eq!(r.jobs[1].rows_per_step, 2.0);
        assert_eq!(r.jobs[0].decode_steps, 3);
        assert!(r.jobs[2].rows_per_step > 2.0);
        assert!(r.weight_bytes_per_step > 0 && r.floor_ms > 0.0);
        assert!(format_table(&r).contains("guided beam-2 *"));
        let j = serde_json::to_value(&r).unwrap();
        assert!(j["jobs"][1]["step_ms_median"].as_f64().unwrap() > 0.0);
    }
}
