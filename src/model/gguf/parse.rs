//! The GGUF reader: header, metadata and tensor table parsed over the file's bytes (a memory map
//! or an owned buffer) with checked arithmetic, GGML tensor type ids (kept as stored, or
//! dequantized to f32 at load: see [`StoredType`]), and [`GgufFile`]'s tensor access.
//!
//! Layout (all little-endian):
//! ```text
//! "GGUF" u32:version u64:tensor_count u64:kv_count
//! kv_count × { string:key u32:value_type value }
//! tensor_count × { string:name u32:n_dims u64×n_dims:ne (ne0 fastest) u32:ggml_type u64:offset }
//! padding to general.alignment (default 32), then the data section; offsets are relative to it
//! string = u64:len bytes; array = u32:elem_type u64:count elements
//! ```
use super::meta::{MetaArray, MetaValue};
use super::quants::{self, QuantType};
use crate::error::{Error, Result};
use crate::model::tensor::{Backing, DType, HostTensor};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Deepest nesting of arrays accepted in metadata (real files use 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// GGML allows at most this many dimensions.
const MAX_DIMS: u32 = 4;

/// GGML tensor type ids and names (ggml.h `enum ggml_type`), for messages about unsupported ones.
fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// How a GGUF tensor's type is held once loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredType {
    /// Kept as stored; the backends decode it inside their matrix products.
    Native(DType),
    /// Dequantized to an f32 tensor at load (the K-quants, Q5_0, Q5_1).
    Dequantized(QuantType),
}

impl StoredType {
    /// The GGML name of the type in the file.
    pub fn name(self) -> &'static str {
        match self {
            StoredType::Native(d) => d.name(),
            StoredType::Dequantized(q) => q.name(),
        }
    }

    /// Elements per block in the file.
    pub fn block_elems(self) -> usize {
        match self {
            StoredType::Native(d) => d.block_elems(),
            StoredType::Dequantized(q) => q.block_elems(),
        }
    }

    /// Bytes `n` elements take in the file, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            StoredType::Native(d) => d.bytes_for(n),
            StoredType::Dequantized(q) => q.bytes_for(n),
        }
    }

    /// The type the tensor is handed over as ([`DType::F32`] for a dequantized one).
    pub fn dtype(self) -> DType {
        match self {
            StoredType::Native(d) => d,
            StoredType::Dequantized(_) => DType::F32,
        }
    }
}

/// The GGML types rear loads, for messages.
const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// How a GGML type id is held once loaded, or an error message naming it.
pub fn stored_type_from_ggml(id: u32) -> std::result::Result<StoredType, String> {
    let native = match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        30 => DType::BF16,
        other => {
            if let Some(q) = QuantType::from_ggml(other) {
                return Ok(StoredType::Dequantized(q));
            }
            return Err(match ggml_type_name(other) {
                Some(n) => format!(
                    "type {n} (ggml type {other}), which rear does not support \
                     (supported: {SUPPORTED_TYPES})"
                ),
                None => format!("unknown ggml type id {other}"),
            });
        }
    };
    Ok(StoredType::Native(native))
}

/// The type a tensor of a GGML type id is handed over as (F32 for the types dequantized at
/// load), or an error message naming the type.
pub fn dtype_from_ggml(id: u32) -> std::result::Result<DType, String> {
    stored_type_from_ggml(id).map(StoredType::dtype)
}

/// The GGML type id of a storage type.
pub fn ggml_type_of(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 8,
        DType::BF16 => 30,
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// The type as handed over by [`GgufFile::tensor`] (F32 for a dequantized type).
    pub dtype: DType,
    /// The type in the file.
    pub stored: StoredType,
    /// GGUF order: `ne0` (fastest-varying, the row length) first.
    pub dims: Vec<usize>,
    /// Offset from the start of the data section.
    pub offset: usize,
    /// Bytes in the file.
    pub nbytes: usize,
}

impl TensorInfo {
    /// The shape in HF order (outermost first): the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file: metadata and tensor table over its memory map.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    pub version: u32,
    metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: usize,
    /// Absolute file offset of the data section.
    pub data_start: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "file is truncated: {} needs {n} bytes at offset {} but the file has {} bytes",
                what(),
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.arr::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.arr::<8>(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes that remain.
    fn count(
        &mut self,
        min_size: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let fits = (n as u128) * (min_size.max(1) as u128) <= self.remaining() as u128;
        if !fits {
            return Err(format!(
                "{} is {n}, more than the {} bytes left in the file can hold",
                what(),
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{} is not valid UTF-8", what()))
    }
}

/// Smallest encoding of one value of metadata type `ty` (for count checks), or `None` for an
/// unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn bad_type(ty: u32, what: &dyn Fn() -> String) -> String {
    format!("{} has unknown metadata value type {ty}", what())
}

fn read_value(
    r: &mut Reader,
    ty: u32,
    what: &dyn Fn() -> String,
) -> std::result::Result<MetaValue, String> {
    Ok(match ty {
        0 => MetaValue::U8(r.arr::<1>(what)?[0]),
        1 => MetaValue::I8(r.arr::<1>(what)?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(r.arr(what)?)),
        3 => MetaValue::I16(i16::from_le_bytes(r.arr(what)?)),
        4 => MetaValue::U32(u32::from_le_bytes(r.arr(what)?)),
        5 => MetaValue::I32(i32::from_le_bytes(r.arr(what)?)),
        6 => MetaValue::F32(f32::from_le_bytes(r.arr(what)?)),
        7 => MetaValue::Bool(r.arr::<1>(what)?[0] != 0),
        8 => MetaValue::Str(r.string(what)?),
        9 => MetaValue::Array(read_array(r, what, 1)?),
        10 => MetaValue::U64(u64::from_le_bytes(r.arr(what)?)),
        11 => MetaValue::I64(i64::from_le_bytes(r.arr(what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(r.arr(what)?)),
        _ => return Err(bad_type(ty, what)),
    })
}

fn read_array(
    r: &mut Reader,
    what: &dyn Fn() -> String,
    depth: usize,
) -> std::result::Result<MetaArray, String> {
    let ety = r.u32(&|| format!("element type of {}", what()))?;
    let min = min_value_size(ety).ok_or_else(|| bad_type(ety, &|| format!("array {}", what())))?;
    let n = r.count(min, &|| format!("element count of {}", what()))?;
    fn fixed<T, const N: usize>(
        r: &mut Reader,
        n: usize,
        what: &dyn Fn() -> String,
        f: impl Fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        // `count` checked n·N against the remaining bytes, so this cannot over-allocate.
        let bytes = r.take(n * N, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    Ok(match ety {
        0 => MetaArray::U8(r.take(n, what)?.to_vec()),
        1 => MetaArray::I8(fixed(r, n, what, |a: [u8; 1]| a[0] as i8)?),
        2 => MetaArray::U16(fixed(r, n, what, u16::from_le_bytes)?),
        3 => MetaArray::I16(fixed(r, n, what, i16::from_le_bytes)?),
        4 => MetaArray::U32(fixed(r, n, what, u32::from_le_bytes)?),
        5 => MetaArray::I32(fixed(r, n, what, i32::from_le_bytes)?),
        6 => MetaArray::F32(fixed(r, n, what, f32::from_le_bytes)?),
        7 => MetaArray::Bool(fixed(r, n, what, |a: [u8; 1]| a[0] != 0)?),
        10 => MetaArray::U64(fixed(r, n, what, u64::from_le_bytes)?),
        11 => MetaArray::I64(fixed(r, n, what, i64::from_le_bytes)?),
        12 => MetaArray::F64(fixed(r, n, what, f64::from_le_bytes)?),
        8 => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(r.string(&|| format!("element {i} of {}", what()))?);
            }
            MetaArray::Str(v)
        }
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                    what()
                ));
            }
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(
                    r,
                    &|| format!("element {i} of {}", what()),
                    depth + 1,
                )?);
            }
            MetaArray::Array(v)
        }
        _ => unreachable!("min_value_size accepted type {ety}"),
    })
}

impl GgufFile {
    /// Memory-maps and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 4 {
            return Err(Error::Gguf(format!(
                "{}: not a GGUF file: {len} bytes, too short for the GGUF magic",
                path.display()
            )));
        }
        // SAFETY: the map is read-only; the file is not expected to change while we run (as with
        // every memory-mapped model loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Backing::Mmap(Arc::new(mmap)))
    }

    /// Parses GGUF bytes (`path` is only used in messages).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, Backing::Owned(Arc::new(bytes)))
    }

    fn parse(path: &Path, backing: Backing) -> Result<Self> {
        let err = |m: String| Error::Gguf(format!("{}: {m}", path.display()));
        let bytes: &[u8] = match &backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        };
        let mut r = Reader { b: bytes, pos: 0 };
        let magic = r.take(4, &|| "the GGUF magic".into()).map_err(|_| {
            err(format!(
                "not a GGUF file: {} bytes, too short for the GGUF magic",
                bytes.len()
            ))
        })?;
        if magic != MAGIC {
            return Err(err(format!(
                "not a GGUF file: bad magic {:02x?} (expected \"GGUF\")",
                magic
            )));
        }
        let version = r.u32(&|| "the version".into()).map_err(err)?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(err(
                    "GGUF version 1 is not supported (only versions 2 and 3)".into(),
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(err(format!(
                    "GGUF version {v} looks byte-swapped: big-endian GGUF files are not supported"
                )))
            }
            v => {
                return Err(err(format!(
                    "unsupported GGUF version {v} (supported: 2, 3)"
                )))
            }
        }
        // Smallest tensor-info entry: name length + one dim + type + offset.
        let tensor_count = r
            .count(8 + 4 + 8 + 4 + 8, &|| "the tensor count".into())
            .map_err(err)?;
        // Smallest key/value: key length + value type + a one-byte value.
        let kv_count = r
            .count(8 + 4 + 1, &|| "the metadata key count".into())
            .map_err(err)?;

        let mut metadata = Vec::with_capacity(kv_count);
        let mut index = HashMap::with_capacity(kv_count);
        for i in 0..kv_count {
            let key = r
                .string(&|| format!("key of metadata entry {i}"))
                .map_err(err)?;
            let what = || format!("metadata key `{key}`");
            let ty = r
                .u32(&|| format!("value type of {}", what()))
                .map_err(err)?;
            let v = read_value(&mut r, ty, &what).map_err(err)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, v));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= (1 << 30) => a as usize,
                _ => {
                    return Err(err(format!(
                        "metadata key `general.alignment` is {v}, not a power of two"
                    )))
                }
            },
        };

        let mut infos = Vec::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let name = r.string(&|| format!("name of tensor {i}")).map_err(err)?;
            let what = || format!("tensor `{name}`");
            let n_dims = r
                .u32(&|| format!("dimension count of {}", what()))
                .map_err(err)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!(
                    "{} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})",
                    what()
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let ne = r
                    .u64(&|| format!("dimension {d} of {}", what()))
                    .map_err(err)?;
                let ne = usize::try_from(ne)
                    .ok()
                    .filter(|&n| n <= i64::MAX as usize)
                    .ok_or_else(|| {
                        err(format!("{} has dimension {d} = {ne}, too large", what()))
                    })?;
                dims.push(ne);
            }
            let ty = r.u32(&|| format!("type of {}", what())).map_err(err)?;
            let stored =
                stored_type_from_ggml(ty).map_err(|m| err(format!("{} has {m}", what())))?;
            let offset = r
                .u64(&|| format!("data offset of {}", what()))
                .map_err(err)?;
            let numel = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    err(format!(
                        "{} has dimensions {dims:?} whose product overflows",
                        what()
                    ))
                })?;
            if dims[0] % stored.block_elems() != 0 {
                return Err(err(format!(
                    "{} has row length ne0 = {} that is not a multiple of the {} block size {}",
                    what(),
                    dims[0],
                    stored.name(),
                    stored.block_elems()
                )));
            }
            let nbytes = stored.bytes_for(numel).ok_or_else(|| {
                err(format!(
                    "{} of {numel} {} elements overflows in bytes",
                    what(),
                    stored.name()
                ))
            })?;
            let offset = usize::try_from(offset).map_err(|_| {
                err(format!(
                    "{} has data offset {offset}, past the end of the file",
                    what()
                ))
            })?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "{} has data offset {offset}, not a multiple of the alignment {alignment}",
                    what()
                )));
            }
            infos.push(TensorInfo {
                name,
                dtype: stored.dtype(),
                stored,
                dims,
                offset,
                nbytes,
            });
        }

        let header_end = r.pos;
        let data_start = header_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| err("the data section's start overflows".into()))?;
        if tensor_count > 0 && data_start > bytes.len() {
            return Err(err(format!(
                "file is truncated: the data section starts at offset {data_start} but the file has {} bytes",
                bytes.len()
            )));
        }
        let mut tensor_index = HashMap::with_capacity(infos.len());
        for (i, t) in infos.iter().enumerate() {
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.nbytes));
            if end.is_none_or(|e| e > bytes.len()) {
                return Err(err(format!(
                    "tensor `{}`: data at offset {} + {} bytes (data section at {data_start}) runs past the end of the file ({} bytes)",
                    t.name,
                    t.offset,
                    t.nbytes,
                    bytes.len()
                )));
            }
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(err(format!("tensor `{}` appears twice", t.name)));
            }
        }
        Ok(GgufFile {
            path: path.to_owned(),
            backing,
            version,
            metadata,
            index,
            tensors: infos,
            tensor_index,
            alignment,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor table, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    /// A tensor by its GGUF name, as stored (a view of the map) or, for a type rear dequantizes at
    /// load, as an owned f32 tensor; with the HF-order shape (the GGUF dims reversed: a
    /// `[ne0 = in, ne1 = out]` matrix is `[out, in]`).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self
            .tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        self.host_tensor(t, name)
    }

    pub(super) fn host_tensor(&self, t: &TensorInfo, as_name: &str) -> Result<HostTensor> {
        // The table was checked in `parse`, so this cannot fail; keep the error paths anyway.
        let start = self.data_start + t.offset;
        if let StoredType::Dequantized(q) = t.stored {
            let bytes: &[u8] = match &self.backing {
                Backing::Mmap(m) => m,
                Backing::Owned(v) => v,
            };
            let fail = |m: String| self.err(format!("tensor `{}` ({}): {m}", t.name, q.name()));
            let raw = start
                .checked_add(t.nbytes)
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| fail("data runs past the end of the file".into()))?;
            let f32_bytes = quants::dequantize_to_le_bytes(q, raw).map_err(fail)?;
            return HostTensor::from_bytes(as_name, DType::F32, t.shape(), f32_bytes)
                .map_err(|e| fail(e.to_string()));
        }
        HostTensor::new(
            as_name,
            t.dtype,
            t.shape(),
            self.backing.clone(),
            start,
            t.nbytes,
        )
        .map_err(|e| self.err(format!("tensor `{}`: {e}", t.name)))
    }

    pub(super) fn err(&self, m: String) -> Error {
        Error::Gguf(format!("{}: {m}", self.path.display()))
    }
}
