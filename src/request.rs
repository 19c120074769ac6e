//! Requests as users write them (CLI flags or one JSON line of a batch file) turned into the
//! engine's `Prompt` + `SearchParams`, and candidates turned into the DESIGN §4 JSON objects.
//! The CLI and batch mode share this one path, so a batch line means exactly what the same
//! flags mean.
use crate::api::Rear;
use crate::error::{Error, Result};
use crate::model::chat::PreferenceIn;
use crate::rear::Mixture;
use crate::search::{Algo, Candidate, Prompt, SearchParams};
use serde::Deserialize;
use serde_json::{json, Value};

/// A value given once or as a list (`"preference": "..."` or `["...", "..."]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One request. Every field is optional; unset fields take the defaults (CLI flags in batch
/// mode, else the engine's). Field names are the CLI flags with `_` for `-`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub id: Option<Value>,
    pub prompt: Option<String>,
    pub prompt_ids: Option<Vec<u32>>,
    pub preference: Option<OneOrMany<String>>,
    pub preference_in: Option<String>,
    pub base_prompt: Option<String>,
    pub base_prompt_ids: Option<Vec<u32>>,
    pub context_ids: Option<Vec<Vec<u32>>>,
    pub context_weight: Option<Vec<f32>>,
    pub raw: Option<bool>,
    pub lambda: Option<OneOrMany<f32>>,
    pub algo: Option<String>,
    pub beams: Option<usize>,
    pub n: Option<usize>,
    pub chunk_tokens: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub ignore_eos: Option<bool>,
    pub length_norm: Option<bool>,
}

macro_rules! merge_fields {
    ($a:ident, $b:ident; $($f:ident),*) => { $( if $a.$f.is_none() { $a.$f = $b.$f.clone(); } )* };
}

impl RequestSpec {
    /// Fills the fields this request leaves unset from `defaults`. The contexts (prompt, ids,
    /// preferences, base) come as one group: a request that names any of them takes none of
    /// the defaults'.
    pub fn with_defaults(mut self, d: &RequestSpec) -> RequestSpec {
        let has_context = self.prompt.is_some()
            || self.prompt_ids.is_some()
            || self.context_ids.is_some()
            || self.base_prompt.is_some()
            || self.base_prompt_ids.is_some()
            || self.preference.is_some();
        if !has_context {
            merge_fields!(self, d; prompt, prompt_ids, preference, base_prompt, base_prompt_ids, context_ids, context_weight);
        }
        merge_fields!(self, d; preference_in, raw, lambda, algo, beams, n, chunk_tokens, max_new_tokens,
            temperature, top_p, top_k, seed, ignore_eos, length_norm);
        self
    }

    /// The search parameters (with the model's EOS ids and defaults).
    pub fn params(&self, rear: &Rear) -> Result<SearchParams> {
        let mut p = rear.default_params();
        if let Some(a) = &self.algo {
            p.algo = a.parse()?;
        }
        if let Some(x) = self.beams {
            p.beams = x;
        }
        if let Some(x) = self.n {
            p.n = x;
        }
        if let Some(x) = self.chunk_tokens {
            p.chunk_tokens = x;
        }
        if let Some(x) = self.max_new_tokens {
            p.max_new_tokens = x;
        }
        if let Some(x) = self.temperature {
            p.sampling.temperature = x;
        }
        if let Some(x) = self.top_p {
            p.sampling.top_p = x;
        }
        if let Some(x) = self.top_k {
            p.sampling.top_k = x;
        }
        if let Some(x) = self.seed {
            p.seed = x;
        }
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        p.length_norm = self.length_norm.unwrap_or(false);
        if p.algo == Algo::Greedy && p.n != 1 {
            return Err(Error::Input(
                "--n applies to sample, bon and chunk, not greedy".into(),
            ));
        }
        p.validate()?;
        Ok(p)
    }

    /// The contexts of this request and how they combine; also a notice for stderr (e.g. the
    /// template's system-message fallback).
    pub fn prompt(&self, rear: &Rear) -> Result<(Prompt, Option<String>)> {
        let conflict =
            |a: &str, b: &str| Err(Error::Input(format!("{a} and {b} cannot be used together")));
        if self.prompt.is_some() && self.prompt_ids.is_some() {
            return conflict("--prompt", "--prompt-ids");
        }
        if self.base_prompt.is_some() && self.base_prompt_ids.is_some() {
            return conflict("--base-prompt", "--base-prompt-ids");
        }
        let prefs = self
            .preference
            .as_ref()
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let has_base = self.base_prompt.is_some() || self.base_prompt_ids.is_some();
        if !prefs.is_empty() && has_base {
            return conflict("--preference", "--base-prompt");
        }
        if !prefs.is_empty() && self.prompt_ids.is_some() {
            return conflict(
                "--preference",
                "--prompt-ids (a preference needs text: use --prompt)",
            );
        }
        let finite = |flag: &str, v: &[f32]| match v.iter().find(|x| !x.is_finite()) {
            Some(bad) => Err(Error::Input(format!(
                "{flag} must be a finite number, got {bad}"
            ))),
            None => Ok(()),
        };
        if let Some(l) = &self.lambda {
            finite("--lambda", &l.to_vec())?;
        }
        if let Some(w) = &self.context_weight {
            finite("--context-weight", w)?;
        }
        let raw = self.raw.unwrap_or(false);
        if raw && self.preference_in.is_some() {
            return conflict(
                "--raw",
                "--preference-in (without a chat template the preference goes before the prompt)",
            );
        }
        let placement = match self.preference_in.as_deref() {
            None | Some("system") => PreferenceIn::System,
            Some("user") => PreferenceIn::User,
            Some(o) => {
                return Err(Error::Input(format!(
                    "unknown --preference-in `{o}` (system, user)"
                )))
            }
        };
        if let Some(ctxs) = &self.context_ids {
            if self.prompt.is_some() || self.prompt_ids.is_some() || has_base || !prefs.is_empty() {
                return conflict("--context-ids", "--prompt/--preference/--base-prompt");
            }
            let w = self.context_weight.clone().unwrap_or_default();
            if w.len() != ctxs.len() {
                return Err(Error::Input(format!(
                    "{} --context-ids but {} --context-weight: give one weight per context",
                    ctxs.len(),
                    w.len()
                )));
            }
            if ctxs.is_empty() {
                return Err(Error::Input("no context given".into()));
            }
            let mixture = if ctxs.len() == 1 && w[0] == 1.0 {
                Mixture::Single
            } else {
                Mixture::Weighted { weights: w }
            };
            return Ok((
                Prompt {
                    contexts: ctxs.clone(),
                    mixture,
                },
                None,
            ));
        }
        if self.context_weight.is_some() {
            return Err(Error::Input("--context-weight needs --context-ids".into()));
        }
        let lambdas_for = |n: usize| -> Result<Vec<f32>> {
            let l = self
                .lambda
                .as_ref()
                .map(|l| l.to_vec())
                .unwrap_or_else(|| vec![1.0]);
            if let Some(bad) = l.iter().find(|x| !x.is_finite()) {
                return Err(Error::Input(format!(
                    "--lambda must be a finite number, got {bad}"
                )));
            }
            match l.len() {
                1 => Ok(vec![l[0]; n]),
                k if k == n => Ok(l),
                k => Err(Error::Input(format!(
                    "{k} --lambda values for {n} preferences"
                ))),
            }
        };
        // Text prompt: built through the chat template (or raw).
        if let Some(text) = &self.prompt {
            if text.is_empty() {
                return Err(Error::Input("empty prompt (--prompt \"\")".into()));
            }
            if !prefs.is_empty() {
                if let Some(p) = prefs.iter().find(|p| p.trim().is_empty()) {
                    return Err(Error::Input(format!("empty preference {p:?}")));
                }
                return rear.text_prompt(text, &prefs, &lambdas_for(prefs.len())?, placement, raw);
            }
            let (mut prompt, notice) = rear.text_prompt(text, &[], &[], placement, raw)?;
            if has_base {
                prompt
                    .contexts
                    .push(self.base_context(rear, placement, raw)?);
                prompt.mixture = Mixture::Guided {
                    lambdas: lambdas_for(1)?,
                };
            }
            return Ok((prompt, notice));
        }
        let Some(ids) = &self.prompt_ids else {
            return Err(Error::Input(
                "no prompt: give --prompt TEXT or --prompt-ids 1,2,3".into(),
            ));
        };
        if ids.is_empty() {
            return Err(Error::Input(
                "empty prompt: --prompt-ids has no tokens".into(),
            ));
        }
        let mut contexts = vec![ids.clone()];
        let mut mixture = Mixture::Single;
        if has_base {
            contexts.push(self.base_context(rear, placement, raw)?);
            mixture = Mixture::Guided {
                lambdas: lambdas_for(1)?,
            };
        }
        Ok((Prompt { contexts, mixture }, None))
    }

    fn base_context(&self, rear: &Rear, placement: PreferenceIn, raw: bool) -> Result<Vec<u32>> {
        if let Some(ids) = &self.base_prompt_ids {
            if ids.is_empty() {
                return Err(Error::Input(
                    "empty base prompt: --base-prompt-ids has no tokens".into(),
                ));
            }
            return Ok(ids.clone());
        }
        let text = self.base_prompt.as_deref().unwrap_or_default();
        if text.is_empty() {
            return Err(Error::Input(
                "empty base prompt (--base-prompt \"\")".into(),
            ));
        }
        let (p, _) = rear.text_prompt(text, &[], &[], placement, raw)?;
        Ok(p.contexts.into_iter().next().unwrap_or_default())
    }
}

/// The DESIGN §4 JSON object of one candidate (plus `logprob_contexts`).
pub fn candidate_json(rear: &Rear, rank: usize, c: &Candidate, mixture: &Mixture) -> Value {
    let text = rear
        .tokenizer
        .as_ref()
        .and_then(|t| t.decode(&c.token_ids, true).ok());
    let base = mixture.base().map(|b| c.logprob_contexts[b]);
    json!({
        "rank": rank,
        "token_ids": c.token_ids,
        "text": text,
        "score": c.score,
        "logprob_pref": c.logprob_contexts[0],
        "logprob_base": base,
        "logprob_contexts": c.logprob_contexts,
        "num_tokens": c.token_ids.len(),
        "finish_reason": c.finish_reason,
    })
}
