//! IQ2_XS rows × Q8_K activation rows (llama.cpp numerics) dotted as bytes at AVX-512:
//! per 64 values, one gather of the 8 grid points (8 unsigned bytes each, from
//! [`IQ2XS_GRID`]), the 64 sign bits applied to the activation codes (a masked negate),
//! one `vpdpbusd`, and the lanes' sums times their 16-value sub-block scales (`2·s + 1`),
//! all exact in i32 over the super-block; then `acc += Σ · (d_x · d_w/8)` per lane, summed
//! in [`hsum16`]'s order.
//!
//! Why: the block loop (`rows::super_q8k`) unpacks each 8-value grid point to i16 with one
//! 128-bit multiply and a masked negate (32 per super-block), and ran IQ2_XS at 4.8
//! weights/ns against 11–19 for the 32-value types' byte path on an Intel Xeon (kernel
//! bench, 576×1536): smollm2's IQ2_XS file spent 21 % of its generation in the 29 IQ2_XS
//! matrices, 8 % of its bytes.
//!
//! Contract: the same value as decoding the row and dotting with the Q8_K values, up to f32
//! summation order; the AVX-512 kernel gives its portable loop's bits (tested). Other
//! instruction-set levels keep the block loop.

use super::acts::QuantRow;
use super::isa::Level;
use super::rows::hsum16;
use crate::format::iquant_grids::{IQ2XS_GRID, KSIGNS_IQ2XS};
use crate::format::{f16_at, u16_at};

/// Bytes per 256-value IQ2_XS super-block.
const BYTES: usize = 74;

/// Whether IQ2_XS rows of `cols` values take this path at `level` (AVX-512 with VNNI;
/// every IQ2_XS row is whole super-blocks).
pub(crate) fn used_at(level: Level) -> bool {
    level == Level::Avx512
}

/// The activation rows' Q8_K codes as bytes (within ±127, as `QuantRow::quantize` makes
/// them), one run of `cols` per row: made once per product.
pub(crate) fn code_bytes(acts: &[QuantRow]) -> Vec<i8> {
    acts.iter().flat_map(|a| a.q.iter().map(|&q| q as i8)).collect()
}

/// IQ2_XS rows × the Q8_K rows `acts` (their codes as bytes in `xq`, [`code_bytes`]):
/// `out[r·t + i]`.
pub(crate) fn rows_q8k(level: Level, rows: &[u8], row_bytes: usize, acts: &[QuantRow], xq: &[i8], out: &mut [f32]) {
    let (t, cols) = (acts.len(), row_bytes / BYTES * 256);
    assert!(row_bytes.is_multiple_of(BYTES) && xq.len() == t * cols);
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        super::rows::prefetch_next(rows, r * row_bytes, row_bytes);
        for (i, a) in acts.iter().enumerate() {
            let x = &xq[i * cols..(i + 1) * cols];
            out[r * t + i] = if level == Level::Avx512 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Level::Avx512 only where the CPU has AVX-512 F/BW/VL/VNNI.
                unsafe {
                    row_avx512(row, x, &a.d)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("AVX-512 is x86-64 only")
            } else {
                row_portable(row, x, &a.d)
            };
        }
    }
}

/// The 64 sign bits of steps `p` (values 64p…64p+63) of the super-block `b`.
#[inline(always)]
fn signs(b: &[u8], p: usize) -> u64 {
    let mut m = 0u64;
    for j in 0..8 {
        m |= (KSIGNS_IQ2XS[(u16_at(b, 2 + 16 * p + 2 * j) >> 9) as usize] as u64) << (8 * j);
    }
    m
}

/// One row of [`rows_q8k`] in plain code (the reference for [`row_avx512`]).
fn row_portable(row: &[u8], xq: &[i8], d: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (k, b) in row.chunks_exact(BYTES).enumerate() {
        let mut isum = [0i32; 16];
        for p in 0..4 {
            let m = signs(b, p);
            for (l, s) in isum.iter_mut().enumerate() {
                let mut lane = 0i32;
                for j in 0..4 {
                    let v = 4 * l + j;
                    let point = IQ2XS_GRID[(u16_at(b, 2 + 16 * p + 2 * (v / 8)) & 511) as usize];
                    let g = (point >> (8 * (v % 8))) as u8 as i32;
                    let x = xq[256 * k + 64 * p + v] as i32;
                    lane += g * if (m >> v) & 1 == 1 { -x } else { x };
                }
                let sc = (u16_at(b, 66 + 2 * p) >> (4 * (l / 4))) & 15;
                *s += lane * (2 * sc as i32 + 1);
            }
        }
        let scale = d[k] * (f16_at(b, 0) * 0.125);
        for (a, s) in acc.iter_mut().zip(isum) {
            *a = (s as f32).mul_add(scale, *a);
        }
    }
    hsum16(&acc)
}

/// [`row_portable`] with AVX-512 VNNI.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_avx512(row: &[u8], xq: &[i8], d: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / BYTES;
    assert!(row.len() == n * BYTES && xq.len() >= 256 * n && d.len() >= n);
    // SAFETY: per super-block k and step p, the 8 codes are 16 bytes at 74k + 2 + 16p ≤
    // 74k + 50 (inside the block, so the row); the gather reads IQ2XS_GRID at indices
    // masked to 0…511 (its length); activation loads read 64 codes at 256k + 64p + 64 ≤
    // 256n ≤ xq.len() (asserted).
    unsafe {
        let shifts = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
        let (m511, m15, one) = (_mm_set1_epi16(511), _mm512_set1_epi32(15), _mm512_set1_epi32(1));
        let mut acc = _mm512_setzero_ps();
        for k in 0..n {
            let b = &row[BYTES * k..BYTES * (k + 1)];
            let mut isum = _mm512_setzero_si512();
            for p in 0..4 {
                let codes = _mm_and_si128(_mm_loadu_si128(b.as_ptr().add(2 + 16 * p).cast()), m511);
                let grid = _mm512_i64gather_epi64::<8>(_mm512_cvtepu16_epi64(codes), IQ2XS_GRID.as_ptr().cast());
                let x = _mm512_loadu_si512(xq.as_ptr().add(256 * k + 64 * p).cast());
                let x = _mm512_mask_sub_epi8(x, signs(b, p), _mm512_setzero_si512(), x);
                let lane = _mm512_dpbusd_epi32(_mm512_setzero_si512(), grid, x);
                let sc =
                    _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(u16_at(b, 66 + 2 * p) as i32), shifts), m15);
                let sc = _mm512_or_si512(_mm512_slli_epi32::<1>(sc), one);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(lane, sc));
            }
            let scale = d[k] * (f16_at(b, 0) * 0.125);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(scale), acc);
        }
        let mut l = [0f32; 16];
        _mm512_storeu_ps(l.as_mut_ptr(), acc);
        hsum16(&l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::storage::StorageType;
    use crate::format::GgmlType;
    use rand::{Rng, SeedableRng};

    /// The portable loop equals the decoded rows dotted with the activations' Q8_K values up
    /// to f32 summation, and the AVX-512 kernel (where the CPU has it) gives its bits.
    #[test]
    fn iq2_xs_bytes_match_decoding_and_the_portable_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for (rows, cols) in [(3, 256), (4, 1536)] {
            let rb = cols / 256 * BYTES;
            let mut bytes: Vec<u8> = (0..rows * rb).map(|_| rng.random()).collect();
            for b in bytes.chunks_exact_mut(BYTES) {
                b[..2].copy_from_slice(&half::f16::from_f32(rng.random::<f32>() * 0.1 - 0.05).to_le_bytes());
            }
            let st = StorageType::Ggml(GgmlType::IQ2_XS);
            let dense =
                super::super::PackedMatrix::new(st, super::super::WeightBytes::owned(bytes.clone()), None, rows, cols)
                    .unwrap()
                    .to_dense();
            let acts: Vec<QuantRow> = (0..3)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
                    let mut q = QuantRow::default();
                    q.quantize(&x, GgmlType::Q8_K);
                    q
                })
                .collect();
            let xq = code_bytes(&acts);
            let mut portable = vec![0f32; rows * 3];
            rows_q8k(Level::Portable, &bytes, rb, &acts, &xq, &mut portable);
            for (r, got) in dense.chunks_exact(cols).zip(portable.chunks_exact(3)) {
                for (a, got) in acts.iter().zip(got) {
                    let x: Vec<f64> = a.q.iter().enumerate().map(|(i, &q)| q as f64 * a.d[i / 256] as f64).collect();
                    let want: f64 = r.iter().zip(&x).map(|(&w, &x)| w as f64 * x).sum();
                    let abs: f64 = r.iter().zip(&x).map(|(&w, &x)| (w as f64 * x).abs()).sum();
                    assert!((*got as f64 - want).abs() <= 1e-5 * abs + 1e-6, "{cols}: {got} vs {want}");
                }
            }
            for level in Level::supported().into_iter().filter(|&l| used_at(l)) {
                let mut out = vec![0f32; rows * 3];
                rows_q8k(level, &bytes, rb, &acts, &xq, &mut out);
                assert!(out == portable, "{cols} {level:?}: differs from the portable loop");
            }
        }
    }
}
