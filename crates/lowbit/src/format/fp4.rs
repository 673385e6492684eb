//! 4-bit float (E2M1) block formats with shared scales: MXFP4 (OCP microscaling, E8M0
//! scale per 32) and NVFP4 (unsigned E4M3 scale per 16, 64-element blocks).

/// E2M1 values, doubled (ggml's `kvalues_mxfp4`); the scales carry the factor ½.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml_e8m0_to_fp32_half: 2^(e-127) / 2, subnormals included.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e - 1) as u32) << 23 };
    f32::from_bits(bits)
}

/// ggml_ue4m3_to_fp32 (unsigned E4M3, bias 7), times ½ for the doubled kvalues.
#[inline]
pub fn ue4m3_to_f32_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = ((x >> 3) & 0x0F) as i32;
    let man = (x & 7) as f32;
    let raw = if exp == 0 { man * (2f32).powi(-9) } else { (1.0 + man / 8.0) * (2f32).powi(exp - 7) };
    raw * 0.5
}

/// MXFP4: one E8M0 exponent byte, 16 bytes of E2M1 nibbles (low nibbles first half).
pub fn dequantize_mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    for j in 0..16 {
        let q = b[1 + j];
        y[j] = KVALUES_MXFP4[(q & 0x0F) as usize] as f32 * d;
        y[j + 16] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
    }
}

/// NVFP4: four UE4M3 scales (one per 16 values), then 4×8 bytes of E2M1 nibbles.
pub fn dequantize_nvfp4(b: &[u8], y: &mut [f32]) {
    for s in 0..4 {
        let d = ue4m3_to_f32_half(b[s]);
        let qs = &b[4 + 8 * s..4 + 8 * s + 8];
        for j in 0..8 {
            y[16 * s + j] = d * KVALUES_MXFP4[(qs[j] & 0x0F) as usize] as f32;
            y[16 * s + 8 + j] = d * KVALUES_MXFP4[(qs[j] >> 4) as usize] as f32;
        }
    }
}
