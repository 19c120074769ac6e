//! The whole forward pass of one step on the device, fused and replayed as a CUDA graph.
//!
//! `CudaBackend::forward_fused` computes what `backend::forward` computes through the trait's
//! layer calls, with fewer launches (the residual add fused into the next RMSNorm, SwiGLU fused
//! into the down projection, q/k norm, RoPE and the cache write in one kernel: 8 launches per
//! layer) and all of a step's inputs (tokens, positions, sequence of each row, block tables,
//! logit rows) uploaded in one copy before any kernel runs. Kernels then read only device
//! buffers at fixed addresses, so the launch sequence of a step shape — (rows, logit rows,
//! block-table stride) — is captured once as a CUDA graph and replayed for every later step of
//! that shape (a decode loop: every step after the second). Positions and block tables are read
//! from device memory, so one graph serves all steps of a shape.
//!
//! Graphs bake device addresses: the cache is cleared whenever a buffer they use is reallocated
//! (the KV pool grows, a larger step arrives) or another weight set is used.
//! `REAR_CUDA_GRAPHS=0` runs every step eagerly.
use super::device::{cuda_err, DevBuf, Gpu};
use super::ops::{self, LayoutPtrs};
use super::types::{RearAttnParams, RearKvLayout};
use super::{CudaBackend, CudaKv, CudaWeights};
use crate::backend::StepLayout;
use crate::error::{Error, Result};
use cudarc::driver::{result, sys};
use std::collections::{HashMap, HashSet};

/// An instantiated graph, destroyed on drop.
pub(crate) struct GraphExec(sys::CUgraphExec);

// SAFETY: a CUgraphExec is a driver handle usable from any thread with the context current;
// the backend's mutex serialises its use.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: the handle came from cuGraphInstantiate and is destroyed once.
        let _ = unsafe { result::graph::exec_destroy(self.0) };
    }
}

/// Shape and buffers a captured step depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StepKey {
    rows: usize,
    logit_rows: usize,
    stride: usize,
    weights: u64,
    generation: u64,
}

/// The device buffers of the fused step and its graph cache.
pub(crate) struct StepState {
    input: DevBuf,
    h: DevBuf,
    xn: DevBuf,
    tmp: DevBuf,
    qkv: DevBuf,
    attn: DevBuf,
    gu: DevBuf,
    xsel: DevBuf,
    packed: Vec<u32>,
    /// Bumped whenever a buffer above or the KV pool moves (graphs hold their addresses).
    generation: u64,
    pool: u64,
    graphs: HashMap<StepKey, GraphExec>,
    seen: HashSet<StepKey>,
    pub(crate) launches: u64,
    pub(crate) replays: u64,
}

impl StepState {
    pub fn new(gpu: &Gpu) -> StepState {
        let e = || DevBuf::empty(gpu);
        StepState {
            input: e(),
            h: e(),
            xn: e(),
            tmp: e(),
            qkv: e(),
            attn: e(),
            gu: e(),
            xsel: e(),
            packed: Vec::new(),
            generation: 0,
            pool: 0,
            graphs: HashMap::new(),
            seen: HashSet::new(),
            launches: 0,
            replays: 0,
        }
    }
}

/// Grows `b` to at least `bytes` (rounded up to a power of two so that growth is rare); returns
/// whether it moved.
fn grow(b: &mut DevBuf, bytes: usize) -> Result<bool> {
    let before = b.ptr();
    b.ensure(bytes.max(256).next_power_of_two())?;
    Ok(b.ptr() != before)
}

fn graphs_enabled() -> bool {
    !std::env::var("REAR_CUDA_GRAPHS").is_ok_and(|v| v == "0")
}

/// Device pointers of the packed step input.
#[derive(Clone, Copy)]
struct Inputs {
    tokens: u64,
    lay: LayoutPtrs,
    logit_rows: u64,
}

impl CudaBackend {
    /// The forward pass of `layout` (as `backend::forward`): writes this step's K/V into `kv` and
    /// leaves the logits of `layout.logit_rows` on the device (for `rear_sample`), copying them
    /// to `logits` (`[n, vocab]`) when given. Repeated step shapes replay a CUDA graph.
    pub fn forward_fused(
        &self,
        w: &CudaWeights,
        layout: &StepLayout,
        kv: &mut CudaKv,
        logits: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let g = self.gpu();
        g.bind()?;
        let cfg = &w.cfg;
        let rows = layout.rows();
        let n = layout.logit_rows.len();
        if rows == 0 {
            return Err(Error::Input("a forward pass over no rows".into()));
        }
        if layout.positions.len() != rows || layout.row_seq.len() != rows {
            return Err(Error::Cuda(
                "step layout: positions / row_seq do not match the tokens".into(),
            ));
        }
        kv.check_layout(layout)?;
        let vocab = cfg.vocab_size as u32;
        if let Some(&t) = layout.tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Input(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        if let Some(&r) = layout.logit_rows.iter().find(|&&r| r as usize >= rows) {
            return Err(Error::Input(format!("logit row {r} of a {rows}-row step")));
        }

        let mut sc = self.scratch();
        let sc = &mut *sc;
        let st = &mut sc.step;
        // Pack every input: [tokens | positions | row_seq | logit_rows | tables].
        let max_blocks = layout
            .seqs
            .iter()
            .map(|s| s.blocks.len())
            .max()
            .unwrap_or(1);
        let stride = max_blocks.max(4).next_power_of_two();
        let p = &mut st.packed;
        p.clear();
        p.extend_from_slice(&layout.tokens);
        p.extend_from_slice(&layout.positions);
        p.extend_from_slice(&layout.row_seq);
        p.extend_from_slice(&layout.logit_rows);
        for s in &layout.seqs {
            p.extend_from_slice(&s.blocks);
            p.extend(std::iter::repeat_n(0u32, stride - s.blocks.len()));
        }
        // Sizes: a sequence has at least one row, so rows · (4 + stride) bounds the input.
        let (h, qd, kvd, im) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let qkv_w = qd + 2 * kvd;
        let mut moved = false;
        moved |= grow(&mut st.input, 4 * (rows * (4 + stride) + n))?;
        moved |= grow(&mut st.h, 4 * rows * h)?;
        moved |= grow(&mut st.xn, 4 * rows * h)?;
        moved |= grow(&mut st.tmp, 4 * rows * h)?;
        moved |= grow(&mut st.qkv, 4 * rows * qkv_w)?;
        moved |= grow(&mut st.attn, 4 * rows * qd)?;
        moved |= grow(&mut st.gu, 4 * rows * 2 * im)?;
        moved |= grow(&mut st.xsel, 4 * n.max(1) * h)?;
        moved |= grow(&mut sc.logits, 4 * n.max(1) * cfg.vocab_size)?;
        if moved || st.pool != kv.pool.ptr() {
            st.generation += 1;
            st.pool = kv.pool.ptr();
            st.graphs.clear();
            st.seen.clear();
        }
        g.htod(st.input.ptr(), &st.packed)?;
        let base = st.input.ptr();
        let at = |i: usize| base + 4 * i as u64;
        let inp = Inputs {
            tokens: at(0),
            lay: LayoutPtrs {
                positions: at(rows),
                row_seq: at(2 * rows),
                tables: at(3 * rows + n),
            },
            logit_rows: at(3 * rows),
        };
        let key = StepKey {
            rows,
            logit_rows: n,
            stride,
            weights: w.id,
            generation: st.generation,
        };
        sc.logits_shape = (n, cfg.vocab_size);
        let logits_ptr = sc.logits.ptr();
        let st = &mut sc.step;
        if let Some(exec) = st.graphs.get(&key) {
            // SAFETY: the graph's buffers are alive and unmoved (same generation).
            unsafe { result::graph::launch(exec.0, g.cu_stream()) }
                .map_err(|e| cuda_err("replaying the step graph", e))?;
            st.replays += 1;
        } else if graphs_enabled() && st.seen.contains(&key) {
            let exec = capture(g, || {
                self.enqueue_step(w, st, kv, inp, rows, n, stride, logits_ptr)
            })?;
            // SAFETY: as above; the graph was just instantiated from this stream's capture.
            unsafe { result::graph::launch(exec.0, g.cu_stream()) }
                .map_err(|e| cuda_err("launching the step graph", e))?;
            st.graphs.insert(key, exec);
            st.replays += 1;
        } else {
            if st.seen.len() > 1024 {
                st.seen.clear();
            }
            st.seen.insert(key);
            self.enqueue_step(w, st, kv, inp, rows, n, stride, logits_ptr)?;
        }
        if let Some(out) = logits {
            out.resize(n * cfg.vocab_size, 0.0);
            g.dtoh(out, logits_ptr)?;
        }
        Ok(())
    }

    /// The step's kernel launches, in order; no allocation, no copy (so it can be captured).
    #[allow(clippy::too_many_arguments)]
    fn enqueue_step(
        &self,
        w: &CudaWeights,
        st: &mut StepState,
        kv: &CudaKv,
        inp: Inputs,
        rows: usize,
        n: usize,
        stride: usize,
        logits: u64,
    ) -> Result<()> {
        let g = self.gpu();
        let cfg = &w.cfg;
        let (hd, qd, kvd, im) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let d = cfg.head_dim;
        let qkv_w = qd + 2 * kvd;
        let eps = cfg.rms_norm_eps;
        let path = self.path();
        let (h, xn, tmp) = (st.h.ptr(), st.xn.ptr(), st.tmp.ptr());
        let (qkv, attn, gu) = (st.qkv.ptr(), st.attn.ptr(), st.gu.ptr());
        let bias = |b: &Option<DevBuf>| b.as_ref().map(|b| b.ptr());
        ops::embedding(g, &w.embed, inp.tokens, rows, h)?;
        let layers = w.layers.len();
        for (l, lw) in w.layers.iter().enumerate() {
            if l == 0 {
                ops::rms_norm(g, h, lw.input_norm.ptr(), rows, hd, eps, xn)?;
            }
            ops::matmul(
                g,
                &lw.qkv,
                bias(&lw.qkv_bias),
                xn,
                hd,
                rows,
                qkv,
                qkv_w,
                false,
                path,
            )?;
            let kvl: RearKvLayout = kv.layout(l, stride);
            super::rope_qk_cache(g, w, l, rows, qkv, kvl, inp.lay, kv)?;
            let ap = RearAttnParams {
                rows: rows as u32,
                heads: cfg.num_heads as u32,
                kv_heads: cfg.num_kv_heads as u32,
                head_dim: d as u32,
                q_stride: qkv_w as u32,
                out_stride: qd as u32,
                window: cfg.sliding_window[l].map_or(0, |w| w.min(u32::MAX as usize) as u32),
                scale: (d as f64).powf(-0.5) as f32,
                kv: kvl,
            };
            ops::attention(g, ap, qkv, kv.pool.ptr(), inp.lay, attn)?;
            ops::matmul(
                g,
                &lw.o,
                bias(&lw.o_bias),
                attn,
                qd,
                rows,
                tmp,
                hd,
                false,
                path,
            )?;
            ops::add_rms_norm(g, h, tmp, lw.post_norm.ptr(), rows, hd, eps, xn)?;
            ops::matmul(
                g,
                &lw.gate_up,
                bias(&lw.gate_up_bias),
                xn,
                hd,
                rows,
                gu,
                2 * im,
                false,
                path,
            )?;
            ops::matmul(
                g,
                &lw.down,
                bias(&lw.down_bias),
                gu,
                2 * im,
                rows,
                tmp,
                hd,
                true,
                path,
            )?;
            if l + 1 < layers {
                ops::add_rms_norm(
                    g,
                    h,
                    tmp,
                    w.layers[l + 1].input_norm.ptr(),
                    rows,
                    hd,
                    eps,
                    xn,
                )?;
            } else {
                ops::add(g, h, tmp, rows * hd)?;
            }
        }
        if n > 0 {
            let xsel = st.xsel.ptr();
            ops::rms_norm_gather(g, h, inp.logit_rows, n, w.final_norm.ptr(), hd, eps, xsel)?;
            ops::matmul(
                g,
                w.lm_head(),
                None,
                xsel,
                hd,
                n,
                logits,
                cfg.vocab_size,
                false,
                path,
            )?;
        }
        st.launches += 1;
        Ok(())
    }

    /// Steps replayed from a graph and steps launched kernel by kernel so far.
    pub fn step_counts(&self) -> (u64, u64) {
        let sc = self.scratch();
        (sc.step.replays, sc.step.launches)
    }
}

/// Captures the launches `f` makes on the backend's stream into an instantiated graph.
fn capture(g: &Gpu, f: impl FnOnce() -> Result<()>) -> Result<GraphExec> {
    let stream = g.cu_stream();
    // SAFETY: the stream is the backend's own; nothing else is enqueued on it meanwhile (the
    // scratch mutex is held).
    unsafe {
        result::stream::begin_capture(
            stream,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
        )
        .map_err(|e| cuda_err("beginning graph capture", e))?;
    }
    g.set_capturing(true);
    let r = f();
    g.set_capturing(false);
    // SAFETY: ends the capture begun above (also after an error, to leave the stream usable).
    let graph = unsafe { result::stream::end_capture(stream) };
    r?;
    let graph = graph.map_err(|e| cuda_err("ending graph capture", e))?;
    // SAFETY: `graph` is a valid captured graph; it is destroyed after instantiation.
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
    unsafe {
        let _ = result::graph::destroy(graph);
    }
    Ok(GraphExec(exec.map_err(|e| {
        cuda_err("instantiating the step graph", e)
    })?))
}
