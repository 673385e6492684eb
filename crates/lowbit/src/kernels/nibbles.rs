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

use super::isa::Level;
use crate::format::native::{NativeFormat, NativeKind};

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
    use crate::format::f16_at;
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
