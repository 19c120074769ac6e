//! The engine: a loaded model on one backend with its paged KV cache, exposed to the search
//! algorithms through the small `StepApi` (new/fork/free a sequence, extend many sequences by
//! some tokens in one forward pass and get their logits).
use crate::backend::{Backend, Scratch, SeqBlocks, StepLayout};
use crate::error::{Error, Result};
use crate::kv::{BlockPool, BlockTable};
use crate::model::config::ModelConfig;
use crate::model::weights::ModelWeights;
use crate::rear::log_softmax_rows;
use crate::search::pick::{rear_sample, Choice, PickRequest, PickScratch};

/// Handle of one sequence (one context of one hypothesis) in the engine's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// One sequence's share of a forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Extend<'a> {
    pub seq: SeqId,
    /// Tokens appended at the sequence's next positions.
    pub tokens: &'a [u32],
    /// Logits after every appended token (`true`) or only after the last (`false`).
    pub all_logits: bool,
}

/// What the search algorithms need from an engine, independent of the device.
pub trait StepApi {
    fn config(&self) -> &ModelConfig;
    fn new_seq(&mut self) -> SeqId;
    /// A new sequence sharing `s`'s cache blocks (no KV copy).
    fn fork(&mut self, s: SeqId) -> SeqId;
    fn free(&mut self, s: SeqId);
    fn seq_len(&self, s: SeqId) -> usize;
    /// Appends each item's tokens to its sequence, all in one forward pass, and writes the
    /// requested logits into `logits` (`[rows, vocab]`, items in order).
    fn extend(&mut self, items: &[Extend<'_>], logits: &mut Vec<f32>) -> Result<()>;
    /// Appends like `extend` (one logits row per item: `all_logits` must be false), then answers
    /// each pick `(first, n, request)` over rows `first..first + n` where the logits are (on the
    /// device when the backend can: only the choices come back). `out[i]` holds pick `i`'s
    /// choices.
    fn extend_pick(
        &mut self,
        items: &[Extend<'_>],
        picks: &[(usize, usize, &PickRequest)],
        out: &mut Vec<Vec<Choice>>,
    ) -> Result<()>;
    /// KV blocks currently held (0 once every sequence is freed).
    fn used_blocks(&self) -> usize;
    /// KV blocks the cache may hold at most (`--kv-cache-mib`).
    fn max_blocks(&self) -> usize {
        usize::MAX
    }
    /// Forward passes run so far.
    fn passes(&self) -> u64;
}

/// Engine options.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bound on the KV cache, in MiB (K and V of every layer).
    pub kv_cache_mib: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            block_size: 16,
            kv_cache_mib: 2048,
        }
    }
}

/// A model on backend `B` with its KV cache.
pub struct Engine<B: Backend> {
    backend: B,
    cfg: ModelConfig,
    weights: B::Weights,
    kv: B::Kv,
    pool: BlockPool,
    seqs: Vec<Option<BlockTable>>,
    free_ids: Vec<u32>,
    scratch: Scratch<B>,
    layout: StepLayout,
    copies: Vec<(u32, u32)>,
    passes: u64,
    /// Host logits of `extend_pick` when the backend picks on the host.
    pick_logits: Vec<f32>,
    pick_scratch: PickScratch,
}

impl<B: Backend> Engine<B> {
    pub fn new(
        backend: B,
        cfg: &ModelConfig,
        w: &ModelWeights,
        opts: &EngineOptions,
    ) -> Result<Self> {
        let weights = backend.load_weights(cfg, w)?;
        let kv = backend.new_kv(cfg, opts.block_size)?;
        let bytes_per_block = opts.block_size * cfg.kv_dim() * cfg.num_layers * 2 * 4;
        let max_blocks = opts.kv_cache_mib.saturating_mul(1 << 20) / bytes_per_block.max(1);
        if max_blocks == 0 {
            return Err(Error::Input(format!(
                "--kv-cache-mib {} holds no block of {} tokens ({} bytes per block)",
                opts.kv_cache_mib, opts.block_size, bytes_per_block
            )));
        }
        let scratch = Scratch::new(&backend);
        Ok(Engine {
            backend,
            cfg: cfg.clone(),
            weights,
            kv,
            pool: BlockPool::new(opts.block_size, max_blocks),
            seqs: Vec::new(),
            free_ids: Vec::new(),
            scratch,
            layout: StepLayout::default(),
            copies: Vec::new(),
            passes: 0,
            pick_logits: Vec::new(),
            pick_scratch: PickScratch::default(),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn table(&self, s: SeqId) -> &BlockTable {
        self.seqs[s.0 as usize]
            .as_ref()
            .expect("sequence used after free")
    }

    fn table_mut(&mut self, s: SeqId) -> &mut BlockTable {
        self.seqs[s.0 as usize]
            .as_mut()
            .expect("sequence used after free")
    }

    fn insert(&mut self, t: BlockTable) -> SeqId {
        if let Some(i) = self.free_ids.pop() {
            self.seqs[i as usize] = Some(t);
            SeqId(i)
        } else {
            self.seqs.push(Some(t));
            SeqId(self.seqs.len() as u32 - 1)
        }
    }

    /// Grows the block tables for `items`; on error every table is back to its old length.
    fn grow(&mut self, items: &[Extend<'_>]) -> Result<()> {
        self.copies.clear();
        let mut done = Vec::with_capacity(items.len());
        for it in items {
            let mut t = std::mem::take(self.table_mut(it.seq));
            let old = t.len;
            let r = self
                .pool
                .prepare_append(&mut t, it.tokens.len(), &mut self.copies);
            *self.table_mut(it.seq) = t;
            if let Err(e) = r {
                // Copies already made keep the shared prefixes intact; then drop the new room.
                let _ = self
                    .backend
                    .reserve_blocks(&mut self.kv, self.pool.capacity_used());
                let _ = self.backend.copy_blocks(&mut self.kv, &self.copies);
                for (seq, old) in done {
                    let mut t = std::mem::take(self.table_mut(seq));
                    self.pool.truncate(&mut t, old);
                    *self.table_mut(seq) = t;
                }
                return Err(e);
            }
            done.push((it.seq, old));
        }
        self.backend
            .reserve_blocks(&mut self.kv, self.pool.capacity_used())?;
        self.backend.copy_blocks(&mut self.kv, &self.copies)
    }

    /// `extend` with the logits copied to `logits` or left on the device (`None`).
    fn extend_to(&mut self, items: &[Extend<'_>], logits: Option<&mut Vec<f32>>) -> Result<()> {
        let vocab = self.cfg.vocab_size as u32;
        for it in items {
            if it.tokens.is_empty() {
                return Err(Error::Input("a sequence was extended by no tokens".into()));
            }
            if let Some(&t) = it.tokens.iter().find(|&&t| t >= vocab) {
                return Err(Error::Input(format!(
                    "token id {t} is outside the vocabulary (size {vocab})"
                )));
            }
            let end = self.table(it.seq).len + it.tokens.len();
            if end > self.cfg.max_position_embeddings {
                return Err(Error::Input(format!(
                    "sequence of {end} tokens exceeds max_position_embeddings {}",
                    self.cfg.max_position_embeddings
                )));
            }
        }
        let olds: Vec<usize> = items.iter().map(|it| self.table(it.seq).len).collect();
        self.grow(items)?;
        let mut layout = std::mem::take(&mut self.layout);
        layout.clear();
        layout.block_size = self.pool.block_size();
        for (i, (it, &old)) in items.iter().zip(&olds).enumerate() {
            let first_row = layout.tokens.len() as u32;
            layout.seqs.push(SeqBlocks {
                blocks: self.table(it.seq).blocks.clone(),
            });
            for (k, &t) in it.tokens.iter().enumerate() {
                layout.tokens.push(t);
                layout.positions.push((old + k) as u32);
                layout.row_seq.push(i as u32);
            }
            let last = layout.tokens.len() as u32;
            if it.all_logits {
                layout.logit_rows.extend(first_row..last);
            } else {
                layout.logit_rows.push(last - 1);
            }
        }
        let r = self.backend.forward(
            &self.cfg,
            &self.weights,
            &layout,
            &mut self.kv,
            &mut self.scratch,
            logits,
        );
        self.layout = layout;
        self.passes += 1;
        r
    }
}

impl<B: Backend> StepApi for Engine<B> {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_seq(&mut self) -> SeqId {
        self.insert(BlockTable::default())
    }

    fn fork(&mut self, s: SeqId) -> SeqId {
        let t = self.seqs[s.0 as usize]
            .as_ref()
            .expect("sequence used after free");
        let t = self.pool.fork(t);
        self.insert(t)
    }

    fn free(&mut self, s: SeqId) {
        if let Some(mut t) = self.seqs[s.0 as usize].take() {
            self.pool.release(&mut t);
            self.free_ids.push(s.0);
        }
    }

    fn seq_len(&self, s: SeqId) -> usize {
        self.table(s).len
    }

    fn extend(&mut self, items: &[Extend<'_>], logits: &mut Vec<f32>) -> Result<()> {
        self.extend_to(items, Some(logits))
    }

    fn extend_pick(
        &mut self,
        items: &[Extend<'_>],
        picks: &[(usize, usize, &PickRequest)],
        out: &mut Vec<Vec<Choice>>,
    ) -> Result<()> {
        if items.iter().any(|it| it.all_logits) {
            return Err(Error::Input(
                "extend_pick takes one logits row per sequence".into(),
            ));
        }
        if let Some(&(first, n, _)) = picks.iter().find(|p| p.0 + p.1 > items.len()) {
            return Err(Error::Input(format!(
                "a pick over rows {first}..{} of a step of {} rows",
                first + n,
                items.len()
            )));
        }
        out.clear();
        if self.backend.device_pick() {
            self.extend_to(items, None)?;
            for &(first, n, req) in picks {
                out.push(self.backend.pick(first, n, req)?);
            }
            return Ok(());
        }
        let mut logits = std::mem::take(&mut self.pick_logits);
        let r = self.extend_to(items, Some(&mut logits));
        let vocab = self.cfg.vocab_size;
        let r = r.and_then(|()| {
            log_softmax_rows(&mut logits, vocab);
            let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
            for &(first, n, req) in picks {
                out.push(rear_sample(
                    &rows[first..first + n],
                    req,
                    &mut self.pick_scratch,
                )?);
            }
            Ok(())
        });
        self.pick_logits = logits;
        r
    }

    fn used_blocks(&self) -> usize {
        self.pool.used_blocks()
    }

    fn max_blocks(&self) -> usize {
        self.pool.max_blocks()
    }

    fn passes(&self) -> u64 {
        self.passes
    }
}
