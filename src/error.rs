//! The library's error type: every failure names what went wrong (file, tensor, field, value).
use std::path::PathBuf;

/// All errors the library returns. The binary prints them on one line and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("gguf: {0}")]
    Gguf(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("kv cache: {0}")]
    KvCache(String),
    #[error("cuda: {0}")]
    Cuda(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A weights error prefixed with the file or directory it is about; other errors unchanged.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Weights(m) => Error::Weights(format!("{}: {m}", path.display())),
            other => other,
        }
    }
}
