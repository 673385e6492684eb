//! Ternary formats TQ1_0 (base-3 packed, 1.6875 bpw) and TQ2_0 (2-bit, 2.0625 bpw), as
//! in ggml-common.h's `block_tq1_0` / `block_tq2_0`.

use super::f16_at;

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Decodes the trit stored at position `n` of a base-3 packed byte.
#[inline]
fn trit(byte: u8, n: usize) -> f32 {
    let q = byte.wrapping_mul(POW3[n]);
    ((((q as u16) * 3) >> 8) as i16 - 1) as f32
}

/// TQ1_0: qs[48] (5 trits a byte), qh[4] (4 trits a byte), f16 d.
pub fn dequantize_tq1_0(b: &[u8], y: &mut [f32]) {
    let qs = &b[0..48];
    let qh = &b[48..52];
    let d = f16_at(b, 52);
    let mut o = 0;
    for n in 0..5 {
        for &q in &qs[0..32] {
            y[o] = trit(q, n) * d;
            o += 1;
        }
    }
    for n in 0..5 {
        for &q in &qs[32..48] {
            y[o] = trit(q, n) * d;
            o += 1;
        }
    }
    for n in 0..4 {
        for &q in qh {
            y[o] = trit(q, n) * d;
            o += 1;
        }
    }
}

/// TQ2_0: qs[64] (four 2-bit codes a byte, code - 1 ∈ {-1, 0, 1, 2}), f16 d.
pub fn dequantize_tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for j in 0..2 {
        for shift in 0..4 {
            for m in 0..32 {
                let q = (b[32 * j + m] >> (2 * shift)) & 3;
                y[128 * j + 32 * shift + m] = (q as i32 - 1) as f32 * d;
            }
        }
    }
}
