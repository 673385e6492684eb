//! ggml's 32-value block types without a minimum — Q4_0, IQ4_NL, Q5_0, Q8_0 — times Q8_0
//! activations in llama.cpp numerics, dotted as bytes at AVX-512 (VNNI): per pair of blocks
//! (64 values) one `vpdpbusd` of the 64 values as unsigned bytes `u = value + offset` with
//! the activation codes gives per lane of 4 the exact `Σ u·x`; minus `offset·Σx`, times
//! `d_w·d_x` fused into 16 lane accumulators, summed in [`hsum16`]'s order — the scheme
//! of lowbit's 4-bit native formats ([`super::nibbles`]) and of llama.cpp's own Q4_0/IQ4_NL
//! AVX-512 loops. [`ByteBlock`] says how each type's block becomes 64 bytes.
//!
//! Why: the block loop (`rows::small_q8`: codes widened to i16, `vpmaddwd`, one row per pass)
//! ran a 1536×576 Q4_0 product at 6–10 weights/ns against this scheme's 13–24 on an AMD
//! EPYC (scratch benchmark, same bytes, 3 rounds), and these four types hold most of the
//! zoo models' Q4_K_M and IQ4_XS files (their 576- and 640-column tensors cannot take
//! 256-value super-blocks, so llama.cpp falls back to Q5_0, Q8_0 and IQ4_NL).
//!
//! Contract: the same value as decoding the block and dotting with the Q8_0 values, up to
//! f32 summation order; the AVX-512 kernel gives its portable loop's bits (tested). Other
//! instruction-set levels keep the block loop, whose order they share.

use super::isa::Level;
use super::rows::hsum16;
use super::vq_bytes::ByValue;
use crate::format::iquant::KVALUES_IQ4NL;
use crate::format::{f16_at, u32_at, GgmlType};

/// How a block of one of the four types is read as bytes `u = value + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ByteBlock {
    /// f16 d, 16 bytes of nibbles (values 0–15 low, 16–31 high); value `q − 8`.
    Q4_0,
    /// Q4_0's layout; value `KVALUES_IQ4NL[q]`, looked up by `vpshufb` (+128).
    Iq4Nl,
    /// f16 d, 32 high bits, 16 bytes of nibbles; value `(q | h<<4) − 16`.
    Q5_0,
    /// f16 d, 32 int8 values; `u = value xor 0x80`.
    Q8_0,
}

impl ByteBlock {
    /// The byte form of `ty`, if it has one.
    pub(crate) fn of(ty: GgmlType) -> Option<ByteBlock> {
        match ty {
            GgmlType::Q4_0 => Some(ByteBlock::Q4_0),
            GgmlType::IQ4_NL => Some(ByteBlock::Iq4Nl),
            GgmlType::Q5_0 => Some(ByteBlock::Q5_0),
            GgmlType::Q8_0 => Some(ByteBlock::Q8_0),
            _ => None,
        }
    }

    /// The byte form of `ty` where rows of `cols` values take this path at `level`: AVX-512
    /// (with VNNI) and whole pairs of blocks. Elsewhere the block loop (`rows::small_q8`).
    pub(crate) fn at(level: Level, ty: GgmlType, cols: usize) -> Option<ByteBlock> {
        (level == Level::Avx512 && cols.is_multiple_of(64)).then(|| ByteBlock::of(ty)).flatten()
    }

    /// Bytes per 32-value block.
    const fn bytes(self) -> usize {
        match self {
            ByteBlock::Q4_0 | ByteBlock::Iq4Nl => 18,
            ByteBlock::Q5_0 => 22,
            ByteBlock::Q8_0 => 34,
        }
    }

    /// log₂ of what is added to each value to make it an unsigned byte.
    const fn offset_shift(self) -> u32 {
        match self {
            ByteBlock::Q4_0 => 3,
            ByteBlock::Q5_0 => 4,
            ByteBlock::Iq4Nl | ByteBlock::Q8_0 => 7,
        }
    }

    /// `u = value + offset` of value `v` (0–31) of the block `blk`.
    fn byte(self, blk: &[u8], v: usize) -> u8 {
        let nibble = |at: usize| if v < 16 { blk[at + v] & 15 } else { blk[at + v - 16] >> 4 };
        match self {
            ByteBlock::Q4_0 => nibble(2),
            ByteBlock::Iq4Nl => (KVALUES_IQ4NL[nibble(2) as usize] as i32 + 128) as u8,
            ByteBlock::Q5_0 => nibble(6) | (((u32_at(blk, 2) >> v) & 1) << 4) as u8,
            ByteBlock::Q8_0 => blk[2 + v] ^ 0x80,
        }
    }
}

/// Rows of type `kind` × Q8_0 activation rows rearranged in `bv` ([`ByValue::q8`], vectors
/// of one value): `out[r·t + i]`.
pub(crate) fn rows_q8(
    level: Level,
    kind: ByteBlock,
    rows: &[u8],
    row_bytes: usize,
    t: usize,
    bv: &ByValue,
    out: &mut [f32],
) {
    let ByValue::Q8 { padded, .. } = bv else { unreachable!("Q8_0 rows are rearranged as codes") };
    assert!(row_bytes.is_multiple_of(2 * kind.bytes()) && *padded == row_bytes / kind.bytes() * 32);
    super::rows::pairs_q8(rows, row_bytes, t, bv, out, |starts, xq, xs, dl| {
        if level == Level::Avx512 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Level::Avx512 only where the CPU has AVX-512 F/BW/VL/VNNI.
            unsafe {
                match kind {
                    ByteBlock::Q4_0 => rows2_avx512::<{ ByteBlock::Q4_0 as u8 }>(rows, starts, row_bytes, xq, xs, dl),
                    ByteBlock::Iq4Nl => rows2_avx512::<{ ByteBlock::Iq4Nl as u8 }>(rows, starts, row_bytes, xq, xs, dl),
                    ByteBlock::Q5_0 => rows2_avx512::<{ ByteBlock::Q5_0 as u8 }>(rows, starts, row_bytes, xq, xs, dl),
                    ByteBlock::Q8_0 => rows2_avx512::<{ ByteBlock::Q8_0 as u8 }>(rows, starts, row_bytes, xq, xs, dl),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("AVX-512 is x86-64 only")
        } else {
            starts.map(|s| row_portable(kind, &rows[s..s + row_bytes], xq, xs, dl))
        }
    });
}

/// One row of [`rows_q8`] in plain code (the reference for [`rows2_avx512`]).
fn row_portable(kind: ByteBlock, row: &[u8], xq: &[i8], xs: &[i32], dl: &[f32]) -> f32 {
    let bb = kind.bytes();
    let mut acc = [0f32; 16];
    for (k, pair) in row.chunks_exact(2 * bb).enumerate() {
        for (l, a) in acc.iter_mut().enumerate() {
            let blk = &pair[bb * (l / 8)..bb * (l / 8 + 1)];
            let mut sum = 0i32;
            for j in 0..4 {
                let v = 4 * (l % 8) + j;
                sum += kind.byte(blk, v) as i32 * xq[64 * k + 4 * l + j] as i32;
            }
            let lane = sum - (xs[16 * k + l] << kind.offset_shift());
            *a = (lane as f32).mul_add(f16_at(blk, 0) * dl[16 * k + l], *a);
        }
    }
    hsum16(&acc)
}

/// [`row_portable`] for the two rows at `starts` of `rows`, with AVX-512 VNNI; the activation
/// loads are shared. `KIND` is a [`ByteBlock`] as `u8` (one compiled loop per type).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows2_avx512<const KIND: u8>(
    rows: &[u8],
    starts: [usize; 2],
    row_bytes: usize,
    xq: &[i8],
    xs: &[i32],
    dl: &[f32],
) -> [f32; 2] {
    use std::arch::x86_64::*;
    let kind = [ByteBlock::Q4_0, ByteBlock::Iq4Nl, ByteBlock::Q5_0, ByteBlock::Q8_0][KIND as usize];
    let (bb, shift) = (kind.bytes(), kind.offset_shift());
    let cols = row_bytes / bb * 32;
    assert!(starts.iter().all(|&s| s + row_bytes <= rows.len()) && row_bytes.is_multiple_of(2 * bb));
    assert!(xq.len() >= cols && xs.len() >= cols / 4 && dl.len() >= cols / 4);
    // SAFETY: each pair of blocks reads, per block at b = start + 2·bb·k (+ bb), the f16 and
    // the 16 nibble bytes at b + 2 (Q4_0, IQ4_NL) or the high bits at b + 2 and the nibbles
    // at b + 6 (Q5_0) or 32 bytes at b + 2 (Q8_0): all inside the block, so inside the row
    // (start + row_bytes ≤ rows.len(), asserted); activation loads read 64 codes at
    // 64k + 64 ≤ cols ≤ xq.len(), and 16 lane sums and scales at 16k + 16 ≤ cols/4
    // (asserted); the IQ4_NL table is 16 bytes.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0F);
        let grid: [u8; 16] = std::array::from_fn(|q| (KVALUES_IQ4NL[q] as i32 + 128) as u8);
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(grid.as_ptr().cast()));
        let (sixteen, flip) = (_mm512_set1_epi8(16), _mm512_set1_epi8(-128));
        let mut acc = [_mm512_setzero_ps(); 2];
        for k in 0..row_bytes / (2 * bb) {
            let x = _mm512_loadu_si512(xq.as_ptr().add(64 * k).cast());
            let off =
                _mm512_sll_epi32(_mm512_loadu_si512(xs.as_ptr().add(16 * k).cast()), _mm_cvtsi32_si128(shift as i32));
            let dx = _mm512_loadu_ps(dl.as_ptr().add(16 * k));
            for p in 0..2 {
                let b0 = starts[p] + 2 * bb * k;
                let v = if kind == ByteBlock::Q8_0 {
                    let lo = _mm256_loadu_si256(rows.as_ptr().add(b0 + 2).cast());
                    let hi = _mm256_loadu_si256(rows.as_ptr().add(b0 + bb + 2).cast());
                    _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi), flip)
                } else {
                    let at = if kind == ByteBlock::Q5_0 { 6 } else { 2 };
                    let q0 = _mm_loadu_si128(rows.as_ptr().add(b0 + at).cast());
                    let q1 = _mm_loadu_si128(rows.as_ptr().add(b0 + bb + at).cast());
                    let v0 = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q0), _mm_srli_epi16::<4>(q0));
                    let v1 = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q1), _mm_srli_epi16::<4>(q1));
                    let v = _mm512_and_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1), m4);
                    match kind {
                        ByteBlock::Iq4Nl => _mm512_shuffle_epi8(table, v),
                        ByteBlock::Q5_0 => {
                            let high = u32_at(rows, b0 + 2) as u64 | (u32_at(rows, b0 + bb + 2) as u64) << 32;
                            _mm512_mask_add_epi8(v, high, v, sixteen)
                        }
                        _ => v,
                    }
                };
                let lane = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), v, x), off);
                let dw = _mm512_mask_blend_ps(
                    0xFF00,
                    _mm512_set1_ps(f16_at(rows, b0)),
                    _mm512_set1_ps(f16_at(rows, b0 + bb)),
                );
                acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lane), _mm512_mul_ps(dw, dx), acc[p]);
            }
        }
        let mut l = [[0f32; 16]; 2];
        _mm512_storeu_ps(l[0].as_mut_ptr(), acc[0]);
        _mm512_storeu_ps(l[1].as_mut_ptr(), acc[1]);
        [hsum16(&l[0]), hsum16(&l[1])]
    }
}

#[cfg(test)]
mod tests {
    use super::super::acts::{assert_dot, q8_values, random_blocks, random_q8_rows};
    use super::super::{PackedMatrix, WeightBytes};
    use super::*;
    use crate::format::storage::StorageType;
    use rand::SeedableRng;

    /// Each type's byte path: the portable loop equals the decoded rows dotted with the
    /// activations' Q8_0 values up to f32 summation, and the AVX-512 kernel (where the CPU
    /// has it) gives the portable loop's bits; rows of odd count (the last pair repeats a
    /// row).
    #[test]
    fn byte_blocks_match_decoding_and_the_portable_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for ty in [GgmlType::Q4_0, GgmlType::IQ4_NL, GgmlType::Q5_0, GgmlType::Q8_0] {
            let kind = ByteBlock::of(ty).unwrap();
            for (rows, cols) in [(5, 576), (4, 64), (3, 1536)] {
                let rb = cols / 32 * kind.bytes();
                let bytes = random_blocks(rows * rb, kind.bytes(), &mut rng);
                let dense =
                    PackedMatrix::new(StorageType::Ggml(ty), WeightBytes::owned(bytes.clone()), None, rows, cols)
                        .unwrap()
                        .to_dense();
                let acts = random_q8_rows(cols, 3, &mut rng);
                let bv = ByValue::q8(&acts, 1);
                let mut portable = vec![0f32; rows * 3];
                rows_q8(Level::Portable, kind, &bytes, rb, 3, &bv, &mut portable);
                for (r, got) in dense.chunks_exact(cols).zip(portable.chunks_exact(3)) {
                    for (a, &got) in acts.iter().zip(got) {
                        assert_dot(got, r, &q8_values(a), 0.0, &format!("{ty:?} {cols}"));
                    }
                }
                for level in Level::supported().into_iter().filter(|&l| ByteBlock::at(l, ty, cols).is_some()) {
                    let mut out = vec![0f32; rows * 3];
                    rows_q8(level, kind, &bytes, rb, 3, &bv, &mut out);
                    assert!(out == portable, "{ty:?} {cols} {level:?}: differs from the portable loop");
                }
            }
        }
        assert_eq!(ByteBlock::at(Level::Avx512, GgmlType::Q4_0, 32), None);
        assert_eq!(ByteBlock::of(GgmlType::Q4_1), None);
    }
}
