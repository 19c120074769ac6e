//! The CPU reference kernels, one plain function per op family (the CUDA kernels of the same
//! names are tested against these): matmul over stored-type weights, RMSNorm, RoPE, paged
//! attention, SwiGLU. f32 arithmetic throughout; weights decoded in registers as they are read
//! (`matmul.rs`).
use crate::backend::StepLayout;
use crate::model::weights::Linear;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// f32 dot product with eight independent accumulators (vectorises without changing the
/// summation order between calls).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[r, j] = Σ_i x[r, i] · W[j, i] (+ b[j])` for `rows` rows; `x: [rows, in]`,
/// `out: [rows, out]`. Weights stay in their stored type and are decoded in registers; every
/// weight is read once per call whatever the number of rows (see `matmul.rs`). `_tmp` is no
/// longer used (kept for callers).
pub fn matmul(x: &[f32], rows: usize, lin: &Linear, out: &mut [f32], _tmp: &mut Vec<f32>) {
    debug_assert_eq!(x.len(), rows * lin.in_features());
    debug_assert_eq!(out.len(), rows * lin.out_features());
    super::matmul::matmul_many(x, rows, &mut [super::matmul::Job { lin, out }]);
}

/// RMSNorm of each `width`-row of `x` into `out`: `w · x / sqrt(mean(x²) + eps)` (HF order).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    if out.len() < 16 * width {
        // A decode step's few rows: not worth waking the thread pool.
        for (o, xr) in out.chunks_mut(width).zip(x.chunks(width)) {
            rms_norm_row(xr, weight, eps, o);
        }
        return;
    }
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(o, xr)| {
            rms_norm_row(xr, weight, eps, o);
        });
}

#[inline]
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let var = (ss / x.len() as f64) as f32;
    let r = 1.0 / (var + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = g * (v * r);
    }
}

/// In-place RMSNorm of one vector (q/k norm of one head).
#[inline]
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let r = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(weight) {
        *v = g * (*v * r);
    }
}

/// Rotates one head vector in place (HF's rotate-half convention: pairs `(i, i + d/2)`) for
/// position `pos`, with `inv_freq` of length `d/2` and cos/sin multiplied by `scale` (YaRN's
/// attention factor; 1 otherwise).
#[inline]
pub fn rope(v: &mut [f32], pos: u32, inv_freq: &[f32], scale: f32) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let ang = f * pos as f32;
        let (s, c) = (ang as f64).sin_cos();
        let (s, c) = (s as f32 * scale, c as f32 * scale);
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/// The `(cos, sin)` pairs `rope` uses at position `pos` (one per frequency), computed the same
/// way, so that `rope_cs` with them equals `rope`.
#[inline]
pub fn rope_table(pos: u32, inv_freq: &[f32], scale: f32, cs: &mut [(f32, f32)]) {
    for (o, &f) in cs.iter_mut().zip(inv_freq) {
        let ang = f * pos as f32;
        let (s, c) = (ang as f64).sin_cos();
        *o = (c as f32 * scale, s as f32 * scale);
    }
}

/// `rope` with the position's `(cos, sin)` pairs precomputed by `rope_table`.
#[inline]
pub fn rope_cs(v: &mut [f32], cs: &[(f32, f32)]) {
    let half = cs.len();
    for (i, &(c, s)) in cs.iter().enumerate() {
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Keys with `q_pos - k_pos < window` are visible; `None` = all earlier keys.
    pub window: Option<usize>,
}

/// Paged causal attention: for each row `r` (at position `positions[r]` of sequence
/// `row_seq[r]`) and head, softmax over that sequence's cached keys `0..=pos` (within the
/// window) of `q·k · scale`, times the values. `q: [rows, heads·d]`, caches `[slot, kv_heads·d]`,
/// `out: [rows, heads·d]`.
///
/// The heads that share a KV head are done together, so each cached K/V row is read once per
/// row of the step; work is split over (row, KV head) pairs. Each head's arithmetic is the same
/// as one head alone (scores with `dot` in position order, one softmax, values summed in
/// position order), whatever the batch.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    layout: &StepLayout,
    dims: AttnDims,
    out: &mut [f32],
) {
    let d = dims.head_dim;
    let group = dims.heads / dims.kv_heads;
    let rows = layout.rows();
    if rows == 0 {
        return;
    }
    let visible = |r: usize| {
        let pos = layout.positions[r] as usize;
        let start = dims.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (start, pos)
    };
    let f = |idx: usize, o: &mut [f32]| {
        let (r, kh) = (idx / dims.kv_heads, idx % dims.kv_heads);
        let (start, pos) = visible(r);
        let qs = &q[r * dims.heads * d + kh * group * d..][..group * d];
        let blocks = &layout.seqs[layout.row_seq[r] as usize].blocks;
        attend_group(
            qs,
            k_cache,
            v_cache,
            blocks,
            layout.block_size,
            start,
            pos,
            kh,
            dims,
            o,
        );
    };
    let work: usize = (0..rows)
        .map(|r| visible(r).1 + 1 - visible(r).0)
        .sum::<usize>()
        * dims.heads
        * d;
    if work < 1 << 16 {
        out.chunks_mut(group * d)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_mut(group * d)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

/// Attention of the `group` query heads `qs` (`[group, d]`) that share KV head `kh`, over
/// positions `start..=pos` of one sequence, into `o` (`[group, d]`).
#[allow(clippy::too_many_arguments)]
fn attend_group(
    qs: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    blocks: &[u32],
    bs: usize,
    start: usize,
    pos: usize,
    kh: usize,
    dims: AttnDims,
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::matmul::{isa, Isa};
        match isa() {
            // SAFETY: the instruction set was detected at run time.
            Isa::Avx512 => unsafe {
                return attend_group_avx512(
                    qs, k_cache, v_cache, blocks, bs, start, pos, kh, dims, o,
                );
            },
            Isa::Avx2 => unsafe {
                return attend_group_avx2(
                    qs, k_cache, v_cache, blocks, bs, start, pos, kh, dims, o,
                );
            },
            Isa::Scalar => {}
        }
    }
    attend_group_body(qs, k_cache, v_cache, blocks, bs, start, pos, kh, dims, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_avx512(
    qs: &[f32],
    k: &[f32],
    v: &[f32],
    b: &[u32],
    bs: usize,
    s: usize,
    p: usize,
    kh: usize,
    dims: AttnDims,
    o: &mut [f32],
) {
    attend_group_body(qs, k, v, b, bs, s, p, kh, dims, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_avx2(
    qs: &[f32],
    k: &[f32],
    v: &[f32],
    b: &[u32],
    bs: usize,
    s: usize,
    p: usize,
    kh: usize,
    dims: AttnDims,
    o: &mut [f32],
) {
    attend_group_body(qs, k, v, b, bs, s, p, kh, dims, o)
}

/// Plain Rust (no fused multiply-add), compiled once per instruction set by the wrappers above:
/// the vector width changes, the results do not.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_body(
    qs: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    blocks: &[u32],
    bs: usize,
    start: usize,
    pos: usize,
    kh: usize,
    dims: AttnDims,
    o: &mut [f32],
) {
    let d = dims.head_dim;
    let group = qs.len() / d;
    let kvd = dims.kv_heads * d;
    let n = pos + 1 - start;
    SCORES.with(|sc| {
        let mut sc = sc.borrow_mut();
        sc.resize(group * n, 0.0);
        // Scores `[group][n]`, each cached key row read once for the whole group.
        let mut p = start;
        while p <= pos {
            let base = blocks[p / bs] as usize * bs;
            let end = (p / bs * bs + bs).min(pos + 1);
            for pp in p..end {
                let slot = base + pp % bs;
                let kv = &k_cache[slot * kvd + kh * d..][..d];
                for g in 0..group {
                    sc[g * n + pp - start] = dot(&qs[g * d..(g + 1) * d], kv) * dims.scale;
                }
            }
            p = end;
        }
        let mut inv = [0f32; 64];
        let mut big = Vec::new();
        let inv: &mut [f32] = if group <= 64 {
            &mut inv[..group]
        } else {
            big.resize(group, 0.0);
            &mut big
        };
        for g in 0..group {
            let row = &mut sc[g * n..(g + 1) * n];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            inv[g] = sum;
        }
        o.fill(0.0);
        let mut p = start;
        while p <= pos {
            let base = blocks[p / bs] as usize * bs;
            let end = (p / bs * bs + bs).min(pos + 1);
            for pp in p..end {
                let slot = base + pp % bs;
                let vv = &v_cache[slot * kvd + kh * d..][..d];
                for g in 0..group {
                    let wgt = sc[g * n + pp - start] / inv[g];
                    for (y, &x) in o[g * d..(g + 1) * d].iter_mut().zip(vv) {
                        *y += wgt * x;
                    }
                }
            }
            p = end;
        }
    });
}

/// `gate[i] = silu(gate[i]) · up[i]` (in place into `gate`).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    if gate.len() <= 16384 {
        for (a, &b) in gate.iter_mut().zip(up) {
            let s = *a / (1.0 + (-*a).exp());
            *a = s * b;
        }
        return;
    }
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| {
            for (a, &b) in g.iter_mut().zip(u) {
                let s = *a / (1.0 + (-*a).exp());
                *a = s * b;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensor::{DType, HostTensor};
    use half::bf16;

    #[test]
    fn matmul_matches_naive_for_odd_shapes_and_bf16() {
        let (rows, i, o) = (3, 37, 21);
        let w: Vec<f32> = (0..o * i)
            .map(|k| ((k * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let x: Vec<f32> = (0..rows * i)
            .map(|k| ((k * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let b: Vec<f32> = (0..o).map(|k| k as f32 / 10.0).collect();
        let wb: Vec<u8> = w
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let lin = Linear {
            weight: HostTensor::from_bytes("w", DType::BF16, vec![o, i], wb).unwrap(),
            bias: Some(HostTensor::from_f32("b", vec![o], &b).unwrap()),
        };
        let mut out = vec![0f32; rows * o];
        matmul(&x, rows, &lin, &mut out, &mut Vec::new());
        for r in 0..rows {
            for j in 0..o {
                let want: f32 = (0..i).map(|k| x[r * i + k] * w[j * i + k]).sum::<f32>() + b[j];
                assert!((out[r * o + j] - want).abs() < 1e-4, "{r},{j}");
            }
        }
    }

    #[test]
    fn rope_is_a_rotation_and_identity_at_zero() {
        let inv = [1.0f32, 0.1];
        let mut v = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut v, 0, &inv, 1.0);
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
        rope(&mut v, 5, &inv, 1.0);
        let n0 = 1.0f32 + 9.0;
        assert!((v[0] * v[0] + v[2] * v[2] - n0).abs() < 1e-5);
    }
}
