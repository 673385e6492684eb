//! Plain (unblocked) element types: IEEE floats, bfloat16 and integers.

use super::GgmlType;

/// Decodes one element of a plain type (`block` holds exactly one element).
pub(super) fn decode_scalar(ty: GgmlType, block: &[u8], out: &mut [f32]) {
    out[0] = match ty {
        GgmlType::F32 => f32::from_le_bytes(block[..4].try_into().expect("4 bytes")),
        GgmlType::F16 => super::f16_at(block, 0),
        // bf16 is the top half of an f32: exact widening.
        GgmlType::BF16 => f32::from_bits((u16::from_le_bytes([block[0], block[1]]) as u32) << 16),
        GgmlType::F64 => f64::from_le_bytes(block[..8].try_into().expect("8 bytes")) as f32,
        GgmlType::I8 => block[0] as i8 as f32,
        GgmlType::I16 => i16::from_le_bytes([block[0], block[1]]) as f32,
        GgmlType::I32 => i32::from_le_bytes(block[..4].try_into().expect("4 bytes")) as f32,
        GgmlType::I64 => i64::from_le_bytes(block[..8].try_into().expect("8 bytes")) as f32,
        _ => unreachable!("decode_scalar called for block type {ty}"),
    };
}

/// Decodes a whole buffer of a plain type (block size 1) into `out`.
pub(super) fn decode_plain(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let ts = ty.type_size();
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        _ => {
            for (o, c) in out.chunks_exact_mut(1).zip(bytes.chunks_exact(ts)) {
                decode_scalar(ty, c, o);
            }
        }
    }
}
