//! Encoders for the k-quants (Q2_K … Q6_K, and Q8_K for activations). Each 256-value
//! super-block is fitted in two levels: every sub-block gets a float scale (and minimum)
//! by weighted search, then those floats are themselves quantized to the 4/6/8-bit
//! sub-block scales under one f16 super-scale by a weighted fit, and finally every code
//! is re-rounded against the scales as stored. [`Fit::Rtn`] skips both searches
//! (max-based scales, as the simplest k-quant encoder would).

use super::{magnitude_weight, put_f16, sum_of_squares, BlockInput};
use crate::format::encode::search::{fit_affine, fit_symmetric, fit_unsigned, nearest_int, GROUP_MAX_EPS};
use crate::format::encode::Fit;
use crate::format::QK_K;

/// Packs 2-bit codes as ggml does: byte `j/4 + l` of each 128-value half holds values
/// l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
pub(crate) fn pack_2bit(codes: &[u8], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] =
                codes[j + l] | (codes[j + l + 32] << 2) | (codes[j + l + 64] << 4) | (codes[j + l + 96] << 6);
        }
    }
}

/// Sub-block scales quantized to unsigned `nmax`-level codes under one super-scale:
/// weighted fit for the search, max-based rounding for round-to-nearest.
fn quantize_unsigned_scales(values: &[f32], sw: &[f32], nmax: i32, fit: Fit, codes: &mut [u8]) -> f32 {
    match fit {
        Fit::Search => fit_unsigned(values, sw, nmax, codes),
        Fit::Rtn => {
            let max = values.iter().copied().fold(0.0f32, f32::max);
            if max <= 0.0 {
                codes.iter_mut().for_each(|c| *c = 0);
                return 0.0;
            }
            let iscale = nmax as f32 / max;
            for (c, &v) in codes.iter_mut().zip(values) {
                *c = nearest_int(iscale * v).clamp(0, nmax) as u8;
            }
            max / nmax as f32
        }
    }
}

/// Signed sub-block scales as codes in [lo, hi] under one super-scale.
fn quantize_signed_scales(values: &[f32], sw: &[f32], lo: i32, hi: i32, fit: Fit, codes: &mut [i32]) -> f32 {
    match fit {
        Fit::Search => fit_symmetric(values, sw, lo, hi, 9, true, codes),
        Fit::Rtn => fit_symmetric(values, sw, lo, hi, 0, false, codes),
    }
}

/// Symmetric fits of the sixteen 16-value sub-blocks shared by Q3_K and Q6_K, codes in
/// [lo, hi]; `weights(range, w)` fills the error weights of one sub-block. Returns the
/// per-sub-block scales and summed weights.
fn symmetric_sub_blocks(
    b: &BlockInput,
    lo: i32,
    hi: i32,
    weights: impl Fn(std::ops::Range<usize>, &mut [f32]),
) -> ([f32; 16], [f32; 16]) {
    let (mut scales, mut sw) = ([0.0f32; 16], [0.0f32; 16]);
    let (mut l, mut w) = ([0i32; 16], [0.0f32; 16]);
    let (steps, polish) = if b.fit == Fit::Search { (9, true) } else { (0, false) };
    for j in 0..16 {
        let r = 16 * j..16 * (j + 1);
        weights(r.clone(), &mut w);
        sw[j] = w.iter().sum();
        scales[j] = fit_symmetric(&b.x[r], &w, lo, hi, steps, polish, &mut l);
    }
    (scales, sw)
}

/// Affine sub-block fits shared by Q2_K, Q4_K and Q5_K: returns per-sub-block (scale, min)
/// and the summed weights of each sub-block.
fn affine_sub_blocks<const SUB: usize>(
    b: &BlockInput,
    nmax: i32,
    sigma2_factor: f32,
    default_weights: fn(f32, f32) -> f32,
    codes: &mut [u8; QK_K],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = b.x;
    let n_sub = QK_K / SUB;
    let sigma2 = sigma2_factor * sum_of_squares(x) / QK_K as f32;
    let (mut scales, mut mins, mut sw) = (vec![0.0; n_sub], vec![0.0; n_sub], vec![0.0; n_sub]);
    let mut w = [0.0f32; 32];
    for j in 0..n_sub {
        let r = SUB * j..SUB * (j + 1);
        let xs = &x[r.clone()];
        let rms = (sum_of_squares(xs) / SUB as f32).sqrt();
        b.weights(r.clone(), sigma2, &mut w[..SUB], |v| default_weights(rms, v));
        sw[j] = w[..SUB].iter().sum();
        let nstep = if b.fit == Fit::Search { 36 } else { 0 };
        let (s, m) = fit_affine(xs, &w[..SUB], nmax, -0.9, 0.05, nstep, &mut codes[r]);
        scales[j] = s;
        mins[j] = m;
    }
    (scales, mins, sw)
}

/// Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], f16 d, f16 dmin;
/// x = d·sc·q − dmin·m for 16 sub-blocks of 16.
pub fn encode_q2_k(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    let mut codes = [0u8; QK_K];
    // Default weights: |x|, as llama.cpp's reference encoder uses.
    let (scales, mins, sw) = affine_sub_blocks::<16>(b, 3, 1.0, |_, v| v.abs(), &mut codes);
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = quantize_unsigned_scales(&scales, &sw, 15, b.fit, &mut ls);
    let mm = quantize_unsigned_scales(&mins, &sw, 15, b.fit, &mut lm);
    let d = put_f16(out, 80, dm);
    let dmin = put_f16(out, 82, mm);
    for j in 0..16 {
        out[j] = ls[j] | (lm[j] << 4);
        let dl = d * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * lm[j] as f32;
        for i in 16 * j..16 * (j + 1) {
            codes[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&codes, &mut out[16..80]);
}

/// Q3_K: hmask[32] (third bits), qs[64] (low 2 bits), scales[12] (16 six-bit signed
/// scales), f16 d; x = d·sc·(q − 4) for 16 sub-blocks of 16.
pub fn encode_q3_k(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    let sigma2 = 2.0 * sum_of_squares(x) / QK_K as f32;
    let (scales, sw) = symmetric_sub_blocks(b, -4, 3, |r, w| b.weights(r, sigma2, w, magnitude_weight(sigma2)));
    let mut ls = [0i32; 16];
    let d_block = quantize_signed_scales(&scales, &sw, -32, 31, b.fit, &mut ls);
    let sc = &mut out[96..108];
    sc.fill(0);
    for (j, &s) in ls.iter().enumerate() {
        let v = (s + 32) as u8;
        if j < 8 {
            sc[j] = v & 0x0F;
        } else {
            sc[j - 8] |= (v & 0x0F) << 4;
        }
        sc[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    let d = put_f16(out, 108, d_block);
    let mut codes = [4u8; QK_K];
    for (j, &l) in ls.iter().enumerate() {
        let dl = d * l as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            codes[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    pack_q3_k(&codes, out);
}

/// Writes Q3_K's 3-bit codes (0..=7, value offset 4): third bits to hmask, low bits to qs.
pub(crate) fn pack_q3_k(codes: &[u8], out: &mut [u8]) {
    let mut low = [0u8; QK_K];
    let hmask = &mut out[0..32];
    hmask.fill(0);
    for (j, (&c, l)) in codes.iter().zip(low.iter_mut()).enumerate() {
        *l = c & 3;
        if c > 3 {
            hmask[j % 32] |= 1 << (j / 32);
        }
    }
    pack_2bit(&low, &mut out[32..96]);
}

/// Packs eight 6-bit (scale, min) pairs into the 12-byte Q4_K/Q5_K scale field.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], sc: &mut [u8]) {
    sc.fill(0);
    for j in 0..8 {
        if j < 4 {
            sc[j] = ls[j];
            sc[j + 4] = lm[j];
        } else {
            sc[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            sc[j - 4] |= (ls[j] >> 4) << 6;
            sc[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Default weights of Q4_K/Q5_K sub-blocks (llama.cpp's reference): the sub-block's RMS
/// plus |x|.
fn rms_plus_abs(rms: f32, v: f32) -> f32 {
    rms + v.abs()
}

/// Shared Q4_K/Q5_K body: fits, quantizes the scales, re-rounds codes (0..=nmax).
fn encode_q45_k(b: &BlockInput, nmax: i32, out: &mut [u8], codes: &mut [u8; QK_K]) {
    let x = b.x;
    let (scales, mins, sw) = affine_sub_blocks::<32>(b, nmax, 2.0, rms_plus_abs, codes);
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let dm = quantize_unsigned_scales(&scales, &sw, 63, b.fit, &mut ls);
    let mm = quantize_unsigned_scales(&mins, &sw, 63, b.fit, &mut lm);
    let d = put_f16(out, 0, dm);
    let dmin = put_f16(out, 2, mm);
    pack_scale_min_k4(&ls, &lm, &mut out[4..16]);
    for j in 0..8 {
        let dl = d * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * lm[j] as f32;
        for i in 32 * j..32 * (j + 1) {
            codes[i] = nearest_int((x[i] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
}

/// Q4_K: f16 d, f16 dmin, scales[12] (eight 6-bit scale/min pairs), qs[128];
/// x = d·sc·q − dmin·m for 8 sub-blocks of 32.
pub fn encode_q4_k(b: &BlockInput, out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    encode_q45_k(b, 15, out, &mut codes);
    pack_q4_k(&codes, out);
}

/// Writes Q4_K's 4-bit codes: each 64-value chunk as 32 bytes, low nibbles first 32.
pub(crate) fn pack_q4_k(codes: &[u8], out: &mut [u8]) {
    let qs = &mut out[16..144];
    for (n, j) in (0..QK_K).step_by(64).enumerate() {
        for l in 0..32 {
            qs[32 * n + l] = codes[j + l] | (codes[j + l + 32] << 4);
        }
    }
}

/// Q5_K: f16 d, f16 dmin, scales[12], qh[32] (fifth bits), qs[128] (low nibbles).
pub fn encode_q5_k(b: &BlockInput, out: &mut [u8]) {
    let mut codes = [0u8; QK_K];
    encode_q45_k(b, 31, out, &mut codes);
    pack_q5_k(&codes, out);
}

/// Writes Q5_K's 5-bit codes: fifth bits to qh, low nibbles as Q4_K's.
pub(crate) fn pack_q5_k(codes: &[u8], out: &mut [u8]) {
    let (qh, qs) = out[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (k, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = codes[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = codes[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[32 * k + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// Q6_K: ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] (int8), f16 d;
/// x = d·sc·(q − 32) for 16 sub-blocks of 16.
pub fn encode_q6_k(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    // With an importance, llama.cpp weighs Q6_K by the importance alone.
    let (scales, sw) = symmetric_sub_blocks(b, -32, 31, |r, w| match b.importance {
        Some(imp) => w.copy_from_slice(&imp[r]),
        None => b.weights(r, 0.0, w, magnitude_weight(b.row_sigma2)),
    });
    out.fill(0);
    if scales.iter().all(|s| s.abs() < GROUP_MAX_EPS) {
        return;
    }
    let mut ls = [0i32; 16];
    let d_block = quantize_signed_scales(&scales, &sw, -128, 127, b.fit, &mut ls);
    let d = put_f16(out, 208, d_block);
    let mut codes = [32u8; QK_K];
    for j in 0..16 {
        out[192 + j] = ls[j] as i8 as u8;
        let dl = d * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            codes[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    pack_q6_k(&codes, out);
}

/// Writes Q6_K's 6-bit codes (value offset 32): low nibbles to ql, high bits to qh.
pub(crate) fn pack_q6_k(codes: &[u8], out: &mut [u8]) {
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for (half, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * half..64 * half + 64], &mut qh[32 * half..32 * half + 32]);
        for l in 0..32 {
            let q = |k: usize| codes[j + l + 32 * k];
            ql[l] = (q(0) & 0x0F) | ((q(2) & 0x0F) << 4);
            ql[l + 32] = (q(1) & 0x0F) | ((q(3) & 0x0F) << 4);
            qh[l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// Q8_K (activations): f32 d, 256 int8 codes, 16 i16 block sums; llama.cpp's
/// `quantize_row_q8_K_ref` exactly (the method does not apply).
pub fn encode_q8_k(b: &BlockInput, out: &mut [u8]) {
    let x = b.x;
    out.fill(0);
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    let mut q = [0i32; QK_K];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = nearest_int(iscale * v).min(127);
    }
    out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    for (o, &qi) in out[4..4 + QK_K].iter_mut().zip(&q) {
        *o = qi as i8 as u8;
    }
    for j in 0..16 {
        let s: i32 = q[16 * j..16 * j + 16].iter().sum();
        out[4 + QK_K + 2 * j..4 + QK_K + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
}
