//! Number formats: how weights are stored. Every ggml tensor type llama.cpp defines is
//! listed in [`GgmlType`] with its block geometry, and can be decoded to f32 bit-exactly
//! as llama.cpp decodes it. One file per family keeps each layout in one place.

pub mod activation;
pub mod encode;
mod float;
pub(crate) mod fp4;
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

/// Everything lowbit knows about one ggml type, in one place: [`TYPE_TABLE`] has one entry
/// per [`GgmlType`] (a test walks it). Adding a type means one entry here and its decoder
/// (and encoder) files; nothing else matches on types.
pub struct TypeFacts {
    /// The type.
    pub ty: GgmlType,
    /// ggml id, as stored in GGUF tensor infos (ggml.h).
    pub id: u32,
    /// The name llama.cpp prints.
    pub name: &'static str,
    /// Elements per block.
    pub block: usize,
    /// Bytes per block (ggml-common.h).
    pub bytes: usize,
    /// Decodes one block (`bytes` bytes) into `block` values exactly as llama.cpp's
    /// `dequantize_row_*` does.
    pub decode: fn(&[u8], &mut [f32]),
    /// How lowbit writes it (`None`: lowbit can read it but not write it).
    pub encode: Option<Encoder>,
    /// What GPTQ's sweep can do with a block of it.
    pub(crate) gptq: Gptq,
    /// The activation type llama.cpp's CPU backend quantizes activations to before a dot
    /// product with weights of this type (its `vec_dot_type`); `None`: plain f32.
    pub vec_dot: Option<GgmlType>,
    /// Its row kernels ([`crate::kernels`]): the type's blocks in integer form, dotted with
    /// quantized or f32 activations. `None`: the runtime decodes its rows to f32 instead.
    pub kernel: Option<Kernel>,
}

impl TypeFacts {
    /// Exact storage cost in bits per element.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.bytes as f64 / self.block as f64
    }
}

/// How lowbit encodes one type.
#[derive(Clone, Copy)]
pub enum Encoder {
    /// One value at a time (the float types).
    Plain(fn(f32, &mut [u8])),
    /// One block at a time, with the fit and importances of [`encode::BlockInput`].
    Block(fn(&encode::BlockInput, &mut [u8])),
}

/// What GPTQ ([`crate::method::gptq`]) can do with a block of a type.
#[derive(Clone, Copy)]
pub(crate) enum Gptq {
    /// Nothing: GPTQ does not support the type.
    No,
    /// Scalar levels: per-position values under fixed scales ([`encode::levels`]).
    Levels,
    /// Lattice i-quant: groups of 8 chosen on a grid ([`encode::iquant`]).
    Lattice(&'static encode::iquant::LatticeFormat),
}

use crate::kernels::blocks as kb;
use crate::kernels::Kernel;
use encode::iquant as ei;
use encode::kquant as ek;
use encode::legacy as el;
use encode::nonlinear as en;
use GgmlType::*;

/// One entry per ggml type, in id order: geometry from ggml.h / ggml-common.h, decoders
/// and encoders from this module's files, `vec_dot` from ggml-cpu's type traits.
pub static TYPE_TABLE: &[TypeFacts] = &[
    TypeFacts {
        ty: F32,
        id: 0,
        name: "F32",
        block: 1,
        bytes: 4,
        decode: float::decode_f32,
        encode: Some(Encoder::Plain(float::encode_f32)),
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: F16,
        id: 1,
        name: "F16",
        block: 1,
        bytes: 2,
        decode: float::decode_f16,
        encode: Some(Encoder::Plain(float::encode_f16)),
        gptq: Gptq::No,
        vec_dot: Some(F16),
        kernel: None,
    },
    TypeFacts {
        ty: Q4_0,
        id: 2,
        name: "Q4_0",
        block: 32,
        bytes: 2 + 16,
        decode: legacy::dequantize_q4_0,
        encode: Some(Encoder::Block(el::encode_q4_0)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_0),
        kernel: Some(Kernel::small::<kb::BQ4_0>()),
    },
    TypeFacts {
        ty: Q4_1,
        id: 3,
        name: "Q4_1",
        block: 32,
        bytes: 2 + 2 + 16,
        decode: legacy::dequantize_q4_1,
        encode: Some(Encoder::Block(el::encode_q4_1)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_1),
        kernel: Some(Kernel::small::<kb::BQ4_1>()),
    },
    TypeFacts {
        ty: Q5_0,
        id: 6,
        name: "Q5_0",
        block: 32,
        bytes: 2 + 4 + 16,
        decode: legacy::dequantize_q5_0,
        encode: Some(Encoder::Block(el::encode_q5_0)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_0),
        kernel: Some(Kernel::small::<kb::BQ5_0>()),
    },
    TypeFacts {
        ty: Q5_1,
        id: 7,
        name: "Q5_1",
        block: 32,
        bytes: 2 + 2 + 4 + 16,
        decode: legacy::dequantize_q5_1,
        encode: Some(Encoder::Block(el::encode_q5_1)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_1),
        kernel: Some(Kernel::small::<kb::BQ5_1>()),
    },
    TypeFacts {
        ty: Q8_0,
        id: 8,
        name: "Q8_0",
        block: 32,
        bytes: 2 + 32,
        decode: legacy::dequantize_q8_0,
        encode: Some(Encoder::Block(el::encode_q8_0)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_0),
        kernel: Some(Kernel::small::<kb::BQ8_0>()),
    },
    TypeFacts {
        ty: Q8_1,
        id: 9,
        name: "Q8_1",
        block: 32,
        bytes: 2 + 2 + 32,
        decode: legacy::dequantize_q8_1,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: Q2_K,
        id: 10,
        name: "Q2_K",
        block: QK_K,
        bytes: 2 + 2 + QK_K / 16 + QK_K / 4,
        decode: kquant::dequantize_q2_k,
        encode: Some(Encoder::Block(ek::encode_q2_k)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BQ2K>()),
    },
    TypeFacts {
        ty: Q3_K,
        id: 11,
        name: "Q3_K",
        block: QK_K,
        bytes: 2 + QK_K / 4 + QK_K / 8 + 12,
        decode: kquant::dequantize_q3_k,
        encode: Some(Encoder::Block(ek::encode_q3_k)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BQ3K>()),
    },
    TypeFacts {
        ty: Q4_K,
        id: 12,
        name: "Q4_K",
        block: QK_K,
        bytes: 2 + 2 + QK_K / 2 + 12,
        decode: kquant::dequantize_q4_k,
        encode: Some(Encoder::Block(ek::encode_q4_k)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BQ4K>()),
    },
    TypeFacts {
        ty: Q5_K,
        id: 13,
        name: "Q5_K",
        block: QK_K,
        bytes: 2 + 2 + QK_K / 2 + QK_K / 8 + 12,
        decode: kquant::dequantize_q5_k,
        encode: Some(Encoder::Block(ek::encode_q5_k)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BQ5K>()),
    },
    TypeFacts {
        ty: Q6_K,
        id: 14,
        name: "Q6_K",
        block: QK_K,
        bytes: 2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
        decode: kquant::dequantize_q6_k,
        encode: Some(Encoder::Block(ek::encode_q6_k)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BQ6K>()),
    },
    TypeFacts {
        ty: Q8_K,
        id: 15,
        name: "Q8_K",
        block: QK_K,
        bytes: 4 + QK_K + QK_K / 8,
        decode: kquant::dequantize_q8_k,
        encode: Some(Encoder::Block(ek::encode_q8_k)),
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: IQ2_XXS,
        id: 16,
        name: "IQ2_XXS",
        block: QK_K,
        bytes: 2 + QK_K / 4,
        decode: iquant::dequantize_iq2_xxs,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ2_XXS, b, o))),
        gptq: Gptq::Lattice(&ei::IQ2_XXS),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq2Xxs>()),
    },
    TypeFacts {
        ty: IQ2_XS,
        id: 17,
        name: "IQ2_XS",
        block: QK_K,
        bytes: 2 + QK_K / 4 + QK_K / 32,
        decode: iquant::dequantize_iq2_xs,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ2_XS, b, o))),
        gptq: Gptq::Lattice(&ei::IQ2_XS),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq2Xs>()),
    },
    TypeFacts {
        ty: IQ3_XXS,
        id: 18,
        name: "IQ3_XXS",
        block: QK_K,
        bytes: 2 + QK_K / 4 + QK_K / 8,
        decode: iquant::dequantize_iq3_xxs,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ3_XXS, b, o))),
        gptq: Gptq::Lattice(&ei::IQ3_XXS),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq3Xxs>()),
    },
    TypeFacts {
        ty: IQ1_S,
        id: 19,
        name: "IQ1_S",
        block: QK_K,
        bytes: 2 + QK_K / 8 + QK_K / 16,
        decode: iquant::dequantize_iq1_s,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ1_S, b, o))),
        gptq: Gptq::Lattice(&ei::IQ1_S),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq1S>()),
    },
    TypeFacts {
        ty: IQ4_NL,
        id: 20,
        name: "IQ4_NL",
        block: 32,
        bytes: 2 + 16,
        decode: iquant::dequantize_iq4_nl,
        encode: Some(Encoder::Block(en::encode_iq4_nl)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_0),
        kernel: Some(Kernel::small::<kb::BIq4Nl>()),
    },
    TypeFacts {
        ty: IQ3_S,
        id: 21,
        name: "IQ3_S",
        block: QK_K,
        bytes: 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
        decode: iquant::dequantize_iq3_s,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ3_S, b, o))),
        gptq: Gptq::Lattice(&ei::IQ3_S),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq3S>()),
    },
    TypeFacts {
        ty: IQ2_S,
        id: 22,
        name: "IQ2_S",
        block: QK_K,
        bytes: 2 + QK_K / 4 + QK_K / 16,
        decode: iquant::dequantize_iq2_s,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ2_S, b, o))),
        gptq: Gptq::Lattice(&ei::IQ2_S),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq2S>()),
    },
    TypeFacts {
        ty: IQ4_XS,
        id: 23,
        name: "IQ4_XS",
        block: QK_K,
        bytes: 2 + 2 + QK_K / 2 + QK_K / 64,
        decode: iquant::dequantize_iq4_xs,
        encode: Some(Encoder::Block(en::encode_iq4_xs)),
        gptq: Gptq::Levels,
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq4Xs>()),
    },
    TypeFacts {
        ty: I8,
        id: 24,
        name: "I8",
        block: 1,
        bytes: 1,
        decode: float::decode_i8,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: I16,
        id: 25,
        name: "I16",
        block: 1,
        bytes: 2,
        decode: float::decode_i16,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: I32,
        id: 26,
        name: "I32",
        block: 1,
        bytes: 4,
        decode: float::decode_i32,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: I64,
        id: 27,
        name: "I64",
        block: 1,
        bytes: 8,
        decode: float::decode_i64,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: F64,
        id: 28,
        name: "F64",
        block: 1,
        bytes: 8,
        decode: float::decode_f64,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: IQ1_M,
        id: 29,
        name: "IQ1_M",
        block: QK_K,
        bytes: QK_K / 8 + QK_K / 16 + QK_K / 32,
        decode: iquant::dequantize_iq1_m,
        encode: Some(Encoder::Block(|b, o| ei::encode(&ei::IQ1_M, b, o))),
        gptq: Gptq::Lattice(&ei::IQ1_M),
        vec_dot: Some(Q8_K),
        kernel: Some(Kernel::super_block::<kb::BIq1M>()),
    },
    TypeFacts {
        ty: BF16,
        id: 30,
        name: "BF16",
        block: 1,
        bytes: 2,
        decode: float::decode_bf16,
        encode: Some(Encoder::Plain(float::encode_bf16)),
        gptq: Gptq::No,
        vec_dot: Some(BF16),
        kernel: None,
    },
    TypeFacts {
        ty: TQ1_0,
        id: 34,
        name: "TQ1_0",
        block: QK_K,
        bytes: 2 + 4 * 13,
        decode: ternary::dequantize_tq1_0,
        encode: None,
        gptq: Gptq::No,
        vec_dot: Some(Q8_K),
        kernel: None,
    },
    TypeFacts {
        ty: TQ2_0,
        id: 35,
        name: "TQ2_0",
        block: QK_K,
        bytes: 2 + 64,
        decode: ternary::dequantize_tq2_0,
        encode: None,
        gptq: Gptq::No,
        vec_dot: Some(Q8_K),
        kernel: None,
    },
    TypeFacts {
        ty: MXFP4,
        id: 39,
        name: "MXFP4",
        block: 32,
        bytes: 1 + 16,
        decode: fp4::dequantize_mxfp4,
        encode: Some(Encoder::Block(en::encode_mxfp4)),
        gptq: Gptq::No,
        vec_dot: Some(Q8_0),
        kernel: Some(Kernel::small::<kb::BMxfp4>()),
    },
    TypeFacts {
        ty: NVFP4,
        id: 40,
        name: "NVFP4",
        block: 64,
        bytes: 4 + 32,
        decode: fp4::dequantize_nvfp4,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
    TypeFacts {
        ty: Q1_0,
        id: 41,
        name: "Q1_0",
        block: 128,
        bytes: 2 + 16,
        decode: legacy::dequantize_q1_0,
        encode: None,
        gptq: Gptq::No,
        vec_dot: None,
        kernel: None,
    },
];

impl GgmlType {
    /// The type's entry in [`TYPE_TABLE`].
    pub fn facts(self) -> &'static TypeFacts {
        TYPE_TABLE.iter().find(|r| r.ty == self).expect("every GgmlType is in TYPE_TABLE")
    }

    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPE_TABLE.iter().map(|r| r.ty)
    }

    /// The type with ggml id `id`, if lowbit knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.id == id).map(|r| r.ty)
    }

    /// The type named `name` (case-insensitive, as llama.cpp spells it), if known.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.name.eq_ignore_ascii_case(name)).map(|r| r.ty)
    }

    /// The ggml id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.facts().id
    }

    /// The name llama.cpp prints for the type.
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.facts().block
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.facts().bytes
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
    /// Bytes that do not form a valid tensor of a lowbit-native or VQ format.
    #[error("{0}")]
    Invalid(String),
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
    let decode = ty.facts().decode;
    out.par_chunks_mut(blocks_per_chunk * bs).zip(bytes.par_chunks(blocks_per_chunk * ts)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(bs).zip(b.chunks_exact(ts)) {
            decode(bb, ob);
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

    /// Walks [`TYPE_TABLE`]: every type once, ids and names round trip, geometry as
    /// ggml's; every encodable type encodes and decodes back within a bound set by its bits
    /// (a uniform 4-bit grid over this row's spread leaves a relative RMS error near 0.06;
    /// MXFP4's E2M1 grid under a power-of-two scale measured 0.11, so ≥ 4 bits must stay
    /// under 0.15; 0.8 leaves room for the 1.5-bit IQ1 types); GPTQ's level and
    /// lattice entries agree with the level reader; `vec_dot` types are activation types.
    #[test]
    fn type_table_is_complete_and_consistent() {
        use encode::levels::block_levels;
        let mut seen = std::collections::HashSet::new();
        for f in TYPE_TABLE {
            assert!(seen.insert(f.ty), "{} listed twice", f.name);
            assert!(std::ptr::eq(f.ty.facts(), f), "{}", f.name);
            assert_eq!(format!("{:?}", f.ty), f.name, "the table names the type as the enum does");
            assert!(f.block > 0 && f.bytes > 0 && (f.block == 1 || f.block.is_multiple_of(32)), "{}", f.name);
            let n = 512;
            let x: Vec<f32> =
                (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 7) as f32)).collect();
            let levels_reader = block_levels(f.ty, &vec![0u8; f.bytes]).is_some();
            assert_eq!(levels_reader, matches!(f.gptq, Gptq::Levels), "{}: level reader vs table", f.name);
            match f.encode {
                None => assert!(matches!(f.gptq, Gptq::No), "{}: GPTQ needs an encoder", f.name),
                Some(_) => {
                    let bytes = encode::quantize_rows(f.ty, &x, n, None, encode::Fit::Search).unwrap();
                    assert_eq!(bytes.len() as u64, f.ty.row_bytes(n as u64).unwrap(), "{}", f.name);
                    let y = dequantize_to_vec(f.ty, &bytes, n).unwrap();
                    let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
                    let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
                    assert!(err / norm < 0.8, "{}: relative error {}", f.name, err / norm);
                    if f.bits_per_weight() >= 4.0 {
                        assert!(err / norm < 0.15, "{}: relative error {}", f.name, err / norm);
                    }
                }
            }
            if let Some(a) = f.vec_dot {
                assert!(matches!(a, Q8_0 | Q8_1 | Q8_K | F16 | BF16), "{}: vec_dot {a}", f.name);
            }
        }
        assert_eq!(seen.len(), GgmlType::all().count());
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
