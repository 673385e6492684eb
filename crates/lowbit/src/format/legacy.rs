//! llama.cpp's legacy 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1) and
//! the 128-element sign format Q1_0. Layouts follow `block_q*` in ggml-common.h.

use super::{f16_at, u32_at};

/// Q4_0: f16 scale d, 16 bytes of nibbles; x = (q - 8)·d. Low nibbles hold elements 0–15.
pub fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 scale d and minimum m, 16 bytes of nibbles; x = q·d + m.
pub fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: f16 d, 32 high bits, 16 bytes of low nibbles; x = (q - 16)·d.
pub fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32_at(b, 2);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((qs[j] & 0x0F) as u32 | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | xh1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: f16 d and m, 32 high bits, 16 bytes of low nibbles; x = q·d + m.
pub fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32_at(b, 4);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0x0F) as u32 | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | xh1) as f32 * d + m;
    }
}

/// Q8_0: f16 d, 32 signed bytes; x = q·d.
pub fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

/// Q8_1 (an activation format): f16 d, f16 sum, 32 signed bytes; x = q·d.
pub fn dequantize_q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = b[4 + j] as i8 as f32 * d;
    }
}

/// Q1_0: f16 d, 128 sign bits (LSB first); x = ±d.
pub fn dequantize_q1_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in y.iter_mut().enumerate().take(128) {
        let bit = (b[2 + j / 8] >> (j % 8)) & 1;
        *v = (bit as i32 * 2 - 1) as f32 * d;
    }
}
