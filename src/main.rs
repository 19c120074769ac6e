//! The `rear` binary: a thin command-line layer over the library (DESIGN §4). Every error is one
//! line on stderr and exit code 2, with nothing on stdout.
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rear::api::{Device, LoadOptions, Rear};
use rear::engine::EngineOptions;
use rear::request::{candidate_json, OneOrMany, RequestSpec};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "rear",
    version,
    about = "REAR decoding: test-time preference realignment of LLMs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate responses with a search algorithm scored by REAR.
    Generate(GenerateArgs),
    /// Per-token log-probs of a given response under each context, and its REAR score.
    Score(ScoreArgs),
    /// Show the exact token ids and text of the contexts generate would build.
    Tokenize(TokenizeArgs),
    /// Time a fixed decoding job: prefill, decode steps against the memory floor, guided vs single.
    Bench(rear::bench::BenchArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a Hugging Face directory, a .gguf file, or a default model's name.
    #[arg(long)]
    model: Option<String>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Bound on the KV cache in MiB.
    #[arg(long, default_value_t = 2048)]
    kv_cache_mib: usize,
}

#[derive(Args, Clone, Default)]
struct ContextArgs {
    /// Prompt text (rendered through the chat template unless --raw).
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_parser = parse_ids)]
    prompt_ids: Option<Ids>,
    /// A preference; repeat for several (each gets its own context and --lambda).
    #[arg(long)]
    preference: Vec<String>,
    /// Where the preference goes: a system message (default) or before the prompt in the user message.
    #[arg(long)]
    preference_in: Option<String>,
    /// Explicit base context as text.
    #[arg(long)]
    base_prompt: Option<String>,
    /// Explicit base context as token ids.
    #[arg(long, value_parser = parse_ids)]
    base_prompt_ids: Option<Ids>,
    /// Explicit context token ids; repeat, with one --context-weight each.
    #[arg(long, value_parser = parse_ids)]
    context_ids: Vec<Ids>,
    /// Weight of the matching --context-ids.
    #[arg(long, allow_hyphen_values = true)]
    context_weight: Vec<f32>,
    /// No chat template: tokenize the text as is (with the tokenizer's special tokens).
    #[arg(long)]
    raw: bool,
    /// REAR λ (one per preference, or one for all). Default 1.
    #[arg(long, allow_hyphen_values = true)]
    lambda: Vec<f32>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    ctx: ContextArgs,
    /// greedy, sample, beam, bon or chunk.
    #[arg(long)]
    algo: Option<String>,
    #[arg(long)]
    beams: Option<usize>,
    #[arg(long)]
    n: Option<usize>,
    #[arg(long)]
    chunk_tokens: Option<usize>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long)]
    length_norm: bool,
    #[arg(long)]
    json: bool,
    /// Batch mode: a JSONL file of requests.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Batch mode: the JSONL file results are appended to.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Batch mode: skip requests whose id is already in --output.
    #[arg(long)]
    resume: bool,
    /// Batch mode: requests decoded together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    ctx: ContextArgs,
    /// Response text (tokenized without special tokens).
    #[arg(long)]
    response: Option<String>,
    /// Response token ids.
    #[arg(long, value_parser = parse_ids)]
    response_ids: Option<Ids>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    preference: Vec<String>,
    #[arg(long)]
    preference_in: Option<String>,
    #[arg(long)]
    raw: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug)]
struct Ids(Vec<u32>);

fn parse_ids(s: &str) -> Result<Ids, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Ids(vec![]));
    }
    s.split(',')
        .map(|t| {
            let t = t.trim();
            t.parse::<u32>()
                .ok()
                .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("`{t}` is not a token id"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Ids)
}

fn main() {
    // clap would only say "invalid UTF-8 was detected in one or more arguments": name it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(i) = (1..args.len()).find(|&i| args[i].to_str().is_none()) {
        let after = match args[i - 1].to_str() {
            Some(f) if i > 1 && f.starts_with("--") => format!(" (the value of {f})"),
            _ => String::new(),
        };
        eprintln!(
            "error: argument {i}{after} is not valid UTF-8: {:?}",
            args[i].to_string_lossy()
        );
        std::process::exit(2);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                eprintln!(
                    "error: no command given (generate, score, tokenize or bench; see rear --help)"
                );
                std::process::exit(2);
            }
            // clap's message is a paragraph (e.g. "required arguments were not provided:" then
            // the arguments), a tip and the usage: the first paragraph, on one line.
            let msg = e.to_string();
            let line = msg
                .trim_start()
                .split("\n\n")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!(
                "{}",
                if line.is_empty() {
                    "error: invalid arguments"
                } else {
                    &line
                }
            );
            std::process::exit(2);
        }
    };
    let r = match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Score(a) => score(a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Bench(a) => bench(a),
    };
    match r {
        Ok(()) => {
            for n in NOTICES.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                eprintln!("{n}");
            }
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::exit(2);
        }
    }
}

/// The error and its causes on one line, each cause only when the text before it does not
/// already end with it (a library error's message includes its I/O cause).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if msg.ends_with(&c) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&c);
    }
    msg.replace(['\n', '\r'], " ")
}

/// Notices for stderr (device fallback, template fallback), printed once the command has
/// succeeded, so that a failing command prints exactly one line.
static NOTICES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn defer_notice(msg: String) {
    NOTICES.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
}

fn load(m: &ModelArgs) -> Result<Rear> {
    let path = resolve_model(m.model.as_deref())?;
    let device: Device = m.device.parse()?;
    if m.kv_cache_mib == 0 {
        bail!("--kv-cache-mib must be at least 1");
    }
    let opts = LoadOptions {
        device: Some(device),
        engine: EngineOptions {
            kv_cache_mib: m.kv_cache_mib,
            ..EngineOptions::default()
        },
    };
    let rear = Rear::load(&path, &opts)?;
    if let Some(n) = rear.device_notice() {
        defer_notice(n.to_string());
    }
    Ok(rear)
}

fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    Ok(rear::model::fetch::resolve_model(arg)?)
}

impl ContextArgs {
    fn spec(&self) -> RequestSpec {
        RequestSpec {
            prompt: self.prompt.clone(),
            prompt_ids: self.prompt_ids.clone().map(|i| i.0),
            preference: (!self.preference.is_empty())
                .then(|| OneOrMany::Many(self.preference.clone())),
            preference_in: self.preference_in.clone(),
            base_prompt: self.base_prompt.clone(),
            base_prompt_ids: self.base_prompt_ids.clone().map(|i| i.0),
            context_ids: (!self.context_ids.is_empty())
                .then(|| self.context_ids.iter().map(|i| i.0.clone()).collect()),
            context_weight: (!self.context_weight.is_empty()).then(|| self.context_weight.clone()),
            raw: Some(self.raw),
            lambda: (!self.lambda.is_empty()).then(|| OneOrMany::Many(self.lambda.clone())),
            ..RequestSpec::default()
        }
    }
}

impl GenerateArgs {
    fn spec(&self) -> RequestSpec {
        RequestSpec {
            algo: self.algo.clone(),
            beams: self.beams,
            n: self.n,
            chunk_tokens: self.chunk_tokens,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            ignore_eos: self.ignore_eos.then_some(true),
            length_norm: self.length_norm.then_some(true),
            ..self.ctx.spec()
        }
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.input.is_some() || a.output.is_some() || a.resume {
        return batch(a);
    }
    let mut rear = load(&a.model)?;
    let spec = a.spec();
    let (prompt, notice) = spec.prompt(&rear)?;
    let params = spec.params(&rear)?;
    if let Some(n) = notice {
        defer_notice(format!("notice: {n}"));
    }
    let cands = rear.generate(&prompt, &params)?;
    let mut out = String::new();
    for (rank, c) in cands.iter().enumerate() {
        let j = candidate_json(&rear, rank, c, &prompt.mixture);
        if a.json {
            out.push_str(&serde_json::to_string(&j)?);
            out.push('\n');
        } else {
            if cands.len() > 1 {
                out.push_str(&format!("--- rank {rank}\n"));
            }
            match j["text"].as_str() {
                Some(t) => out.push_str(t),
                None => out.push_str(&format!("{:?}", c.token_ids)),
            }
            out.push('\n');
            let base = j["logprob_base"]
                .as_f64()
                .map_or("null".into(), |b| format!("{b:.4}"));
            out.push_str(&format!(
                "[score {:.4} | logprob_pref {:.4} | logprob_base {base} | {} tokens | {}]\n",
                c.score,
                c.logprob_contexts[0],
                c.token_ids.len(),
                j["finish_reason"].as_str().unwrap_or("")
            ));
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let mut rear = load(&a.model)?;
    let (prompt, notice) = a.ctx.spec().prompt(&rear)?;
    if let Some(n) = notice {
        defer_notice(format!("notice: {n}"));
    }
    let response = match (&a.response, &a.response_ids) {
        (Some(_), Some(_)) => bail!("--response and --response-ids cannot be used together"),
        (None, None) => bail!("no response: give --response TEXT or --response-ids 1,2,3"),
        (None, Some(ids)) => ids.0.clone(),
        (Some(t), None) => {
            let tok = rear
                .tokenizer
                .as_ref()
                .ok_or_else(|| anyhow!(rear.no_tokenizer("use --response-ids")))?;
            tok.encode(t, false)?
        }
    };
    let s = rear.score(&prompt, &response)?;
    let base = prompt.mixture.base();
    let j = json!({
        "token_logprobs_pref": s.token_logprobs[0],
        "token_logprobs_base": base.map(|b| &s.token_logprobs[b]),
        "logprob_pref": s.logprob_contexts[0],
        "logprob_base": base.map(|b| s.logprob_contexts[b]),
        "score": s.score,
        "logprob_contexts": s.logprob_contexts,
        "token_logprobs_contexts": s.token_logprobs,
        "token_scores": s.token_scores,
    });
    let out = if a.json {
        serde_json::to_string(&j)? + "\n"
    } else {
        let base = j["logprob_base"]
            .as_f64()
            .map_or("null".into(), |b| format!("{b:.4}"));
        format!(
            "score {:.4}\nlogprob_pref {:.4}\nlogprob_base {base}\ntokens {}\n",
            s.score,
            s.logprob_contexts[0],
            response.len()
        )
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let rear = load(&a.model)?;
    let spec = RequestSpec {
        prompt: Some(a.prompt.clone()),
        preference: (!a.preference.is_empty()).then(|| OneOrMany::Many(a.preference.clone())),
        preference_in: a.preference_in.clone(),
        raw: Some(a.raw),
        ..RequestSpec::default()
    };
    if a.prompt.is_empty() {
        bail!("empty prompt (--prompt \"\")");
    }
    let tok = rear
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow!(rear.no_tokenizer("`rear tokenize` needs one")))?;
    let (prompt, notice) = spec.prompt(&rear)?;
    if let Some(n) = notice {
        defer_notice(format!("notice: {n}"));
    }
    let text = |ids: &[u32]| tok.decode(ids, false);
    let base = prompt.mixture.base();
    let pref_ids = &prompt.contexts[0];
    let base_ids = base.map(|b| &prompt.contexts[b]);
    let j = json!({
        "pref_ids": pref_ids,
        "base_ids": base_ids,
        "pref_text": rendered_text(&rear, &a, 0).unwrap_or(text(pref_ids)?),
        "base_text": match base { Some(_) => Some(rendered_text(&rear, &a, usize::MAX).unwrap_or(text(base_ids.unwrap())?)), None => None },
    });
    let out = if a.json {
        serde_json::to_string(&j)? + "\n"
    } else {
        let mut s = format!("pref_ids {:?}\npref_text {}\n", pref_ids, j["pref_text"]);
        if let Some(b) = base_ids {
            s += &format!("base_ids {:?}\nbase_text {}\n", b, j["base_text"]);
        }
        s
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// The rendered text of context `i` (`usize::MAX` = base), as the chat template produced it.
fn rendered_text(rear: &Rear, a: &TokenizeArgs, i: usize) -> Option<String> {
    let tok = rear.tokenizer.as_ref()?;
    let placement = match a.preference_in.as_deref() {
        Some("user") => rear::model::chat::PreferenceIn::User,
        _ => rear::model::chat::PreferenceIn::System,
    };
    let (prefs, base, _) = rear::model::chat::build_contexts_multi(
        tok,
        rear.template.as_ref(),
        &a.prompt,
        &a.preference,
        placement,
        a.raw,
    )
    .ok()?;
    if i == usize::MAX {
        base.map(|b| b.0)
    } else {
        prefs.into_iter().nth(i).map(|p| p.0)
    }
}

fn bench(a: rear::bench::BenchArgs) -> Result<()> {
    Ok(rear::bench::main(&a)?)
}

fn batch(a: GenerateArgs) -> Result<()> {
    let input = a
        .input
        .clone()
        .ok_or_else(|| anyhow!("batch mode needs --input FILE"))?;
    let output = a
        .output
        .clone()
        .ok_or_else(|| anyhow!("batch mode needs --output FILE"))?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let text = std::fs::read_to_string(&input).with_context(|| format!("{}", input.display()))?;
    if output.is_dir() {
        bail!("{}: is a directory, not an output file", output.display());
    }
    let mut rear = load(&a.model)?;
    let defaults = a.spec();
    let done = if a.resume {
        rear::batch::finished_ids(&output)?
    } else {
        Default::default()
    };
    if !a.resume && output.exists() && std::fs::metadata(&output)?.len() > 0 {
        bail!(
            "{}: output file exists and is not empty (use --resume to continue it)",
            output.display()
        );
    }
    let summary = rear::batch::run_batch(
        &mut rear,
        &text,
        &defaults,
        &done,
        &output,
        a.batch_size,
        &input,
    )?;
    if summary.failed > 0 {
        bail!(
            "{} of {} requests failed ({} written to {}): {}",
            summary.failed,
            summary.total,
            summary.written,
            output.display(),
            summary.errors.join("; ")
        );
    }
    for n in summary.notices {
        defer_notice(n);
    }
    Ok(())
}
