//! lowbit's 4-bit native formats (`int4_gG[_zp]`, `nf4_gG`, `fp4_gG`) decoded with a
//! vector table lookup: each group's 16 values (`d·level`, minus `m` for `_zp`; the
//! levels from [`NativeFormat::nibble_levels`]) sit in one AVX-512 register and
//! `vpermps` picks 16 of them per instruction from 16 codes.
//!
//! Why: the format's own decoder ([`NativeFormat::decode_row`]) looks values up one at a
//! time, which held generation from int4_g64/nf4_g64 files at ~35 tokens/s on smollm2
//! (0.17× llama.cpp's Q4_0). Contract: the same bits as `decode_row` (the same table
//! expressions; a lookup does no arithmetic) — tested below on random groups of every
//! 4-bit format; other formats, groups that are not a multiple of 16 values, and CPUs
//! without AVX-512 use `decode_row`.
//!
//! In llama.cpp numerics, 4-bit groups without a zero point (int4, nf4, fp4) of whole 64s
//! take Q8_0 activations and skip the decoding: [`rows_q8`] dots the levels as bytes with
//! `vpdpbusd`, as llama.cpp's Q4_0 and IQ4_NL kernels do ([`ByteLevels`] says how each
//! format's levels become integers). ggml's own 32-value types take the same scheme at
//! AVX-512 in [`super::bytes32`].

use super::acts::QuantRow;
use super::isa::Level;
use super::rows::hsum16;
use super::vq_bytes::ByValue;
use crate::format::f16_at;
use crate::format::native::{NativeFormat, NativeKind};

/// Whether `f` takes Q8_0 activations in llama.cpp numerics and runs through [`rows_q8`]:
/// 4-bit levels without a zero point (int4 `q − 8`, NF4, FP4 E2M1) in groups of whole 64s.
pub fn takes_q8(f: &NativeFormat) -> bool {
    ByteLevels::of(f).is_some() && f.group.is_multiple_of(64)
}

/// A 4-bit format's 16 levels as integers `L[q] = lo[q] − offset` with
/// `level[q] ≈ L[q] · inv`, held as the unsigned bytes `vpdpbusd` multiplies against
/// signed activation codes (one `vpshufb` plane; int4's bytes are the codes themselves):
/// - int4 (`q − 8`: offset 8, `inv` 1) and FP4 (twice the E2M1 value + 12, offset 12, `inv`
///   ½) are exact;
/// - NF4's levels × 112 rounded (offset 128, `inv` 1/112), as IQ4_NL stores its
///   NF4-like grid in int8: ±1 and 0 exact, the others within 0.0039 of the level
///   ([`NF4_SCALE`]). An earlier form held them × 2¹⁴ in two byte planes (within 2⁻¹⁵),
///   at twice the lookups and dot products: smollm2's nf4_g64 generated at 0.80–0.88×
///   llama.cpp's Q4_0 with it. Measured cost of the rounding (smollm2 nf4_g64, llama.cpp
///   numerics, wiki.valid 40 chunks, every product through these row loops): KLD 0.23548
///   with two planes, 0.23590 × 112, 0.23821 × 127.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ByteLevels {
    lo: [u8; 16],
    offset: i32,
    inv: f32,
}

/// What NF4's levels (in −1…1) are multiplied by before rounding to integers: of the
/// multipliers that keep ±1 inside a byte (≤ 127), the one with the smallest RMS rounding
/// error over the 16 levels (112: 0.0017; 127, the int8 range: 0.0022, which cost 1 % in
/// KLD against 112's 0.2 %, measured above).
pub(crate) const NF4_SCALE: f32 = 112.0;

impl ByteLevels {
    /// The integer form of `f`'s levels, for the 4-bit formats without a zero point.
    pub(crate) fn of(f: &NativeFormat) -> Option<ByteLevels> {
        match f.kind {
            NativeKind::Int { bits: 4, zero_point: false } => {
                Some(ByteLevels { lo: std::array::from_fn(|q| q as u8), offset: 8, inv: 1.0 })
            }
            NativeKind::Fp4 => {
                let levels = f.nibble_levels()?;
                let lo = std::array::from_fn(|q| {
                    let l = 2.0 * levels[q] + 12.0;
                    debug_assert!(l.fract() == 0.0 && (0.0..=24.0).contains(&l));
                    l as u8
                });
                Some(ByteLevels { lo, offset: 12, inv: 0.5 })
            }
            NativeKind::Nf4 => {
                let levels = f.nibble_levels()?;
                let lo = std::array::from_fn(|q| {
                    let l = (levels[q] * NF4_SCALE).round() + 128.0;
                    debug_assert!((1.0..=255.0).contains(&l));
                    l as u8
                });
                Some(ByteLevels { lo, offset: 128, inv: 1.0 / NF4_SCALE })
            }
            _ => None,
        }
    }

    /// The integer level of code `q` (tests).
    #[cfg(test)]
    fn int(&self, q: usize) -> i32 {
        self.lo[q] as i32 - self.offset
    }
}

/// Stored rows of `f` ([`takes_q8`]) × activation rows quantized to Q8_0, rearranged in
/// `bv` ([`ByValue::q8`] with vectors of one value: the codes as bytes, their sums and
/// block scales per lane of 4): `out[r·t + i]`. Per 64 values, `vpdpbusd` of the level
/// bytes ([`ByteLevels`]; int4's are the codes, the others a `vpshufb` lookup) with the
/// activation codes gives per lane the exact `Σ L·x`; then `acc += (lane · d_x) · (d·inv)`
/// per lane, summed in [`hsum16`]'s order. Before (decoded groups and an f32 dot),
/// smollm2's int4_g64 and nf4_g64 files generated at 0.85× llama.cpp's Q4_0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_q8(
    level: Level,
    f: &NativeFormat,
    rows: &[u8],
    row_bytes: usize,
    acts: &[QuantRow],
    bv: &ByValue,
    out: &mut [f32],
) {
    assert!(takes_q8(f));
    let bl = ByteLevels::of(f).expect("takes_q8");
    let fast = level == Level::Avx512 && super::vq_bytes::vbmi();
    super::rows::pairs_q8(rows, row_bytes, acts.len(), bv, out, |starts, xq, xs, dl| {
        if fast {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `fast` only where the CPU has AVX-512 F/BW/VL/VNNI (Level::Avx512)
            // and VBMI.
            unsafe {
                match f.kind {
                    NativeKind::Int { .. } => rows2_q8_avx512::<false>(f, &bl, rows, starts, row_bytes, xq, xs, dl),
                    _ => rows2_q8_avx512::<true>(f, &bl, rows, starts, row_bytes, xq, xs, dl),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("AVX-512 is x86-64 only")
        } else {
            starts.map(|s| row_q8_portable(f, &bl, &rows[s..s + row_bytes], xq, xs, dl))
        }
    });
}

/// One row of [`rows_q8`] in plain code (the reference for [`rows2_q8_avx512`]).
fn row_q8_portable(f: &NativeFormat, bl: &ByteLevels, row: &[u8], xq: &[i8], xs: &[i32], dl: &[f32]) -> f32 {
    let (gb, group) = (f.group_bytes(), f.group);
    let mut acc = [0f32; 16];
    for (g, blk) in row.chunks_exact(gb).enumerate() {
        let d = f16_at(blk, 0) * bl.inv;
        for step in 0..group / 64 {
            let (c0, l0) = (g * group + 64 * step, (g * group + 64 * step) / 4);
            for (l, a) in acc.iter_mut().enumerate() {
                let mut lo = 0i32;
                for k in 0..4 {
                    let v = 64 * step + 4 * l + k;
                    let q = ((blk[2 + v / 2] >> (4 * (v % 2))) & 15) as usize;
                    let x = xq[c0 + 4 * l + k] as i32;
                    lo += bl.lo[q] as i32 * x;
                }
                *a += ((lo - bl.offset * xs[l0 + l]) as f32 * dl[l0 + l]) * d;
            }
        }
    }
    hsum16(&acc)
}

/// [`row_q8_portable`] for the two rows at `starts` of `rows`, with AVX-512 (VBMI unpacks
/// 64 codes, VNNI `vpdpbusd`); the activation loads are shared. `LOOKUP`: false for int4
/// (the codes are the bytes), true where `vpshufb` looks the level bytes up.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows2_q8_avx512<const LOOKUP: bool>(
    f: &NativeFormat,
    bl: &ByteLevels,
    rows: &[u8],
    starts: [usize; 2],
    row_bytes: usize,
    xq: &[i8],
    xs: &[i32],
    dl: &[f32],
) -> [f32; 2] {
    use std::arch::x86_64::*;
    let (gb, group) = (f.group_bytes(), f.group);
    let cols = row_bytes / gb * group;
    assert!(starts.iter().all(|&s| s + row_bytes <= rows.len()));
    assert!(row_bytes.is_multiple_of(gb) && gb == 2 + group / 2);
    assert!(xq.len() >= cols && xs.len() >= cols / 4 && dl.len() >= cols / 4);
    assert!(LOOKUP || (bl.offset == 8 && bl.lo == std::array::from_fn(|q| q as u8)));
    // SAFETY: `unpack_codes` reads the 32 code bytes of a 64-value step (inside `rows`:
    // start + row_bytes ≤ rows.len(), asserted) or, where 64 bytes from there lie inside
    // `rows`, a plain 64-byte load (the gather uses the first 32); activation loads read 64
    // codes at c0 + 64 ≤ cols ≤ xq.len(), and 16 lane sums and scales at c0/4 + 16 ≤ cols/4
    // (asserted); the level table is 16 bytes.
    unsafe {
        let fields = super::vq_bytes::unpack_fields(4);
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(bl.lo.as_ptr().cast()));
        let mut acc = [_mm512_setzero_ps(); 2];
        for g in 0..row_bytes / gb {
            let at = starts.map(|s| s + g * gb);
            // Spelled out: `array::map` with an intrinsic in its closure was not inlined
            // (a call per group, its registers through memory: 7.6 % of smollm2 nf4_g64's tg).
            let d = [
                _mm512_set1_ps(f16_at(&rows[at[0]..], 0) * bl.inv),
                _mm512_set1_ps(f16_at(&rows[at[1]..], 0) * bl.inv),
            ];
            for step in 0..group / 64 {
                let c0 = g * group + 64 * step;
                let x = _mm512_loadu_si512(xq.as_ptr().add(c0).cast());
                let sx = _mm512_loadu_si512(xs.as_ptr().add(c0 / 4).cast());
                // What the lane sums lose to the levels' offset: `offset·Σx`.
                let off = if LOOKUP {
                    _mm512_mullo_epi32(sx, _mm512_set1_epi32(bl.offset))
                } else {
                    _mm512_slli_epi32::<3>(sx)
                };
                let dx = _mm512_loadu_ps(dl.as_ptr().add(c0 / 4));
                for p in 0..2 {
                    let q = super::vq_bytes::unpack_codes(rows, at[p] + 2 + 32 * step, 4, 64, fields);
                    let bytes = if LOOKUP { _mm512_shuffle_epi8(table, q) } else { q };
                    let lane = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), bytes, x), off);
                    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(lane), dx);
                    acc[p] = _mm512_add_ps(acc[p], _mm512_mul_ps(v, d[p]));
                }
            }
        }
        acc.map(|a| {
            let mut l = [0f32; 16];
            _mm512_storeu_ps(l.as_mut_ptr(), a);
            hsum16(&l)
        })
    }
}

/// Decodes one or more whole rows of `f` (`bytes`, `out.len()` values) at `level`.
pub(crate) fn decode(level: Level, f: &NativeFormat, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && f.group.is_multiple_of(16) {
        if let Some(levels) = f.nibble_levels() {
            let zp = matches!(f.kind, NativeKind::Int { zero_point: true, .. });
            // SAFETY: `Level::Avx512` is reported only where the CPU has AVX-512 F/BW/VL.
            return unsafe { decode_avx512(&levels, zp, f.group, f.group_bytes(), bytes, out) };
        }
    }
    let _ = level;
    f.decode_row(bytes, out)
}

/// The AVX-512 decoder: per group a 16-value table, then 16 values per `vpermps`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn decode_avx512(levels: &[f32; 16], zp: bool, group: usize, gb: usize, bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let header = if zp { 4 } else { 2 };
    assert!(group.is_multiple_of(16) && gb == header + group / 2);
    assert_eq!(bytes.len() / gb * group, out.len(), "native decode: bytes and values differ");
    // SAFETY: `levels` is 16 f32; each group's codes are gb − header = group/2 bytes, read
    // 8 at a time at offsets 8c + 8 ≤ group/2 (group a multiple of 16, asserted); each
    // store writes 16 values at 16c + 16 ≤ group inside that group's `out` chunk (whole
    // groups, asserted above).
    unsafe {
        let lv = _mm512_loadu_ps(levels.as_ptr());
        let nib = _mm_set1_epi8(0x0F);
        for (g, y) in bytes.chunks_exact(gb).zip(out.chunks_exact_mut(group)) {
            let mut table = _mm512_mul_ps(lv, _mm512_set1_ps(f16_at(g, 0)));
            if zp {
                table = _mm512_sub_ps(table, _mm512_set1_ps(f16_at(g, 2)));
            }
            let codes = g[header..].as_ptr();
            for c in 0..group / 16 {
                let v = _mm_loadl_epi64(codes.add(8 * c).cast());
                let lo = _mm_and_si128(v, nib);
                let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
                let idx = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
                _mm512_storeu_ps(y.as_mut_ptr().add(16 * c), _mm512_permutexvar_ps(idx, table));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every format's integer levels: `L[q]·inv` is the level, exactly for int4 and FP4,
    /// within half a step of 1/112 ([`NF4_SCALE`]) for NF4 (exactly for −1, 0 and 1).
    #[test]
    fn byte_levels_are_the_levels() {
        for (name, tol) in [("int4_g64", 0.0), ("fp4_g64", 0.0), ("nf4_g64", 0.5 / NF4_SCALE)] {
            let f = NativeFormat::from_name(name).unwrap();
            let (bl, levels) = (ByteLevels::of(&f).unwrap(), f.nibble_levels().unwrap());
            for (q, &want) in levels.iter().enumerate() {
                let got = bl.int(q) as f32 * bl.inv;
                assert!((got - want).abs() <= tol, "{name} code {q}: {got} vs {want}");
                if want.abs() == 1.0 || want == 0.0 {
                    assert_eq!(got, want, "{name} code {q}");
                }
            }
        }
        assert!(ByteLevels::of(&NativeFormat::from_name("int4_g64_zp").unwrap()).is_none());
        assert!(!takes_q8(&NativeFormat::from_name("nf4_g32").unwrap()));
    }

    /// The integer path: equal to decoding and dotting with the activations' Q8_0 values
    /// (up to f32 summation, and NF4's levels rounded to 1/`NF4_SCALE`), and the same bits at
    /// every level.
    #[test]
    fn integer_rows_match_decoding_and_every_level_agrees() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let cases = [
            ("int4_g64", 576),
            ("int4_g128", 1536),
            ("int4_g64", 64),
            ("nf4_g64", 576),
            ("nf4_g128", 640),
            ("fp4_g64", 1536),
            ("fp4_g256", 256),
        ];
        for (name, cols) in cases {
            let f = NativeFormat::from_name(name).unwrap();
            assert!(takes_q8(&f));
            let level_tol = if matches!(f.kind, NativeKind::Nf4) { 0.5 / NF4_SCALE as f64 } else { 0.0 };
            let rb = f.row_bytes(cols).unwrap();
            let mut bytes: Vec<u8> = (0..5 * rb).map(|_| rng.random()).collect();
            for g in bytes.chunks_exact_mut(f.group_bytes()) {
                g[..2].copy_from_slice(&half::f16::from_f32(rng.random::<f32>() * 0.1).to_le_bytes());
            }
            let acts = super::super::acts::random_q8_rows(cols, 2, &mut rng);
            let bv = ByValue::q8(&acts, 1);
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                let mut out = vec![0f32; 5 * 2];
                rows_q8(level, &f, &bytes, rb, &acts, &bv, &mut out);
                for (r, got) in bytes.chunks_exact(rb).zip(out.chunks_exact(2)) {
                    let mut w = vec![0f32; cols];
                    f.decode_row(r, &mut w);
                    // |d| per value, for the levels' rounding.
                    let d: Vec<f64> = r
                        .chunks_exact(f.group_bytes())
                        .flat_map(|g| std::iter::repeat_n(f16_at(g, 0).abs() as f64, f.group))
                        .collect();
                    for (a, &got) in acts.iter().zip(got) {
                        let x = super::super::acts::q8_values(a);
                        let rounding: f64 = d.iter().zip(&x).map(|(d, x)| d * x.abs()).sum::<f64>() * level_tol;
                        super::super::acts::assert_dot(got, &w, &x, rounding, &format!("{name} {level:?}"));
                    }
                }
                match &first {
                    None => first = Some(out),
                    Some(fst) => assert!(fst == &out, "{name} {level:?}: differs from the portable loop"),
                }
            }
        }
    }

    #[test]
    fn vector_lookup_gives_the_decoders_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for name in ["int4_g64", "int4_g16_zp", "int4_g128", "nf4_g64", "nf4_g32", "fp4_g32", "int4_g24", "int3_g64"] {
            let f = NativeFormat::from_name(name).unwrap_or_else(|| panic!("{name}"));
            let cols = f.group * 6;
            let row_bytes = f.row_bytes(cols).unwrap();
            let mut bytes: Vec<u8> = (0..3 * row_bytes).map(|_| rng.random()).collect();
            // Finite f16 scales and offsets (random bytes could be NaN/∞).
            for g in bytes.chunks_exact_mut(f.group_bytes()) {
                g[..2].copy_from_slice(&half::f16::from_f32(rng.random::<f32>() * 0.1).to_le_bytes());
                if matches!(f.kind, NativeKind::Int { zero_point: true, .. }) {
                    g[2..4].copy_from_slice(&half::f16::from_f32(rng.random::<f32>() * 0.3).to_le_bytes());
                }
            }
            let mut want = vec![0f32; 3 * cols];
            for (r, o) in bytes.chunks_exact(row_bytes).zip(want.chunks_exact_mut(cols)) {
                f.decode_row(r, o);
            }
            for level in Level::supported() {
                let mut got = vec![f32::NAN; 3 * cols];
                decode(level, &f, &bytes, &mut got);
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name} {level:?}: differs from decode_row");
            }
        }
    }
}
