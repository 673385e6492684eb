//! A GGUF reader that treats the file as hostile: every count, length and offset is
//! checked against the bytes actually present before anything is allocated or sliced.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::metadata::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, Result};
use crate::format::storage::{decode, StorageType};
use crate::format::GgmlType;

/// Longest metadata array lowbit accepts (a 262k-token vocabulary is far below it).
const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest nesting of arrays inside arrays.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Longest tensor name (llama.cpp's GGML_MAX_NAME is 64; be generous but bounded).
const MAX_NAME_LEN: u64 = 4096;

/// A tensor's storage: one lowbit knows (a ggml type, or a lowbit-native or VQ format
/// named by metadata: see [`super::native`]), or a raw type id it does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// Storage lowbit can size and decode.
    Known(StorageType),
    /// A type id lowbit does not know; the tensor is listed but cannot be read.
    Unknown(u32),
}

impl TensorType {
    /// The ggml type, for a tensor stored as one.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            TensorType::Known(StorageType::Ggml(t)) => Some(t),
            _ => None,
        }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorType::Known(st) if st.is_ggml() => write!(f, "{st}"),
            TensorType::Known(st) => write!(f, "{st} (lowbit-native)"),
            TensorType::Unknown(id) => write!(f, "unknown type {id}"),
        }
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (row length) first, as ggml stores them.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: TensorType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Bytes of data, when the type is known.
    pub n_bytes: Option<u64>,
    /// Which of the file's byte segments holds the data (0: the GGUF itself; a model
    /// folder presented as GGUF has one per safetensors shard).
    pub(crate) segment: usize,
    /// Absolute position of the data in its segment.
    pub(crate) start: u64,
    /// What is done to the stored bytes on reading (nothing, for a real GGUF).
    pub(crate) transform: Transform,
}

/// A change applied to a tensor's stored bytes when they are read: how a Hugging Face
/// checkpoint's tensors become what llama.cpp's converter would have written, without
/// a converted copy on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Transform {
    /// Widen a float vector stored as this type to f32 (1-D tensors: llama.cpp keeps
    /// them in f32), adding `.1` to every value (Gemma stores norm weights as w − 1).
    pub to_f32: Option<(GgmlType, f32)>,
    /// Regroup each head's rows from "rotate half" order into adjacent pairs: llama.cpp's
    /// `permute(w, n_head)` for q/k projections of llama-architecture models.
    pub permute_heads: Option<usize>,
}

impl Transform {
    /// Whether the stored bytes are used unchanged.
    pub fn is_none(&self) -> bool {
        self.to_f32.is_none() && self.permute_heads.is_none()
    }

    /// Applies the transform to `bytes` (a tensor of `rows` rows).
    fn apply(&self, bytes: &[u8], rows: usize) -> Vec<u8> {
        let mut out = match self.to_f32 {
            Some((from, add)) => {
                let n = bytes.len() / from.type_size();
                let mut v = crate::format::dequantize_to_vec(from, bytes, n).expect("a float type decodes");
                v.iter_mut().for_each(|x| *x += add);
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            None => bytes.to_vec(),
        };
        if let Some(n_head) = self.permute_heads {
            out = permute_heads(&out, out.len() / rows.max(1), n_head, false);
        }
        out
    }
}

/// llama.cpp's `permute(w, n_head)` on rows of `row_len` elements: within each head, row
/// `j·h/2 + i` (rotate-half order) moves to `2i + j` (adjacent pairs); `inverse` undoes it
/// (how a Hugging Face folder stores the rows).
pub(crate) fn permute_heads<T: Copy>(src: &[T], row_len: usize, n_head: usize, inverse: bool) -> Vec<T> {
    let rows = src.len() / row_len.max(1);
    let per_head = rows / n_head.max(1);
    let half = per_head / 2;
    let mut out = src.to_vec();
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let (paired, halves) = (h * per_head + i * 2 + j, h * per_head + j * half + i);
                let (to, from) = if inverse { (halves, paired) } else { (paired, halves) };
                out[to * row_len..(to + 1) * row_len].copy_from_slice(&src[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    out
}

/// The bytes behind a [`GgufFile`]: a memory map, or an owned buffer (tests, fuzzing).
enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Backing {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed header plus a memory map of the whole file.
pub struct GgufFile {
    path: PathBuf,
    segments: Vec<std::sync::Arc<Backing>>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Index into `tensors` by name.
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> Error {
        Error::format(self.path, format!("{} (at byte {})", what.into(), self.pos))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(
                self.err(format!("truncated: {what} needs {n} bytes but only {} remain in the file", self.remaining()))
            );
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &str, max: u64) -> Result<String> {
        let len = self.u64(what)?;
        if len > max {
            return Err(self.err(format!("{what}: length {len} exceeds the limit of {max} bytes")));
        }
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        let what = format!("value of '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(&what)?),
            ValueType::I8 => Value::I8(self.u8(&what)? as i8),
            ValueType::U16 => Value::U16(self.u16(&what)?),
            ValueType::I16 => Value::I16(self.u16(&what)? as i16),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(self.u32(&what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(self.u64(&what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(&what)?)),
            ValueType::Bool => match self.u8(&what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte is {b}, expected 0 or 1"))),
            },
            ValueType::String => Value::String(self.string(&what, u64::MAX)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let id = self.u32(&what)?;
                let elem = ValueType::from_id(id)
                    .ok_or_else(|| self.err(format!("{what}: unknown array element type {id}")))?;
                let n = self.u64(&what)?;
                if n > MAX_ARRAY_LEN {
                    return Err(self.err(format!("{what}: array of {n} elements exceeds the limit of {MAX_ARRAY_LEN}")));
                }
                if n.saturating_mul(elem.min_size()) > self.remaining() {
                    return Err(self.err(format!(
                        "truncated: {what} claims {n} elements but only {} bytes remain",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

impl GgufFile {
    /// Opens and validates `path`. Cost is proportional to the header, not the file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::format(path, "is a directory, not a GGUF file"));
        }
        if meta.len() < 24 {
            return Err(Error::format(path, format!("too short to be GGUF ({} bytes)", meta.len())));
        }
        // SAFETY: memmap2's `map` is unsafe because another process could change or
        // truncate the file under the map. The map is read-only, lowbit never writes a
        // file it has open for reading (outputs go to a temp file renamed into place, and
        // never onto an input), and every length read from it is checked against the
        // map's size before slicing; a change by another process is outside what any
        // mmap reader can defend against.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Backing::Mapped(mmap))
    }

    /// Parses a GGUF image held in memory; `name` is used in error messages.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>) -> Result<GgufFile> {
        if bytes.len() < 24 {
            return Err(Error::format(name, format!("too short to be GGUF ({} bytes)", bytes.len())));
        }
        Self::parse(name.as_ref().to_path_buf(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, mmap: Backing) -> Result<GgufFile> {
        let mut c = Cursor { buf: &mmap, pos: 0, path: &path };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(&path, format!("not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::unsupported(
                    &path,
                    "GGUF version 1 (pre-2023 llama.cpp); convert it with a current llama.cpp",
                ))
            }
            v if v.swap_bytes() <= 3 => {
                return Err(Error::unsupported(&path, "big-endian GGUF; lowbit reads little-endian files"))
            }
            v => return Err(Error::format(&path, format!("unknown GGUF version {v}"))),
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each key–value pair needs at least 8 (key length) + 4 (type) + 1 bytes; each
        // tensor info at least 8 + 4 + 4 + 8. Reject lying counts before allocating.
        if n_kv.saturating_mul(13) > c.remaining() {
            return Err(c.err(format!("header claims {n_kv} metadata entries, more than the file can hold")));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"), 65536)?;
            let id = c.u32(&format!("type of '{key}'"))?;
            let ty =
                ValueType::from_id(id).ok_or_else(|| c.err(format!("metadata '{key}' has unknown value type {id}")))?;
            let value = c.value(ty, &key, 0)?;
            if !keys.insert(key.clone()) {
                return Err(c.err(format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::format(
                        &path,
                        format!("general.alignment is {}, expected a power of two", v.summary()),
                    ))
                }
            },
        };
        if n_tensors.saturating_mul(24) > c.remaining() {
            return Err(c.err(format!("header claims {n_tensors} tensors, more than the file can hold")));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut by_name = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor #{i}"), MAX_NAME_LEN)?;
            let n_dims = c.u32(&format!("dimension count of '{name}'"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(c.err(format!("tensor '{name}' has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&format!("dimensions of '{name}'"))?);
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64))
                .ok_or_else(|| Error::tensor(&path, &name, format!("shape {dims:?} overflows")))?;
            let type_id = c.u32(&format!("type of '{name}'"))?;
            let offset = c.u64(&format!("offset of '{name}'"))?;
            let ty = match GgmlType::from_id(type_id) {
                Some(t) => TensorType::Known(StorageType::Ggml(t)),
                None => TensorType::Unknown(type_id),
            };
            // Native and VQ storage is resolved from the metadata below, after the sizes.
            let n_bytes = match ty.ggml() {
                Some(t) => {
                    let row = dims.first().copied().unwrap_or(1);
                    if row % t.block_size() as u64 != 0 {
                        return Err(Error::tensor(
                            &path,
                            &name,
                            format!("row length {row} is not a multiple of {t}'s block size {}", t.block_size()),
                        ));
                    }
                    let bytes = (n_elements / t.block_size() as u64)
                        .checked_mul(t.type_size() as u64)
                        .ok_or_else(|| Error::tensor(&path, &name, "byte size overflows"))?;
                    Some(bytes)
                }
                None => None,
            };
            if offset % alignment != 0 {
                return Err(Error::tensor(&path, &name, format!("data offset {offset} is not aligned to {alignment}")));
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::tensor(&path, &name, "appears twice in the tensor list"));
            }
            let transform = Transform::default();
            tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes, segment: 0, start: 0, transform });
        }
        let header_end = c.pos as u64;
        let file_len = mmap.len() as u64;
        let data_offset =
            align_up(header_end, alignment).ok_or_else(|| Error::format(&path, "data offset overflows"))?;
        // Every known tensor's bytes must lie inside the file, and no two may overlap.
        let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let Some(n) = t.n_bytes else { continue };
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(n));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => ranges.push((s, e, &t.name)),
                _ => {
                    return Err(Error::tensor(
                        &path,
                        &t.name,
                        format!(
                            "data [{} + {}, {} bytes] lies past the end of the file ({file_len} bytes); the file is truncated or corrupt",
                            data_offset, t.offset, n
                        ),
                    ))
                }
            }
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::tensor(&path, w[1].2, format!("data overlaps tensor '{}'", w[0].2)));
            }
        }
        super::native::resolve(&path, &metadata, &mut tensors)?;
        for t in &mut tensors {
            t.start = data_offset + t.offset;
        }
        Ok(GgufFile {
            path,
            segments: vec![std::sync::Arc::new(mmap)],
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            by_name,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes (of all its segments, for a model folder).
    pub fn file_size(&self) -> u64 {
        self.segments.iter().map(|s| s.len() as u64).sum()
    }

    /// A model presented as GGUF without a GGUF file: `tensors` (with their segment,
    /// start and transform set) over the mapped `segments` followed by the `owned` ones
    /// (tensors a converter computes, such as Llama 3.1's `rope_freqs.weight`), and
    /// `metadata` as a converter would write it. Used for Hugging Face folders (`crate::hf`).
    pub(crate) fn assemble(
        path: PathBuf,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorInfo>,
        segments: Vec<Mmap>,
        owned: Vec<Vec<u8>>,
    ) -> Result<GgufFile> {
        // Mapped segments first, then owned ones (tensors made by the reader itself).
        let segments: Vec<_> = segments
            .into_iter()
            .map(Backing::Mapped)
            .chain(owned.into_iter().map(Backing::Owned))
            .map(std::sync::Arc::new)
            .collect();
        let mut by_name = HashMap::new();
        for (i, t) in tensors.iter().enumerate() {
            let end = t.start + t.n_bytes.unwrap_or(0);
            let raw_end = match t.transform.to_f32 {
                Some((from, _)) => t.start + t.n_elements * from.type_size() as u64,
                None => end,
            };
            if t.segment >= segments.len() || raw_end > segments[t.segment].len() as u64 {
                return Err(Error::tensor(&path, &t.name, "data lies outside its file"));
            }
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::tensor(&path, &t.name, "appears twice"));
            }
        }
        Ok(GgufFile { path, segments, version: 3, metadata, tensors, alignment: 32, data_offset: 0, by_name })
    }

    /// Drops the pages of tensor `name` from this process's resident memory once a
    /// streaming pass is done with it (they stay in the page cache): without this, reading
    /// a many-GB model through the map would count every page read as resident.
    pub fn release(&self, name: &str) {
        let Some(t) = self.tensor_info(name) else { return };
        let Backing::Mapped(m) = &*self.segments[t.segment] else { return };
        let len = match t.transform.to_f32 {
            Some((from, _)) => t.n_elements * from.type_size() as u64,
            None => t.n_bytes.unwrap_or(0),
        };
        // Whole pages inside the tensor only: a neighbour's pages may still be in use.
        const PAGE: u64 = 4096;
        let first = t.start.div_ceil(PAGE) * PAGE;
        let last = (t.start + len) / PAGE * PAGE;
        if last > first {
            // SAFETY: the map is read-only and file-backed, so MADV_DONTNEED discards no
            // data: a later access faults the same bytes back in from the file. Slices
            // borrowed from the map stay valid (the mapping itself is unchanged). The
            // range is checked to lie inside the map.
            assert!(last <= m.len() as u64);
            #[allow(unsafe_code)]
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first as usize, (last - first) as usize)
            };
        }
    }

    /// The metadata value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// The architecture's integer hyper-parameter `<arch>.<key>` (e.g. `block_count`); a
    /// per-layer array gives its first entry.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture().unwrap_or("");
        self.get(&format!("{arch}.{key}")).and_then(|v| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64()))
    }

    /// The tensor info named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of tensor `name`: zero-copy from the memory map, or transformed
    /// (a model folder's q/k rows and norm vectors, see [`Transform`]).
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, Cow<'_, [u8]>)> {
        let info =
            self.tensor_info(name).ok_or_else(|| Error::tensor(&self.path, name, "no such tensor in the file"))?;
        let n = info.n_bytes.ok_or_else(|| {
            Error::tensor(&self.path, name, format!("stored as {}, which lowbit cannot read", info.ty))
        })?;
        let start = info.start as usize;
        let seg = &self.segments[info.segment];
        if info.transform.is_none() {
            return Ok((info, Cow::Borrowed(&seg[start..start + n as usize])));
        }
        let raw = match info.transform.to_f32 {
            Some((from, _)) => info.n_elements as usize * from.type_size(),
            None => n as usize,
        };
        // A vector's "rows" are its elements (a q/k bias is permuted like the rows).
        let rows = match info.dims.len() {
            1 => info.n_elements as usize,
            _ => (info.n_elements / info.dims.first().copied().unwrap_or(1).max(1)) as usize,
        };
        Ok((info, Cow::Owned(info.transform.apply(&seg[start..start + raw], rows))))
    }

    /// The stored bytes of tensor `name` as a handle that keeps the memory map alive (no
    /// copy, unless the tensor is transformed): what the quantized runtime computes on.
    pub fn tensor_shared(&self, name: &str) -> Result<(&TensorInfo, crate::kernels::WeightBytes)> {
        let (info, bytes) = self.tensor_bytes(name)?;
        match bytes {
            Cow::Borrowed(b) => {
                let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = self.segments[info.segment].clone();
                Ok((info, crate::kernels::WeightBytes::shared(owner, info.start as usize, b.len())))
            }
            Cow::Owned(v) => Ok((info, crate::kernels::WeightBytes::owned(v))),
        }
    }

    /// Tensor `name` decoded to f32 (row-major, innermost dimension first as stored), its
    /// low-rank branch added and its input rotation undone when it has them.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let n = usize::try_from(info.n_elements)
            .map_err(|_| Error::tensor(&self.path, name, "too many elements for this machine"))?;
        let TensorType::Known(st) = info.ty else {
            return Err(Error::tensor(&self.path, name, format!("stored as {}, which lowbit cannot read", info.ty)));
        };
        let codebook = super::native::codebook_of(self, name, st)?;
        let cols = info.dims.first().copied().unwrap_or(0) as usize;
        let mut values = decode(st, &bytes, codebook.as_deref(), n, cols)
            .map_err(|e| Error::tensor(&self.path, name, e.to_string()))?;
        // A tensor with a low-rank branch stands for Ŵ + A·B; one stored rotated for that
        // times Q (its rows rotated back).
        if let Some(lr) = super::native::low_rank_of(self, name)? {
            lr.add_to(&mut values);
        }
        if let Some(seed) = super::native::rotation_of(self, name)? {
            let rows = n / cols.max(1);
            values = crate::method::incoherence::Rotation::shared(cols, seed).unrotate_rows(&values, rows);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// llama.cpp's `permute(w, n_head)`: per head, rows in rotate-half order
    /// (0, 1, …, h/2 − 1 | h/2, …) become adjacent pairs (0, h/2, 1, h/2 + 1, …).
    #[test]
    fn head_permutation_pairs_the_halves_of_each_head() {
        let t = Transform { to_f32: None, permute_heads: Some(2) };
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(t.apply(&f32s(&v), 8), f32s(&[0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]));
        // Rows of a matrix move whole.
        let m: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let want: Vec<f32> =
            [0, 2, 1, 3, 4, 6, 5, 7].iter().flat_map(|&r| [2.0 * r as f32, 2.0 * r as f32 + 1.0]).collect();
        assert_eq!(t.apply(&f32s(&m), 8), f32s(&want));
    }

    #[test]
    fn widening_adds_the_offset() {
        let bf16: Vec<u8> = [1.0f32, -0.5].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let t = Transform { to_f32: Some((GgmlType::BF16, 1.0)), permute_heads: None };
        assert_eq!(t.apply(&bf16, 2), f32s(&[2.0, 0.5]));
    }
}
