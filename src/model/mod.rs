//! Everything about a model on disk: config, weights (safetensors or GGUF), tokenizer and chat
//! template, gathered by `Model::load`.
pub mod chat;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

use crate::error::{Error, Result};
use config::ModelConfig;
use std::path::{Path, PathBuf};
use weights::ModelWeights;

/// A model as found on disk: config, weights as stored, and (when present) its tokenizer and
/// chat template.
pub struct Model {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Option<tokenizer::TextTokenizer>,
    pub template: Option<chat::ChatTemplate>,
}

impl Model {
    /// Loads a Hugging Face model directory, a GGUF file, or the default model by name
    /// (`smollm2-135m-instruct`, fetched into the cache on first use: see [`fetch`]).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            if let Some(name) = path.to_str().filter(|s| fetch::is_default_name(s)) {
                return gguf::load_model(&fetch::resolve_model(Some(name))?);
            }
            return Err(Error::Input(format!(
                "model path {} does not exist",
                path.display()
            )));
        }
        if !path.is_dir() {
            return gguf::load_model(path);
        }
        let config = ModelConfig::from_model_dir(path)?;
        let tensors = weights::load_dir_tensors(path)?;
        let weights = ModelWeights::from_tensors(&config, tensors).map_err(|e| e.in_file(path))?;
        let tokenizer = tokenizer::TextTokenizer::from_model_dir(path)?;
        let template = chat::ChatTemplate::from_model_dir(path)?;
        Ok(Model {
            path: path.to_owned(),
            config,
            weights,
            tokenizer,
            template,
        })
    }
}

/// Whether the optional file `path` of a model directory is there: `false` when nothing is at
/// that path, an error when something is there but is not a readable file (e.g. a directory).
pub(crate) fn optional_file(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}
