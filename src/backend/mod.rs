//! The layer-level `Backend` trait every device implements (CPU reference, CUDA), the step layout
//! both read (which token rows go to which sequence and cache slot), and the one forward-pass
//! driver written against the trait.
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::ModelWeights;
use crate::search::pick::{Choice, PickRequest};

pub mod cpu;
pub mod cuda;

/// One sequence's block table for a step: its KV for position `p` lives in block
/// `blocks[p / block_size]`, slot `p % block_size`.
#[derive(Clone, Debug, Default)]
pub struct SeqBlocks {
    pub blocks: Vec<u32>,
}

/// Host-side description of one forward pass over a batch of token rows. Rows of one sequence
/// are consecutive positions; prefill (many rows of one sequence) and decode (one row each of
/// many sequences) are the same thing here, and may be mixed.
#[derive(Clone, Debug, Default)]
pub struct StepLayout {
    pub block_size: usize,
    pub tokens: Vec<u32>,    // [rows]
    pub positions: Vec<u32>, // [rows]
    pub row_seq: Vec<u32>,   // [rows] → index into `seqs`
    pub seqs: Vec<SeqBlocks>,
    /// Rows whose logits the step returns, in output order.
    pub logit_rows: Vec<u32>,
}

impl StepLayout {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Cache slot (block · block_size + offset) of position `pos` of sequence `seq`.
    pub fn slot(&self, seq: usize, pos: usize) -> usize {
        let bs = self.block_size;
        self.seqs[seq].blocks[pos / bs] as usize * bs + pos % bs
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.row_seq.clear();
        self.seqs.clear();
        self.logit_rows.clear();
    }
}

/// Which RMSNorm weight to apply.
#[derive(Clone, Copy, Debug)]
pub enum Norm {
    Input(usize),
    PostAttention(usize),
}

/// One device's implementation of the decoder's layers. Activations (`Act`) and the KV block
/// pool (`Kv`) live on the device; only token ids go in and chosen logits come out.
pub trait Backend: Send + Sync {
    /// The model's weights resident on the device.
    type Weights: Send + Sync;
    /// A `[rows, width]` f32 activation buffer on the device (reused across steps).
    type Act: Send;
    /// Paged K/V storage for every layer: `[block][slot][kv_head][head_dim]` per layer.
    type Kv: Send;

    fn name(&self) -> &'static str;
    /// Makes the device copy (or view) of the weights, kept in their stored type.
    fn load_weights(&self, cfg: &ModelConfig, w: &ModelWeights) -> Result<Self::Weights>;
    fn new_act(&self) -> Self::Act;
    /// An empty KV pool with `block_size` slots per block.
    fn new_kv(&self, cfg: &ModelConfig, block_size: usize) -> Result<Self::Kv>;
    /// Makes blocks `0..n` usable (new ones hold NaN until written).
    fn reserve_blocks(&self, kv: &mut Self::Kv, n: usize) -> Result<()>;
    /// Copies whole blocks `src → dst` in every layer (copy-on-write of a shared block).
    fn copy_blocks(&self, kv: &mut Self::Kv, pairs: &[(u32, u32)]) -> Result<()>;
    /// `x[r] = embedding[tokens[r]]`.
    fn embed(&self, w: &Self::Weights, tokens: &[u32], x: &mut Self::Act) -> Result<()>;
    /// `out = rms_norm(x) · weight`.
    fn rms_norm(
        &self,
        w: &Self::Weights,
        which: Norm,
        x: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Projections, q/k norm, RoPE, cache write of this step's K/V, paged causal attention
    /// over each row's sequence, output projection.
    fn attention(
        &self,
        w: &Self::Weights,
        layer: usize,
        x: &Self::Act,
        layout: &StepLayout,
        kv: &mut Self::Kv,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = down(silu(gate(x)) · up(x))`.
    fn mlp(
        &self,
        w: &Self::Weights,
        layer: usize,
        x: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// Final norm and LM head over `rows` of `x`; logits copied to the host, `[rows, vocab]`.
    fn logits(
        &self,
        w: &Self::Weights,
        x: &Self::Act,
        rows: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<()>;

    /// One whole forward pass (see [`forward`]); a device may override it with a fused
    /// implementation that computes the same thing (CUDA: fewer launches, graph replay).
    /// `logits: None` leaves the logits where they are, for [`Backend::pick`] (only asked of a
    /// backend whose `device_pick` is true).
    fn forward(
        &self,
        cfg: &ModelConfig,
        w: &Self::Weights,
        layout: &StepLayout,
        kv: &mut Self::Kv,
        s: &mut Scratch<Self>,
        logits: Option<&mut Vec<f32>>,
    ) -> Result<()>
    where
        Self: Sized,
    {
        let Some(logits) = logits else {
            return Err(Error::Input(format!(
                "the {} backend returns its logits to the host",
                self.name()
            )));
        };
        forward(self, cfg, w, layout, kv, s, logits)
    }

    /// Whether [`Backend::pick`] chooses next tokens where the logits are (the engine then runs
    /// `forward` without host logits). Otherwise the engine picks on the host
    /// (`search::pick::rear_sample`).
    fn device_pick(&self) -> bool {
        false
    }

    /// Picks `req` over the logit rows `first..first + n` of the last `forward` (left on the
    /// device), as `search::pick::rear_sample` does over their log-softmax.
    fn pick(&self, first: usize, n: usize, req: &PickRequest) -> Result<Vec<Choice>> {
        let _ = (first, n, req);
        Err(Error::Input(format!(
            "the {} backend has no device pick",
            self.name()
        )))
    }
}

/// Reusable activation buffers of one engine.
pub struct Scratch<B: Backend> {
    h: B::Act,
    xn: B::Act,
    tmp: B::Act,
}

impl<B: Backend> Scratch<B> {
    pub fn new(b: &B) -> Self {
        Scratch {
            h: b.new_act(),
            xn: b.new_act(),
            tmp: b.new_act(),
        }
    }
}

/// Runs the decoder over `layout`'s rows (writing their K/V into `kv`) and returns the logits
/// of `layout.logit_rows` in `logits` (`[n, vocab]`).
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &B::Weights,
    layout: &StepLayout,
    kv: &mut B::Kv,
    s: &mut Scratch<B>,
    logits: &mut Vec<f32>,
) -> Result<()> {
    b.embed(w, &layout.tokens, &mut s.h)?;
    for l in 0..cfg.num_layers {
        b.rms_norm(w, Norm::Input(l), &s.h, &mut s.xn)?;
        b.attention(w, l, &s.xn, layout, kv, &mut s.tmp)?;
        b.add(&mut s.h, &s.tmp)?;
        b.rms_norm(w, Norm::PostAttention(l), &s.h, &mut s.xn)?;
        b.mlp(w, l, &s.xn, &mut s.tmp)?;
        b.add(&mut s.h, &s.tmp)?;
    }
    b.logits(w, &s.h, &layout.logit_rows, logits)
}
