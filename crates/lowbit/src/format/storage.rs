//! How one tensor is stored: a ggml type (llama.cpp runs it) or a lowbit-native format
//! (lowbit runs it). Plans, overrides and the quantizer speak this one type, so a mix can
//! put native formats on some tensors and ggml types on the rest.

use std::fmt;

use rayon::prelude::*;

use super::encode::{can_encode, encode_rows_with, quantize_rows, EncodeError};
use super::native::NativeFormat;
use super::vq::VqFormat;
use super::{DecodeError, GgmlType};
use crate::format::encode::Fit;

/// A tensor's storage: ggml type or native format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageType {
    /// One of ggml's types, byte-compatible with llama.cpp.
    Ggml(GgmlType),
    /// A lowbit-native format (see [`super::native`]).
    Native(NativeFormat),
    /// A learned-codebook vector format (see [`super::vq`]); encoded a whole tensor at a
    /// time (the codebook is fitted to it).
    Vq(VqFormat),
}

impl StorageType {
    /// Parses a ggml type name (`Q4_K`, `IQ4_XS`, …), a native format name
    /// (`int4_g128`, `nf4_g64`, …) or a VQ format name (`vq4x256`, `vq8x256+256`).
    pub fn from_name(name: &str) -> Option<StorageType> {
        GgmlType::from_name(name)
            .map(StorageType::Ggml)
            .or_else(|| NativeFormat::from_name(name).map(StorageType::Native))
            .or_else(|| VqFormat::from_name(name).map(StorageType::Vq))
    }

    /// Whether lowbit can write it.
    pub fn can_encode(&self) -> bool {
        match self {
            StorageType::Ggml(t) => can_encode(*t),
            StorageType::Native(_) | StorageType::Vq(_) => true,
        }
    }

    /// Values sharing one scale block (ggml block size, native group, VQ vector).
    pub fn block_size(&self) -> usize {
        match self {
            StorageType::Ggml(t) => t.block_size(),
            StorageType::Native(f) => f.group,
            StorageType::Vq(f) => f.dim,
        }
    }

    /// For the types stored block by block within a row (ggml types and native formats):
    /// (values, bytes) per block. `None` for VQ formats, whose rows need their codebook.
    pub fn row_block(&self) -> Option<(usize, usize)> {
        match self {
            StorageType::Ggml(t) => Some((t.block_size(), t.type_size())),
            StorageType::Native(f) => Some((f.group, f.group_bytes())),
            StorageType::Vq(_) => None,
        }
    }

    /// Bytes of a tensor of `dims` (innermost first), or `None` if its rows are not whole
    /// blocks.
    pub fn tensor_bytes(&self, dims: &[u64]) -> Option<u64> {
        if let StorageType::Vq(f) = self {
            return f.tensor_bytes(dims);
        }
        let (bs, block_bytes) = self.row_block()?;
        let n: u64 = dims.iter().product();
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(bs as u64) {
            return None;
        }
        Some(n / bs as u64 * block_bytes as u64)
    }

    /// Whether llama.cpp can run it.
    pub fn is_ggml(&self) -> bool {
        matches!(self, StorageType::Ggml(_))
    }
}

impl fmt::Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageType::Ggml(t) => write!(f, "{t}"),
            StorageType::Native(n) => write!(f, "{n}"),
            StorageType::Vq(v) => write!(f, "{v}"),
        }
    }
}

impl serde::Serialize for StorageType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl From<GgmlType> for StorageType {
    fn from(t: GgmlType) -> Self {
        StorageType::Ggml(t)
    }
}

/// Encodes a row-major matrix as `st`, rows in parallel (deterministic); see
/// [`quantize_rows`]. VQ formats are fitted to a whole tensor: see
/// [`crate::method::vq::quantize_vq`].
pub fn encode_rows(
    st: StorageType,
    data: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    fit: Fit,
) -> Result<Vec<u8>, EncodeError> {
    let f = match st {
        StorageType::Ggml(t) => return quantize_rows(t, data, row_len, importance, fit),
        StorageType::Native(f) => f,
        StorageType::Vq(f) => return Err(EncodeError::WholeTensor(f.to_string())),
    };
    let row_bytes = f
        .row_bytes(row_len)
        .filter(|_| row_len > 0 && data.len().is_multiple_of(row_len))
        .ok_or_else(|| EncodeError::PartialGroup { format: f.to_string(), n: row_len, group: f.group })?;
    encode_rows_with(data, row_len, row_bytes, |x, o| f.encode_row(x, importance, fit, o))
}

/// Scalar reference dot product of one stored row with `x` (`x.len()` values): each
/// block decoded on its own and accumulated in f64. Slow on purpose; it is the
/// definition fast kernels are tested against. `None` for VQ rows, which need their
/// codebook ([`VqFormat::decode_row`]).
pub fn dot_reference(st: StorageType, row: &[u8], x: &[f32]) -> Option<f64> {
    let (bs, block_bytes) = st.row_block()?;
    let mut sum = 0.0f64;
    for (b, xb) in row.chunks_exact(block_bytes).zip(x.chunks_exact(bs)) {
        let block = decode(st, b, None, bs, bs).expect("one whole block");
        sum += block.iter().zip(xb).map(|(&w, &v)| w as f64 * v as f64).sum::<f64>();
    }
    Some(sum)
}

/// Decodes `n` values (rows of `cols`) stored as `st`, whatever the kind: the inverse of
/// [`encode_rows`] and [`crate::method::vq::quantize_vq`]. A VQ tensor's bytes are its
/// rows, and `codebook` its codebook tensor's bytes.
pub fn decode(
    st: StorageType,
    bytes: &[u8],
    codebook: Option<&[u8]>,
    n: usize,
    cols: usize,
) -> Result<Vec<f32>, DecodeError> {
    match st {
        StorageType::Ggml(t) => super::dequantize_to_vec(t, bytes, n),
        StorageType::Native(f) => decode_native(f, bytes, n),
        StorageType::Vq(f) => f.decode(
            bytes,
            codebook.ok_or_else(|| DecodeError::Invalid("a VQ tensor needs its codebook".into()))?,
            cols,
        ),
    }
}

/// Decodes a native tensor of `n` values stored in `bytes` (rows in parallel).
pub fn decode_native(f: NativeFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>, DecodeError> {
    let need = n / f.group * f.group_bytes();
    if !n.is_multiple_of(f.group) || bytes.len() != need {
        return Err(DecodeError::Invalid(format!("{} bytes for {n} values of {f}, expected {need}", bytes.len())));
    }
    let mut out = vec![0.0f32; n];
    // Whole groups per work item; about 16k values each.
    let per = (16384 / f.group).max(1);
    out.par_chunks_mut(per * f.group)
        .zip(bytes.par_chunks(per * f.group_bytes()))
        .for_each(|(o, b)| f.decode_row(b, o));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode::encodable_types;
    use rand::{Rng, SeedableRng};

    #[test]
    fn reference_dot_equals_decode_then_dot_for_every_writable_type() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let n = 512;
        let w: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
        let x: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut types: Vec<StorageType> = encodable_types().into_iter().map(StorageType::Ggml).collect();
        for name in ["int2_g16", "int3_g64_zp", "int6_g128", "nf4_g64", "fp8_g32", "fp4_g32"] {
            types.push(StorageType::from_name(name).unwrap());
        }
        for st in types {
            let bytes = encode_rows(st, &w, n, None, Fit::Search).unwrap();
            let decoded = decode(st, &bytes, None, n, n).unwrap();
            let want: f64 = decoded.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = dot_reference(st, &bytes, &x).unwrap();
            // Same products, summed per block then across blocks: only f64 rounding differs.
            assert!((got - want).abs() <= 1e-9 * (1.0 + want.abs()), "{st}: {got} vs {want}");
        }
    }
}
