//! A streaming GGUF v3 writer: the header is written first from tensor specs, then each
//! tensor's bytes in order, so a model never has to be in memory at once. The file is
//! written to a temporary name beside the target and renamed into place on `finish`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::metadata::Value;
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use crate::format::GgmlType;

/// What the header records about one tensor before its data is written.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Bytes this tensor's data occupies, or an error if the shape does not fit the type.
    pub fn n_bytes(&self) -> Result<u64> {
        let n: u64 = self.dims.iter().product();
        let row = self.dims.first().copied().unwrap_or(1);
        if row % self.ty.block_size() as u64 != 0 {
            return Err(Error::Usage(format!(
                "tensor '{}': row length {row} is not a multiple of {}'s block size {}",
                self.name,
                self.ty,
                self.ty.block_size()
            )));
        }
        Ok(n / self.ty.block_size() as u64 * self.ty.type_size() as u64)
    }
}

/// Writes a GGUF v3 file tensor by tensor.
pub struct GgufWriter {
    target: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    next: usize,
    alignment: u64,
    written: u64,
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_string(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(t, items) => {
            w.write_all(&(*t as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|x| write_value(w, x))
        }
    }
}

/// Bytes `metadata` takes in a GGUF header (keys, type tags and values), for size bounds
/// computed before a file is written.
pub fn metadata_bytes(metadata: &[(String, Value)]) -> u64 {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    for (k, v) in metadata {
        write_string(&mut c, k).and_then(|()| write_value(&mut c, v)).expect("counting never fails");
        c.0 += 4; // the value's type tag
    }
    c.0
}

/// The data alignment `metadata` asks for (`general.alignment`, else GGUF's default 32).
fn alignment_of(metadata: &[(String, Value)]) -> Result<u64> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(Error::Usage(format!("general.alignment {alignment} is not a power of two")));
    }
    Ok(alignment)
}

/// The bytes one tensor's info takes in the header: its name (with its 8-byte length), the
/// dimension count, the dimensions, the type and the data offset.
pub fn tensor_info_bytes(name: &str, n_dims: usize) -> u64 {
    8 + name.len() as u64 + 4 + 8 * n_dims as u64 + 4 + 8
}

/// The exact size of the file [`GgufWriter`] writes for `metadata` and `specs`: the
/// header (fixed fields, metadata, tensor infos) padded to the alignment, then every
/// tensor's data padded to it. Size targets compare against this before writing.
pub fn file_bytes(metadata: &[(String, Value)], specs: &[TensorSpec]) -> Result<u64> {
    let alignment = alignment_of(metadata)?;
    let pad = |b: u64| b.div_ceil(alignment) * alignment;
    let infos: u64 = specs.iter().map(|s| tensor_info_bytes(&s.name, s.dims.len())).sum();
    let header = MAGIC.len() as u64 + 4 + 8 + 8 + metadata_bytes(metadata) + infos;
    let mut total = pad(header);
    for s in specs {
        total += pad(s.n_bytes()?);
    }
    Ok(total)
}

impl GgufWriter {
    /// Starts writing `target` with the given metadata and tensor list. Refuses to write
    /// over `protect` (the input model) and validates every spec before touching disk.
    pub fn create(
        target: impl AsRef<Path>,
        metadata: &[(String, Value)],
        specs: Vec<TensorSpec>,
    ) -> Result<GgufWriter> {
        let target = target.as_ref().to_path_buf();
        let alignment = alignment_of(metadata)?;
        for (k, v) in metadata {
            if let Value::Array(t, items) = v {
                if items.iter().any(|x| x.value_type() != *t) {
                    return Err(Error::Usage(format!("metadata '{k}': array elements do not all have type {t:?}")));
                }
            }
        }
        let sizes = specs.iter().map(TensorSpec::n_bytes).collect::<Result<Vec<_>>>()?;
        // Only a regular file or a new name is replaced; a killed run's temp file goes.
        crate::atomic::check_output(&target)?;
        crate::atomic::remove_stale_temps(&target);
        let tmp = crate::atomic::temp_path(&target);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = GgufWriter {
            target,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            specs,
            sizes,
            next: 0,
            alignment,
            written: 0,
        };
        if let Err(e) = w.write_header(metadata) {
            return Err(w.fail(e));
        }
        Ok(w)
    }

    fn fail(&mut self, e: std::io::Error) -> Error {
        self.out = None;
        let _ = std::fs::remove_file(&self.tmp);
        Error::io(&self.target, e)
    }

    fn write_header(&mut self, metadata: &[(String, Value)]) -> std::io::Result<()> {
        let out = self.out.as_mut().expect("open");
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.specs.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            write_string(&mut h, k)?;
            h.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut h, v)?;
        }
        let mut offset = 0u64;
        for (spec, &size) in self.specs.iter().zip(&self.sizes) {
            write_string(&mut h, &spec.name)?;
            h.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for d in &spec.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&spec.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + size).div_ceil(self.alignment) * self.alignment;
        }
        let pad = (h.len() as u64).div_ceil(self.alignment) * self.alignment - h.len() as u64;
        h.resize(h.len() + pad as usize, 0);
        out.write_all(&h)?;
        self.written = h.len() as u64;
        Ok(())
    }

    /// Writes the next tensor's data; tensors must come in the order of the specs.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(spec) = self.specs.get(self.next) else {
            return Err(Error::Usage(format!("tensor '{name}' written after all tensors were written")));
        };
        if spec.name != name {
            return Err(Error::Usage(format!("expected tensor '{}' next, got '{name}'", spec.name)));
        }
        if data.len() as u64 != self.sizes[self.next] {
            return Err(Error::Usage(format!(
                "tensor '{name}': {} bytes given, {} expected for {} {:?}",
                data.len(),
                self.sizes[self.next],
                spec.ty,
                spec.dims
            )));
        }
        let pad = (data.len() as u64).div_ceil(self.alignment) * self.alignment - data.len() as u64;
        let out = self.out.as_mut().ok_or_else(|| Error::Usage("writer already failed".into()))?;
        let res = out.write_all(data).and_then(|_| out.write_all(&vec![0u8; pad as usize]));
        if let Err(e) = res {
            return Err(self.fail(e));
        }
        self.written += data.len() as u64 + pad;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the finished file into place; returns its size.
    pub fn finish(mut self) -> Result<u64> {
        if self.next != self.specs.len() {
            let missing = self.specs[self.next].name.clone();
            let _ = self.out.take();
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::Usage(format!("GGUF writer finished before tensor '{missing}' was written")));
        }
        let out = self.out.take().ok_or_else(|| Error::Usage("writer already failed".into()))?;
        let res = out.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all());
        if let Err(e) = res {
            return Err(self.fail(e));
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
            return Err(self.fail(e));
        }
        Ok(self.written)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // An unfinished writer leaves nothing behind.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::metadata::ValueType;
    use super::*;

    /// [`file_bytes`] is the size the writer produces, alignment and padding included.
    #[test]
    fn file_bytes_is_the_written_size() {
        let dir = tempfile::tempdir().unwrap();
        for alignment in [32u64, 64, 4096] {
            let metadata = vec![
                ("general.alignment".to_string(), Value::U32(alignment as u32)),
                ("general.name".to_string(), Value::String("x".repeat(37))),
                ("a.list".to_string(), Value::Array(ValueType::String, vec![Value::String("abc".into()); 5])),
            ];
            let specs = vec![
                TensorSpec { name: "t.odd".into(), dims: vec![3, 5], ty: GgmlType::F32 },
                TensorSpec { name: "t.q".into(), dims: vec![64, 3], ty: GgmlType::Q8_0 },
            ];
            let want = file_bytes(&metadata, &specs).unwrap();
            let path = dir.path().join(format!("f{alignment}.gguf"));
            let mut w = GgufWriter::create(&path, &metadata, specs.clone()).unwrap();
            for s in &specs {
                w.write_tensor(&s.name, &vec![0u8; s.n_bytes().unwrap() as usize]).unwrap();
            }
            assert_eq!(w.finish().unwrap(), want);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), want);
        }
    }
}
