//! The values one encoded block can represent, position by position, once its scales are
//! fixed — and writing chosen codes back under those scales. This is what error-feedback
//! methods (GPTQ) need from a format: the block's scales are fitted when the sweep
//! reaches the block, then every weight is rounded individually, in order, to the nearest
//! value the block can hold, and the rounding error is pushed onto weights not yet
//! quantized.
//!
//! The block's float super-scales (d, and dmin where the format has minimums) can be
//! replaced afterwards ([`BlockLevels::store_scales`]): every value is linear in them
//! ([`BlockLevels::basis`]), which is what the closed-form refinement after GPTQ refits.
//!
//! Codes here are the stored codes of each format (the integers its decoder reads:
//! 0..=15 for Q4_0, 0..=7 for Q3_K, 1..=255 for Q8_0 as `i8 + 128`, the grid index for
//! IQ4); [`BlockLevels::value`] maps one back to the decoded value exactly as the
//! decoder does.

use super::kquant::{pack_2bit, pack_q3_k, pack_q4_k, pack_q5_k, pack_q6_k};
use super::legacy::{pack_5bit, pack_nibbles};
use super::nonlinear::pack_iq4;
use super::put_f16;
use crate::format::encode::search::{nearest_index, nearest_int};
use crate::format::iquant::KVALUES_IQ4NL;
use crate::format::kquant::scale_min_k4;
use crate::format::{f16_at, u16_at, GgmlType};

/// The values codes stand for before a sub-block's scale and offset apply.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CodeValues {
    /// Code c stands for c + bias, codes lo..=hi.
    Uniform {
        /// Smallest code.
        lo: i32,
        /// Largest code.
        hi: i32,
        /// Added to a code to get its integer value.
        bias: i32,
    },
    /// Code c stands for `table[c]` (sorted ascending).
    Table(&'static [i8]),
}

/// Where a block stores its f16 super-scale and (for formats with minimums) its f16
/// minimum scale; `min_sign` is +1 when the format stores dmin (value − dmin·m, the
/// k-quants) and −1 when it stores the offset m itself (Q4_1, Q5_1).
#[derive(Clone, Copy, Debug)]
struct ScaleLayout {
    d_at: usize,
    min_at: Option<usize>,
    min_sign: f32,
}

/// Decoded scales of one block: value(i, c) = d·k[s]·v(c) − dmin·m[s] for the sub-block
/// s = i / sub_len holding position i, with integer sub-scales k and sub-minimums m
/// (1 and 0 for single-scale formats) under the block's float super-scales d and dmin.
#[derive(Clone, Debug)]
pub(crate) struct BlockLevels {
    sub_len: usize,
    /// The super-scale.
    pub(crate) d: f32,
    /// The minimum's super-scale (0 without minimums).
    pub(crate) dmin: f32,
    k: [f32; 16],
    m: [f32; 16],
    codes: CodeValues,
    layout: ScaleLayout,
}

impl BlockLevels {
    fn new(sub_len: usize, codes: CodeValues, layout: ScaleLayout) -> BlockLevels {
        BlockLevels { sub_len, d: 0.0, dmin: 0.0, k: [1.0; 16], m: [0.0; 16], codes, layout }
    }

    fn code_value(&self, c: u8) -> f32 {
        match self.codes {
            CodeValues::Uniform { bias, .. } => (c as i32 + bias) as f32,
            CodeValues::Table(t) => t[c as usize] as f32,
        }
    }

    /// The value code `c` decodes to at position `i`.
    pub(crate) fn value(&self, i: usize, c: u8) -> f32 {
        let s = i / self.sub_len;
        self.d * self.k[s] * self.code_value(c) - self.dmin * self.m[s]
    }

    /// The code whose value is nearest to `x` at position `i`, and that value.
    pub(crate) fn nearest(&self, i: usize, x: f32) -> (u8, f32) {
        let s = i / self.sub_len;
        let (scale, offset) = (self.d * self.k[s], -self.dmin * self.m[s]);
        let t = if scale != 0.0 { (x - offset) / scale } else { 0.0 };
        let c = match self.codes {
            CodeValues::Uniform { lo, hi, bias } => (nearest_int(t) - bias).clamp(lo, hi),
            CodeValues::Table(table) => nearest_index(table, t) as i32,
        } as u8;
        (c, self.value(i, c))
    }

    /// The value at position `i` with code `c` as a linear function of the super-scales:
    /// (coefficient of d, coefficient of dmin).
    pub(crate) fn basis(&self, i: usize, c: u8) -> (f32, f32) {
        let s = i / self.sub_len;
        (self.k[s] * self.code_value(c), -self.m[s])
    }

    /// Whether the block has a minimum scale (dmin) besides d.
    pub(crate) fn has_min(&self) -> bool {
        self.layout.min_at.is_some()
    }

    /// Stores new super-scales in `block` (as f16) and adopts the stored values.
    pub(crate) fn store_scales(&mut self, block: &mut [u8], d: f32, dmin: f32) {
        self.d = put_f16(block, self.layout.d_at, d);
        if let Some(at) = self.layout.min_at {
            self.dmin = self.layout.min_sign * put_f16(block, at, self.layout.min_sign * dmin);
        }
    }
}

/// The types without levels, listed so that a new type is a compile error here until it
/// is placed on one side.
macro_rules! no_levels {
    () => {
        F32 | F16
            | BF16
            | F64
            | I8
            | I16
            | I32
            | I64
            | Q8_1
            | Q8_K
            | Q1_0
            | IQ2_XXS
            | IQ2_XS
            | IQ2_S
            | IQ3_XXS
            | IQ3_S
            | IQ1_S
            | IQ1_M
            | TQ1_0
            | TQ2_0
            | MXFP4
            | NVFP4
    };
}

/// The scales of an encoded block of `ty` (`block` is one block's bytes); None for types
/// whose table entry does not say [`crate::format::Gptq::Levels`] (a table test checks the
/// two agree).
pub(crate) fn block_levels(ty: GgmlType, block: &[u8]) -> Option<BlockLevels> {
    use GgmlType::*;
    let uniform = |lo, hi, bias| CodeValues::Uniform { lo, hi, bias };
    let at = |d_at| ScaleLayout { d_at, min_at: None, min_sign: 1.0 };
    let with_min = |d_at, min_at, min_sign| ScaleLayout { d_at, min_at: Some(min_at), min_sign };
    let mut l;
    match ty {
        Q4_0 | Q5_0 => {
            let half = if ty == Q4_0 { 8 } else { 16 };
            l = BlockLevels::new(32, uniform(0, 2 * half - 1, -half), at(0));
            l.d = f16_at(block, 0);
        }
        Q4_1 | Q5_1 => {
            l = BlockLevels::new(32, uniform(0, if ty == Q4_1 { 15 } else { 31 }, 0), with_min(0, 2, -1.0));
            l.d = f16_at(block, 0);
            l.dmin = -f16_at(block, 2);
            l.m[0] = 1.0;
        }
        Q8_0 => {
            l = BlockLevels::new(32, uniform(1, 255, -128), at(0));
            l.d = f16_at(block, 0);
        }
        Q2_K => {
            l = BlockLevels::new(16, uniform(0, 3, 0), with_min(80, 82, 1.0));
            (l.d, l.dmin) = (f16_at(block, 80), f16_at(block, 82));
            for (j, &b) in block[..16].iter().enumerate() {
                l.k[j] = (b & 0x0F) as f32;
                l.m[j] = (b >> 4) as f32;
            }
        }
        Q3_K => {
            l = BlockLevels::new(16, uniform(0, 7, -4), at(108));
            let sc = &block[96..108];
            l.d = f16_at(block, 108);
            for j in 0..16 {
                let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
                let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
                l.k[j] = ((low | (high << 4)) as i32 - 32) as f32;
            }
        }
        Q4_K | Q5_K => {
            l = BlockLevels::new(32, uniform(0, if ty == Q4_K { 15 } else { 31 }, 0), with_min(0, 2, 1.0));
            (l.d, l.dmin) = (f16_at(block, 0), f16_at(block, 2));
            for j in 0..8 {
                let (ls, lm) = scale_min_k4(j, &block[4..16]);
                l.k[j] = ls as f32;
                l.m[j] = lm as f32;
            }
        }
        Q6_K => {
            l = BlockLevels::new(16, uniform(0, 63, -32), at(208));
            l.d = f16_at(block, 208);
            for j in 0..16 {
                l.k[j] = block[192 + j] as i8 as f32;
            }
        }
        IQ4_NL => {
            l = BlockLevels::new(32, CodeValues::Table(&KVALUES_IQ4NL), at(0));
            l.d = f16_at(block, 0);
        }
        IQ4_XS => {
            l = BlockLevels::new(32, CodeValues::Table(&KVALUES_IQ4NL), at(0));
            let scales_h = u16_at(block, 2);
            l.d = f16_at(block, 0);
            for ib in 0..8 {
                let low = ((block[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32;
                let high = ((scales_h >> (2 * ib)) & 3) as i32;
                l.k[ib] = ((low | (high << 4)) - 32) as f32;
            }
        }
        no_levels!() => return None,
    }
    Some(l)
}

/// Writes `codes` (one stored code per value) into `block`, keeping its scales.
/// Panics for types without levels (callers check the table).
pub(crate) fn pack_codes(ty: GgmlType, codes: &[u8], block: &mut [u8]) {
    use GgmlType::*;
    match ty {
        Q4_0 | IQ4_NL => pack_nibbles(codes, &mut block[2..18]),
        Q4_1 => pack_nibbles(codes, &mut block[4..20]),
        Q5_0 => {
            let (qh, qs) = block[2..22].split_at_mut(4);
            pack_5bit(codes, qh, qs);
        }
        Q5_1 => {
            let (qh, qs) = block[4..24].split_at_mut(4);
            pack_5bit(codes, qh, qs);
        }
        Q8_0 => block[2..34].iter_mut().zip(codes).for_each(|(b, &c)| *b = (c as i32 - 128) as i8 as u8),
        Q2_K => pack_2bit(codes, &mut block[16..80]),
        Q3_K => pack_q3_k(codes, block),
        Q4_K => pack_q4_k(codes, block),
        Q5_K => pack_q5_k(codes, block),
        Q6_K => pack_q6_k(codes, block),
        IQ4_XS => pack_iq4(codes, &mut block[8..136]),
        no_levels!() => panic!("pack_codes: {ty} has no levels"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode::quantize_row;
    use crate::format::encode::Fit;
    use crate::format::{dequantize_to_vec, Gptq};

    /// For every type: each decoded value of an encoded row is a level of its block
    /// (nearest returns it exactly), and packing those codes rebuilds the same bytes.
    #[test]
    fn levels_reproduce_the_decoder_and_codes_repack_exactly() {
        let n = 512;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * (1.0 + (i % 5) as f32)).collect();
        for ty in GgmlType::all().filter(|&t| matches!(t.facts().gptq, Gptq::Levels)) {
            let mut bytes = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &x, None, Fit::Search, &mut bytes).unwrap();
            let decoded = dequantize_to_vec(ty, &bytes, n).unwrap();
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (b, block) in bytes.chunks_exact(ts).enumerate() {
                let l = block_levels(ty, block).unwrap();
                let mut codes = vec![0u8; bs];
                for i in 0..bs {
                    let want = decoded[b * bs + i];
                    let (c, v) = l.nearest(i, want);
                    assert!((v - want).abs() <= 1e-6 * want.abs().max(1e-3), "{ty} block {b} pos {i}: {v} vs {want}");
                    codes[i] = c;
                }
                let mut rebuilt = block.to_vec();
                pack_codes(ty, &codes, &mut rebuilt);
                let again = dequantize_to_vec(ty, &rebuilt, bs).unwrap();
                assert_eq!(again, decoded[b * bs..(b + 1) * bs], "{ty} block {b}: repacked codes decode differently");
                // New super-scales: values stay linear in them and decode as predicted.
                let mut l = l;
                let (d, dmin) = (l.d * 1.1, l.dmin * 0.9);
                l.store_scales(&mut rebuilt, d, dmin);
                let scaled = dequantize_to_vec(ty, &rebuilt, bs).unwrap();
                for i in 0..bs {
                    let (a, m) = l.basis(i, codes[i]);
                    let want = l.d * a + l.dmin * m;
                    assert!((scaled[i] - want).abs() <= 1e-5 * want.abs().max(1e-3), "{ty} block {b} pos {i}");
                    assert_eq!(scaled[i], l.value(i, codes[i]), "{ty} block {b} pos {i}");
                }
            }
        }
    }
}
