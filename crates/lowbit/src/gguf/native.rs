//! How lowbit-native and learned-codebook (VQ) tensors live in a GGUF, in both directions.
//! llama.cpp has no type id for them, so such a tensor is stored as raw `I8` bytes, one
//! stored row per logical row, and the metadata string `lowbit.native.<tensor>` names its
//! format; a VQ tensor's codebooks follow as the F16 tensor `<tensor>.codebook`. The writer
//! side ([`tensor_specs`], [`native_key`]) and the reader side ([`resolve`],
//! [`codebook_of`]) are kept together so the two cannot drift apart.

use std::path::Path;

use super::metadata::Value;
use super::reader::{GgufFile, TensorInfo, TensorType};
use super::writer::TensorSpec;
use crate::error::{Error, Result};
use crate::format::native::NativeFormat;
use crate::format::storage::StorageType;
use crate::format::vq::{codebook_name, VqFormat};
use crate::format::GgmlType;

/// Metadata key naming the native format of tensor `name`.
pub fn native_key(name: &str) -> String {
    format!("lowbit.native.{name}")
}

/// The GGUF tensors a tensor of logical `dims` stored as `st` is written as: itself (a
/// native or VQ tensor as I8 rows of its stored row bytes), and a VQ tensor's codebook.
/// `None` when the rows are not whole blocks, groups or vectors.
pub fn tensor_specs(name: &str, dims: &[u64], st: StorageType) -> Option<Vec<TensorSpec>> {
    let stored = |row_bytes: usize| {
        let mut d = dims.to_vec();
        d[0] = row_bytes as u64;
        d
    };
    let cols = *dims.first()? as usize;
    Some(match st {
        StorageType::Ggml(ty) => vec![TensorSpec { name: name.to_string(), dims: dims.to_vec(), ty }],
        StorageType::Native(f) => {
            vec![TensorSpec { name: name.to_string(), dims: stored(f.row_bytes(cols)?), ty: GgmlType::I8 }]
        }
        StorageType::Vq(f) => vec![
            TensorSpec { name: name.to_string(), dims: stored(f.row_bytes(cols)?), ty: GgmlType::I8 },
            TensorSpec { name: codebook_name(name), dims: f.codebook_dims(), ty: GgmlType::F16 },
        ],
    })
}

/// Turns the tensors `lowbit.native.*` metadata names into their native or VQ storage with
/// their logical dims (the stored I8 row holds whole groups or vectors).
pub(super) fn resolve(path: &Path, metadata: &[(String, Value)], tensors: &mut [TensorInfo]) -> Result<()> {
    for t in tensors.iter_mut() {
        let Some((_, v)) = metadata.iter().find(|(k, _)| *k == native_key(&t.name)) else { continue };
        let name = v.as_str().ok_or_else(|| Error::tensor(path, &t.name, "lowbit.native entry is not a string"))?;
        if t.ty != TensorType::Known(StorageType::Ggml(GgmlType::I8)) {
            return Err(Error::tensor(path, &t.name, format!("native {name} must be stored as I8, found {}", t.ty)));
        }
        let row_bytes = t.dims.first().copied().unwrap_or(0);
        let (cols, st) = if let Some(f) = VqFormat::from_name(name) {
            let cols = f.cols_of_row_bytes(row_bytes as usize).ok_or_else(|| {
                Error::tensor(path, &t.name, format!("{row_bytes} bytes per row is not a whole {f} row"))
            })?;
            (cols as u64, StorageType::Vq(f))
        } else {
            let f = NativeFormat::from_name(name)
                .ok_or_else(|| Error::tensor(path, &t.name, format!("unknown lowbit-native format '{name}'")))?;
            if row_bytes == 0 || !row_bytes.is_multiple_of(f.group_bytes() as u64) {
                return Err(Error::tensor(path, &t.name, format!("{row_bytes} bytes per row is not whole {f} groups")));
            }
            (row_bytes / f.group_bytes() as u64 * f.group as u64, StorageType::Native(f))
        };
        t.dims[0] = cols;
        t.n_elements = t.dims.iter().product();
        t.ty = TensorType::Known(st);
    }
    Ok(())
}

/// The codebook bytes a VQ tensor `name` of `g` decodes with (`None` for other storage).
pub fn codebook_of<'a>(g: &'a GgufFile, name: &str, st: StorageType) -> Result<Option<std::borrow::Cow<'a, [u8]>>> {
    let StorageType::Vq(f) = st else { return Ok(None) };
    let cb_name = codebook_name(name);
    let (cb_info, codebook) = g.tensor_bytes(&cb_name).map_err(|_| {
        Error::tensor(g.path(), name, format!("{f} needs its codebook tensor '{cb_name}', which is missing"))
    })?;
    if cb_info.ty != TensorType::Known(StorageType::Ggml(GgmlType::F16)) {
        return Err(Error::tensor(g.path(), &cb_name, format!("a codebook must be F16, found {}", cb_info.ty)));
    }
    Ok(Some(codebook))
}

/// Whether tensor `name` of `g` is the codebook of a VQ tensor (it travels with that
/// tensor rather than being a tensor of its own).
pub fn is_codebook(g: &GgufFile, name: &str) -> bool {
    name.strip_suffix(".codebook")
        .and_then(|base| g.tensor_info(base))
        .is_some_and(|b| matches!(b.ty, TensorType::Known(StorageType::Vq(_))))
}
