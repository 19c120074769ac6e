//! GGUF files (v2 and v3, the `llama` architecture): header, metadata and tensor table parsed
//! over a memory map with checked arithmetic; tensors handed over as stored (F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1) under their Hugging Face names and in HF's `[out, in]` order; the config from the
//! `llama.*` keys; the tokenizer rebuilt from `tokenizer.ggml.*` the way transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it; the chat template from
//! `tokenizer.chat_template`.
//!
//! Nothing read from the file is trusted: every count, length, dimension and offset is checked
//! against the bytes that remain before anything is allocated from it, so a malformed file is an
//! [`Error::Gguf`] naming the file, the key or tensor and the value, never a panic or a huge
//! allocation.
//!
//! Layout (all little-endian):
//! ```text
//! "GGUF" u32:version u64:tensor_count u64:kv_count
//! kv_count × { string:key u32:value_type value }
//! tensor_count × { string:name u32:n_dims u64×n_dims:ne (ne0 fastest) u32:ggml_type u64:offset }
//! padding to general.alignment (default 32), then the data section; offsets are relative to it
//! string = u64:len bytes; array = u32:elem_type u64:count elements
//! ```
use crate::error::{Error, Result};
use crate::model::chat::ChatTemplate;
use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::tensor::{Backing, DType, HostTensor};
use crate::model::tokenizer::TextTokenizer;
use crate::model::weights::ModelWeights;
use crate::model::Model;
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

/// A metadata array, kept typed so that its memory is about its size in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as i64 when this is an array of integers (any width, values that fit).
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetaArray::U8(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I8(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U16(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I16(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U32(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I32(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "u8",
            MetaArray::I8(_) => "i8",
            MetaArray::U16(_) => "u16",
            MetaArray::I16(_) => "i16",
            MetaArray::U32(_) => "u32",
            MetaArray::I32(_) => "i32",
            MetaArray::U64(_) => "u64",
            MetaArray::I64(_) => "i64",
            MetaArray::F32(_) => "f32",
            MetaArray::F64(_) => "f64",
            MetaArray::Bool(_) => "bool",
            MetaArray::Str(_) => "string",
            MetaArray::Array(_) => "array",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(MetaArray),
}

impl MetaValue {
    /// An integer of any width, as i128 (so that every stored value fits).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(x) => x as i128,
            MetaValue::I8(x) => x as i128,
            MetaValue::U16(x) => x as i128,
            MetaValue::I16(x) => x as i128,
            MetaValue::U32(x) => x as i128,
            MetaValue::I32(x) => x as i128,
            MetaValue::U64(x) => x as i128,
            MetaValue::I64(x) => x as i128,
            _ => return None,
        })
    }

    /// A float, or an integer read as one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x as f64),
            MetaValue::F64(x) => Some(x),
            _ => self.as_int().map(|i| i as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> String {
        match self {
            MetaValue::U8(_) => "u8".into(),
            MetaValue::I8(_) => "i8".into(),
            MetaValue::U16(_) => "u16".into(),
            MetaValue::I16(_) => "i16".into(),
            MetaValue::U32(_) => "u32".into(),
            MetaValue::I32(_) => "i32".into(),
            MetaValue::U64(_) => "u64".into(),
            MetaValue::I64(_) => "i64".into(),
            MetaValue::F32(_) => "f32".into(),
            MetaValue::F64(_) => "f64".into(),
            MetaValue::Bool(_) => "bool".into(),
            MetaValue::Str(_) => "string".into(),
            MetaValue::Array(a) => format!("array of {} {}", a.len(), a.type_name()),
        }
    }
}

impl fmt::Display for MetaValue {
    /// Short rendering for error messages (long strings and arrays abbreviated).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::Str(s) if s.chars().count() > 60 => {
                let head: String = s.chars().take(60).collect();
                write!(f, "{head:?}…")
            }
            MetaValue::Str(s) => write!(f, "{s:?}"),
            MetaValue::Array(_) => write!(f, "<{}>", self.type_name()),
            MetaValue::Bool(b) => write!(f, "{b}"),
            MetaValue::F32(x) => write!(f, "{x}"),
            MetaValue::F64(x) => write!(f, "{x}"),
            other => write!(f, "{}", other.as_int().unwrap_or_default()),
        }
    }
}

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

/// The storage type of a GGML type id, or an error message naming it.
pub fn dtype_from_ggml(id: u32) -> std::result::Result<DType, String> {
    match id {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::Q4_0),
        3 => Ok(DType::Q4_1),
        8 => Ok(DType::Q8_0),
        30 => Ok(DType::BF16),
        other => Err(match ggml_type_name(other) {
            Some(n) => format!(
                "type {n} (ggml type {other}), which rear does not support \
                 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
            ),
            None => format!("unknown ggml type id {other}"),
        }),
    }
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
    pub dtype: DType,
    /// GGUF order: `ne0` (fastest-varying, the row length) first.
    pub dims: Vec<usize>,
    /// Offset from the start of the data section.
    pub offset: usize,
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

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
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

    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> std::result::Result<[u8; N], String> {
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
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> std::result::Result<usize, String> {
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

fn read_value(r: &mut Reader, ty: u32, what: &dyn Fn() -> String) -> std::result::Result<MetaValue, String> {
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

fn read_array(r: &mut Reader, what: &dyn Fn() -> String, depth: usize) -> std::result::Result<MetaArray, String> {
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
                return Err(format!("{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels", what()));
            }
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(r, &|| format!("element {i} of {}", what()), depth + 1)?);
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
            err(format!("not a GGUF file: {} bytes, too short for the GGUF magic", bytes.len()))
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
            1 => return Err(err("GGUF version 1 is not supported (only versions 2 and 3)".into())),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(err(format!(
                    "GGUF version {v} looks byte-swapped: big-endian GGUF files are not supported"
                )))
            }
            v => return Err(err(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        // Smallest tensor-info entry: name length + one dim + type + offset.
        let tensor_count = r.count(8 + 4 + 8 + 4 + 8, &|| "the tensor count".into()).map_err(err)?;
        // Smallest key/value: key length + value type + a one-byte value.
        let kv_count = r.count(8 + 4 + 1, &|| "the metadata key count".into()).map_err(err)?;

        let mut metadata = Vec::with_capacity(kv_count);
        let mut index = HashMap::with_capacity(kv_count);
        for i in 0..kv_count {
            let key = r.string(&|| format!("key of metadata entry {i}")).map_err(err)?;
            let what = || format!("metadata key `{key}`");
            let ty = r.u32(&|| format!("value type of {}", what())).map_err(err)?;
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
            let n_dims = r.u32(&|| format!("dimension count of {}", what())).map_err(err)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!(
                    "{} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})",
                    what()
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let ne = r.u64(&|| format!("dimension {d} of {}", what())).map_err(err)?;
                let ne = usize::try_from(ne)
                    .ok()
                    .filter(|&n| n <= i64::MAX as usize)
                    .ok_or_else(|| err(format!("{} has dimension {d} = {ne}, too large", what())))?;
                dims.push(ne);
            }
            let ty = r.u32(&|| format!("type of {}", what())).map_err(err)?;
            let dtype = dtype_from_ggml(ty).map_err(|m| err(format!("{} has {m}", what())))?;
            let offset = r.u64(&|| format!("data offset of {}", what())).map_err(err)?;
            let numel = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| err(format!("{} has dimensions {dims:?} whose product overflows", what())))?;
            if dims[0] % dtype.block_elems() != 0 {
                return Err(err(format!(
                    "{} has row length ne0 = {} that is not a multiple of the {} block size {}",
                    what(),
                    dims[0],
                    dtype.name(),
                    dtype.block_elems()
                )));
            }
            let nbytes = dtype.bytes_for(numel).ok_or_else(|| {
                err(format!("{} of {numel} {} elements overflows in bytes", what(), dtype.name()))
            })?;
            let offset = usize::try_from(offset)
                .map_err(|_| err(format!("{} has data offset {offset}, past the end of the file", what())))?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "{} has data offset {offset}, not a multiple of the alignment {alignment}",
                    what()
                )));
            }
            infos.push(TensorInfo { name, dtype, dims, offset, nbytes });
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
            let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.nbytes));
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

    /// A tensor by its GGUF name, as stored (a view of the map), with the HF-order shape (the
    /// GGUF dims reversed: a `[ne0 = in, ne1 = out]` matrix is `[out, in]`).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self
            .tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        self.host_tensor(t, name)
    }

    fn host_tensor(&self, t: &TensorInfo, as_name: &str) -> Result<HostTensor> {
        // The table was checked in `parse`, so this cannot fail; keep the error path anyway.
        HostTensor::new(
            as_name,
            t.dtype,
            t.shape(),
            self.backing.clone(),
            self.data_start + t.offset,
            t.nbytes,
        )
        .map_err(|e| self.err(format!("tensor `{}`: {e}", t.name)))
    }

    fn err(&self, m: String) -> Error {
        Error::Gguf(format!("{}: {m}", self.path.display()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        let v = self
            .get("general.architecture")
            .ok_or_else(|| self.err("metadata key `general.architecture` is missing".into()))?;
        v.as_str().ok_or_else(|| {
            self.err(format!("metadata key `general.architecture` is {v}, not a string"))
        })
    }

    fn req(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    /// A positive integer key (any integer width).
    fn usize_key(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(i) if i > 0 && i <= (u32::MAX as i128) * 1024 => Ok(Some(i as usize)),
                _ => Err(self.err(format!(
                    "metadata key `{key}` is {v} ({}), expected a positive integer",
                    v.type_name()
                ))),
            },
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.req(key)?;
        Ok(self.usize_key(key)?.expect("present"))
    }

    fn f64_key(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| {
                self.err(format!("metadata key `{key}` is {v} ({}), expected a number", v.type_name()))
            }),
        }
    }

    fn bool_key(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!("metadata key `{key}` is {v} ({}), expected a bool", v.type_name()))
            }),
        }
    }

    fn str_key(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                self.err(format!("metadata key `{key}` is {v} ({}), expected a string", v.type_name()))
            }),
        }
    }

    fn token_id_key(&self, key: &str, n_tokens: Option<usize>) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v
                    .as_int()
                    .filter(|&i| i >= 0 && i <= u32::MAX as i128)
                    .ok_or_else(|| self.err(format!("metadata key `{key}` is {v}, not a token id")))?;
                if let Some(n) = n_tokens {
                    if id as usize >= n {
                        return Err(self.err(format!(
                            "metadata key `{key}` is {id}, past the {n} tokens of `tokenizer.ggml.tokens`"
                        )));
                    }
                }
                Ok(Some(id as u32))
            }
        }
    }

    fn str_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(MetaArray::Str(v))) => Ok(Some(v)),
            Some(v) => Err(self.err(format!(
                "metadata key `{key}` is {}, expected an array of strings",
                v.type_name()
            ))),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Config
// ----------------------------------------------------------------------------------------------

/// The architectures this loader maps (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The model config from the `llama.*` keys (and the tensor table for `tie_word_embeddings` and
/// biases).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.architecture()?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(g.err(format!(
            "unsupported architecture `{arch}` (general.architecture; supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let k = |name: &str| format!("{arch}.{name}");
    if let Some(t) = g.tensor_infos().iter().find(|t| t.name.contains("_exps.")) {
        return Err(g.err(format!(
            "tensor `{}`: mixture-of-experts layers are not supported",
            t.name
        )));
    }
    let hidden_size = g.req_usize(&k("embedding_length"))?;
    let num_layers = g.req_usize(&k("block_count"))?;
    // Each layer has at least 9 tensors: a block count the tensor table cannot hold is an error
    // before anything is sized by it.
    if num_layers > g.tensor_infos().len() / 9 {
        return Err(g.err(format!(
            "`{}` is {num_layers} but the file has only {} tensors",
            k("block_count"),
            g.tensor_infos().len()
        )));
    }
    let intermediate_size = g.req_usize(&k("feed_forward_length"))?;
    let num_heads = g.req_usize(&k("attention.head_count"))?;
    let num_kv_heads = g.usize_key(&k("attention.head_count_kv"))?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(g.err(format!(
            "`{}` {num_heads} is not a multiple of `{}` {num_kv_heads}",
            k("attention.head_count"),
            k("attention.head_count_kv")
        )));
    }
    let rope_dim = g.usize_key(&k("rope.dimension_count"))?;
    let head_dim = match (g.usize_key(&k("attention.key_length"))?, rope_dim) {
        (Some(d), _) => d,
        (None, Some(d)) => d,
        (None, None) => {
            if hidden_size % num_heads != 0 {
                return Err(g.err(format!(
                    "`{}` {hidden_size} is not a multiple of `{}` {num_heads}",
                    k("embedding_length"),
                    k("attention.head_count")
                )));
            }
            hidden_size / num_heads
        }
    };
    if let Some(v) = g.usize_key(&k("attention.value_length"))? {
        if v != head_dim {
            return Err(g.err(format!(
                "`{}` {v} differs from the key length {head_dim}: not supported",
                k("attention.value_length")
            )));
        }
    }
    if let Some(r) = rope_dim {
        if r != head_dim {
            return Err(g.err(format!(
                "`{}` {r} differs from the head size {head_dim}: partial rotary embeddings are not supported",
                k("rope.dimension_count")
            )));
        }
    }
    if head_dim % 2 != 0 {
        return Err(g.err(format!("head size {head_dim} must be even for RoPE")));
    }
    // Sizes every later product is taken over; real models are far below this.
    const MAX_DIM: usize = 1 << 24;
    for (key, v) in [
        (k("embedding_length"), hidden_size),
        (k("feed_forward_length"), intermediate_size),
        (k("attention.head_count"), num_heads),
        ("head size".to_string(), head_dim),
    ] {
        if v > MAX_DIM {
            return Err(g.err(format!("`{key}` is {v}, larger than rear supports ({MAX_DIM})")));
        }
    }
    if num_heads * head_dim > MAX_DIM {
        return Err(g.err(format!(
            "{num_heads} heads × head size {head_dim} is larger than rear supports ({MAX_DIM})"
        )));
    }
    let eps_key = k("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = g.f64_key(&eps_key)?.ok_or_else(|| g.err(format!("metadata key `{eps_key}` is missing")))?;
    if rms_norm_eps <= 0.0 {
        return Err(g.err(format!("metadata key `{eps_key}` is {rms_norm_eps}, expected a positive number")));
    }
    let rope_theta = g.f64_key(&k("rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = match g.str_key(&k("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => {
            let key = k("rope.scaling.factor");
            let factor = g.f64_key(&key)?.ok_or_else(|| {
                g.err(format!("`{}` is \"linear\" but `{key}` is missing", k("rope.scaling.type")))
            })?;
            if factor <= 0.0 {
                return Err(g.err(format!("metadata key `{key}` is {factor}, expected a positive number")));
            }
            if factor == 1.0 {
                RopeScaling::Default
            } else {
                RopeScaling::Linear { factor }
            }
        }
        Some(other) => {
            return Err(g.err(format!(
                "unsupported rope scaling `{other}` (`{}`; supported: none, linear)",
                k("rope.scaling.type")
            )))
        }
    };
    if g.has_tensor("rope_freqs.weight") {
        return Err(g.err(
            "tensor `rope_freqs.weight` (per-frequency RoPE factors, Llama 3.1-style scaling) is not supported"
                .into(),
        ));
    }
    let n_tokens = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => Some(a.len()),
        _ => None,
    };
    let vocab_size = match g.usize_key(&k("vocab_size"))? {
        Some(v) => v,
        None => match n_tokens {
            Some(n) if n > 0 => n,
            _ => match g.tensor_infos().iter().find(|t| t.name == "token_embd.weight") {
                Some(t) if t.dims.len() == 2 => t.dims[1],
                _ => return Err(g.err(format!(
                    "cannot tell the vocabulary size: no `{}`, no `tokenizer.ggml.tokens`",
                    k("vocab_size")
                ))),
            },
        },
    };
    let max_position_embeddings = g.req_usize(&k("context_length"))?;
    let bos_token_id = g.token_id_key("tokenizer.ggml.bos_token_id", n_tokens)?;
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = g.token_id_key(key, n_tokens)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let qkv_bias = g.has_tensor("blk.0.attn_q.bias");
    let o_bias = g.has_tensor("blk.0.attn_output.bias");
    let mlp_bias = g.has_tensor("blk.0.ffn_gate.bias");
    Ok(ModelConfig {
        arch: Arch::Llama,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: rms_norm_eps as f32,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: !g.has_tensor("output.weight"),
        qkv_bias,
        o_bias,
        mlp_bias,
        qk_norm: false,
        sliding_window: vec![None; num_layers],
        bos_token_id,
        eos_token_ids,
    })
}

// ----------------------------------------------------------------------------------------------
// Tensors
// ----------------------------------------------------------------------------------------------

/// The HF name of a llama GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for a name this loader does not map.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor name (inverse of [`hf_tensor_name`]), for messages.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let g = match part {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// The row order that undoes llama.cpp's q/k permutation for one projection of `n_head` heads of
/// `head_dim` rows: row `h·d + j·d/2 + i` of the HF tensor is row `h·d + 2i + j` of the GGUF one
/// (llama.cpp interleaves the two rotary halves so that ggml's RoPE rotates adjacent pairs; HF
/// rotates halves). The same as transformers' `_reverse_permute_weights`.
pub fn unpermute_qk_rows(n_head: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut perm = Vec::with_capacity(n_head * head_dim);
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                perm.push(h * head_dim + 2 * i + j);
            }
        }
    }
    perm
}

fn unpermute(g: &GgufFile, t: HostTensor, n_head: usize, head_dim: usize, gguf_name: &str) -> Result<HostTensor> {
    let rows = n_head.saturating_mul(head_dim);
    // Only once the tensor (bounded by the file) has that many rows is the permutation built.
    let fits = !t.shape.is_empty() && t.shape.len() <= 2 && t.shape[0] == rows;
    let perm = if fits { unpermute_qk_rows(n_head, head_dim) } else { Vec::new() };
    match t.shape.len() {
        2 if fits => t.permute_rows(&perm),
        1 if fits => {
            // A bias: one element per row.
            let mut m = t;
            m.shape = vec![rows, 1];
            let mut p = m.permute_rows(&perm)?;
            p.shape = vec![rows];
            Ok(p)
        }
        _ => Err(g.err(format!(
            "tensor `{gguf_name}` has shape {:?} (GGUF dims {:?}), expected {rows} rows ({n_head} heads × {head_dim})",
            t.shape,
            t.shape.iter().rev().collect::<Vec<_>>()
        ))),
    }
}

/// Every tensor under its HF name, q/k rows un-permuted; unknown tensors are left out.
pub fn hf_tensors(g: &GgufFile, cfg: &ModelConfig) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::new();
    for info in g.tensor_infos() {
        let Some(hf) = hf_tensor_name(&info.name) else { continue };
        let t = g.host_tensor(info, &hf)?;
        let t = if info.name.contains(".attn_q.") {
            unpermute(g, t, cfg.num_heads, cfg.head_dim, &info.name)?
        } else if info.name.contains(".attn_k.") {
            unpermute(g, t, cfg.num_kv_heads, cfg.head_dim, &info.name)?
        } else {
            t
        };
        out.insert(hf, t);
    }
    Ok(out)
}

// ----------------------------------------------------------------------------------------------
// Tokenizer and chat template
// ----------------------------------------------------------------------------------------------

/// GPT-2's byte → printable-char table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    table
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (its
/// `GGUF_PRE_TOKENIZER_SPLITS`); `None`: GPT-2's byte-level pre-tokenizer with its own regex
/// (what transformers does for every other value, `smollm` and `gpt2` included).
pub fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer described by `tokenizer.ggml.*`, built as transformers builds it from the same
/// file (byte-level BPE for `tokenizer.ggml.model = "gpt2"`). `Ok(None)` when the file has no
/// tokenizer.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Option<TextTokenizer>> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

    let Some(kind) = g.str_key("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if kind != "gpt2" {
        return Err(g.err(format!(
            "unsupported tokenizer `{kind}` (tokenizer.ggml.model; supported: gpt2, byte-level BPE)"
        )));
    }
    let tokens = g
        .str_array("tokenizer.ggml.tokens")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| g.err("metadata key `tokenizer.ggml.tokens` is missing or empty".into()))?;
    if tokens.len() > u32::MAX as usize {
        return Err(g.err("`tokenizer.ggml.tokens` has more than 2^32 tokens".into()));
    }
    let merges = g
        .str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| g.err("metadata key `tokenizer.ggml.merges` is missing (a gpt2 tokenizer needs its merges)".into()))?;
    let types: Option<Vec<i64>> = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(MetaValue::Array(a)) => Some(a.as_ints().ok_or_else(|| {
            g.err(format!(
                "metadata key `tokenizer.ggml.token_type` is an array of {}, expected integers",
                a.type_name()
            ))
        })?),
        Some(v) => {
            return Err(g.err(format!(
                "metadata key `tokenizer.ggml.token_type` is {v}, expected an array of integers"
            )))
        }
    };

    // transformers' byte_level_tokenizer: a token written in the byte alphabet stays as it is,
    // any other is respelled byte by byte.
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = if in_alphabet(t) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            };
            (key, i as u32)
        })
        .collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let mut it = m.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) => pairs.push((a.to_string(), b.to_string())),
            _ => {
                return Err(g.err(format!(
                    "`tokenizer.ggml.merges` entry {i} is {m:?}, expected two tokens separated by one space"
                )))
            }
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| g.err(format!("tokenizer: cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = g.str_key("tokenizer.ggml.pre")?;
    match pre.and_then(pre_tokenizer_split) {
        Some(re) => {
            let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| g.err(format!("tokenizer: split regex for pre `{}`: {e}", pre.unwrap_or(""))))?;
            let seq = Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]);
            tok.with_pre_tokenizer(Some(seq));
        }
        None => {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    // add_gguf_special_tokens: control tokens spelled in the byte alphabet become special added
    // tokens; user-defined ones that are in the vocabulary become plain added tokens.
    if let Some(types) = &types {
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(t, &ty)| ty == TOKEN_TYPE_CONTROL && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        if !control.is_empty() {
            tok.add_special_tokens(&control);
        }
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(t, &ty)| ty == TOKEN_TYPE_USER_DEFINED && tok.token_to_id(t).is_some())
            .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        if !user.is_empty() {
            tok.add_tokens(&user);
        }
    }

    // Named special tokens from their ids; one that is not an added token yet is added as a
    // special one (TokenizersBackend.__init__).
    let n = Some(tokens.len());
    let named = [
        ("bos_token", g.token_id_key("tokenizer.ggml.bos_token_id", n)?),
        ("eos_token", g.token_id_key("tokenizer.ggml.eos_token_id", n)?),
        ("unk_token", g.token_id_key("tokenizer.ggml.unknown_token_id", n)?),
        ("pad_token", g.token_id_key("tokenizer.ggml.padding_token_id", n)?),
    ];
    let mut extra = Vec::new();
    for (_, id) in &named {
        if let Some(id) = id {
            let t = &tokens[*id as usize];
            let added = tok.get_added_tokens_decoder().values().any(|a| &a.content == t);
            if !added && !extra.iter().any(|a: &AddedToken| &a.content == t) {
                extra.push(AddedToken::from(t.clone(), true));
            }
        }
    }
    if !extra.is_empty() {
        tok.add_tokens(&extra);
    }
    let mut text = TextTokenizer::from_tokenizer(tok);
    for (name, id) in &named {
        text.set_special_token(name, id.map(|i| tokens[i as usize].as_str()));
    }
    let add_bos = g.bool_key("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = g.bool_key("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    text.set_add_bos_eos(add_bos, add_eos)
        .map_err(|e| g.err(format!("tokenizer: {e}")))?;
    Ok(Some(text))
}

/// The chat template of `tokenizer.chat_template`, rendered with the tokenizer's named special
/// tokens (as transformers passes its `special_tokens_map`). `Ok(None)` when there is none.
pub fn chat_template_from_gguf(g: &GgufFile, tok: Option<&TextTokenizer>) -> Result<Option<ChatTemplate>> {
    let Some(source) = g.str_key("tokenizer.chat_template")? else {
        return Ok(None);
    };
    let vars = tok.map(|t| t.special_tokens_map()).unwrap_or_default();
    ChatTemplate::with_vars(source.to_string(), vars)
        .map(Some)
        .map_err(|e| g.err(format!("`tokenizer.chat_template`: {e}")))
}

/// Loads a GGUF model file: config, weights (as stored, q/k un-permuted), tokenizer, template.
pub fn load_model(path: &Path) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let config = config_from_gguf(&g)?;
    let tensors = hf_tensors(&g, &config)?;
    let weights = ModelWeights::from_tensors(&config, tensors).map_err(|e| match e {
        Error::Weights(m) => g.err(with_gguf_names(&m)),
        other => other,
    })?;
    let tokenizer = tokenizer_from_gguf(&g)?;
    let template = chat_template_from_gguf(&g, tokenizer.as_ref())?;
    Ok(Model { path: path.to_owned(), config, weights, tokenizer, template })
}

/// Adds the GGUF name after each HF tensor name quoted in a weights message.
fn with_gguf_names(m: &str) -> String {
    let mut out = String::with_capacity(m.len() + 32);
    let mut rest = m;
    while let Some(start) = rest.find('`') {
        let Some(len) = rest[start + 1..].find('`') else { break };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start + len + 2]);
        if let Some(gn) = gguf_tensor_name(name) {
            out.push_str(&format!(" (GGUF `{gn}`)"));
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in ["token_embd.weight", "output.weight", "output_norm.weight", "blk.12.attn_q.weight",
            "blk.0.attn_output.bias", "blk.3.ffn_down.weight", "blk.29.ffn_norm.weight", "blk.1.attn_norm.weight"] {
            let hf = hf_tensor_name(g).unwrap();
            assert_eq!(gguf_tensor_name(&hf).as_deref(), Some(g), "{hf}");
        }
        assert_eq!(hf_tensor_name("blk.4.attn_k.weight").unwrap(), "model.layers.4.self_attn.k_proj.weight");
        assert!(hf_tensor_name("rope_freqs.weight").is_none());
        assert!(hf_tensor_name("blk.x.attn_q.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2): HF row (h, j, i) → GGUF row (h, i, j).
        let (n_head, d) = (3, 8);
        let mut gguf_of_hf = vec![0; n_head * d];
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..d / 2 {
                    gguf_of_hf[h * d + j * d / 2 + i] = h * d + 2 * i + j;
                }
            }
        }
        assert_eq!(unpermute_qk_rows(n_head, d), gguf_of_hf);
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[173], 'Ń');
    }

    #[test]
    fn messages_gain_gguf_names() {
        let m = with_gguf_names("tensor `model.layers.0.mlp.down_proj.weight` is missing");
        assert_eq!(m, "tensor `model.layers.0.mlp.down_proj.weight` (GGUF `blk.0.ffn_down.weight`) is missing");
    }
}
