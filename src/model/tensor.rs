//! Host tensors kept as stored (memory-mapped file bytes or an owned buffer), their storage
//! types, and the exact per-row decoding of every type to f32 (bf16, f16, f32 and the ggml
//! block-quantised Q8_0, Q4_0, Q4_1).
use crate::error::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

/// Storage type of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// ggml block of 32: f16 scale `d`, 32 × i8; x = d·q.
    Q8_0,
    /// ggml block of 32: f16 scale `d`, 16 bytes of nibbles; x = d·(q − 8).
    Q4_0,
    /// ggml block of 32: f16 scale `d`, f16 min `m`, 16 bytes of nibbles; x = d·q + m.
    Q4_1,
}

impl DType {
    /// Elements per block (1 for plain float types).
    pub fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
        }
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if n % self.block_elems() != 0 {
            return None;
        }
        (n / self.block_elems()).checked_mul(self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
        }
    }
}

/// Where a tensor's bytes live.
#[derive(Clone)]
pub enum Backing {
    Mmap(Arc<Mmap>),
    Owned(Arc<Vec<u8>>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A tensor as stored: name, type, shape (outermost first, HF order: `[out, in]` for a
/// matrix) and a byte range of its backing. Cloning shares the bytes.
#[derive(Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    backing: Backing,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.name, self.dtype.name(), self.shape)
    }
}

impl HostTensor {
    /// A view of `len` bytes at `offset` of `backing`; checks the range and that the byte
    /// count matches the shape.
    pub fn new(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        backing: Backing,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Weights(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let row = *shape.last().unwrap_or(&1);
        let want = dtype
            .bytes_for(numel)
            .filter(|_| row % dtype.block_elems() == 0);
        if want != Some(len) {
            return Err(Error::Weights(format!(
                "tensor `{name}`: {len} bytes do not hold a {} tensor of shape {shape:?}",
                dtype.name()
            )));
        }
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > backing.bytes().len()) {
            return Err(Error::Weights(format!(
                "tensor `{name}`: data range {offset}+{len} is past the end of its file ({} bytes)",
                backing.bytes().len()
            )));
        }
        Ok(HostTensor {
            name: name.to_owned(),
            dtype,
            shape,
            backing,
            offset,
            len,
        })
    }

    /// An owned f32 tensor (tests, small derived tensors).
    pub fn from_f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Result<Self> {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        let len = bytes.len();
        Self::new(
            name,
            DType::F32,
            shape,
            Backing::Owned(Arc::new(bytes)),
            0,
            len,
        )
    }

    /// An owned tensor of any type from raw bytes.
    pub fn from_bytes(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len();
        Self::new(name, dtype, shape, Backing::Owned(Arc::new(bytes)), 0, len)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.backing.bytes()[self.offset..self.offset + self.len]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of rows (product of all but the last dimension).
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)]
            .iter()
            .product()
    }

    /// Elements per row (the last dimension).
    pub fn row_len(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    pub fn row_bytes(&self) -> usize {
        self.len / self.rows().max(1)
    }

    /// Raw bytes of row `r`.
    pub fn row_raw(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Decodes row `r` into `out` (`out.len() == row_len()`).
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        decode(self.dtype, self.row_raw(r), out)
    }

    /// The whole tensor as f32 (for small tensors: norms, biases, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        decode(self.dtype, self.bytes(), &mut out);
        out
    }

    /// Row `r` as `&[f32]` without a copy when the tensor is f32 and suitably aligned.
    pub fn row_f32_slice(&self, r: usize) -> Option<&[f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.row_raw(r)).ok()
    }

    /// The same bytes with rows reordered: row `i` of the result is row `perm[i]` of `self`
    /// (an owned copy; used to undo GGUF's q/k row permutation).
    pub fn permute_rows(&self, perm: &[usize]) -> Result<Self> {
        let mut bytes = Vec::with_capacity(self.len);
        for &p in perm {
            bytes.extend_from_slice(self.row_raw(p));
        }
        Self::from_bytes(&self.name, self.dtype, self.shape.clone(), bytes)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `bytes` of type `dtype` into `out`, exactly as ggml / torch define each type.
pub fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                    *x = (q as i8) as f32 * d;
                }
            }
        }
        DType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for (j, &q) in b[4..20].iter().enumerate() {
                    o[j] = (q & 0x0f) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_half_types() {
        let vals = [1.5f32, -2.25, 0.0, 256.0];
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let t = HostTensor::from_bytes("x", DType::BF16, vec![2, 2], bf).unwrap();
        assert_eq!(t.to_f32(), vals);
        let mut row = [0f32; 2];
        t.decode_row(1, &mut row);
        assert_eq!(row, [0.0, 256.0]);
    }

    #[test]
    fn q4_1_block_layout() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0x3a; // low nibble 10 -> element 0, high nibble 3 -> element 16
        let mut out = [0f32; 32];
        decode(DType::Q4_1, &b, &mut out);
        assert_eq!(out[0], 4.0);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn rejects_inconsistent_sizes() {
        let e = HostTensor::from_bytes("w", DType::F16, vec![3, 3], vec![0; 17]).unwrap_err();
        assert!(e.to_string().contains("`w`"));
        assert!(HostTensor::from_bytes("q", DType::Q8_0, vec![2, 16], vec![0; 34]).is_err());
    }
}
