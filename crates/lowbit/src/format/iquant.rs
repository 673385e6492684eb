//! llama.cpp's i-quants: lattice codebooks (E8-style grids with sign patterns) and the
//! non-linear 4-bit IQ4 formats. Layouts follow `block_iq*` in ggml-common.h; decoding
//! follows `dequantize_row_iq*` in ggml-quants.c so results are bit-identical.

use super::iquant_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};
use super::{f16_at, u16_at, u32_at, QK_K};

/// The 16 non-uniform levels of IQ4_NL / IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// IQ1_S / IQ1_M grid offset.
pub const IQ1S_DELTA: f32 = 0.125;

/// The `j`-th byte (grid value) of a packed grid point.
#[inline]
fn grid_byte(point: u64, j: usize) -> u8 {
    (point >> (8 * j)) as u8
}

#[inline]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & (1 << j) != 0 {
        -1.0
    } else {
        1.0
    }
}

/// IQ2_XXS: f16 d; per 32 weights two u32: four 8-bit grid indices, then 4×7 sign bits
/// and a 4-bit scale. 2.0625 bpw.
pub fn dequantize_iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib32 in 0..QK_K / 32 {
        let aux0 = u32_at(b, 2 + 8 * ib32);
        let aux1 = u32_at(b, 2 + 8 * ib32 + 4);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let grid = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xFF) as usize];
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            for j in 0..8 {
                y[32 * ib32 + 8 * l + j] = db * grid_byte(grid, j) as f32 * sign(signs, j);
            }
        }
    }
}

/// IQ2_XS: f16 d; 32 u16 (9-bit grid index + 7 sign bits); 8 bytes of two 4-bit scales.
pub fn dequantize_iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for ib32 in 0..QK_K / 32 {
        let db = [d * (0.5 + (scales[ib32] & 0x0F) as f32) * 0.25, d * (0.5 + (scales[ib32] >> 4) as f32) * 0.25];
        for l in 0..4 {
            let q = u16_at(b, 2 + 2 * (4 * ib32 + l));
            let grid = IQ2XS_GRID[(q & 511) as usize];
            let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
            for j in 0..8 {
                y[32 * ib32 + 8 * l + j] = db[l / 2] * grid_byte(grid, j) as f32 * sign(signs, j);
            }
        }
    }
}

/// IQ2_S: f16 d; qs[32] low grid bits, signs[32], qh[8] high grid bits, scales[8].
pub fn dequantize_iq2_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    let signs = &b[34..66];
    let qh = &b[66..74];
    let scales = &b[74..82];
    for ib32 in 0..QK_K / 32 {
        let db = [d * (0.5 + (scales[ib32] & 0x0F) as f32) * 0.25, d * (0.5 + (scales[ib32] >> 4) as f32) * 0.25];
        for l in 0..4 {
            let idx = qs[4 * ib32 + l] as usize | ((qh[ib32] as usize) << (8 - 2 * l) & 0x300);
            let grid = IQ2S_GRID[idx];
            let s = signs[4 * ib32 + l];
            for j in 0..8 {
                y[32 * ib32 + 8 * l + j] = db[l / 2] * grid_byte(grid, j) as f32 * sign(s, j);
            }
        }
    }
}

/// IQ3_XXS: f16 d; qs[64] 8-bit indices into a 4-value grid; 8 u32 of signs + scale.
pub fn dequantize_iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for ib32 in 0..QK_K / 32 {
        let aux = u32_at(b, 66 + 4 * ib32);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let g1 = IQ3XXS_GRID[qs[8 * ib32 + 2 * l] as usize] as u64;
            let g2 = IQ3XXS_GRID[qs[8 * ib32 + 2 * l + 1] as usize] as u64;
            let o = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
            for j in 0..4 {
                o[j] = db * grid_byte(g1, j) as f32 * sign(signs, j);
                o[j + 4] = db * grid_byte(g2, j) as f32 * sign(signs, j + 4);
            }
        }
    }
}

/// IQ3_S: f16 d; qs[64] low index bits, qh[8] ninth bits, signs[32], scales[4].
pub fn dequantize_iq3_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    let qh = &b[66..74];
    let signs = &b[74..106];
    let scales = &b[106..110];
    for ib32 in 0..QK_K / 32 {
        let sc = scales[ib32 / 2];
        let nib = if ib32 % 2 == 0 { sc & 0x0F } else { sc >> 4 };
        let db = d * (1 + 2 * nib as i32) as f32;
        let h = qh[ib32] as usize;
        for l in 0..4 {
            let i1 = qs[8 * ib32 + 2 * l] as usize | ((h << (8 - 2 * l)) & 256);
            let i2 = qs[8 * ib32 + 2 * l + 1] as usize | ((h << (7 - 2 * l)) & 256);
            let (g1, g2) = (IQ3S_GRID[i1] as u64, IQ3S_GRID[i2] as u64);
            let s = signs[4 * ib32 + l];
            let o = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
            for j in 0..4 {
                o[j] = db * grid_byte(g1, j) as f32 * sign(s, j);
                o[j + 4] = db * grid_byte(g2, j) as f32 * sign(s, j + 4);
            }
        }
    }
}

/// IQ1_S: f16 d; qs[32] low index bits; 8 u16 with 3×4 high index bits, 3-bit scale and
/// the sign of the grid shift.
pub fn dequantize_iq1_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for ib in 0..QK_K / 32 {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
        for l in 0..4 {
            let idx = qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
            let grid = IQ1S_GRID[idx];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (grid_byte(grid, j) as i8 as f32 + delta);
            }
        }
    }
}

/// IQ1_M: qs[32], qh[16] (high index bits + shift signs), scales[8] holding 3-bit
/// sub-block scales and, in their top nibbles, the block's f16 scale.
pub fn dequantize_iq1_m(b: &[u8], y: &mut [f32]) {
    let qs = &b[0..32];
    let qh = &b[32..48];
    let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
    let scale = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
    let d = half::f16::from_bits(scale).to_f32();
    for ib in 0..QK_K / 32 {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl1 = d * (2 * (s & 7) + 1) as f32;
        let dl2 = d * (2 * ((s >> 3) & 7) + 1) as f32;
        let (h0, h1) = (qh[2 * ib] as usize, qh[2 * ib + 1] as usize);
        let q = &qs[4 * ib..4 * ib + 4];
        let idx = [
            q[0] as usize | ((h0 << 8) & 0x700),
            q[1] as usize | ((h0 << 4) & 0x700),
            q[2] as usize | ((h1 << 8) & 0x700),
            q[3] as usize | ((h1 << 4) & 0x700),
        ];
        let shift = |bit: bool| if bit { -IQ1S_DELTA } else { IQ1S_DELTA };
        let delta = [shift(h0 & 0x08 != 0), shift(h0 & 0x80 != 0), shift(h1 & 0x08 != 0), shift(h1 & 0x80 != 0)];
        for l in 0..4 {
            let dl = if l < 2 { dl1 } else { dl2 };
            let grid = IQ1S_GRID[idx[l]];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (grid_byte(grid, j) as i8 as f32 + delta[l]);
            }
        }
    }
}

/// IQ4_NL: f16 d, 16 bytes of nibbles indexing [`KVALUES_IQ4NL`]; 32 weights.
pub fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// IQ4_XS: f16 d, 6-bit sub-block scales (split in scales_h / scales_l), 128 bytes of
/// nibbles indexing [`KVALUES_IQ4NL`].
pub fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16_at(b, 2);
    let scales_l = &b[4..8];
    let qs = &b[8..136];
    for ib in 0..QK_K / 32 {
        let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
        let dl = d * (ls - 32) as f32;
        for j in 0..16 {
            let q = qs[16 * ib + j];
            y[32 * ib + j] = dl * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
            y[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}
