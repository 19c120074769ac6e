//! The library's front door for research code: load a model once (`Rear::load`), then
//! `generate` with any algorithm, `score` a given response, or run many requests together
//! (`generate_many`) so that their steps share forward passes.
//!
//! ```
//! use rear::api::{Rear, LoadOptions};
//! use rear::rear::Mixture;
//! use rear::search::{Algo, Prompt, SearchParams};
//! let mut r = Rear::load("tests/fixtures/llama_f32".as_ref(), &LoadOptions::default()).unwrap();
//! let prompt = Prompt { contexts: vec![vec![442, 87, 85], vec![442, 85]], mixture: Mixture::Guided { lambdas: vec![3.0] } };
//! let params = SearchParams { algo: Algo::Beam, beams: 4, max_new_tokens: 8, ..r.default_params() };
//! let best = &r.generate(&prompt, &params).unwrap()[0];
//! println!("{:?} S={} pref={} base={}", best.token_ids, best.score, best.logprob_contexts[0], best.logprob_contexts[1]);
//! ```
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda;
use crate::engine::{Engine, EngineOptions, Extend, StepApi};
use crate::error::{Error, Result};
use crate::model::chat::{ChatTemplate, PreferenceIn};
use crate::model::tokenizer::TextTokenizer;
use crate::model::Model;
use crate::rear::{log_softmax_rows, Mixture};
use crate::search::{self, Candidate, Prompt, SearchParams};
use std::path::Path;

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(Error::Input(format!(
                "unknown --device `{other}` (auto, cpu, cuda)"
            ))),
        }
    }
}

/// Options of `Rear::load`.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub device: Option<Device>,
    pub engine: EngineOptions,
}

/// Per-token log-probs of a response under each context, and its REAR score.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScoreResult {
    /// `[context][t]`.
    pub token_logprobs: Vec<Vec<f32>>,
    pub token_scores: Vec<f32>,
    pub logprob_contexts: Vec<f32>,
    pub score: f32,
}

/// A loaded model, its tokenizer and template, and an engine on one device.
pub struct Rear {
    pub model_path: std::path::PathBuf,
    pub tokenizer: Option<TextTokenizer>,
    pub template: Option<ChatTemplate>,
    engine: Box<dyn StepApi + Send>,
    device_notice: Option<String>,
    delimiters: std::sync::OnceLock<Vec<u32>>,
}

impl Rear {
    /// Loads a model directory and starts an engine on the chosen device.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let model = Model::load(path)?;
        let device = opts.device.unwrap_or(Device::Auto);
        let cpu = |model: &Model| -> Result<Box<dyn StepApi + Send>> {
            Ok(Box::new(Engine::new(
                CpuBackend,
                &model.config,
                &model.weights,
                &opts.engine,
            )?))
        };
        let cuda = |model: &Model| -> Result<Box<dyn StepApi + Send>> {
            cuda::cuda_available().map_err(Error::Cuda)?;
            let b = cuda::CudaBackend::new(0)?;
            Ok(Box::new(Engine::new(
                b,
                &model.config,
                &model.weights,
                &opts.engine,
            )?))
        };
        let (engine, device_notice) = match device {
            Device::Cpu => (cpu(&model)?, None),
            Device::Cuda => (cuda(&model)?, None),
            Device::Auto => match cuda(&model) {
                Ok(e) => (e, None),
                Err(e) => {
                    let why = e.to_string();
                    let why = why.trim_start_matches("cuda: ");
                    (
                        cpu(&model)?,
                        Some(format!("no usable CUDA device ({why}); running on the CPU")),
                    )
                }
            },
        };
        Ok(Rear {
            model_path: path.to_owned(),
            tokenizer: model.tokenizer,
            template: model.template,
            engine,
            device_notice,
            delimiters: std::sync::OnceLock::new(),
        })
    }

    /// A one-line notice about the device choice (e.g. `auto` fell back to the CPU), if any.
    pub fn device_notice(&self) -> Option<&str> {
        self.device_notice.as_deref()
    }

    pub fn engine(&mut self) -> &mut dyn StepApi {
        &mut *self.engine
    }

    pub fn config(&self) -> &crate::model::config::ModelConfig {
        self.engine.config()
    }

    /// Search parameters with this model's EOS ids and chunk delimiters filled in.
    pub fn default_params(&self) -> SearchParams {
        let mut p = SearchParams {
            eos_token_ids: self.config().eos_token_ids.clone(),
            ..SearchParams::default()
        };
        p.chunk_delimiters = self.chunk_delimiters().to_vec();
        p
    }

    /// Tokens whose text holds a newline (they end a `chunk` step early); computed once.
    pub fn chunk_delimiters(&self) -> &[u32] {
        self.delimiters.get_or_init(|| match &self.tokenizer {
            Some(tok) => (0..tok.vocab_size() as u32)
                .filter(|&t| tok.decode(&[t], false).is_ok_and(|s| s.contains('\n')))
                .collect(),
            None => Vec::new(),
        })
    }

    /// The one-line message for text input to a model without a tokenizer, ending in `hint`: names
    /// the file, and for a GGUF file whose tokenizer kind rear does not convert, that kind.
    pub fn no_tokenizer(&self, hint: &str) -> String {
        match crate::model::gguf::no_tokenizer_reason(&self.model_path) {
            Some(why) => format!("{why}; {hint}"),
            None => format!(
                "{}: the model has no tokenizer.json; {hint}",
                self.model_path.display()
            ),
        }
    }

    /// Builds the contexts of a text request (DESIGN §4): with preferences, one pref context per
    /// preference (weights `lambdas`) plus the base context; without, one context.
    pub fn text_prompt(
        &self,
        prompt: &str,
        preferences: &[String],
        lambdas: &[f32],
        placement: PreferenceIn,
        raw: bool,
    ) -> Result<(Prompt, Option<String>)> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::Input(self.no_tokenizer("give token ids (--prompt-ids)")))?;
        let (prefs, base, notice) = crate::model::chat::build_contexts_multi(
            tok,
            self.template.as_ref(),
            prompt,
            preferences,
            placement,
            raw,
        )?;
        let mut contexts: Vec<Vec<u32>> = prefs.into_iter().map(|(_, ids)| ids).collect();
        let mixture = match base {
            Some((_, ids)) => {
                contexts.push(ids);
                Mixture::Guided {
                    lambdas: lambdas.to_vec(),
                }
            }
            None => Mixture::Single,
        };
        Ok((Prompt { contexts, mixture }, notice))
    }

    /// Runs one request.
    pub fn generate(&mut self, prompt: &Prompt, params: &SearchParams) -> Result<Vec<Candidate>> {
        let s = search::start(&mut *self.engine, prompt, params)?;
        let mut v = search::run(&mut *self.engine, &mut [s])?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Runs many requests together (their steps share forward passes); `on_done(i, result)` is
    /// called as each finishes. A request whose parameters are invalid gets its error there and
    /// does not stop the others. Results equal those of running each request alone.
    ///
    /// ```
    /// # use rear::api::{Rear, LoadOptions};
    /// # use rear::rear::Mixture;
    /// # use rear::search::{Algo, Prompt, SearchParams};
    /// let mut r = Rear::load("tests/fixtures/qwen3_f32".as_ref(), &LoadOptions::default())?;
    /// let reqs: Vec<(Prompt, SearchParams)> = (0..3)
    ///     .map(|i| {
    ///         let p = Prompt { contexts: vec![vec![440, 85 + i], vec![440]], mixture: Mixture::Guided { lambdas: vec![2.0] } };
    ///         (p, SearchParams { algo: Algo::Sample, n: 2, seed: i as u64, max_new_tokens: 4, ..r.default_params() })
    ///     })
    ///     .collect();
    /// let mut done = 0;
    /// r.generate_many(&reqs, &mut |_i, result| {
    ///     assert_eq!(result.unwrap().len(), 2);
    ///     done += 1;
    /// })?;
    /// assert_eq!(done, 3);
    /// # Ok::<(), rear::Error>(())
    /// ```
    pub fn generate_many(
        &mut self,
        requests: &[(Prompt, SearchParams)],
        on_done: &mut dyn FnMut(usize, Result<Vec<Candidate>>),
    ) -> Result<()> {
        let mut searches = Vec::new();
        let mut index = Vec::new();
        for (i, (p, sp)) in requests.iter().enumerate() {
            match search::start(&mut *self.engine, p, sp) {
                Ok(s) => {
                    searches.push(s);
                    index.push(i);
                }
                Err(e) => on_done(i, Err(e)),
            }
        }
        search::drive(&mut *self.engine, &mut searches, &mut |j, c| {
            on_done(index[j], Ok(c))
        })
    }

    /// Log-probs of `response` after each context of `prompt`, and its score — the same numbers
    /// `generate` reports for that response.
    ///
    /// ```
    /// # use rear::api::{Rear, LoadOptions};
    /// # use rear::rear::Mixture;
    /// # use rear::search::Prompt;
    /// let mut r = Rear::load("tests/fixtures/llama_f32".as_ref(), &LoadOptions::default())?;
    /// let prompt = Prompt { contexts: vec![vec![442, 87, 85], vec![442]], mixture: Mixture::Guided { lambdas: vec![3.0] } };
    /// let s = r.score(&prompt, &[70, 207, 384])?;
    /// let (pref, base) = (s.logprob_contexts[0], s.logprob_contexts[1]);
    /// assert!((s.score - (3.0 * pref - 2.0 * base)).abs() < 1e-3);
    /// assert_eq!(s.token_logprobs[0].len(), 3);
    /// # Ok::<(), rear::Error>(())
    /// ```
    pub fn score(&mut self, prompt: &Prompt, response: &[u32]) -> Result<ScoreResult> {
        if response.is_empty() {
            return Err(Error::Input("empty response: nothing to score".into()));
        }
        let cfg = self.engine.config().clone();
        let k = prompt.mixture.contexts();
        if prompt.contexts.len() != k {
            return Err(Error::Input(format!(
                "{} contexts for a score over {k}",
                prompt.contexts.len()
            )));
        }
        let full: Vec<Vec<u32>> = prompt
            .contexts
            .iter()
            .map(|c| {
                if c.is_empty() {
                    return Err(Error::Input("empty prompt: a context has no tokens".into()));
                }
                if c.len() + response.len() > cfg.max_position_embeddings {
                    return Err(Error::Input(format!(
                        "prompt of {} tokens plus a response of {} exceeds max_position_embeddings {}",
                        c.len(),
                        response.len(),
                        cfg.max_position_embeddings
                    )));
                }
                Ok(c.iter().chain(response).copied().collect())
            })
            .collect::<Result<_>>()?;
        let eng = &mut *self.engine;
        let seqs: Vec<_> = full.iter().map(|_| eng.new_seq()).collect();
        let items: Vec<Extend<'_>> = seqs
            .iter()
            .zip(&full)
            .map(|(&seq, t)| Extend {
                seq,
                tokens: t,
                all_logits: true,
            })
            .collect();
        let mut logits = Vec::new();
        let r = eng.extend(&items, &mut logits);
        for s in seqs {
            eng.free(s);
        }
        r?;
        let v = cfg.vocab_size;
        log_softmax_rows(&mut logits, v);
        let n = response.len();
        let mut token_logprobs = vec![Vec::with_capacity(n); k];
        let mut off = 0;
        for (ci, c) in prompt.contexts.iter().enumerate() {
            for (t, &tok) in response.iter().enumerate() {
                let row = off + c.len() - 1 + t;
                token_logprobs[ci].push(logits[row * v + tok as usize]);
            }
            off += c.len() + n;
        }
        let mut token_scores = Vec::with_capacity(n);
        let mut score = 0f32;
        let mut sums = vec![0f32; k];
        let mut lps = vec![0f32; k];
        for t in 0..n {
            for ci in 0..k {
                lps[ci] = token_logprobs[ci][t];
                sums[ci] += lps[ci];
            }
            let s = prompt.mixture.token_score(&lps);
            token_scores.push(s);
            score += s;
        }
        Ok(ScoreResult {
            token_logprobs,
            token_scores,
            logprob_contexts: sums,
            score,
        })
    }
}
