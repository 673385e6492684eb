//! Every quantized block type in one integer form, so one dot-product loop serves them
//! all: a block's value `j` is `d·w[j] − dmin·mins[j / 16]` (256-value super-blocks) or
//! `d·w[j] + m` (32-value blocks), with `w` small integers (i16). The scale of each
//! sub-block is folded into `w` (`w = code × sub-scale`), so a dot product with
//! integer activations is one multiply-add per value and one float multiply per block —
//! as ggml's `vec_dot_*_q8_*` compute it, and equally usable with f32 activations.
//!
//! Each `unpack` mirrors the type's decoder in `format/` (`dequantize_row_*` in
//! ggml-quants.c); the test `unpacked_blocks_decode_like_the_reference` checks
//! `d·w − dmin·m` against the decoder on random blocks of every type.

// Block layouts are indexed by position, as in ggml-quants.c.
#![allow(clippy::needless_range_loop)]

use crate::format::fp4::{e8m0_to_f32_half, KVALUES_MXFP4};
use crate::format::iquant::{IQ1S_DELTA, KVALUES_IQ4NL};
use crate::format::iquant_grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};
use crate::format::kquant::{q3_k_scales, scale_min_k4};
use crate::format::{f16_at, u16_at, u32_at, GgmlType};
use crate::kernels::simd::Simd;

/// A 256-value super-block in integer form: value `j` = `d·w[j] − dmin·mins[j/16]`.
#[derive(Clone)]
pub struct Super {
    /// Codes times their sub-block scale.
    pub w: [i16; 256],
    /// Block scale.
    pub d: f32,
    /// Scale of the sub-block minimums (0 for types without).
    pub dmin: f32,
    /// Per-16-value minimums (integers, times `dmin`).
    pub mins: [i16; 16],
}

impl Default for Super {
    fn default() -> Self {
        Super { w: [0; 256], d: 0.0, dmin: 0.0, mins: [0; 16] }
    }
}

/// A 32-value block in integer form: value `j` = `d·w[j] + m`.
#[derive(Clone, Default)]
pub struct Small {
    /// Codes.
    pub w: [i16; 32],
    /// Scale.
    pub d: f32,
    /// Offset (0 for symmetric types).
    pub m: f32,
}

/// A super-block type: its stored size and how to unpack it.
pub trait SuperBlock {
    /// The ggml type.
    const TYPE: GgmlType;
    /// Bytes per block.
    const BYTES: usize;
    /// Whether `mins` is used.
    const HAS_MIN: bool;
    /// Unpacks one stored block.
    fn unpack<S: Simd>(b: &[u8], s: &mut Super);
}

/// A 32-value block type.
pub trait SmallBlock {
    /// The ggml type.
    const TYPE: GgmlType;
    /// Bytes per block.
    const BYTES: usize;
    /// Whether `m` is used (then llama.cpp pairs it with Q8_1 activations).
    const HAS_MIN: bool;
    /// Unpacks one stored block.
    fn unpack<S: Simd>(b: &[u8], s: &mut Small);
}

macro_rules! block_type {
    ($name:ident, $ty:ident) => {
        #[doc = concat!("Kernel marker for ", stringify!($ty), ".")]
        pub struct $name;
    };
}

block_type!(BQ4_0, Q4_0);
block_type!(BQ4_1, Q4_1);
block_type!(BQ5_0, Q5_0);
block_type!(BQ5_1, Q5_1);
block_type!(BQ8_0, Q8_0);
block_type!(BIq4Nl, IQ4_NL);
block_type!(BMxfp4, MXFP4);
block_type!(BQ2K, Q2_K);
block_type!(BQ3K, Q3_K);
block_type!(BQ4K, Q4_K);
block_type!(BQ5K, Q5_K);
block_type!(BQ6K, Q6_K);
block_type!(BIq4Xs, IQ4_XS);
block_type!(BIq2Xxs, IQ2_XXS);
block_type!(BIq2Xs, IQ2_XS);
block_type!(BIq2S, IQ2_S);
block_type!(BIq3Xxs, IQ3_XXS);
block_type!(BIq3S, IQ3_S);
block_type!(BIq1S, IQ1_S);
block_type!(BIq1M, IQ1_M);

impl SmallBlock for BQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            s.w[j] = (qs[j] & 0x0F) as i16 - 8;
            s.w[j + 16] = (qs[j] >> 4) as i16 - 8;
        }
    }
}

impl SmallBlock for BQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        s.m = f16_at(b, 2);
        let qs = &b[4..20];
        for j in 0..16 {
            s.w[j] = (qs[j] & 0x0F) as i16;
            s.w[j + 16] = (qs[j] >> 4) as i16;
        }
    }
}

impl SmallBlock for BQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BYTES: usize = 22;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        let qh = u32_at(b, 2);
        let qs = &b[6..22];
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            s.w[j] = ((qs[j] & 0x0F) as u32 | h0) as i16 - 16;
            s.w[j + 16] = ((qs[j] >> 4) as u32 | h1) as i16 - 16;
        }
    }
}

impl SmallBlock for BQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BYTES: usize = 24;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        s.m = f16_at(b, 2);
        let qh = u32_at(b, 4);
        let qs = &b[8..24];
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            s.w[j] = ((qs[j] & 0x0F) as u32 | h0) as i16;
            s.w[j + 16] = ((qs[j] >> 4) as u32 | h1) as i16;
        }
    }
}

impl SmallBlock for BQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BYTES: usize = 34;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        for j in 0..32 {
            s.w[j] = b[2 + j] as i8 as i16;
        }
    }
}

impl SmallBlock for BIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = f16_at(b, 0);
        let (lo, hi) = s.w.split_at_mut(16);
        S::lut16(&KVALUES_IQ4NL, &b[2..18], lo, hi);
    }
}

impl SmallBlock for BMxfp4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const BYTES: usize = 17;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Small) {
        s.d = e8m0_to_f32_half(b[0]);
        let (lo, hi) = s.w.split_at_mut(16);
        S::lut16(&KVALUES_MXFP4, &b[1..17], lo, hi);
    }
}

impl SuperBlock for BQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BYTES: usize = 84;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        let scales = &b[0..16];
        let qs = &b[16..80];
        s.d = f16_at(b, 80);
        s.dmin = f16_at(b, 82);
        for (g, sc) in scales.iter().enumerate() {
            s.mins[g] = (sc >> 4) as i16;
        }
        for n in 0..2 {
            let q = &qs[32 * n..32 * n + 32];
            let o = &mut s.w[128 * n..128 * n + 128];
            let sc = &scales[8 * n..8 * n + 8];
            q2_part::<0>(q, sc[0], sc[1], &mut o[0..32]);
            q2_part::<2>(q, sc[2], sc[3], &mut o[32..64]);
            q2_part::<4>(q, sc[4], sc[5], &mut o[64..96]);
            q2_part::<6>(q, sc[6], sc[7], &mut o[96..128]);
        }
    }
}

/// 32 Q2_K codes at bit offset `SHIFT` of `q`, the first 16 times scale `s0 & 15`, the
/// next 16 times `s1 & 15` (a constant shift, so the loop vectorises).
#[inline(always)]
fn q2_part<const SHIFT: u32>(q: &[u8], s0: u8, s1: u8, o: &mut [i16]) {
    let (m0, m1) = ((s0 & 15) as i16, (s1 & 15) as i16);
    for l in 0..16 {
        o[l] = ((q[l] >> SHIFT) & 3) as i16 * m0;
        o[l + 16] = ((q[l + 16] >> SHIFT) & 3) as i16 * m1;
    }
}

impl SuperBlock for BQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BYTES: usize = 110;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        let hmask = &b[0..32];
        let qs = &b[32..96];
        let scales = q3_k_scales(&b[96..108]);
        s.d = f16_at(b, 108);
        for n in 0..2 {
            let q = &qs[32 * n..32 * n + 32];
            for k in 0..4 {
                let shift = 2 * k;
                let m = 1u8 << (4 * n + k);
                for half in 0..2 {
                    let g = 8 * n + 2 * k + half;
                    let sc = scales[g] as i16;
                    let o = &mut s.w[16 * g..16 * g + 16];
                    for l in 0..16 {
                        let i = 16 * half + l;
                        let low = ((q[i] >> shift) & 3) as i16;
                        let sub = if hmask[i] & m != 0 { 0 } else { 4 };
                        o[l] = (low - sub) * sc;
                    }
                }
            }
        }
    }
}

impl SuperBlock for BQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BYTES: usize = 144;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0);
        s.dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            s.mins[4 * j] = m1 as i16;
            s.mins[4 * j + 1] = m1 as i16;
            s.mins[4 * j + 2] = m2 as i16;
            s.mins[4 * j + 3] = m2 as i16;
            let o = &mut s.w[64 * j..64 * j + 64];
            for l in 0..32 {
                o[l] = (q[l] & 0x0F) as i16 * sc1 as i16;
                o[l + 32] = (q[l] >> 4) as i16 * sc2 as i16;
            }
        }
    }
}

impl SuperBlock for BQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BYTES: usize = 176;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0);
        s.dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for j in 0..4 {
            let q = &qs[32 * j..32 * j + 32];
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            s.mins[4 * j] = m1 as i16;
            s.mins[4 * j + 1] = m1 as i16;
            s.mins[4 * j + 2] = m2 as i16;
            s.mins[4 * j + 3] = m2 as i16;
            let o = &mut s.w[64 * j..64 * j + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                o[l] = ((q[l] & 0x0F) as i16 + h1) * sc1 as i16;
                o[l + 32] = ((q[l] >> 4) as i16 + h2) * sc2 as i16;
            }
        }
    }
}

impl SuperBlock for BQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BYTES: usize = 210;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let o = &mut s.w[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i16 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i16 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i16 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i16 - 32;
                o[l] = q1 * sc[is] as i8 as i16;
                o[l + 32] = q2 * sc[is + 2] as i8 as i16;
                o[l + 64] = q3 * sc[is + 4] as i8 as i16;
                o[l + 96] = q4 * sc[is + 6] as i8 as i16;
            }
        }
    }
}

impl SuperBlock for BIq4Xs {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BYTES: usize = 136;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0);
        let scales_h = u16_at(b, 2);
        let scales_l = &b[4..8];
        let qs = &b[8..136];
        for ib in 0..8 {
            let ls =
                ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i16 | ((((scales_h >> (2 * ib)) & 3) as i16) << 4);
            let sc = ls - 32;
            let (lo, hi) = s.w[32 * ib..32 * ib + 32].split_at_mut(16);
            S::lut16(&KVALUES_IQ4NL, &qs[16 * ib..16 * ib + 16], lo, hi);
            s.w[32 * ib..32 * ib + 32].iter_mut().for_each(|v| *v *= sc);
        }
    }
}

impl SuperBlock for BIq2Xxs {
    const TYPE: GgmlType = GgmlType::IQ2_XXS;
    const BYTES: usize = 66;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        // db = d·(0.5 + s)·0.25 = (d/8)·(2s + 1)
        s.d = f16_at(b, 0) * 0.125;
        for ib in 0..8 {
            let aux0 = u32_at(b, 2 + 8 * ib);
            let aux1 = u32_at(b, 2 + 8 * ib + 4);
            let sc = 2 * (aux1 >> 28) as i16 + 1;
            for l in 0..4 {
                let grid = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xFF) as usize];
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                S::grid8(grid, signs, sc, &mut s.w[32 * ib + 8 * l..]);
            }
        }
    }
}

impl SuperBlock for BIq2Xs {
    const TYPE: GgmlType = GgmlType::IQ2_XS;
    const BYTES: usize = 74;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0) * 0.125;
        let scales = &b[66..74];
        for ib in 0..8 {
            let sc = [2 * (scales[ib] & 0x0F) as i16 + 1, 2 * (scales[ib] >> 4) as i16 + 1];
            for l in 0..4 {
                let q = u16_at(b, 2 + 2 * (4 * ib + l));
                let grid = IQ2XS_GRID[(q & 511) as usize];
                let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                S::grid8(grid, signs, sc[l / 2], &mut s.w[32 * ib + 8 * l..]);
            }
        }
    }
}

impl SuperBlock for BIq2S {
    const TYPE: GgmlType = GgmlType::IQ2_S;
    const BYTES: usize = 82;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0) * 0.125;
        let qs = &b[2..34];
        let signs = &b[34..66];
        let qh = &b[66..74];
        let scales = &b[74..82];
        for ib in 0..8 {
            let sc = [2 * (scales[ib] & 0x0F) as i16 + 1, 2 * (scales[ib] >> 4) as i16 + 1];
            for l in 0..4 {
                let idx = qs[4 * ib + l] as usize | ((qh[ib] as usize) << (8 - 2 * l) & 0x300);
                S::grid8(IQ2S_GRID[idx], signs[4 * ib + l], sc[l / 2], &mut s.w[32 * ib + 8 * l..]);
            }
        }
    }
}

impl SuperBlock for BIq3Xxs {
    const TYPE: GgmlType = GgmlType::IQ3_XXS;
    const BYTES: usize = 98;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        // db = d·(0.5 + s)·0.5 = (d/4)·(2s + 1)
        s.d = f16_at(b, 0) * 0.25;
        let qs = &b[2..66];
        for ib in 0..8 {
            let aux = u32_at(b, 66 + 4 * ib);
            let sc = 2 * (aux >> 28) as i16 + 1;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let g1 = IQ3XXS_GRID[qs[8 * ib + 2 * l] as usize] as u64;
                let g2 = IQ3XXS_GRID[qs[8 * ib + 2 * l + 1] as usize] as u64;
                S::grid8(g1 | (g2 << 32), signs, sc, &mut s.w[32 * ib + 8 * l..]);
            }
        }
    }
}

impl SuperBlock for BIq3S {
    const TYPE: GgmlType = GgmlType::IQ3_S;
    const BYTES: usize = 110;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        s.d = f16_at(b, 0);
        let qs = &b[2..66];
        let qh = &b[66..74];
        let signs = &b[74..106];
        let scales = &b[106..110];
        for ib in 0..8 {
            let sc = scales[ib / 2];
            let nib = if ib % 2 == 0 { sc & 0x0F } else { sc >> 4 };
            let sc = 1 + 2 * nib as i16;
            let h = qh[ib] as usize;
            for l in 0..4 {
                let i1 = qs[8 * ib + 2 * l] as usize | ((h << (8 - 2 * l)) & 256);
                let i2 = qs[8 * ib + 2 * l + 1] as usize | ((h << (7 - 2 * l)) & 256);
                let point = IQ3S_GRID[i1] as u64 | ((IQ3S_GRID[i2] as u64) << 32);
                S::grid8(point, signs[4 * ib + l], sc, &mut s.w[32 * ib + 8 * l..]);
            }
        }
    }
}

/// Writes 8 IQ1 grid values (−1, 0, 1) shifted by ±1/8, as eighths, times `sc`.
#[inline(always)]
fn put_iq1(o: &mut [i16], point: u64, shift_negative: bool, sc: i16) {
    let delta = if shift_negative { -1 } else { 1 };
    for (j, v) in o.iter_mut().enumerate().take(8) {
        *v = (8 * ((point >> (8 * j)) as u8 as i8) as i16 + delta) * sc;
    }
}

impl SuperBlock for BIq1S {
    const TYPE: GgmlType = GgmlType::IQ1_S;
    const BYTES: usize = 50;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        // value = d·(2s+1)·(grid ± 1/8) = (d/8)·(2s+1)·(8·grid ± 1)
        const { assert!(IQ1S_DELTA == 0.125) };
        s.d = f16_at(b, 0) * 0.125;
        let qs = &b[2..34];
        for ib in 0..8 {
            let qh = u16_at(b, 34 + 2 * ib);
            let sc = 2 * ((qh >> 12) & 7) as i16 + 1;
            for l in 0..4 {
                let idx = qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
                put_iq1(&mut s.w[32 * ib + 8 * l..], IQ1S_GRID[idx], qh & 0x8000 != 0, sc);
            }
        }
    }
}

impl SuperBlock for BIq1M {
    const TYPE: GgmlType = GgmlType::IQ1_M;
    const BYTES: usize = 56;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn unpack<S: Simd>(b: &[u8], s: &mut Super) {
        let qs = &b[0..32];
        let qh = &b[32..48];
        let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
        let scale = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
        s.d = half::f16::from_bits(scale).to_f32() * 0.125;
        for ib in 0..8 {
            let sv = sc[ib / 2] >> (6 * (ib % 2));
            let s1 = 2 * (sv & 7) as i16 + 1;
            let s2 = 2 * ((sv >> 3) & 7) as i16 + 1;
            let (h0, h1) = (qh[2 * ib] as usize, qh[2 * ib + 1] as usize);
            let q = &qs[4 * ib..4 * ib + 4];
            let idx = [
                q[0] as usize | ((h0 << 8) & 0x700),
                q[1] as usize | ((h0 << 4) & 0x700),
                q[2] as usize | ((h1 << 8) & 0x700),
                q[3] as usize | ((h1 << 4) & 0x700),
            ];
            let neg = [h0 & 0x08 != 0, h0 & 0x80 != 0, h1 & 0x08 != 0, h1 & 0x80 != 0];
            for l in 0..4 {
                let scl = if l < 2 { s1 } else { s2 };
                put_iq1(&mut s.w[32 * ib + 8 * l..], IQ1S_GRID[idx[l]], neg[l], scl);
            }
        }
    }
}
