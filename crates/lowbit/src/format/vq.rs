//! Learned-codebook vector quantization (VPTQ / AQLM style), a lowbit-native format: each
//! row is cut into vectors of `dim` consecutive weights, and each vector is stored as the
//! index of a codebook entry (plus, optionally, the index of an entry of a second,
//! residual codebook that is added to it). Rows are normalised by their own f16 scale, so
//! one codebook serves rows of different magnitude. The codebooks are learned per tensor
//! ([`crate::method::vq`]).
//!
//! Name: `vq<dim>x<K>` or `vq<dim>x<K>+<K2>` (residual), K and K2 powers of two up to
//! 65536, e.g. `vq4x256` (2 bits per weight in codes), `vq8x256+256`, `vq8x65536`.
//!
//! Storage, in a GGUF file: the tensor itself is an I8 tensor with one stored row per
//! logical row — f16 scale, then the row's codes as a little-endian bit stream (all
//! first-codebook indices, then all residual indices) — named by the
//! `lowbit.native.<tensor>` metadata string like the other native formats; the codebooks
//! are an F16 tensor `<tensor>.codebook` of `K + K2` entries of `dim` values. Bits per
//! weight count everything: codes, scales and codebooks.

use std::fmt;

use rayon::prelude::*;

use super::f16_at;
use super::native::{read_bits, write_bits};

/// A vector-quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VqFormat {
    /// Values per vector (2…16).
    pub dim: usize,
    /// Index bits of the main codebook (K = 2^bits, 1…16).
    pub bits: u8,
    /// Index bits of the residual codebook, 0 for none.
    pub residual_bits: u8,
}

impl VqFormat {
    /// Parses `vq8x256`, `vq4x65536`, `vq8x256+256`.
    pub fn from_name(name: &str) -> Option<VqFormat> {
        let rest = name.to_ascii_lowercase();
        let rest = rest.strip_prefix("vq")?;
        let (dim, ks) = rest.split_once('x')?;
        let dim: usize = dim.parse().ok()?;
        let (k, k2) = match ks.split_once('+') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => (ks.parse::<u32>().ok()?, 1),
        };
        let bits = |k: u32| (k.is_power_of_two() && k <= 65536).then(|| k.trailing_zeros() as u8);
        let (bits, residual_bits) = (bits(k)?, bits(k2)?);
        let f = VqFormat { dim, bits, residual_bits };
        ((2..=16).contains(&dim) && bits >= 1).then_some(f)
    }

    /// Entries of the main codebook.
    pub fn entries(&self) -> usize {
        1 << self.bits
    }

    /// Entries of the residual codebook (0 without one).
    pub fn residual_entries(&self) -> usize {
        if self.residual_bits == 0 {
            0
        } else {
            1 << self.residual_bits
        }
    }

    /// Index bits stored per vector.
    pub fn code_bits(&self) -> usize {
        self.bits as usize + self.residual_bits as usize
    }

    /// Bytes of one stored row of `cols` values, or `None` if `cols` is not a whole
    /// number of vectors or its codes do not fill whole bytes.
    pub fn row_bytes(&self, cols: usize) -> Option<usize> {
        if cols == 0 || !cols.is_multiple_of(self.dim) {
            return None;
        }
        let bits = cols / self.dim * self.code_bits();
        bits.is_multiple_of(8).then_some(2 + bits / 8)
    }

    /// The row length a stored row of `row_bytes` bytes holds (inverse of
    /// [`VqFormat::row_bytes`]).
    pub fn cols_of_row_bytes(&self, row_bytes: usize) -> Option<usize> {
        let bits = row_bytes.checked_sub(2)? * 8;
        (bits > 0 && bits.is_multiple_of(self.code_bits())).then(|| bits / self.code_bits() * self.dim)
    }

    /// Bytes of the codebook tensor (f16 entries of both codebooks).
    pub fn codebook_bytes(&self) -> usize {
        2 * self.dim * (self.entries() + self.residual_entries())
    }

    /// Total bytes of a tensor of `dims` (innermost first): rows plus codebooks.
    pub fn tensor_bytes(&self, dims: &[u64]) -> Option<u64> {
        let cols = *dims.first()? as usize;
        let rows: u64 = dims[1..].iter().product();
        Some(rows * self.row_bytes(cols)? as u64 + self.codebook_bytes() as u64)
    }

    /// Decodes one stored row (`out.len()` values) with the codebooks `codebook`
    /// (`(K + K2) × dim` f32 values, main entries first).
    pub fn decode_row(&self, codebook: &[f32], row: &[u8], out: &mut [f32]) {
        let scale = f16_at(row, 0);
        let codes = &row[2..];
        let (bits, residual_bits) = (self.bits as usize, self.residual_bits as usize);
        let n = out.len() / self.dim;
        let base = self.entries() * self.dim;
        for (i, v) in out.chunks_exact_mut(self.dim).enumerate() {
            let c = read_bits(codes, i * bits, bits) as usize;
            v.copy_from_slice(&codebook[c * self.dim..(c + 1) * self.dim]);
            if residual_bits > 0 {
                let c2 = read_bits(codes, n * bits + i * residual_bits, residual_bits) as usize;
                let e = &codebook[base + c2 * self.dim..base + (c2 + 1) * self.dim];
                v.iter_mut().zip(e).for_each(|(a, b)| *a += b);
            }
            v.iter_mut().for_each(|a| *a *= scale);
        }
    }

    /// Splits an encoded tensor (its rows followed by its codebook bytes, as a planned VQ
    /// tensor's size counts them) into (rows, codebook).
    pub fn split_encoded<'a>(&self, bytes: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        Some(bytes.split_at(bytes.len().checked_sub(self.codebook_bytes())?))
    }

    /// Decodes a whole tensor of rows of `cols` values: `payload` holds the stored rows,
    /// `codebook` the f16 bytes of the codebook tensor.
    pub fn decode(&self, payload: &[u8], codebook: &[u8], cols: usize) -> Result<Vec<f32>, String> {
        if codebook.len() != self.codebook_bytes() {
            return Err(format!("codebook of {} bytes for {self}, expected {}", codebook.len(), self.codebook_bytes()));
        }
        let rb = self.row_bytes(cols).ok_or_else(|| format!("rows of {cols} values cannot be stored as {self}"))?;
        if !payload.len().is_multiple_of(rb) {
            return Err(format!("{} bytes is not a whole number of {rb}-byte {self} rows", payload.len()));
        }
        let cb: Vec<f32> = codebook.chunks_exact(2).map(|b| f16_at(b, 0)).collect();
        let mut out = vec![0.0f32; payload.len() / rb * cols];
        out.par_chunks_mut(cols).zip(payload.par_chunks(rb)).for_each(|(o, r)| self.decode_row(&cb, r, o));
        Ok(out)
    }
}

impl fmt::Display for VqFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vq{}x{}", self.dim, self.entries())?;
        if self.residual_bits > 0 {
            write!(f, "+{}", self.residual_entries())?;
        }
        Ok(())
    }
}

/// The name of the codebook tensor of tensor `name`.
pub fn codebook_name(name: &str) -> String {
    format!("{name}.codebook")
}

/// Writes a stored row: f16 `scale`, then `codes` (`bits` each), then `residual`
/// (`residual_bits` each); `out` is the row's bytes.
pub fn pack_row(f: &VqFormat, scale: f32, codes: &[u32], residual: &[u32], out: &mut [u8]) {
    out.fill(0);
    out[..2].copy_from_slice(&half::f16::from_f32(scale).to_bits().to_le_bytes());
    let (bits, residual_bits) = (f.bits as usize, f.residual_bits as usize);
    let stream = &mut out[2..];
    for (i, &c) in codes.iter().enumerate() {
        write_bits(stream, i * bits, bits, c);
    }
    for (i, &c) in residual.iter().enumerate() {
        write_bits(stream, codes.len() * bits + i * residual_bits, residual_bits, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_count_everything() {
        for name in ["vq4x256", "vq8x256+256", "vq8x65536", "vq6x4096"] {
            assert_eq!(VqFormat::from_name(name).unwrap().to_string(), name);
        }
        for bad in ["vq8x300", "vq1x256", "vq8x131072", "vq8", "q8x256", "vq8x256+3"] {
            assert!(VqFormat::from_name(bad).is_none(), "{bad}");
        }
        let f = VqFormat::from_name("vq4x256").unwrap();
        assert_eq!(f.row_bytes(576), Some(2 + 144));
        assert_eq!(f.cols_of_row_bytes(146), Some(576));
        // 576 × 576: codes 2 bits/weight, scales 16 bits/row, codebook 256 × 4 f16.
        let bytes = f.tensor_bytes(&[576, 576]).unwrap();
        assert_eq!(bytes, 576 * 146 + 2048);
        let r = VqFormat::from_name("vq8x256+256").unwrap();
        assert_eq!(r.row_bytes(64), Some(2 + 16));
        assert_eq!(r.codebook_bytes(), 2 * 8 * 512);
        assert_eq!(VqFormat::from_name("vq8x4096").unwrap().row_bytes(8), None);
        // 12 bits
    }

    #[test]
    fn packed_rows_decode_to_scaled_codebook_sums() {
        let f = VqFormat::from_name("vq2x4+4").unwrap();
        let cb: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.5, 0.5, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0];
        let mut row = vec![0u8; f.row_bytes(8).unwrap()];
        pack_row(&f, 2.0, &[3, 0, 1, 2], &[1, 0, 0, 1], &mut row);
        let mut out = vec![0.0f32; 8];
        f.decode_row(&cb, &row, &mut out);
        assert_eq!(out, vec![10.0, 12.0, 1.0, 3.0, 5.0, 7.0, 6.0, 8.0]);
    }
}
