//! Encoders for the legacy 32-element formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//! [`Fit::Rtn`] reproduces llama.cpp's `quantize_row_q*_ref` bit for bit; the search
//! fits the scale (and minimum) by weighted least squares and rounds the codes against
//! the scale as actually stored (f16).

use super::{magnitude_weight, put_f16, sum_of_squares, BlockInput};
use crate::format::encode::search::{fit_affine, fit_symmetric, nearest_int};
use crate::format::encode::Fit;

const QK: usize = 32;

/// Packs 32 4-bit codes: low nibbles hold elements 0–15, high nibbles 16–31.
pub(crate) fn pack_nibbles(codes: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = (codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4);
    }
}

/// Packs 32 5-bit codes: low nibbles as [`pack_nibbles`], fifth bits into a u32.
pub(crate) fn pack_5bit(codes: &[u8], qh: &mut [u8], qs: &mut [u8]) {
    pack_nibbles(codes, qs);
    // Bit i holds the fifth bit of code i (low nibbles of 0–15 and 16–31 share bytes,
    // the high bits do not).
    let h = codes.iter().enumerate().fold(0u32, |h, (i, &c)| h | ((((c >> 4) & 1) as u32) << i));
    qh.copy_from_slice(&h.to_le_bytes());
}

/// Symmetric codes in [-nmax, nmax-1] stored with offset nmax; returns the stored scale.
fn symmetric(b: &BlockInput, nmax: i32, scale_at: usize, out: &mut [u8], codes: &mut [u8; QK]) {
    let x = b.x;
    let d = match b.fit {
        Fit::Rtn => {
            // quantize_row_q4_0_ref / q5_0: d = max / -nmax, codes truncated after +nmax+0.5.
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -(nmax as f32);
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, scale_at, d);
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = ((v * id + nmax as f32 + 0.5) as i8).min(2 * nmax as i8 - 1) as u8;
            }
            return;
        }
        Fit::Search => {
            let mut w = [0.0f32; QK];
            // Default weights √(f·σ² + x²): at 4 bits (Q4_0) a flatter weighting (f = 8)
            // measured better than f = 1 (smollm2, 10 chunks: Q4_0 mix KLD 0.273 → 0.259,
            // Q3_K_S 0.408 → 0.396); at 5 bits f = 1 stays better (Q4_K_M, mostly Q5_0:
            // 0.0413 vs 0.0417).
            let flat = if nmax == 8 { 8.0 } else { 1.0 };
            b.weights(0..QK, b.row_sigma2, &mut w, magnitude_weight(flat * b.row_sigma2));
            let mut l = [0i32; QK];
            fit_symmetric(x, &w, -nmax, nmax - 1, 9, true, &mut l)
        }
    };
    let dh = put_f16(out, scale_at, d);
    let id = if dh != 0.0 { 1.0 / dh } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (nearest_int(v * id).clamp(-nmax, nmax - 1) + nmax) as u8;
    }
}

/// Affine codes in [0, nmax] with x ≈ d·l + m; writes d and m as f16 at `at`, `at + 2`.
fn affine(b: &BlockInput, nmax: i32, at: usize, out: &mut [u8], codes: &mut [u8; QK]) {
    let x = b.x;
    let (d, m) = match b.fit {
        Fit::Rtn => {
            // quantize_row_q4_1_ref / q5_1: d = (max - min) / nmax, m = min.
            let min = x.iter().copied().fold(f32::MAX, f32::min);
            let max = x.iter().copied().fold(-f32::MAX, f32::max);
            let d = (max - min) / nmax as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, at, d);
            put_f16(out, at + 2, min);
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (((v - min) * id + 0.5) as u8).min(nmax as u8);
            }
            return;
        }
        Fit::Search => {
            let mut w = [0.0f32; QK];
            let av = (sum_of_squares(x) / QK as f32).sqrt();
            b.weights(0..QK, b.row_sigma2, &mut w, |v| av + v.abs());
            let mut l = [0u8; QK];
            let (s, neg_min) = fit_affine(x, &w, nmax, -0.9, 0.05, 36, &mut l);
            (s, -neg_min)
        }
    };
    let dh = put_f16(out, at, d);
    let mh = put_f16(out, at + 2, m);
    let id = if dh != 0.0 { 1.0 / dh } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_int((v - mh) * id).clamp(0, nmax) as u8;
    }
}

/// Q4_0: f16 d, 16 bytes of nibbles; x = (q − 8)·d.
pub fn encode_q4_0(b: &BlockInput, out: &mut [u8]) {
    let mut c = [0u8; QK];
    symmetric(b, 8, 0, out, &mut c);
    pack_nibbles(&c, &mut out[2..18]);
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = q·d + m.
pub fn encode_q4_1(b: &BlockInput, out: &mut [u8]) {
    let mut c = [0u8; QK];
    affine(b, 15, 0, out, &mut c);
    pack_nibbles(&c, &mut out[4..20]);
}

/// Q5_0: f16 d, 32 fifth bits, 16 bytes of low nibbles; x = (q − 16)·d.
pub fn encode_q5_0(b: &BlockInput, out: &mut [u8]) {
    let mut c = [0u8; QK];
    symmetric(b, 16, 0, out, &mut c);
    let (qh, qs) = out[2..22].split_at_mut(4);
    pack_5bit(&c, qh, qs);
}

/// Q5_1: f16 d, f16 m, 32 fifth bits, 16 bytes of low nibbles; x = q·d + m.
pub fn encode_q5_1(b: &BlockInput, out: &mut [u8]) {
    let mut c = [0u8; QK];
    affine(b, 31, 0, out, &mut c);
    let (qh, qs) = out[4..24].split_at_mut(4);
    pack_5bit(&c, qh, qs);
}

/// Q8_0: f16 d, 32 signed bytes; x = q·d. Codes stay in [-127, 127] (llama.cpp's
/// integer kernels assume no −128).
pub fn encode_q8_0(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    let d = match b.fit {
        Fit::Rtn => {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            for (o, &v) in out[2..34].iter_mut().zip(x) {
                *o = (v * id).round() as i8 as u8;
            }
            return;
        }
        Fit::Search => {
            let mut w = [0.0f32; QK];
            b.weights(0..QK, b.row_sigma2, &mut w, magnitude_weight(b.row_sigma2));
            let mut l = [0i32; QK];
            // At 255 levels a step is under 1% of the block's range: three candidate
            // scales either side and no code polish find all but a negligible part of
            // what the full search (19 candidates, polish) finds, at a third of the time.
            fit_symmetric(x, &w, -127, 127, 3, false, &mut l)
        }
    };
    let dh = put_f16(out, 0, d);
    let id = if dh != 0.0 { 1.0 / dh } else { 0.0 };
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = nearest_int(v * id).clamp(-127, 127) as i8 as u8;
    }
}
