//! rear: a decoding engine for REAR (REAlignment Reward) test-time preference realignment.
//!
//! Two contexts of one model (the prompt with the preference and without it) are decoded side
//! by side; each candidate token is scored `λ·log π(v|x,p) + (1−λ)·log π(v|x)` and that score
//! drives guided greedy, sampling, beam search, best-of-N and chunk-level tree search.
pub mod api;
pub mod backend;
pub mod batch;
pub mod bench;
pub mod engine;
pub mod error;
pub mod kv;
pub mod model;
pub mod rear;
pub mod request;
pub mod search;

pub use error::{Error, Result};
