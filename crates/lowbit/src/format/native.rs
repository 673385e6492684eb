//! lowbit-native weight formats, for research and mixed precision beyond ggml's fixed
//! menu: group-wise integers `intN` (N = 2…8, any group of 16…256 values, symmetric or
//! with a zero point), NF4 (QLoRA's normal-float grid), FP8 (E4M3) and FP4 (E2M1), each
//! group with an f16 scale. llama.cpp cannot run them; lowbit stores them in the same
//! GGUF container (see [`crate::gguf`]: raw bytes as an I8 tensor plus a
//! `lowbit.native.<tensor>` metadata string naming the format) and evaluates them.
//!
//! Names: `int4_g128` (symmetric), `int3_g64_zp` (zero point), `nf4_g64`, `fp8_g32`,
//! `fp4_g32`. A group is stored as: f16 scale d, for `_zp` an f16 offset m, then the
//! group's codes as a little-endian bit stream (N bits each, N = 4 for NF4/FP4, 8 for
//! FP8). Values: intN x = d·(q − 2^(N−1)); intN_zp x = d·q − m; grids x = d·grid[q].

use std::fmt;

use super::encode::{magnitude_weight, put_f16, sum_of_squares, BlockInput, EncodeError};
use super::f16_at;
use crate::format::encode::search::{fit_affine, fit_codebook, fit_symmetric, nearest_index, nearest_int};
use crate::format::encode::Fit;

/// The value grid a format's codes index, or plain integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeKind {
    /// N-bit integers; with `zero_point`, unsigned codes and an f16 offset.
    Int {
        /// Bits per code, 2…8.
        bits: u8,
        /// Unsigned codes with an offset (asymmetric) instead of symmetric codes.
        zero_point: bool,
    },
    /// The 16 NF4 values (quantiles of a normal distribution, QLoRA).
    Nf4,
    /// FP8 E4M3 (OCP): 1 sign, 4 exponent (bias 7), 3 mantissa bits, max 448, no inf.
    Fp8,
    /// FP4 E2M1: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    Fp4,
}

/// A native format: a value kind and the group size sharing one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NativeFormat {
    /// What the codes mean.
    pub kind: NativeKind,
    /// Values per group (16…256, a multiple of 8).
    pub group: usize,
}

/// NF4's 16 values (bitsandbytes' table), sorted.
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 E2M1 values in code order (bit 3 is the sign).
const FP4_BY_CODE: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Decodes an FP8 E4M3 byte (0x7F / 0xFF are NaN; decoded as 0, never written).
pub fn fp8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0x0F, b & 0x07);
    if e == 0x0F && m == 0x07 {
        return 0.0;
    }
    let v = if e == 0 { m as f32 / 8.0 * 2f32.powi(-6) } else { (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7) };
    sign * v
}

/// A sorted grid and the code of each grid entry.
struct Grid {
    values: Vec<f32>,
    codes: Vec<u8>,
}

/// The sorted grid of a non-integer kind (distinct values; −0 dropped).
fn grid(kind: NativeKind) -> Grid {
    let mut pairs: Vec<(f32, u8)> = match kind {
        NativeKind::Nf4 => NF4_VALUES.iter().enumerate().map(|(i, &v)| (v, i as u8)).collect(),
        NativeKind::Fp4 => {
            FP4_BY_CODE.iter().enumerate().filter(|(i, _)| *i != 8).map(|(i, &v)| (v, i as u8)).collect()
        }
        NativeKind::Fp8 => {
            (0..=255u8).filter(|&b| b != 0x80 && b & 0x7F != 0x7F).map(|b| (fp8_e4m3_to_f32(b), b)).collect()
        }
        NativeKind::Int { .. } => unreachable!("integer kinds have no grid"),
    };
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Grid { values: pairs.iter().map(|p| p.0).collect(), codes: pairs.iter().map(|p| p.1).collect() }
}

impl NativeFormat {
    /// Parses a name such as `int4_g128`, `int3_g64_zp`, `nf4_g64`, `fp8_g32`, `fp4_g32`.
    pub fn from_name(name: &str) -> Option<NativeFormat> {
        let lower = name.to_ascii_lowercase();
        let mut parts = lower.split('_');
        let head = parts.next()?;
        let group: usize = parts.next()?.strip_prefix('g')?.parse().ok()?;
        let zp = match parts.next() {
            None => false,
            Some("zp") => true,
            Some(_) => return None,
        };
        if parts.next().is_some() || !(16..=256).contains(&group) || !group.is_multiple_of(8) {
            return None;
        }
        let kind = match head {
            "nf4" if !zp => NativeKind::Nf4,
            "fp8" if !zp => NativeKind::Fp8,
            "fp4" if !zp => NativeKind::Fp4,
            _ => {
                let bits: u8 = head.strip_prefix("int")?.parse().ok()?;
                if !(2..=8).contains(&bits) {
                    return None;
                }
                NativeKind::Int { bits, zero_point: zp }
            }
        };
        Some(NativeFormat { kind, group })
    }

    /// For a name that looks like a native format but is not one (`int4_g100`, `int9_g64`,
    /// `nf4_g64_zp`), what is wrong with it; `None` for valid names and other names.
    pub fn why_not(name: &str) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let head = lower.split('_').next().unwrap_or("");
        let looks_native = ["int", "nf4", "fp8", "fp4"].iter().any(|p| head.starts_with(p)) && lower.contains("_g");
        if !looks_native || NativeFormat::from_name(name).is_some() {
            return None;
        }
        Some(
            "not a native format: intN_gG[_zp] with N from 2 to 8, or nf4_gG, fp8_gG, fp4_gG (no _zp); \
             the group G is 16…256 and a multiple of 8 (e.g. int4_g64, int3_g128_zp), and must divide the rows"
                .to_string(),
        )
    }

    /// Bits per code.
    pub fn code_bits(&self) -> usize {
        match self.kind {
            NativeKind::Int { bits, .. } => bits as usize,
            NativeKind::Nf4 | NativeKind::Fp4 => 4,
            NativeKind::Fp8 => 8,
        }
    }

    /// Bytes of one group: f16 scale, f16 offset for `_zp`, the packed codes.
    pub fn group_bytes(&self) -> usize {
        let header = if matches!(self.kind, NativeKind::Int { zero_point: true, .. }) { 4 } else { 2 };
        header + self.group * self.code_bits() / 8
    }

    /// Exact bits per weight, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.group_bytes() as f64 / self.group as f64
    }

    /// Bytes of a row of `n` values (`n` a multiple of the group), or `None`.
    pub fn row_bytes(&self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.group).then(|| n / self.group * self.group_bytes())
    }

    /// For the 4-bit formats, the 16 levels the codes index: value = d·level, minus the
    /// offset m for `_zp` — the expressions [`NativeFormat::decode_row`] tabulates, for the
    /// kernels' vector lookup (`kernels::nibbles`).
    pub fn nibble_levels(&self) -> Option<[f32; 16]> {
        match self.kind {
            NativeKind::Int { bits: 4, zero_point: true } => Some(std::array::from_fn(|q| q as f32)),
            NativeKind::Int { bits: 4, zero_point: false } => Some(std::array::from_fn(|q| (q as i32 - 8) as f32)),
            NativeKind::Nf4 => Some(NF4_VALUES),
            NativeKind::Fp4 => Some(FP4_BY_CODE),
            _ => None,
        }
    }

    /// Decodes one row: `bytes` holds `out.len() / group` groups. Each group's values are
    /// first tabulated per code (the same expression per code as value by value, so the
    /// result is unchanged), then looked up — two codes per byte for 4-bit formats, one
    /// for 8-bit, the bit stream otherwise.
    pub fn decode_row(&self, bytes: &[u8], out: &mut [f32]) {
        let (gb, g, bits) = (self.group_bytes(), self.group, self.code_bits());
        let grid: Option<[f32; 256]> = match self.kind {
            NativeKind::Int { .. } => None,
            NativeKind::Nf4 => Some(std::array::from_fn(|i| NF4_VALUES[i % 16])),
            NativeKind::Fp4 => Some(std::array::from_fn(|i| FP4_BY_CODE[i % 16])),
            NativeKind::Fp8 => Some(std::array::from_fn(|i| fp8_e4m3_to_f32(i as u8))),
        };
        let levels = 1usize << bits;
        let mut table = [0f32; 256];
        for (blk, y) in bytes.chunks_exact(gb).zip(out.chunks_exact_mut(g)) {
            let d = f16_at(blk, 0);
            let (m, codes) = match self.kind {
                NativeKind::Int { zero_point: true, .. } => (f16_at(blk, 2), &blk[4..]),
                _ => (0.0, &blk[2..]),
            };
            for (q, t) in table.iter_mut().enumerate().take(levels) {
                *t = match (self.kind, &grid) {
                    (NativeKind::Int { zero_point: true, .. }, _) => d * q as f32 - m,
                    (NativeKind::Int { bits, .. }, _) => d * (q as i32 - (1 << (bits - 1))) as f32,
                    (_, Some(grid)) => d * grid[q],
                    (_, None) => unreachable!("grid kinds have a table"),
                };
            }
            match bits {
                4 => {
                    for (pair, &c) in y.chunks_exact_mut(2).zip(codes) {
                        pair[0] = table[(c & 15) as usize];
                        pair[1] = table[(c >> 4) as usize];
                    }
                }
                8 => y.iter_mut().zip(codes).for_each(|(v, &c)| *v = table[c as usize]),
                _ => {
                    for (i, v) in y.iter_mut().enumerate() {
                        *v = table[read_bits(codes, i * bits, bits) as usize];
                    }
                }
            }
        }
    }

    /// Encodes one row (`x.len()` a multiple of the group) into `out` (its row bytes).
    pub fn encode_row(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        fit: Fit,
        out: &mut [u8],
    ) -> Result<(), EncodeError> {
        let g = self.group;
        if !x.len().is_multiple_of(g) {
            return Err(EncodeError::PartialGroup { format: self.to_string(), n: x.len(), group: g });
        }
        if let Some(imp) = importance.filter(|imp| imp.len() != x.len()) {
            return Err(EncodeError::ImportanceLength { got: imp.len(), need: x.len() });
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(EncodeError::NonFinite { index, value });
        }
        assert_eq!(out.len(), x.len() / g * self.group_bytes(), "output buffer must hold the encoded row");
        let row_sigma2 = sum_of_squares(x) / x.len().max(1) as f32;
        let grid = match self.kind {
            NativeKind::Int { .. } => None,
            kind => Some(grid(kind)),
        };
        let bits = self.code_bits();
        let mut codes = vec![0u32; g];
        let mut w = vec![0.0f32; g];
        for (i, o) in out.chunks_exact_mut(self.group_bytes()).enumerate() {
            let r = i * g..(i + 1) * g;
            let b = BlockInput { x: &x[r.clone()], importance: importance.map(|q| &q[r]), row_sigma2, fit };
            b.weights(0..g, row_sigma2, &mut w, magnitude_weight(row_sigma2));
            let header = self.encode_group(&b, &w, grid.as_ref(), o, &mut codes);
            o[header..].fill(0);
            for (j, &q) in codes.iter().enumerate() {
                write_bits(&mut o[header..], j * bits, bits, q);
            }
        }
        Ok(())
    }

    /// Chooses one group's scale (and offset) and codes; writes the f16 header, returns
    /// its length.
    fn encode_group(&self, b: &BlockInput, w: &[f32], grid: Option<&Grid>, o: &mut [u8], codes: &mut [u32]) -> usize {
        let x = b.x;
        let search = b.fit == Fit::Search;
        match self.kind {
            NativeKind::Int { bits, zero_point: false } => {
                let half = 1i32 << (bits - 1);
                let (lo, hi) = (-half, half - 1);
                let mut l = vec![0i32; x.len()];
                let steps = if !search {
                    0
                } else if bits >= 7 {
                    3
                } else {
                    9
                };
                let d = fit_symmetric(x, w, lo, hi, steps, search && bits < 7, &mut l);
                let d = put_f16(o, 0, d);
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = (nearest_int(v * id).clamp(lo, hi) + half) as u32;
                }
                2
            }
            NativeKind::Int { bits, zero_point: true } => {
                let nmax = (1i32 << bits) - 1;
                let mut l = vec![0u8; x.len()];
                let nstep = if search { 36 } else { 0 };
                let (d, m) = fit_affine(x, w, nmax, -0.9, 0.05, nstep, &mut l);
                let (d, m) = (put_f16(o, 0, d), put_f16(o, 2, m));
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = nearest_int((v + m) * id).clamp(0, nmax) as u32;
                }
                4
            }
            _ => {
                let grid = grid.expect("grid kinds have a grid");
                let mut l = vec![0u8; x.len()];
                let d = fit_codebook(x, w, &grid.values, if search { 7 } else { -1 }, &mut l);
                let d = put_f16(o, 0, d);
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = grid.codes[nearest_index(&grid.values, v * id)] as u32;
                }
                2
            }
        }
    }
}

impl fmt::Display for NativeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            NativeKind::Int { bits, zero_point } => {
                write!(f, "int{bits}_g{}{}", self.group, if zero_point { "_zp" } else { "" })
            }
            NativeKind::Nf4 => write!(f, "nf4_g{}", self.group),
            NativeKind::Fp8 => write!(f, "fp8_g{}", self.group),
            NativeKind::Fp4 => write!(f, "fp4_g{}", self.group),
        }
    }
}

/// The `n`-bit value at bit offset `at` of a little-endian bit stream.
#[inline(always)]
pub(crate) fn read_bits(bytes: &[u8], at: usize, n: usize) -> u32 {
    let (byte, shift) = (at / 8, at % 8);
    // Four whole bytes hold any code of ≤ 25 bits: one load where they exist.
    if n <= 25 {
        if let Some(w) = bytes.get(byte..byte + 4) {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            return (v >> shift) & ((1u32 << n) - 1);
        }
    }
    let mut v = 0u32;
    for (k, &b) in bytes[byte..(byte + (shift + n).div_ceil(8)).min(bytes.len())].iter().enumerate() {
        v |= (b as u32) << (8 * k);
    }
    (v >> shift) & ((1u32 << n) - 1)
}

/// Ors the `n`-bit value `q` into the bit stream at bit offset `at` (bytes start zeroed).
pub(crate) fn write_bits(bytes: &mut [u8], at: usize, n: usize, q: u32) {
    let (byte, shift) = (at / 8, at % 8);
    let v = (q & ((1u32 << n) - 1)) << shift;
    for k in 0..(shift + n).div_ceil(8) {
        bytes[byte + k] |= (v >> (8 * k)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The tabulated decoder gives, bit for bit, the value-by-value definition (format
    /// header: `x = d·(q − 2^(N−1))`, `d·q − m`, `d·grid[q]`) on random groups.
    #[test]
    fn decode_row_equals_the_value_by_value_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for name in [
            "int2_g16",
            "int3_g64_zp",
            "int4_g64",
            "int5_g32",
            "int6_g128",
            "int8_g32_zp",
            "nf4_g64",
            "fp4_g32",
            "fp8_g32",
        ] {
            let f = NativeFormat::from_name(name).unwrap();
            let n = 4 * f.group;
            let mut bytes: Vec<u8> = (0..f.row_bytes(n).unwrap()).map(|_| rng.random()).collect();
            for blk in bytes.chunks_exact_mut(f.group_bytes()) {
                put_f16(blk, 0, rng.random::<f32>() - 0.5);
                if matches!(f.kind, NativeKind::Int { zero_point: true, .. }) {
                    put_f16(blk, 2, rng.random::<f32>() - 0.5);
                }
            }
            let mut got = vec![0.0f32; n];
            f.decode_row(&bytes, &mut got);
            let bits = f.code_bits();
            for (blk, y) in bytes.chunks_exact(f.group_bytes()).zip(got.chunks_exact(f.group)) {
                let d = f16_at(blk, 0);
                let (m, codes) = match f.kind {
                    NativeKind::Int { zero_point: true, .. } => (f16_at(blk, 2), &blk[4..]),
                    _ => (0.0, &blk[2..]),
                };
                for (i, &v) in y.iter().enumerate() {
                    let q = read_bits(codes, i * bits, bits);
                    let want = match f.kind {
                        NativeKind::Int { zero_point: true, .. } => d * q as f32 - m,
                        NativeKind::Int { bits, .. } => d * (q as i32 - (1 << (bits - 1))) as f32,
                        NativeKind::Nf4 => d * NF4_VALUES[q as usize],
                        NativeKind::Fp4 => d * FP4_BY_CODE[q as usize],
                        NativeKind::Fp8 => d * fp8_e4m3_to_f32(q as u8),
                    };
                    assert_eq!(v.to_bits(), want.to_bits(), "{name} value {i}: {v} vs {want}");
                }
            }
        }
    }

    fn row(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| (rng.random::<f32>() - 0.5) * 0.1).collect()
    }

    #[test]
    fn names_round_trip_and_nonsense_is_refused() {
        for name in ["int2_g16", "int3_g64_zp", "int8_g256", "nf4_g64", "fp8_g32", "fp4_g32", "int5_g24"] {
            assert_eq!(NativeFormat::from_name(name).unwrap().to_string(), name);
        }
        for bad in
            ["int1_g32", "int9_g32", "int4_g8", "int4_g512", "int4_g20", "nf4_g64_zp", "int4", "q4_g32", "int4_g32_x"]
        {
            assert!(NativeFormat::from_name(bad).is_none(), "{bad}");
        }
        assert_eq!(NativeFormat::from_name("int3_g64_zp").unwrap().bits_per_weight(), 3.5);
        assert_eq!(NativeFormat::from_name("int4_g128").unwrap().bits_per_weight(), 4.125);
        assert_eq!(NativeFormat::from_name("fp8_g32").unwrap().bits_per_weight(), 8.5);
    }

    #[test]
    fn bit_streams_round_trip() {
        for n in 2..=8 {
            let vals: Vec<u32> = (0..64).map(|i| (i * 37 + 5) % (1 << n)).collect();
            let mut bytes = vec![0u8; 64 * n / 8];
            for (i, &v) in vals.iter().enumerate() {
                write_bits(&mut bytes, i * n, n, v);
            }
            for (i, &v) in vals.iter().enumerate() {
                assert_eq!(read_bits(&bytes, i * n, n), v, "{n} bits, value {i}");
            }
        }
    }

    #[test]
    fn fp8_decoding_matches_the_e4m3_definition() {
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        let g = grid(NativeKind::Fp8);
        assert_eq!(g.values.len(), 253); // 256 − two NaNs − negative zero
        assert!(g.values.windows(2).all(|p| p[0] < p[1]));
    }

    /// Round trip error of every kind stays within half a quantization step of its scale
    /// (for grids: half the widest gap between neighbouring grid values, times d).
    #[test]
    fn round_trip_error_is_bounded_by_the_step() {
        let x = row(1, 1024);
        for name in ["int2_g32", "int3_g64", "int4_g128", "int5_g32_zp", "int8_g64", "nf4_g64", "fp8_g32", "fp4_g32"] {
            let f = NativeFormat::from_name(name).unwrap();
            for fit in [Fit::Rtn, Fit::Search] {
                let mut bytes = vec![0u8; f.row_bytes(x.len()).unwrap()];
                f.encode_row(&x, None, fit, &mut bytes).unwrap();
                let mut y = vec![0.0f32; x.len()];
                f.decode_row(&bytes, &mut y);
                for (gi, (xg, (yg, bg))) in
                    x.chunks(f.group).zip(y.chunks(f.group).zip(bytes.chunks(f.group_bytes()))).enumerate()
                {
                    let d = f16_at(bg, 0).abs();
                    let (xmin, xmax) = xg.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    let amax = xmax.max(-xmin);
                    // Half the widest step inside the representable range, plus whatever lies
                    // beyond it (clipped: symmetric ranges are one code shorter on one side,
                    // and a search may pick a scale that clips the largest values).
                    let (half_step, clipped) = match f.kind {
                        NativeKind::Int { zero_point: true, bits } => {
                            let (lo_end, hi_end) = (-f16_at(bg, 2), d * ((1 << bits) - 1) as f32 - f16_at(bg, 2));
                            (0.5 * d, (xmax - hi_end).max(lo_end - xmin).max(0.0))
                        }
                        NativeKind::Int { bits, .. } => (0.5 * d, (amax - d * ((1 << (bits - 1)) - 1) as f32).max(0.0)),
                        k => {
                            let g = grid(k);
                            let gap = g.values.windows(2).map(|p| p[1] - p[0]).fold(0.0, f32::max);
                            let reach = (-g.values[0]).min(g.values[g.values.len() - 1]);
                            (0.5 * gap * d, (amax - d * reach).max(0.0))
                        }
                    };
                    let bound = half_step + clipped + 1e-4 * amax + 1e-7;
                    for (a, b) in xg.iter().zip(yg) {
                        assert!((a - b).abs() <= bound, "{name} {fit:?} group {gi}: {a} vs {b} (bound {bound})");
                    }
                }
            }
        }
    }

    #[test]
    fn search_beats_round_to_nearest_on_weighted_error() {
        let x = row(2, 4096);
        for name in ["int3_g64", "int4_g32_zp", "nf4_g64", "fp4_g32"] {
            let f = NativeFormat::from_name(name).unwrap();
            let err = |fit| {
                let mut bytes = vec![0u8; f.row_bytes(x.len()).unwrap()];
                f.encode_row(&x, None, fit, &mut bytes).unwrap();
                let mut y = vec![0.0f32; x.len()];
                f.decode_row(&bytes, &mut y);
                x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
            };
            let (rtn, search) = (err(Fit::Rtn), err(Fit::Search));
            assert!(search < rtn, "{name}: search {search:.4e} vs rtn {rtn:.4e}");
        }
    }

    #[test]
    fn bad_rows_are_refused() {
        let f = NativeFormat::from_name("int4_g32").unwrap();
        let mut out = vec![0u8; 18];
        assert!(matches!(
            f.encode_row(&[0.0; 33], None, Fit::Search, &mut out),
            Err(EncodeError::PartialGroup { n: 33, group: 32, .. })
        ));
        let mut x = vec![0.0; 32];
        x[5] = f32::NAN;
        assert!(matches!(f.encode_row(&x, None, Fit::Search, &mut out), Err(EncodeError::NonFinite { index: 5, .. })));
    }
}
