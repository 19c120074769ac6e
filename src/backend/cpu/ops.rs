//! The CPU reference kernels, one plain function per op family (the CUDA kernels of the same
//! names are tested against these): matmul over stored-type weights, RMSNorm, RoPE, paged
//! attention, SwiGLU. f32 arithmetic throughout; weights decoded row by row as they are read.
use crate::backend::StepLayout;
use crate::model::weights::Linear;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    static WBUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Output features computed per task: a tile of weight rows is decoded once and used by every
/// input row, so each weight is read once per call whatever the number of rows.
const TILE: usize = 16;

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
/// `out: [rows, out]`, `tmp` is scratch (`[out, rows]`, the transposed result).
pub fn matmul(x: &[f32], rows: usize, lin: &Linear, out: &mut [f32], tmp: &mut Vec<f32>) {
    let (o, i) = (lin.out_features(), lin.in_features());
    debug_assert_eq!(x.len(), rows * i);
    debug_assert_eq!(out.len(), rows * o);
    if rows == 0 {
        return;
    }
    tmp.resize(o * rows, 0.0);
    tmp.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(t, chunk)| {
            let j0 = t * TILE;
            let nj = chunk.len() / rows;
            WBUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.resize(nj * i, 0.0);
                for jj in 0..nj {
                    lin.weight
                        .decode_row(j0 + jj, &mut buf[jj * i..(jj + 1) * i]);
                }
                for r in 0..rows {
                    let xr = &x[r * i..(r + 1) * i];
                    for jj in 0..nj {
                        chunk[jj * rows + r] = dot(xr, &buf[jj * i..(jj + 1) * i]);
                    }
                }
            });
        });
    let bias = lin.bias.as_ref().map(|b| b.to_f32());
    out.par_chunks_mut(o).enumerate().for_each(|(r, orow)| {
        for j in 0..o {
            orow[j] = tmp[j * rows + r];
        }
        if let Some(b) = &bias {
            for (y, bj) in orow.iter_mut().zip(b) {
                *y += bj;
            }
        }
    });
}

/// RMSNorm of each `width`-row of `x` into `out`: `w · x / sqrt(mean(x²) + eps)` (HF order).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
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
/// position `pos`, with `inv_freq` of length `d/2`.
#[inline]
pub fn rope(v: &mut [f32], pos: u32, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let ang = f * pos as f32;
        let (s, c) = (ang as f64).sin_cos();
        let (s, c) = (s as f32, c as f32);
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
    let kvd = dims.kv_heads * d;
    out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
        let (r, h) = (idx / dims.heads, idx % dims.heads);
        let kh = h / group;
        let pos = layout.positions[r] as usize;
        let seq = layout.row_seq[r] as usize;
        let start = dims.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qv = &q[r * dims.heads * d + h * d..][..d];
        SCORES.with(|sc| {
            let mut sc = sc.borrow_mut();
            sc.clear();
            let mut max = f32::NEG_INFINITY;
            for p in start..=pos {
                let slot = layout.slot(seq, p);
                let kv = &k_cache[slot * kvd + kh * d..][..d];
                let s = dot(qv, kv) * dims.scale;
                max = max.max(s);
                sc.push(s);
            }
            let mut sum = 0f32;
            for s in sc.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (p, &e) in (start..=pos).zip(sc.iter()) {
                let slot = layout.slot(seq, p);
                let vv = &v_cache[slot * kvd + kh * d..][..d];
                let wgt = e / sum;
                for (y, &x) in o.iter_mut().zip(vv) {
                    *y += wgt * x;
                }
            }
        });
    });
}

/// `gate[i] = silu(gate[i]) · up[i]` (in place into `gate`).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
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
        rope(&mut v, 0, &inv);
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
        rope(&mut v, 5, &inv);
        let n0 = 1.0f32 + 9.0;
        assert!((v[0] * v[0] + v[2] * v[2] - n0).abs() < 1e-5);
    }
}
