//! Plain (unblocked) element types: IEEE floats, bfloat16 and integers.

use super::GgmlType;

/// Decodes one f32 (`block` holds exactly one element; so for every decoder here).
pub(super) fn decode_f32(block: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes(block[..4].try_into().expect("4 bytes"));
}

/// Decodes one f16.
pub(super) fn decode_f16(block: &[u8], out: &mut [f32]) {
    out[0] = super::f16_at(block, 0);
}

/// Decodes one bf16: the top half of an f32, an exact widening.
pub(super) fn decode_bf16(block: &[u8], out: &mut [f32]) {
    out[0] = f32::from_bits((u16::from_le_bytes([block[0], block[1]]) as u32) << 16);
}

/// Decodes one f64 (rounded to f32).
pub(super) fn decode_f64(block: &[u8], out: &mut [f32]) {
    out[0] = f64::from_le_bytes(block[..8].try_into().expect("8 bytes")) as f32;
}

/// Decodes one i8.
pub(super) fn decode_i8(block: &[u8], out: &mut [f32]) {
    out[0] = block[0] as i8 as f32;
}

/// Decodes one i16.
pub(super) fn decode_i16(block: &[u8], out: &mut [f32]) {
    out[0] = i16::from_le_bytes([block[0], block[1]]) as f32;
}

/// Decodes one i32.
pub(super) fn decode_i32(block: &[u8], out: &mut [f32]) {
    out[0] = i32::from_le_bytes(block[..4].try_into().expect("4 bytes")) as f32;
}

/// Decodes one i64.
pub(super) fn decode_i64(block: &[u8], out: &mut [f32]) {
    out[0] = i64::from_le_bytes(block[..8].try_into().expect("8 bytes")) as f32;
}

/// Encodes one f32 (`out` holds exactly one element; so for every encoder here).
pub(super) fn encode_f32(v: f32, out: &mut [u8]) {
    out.copy_from_slice(&v.to_le_bytes());
}

/// Encodes one f16 (round to nearest even).
pub(super) fn encode_f16(v: f32, out: &mut [u8]) {
    out.copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// Encodes one bf16 (round to nearest even).
pub(super) fn encode_bf16(v: f32, out: &mut [u8]) {
    out.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
}

/// Decodes a whole buffer of a plain type (block size 1) into `out`.
pub(super) fn decode_plain(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let facts = ty.facts();
    // F32 and F16 have vectorizable loops of their own; the other plain types go one
    // element at a time through the table's decoder.
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
            for (o, c) in out.chunks_exact_mut(1).zip(bytes.chunks_exact(facts.bytes)) {
                (facts.decode)(c, o);
            }
        }
    }
}
