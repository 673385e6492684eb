//! Encoders for the non-uniform 4-bit grids: IQ4_NL (32 values, f16 scale), IQ4_XS (256
//! values, eight 6-bit sub-scales) and MXFP4 (E2M1 values with a shared power-of-two
//! scale). Codes index a fixed table, so the search is over the scale only.

use super::{magnitude_weight, put_f16, sum_of_squares, BlockInput};
use crate::format::encode::search::{fit_codebook, fit_symmetric, nearest_index, nearest_int};
use crate::format::encode::Fit;
use crate::format::fp4::{e8m0_to_f32_half, KVALUES_MXFP4};
use crate::format::iquant::KVALUES_IQ4NL;
use crate::format::QK_K;

/// Codebook fit of one 32-value sub-block; round-to-nearest maps the largest magnitude
/// to the grid's end and stops there.
fn fit_sub_block(b: &BlockInput, r: std::ops::Range<usize>, sigma2: f32, codes: &mut [u8], sw: &mut f32) -> f32 {
    let mut w = [0.0f32; 32];
    b.weights(r.clone(), sigma2, &mut w, magnitude_weight(sigma2));
    *sw = w.iter().sum();
    let ntry = if b.fit == Fit::Search { 7 } else { -1 };
    fit_codebook(&b.x[r], &w, &KVALUES_IQ4NL, ntry, codes)
}

pub(crate) fn pack_iq4(codes: &[u8], qs: &mut [u8]) {
    for (i, q) in qs.chunks_exact_mut(16).enumerate() {
        for j in 0..16 {
            q[j] = codes[32 * i + j] | (codes[32 * i + 16 + j] << 4);
        }
    }
}

/// IQ4_NL: f16 d, 16 bytes of nibbles indexing the IQ4 grid; x = d·grid[q].
pub fn encode_iq4_nl(b: &BlockInput, out: &mut [u8]) {
    let sigma2 = 2.0 * sum_of_squares(b.x) / 32.0;
    let mut codes = [0u8; 32];
    let mut sw = 0.0;
    let d = fit_sub_block(b, 0..32, sigma2, &mut codes, &mut sw);
    let dh = put_f16(out, 0, d);
    let id = if dh != 0.0 { 1.0 / dh } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(b.x) {
        *c = nearest_index(&KVALUES_IQ4NL, id * v) as u8;
    }
    pack_iq4(&codes, &mut out[2..18]);
}

/// IQ4_XS: f16 d, scales_h (u16), scales_l[4], qs[128]; eight sub-blocks of 32 with 6-bit
/// signed sub-scales; x = d·(sc − 32)·grid[q].
pub fn encode_iq4_xs(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    let sigma2 = 2.0 * sum_of_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let (mut scales, mut sw) = ([0.0f32; 8], [0.0f32; 8]);
    for ib in 0..8 {
        let r = 32 * ib..32 * (ib + 1);
        scales[ib] = fit_sub_block(b, r.clone(), sigma2, &mut codes[r], &mut sw[ib]);
    }
    let mut ls = [0i32; 8];
    let d = match b.fit {
        Fit::Search => fit_symmetric(&scales, &sw, -32, 31, 9, true, &mut ls),
        Fit::Rtn => {
            // llama.cpp: d = −max/32, sub-scales rounded against it.
            let max = scales.iter().copied().fold(0.0f32, |m, s| if s.abs() > m.abs() { s } else { m });
            let d = -max / 32.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (l, &s) in ls.iter_mut().zip(&scales) {
                *l = nearest_int(id * s).clamp(-32, 31);
            }
            d
        }
    };
    // Codes against the sub-scales as stored; with the search, then the super-scale refitted
    // by weighted least squares over all 256 codes (as llama.cpp's IQ4 encoder ends) and
    // the codes re-rounded, kept only if the weighted error drops.
    let round = |d: f32, codes: &mut [u8; QK_K]| {
        for ((c, xs), &l) in codes.chunks_exact_mut(32).zip(x.chunks_exact(32)).zip(&ls) {
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (ci, &xi) in c.iter_mut().zip(xs) {
                *ci = nearest_index(&KVALUES_IQ4NL, idl * xi) as u8;
            }
        }
    };
    let dh = put_f16(out, 0, d);
    round(dh, &mut codes);
    if b.fit == Fit::Search {
        let mut w = [0.0f32; QK_K];
        for ib in 0..8 {
            let r = 32 * ib..32 * (ib + 1);
            b.weights(r.clone(), sigma2, &mut w[r], magnitude_weight(sigma2));
        }
        // (Σ w·q·x, Σ w·q², Σ w·(x − d·q)²) for codes at super-scale d.
        let stats = |d: f32, codes: &[u8; QK_K]| {
            let (mut sqx, mut sq2, mut err) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..QK_K {
                let q = (KVALUES_IQ4NL[codes[i] as usize] as i32 * ls[i / 32]) as f64;
                let (wi, xi) = (w[i] as f64, x[i] as f64);
                sqx += wi * q * xi;
                sq2 += wi * q * q;
                err += wi * (xi - d as f64 * q).powi(2);
            }
            (sqx, sq2, err)
        };
        let (sqx, sq2, err) = stats(dh, &codes);
        if sq2 > 0.0 {
            let refit = half::f16::from_f32((sqx / sq2) as f32).to_f32();
            let mut trial = [0u8; QK_K];
            round(refit, &mut trial);
            if refit.is_finite() && stats(refit, &trial).2 < err {
                put_f16(out, 0, refit);
                codes = trial;
            }
        }
    }
    let mut scales_h = 0u16;
    out[4..8].fill(0);
    for ib in 0..8 {
        let l = (ls[ib] + 32) as u8;
        out[4 + ib / 2] |= (l & 0x0F) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    pack_iq4(&codes, &mut out[8..136]);
}

/// Nearest E2M1 value to x at scale e (first of equals, as ggml's `best_index_mxfp4`).
fn nearest_mxfp4(x: f32, e: f32) -> u8 {
    let mut best = (0u8, (KVALUES_MXFP4[0] as f32 * e - x).abs());
    for (i, &v) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (v as f32 * e - x).abs();
        if err < best.1 {
            best = (i as u8, err);
        }
    }
    best.0
}

/// MXFP4: E8M0 exponent byte, 16 bytes of E2M1 nibbles; x = 2^(e−127)·fp4[q].
/// The search also tries the neighbouring exponents and keeps the best weighted fit.
pub fn encode_mxfp4(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let e0 = if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
    let mut best_e = e0;
    if b.fit == Fit::Search && amax > 0.0 {
        let mut w = [0.0f32; 32];
        b.weights(0..32, b.row_sigma2, &mut w, magnitude_weight(b.row_sigma2));
        let err = |e: u8| -> f32 {
            let d = e8m0_to_f32_half(e);
            x.iter()
                .zip(&w)
                .map(|(&v, &wi)| {
                    let q = KVALUES_MXFP4[nearest_mxfp4(v, d) as usize] as f32 * d;
                    wi * (v - q) * (v - q)
                })
                .sum()
        };
        let mut best = err(e0);
        for e in [e0.saturating_sub(1), e0.saturating_add(1)] {
            let v = err(e);
            if v < best {
                best = v;
                best_e = e;
            }
        }
    }
    out[0] = best_e;
    let d = e8m0_to_f32_half(best_e);
    for j in 0..16 {
        out[1 + j] = nearest_mxfp4(x[j], d) | (nearest_mxfp4(x[j + 16], d) << 4);
    }
}
