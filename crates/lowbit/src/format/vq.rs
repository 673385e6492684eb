//! Learned-codebook vector quantization (VPTQ / AQLM style), a lowbit-native format: each
//! row is cut into vectors of `dim` consecutive weights, and each vector is stored as the
//! index of a codebook entry (plus, optionally, the index of an entry of a second,
//! residual codebook that is added to it). Rows are normalised by their own f16 scale, so
//! one codebook serves rows of different magnitude. The codebooks are learned per tensor
//! ([`crate::method::vq`]).
//!
//! Optionally, a few input columns — those whose inputs are largest (the outlier
//! channels of LLM activations, where a code's error costs most) — are kept apart: every
//! row stores its value in each of them as an f16, and that value replaces what the
//! codebooks give there. (8-bit values were tried first: on the columns of the largest
//! inputs, the 8-bit rounding alone cost more output error than the codes it replaced.)
//!
//! Name: `vq<dim>x<K>` or `vq<dim>x<K>+<K2>` (residual), K and K2 powers of two up to
//! 65536, then optionally `o<N>` for N outlier columns, e.g. `vq4x256` (2 bits per weight
//! in codes), `vq8x256+256`, `vq8x65536`, `vq4x256+128o8`.
//!
//! Storage, in a GGUF file: the tensor itself is an I8 tensor with one stored row per
//! logical row — f16 scale, then the row's codes as a little-endian bit stream (all
//! first-codebook indices, then all residual indices), then the row's N outlier values
//! (f16) — named by the `lowbit.native.<tensor>` metadata string like the other native
//! formats; the codebooks are an F16 tensor `<tensor>.codebook` of `K + K2` entries of
//! `dim` values, followed by the N outlier columns' indices (ascending, as raw
//! little-endian u16 in the f16 slots). Bits per weight count everything: codes, scales,
//! codebooks and outliers.

use std::fmt;

use rayon::prelude::*;

use super::native::{read_bits, write_bits};
use super::{f16_at, DecodeError};

/// A vector-quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VqFormat {
    /// Values per vector (2…16).
    pub dim: usize,
    /// Index bits of the main codebook (K = 2^bits, 1…16).
    pub bits: u8,
    /// Index bits of the residual codebook, 0 for none.
    pub residual_bits: u8,
    /// Outlier columns stored apart (f16 values), 0 for none.
    pub outliers: u16,
}

/// Most outlier columns a format may name.
pub const MAX_OUTLIERS: u16 = 4096;

/// A VQ tensor's codebook tensor, decoded: what [`VqFormat::decode_row`] needs besides
/// the row itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    /// Entries, main codebook then residual codebook, `dim` values each.
    pub entries: Vec<f32>,
    /// The outlier columns, ascending.
    pub outlier_columns: Vec<usize>,
}

impl Codebook {
    /// The codebook tensor's bytes (f16 entries, then u16 outlier columns).
    pub fn to_bytes(&self) -> Vec<u8> {
        let halves = self.entries.iter().map(|&v| half::f16::from_f32(v).to_bits());
        halves.chain(self.outlier_columns.iter().map(|&c| c as u16)).flat_map(|b| b.to_le_bytes()).collect()
    }
}

impl VqFormat {
    /// Parses `vq8x256`, `vq4x65536`, `vq8x256+256`, `vq4x256+128o8`.
    pub fn from_name(name: &str) -> Option<VqFormat> {
        let rest = name.to_ascii_lowercase();
        let rest = rest.strip_prefix("vq")?;
        let (rest, outliers) = match rest.split_once('o') {
            Some((a, n)) => (a, n.parse::<u16>().ok().filter(|n| (1..=MAX_OUTLIERS).contains(n))?),
            None => (rest, 0),
        };
        let (dim, ks) = rest.split_once('x')?;
        let dim: usize = dim.parse().ok()?;
        let (k, k2) = match ks.split_once('+') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => (ks.parse::<u32>().ok()?, 1),
        };
        let bits = |k: u32| (k.is_power_of_two() && k <= 65536).then(|| k.trailing_zeros() as u8);
        let (bits, residual_bits) = (bits(k)?, bits(k2)?);
        let f = VqFormat { dim, bits, residual_bits, outliers };
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
    /// number of vectors, its codes do not fill whole bytes, or it has no more columns
    /// than the format keeps apart (or more than a u16 index reaches).
    pub fn row_bytes(&self, cols: usize) -> Option<usize> {
        let outliers = self.outliers as usize;
        if cols == 0 || !cols.is_multiple_of(self.dim) || (outliers > 0 && (cols <= outliers || cols > 65536)) {
            return None;
        }
        let bits = cols / self.dim * self.code_bits();
        bits.is_multiple_of(8).then_some(2 + bits / 8 + 2 * outliers)
    }

    /// The row length a stored row of `row_bytes` bytes holds (inverse of
    /// [`VqFormat::row_bytes`]).
    pub fn cols_of_row_bytes(&self, row_bytes: usize) -> Option<usize> {
        let bits = row_bytes.checked_sub(2 + 2 * self.outliers as usize)? * 8;
        (bits > 0 && bits.is_multiple_of(self.code_bits())).then(|| bits / self.code_bits() * self.dim)
    }

    /// Bytes of the codebook tensor: f16 entries of both codebooks, then a 2-byte column
    /// index per outlier column.
    pub fn codebook_bytes(&self) -> usize {
        2 * self.dim * (self.entries() + self.residual_entries()) + 2 * self.outliers as usize
    }

    /// Dimensions of the codebook tensor (innermost first): `[dim, K + K2]`, or, with
    /// outlier columns, one flat run of `codebook_bytes / 2` f16 slots.
    pub fn codebook_dims(&self) -> Vec<u64> {
        if self.outliers > 0 {
            vec![self.codebook_bytes() as u64 / 2]
        } else {
            vec![self.dim as u64, (self.entries() + self.residual_entries()) as u64]
        }
    }

    /// Reads a codebook tensor's bytes for rows of `cols` values, checking its length
    /// and its outlier columns (ascending, inside the row).
    pub fn parse_codebook(&self, bytes: &[u8], cols: usize) -> Result<Codebook, DecodeError> {
        if bytes.len() != self.codebook_bytes() {
            return Err(DecodeError::Invalid(format!(
                "codebook of {} bytes for {self}, expected {}",
                bytes.len(),
                self.codebook_bytes()
            )));
        }
        let n = self.outliers as usize;
        let halves: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let (entries, columns) = halves.split_at(halves.len() - n);
        let outlier_columns: Vec<usize> = columns.iter().map(|&c| c as usize).collect();
        if outlier_columns.windows(2).any(|w| w[0] >= w[1]) || outlier_columns.last().is_some_and(|&c| c >= cols) {
            return Err(DecodeError::Invalid(format!(
                "{self}: outlier columns {outlier_columns:?} are not ascending columns of a {cols}-wide row"
            )));
        }
        Ok(Codebook { entries: entries.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect(), outlier_columns })
    }

    /// Total bytes of a tensor of `dims` (innermost first): rows plus codebooks.
    pub fn tensor_bytes(&self, dims: &[u64]) -> Option<u64> {
        let cols = *dims.first()? as usize;
        let rows: u64 = dims[1..].iter().product();
        Some(rows * self.row_bytes(cols)? as u64 + self.codebook_bytes() as u64)
    }

    /// Decodes one stored row (`out.len()` values) with its tensor's codebook.
    pub fn decode_row(&self, book: &Codebook, row: &[u8], out: &mut [f32]) {
        let codebook = &book.entries;
        let scale = f16_at(row, 0);
        let (codes, outliers) = row[2..].split_at(row.len() - 2 - 2 * self.outliers as usize);
        let (bits, residual_bits) = (self.bits as usize, self.residual_bits as usize);
        let n = out.len() / self.dim;
        let base = self.entries() * self.dim;
        if self.dim == 4 {
            // The common shape, with fixed-size arrays (no copy calls, 4-wide operations):
            // the same additions and multiplications as the general loop below.
            for (i, v) in out.chunks_exact_mut(4).enumerate() {
                let c = read_bits(codes, i * bits, bits) as usize;
                let mut e: [f32; 4] = codebook[c * 4..c * 4 + 4].try_into().expect("4 values");
                if residual_bits > 0 {
                    let c2 = read_bits(codes, n * bits + i * residual_bits, residual_bits) as usize;
                    let r = &codebook[base + c2 * 4..base + c2 * 4 + 4];
                    for j in 0..4 {
                        e[j] += r[j];
                    }
                }
                for j in 0..4 {
                    v[j] = e[j] * scale;
                }
            }
        } else {
            self.decode_vectors(codebook, codes, scale, out);
        }
        for (&c, v) in book.outlier_columns.iter().zip(outliers.chunks_exact(2)) {
            out[c] = f16_at(v, 0);
        }
    }

    /// [`VqFormat::decode_row`]'s loop for any vector length.
    fn decode_vectors(&self, codebook: &[f32], codes: &[u8], scale: f32, out: &mut [f32]) {
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

    /// Decodes a whole tensor of rows of `cols` values: `payload` holds the stored rows,
    /// `codebook` the f16 bytes of the codebook tensor.
    pub fn decode(&self, payload: &[u8], codebook: &[u8], cols: usize) -> Result<Vec<f32>, DecodeError> {
        let book = self.parse_codebook(codebook, cols)?;
        let rb = self
            .row_bytes(cols)
            .ok_or_else(|| DecodeError::Invalid(format!("rows of {cols} values cannot be stored as {self}")))?;
        if !payload.len().is_multiple_of(rb) {
            return Err(DecodeError::Invalid(format!(
                "{} bytes is not a whole number of {rb}-byte {self} rows",
                payload.len()
            )));
        }
        let mut out = vec![0.0f32; payload.len() / rb * cols];
        out.par_chunks_mut(cols).zip(payload.par_chunks(rb)).for_each(|(o, r)| self.decode_row(&book, r, o));
        Ok(out)
    }
}

impl fmt::Display for VqFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vq{}x{}", self.dim, self.entries())?;
        if self.residual_bits > 0 {
            write!(f, "+{}", self.residual_entries())?;
        }
        if self.outliers > 0 {
            write!(f, "o{}", self.outliers)?;
        }
        Ok(())
    }
}

/// Largest grid code of a codebook entry: lowbit's quantizer stores every codebook on an
/// int8 grid of its own, each value `k · m · 2^e` with |k| ≤ 127 and the step's
/// significand `m` in 8…15 ([`grid_step`]), so the integer kernels look up one byte per
/// value and entry (`kernels::vq_bytes`); such values (at most 11 significant bits) are
/// exact in the f16 the file stores, and the grid spans at least 8/9 of the codebook's
/// range (a power-of-two step alone wastes up to half of it). Decoding does not depend
/// on it: files whose codebooks are off the grid (written before) decode and run as
/// before, on the int16 path.
pub const GRID_MAX: i32 = 127;

/// Smallest grid exponent (f16's smallest subnormal, 2⁻²⁴): every `k · m · 2^e` with
/// |k| ≤ [`GRID_MAX`], `m` ≤ 15 and `e` ≥ this is an f16 value.
const GRID_MIN_EXPONENT: i32 = -24;

/// The step `(m, e)` — `m · 2^e`, `m` in 8…15 — of the int8 grid of a codebook's values
/// `vals`: the smallest with max|v| ≤ 127 · m · 2^e (with `e` at least 2⁻²⁴'s; that for an
/// all-zero codebook); `None` when a value is not finite.
pub fn grid_step(vals: &[f32]) -> Option<(i32, i32)> {
    let amax = vals.iter().try_fold(0f32, |m, v| v.is_finite().then(|| m.max(v.abs())))?;
    let need = amax / GRID_MAX as f32;
    // Steps m·2^e rise with (e, m) in order (8·2^(e+1) > 15·2^e): from an exponent whose
    // steps are all too small, the first that spans the values.
    let mut e = if need > 0.0 { need.log2().floor() as i32 - 5 } else { GRID_MIN_EXPONENT };
    e = e.max(GRID_MIN_EXPONENT);
    loop {
        if let Some(m) = (8..=15).find(|&m| GRID_MAX as f32 * step_value((m, e)) >= amax) {
            return Some((m, e));
        }
        e += 1;
    }
}

/// [`grid_step`] as a number.
fn step_value((m, e): (i32, i32)) -> f32 {
    m as f32 * 2f32.powi(e)
}

/// Rounds a codebook's values to its int8 grid ([`GRID_MAX`]): each to the nearest
/// multiple of the step, at most 127 steps — except the largest in magnitude, rounded
/// away from zero, so that the rounded values keep the step ([`grid_step`] of them is
/// the same: nothing smaller spans them). Non-finite values are left for the encoder's
/// checks to refuse.
pub fn round_to_grid(vals: &mut [f32]) {
    let Some(step) = grid_step(vals).map(step_value) else { return };
    let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    for v in vals.iter_mut() {
        let k = *v / step;
        let k = if v.abs() == amax { k.abs().ceil().copysign(k) } else { k.round() };
        *v = k.clamp(-GRID_MAX as f32, GRID_MAX as f32) * step;
    }
}

/// A codebook's grid step `(m, e)` and codes `k` when every value is exactly `k · m · 2^e`
/// on its grid ([`round_to_grid`]'s output), else `None`.
pub fn grid_codes(vals: &[f32]) -> Option<((i32, i32), Vec<i8>)> {
    let g = grid_step(vals)?;
    let step = step_value(g);
    let codes = vals
        .iter()
        .map(|&v| {
            let k = (v / step).round();
            (k * step == v && k.abs() <= GRID_MAX as f32).then_some(k as i8)
        })
        .collect::<Option<Vec<i8>>>()?;
    Some((g, codes))
}

/// The name of the codebook tensor of tensor `name`.
pub fn codebook_name(name: &str) -> String {
    format!("{name}.codebook")
}

/// Writes a stored row: f16 `scale`, then `codes` (`bits` each), then `residual`
/// (`residual_bits` each), then the outlier values (as f16); `out` is the row's bytes.
pub fn pack_row(f: &VqFormat, scale: f32, codes: &[u32], residual: &[u32], outliers: &[f32], out: &mut [u8]) {
    out.fill(0);
    let tail = out.len() - 2 * outliers.len();
    for (o, &v) in out[tail..].chunks_exact_mut(2).zip(outliers) {
        o.copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
    }
    out[..2].copy_from_slice(&half::f16::from_f32(scale).to_bits().to_le_bytes());
    let (bits, residual_bits) = (f.bits as usize, f.residual_bits as usize);
    let stream = &mut out[2..tail];
    for (i, &c) in codes.iter().enumerate() {
        write_bits(stream, i * bits, bits, c);
    }
    for (i, &c) in residual.iter().enumerate() {
        write_bits(stream, codes.len() * bits + i * residual_bits, residual_bits, c);
    }
}

#[cfg(test)]
mod tests {

    /// Rounded codebooks are on their grid, exact in f16, within half a step of the input
    /// (a step for the largest),
    /// at most 127 steps, and the step the smallest `m · 2^e` that spans the values;
    /// values off the grid are refused.
    #[test]
    fn codebooks_round_to_an_int8_grid() {
        for (scale, n) in [(1.5f32, 1024), (0.03, 512), (1e-9, 8), (0.0, 4), (3000.0, 64), (9.633, 1000)] {
            let vals: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618).fract() * 2.0 - 1.0) * scale).collect();
            let mut r = vals.clone();
            round_to_grid(&mut r);
            let ((m, e), codes) = grid_codes(&r).unwrap_or_else(|| panic!("{scale}: off the grid"));
            let step = step_value((m, e));
            let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((8..=15).contains(&m) && amax <= GRID_MAX as f32 * step, "{scale}: {m}·2^{e}");
            // No smaller step of the form spans the values.
            let smaller = (-24..e).flat_map(|e2| (8..=15).map(move |m2| step_value((m2, e2))));
            let smaller = smaller.chain((8..m).map(|m2| step_value((m2, e))));
            assert!(
                e == -24 || smaller.clone().all(|s| amax > GRID_MAX as f32 * s),
                "{scale}: {m}·2^{e} not the least"
            );
            for ((&v, &g), &k) in vals.iter().zip(&r).zip(&codes) {
                assert_eq!(half::f16::from_f32(g).to_f32(), g, "{scale}: {g} not an f16");
                assert_eq!(k as f32 * step, g);
                let bound = if v.abs() == amax { step } else { step / 2.0 };
                assert!((v - g).abs() <= bound, "{scale}: {v} -> {g}");
            }
        }
        assert!(grid_codes(&[1.0, 0.3]).is_none());
        // 1/127 ≤ m·2^e: 9·2^-10 (8·2^-10 is too small, 15·2^-11 too).
        assert_eq!(grid_step(&[1.0, 0.5, -0.25]), Some((9, -10)));
        assert!(grid_step(&[f32::NAN]).is_none());
    }

    use super::*;

    #[test]
    fn names_round_trip_and_sizes_count_everything() {
        for name in ["vq4x256", "vq8x256+256", "vq8x65536", "vq6x4096", "vq4x256+128o8", "vq4x16o1"] {
            assert_eq!(VqFormat::from_name(name).unwrap().to_string(), name);
        }
        for bad in
            ["vq8x300", "vq1x256", "vq8x131072", "vq8", "q8x256", "vq8x256+3", "vq4x256o0", "vq4x256o5000", "vq4x256o"]
        {
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
        // Outliers: two bytes per row and column, two per column in the codebook.
        let o = VqFormat::from_name("vq4x256o8").unwrap();
        assert_eq!(o.row_bytes(576), Some(2 + 144 + 16));
        assert_eq!(o.cols_of_row_bytes(162), Some(576));
        assert_eq!(o.tensor_bytes(&[576, 576]).unwrap(), 576 * 162 + 2048 + 16);
        assert_eq!(o.row_bytes(8), None);
        assert_eq!(o.codebook_dims(), vec![(2048 + 16) / 2]);
        assert_eq!(f.codebook_dims(), vec![4, 256]);
    }

    #[test]
    fn packed_rows_decode_to_scaled_codebook_sums() {
        let f = VqFormat::from_name("vq2x4+4").unwrap();
        let cb: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.5, 0.5, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0];
        let mut row = vec![0u8; f.row_bytes(8).unwrap()];
        pack_row(&f, 2.0, &[3, 0, 1, 2], &[1, 0, 0, 1], &[], &mut row);
        let mut out = vec![0.0f32; 8];
        let book = Codebook { entries: cb.clone(), outlier_columns: vec![] };
        f.decode_row(&book, &row, &mut out);
        assert_eq!(out, vec![10.0, 12.0, 1.0, 3.0, 5.0, 7.0, 6.0, 8.0]);
        // Two outlier columns replace what the codes give there.
        let o = VqFormat::from_name("vq2x4+4o2").unwrap();
        let mut row = vec![0u8; o.row_bytes(8).unwrap()];
        pack_row(&o, 2.0, &[3, 0, 1, 2], &[1, 0, 0, 1], &[-1.5, 25.0], &mut row);
        let book = Codebook { entries: cb, outlier_columns: vec![1, 6] };
        let bytes = book.to_bytes();
        assert_eq!(o.parse_codebook(&bytes, 8).unwrap(), book);
        assert!(o.parse_codebook(&bytes, 6).is_err(), "column 6 of a 6-wide row");
        assert!(o.parse_codebook(&bytes[2..], 8).is_err());
        let mut swapped = book.clone();
        swapped.outlier_columns = vec![6, 1];
        assert!(o.parse_codebook(&swapped.to_bytes(), 8).is_err());
        o.decode_row(&book, &row, &mut out);
        assert_eq!(out, vec![10.0, -1.5, 1.0, 3.0, 5.0, 7.0, 25.0, 8.0]);
    }
}
