//! The CPU backend: the engine's reference implementation of `Backend` (and the oracle of the
//! CUDA backend). Weights stay as stored and are decoded to f32 in registers inside the matmul
//! (SIMD kernels chosen at run time, `matmul.rs`); every weight is read once per step for all
//! rows; parallel over output features (rayon's global pool). Projections that read the same
//! input (q/k/v, gate/up) run as one parallel pass; the step loop allocates nothing once its
//! buffers have grown.
pub mod matmul;
pub mod ops;

use crate::backend::{Backend, Norm, StepLayout};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::{LayerWeights, Linear, ModelWeights};
use ops::AttnDims;
use rayon::prelude::*;
use std::sync::Mutex;

/// `[rows, width]` activations in row-major f32.
#[derive(Default)]
pub struct CpuAct {
    pub data: Vec<f32>,
    pub rows: usize,
    pub width: usize,
}

impl CpuAct {
    fn shape(&mut self, rows: usize, width: usize) {
        self.rows = rows;
        self.width = width;
        self.data.resize(rows * width, 0.0);
    }
}

/// Weights as stored plus the few small f32 tensors read every step (norms, RoPE frequencies).
pub struct CpuWeights {
    pub cfg: ModelConfig,
    pub w: ModelWeights,
    input_norms: Vec<Vec<f32>>,
    post_norms: Vec<Vec<f32>>,
    q_norms: Vec<Vec<f32>>,
    k_norms: Vec<Vec<f32>>,
    final_norm: Vec<f32>,
    inv_freq: Vec<f32>,
    /// Factor on RoPE's cos/sin (`ModelConfig::rope_attention_scale`).
    rope_scale: f32,
    lm_head: Linear,
    /// Scratch for the projections (q, k, v, gate, up, transposed matmul output).
    scratch: Mutex<CpuScratch>,
}

#[derive(Default)]
struct CpuScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    normed: Vec<f32>,
    tmp: Vec<f32>,
    /// RoPE `(cos, sin)` per row and frequency for the positions in `rope_pos`.
    rope_cs: Vec<(f32, f32)>,
    rope_pos: Vec<u32>,
}

/// Per-layer K and V block storage: `[blocks · block_size, kv_heads · head_dim]` each.
pub struct CpuKv {
    pub block_size: usize,
    pub blocks: usize,
    kv_dim: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// The CPU backend (stateless; the rayon global pool sets its threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Weights = CpuWeights;
    type Act = CpuAct;
    type Kv = CpuKv;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weights(&self, cfg: &ModelConfig, w: &ModelWeights) -> Result<CpuWeights> {
        let per = |f: &dyn Fn(&LayerWeights) -> Option<Vec<f32>>| -> Vec<Vec<f32>> {
            w.layers.iter().map(|l| f(l).unwrap_or_default()).collect()
        };
        Ok(CpuWeights {
            cfg: cfg.clone(),
            input_norms: per(&|l| Some(l.input_norm.to_f32())),
            post_norms: per(&|l| Some(l.post_attn_norm.to_f32())),
            q_norms: per(&|l| l.q_norm.as_ref().map(|t| t.to_f32())),
            k_norms: per(&|l| l.k_norm.as_ref().map(|t| t.to_f32())),
            final_norm: w.norm.to_f32(),
            inv_freq: cfg.rope_inv_freq(),
            rope_scale: cfg.rope_attention_scale(),
            lm_head: Linear {
                weight: w.lm_head.clone(),
                bias: None,
            },
            w: w.clone(),
            scratch: Mutex::new(CpuScratch::default()),
        })
    }

    fn new_act(&self) -> CpuAct {
        CpuAct::default()
    }

    fn new_kv(&self, cfg: &ModelConfig, block_size: usize) -> Result<CpuKv> {
        Ok(CpuKv {
            block_size,
            blocks: 0,
            kv_dim: cfg.kv_dim(),
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
        })
    }

    fn reserve_blocks(&self, kv: &mut CpuKv, n: usize) -> Result<()> {
        if n > kv.blocks {
            let len = n
                .checked_mul(kv.block_size * kv.kv_dim)
                .ok_or_else(|| Error::KvCache(format!("{n} blocks overflow")))?;
            for buf in kv.k.iter_mut().chain(kv.v.iter_mut()) {
                buf.try_reserve_exact(len - buf.len())
                    .map_err(|_| Error::KvCache(format!("cannot allocate {n} blocks")))?;
                buf.resize(len, f32::NAN);
            }
            kv.blocks = n;
        }
        Ok(())
    }

    fn copy_blocks(&self, kv: &mut CpuKv, pairs: &[(u32, u32)]) -> Result<()> {
        let bl = kv.block_size * kv.kv_dim;
        for buf in kv.k.iter_mut().chain(kv.v.iter_mut()) {
            for &(s, d) in pairs {
                let (s, d) = (s as usize * bl, d as usize * bl);
                buf.copy_within(s..s + bl, d);
            }
        }
        Ok(())
    }

    fn embed(&self, w: &CpuWeights, tokens: &[u32], x: &mut CpuAct) -> Result<()> {
        let h = w.cfg.hidden_size;
        x.shape(tokens.len(), h);
        let emb = &w.w.embed;
        if tokens.len() < 16 {
            for (row, &t) in x.data.chunks_mut(h).zip(tokens) {
                emb.decode_row(t as usize, row);
            }
        } else {
            x.data
                .par_chunks_mut(h)
                .zip(tokens.par_iter())
                .for_each(|(row, &t)| {
                    emb.decode_row(t as usize, row);
                });
        }
        Ok(())
    }

    fn rms_norm(&self, w: &CpuWeights, which: Norm, x: &CpuAct, out: &mut CpuAct) -> Result<()> {
        let g = match which {
            Norm::Input(l) => &w.input_norms[l],
            Norm::PostAttention(l) => &w.post_norms[l],
        };
        out.shape(x.rows, x.width);
        ops::rms_norm(&x.data, g, w.cfg.rms_norm_eps, &mut out.data);
        Ok(())
    }

    fn attention(
        &self,
        w: &CpuWeights,
        layer: usize,
        x: &CpuAct,
        layout: &StepLayout,
        kv: &mut CpuKv,
        out: &mut CpuAct,
    ) -> Result<()> {
        let cfg = &w.cfg;
        let lw = &w.w.layers[layer];
        let rows = x.rows;
        let (d, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let mut guard = w.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.q.resize(rows * qd, 0.0);
        s.k.resize(rows * kvd, 0.0);
        s.v.resize(rows * kvd, 0.0);
        matmul::matmul_many(
            &x.data,
            rows,
            &mut [
                matmul::Job {
                    lin: &lw.q,
                    out: &mut s.q,
                },
                matmul::Job {
                    lin: &lw.k,
                    out: &mut s.k,
                },
                matmul::Job {
                    lin: &lw.v,
                    out: &mut s.v,
                },
            ],
        );
        let (qn, kn) = (&w.q_norms[layer], &w.k_norms[layer]);
        let eps = cfg.rms_norm_eps;
        let inv = &w.inv_freq;
        let half = inv.len();
        if s.rope_pos != layout.positions {
            s.rope_pos.clear();
            s.rope_pos.extend_from_slice(&layout.positions);
            s.rope_cs.resize(rows * half, (0.0, 0.0));
            for (cs, &p) in s.rope_cs.chunks_mut(half.max(1)).zip(&layout.positions) {
                ops::rope_table(p, inv, w.rope_scale, cs);
            }
        }
        let (hq, hk) = (cfg.num_heads, cfg.num_kv_heads);
        let cs = &s.rope_cs;
        let small = rows < 8;
        for (buf, norm, heads) in [(&mut s.q, qn, hq), (&mut s.k, kn, hk)] {
            let head = |(i, v): (usize, &mut [f32])| {
                if !norm.is_empty() {
                    ops::rms_norm_inplace(v, norm, eps);
                }
                let r = i / heads;
                ops::rope_cs(v, &cs[r * half..(r + 1) * half]);
            };
            if small {
                buf.chunks_mut(d).enumerate().for_each(head);
            } else {
                buf.par_chunks_mut(d).enumerate().for_each(head);
            }
        }
        let (kc, vc) = (&mut kv.k[layer], &mut kv.v[layer]);
        for r in 0..rows {
            let slot = layout.slot(layout.row_seq[r] as usize, layout.positions[r] as usize);
            kc[slot * kvd..(slot + 1) * kvd].copy_from_slice(&s.k[r * kvd..(r + 1) * kvd]);
            vc[slot * kvd..(slot + 1) * kvd].copy_from_slice(&s.v[r * kvd..(r + 1) * kvd]);
        }
        let dims = AttnDims {
            heads: hq,
            kv_heads: hk,
            head_dim: d,
            scale: (d as f64).powf(-0.5) as f32,
            window: cfg.sliding_window[layer],
        };
        s.attn.resize(rows * qd, 0.0);
        ops::attention(&s.q, kc, vc, layout, dims, &mut s.attn);
        out.shape(rows, cfg.hidden_size);
        ops::matmul(&s.attn, rows, &lw.o, &mut out.data, &mut s.tmp);
        Ok(())
    }

    fn mlp(&self, w: &CpuWeights, layer: usize, x: &CpuAct, out: &mut CpuAct) -> Result<()> {
        let lw = &w.w.layers[layer];
        let rows = x.rows;
        let im = w.cfg.intermediate_size;
        let mut guard = w.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.gate.resize(rows * im, 0.0);
        s.up.resize(rows * im, 0.0);
        matmul::matmul_many(
            &x.data,
            rows,
            &mut [
                matmul::Job {
                    lin: &lw.gate,
                    out: &mut s.gate,
                },
                matmul::Job {
                    lin: &lw.up,
                    out: &mut s.up,
                },
            ],
        );
        ops::swiglu(&mut s.gate, &s.up);
        out.shape(rows, w.cfg.hidden_size);
        ops::matmul(&s.gate, rows, &lw.down, &mut out.data, &mut s.tmp);
        Ok(())
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<()> {
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn logits(&self, w: &CpuWeights, x: &CpuAct, rows: &[u32], out: &mut Vec<f32>) -> Result<()> {
        let h = w.cfg.hidden_size;
        let mut guard = w.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.normed.resize(rows.len() * h, 0.0);
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            ops::rms_norm_row(
                &x.data[r * h..(r + 1) * h],
                &w.final_norm,
                w.cfg.rms_norm_eps,
                &mut s.normed[i * h..(i + 1) * h],
            );
        }
        out.resize(rows.len() * w.cfg.vocab_size, 0.0);
        ops::matmul(&s.normed, rows.len(), &w.lm_head, out, &mut s.tmp);
        Ok(())
    }
}
