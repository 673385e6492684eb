//! Learned-codebook (VQ) matrices times a few activation rows by table lookup (AQLM's CPU
//! scheme): for each activation row, the dot product of each of its `dim`-value
//! sub-vectors with every codebook entry is tabulated once per matrix; a stored row's dot
//! product is then one lookup per code (two with a residual codebook) — on AVX-512, 16
//! codes per `vpgatherdd` — times the row's scale, plus the outlier columns' corrections.
//!
//! Why: decoding every row to f32 and dotting it costs a codebook copy, an add and a
//! multiply per weight; generation from a vq4x256+128 file ran at 23 tokens/s on smollm2
//! that way (llama.cpp's IQ2_XS file of the same size: 182). The same lookups in scalar
//! code were no faster than decoding (21 t/s); the gathers are what pays.
//!
//! Numerics (exact): row value = `scale·Σᵢ (T[i][cᵢ] + U[i][c2ᵢ])`, summed in 16 lanes
//! (sub-vector i in lane i mod 16, in increasing i), then the lanes in a fixed tree; each
//! table entry is its `dim` products added in order. Outlier columns then add
//! `(o − scale·(C + R)[col])·x[col]` in column order. Equal to decoding and dotting up to
//! f32 summation order (`kernels::tests` against the f64 reference); the portable loop and
//! the AVX-512 kernel compute the same sums in the same order, so every level gives the
//! same bits (tested below).

use super::acts::ExactRow;
use super::isa::Level;
use super::rows::hsum16;
use crate::format::f16_at;
use crate::format::native::read_bits;
use crate::format::vq::{Codebook, VqFormat};

/// Whether tables pay for a matrix of `rows` stored rows of `f`: building them costs about
/// `K + K2` multiply-adds per activation value, decoding a row about a few operations per
/// weight, so from a few dozen rows on; codebooks of at most 1024 entries (tables in L2).
pub(crate) fn worth_it(f: &VqFormat, rows: usize) -> bool {
    f.entries() + f.residual_entries() <= 1024 && rows >= 64
}

/// The codebook transposed: `[value j][entry]`, main then residual entries.
pub(crate) fn transposed(f: &VqFormat, book: &Codebook) -> Vec<f32> {
    let (dim, kk) = (f.dim, f.entries() + f.residual_entries());
    let mut t = vec![0f32; dim * kk];
    for (e, v) in book.entries.chunks_exact(dim).enumerate() {
        for (j, &x) in v.iter().enumerate() {
            t[j * kk + e] = x;
        }
    }
    t
}

/// One activation row's tables: `[sub-vector i][entry]`, `T[i][e] = Σ_j x[i·dim + j]·C[e][j]`
/// added in order of j.
pub(crate) fn tables(level: Level, f: &VqFormat, book_t: &[f32], x: &ExactRow) -> Vec<f32> {
    #[inline(always)]
    fn body(dim: usize, kk: usize, book_t: &[f32], x: &[f32], t: &mut [f32]) {
        for (xi, ti) in x.chunks_exact(dim).zip(t.chunks_exact_mut(kk)) {
            for (j, &xj) in xi.iter().enumerate() {
                let col = &book_t[j * kk..(j + 1) * kk];
                for (v, &c) in ti.iter_mut().zip(col) {
                    *v += xj * c;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    fn v4(dim: usize, kk: usize, book_t: &[f32], x: &[f32], t: &mut [f32]) {
        body(dim, kk, book_t, x, t)
    }
    let (dim, kk) = (f.dim, f.entries() + f.residual_entries());
    let mut t = vec![0f32; x.x.len() / dim * kk];
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: `Level::Avx512` is reported only where the CPU has these features.
        unsafe { v4(dim, kk, book_t, &x.x, &mut t) };
        return t;
    }
    let _ = level;
    body(dim, kk, book_t, &x.x, &mut t);
    t
}

/// Stored rows (`row_bytes` each) × the activation rows `xs` whose tables are `tabs`:
/// `out[r·t + i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    level: Level,
    f: &VqFormat,
    book: &Codebook,
    rows: &[u8],
    row_bytes: usize,
    xs: &[ExactRow],
    tabs: &[Vec<f32>],
    out: &mut [f32],
) {
    let t = xs.len();
    let cols = xs.first().map_or(0, |x| x.x.len());
    let n = cols / f.dim;
    let outl = f.outliers as usize;
    for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)) {
        let scale = f16_at(row, 0);
        let codes = &row[2..row.len() - 2 * outl];
        for ((x, tab), o) in xs.iter().zip(tabs).zip(o.iter_mut()) {
            let lanes = lookup(level, f, codes, n, tab);
            *o = hsum16(&lanes) * scale + outlier_terms(f, book, row, n, |col| x.x[col]);
        }
    }
}

/// What a stored row's outlier columns add to its dot product with `x` (`x_at(col)`):
/// `Σ (o − scale·(C + R)[col])·x[col]` in column order, the stored value replacing what
/// the codes give there.
pub(super) fn outlier_terms(f: &VqFormat, book: &Codebook, row: &[u8], n: usize, x_at: impl Fn(usize) -> f32) -> f32 {
    let outl = f.outliers as usize;
    let (scale, codes) = (f16_at(row, 0), &row[2..row.len() - 2 * outl]);
    let mut sum = 0f32;
    for (j, &col) in book.outlier_columns.iter().enumerate() {
        let w = codebook_value(f, book, codes, n, col);
        let ov = f16_at(&row[row.len() - 2 * outl + 2 * j..], 0);
        sum += (ov - w * scale) * x_at(col);
    }
    sum
}

/// `C[c][j] + R[c2][j]` at column `col` (what decoding gives there before the scale).
fn codebook_value(f: &VqFormat, book: &Codebook, codes: &[u8], n: usize, col: usize) -> f32 {
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let (i, j) = (col / dim, col % dim);
    let c = read_bits(codes, i * bits, bits) as usize;
    let mut w = book.entries[c * dim + j];
    if rbits > 0 {
        let c2 = read_bits(codes, n * bits + i * rbits, rbits) as usize;
        w += book.entries[(f.entries() + c2) * dim + j];
    }
    w
}

/// The 16 lane sums `Σ_{i ≡ l mod 16} T[i][cᵢ] + U[i][c2ᵢ]` of one stored row.
fn lookup(level: Level, f: &VqFormat, codes: &[u8], n: usize, tab: &[f32]) -> [f32; 16] {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: `Level::Avx512` is reported only where the CPU has AVX-512 F/BW/VL.
        return unsafe { lookup_avx512(f, codes, n, tab) };
    }
    let _ = level;
    let mut lanes = [0f32; 16];
    for i in 0..n {
        lanes[i % 16] += entry(f, codes, n, tab, i);
    }
    lanes
}

/// `T[i][cᵢ] + U[i][c2ᵢ]` for one sub-vector.
#[inline(always)]
fn entry(f: &VqFormat, codes: &[u8], n: usize, tab: &[f32], i: usize) -> f32 {
    let (bits, rbits, k) = (f.bits as usize, f.residual_bits as usize, f.entries());
    let kk = k + f.residual_entries();
    let c = read_bits(codes, i * bits, bits) as usize;
    let v = tab[i * kk + c];
    if rbits > 0 {
        let c2 = read_bits(codes, n * bits + i * rbits, rbits) as usize;
        v + tab[i * kk + k + c2]
    } else {
        v
    }
}

/// [`lookup`] with gathers: 16 sub-vectors at a time while their codes' 4-byte words lie
/// inside `codes`, the rest one by one (in the same lanes and order).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn lookup_avx512(f: &VqFormat, codes: &[u8], n: usize, tab: &[f32]) -> [f32; 16] {
    use std::arch::x86_64::*;
    let (bits, rbits, k) = (f.bits as usize, f.residual_bits as usize, f.entries());
    let kk = k + f.residual_entries();
    assert!(tab.len() >= n * kk && bits <= 16 && rbits <= 16);
    // Sub-vector blocks [i0, i0 + 16) whose last code words (4 bytes from the byte holding
    // the code's first bit) end inside `codes`.
    let fits = |i0: usize| {
        let last_main = ((i0 + 15) * bits) / 8 + 4;
        let last_res = if rbits > 0 { (n * bits + (i0 + 15) * rbits) / 8 + 4 } else { 0 };
        i0 + 16 <= n && last_main.max(last_res) <= codes.len()
    };
    let mut lanes = [0f32; 16];
    // SAFETY: gathers read 4-byte words at byte offsets ≤ (i0+15)·bits/8 (and the residual
    // ones) whose words end inside `codes` (`fits`); the shuffled path loads 16 bytes at
    // `start` only where start + 16 ≤ codes.len(); table entries are read at
    // i·kk + code < n·kk ≤ tab.len() (codes < 2^bits = K, residual codes < K2, asserted
    // length); `lanes` is 16 f32.
    unsafe {
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut acc = _mm512_setzero_ps();
        let cp = codes.as_ptr() as *const i32;
        let tp = tab.as_ptr();
        let code = |first_bit: __m512i, nbits: usize| {
            let byte = _mm512_srli_epi32(first_bit, 3);
            let shift = _mm512_and_si512(first_bit, _mm512_set1_epi32(7));
            let word = _mm512_i32gather_epi32::<1>(byte, cp);
            _mm512_and_si512(_mm512_srlv_epi32(word, shift), _mm512_set1_epi32((1i32 << nbits) - 1))
        };
        // Residual codes of ≤ 8 bits starting on a byte: a block's 16 codes lie in 16
        // bytes at a known bit offset each, so one byte shuffle (the bytes broadcast to
        // every 128-bit lane; control bytes past the 16th zero) and a shift per lane
        // replace the gather of their words.
        let shuffled = rbits > 0 && rbits <= 8 && (n * bits).is_multiple_of(8);
        let (mut ctl, mut sh) = ([0u8; 64], [0i32; 16]);
        for l in 0..16 {
            let bit = l * rbits;
            sh[l] = (bit % 8) as i32;
            for j in 0..4 {
                ctl[4 * l + j] = if bit / 8 + j < 16 { (bit / 8 + j) as u8 } else { 0x80 };
            }
        }
        let (ctl, sh) = (_mm512_loadu_si512(ctl.as_ptr().cast()), _mm512_loadu_si512(sh.as_ptr().cast()));
        let rmask = _mm512_set1_epi32(((1u32 << rbits.max(1)) - 1) as i32);
        let mut i0 = 0;
        while fits(i0) {
            let i = _mm512_add_epi32(lane, _mm512_set1_epi32(i0 as i32));
            let base = _mm512_mullo_epi32(i, _mm512_set1_epi32(kk as i32));
            let c = if bits == 8 {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.as_ptr().add(i0).cast()))
            } else {
                code(_mm512_mullo_epi32(i, _mm512_set1_epi32(bits as i32)), bits)
            };
            let mut v = _mm512_i32gather_ps::<4>(_mm512_add_epi32(base, c), tp);
            if rbits > 0 {
                let first = _mm512_add_epi32(
                    _mm512_set1_epi32((n * bits) as i32),
                    _mm512_mullo_epi32(i, _mm512_set1_epi32(rbits as i32)),
                );
                let start = (n * bits + i0 * rbits) / 8;
                let raw = if shuffled && start + 16 <= codes.len() {
                    let src = _mm512_broadcast_i32x4(_mm_loadu_si128(codes.as_ptr().add(start).cast()));
                    _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(src, ctl), sh), rmask)
                } else {
                    code(first, rbits)
                };
                let c2 = _mm512_add_epi32(raw, _mm512_set1_epi32(k as i32));
                v = _mm512_add_ps(v, _mm512_i32gather_ps::<4>(_mm512_add_epi32(base, c2), tp));
            }
            acc = _mm512_add_ps(acc, v);
            i0 += 16;
        }
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        for i in i0..n {
            lanes[i % 16] += entry(f, codes, n, tab, i);
        }
    }
    lanes
}

/// `count` random stored rows of `cols` values of `f` for the VQ kernel tests: random
/// codes, row scale 0.7, random outlier values; returns the bytes and the row length.
#[cfg(test)]
pub(super) fn random_rows(f: &VqFormat, cols: usize, count: usize, rng: &mut impl rand::Rng) -> (Vec<u8>, usize) {
    let rb = f.row_bytes(cols).expect("a whole number of vectors");
    let mut bytes: Vec<u8> = (0..count * rb).map(|_| rng.random()).collect();
    for r in bytes.chunks_exact_mut(rb) {
        r[..2].copy_from_slice(&half::f16::from_f32(0.7).to_le_bytes());
        let n = r.len();
        for o in r[n - 2 * f.outliers as usize..].chunks_exact_mut(2) {
            o.copy_from_slice(&half::f16::from_f32(rng.random::<f32>()).to_le_bytes());
        }
    }
    (bytes, rb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_level_gives_the_same_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for name in ["vq4x256", "vq4x256+128o2", "vq8x256+256", "vq2x64+16o3", "vq4x1024"] {
            let f = VqFormat::from_name(name).unwrap_or_else(|| panic!("{name}"));
            let cols = 88 * f.dim; // 5½ blocks of 16 sub-vectors
            let kk = f.entries() + f.residual_entries();
            let book = Codebook {
                entries: (0..kk * f.dim).map(|_| rng.random::<f32>() - 0.5).collect(),
                outlier_columns: (0..f.outliers as usize).map(|j| 5 + 7 * j).collect(),
            };
            let (bytes, rb) = random_rows(&f, cols, 5, &mut rng);
            let mut x = ExactRow::default();
            x.set(&(0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<_>>());
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                let tab = tables(level, &f, &transposed(&f, &book), &x);
                let mut out = vec![0f32; 5];
                rows(level, &f, &book, &bytes, rb, std::slice::from_ref(&x), &[tab], &mut out);
                // Against decoding in f64.
                for (r, got) in bytes.chunks_exact(rb).zip(&out) {
                    let mut w = vec![0f32; cols];
                    f.decode_row(&book, r, &mut w);
                    let want: f64 = w.iter().zip(&x.x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let abs: f64 = w.iter().zip(&x.x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    assert!((*got as f64 - want).abs() <= 1e-5 * abs + 1e-6, "{name} {level:?}: {got} vs {want}");
                }
                match &first {
                    None => first = Some(out),
                    Some(fst) => assert!(fst == &out, "{name} {level:?}: differs from the portable loop"),
                }
            }
        }
    }
}
