//! Encoding f32 weights into ggml block formats, byte for byte as llama.cpp lays them out
//! (so llama.cpp decodes lowbit's files exactly as lowbit does). One file per family, like
//! the decoders: [`legacy`], [`kquant`], [`nonlinear`] (IQ4 and MXFP4), [`iquant`] (the
//! lattice i-quants IQ1–IQ3). How a block's scales and codes are fitted on their own is
//! the [`Fit`]'s business ([`search`] holds the weighted least-squares fits every scalar
//! encoder uses); the optional per-column importance (an importance matrix) weights the
//! error each choice minimises. Methods that look across blocks (GPTQ, learned codebooks)
//! live above, in [`crate::method`], and call in here.

pub mod iquant;
pub mod kquant;
pub(crate) mod lattice;
pub mod legacy;
pub(crate) mod levels;
pub mod nonlinear;
pub mod search;

use rayon::prelude::*;

use super::{Encoder, GgmlType};

/// How one block's scales and codes are chosen, looking at that block alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Fit {
    /// Round to nearest with the scale set by the block's largest magnitude (llama.cpp's
    /// `quantize_row_*_ref` for the legacy types; no search anywhere).
    Rtn,
    /// Weighted least-squares search over candidate scales (and minimums), then the
    /// super-block scales themselves fitted by weighted search; at least as thorough as
    /// llama.cpp's `make_qx_quants` / `make_qkx*_quants` family.
    #[default]
    Search,
}

/// Why a row could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// lowbit has no encoder for this type.
    #[error("lowbit cannot encode {0} (it can decode it)")]
    NotEncodable(GgmlType),
    /// The row is not a whole number of blocks.
    #[error("row length {n} is not a multiple of {ty}'s block size {block}")]
    PartialBlock {
        /// Target type.
        ty: GgmlType,
        /// Row length.
        n: usize,
        /// Block size of the type.
        block: usize,
    },
    /// The row is not a whole number of a native format's groups.
    #[error("row length {n} is not a multiple of {format}'s group size {group}")]
    PartialGroup {
        /// The native format's name.
        format: String,
        /// Row length.
        n: usize,
        /// Group size.
        group: usize,
    },
    /// A weight is NaN or infinite.
    #[error("weight {index} is {value} (not finite)")]
    NonFinite {
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A VQ codebook that does not fit the tensor.
    #[error("{0}")]
    Codebook(String),
    /// A VQ format is fitted to a whole tensor, not encoded row by row.
    #[error("{0} is fitted to a whole tensor; it cannot be encoded row by row")]
    WholeTensor(String),
    /// The calibration Hessian cannot be used (not positive definite).
    #[error("{0}")]
    Hessian(String),
    /// Ctrl-C was pressed during a long encode (a GPTQ sweep checks between panels).
    #[error("interrupted")]
    Interrupted,
    /// The importance vector does not have one entry per column.
    #[error("importance has {got} entries, the rows have {need} columns")]
    ImportanceLength {
        /// Entries given.
        got: usize,
        /// Columns per row.
        need: usize,
    },
}

/// One block to encode, with what the encoder needs to weigh its errors.
pub struct BlockInput<'a> {
    /// The block's values.
    pub x: &'a [f32],
    /// Importance of each value's column (from calibration), if known.
    pub importance: Option<&'a [f32]>,
    /// Mean of x² over the whole row (llama.cpp's σ² for the legacy types' weighting).
    pub row_sigma2: f32,
    /// How to choose scales and codes.
    pub fit: Fit,
}

impl BlockInput<'_> {
    /// Fills `w` with the error weights of the values in `range`: importance·√(σ² + x²)
    /// when an importance is known (llama.cpp's imatrix weighting), else `default(x, i)`.
    pub(crate) fn weights(
        &self,
        range: std::ops::Range<usize>,
        sigma2: f32,
        w: &mut [f32],
        default: impl Fn(f32) -> f32,
    ) {
        let x = &self.x[range.clone()];
        match self.importance {
            Some(imp) => {
                for ((wi, &xi), &qi) in w.iter_mut().zip(x).zip(&imp[range]) {
                    *wi = qi * (sigma2 + xi * xi).sqrt();
                }
            }
            None => {
                for (wi, &xi) in w.iter_mut().zip(x) {
                    *wi = default(xi);
                }
            }
        }
    }
}

/// Error weight of a value without calibration data for the symmetric and fixed-grid
/// formats: √(σ² + x²), large values count more but small ones are not ignored.
/// llama.cpp's encoders use x² here; on smollm2-135m (10 chunks of wiki.valid) this
/// weighting lowered mean KLD at Q3_K_S from 0.444 to 0.407, at Q4_K_M from 0.0429 to
/// 0.0411 and at IQ4_XS from 0.180 to 0.174.
pub(crate) fn magnitude_weight(sigma2: f32) -> impl Fn(f32) -> f32 {
    move |v| (sigma2 + v * v).sqrt()
}

/// Σ x², summed in eight lanes so that it vectorizes (a single running f32 sum may not be
/// reordered); deterministic.
pub(crate) fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lanes[k] += c[k] * c[k];
        }
    }
    tail.iter().map(|v| v * v).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Writes `v` as little-endian f16 at `out[at..at+2]` and returns the value stored.
#[inline]
pub(crate) fn put_f16(out: &mut [u8], at: usize, v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    out[at..at + 2].copy_from_slice(&h.to_bits().to_le_bytes());
    h.to_f32()
}

/// Whether lowbit can write tensors of type `ty` (its table entry has an encoder).
pub fn can_encode(ty: GgmlType) -> bool {
    ty.facts().encode.is_some()
}

/// Every type [`can_encode`] accepts.
pub fn encodable_types() -> Vec<GgmlType> {
    GgmlType::all().filter(|&t| can_encode(t)).collect()
}

/// Encodes one block of `ty`, a type its table entry encodes block by block (GPTQ's level
/// types; callers check [`crate::format::TypeFacts::encode`]).
pub(crate) fn encode_block(ty: GgmlType, b: &BlockInput, out: &mut [u8]) {
    match ty.facts().encode {
        Some(Encoder::Block(encode)) => encode(b, out),
        Some(Encoder::Plain(_)) | None => panic!("{ty} is not encoded block by block"),
    }
}

/// Encodes one row `x` as `ty` into `out` (exactly the row's byte size).
pub fn quantize_row(
    ty: GgmlType,
    x: &[f32],
    importance: Option<&[f32]>,
    fit: Fit,
    out: &mut [u8],
) -> Result<(), EncodeError> {
    let facts = ty.facts();
    let Some(encoder) = facts.encode else { return Err(EncodeError::NotEncodable(ty)) };
    let (bs, ts) = (facts.block, facts.bytes);
    if !x.len().is_multiple_of(bs) {
        return Err(EncodeError::PartialBlock { ty, n: x.len(), block: bs });
    }
    if let Some(imp) = importance {
        if imp.len() != x.len() {
            return Err(EncodeError::ImportanceLength { got: imp.len(), need: x.len() });
        }
    }
    // Branch-free check first (it vectorizes); the position only when something is wrong.
    if !x.iter().fold(true, |ok, v| ok & v.is_finite()) {
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(EncodeError::NonFinite { index, value });
        }
    }
    assert_eq!(out.len(), x.len() / bs * ts, "output buffer must hold the encoded row");
    match encoder {
        Encoder::Plain(encode) => x.iter().zip(out.chunks_exact_mut(ts)).for_each(|(&v, o)| encode(v, o)),
        Encoder::Block(encode) => {
            let row_sigma2 = sum_of_squares(x) / x.len().max(1) as f32;
            for (i, o) in out.chunks_exact_mut(ts).enumerate() {
                let r = i * bs..(i + 1) * bs;
                let b = BlockInput { x: &x[r.clone()], importance: importance.map(|q| &q[r]), row_sigma2, fit };
                encode(&b, o);
            }
        }
    }
    Ok(())
}

/// Encodes a row-major matrix (`data.len() / row_len` rows) as `ty`, rows in parallel.
/// `importance` has one entry per column and applies to every row. Deterministic: the
/// result does not depend on the number of threads.
pub fn quantize_rows(
    ty: GgmlType,
    data: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    fit: Fit,
) -> Result<Vec<u8>, EncodeError> {
    if !can_encode(ty) {
        return Err(EncodeError::NotEncodable(ty));
    }
    let bs = ty.block_size();
    if row_len == 0 || !row_len.is_multiple_of(bs) || !data.len().is_multiple_of(row_len) {
        return Err(EncodeError::PartialBlock { ty, n: row_len, block: bs });
    }
    encode_rows_with(data, row_len, row_len / bs * ty.type_size(), |x, o| quantize_row(ty, x, importance, fit, o))
}

/// Runs `encode_row(row, out)` over every `row_len`-value row of `data` in parallel into
/// `row_bytes`-byte output rows; a non-finite weight's index is reported within `data`.
/// The shape checks are the caller's (`row_len > 0`, whole rows). Shared by the ggml
/// types and the native formats.
pub(crate) fn encode_rows_with(
    data: &[f32],
    row_len: usize,
    row_bytes: usize,
    encode_row: impl Fn(&[f32], &mut [u8]) -> Result<(), EncodeError> + Sync,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; data.len() / row_len * row_bytes];
    out.par_chunks_mut(row_bytes).zip(data.par_chunks(row_len)).enumerate().try_for_each(|(r, (o, x))| {
        encode_row(x, o).map_err(|e| match e {
            EncodeError::NonFinite { index, value } => EncodeError::NonFinite { index: r * row_len + index, value },
            e => e,
        })
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests;
