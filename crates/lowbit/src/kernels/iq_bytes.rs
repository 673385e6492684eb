//! The grid i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) × Q8_K activation rows
//! (llama.cpp numerics) dotted as bytes at AVX-512: per 64 values, one gather of the grid
//! points (8 of 8 bytes, or 16 of 4; their magnitudes are unsigned bytes), the 64 sign bits
//! applied to the activation codes (a masked negate), one `vpdpbusd`, and each lane of 4
//! values times its sub-block scale (`2·s + 1`), exact in i32 over the super-block; then
//! `acc += Σ · (d_x · d_w)` per lane once per super-block, summed in [`hsum16`]'s order.
//! [`GridBlock`] says where each type keeps its grid indices, signs and scales.
//!
//! Why: the block loop (`rows::super_q8k`) unpacks each 8-value grid point to i16 with one
//! 128-bit multiply and a masked negate (32 per super-block), and ran IQ2_XS at 4.8
//! weights/ns against 11–19 for the 32-value types' byte path on an Intel Xeon (kernel
//! bench, 576×1536): smollm2's IQ2_XS file spent 21 % of its generation in the 29 IQ2_XS
//! matrices, 8 % of its bytes. This path, same bench: IQ2_XS 11.7–12.7 weights/ns, IQ2_XXS
//! 10.1–11.2 (6.3–6.5 before), IQ2_S 14.1–14.4 (6.5), IQ3_XXS 10.4–11.2 (5.0), IQ3_S
//! 12.1–12.3 (4.3).
//!
//! Contract: the same value as decoding the row and dotting with the Q8_K values, up to f32
//! summation order; the AVX-512 kernel gives the bits of the portable loop (which sums the
//! type's unpacked form, `blocks.rs`, in the same lanes; tested for every type). Other
//! instruction-set levels keep the block loop.

use super::acts::QuantRow;
use super::aligned::Aligned;
use super::blocks::{BIq2S, BIq2Xs, BIq2Xxs, BIq3S, BIq3Xxs, Super, SuperBlock};
use super::isa::Level;
use super::rows::hsum16;
use super::simd::Scalar;
use crate::format::iquant_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use crate::format::{f16_at, u16_at, u32_at, GgmlType};

/// Where a grid i-quant's super-block keeps, for step `p` (values 64p…64p+63, sub-blocks
/// 2p and 2p+1), its grid indices, sign bits and 16-value scales — read as `unpack` in
/// `blocks.rs` reads them (ggml-quants.c's `dequantize_row_iq*`).
pub(crate) trait GridBlock: SuperBlock {
    /// Grid points of 8 values (u64 entries; else 4 values, u32 entries).
    const WIDE: bool;
    /// The grid table.
    fn table() -> *const u8;
    /// What the super-block's f16 is multiplied by (the unpacked form's `d`).
    fn d(b: &[u8]) -> f32;
    /// Step `p`'s grid indices: 8 (wide) or 16.
    fn indices(b: &[u8], p: usize) -> [i32; 16];
    /// Step `p`'s 64 sign bits (bit v: value 64p + v is negative).
    ///
    /// # Safety
    /// The CPU must have BMI2 (the `KSIGNS` types spread their fields with `pdep`).
    unsafe fn signs(b: &[u8], p: usize) -> u64;
    /// Step `p`'s four 16-value scale nibbles `s` (the scale is `2s + 1`), 4 bits each.
    fn nibbles(b: &[u8], p: usize) -> u32;
}

/// The 8 sign bytes of two sub-blocks whose u32 `words` each hold four 7-bit indices into
/// `KSIGNS_IQ2XS` (bits 0–27), computed as the table is made: the 7 bits plus their parity
/// as bit 7 (8 table lookups per step held IQ2_XXS at 6.3–6.5 weights/ns; spreading the
/// fields with shifts and masks, 7.8–8.1; with `pdep`, see the README).
///
/// # Safety
/// The CPU must have BMI2.
#[inline(always)]
unsafe fn ksigns(words: [u32; 2]) -> u64 {
    // Spelled out, no closure: a closure here is not inlined into the kernel and loses its
    // target features.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract (BMI2).
    let (w0, w1) = unsafe {
        use std::arch::x86_64::_pdep_u64;
        (_pdep_u64(words[0] as u64, 0x7F7F_7F7F), _pdep_u64(words[1] as u64, 0x7F7F_7F7F))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (w0, w1) = (spread(words[0]), spread(words[1]));
    with_parity(w0 | w1 << 32)
}

/// Four 7-bit fields of `w` (bits 0–27) into the low 7 bits of four bytes (what `pdep`
/// with mask 0x7F7F7F7F does).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn spread(w: u32) -> u64 {
    let w = w as u64;
    (w & 0x7F) | (w >> 7 & 0x7F) << 8 | (w >> 14 & 0x7F) << 16 | (w >> 21 & 0x7F) << 24
}

/// Eight 7-bit values (one per byte) with each byte's parity set as its bit 7: what
/// `KSIGNS_IQ2XS[v]` holds for every `v` (tested). Within a byte, `x ^ x>>4`, `>>2`, `>>1`
/// fold bits 0–7 into bit 0 without reading the next byte's bits into it.
#[inline(always)]
fn with_parity(x: u64) -> u64 {
    let mut p = x ^ (x >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    x | (p & 0x0101_0101_0101_0101) << 7
}

impl GridBlock for BIq2Xxs {
    const WIDE: bool = true;
    fn table() -> *const u8 {
        IQ2XXS_GRID.as_ptr().cast()
    }
    #[inline(always)]
    fn d(b: &[u8]) -> f32 {
        f16_at(b, 0) * 0.125
    }
    #[inline(always)]
    fn indices(b: &[u8], p: usize) -> [i32; 16] {
        let mut i = [0i32; 16];
        for h in 0..2 {
            for l in 0..4 {
                i[4 * h + l] = b[2 + 8 * (2 * p + h) + l] as i32;
            }
        }
        i
    }
    #[inline(always)]
    unsafe fn signs(b: &[u8], p: usize) -> u64 {
        // SAFETY: the caller's contract (BMI2).
        unsafe { ksigns([u32_at(b, 6 + 16 * p), u32_at(b, 14 + 16 * p)]) }
    }
    #[inline(always)]
    fn nibbles(b: &[u8], p: usize) -> u32 {
        per_32(u32_at(b, 6 + 16 * p) >> 28, u32_at(b, 14 + 16 * p) >> 28)
    }
}

/// [`GridBlock::nibbles`] of a type with one scale per 32 values: `s0` for the first two
/// 16-value sub-blocks, `s1` for the last two.
#[inline(always)]
fn per_32(s0: u32, s1: u32) -> u32 {
    s0 | s0 << 4 | s1 << 8 | s1 << 12
}

impl GridBlock for BIq2Xs {
    const WIDE: bool = true;
    fn table() -> *const u8 {
        IQ2XS_GRID.as_ptr().cast()
    }
    #[inline(always)]
    fn d(b: &[u8]) -> f32 {
        f16_at(b, 0) * 0.125
    }
    #[inline(always)]
    fn indices(b: &[u8], p: usize) -> [i32; 16] {
        std::array::from_fn(|j| if j < 8 { (u16_at(b, 2 + 16 * p + 2 * j) & 511) as i32 } else { 0 })
    }
    #[inline(always)]
    unsafe fn signs(b: &[u8], p: usize) -> u64 {
        // The 7-bit sign indices are the codes' top bits (code >> 9), four per u64.
        let bytes = |c: u64| {
            let s = (c >> 9) & 0x007F_007F_007F_007F;
            let s = (s | s >> 8) & 0x0000_FFFF_0000_FFFF;
            (s | s >> 16) & 0xFFFF_FFFF
        };
        let at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        with_parity(bytes(at(2 + 16 * p)) | bytes(at(10 + 16 * p)) << 32)
    }
    #[inline(always)]
    fn nibbles(b: &[u8], p: usize) -> u32 {
        u16_at(b, 66 + 2 * p) as u32
    }
}

impl GridBlock for BIq2S {
    const WIDE: bool = true;
    fn table() -> *const u8 {
        IQ2S_GRID.as_ptr().cast()
    }
    #[inline(always)]
    fn d(b: &[u8]) -> f32 {
        f16_at(b, 0) * 0.125
    }
    #[inline(always)]
    fn indices(b: &[u8], p: usize) -> [i32; 16] {
        let mut i = [0i32; 16];
        for h in 0..2 {
            let (ib, qh) = (2 * p + h, b[66 + 2 * p + h] as i32);
            for l in 0..4 {
                i[4 * h + l] = b[2 + 4 * ib + l] as i32 | ((qh << (8 - 2 * l)) & 0x300);
            }
        }
        i
    }
    #[inline(always)]
    unsafe fn signs(b: &[u8], p: usize) -> u64 {
        u64::from_le_bytes(b[34 + 8 * p..42 + 8 * p].try_into().expect("8 bytes"))
    }
    #[inline(always)]
    fn nibbles(b: &[u8], p: usize) -> u32 {
        u16_at(b, 74 + 2 * p) as u32
    }
}

impl GridBlock for BIq3Xxs {
    const WIDE: bool = false;
    fn table() -> *const u8 {
        IQ3XXS_GRID.as_ptr().cast()
    }
    #[inline(always)]
    fn d(b: &[u8]) -> f32 {
        f16_at(b, 0) * 0.25
    }
    #[inline(always)]
    fn indices(b: &[u8], p: usize) -> [i32; 16] {
        std::array::from_fn(|j| b[2 + 16 * p + j] as i32)
    }
    #[inline(always)]
    unsafe fn signs(b: &[u8], p: usize) -> u64 {
        // SAFETY: the caller's contract (BMI2).
        unsafe { ksigns([u32_at(b, 66 + 8 * p), u32_at(b, 70 + 8 * p)]) }
    }
    #[inline(always)]
    fn nibbles(b: &[u8], p: usize) -> u32 {
        per_32(u32_at(b, 66 + 8 * p) >> 28, u32_at(b, 70 + 8 * p) >> 28)
    }
}

impl GridBlock for BIq3S {
    const WIDE: bool = false;
    fn table() -> *const u8 {
        IQ3S_GRID.as_ptr().cast()
    }
    #[inline(always)]
    fn d(b: &[u8]) -> f32 {
        f16_at(b, 0)
    }
    #[inline(always)]
    fn indices(b: &[u8], p: usize) -> [i32; 16] {
        let mut i = [0i32; 16];
        for h in 0..2 {
            let (ib, qh) = (2 * p + h, b[66 + 2 * p + h] as i32);
            for l in 0..4 {
                i[8 * h + 2 * l] = b[2 + 8 * ib + 2 * l] as i32 | ((qh << (8 - 2 * l)) & 256);
                i[8 * h + 2 * l + 1] = b[2 + 8 * ib + 2 * l + 1] as i32 | ((qh << (7 - 2 * l)) & 256);
            }
        }
        i
    }
    #[inline(always)]
    unsafe fn signs(b: &[u8], p: usize) -> u64 {
        u64::from_le_bytes(b[74 + 8 * p..82 + 8 * p].try_into().expect("8 bytes"))
    }
    #[inline(always)]
    fn nibbles(b: &[u8], p: usize) -> u32 {
        per_32((b[106 + p] & 15) as u32, (b[106 + p] >> 4) as u32)
    }
}

/// The rows function of `ty` where rows of it take this path at `level` (AVX-512 with
/// VNNI; every such row is whole super-blocks): `(level, rows, row_bytes, acts, codes, out)`.
#[allow(clippy::type_complexity)]
pub(crate) fn at(level: Level, ty: GgmlType) -> Option<fn(Level, &[u8], usize, &[QuantRow], &[i8], &mut [f32])> {
    if level != Level::Avx512 {
        return None;
    }
    match ty {
        GgmlType::IQ2_XXS => Some(rows_q8k::<BIq2Xxs>),
        GgmlType::IQ2_XS => Some(rows_q8k::<BIq2Xs>),
        GgmlType::IQ2_S => Some(rows_q8k::<BIq2S>),
        GgmlType::IQ3_XXS => Some(rows_q8k::<BIq3Xxs>),
        GgmlType::IQ3_S => Some(rows_q8k::<BIq3S>),
        _ => None,
    }
}

/// The activation rows' Q8_K codes as bytes (within ±127, as `QuantRow::quantize` makes
/// them), one run of `cols` per row: made once per product.
pub(crate) fn code_bytes(acts: &[QuantRow]) -> Aligned<i8> {
    let mut xq = Aligned::zeroed(acts.iter().map(|a| a.q.len()).sum());
    for (x, &q) in xq.iter_mut().zip(acts.iter().flat_map(|a| &a.q)) {
        *x = q as i8;
    }
    xq
}

/// Rows of `K` × the Q8_K rows `acts` (their codes as bytes in `xq`, [`code_bytes`]):
/// `out[r·t + i]`.
pub(crate) fn rows_q8k<K: GridBlock>(
    level: Level,
    rows: &[u8],
    row_bytes: usize,
    acts: &[QuantRow],
    xq: &[i8],
    out: &mut [f32],
) {
    let (t, cols) = (acts.len(), row_bytes / K::BYTES * 256);
    assert!(row_bytes.is_multiple_of(K::BYTES) && xq.len() == t * cols);
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        super::rows::prefetch_next(rows, r * row_bytes, row_bytes);
        for (i, a) in acts.iter().enumerate() {
            let x = &xq[i * cols..(i + 1) * cols];
            out[r * t + i] = if level == Level::Avx512 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Level::Avx512 only where the CPU has AVX-512 F/BW/VL/VNNI and BMI2.
                unsafe {
                    row_avx512::<K>(row, x, &a.d)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("AVX-512 is x86-64 only")
            } else {
                row_portable::<K>(row, x, &a.d)
            };
        }
    }
}

/// One row of [`rows_q8k`] in plain code, from the type's unpacked form (`w` = grid value
/// × sign × sub-block scale): lane `l` of step `p` sums values 64p + 4l…64p + 4l + 3 — the
/// reference for [`row_avx512`].
fn row_portable<K: GridBlock>(row: &[u8], xq: &[i8], d: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut s = Super::default();
    for (k, b) in row.chunks_exact(K::BYTES).enumerate() {
        K::unpack::<Scalar>(b, &mut s);
        let mut isum = [0i32; 16];
        for p in 0..4 {
            for (l, sum) in isum.iter_mut().enumerate() {
                for j in 0..4 {
                    let v = 64 * p + 4 * l + j;
                    *sum += s.w[v] as i32 * xq[256 * k + v] as i32;
                }
            }
        }
        let scale = d[k] * s.d;
        for (a, sum) in acc.iter_mut().zip(isum) {
            *a = (sum as f32).mul_add(scale, *a);
        }
    }
    hsum16(&acc)
}

/// [`row_portable`] with AVX-512 VNNI.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI, and BMI2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,bmi2")]
unsafe fn row_avx512<K: GridBlock>(row: &[u8], xq: &[i8], d: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / K::BYTES;
    assert!(row.len() == n * K::BYTES && xq.len() >= 256 * n && d.len() >= n);
    // SAFETY: the gathers read K's grid table at the indices `K::indices` makes (each
    // masked to the table's length: 256/512/1024 u64 or 256/512 u32 entries, as the
    // block loop's table lookups index them); activation loads read 64 codes at
    // 256k + 64p + 64 ≤ 256n ≤ xq.len() (asserted).
    unsafe {
        let shifts = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
        let (m15, one) = (_mm512_set1_epi32(15), _mm512_set1_epi32(1));
        let mut acc = _mm512_setzero_ps();
        for k in 0..n {
            let b = &row[K::BYTES * k..K::BYTES * (k + 1)];
            let mut isum = _mm512_setzero_si512();
            for p in 0..4 {
                let idx = K::indices(b, p);
                let grid = if K::WIDE {
                    let i8x = _mm256_loadu_si256(idx.as_ptr().cast());
                    _mm512_i32gather_epi64::<8>(i8x, K::table().cast())
                } else {
                    _mm512_i32gather_epi32::<4>(_mm512_loadu_si512(idx.as_ptr().cast()), K::table().cast())
                };
                let x = _mm512_loadu_si512(xq.as_ptr().add(256 * k + 64 * p).cast());
                let x = _mm512_mask_sub_epi8(x, K::signs(b, p), _mm512_setzero_si512(), x);
                let lane = _mm512_dpbusd_epi32(_mm512_setzero_si512(), grid, x);
                let sc = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(K::nibbles(b, p) as i32), shifts), m15);
                let sc = _mm512_or_si512(_mm512_slli_epi32::<1>(sc), one);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(lane, sc));
            }
            let scale = d[k] * K::d(b);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(scale), acc);
        }
        let mut l = [0f32; 16];
        _mm512_storeu_ps(l.as_mut_ptr(), acc);
        hsum16(&l)
    }
}

#[cfg(test)]
mod tests {
    use super::super::acts::{assert_dot, quant_values, random_blocks, random_quant_rows};
    use super::super::{PackedMatrix, WeightBytes};
    use super::*;
    use crate::format::storage::StorageType;
    use rand::{Rng, SeedableRng};

    /// For every grid i-quant: the portable loop equals the decoded rows dotted with the
    /// activations' Q8_K values up to f32 summation, and the AVX-512 kernel (where the CPU
    /// has it) gives its bits — which checks each type's indices, signs and scales.
    #[test]
    fn grid_bytes_match_decoding_and_the_portable_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for ty in [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S] {
            let bytes_per = ty.type_size();
            for (rows, cols) in [(3, 256), (4, 1536)] {
                let rb = cols / 256 * bytes_per;
                let bytes = random_blocks(rows * rb, bytes_per, &mut rng);
                let dense =
                    PackedMatrix::new(StorageType::Ggml(ty), WeightBytes::owned(bytes.clone()), None, rows, cols)
                        .unwrap()
                        .to_dense();
                let acts = random_quant_rows(cols, 3, GgmlType::Q8_K, &mut rng);
                let xq = code_bytes(&acts);
                let run = at(Level::Avx512, ty).expect("a grid type");
                let mut portable = vec![0f32; rows * 3];
                run(Level::Portable, &bytes, rb, &acts, &xq, &mut portable);
                for (r, got) in dense.chunks_exact(cols).zip(portable.chunks_exact(3)) {
                    for (a, &got) in acts.iter().zip(got) {
                        assert_dot(got, r, &quant_values(a, 256), 0.0, &format!("{ty} {cols}"));
                    }
                }
                for level in Level::supported().into_iter().filter(|&l| at(l, ty).is_some()) {
                    let mut out = vec![0f32; rows * 3];
                    run(level, &bytes, rb, &acts, &xq, &mut out);
                    assert!(out == portable, "{ty} {cols} {level:?}: differs from the portable loop");
                }
            }
        }
        assert!(at(Level::Avx512, GgmlType::Q2_K).is_none());
    }

    /// `pdep` with mask 0x7F7F7F7F is the shift-and-mask spread (where the CPU has BMI2).
    #[test]
    fn pdep_spreads_like_the_shifts() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("bmi2") {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            for _ in 0..1000 {
                let w: u32 = rng.random();
                // SAFETY: BMI2 detected above.
                let got = unsafe { std::arch::x86_64::_pdep_u64(w as u64, 0x7F7F_7F7F) };
                assert_eq!(got, spread(w), "{w:#x}");
            }
        }
    }

    /// The parity form of the sign table, for every 7-bit index in every byte position.
    #[test]
    fn parity_gives_the_sign_table() {
        use crate::format::iquant_grids::KSIGNS_IQ2XS;
        for v in 0..128u64 {
            for j in 0..8 {
                let x = v << (8 * j) | (127 - v) << (8 * ((j + 1) % 8));
                let got = with_parity(x);
                assert_eq!((got >> (8 * j)) as u8, KSIGNS_IQ2XS[v as usize], "{v} at byte {j}");
            }
        }
    }
}
