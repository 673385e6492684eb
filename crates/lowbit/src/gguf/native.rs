//! How lowbit-native and learned-codebook (VQ) tensors live in a GGUF, in both directions.
//! llama.cpp has no type id for them, so such a tensor is stored as raw `I8` bytes, one
//! stored row per logical row, and the metadata string `lowbit.native.<tensor>` names its
//! format; a VQ tensor's codebooks follow as the F16 tensor `<tensor>.codebook`. A tensor
//! with a low-rank branch ([`crate::method::low_rank`]) has its factors beside it as the F16
//! tensors `<tensor>.lr_a` (dims `[r, rows]`) and `<tensor>.lr_b` (dims `[cols, r]`); such
//! files are lowbit's own (llama.cpp refuses tensors it does not expect). The writer side
//! A tensor stored rotated on its input side (per-layer incoherence) has its rotation's seed
//! in `lowbit.incoherence.<tensor>`. The writer side ([`tensor_specs`], [`low_rank_specs`],
//! [`native_key`], [`incoherence_key`]) and the reader side ([`resolve`], [`codebook_of`],
//! [`low_rank_of`], [`rotation_of`], [`is_companion`]) are kept together so the two cannot
//! drift apart.

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

/// The metadata entry naming tensor `name`'s native or VQ format (`None` for a ggml type):
/// what the writer records and what size targets count ([`extra_bytes`]).
pub fn native_entry(name: &str, st: StorageType) -> Option<(String, Value)> {
    (!st.is_ggml()).then(|| (native_key(name), Value::String(st.to_string())))
}

/// The metadata entry holding the seed of tensor `name`'s input rotation.
pub fn incoherence_entry(name: &str, seed: u64) -> (String, Value) {
    (incoherence_key(name), Value::U64(seed))
}

/// Bytes a tensor stored as `st` adds to a file besides its data
/// ([`StorageType::tensor_bytes`], padded to `align`) and its tensor info: for a native or
/// VQ format, its `lowbit.native.<name>` metadata entry; for VQ also its codebook's tensor
/// info and padding (an upper bound: one alignment). 0 for ggml types. Size targets count
/// these ([`crate::allocate`]): 211 native entries are 10 KB on smollm2, once enough to
/// overrun a 75 MB target.
pub fn extra_bytes(name: &str, st: StorageType, align: u64) -> u64 {
    let entry = native_entry(name, st).map_or(0, |e| super::metadata_bytes(&[e]));
    match st {
        StorageType::Vq(f) => {
            entry + super::tensor_info_bytes(&codebook_name(name), f.codebook_dims().len()) + align.max(1)
        }
        _ => entry,
    }
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

/// The names of the low-rank factors of tensor `name`: `A` (`rows × r`) and `B` (`r × cols`).
pub fn low_rank_names(name: &str) -> (String, String) {
    (format!("{name}.lr_a"), format!("{name}.lr_b"))
}

/// The GGUF tensors a rank-`rank` branch of a tensor of logical `dims` (`[cols, rows]`)
/// is written as.
pub fn low_rank_specs(name: &str, dims: &[u64], rank: usize) -> Vec<TensorSpec> {
    let (a, b) = low_rank_names(name);
    let (cols, rows) = (dims[0], dims.get(1).copied().unwrap_or(1));
    vec![
        TensorSpec { name: a, dims: vec![rank as u64, rows], ty: GgmlType::F16 },
        TensorSpec { name: b, dims: vec![cols, rank as u64], ty: GgmlType::F16 },
    ]
}

/// The low-rank branch stored beside tensor `name` of `g`, if it has one (both factors
/// F16, shapes matching the tensor's).
pub fn low_rank_of(g: &GgufFile, name: &str) -> Result<Option<crate::method::low_rank::LowRank>> {
    let (a_name, b_name) = low_rank_names(name);
    let (Some(a), Some(b), Some(t)) = (g.tensor_info(&a_name), g.tensor_info(&b_name), g.tensor_info(name)) else {
        if g.tensor_info(&a_name).is_some() != g.tensor_info(&b_name).is_some() {
            return Err(Error::tensor(g.path(), name, "has one low-rank factor without the other (.lr_a/.lr_b)"));
        }
        return Ok(None);
    };
    let f16 = TensorType::Known(StorageType::Ggml(GgmlType::F16));
    let (cols, rows) = (t.dims[0] as usize, t.dims.get(1).copied().unwrap_or(1) as usize);
    let rank = a.dims[0] as usize;
    if a.ty != f16 || b.ty != f16 || a.dims != [rank as u64, rows as u64] || b.dims != [cols as u64, rank as u64] {
        return Err(Error::tensor(
            g.path(),
            name,
            format!(
                "low-rank factors must be F16 [r, {rows}] and [{cols}, r], found {} {:?} and {} {:?}",
                a.ty, a.dims, b.ty, b.dims
            ),
        ));
    }
    let (_, ab) = g.tensor_bytes(&a_name)?;
    let (_, bb) = g.tensor_bytes(&b_name)?;
    let lr = crate::method::low_rank::LowRank::from_f16(&ab, &bb, rows, cols, rank)
        .ok_or_else(|| Error::tensor(g.path(), name, "low-rank factor sizes do not match their shapes"))?;
    if lr.a.iter().chain(&lr.b).any(|v| !v.is_finite()) {
        return Err(Error::tensor(g.path(), name, "a low-rank factor holds NaN/inf values"));
    }
    Ok(Some(lr))
}

/// Metadata key holding the input rotation's seed of tensor `name`, stored rotated
/// ([`crate::method::incoherence`]).
pub fn incoherence_key(name: &str) -> String {
    format!("lowbit.incoherence.{name}")
}

/// The seed of tensor `name`'s input rotation, if it is stored rotated.
pub fn rotation_of(g: &GgufFile, name: &str) -> Result<Option<u64>> {
    match g.get(&incoherence_key(name)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::tensor(g.path(), name, format!("{} is not an integer seed", incoherence_key(name)))),
    }
}

/// Whether tensor `name` of `g` travels with another tensor rather than being one of its
/// own: a VQ tensor's codebook or a low-rank factor.
pub fn is_companion(g: &GgufFile, name: &str) -> bool {
    is_codebook(g, name)
        || [".lr_a", ".lr_b"].iter().any(|s| name.strip_suffix(s).is_some_and(|base| g.tensor_info(base).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor's share of a file: its tensor infos, its data padded to `align` and its
    /// metadata entry, as [`super::super::file_bytes`] counts them.
    fn share(name: &str, dims: &[u64], st: StorageType, align: u64) -> u64 {
        let pad = |b: u64| b.div_ceil(align) * align;
        let specs = tensor_specs(name, dims, st).unwrap();
        let entry = native_entry(name, st).map_or(0, |e| super::super::metadata_bytes(&[e]));
        entry
            + specs
                .iter()
                .map(|s| super::super::tensor_info_bytes(&s.name, s.dims.len()) + pad(s.n_bytes().unwrap()))
                .sum::<u64>()
    }

    #[test]
    fn extra_bytes_count_what_a_native_or_vq_tensor_adds_to_the_file() {
        let (name, dims, align) = ("blk.0.ffn_down.weight", [256u64, 24], 32);
        for ty in ["Q4_K", "int4_g64", "nf4_g64", "vq4x256+128"] {
            let st = StorageType::from_name(ty).unwrap();
            let pad = |b: u64| b.div_ceil(align) * align;
            let counted = super::super::tensor_info_bytes(name, dims.len())
                + pad(st.tensor_bytes(&dims).unwrap())
                + extra_bytes(name, st, align);
            let real = share(name, &dims, st, align);
            // Exact for one stored tensor; a VQ codebook's padding is bounded by one alignment.
            let slack = if matches!(st, StorageType::Vq(_)) { 2 * align } else { 0 };
            assert!(real <= counted && counted <= real + slack, "{ty}: counted {counted}, the file takes {real}");
        }
    }
}
