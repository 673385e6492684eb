//! Number formats: how weights are stored. Every ggml tensor type llama.cpp defines is
//! listed in [`GgmlType`] with its block geometry, and can be decoded to f32 bit-exactly
//! as llama.cpp decodes it. One file per family keeps each layout in one place.

pub mod activation;
pub mod encode;
mod float;
mod fp4;
pub mod iquant;
pub mod iquant_grids;
pub mod kquant;
pub mod legacy;
pub mod native;
pub mod storage;
mod ternary;
pub mod vq;

use rayon::prelude::*;

/// Super-block size of the k-quants and i-quants.
pub const QK_K: usize = 256;

/// A ggml tensor type, numbered as in ggml.h / GGUF files.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// (type, id, name, elements per block, bytes per block), from ggml.h / ggml-common.h.
const TYPE_TABLE: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 2 + 16),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 2 + 32),
    // ggml-common.h: two f16 (d, d·sum) + 32 codes = 36 bytes (gguf-py still says 40).
    (GgmlType::Q8_1, 9, "Q8_1", 32, 2 + 2 + 32),
    (GgmlType::Q2_K, 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    (GgmlType::Q3_K, 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    (GgmlType::Q5_K, 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    (GgmlType::Q6_K, 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    (GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
    (GgmlType::IQ3_S, 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    (GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 1 + 16),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 4 + 32),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 2 + 16),
];

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TYPE_TABLE.iter().find(|r| r.0 == self).expect("every GgmlType is in TYPE_TABLE")
    }

    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPE_TABLE.iter().map(|r| r.0)
    }

    /// The type with ggml id `id`, if lowbit knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// The type named `name` (case-insensitive, as llama.cpp spells it), if known.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.2.eq_ignore_ascii_case(name)).map(|r| r.0)
    }

    /// The ggml id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The name llama.cpp prints for the type.
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Exact storage cost in bits per element, scales included.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.type_size() as f64 / self.block_size() as f64
    }

    /// Bytes needed for a row of `n` elements, or `None` if `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a byte buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The element count is not a whole number of blocks.
    #[error("{n} elements is not a multiple of {ty}'s block size {block}")]
    PartialBlock {
        /// The type being decoded.
        ty: GgmlType,
        /// Elements requested.
        n: usize,
        /// The type's block size.
        block: usize,
    },
    /// The byte buffer does not hold exactly the requested elements.
    #[error("{ty}: {n} elements need {need} bytes, got {got}")]
    WrongLength {
        /// The type being decoded.
        ty: GgmlType,
        /// Elements requested.
        n: usize,
        /// Bytes those elements occupy.
        need: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Decodes one block of `ty` from `block` (exactly `type_size` bytes) into `out`
/// (exactly `block_size` values).
fn dequantize_block(ty: GgmlType, block: &[u8], out: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => float::decode_scalar(ty, block, out),
        Q4_0 => legacy::dequantize_q4_0(block, out),
        Q4_1 => legacy::dequantize_q4_1(block, out),
        Q5_0 => legacy::dequantize_q5_0(block, out),
        Q5_1 => legacy::dequantize_q5_1(block, out),
        Q8_0 => legacy::dequantize_q8_0(block, out),
        Q8_1 => legacy::dequantize_q8_1(block, out),
        Q1_0 => legacy::dequantize_q1_0(block, out),
        Q2_K => kquant::dequantize_q2_k(block, out),
        Q3_K => kquant::dequantize_q3_k(block, out),
        Q4_K => kquant::dequantize_q4_k(block, out),
        Q5_K => kquant::dequantize_q5_k(block, out),
        Q6_K => kquant::dequantize_q6_k(block, out),
        Q8_K => kquant::dequantize_q8_k(block, out),
        IQ2_XXS => iquant::dequantize_iq2_xxs(block, out),
        IQ2_XS => iquant::dequantize_iq2_xs(block, out),
        IQ2_S => iquant::dequantize_iq2_s(block, out),
        IQ3_XXS => iquant::dequantize_iq3_xxs(block, out),
        IQ3_S => iquant::dequantize_iq3_s(block, out),
        IQ1_S => iquant::dequantize_iq1_s(block, out),
        IQ1_M => iquant::dequantize_iq1_m(block, out),
        IQ4_NL => iquant::dequantize_iq4_nl(block, out),
        IQ4_XS => iquant::dequantize_iq4_xs(block, out),
        TQ1_0 => ternary::dequantize_tq1_0(block, out),
        TQ2_0 => ternary::dequantize_tq2_0(block, out),
        MXFP4 => fp4::dequantize_mxfp4(block, out),
        NVFP4 => fp4::dequantize_nvfp4(block, out),
    }
}

/// Decodes `out.len()` elements of type `ty` from `bytes` into `out`, exactly as
/// llama.cpp's `dequantize_row_*` does. Large inputs are decoded in parallel.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let n = out.len();
    if !n.is_multiple_of(bs) {
        return Err(DecodeError::PartialBlock { ty, n, block: bs });
    }
    let need = n / bs * ts;
    if bytes.len() != need {
        return Err(DecodeError::WrongLength { ty, n, need, got: bytes.len() });
    }
    if bs == 1 {
        out.par_chunks_mut(16384).zip(bytes.par_chunks(16384 * ts)).for_each(|(o, b)| float::decode_plain(ty, b, o));
        return Ok(());
    }
    // Chunks of whole blocks, big enough to amortise rayon's scheduling.
    let blocks_per_chunk = (16384 / bs).max(1);
    out.par_chunks_mut(blocks_per_chunk * bs).zip(bytes.par_chunks(blocks_per_chunk * ts)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(bs).zip(b.chunks_exact(ts)) {
            dequantize_block(ty, bb, ob);
        }
    });
    Ok(())
}

/// Decodes a whole buffer of `ty` into a new vector of `n` values.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, DecodeError> {
    let mut out = vec![0.0f32; n];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

/// Reads the little-endian f16 at `b[i..i+2]` as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Reads the little-endian u16 at `b[i..i+2]`.
#[inline]
pub(crate) fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Reads the little-endian u32 at `b[i..i+4]`.
#[inline]
pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for ty in GgmlType::all() {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
            assert_eq!(GgmlType::from_name(ty.name()), Some(ty));
            assert!(ty.type_size() > 0 && ty.block_size() > 0);
        }
        assert_eq!(GgmlType::from_id(4), None); // removed Q4_2
        assert!((GgmlType::Q4_K.bits_per_weight() - 4.5).abs() < 1e-12);
        assert!((GgmlType::IQ2_XXS.bits_per_weight() - 2.0625).abs() < 1e-12);
        assert!((GgmlType::Q6_K.bits_per_weight() - 6.5625).abs() < 1e-12);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = vec![0.0; 33];
        assert!(dequantize(GgmlType::Q4_0, &[0; 36], &mut out).is_err());
        let mut out = vec![0.0; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], &mut out).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out).is_ok());
    }
}

#[cfg(test)]
mod hand_derived_tests {
    //! Types the `gguf` reference package cannot decode (Q8_1, Q8_K, Q1_0, integers,
    //! F64), checked against values derived by hand from the block definitions.
    use super::*;

    fn f16(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_1_is_scale_times_code() {
        let mut b = vec![0u8; 36];
        b[..2].copy_from_slice(&f16(0.25));
        b[2..4].copy_from_slice(&f16(99.0)); // the stored sum does not affect values
        for j in 0..32 {
            b[4 + j] = (j as i8 - 16) as u8;
        }
        let v = dequantize_to_vec(GgmlType::Q8_1, &b, 32).unwrap();
        for (j, x) in v.iter().enumerate() {
            assert_eq!(*x, (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn q8_k_uses_an_f32_scale() {
        let mut b = vec![0u8; 292];
        b[..4].copy_from_slice(&0.1f32.to_le_bytes());
        b[4] = 127;
        b[5] = (-128i8) as u8;
        let v = dequantize_to_vec(GgmlType::Q8_K, &b, 256).unwrap();
        assert_eq!(v[0], 0.1f32 * 127.0);
        assert_eq!(v[1], 0.1f32 * -128.0);
        assert!(v[2..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn q1_0_bits_select_plus_or_minus_d() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16(1.5));
        b[2] = 0b0000_0101; // elements 0 and 2 positive
        b[17] = 0x80; // element 127 positive
        let v = dequantize_to_vec(GgmlType::Q1_0, &b, 128).unwrap();
        assert_eq!((v[0], v[1], v[2], v[126], v[127]), (1.5, -1.5, 1.5, -1.5, 1.5));
    }

    #[test]
    fn plain_types_widen_exactly() {
        let v = dequantize_to_vec(GgmlType::I8, &[0xFF, 0x7F], 2).unwrap();
        assert_eq!(v, vec![-1.0, 127.0]);
        let v = dequantize_to_vec(GgmlType::I16, &(-300i16).to_le_bytes(), 1).unwrap();
        assert_eq!(v, vec![-300.0]);
        let v = dequantize_to_vec(GgmlType::I32, &(123456i32).to_le_bytes(), 1).unwrap();
        assert_eq!(v, vec![123456.0]);
        let v = dequantize_to_vec(GgmlType::I64, &(-7i64).to_le_bytes(), 1).unwrap();
        assert_eq!(v, vec![-7.0]);
        let v = dequantize_to_vec(GgmlType::F64, &0.5f64.to_le_bytes(), 1).unwrap();
        assert_eq!(v, vec![0.5]);
        let v = dequantize_to_vec(GgmlType::BF16, &0x3FC0u16.to_le_bytes(), 1).unwrap();
        assert_eq!(v, vec![1.5]);
    }
}
