//! Learned-codebook (VQ) rows × a few activation rows with the codebooks in
//! registers: for each value `j` of a vector, the codebook entries' j-th values (f16) are
//! byte tables — 64 entries per pair of AVX-512 registers, entry `e`'s two bytes at `2e`
//! — and one `vpermi2b` looks up 32 codes' values at once (each code's 16-bit lane asks
//! for bytes `2e` and `2e + 1`; 128 or 256 entries take two or four lookups and blends on
//! the code's bits 6 and 7); `vcvtph2ps` widens them to f32 exactly. The activations are
//! rearranged once per call so that lane `l` of value `j` meets `x[c·dim + j]` for its
//! code `c`.
//!
//! Why: the f32-table path ([`super::vq`]) gathers one table entry per code from tables of
//! `cols/dim × K` floats (221 KB for a 576-wide vq4x256+128 matrix: L2, not L1) and builds
//! those tables for every matrix and token; it generated at 0.24× llama.cpp's IQ2_XS on
//! smollm2. Here nothing is built per token but the rearranged activations, and no code
//! costs a memory access of its own. The stored f16 codebooks are used as they are (int8
//! codebooks on a shared grid, which integer kernels would need, cost 9 % more KLD on
//! smollm2 vq4x256+128: 0.2332 against 0.2144).
//!
//! Two numerics. In llama.cpp numerics ([`rows_q8`]) the activations are Q8_0 codes and
//! the tables hold the codebooks as int16 on one power-of-two grid: main plus residual is
//! one `vpaddw`, the dot product one `vpdpwssd` per 32 codes, exact in int32 (see there).
//!
//! Exact numerics ([`rows`]; the same bits at every instruction-set level): for each group of 32
//! vectors (the last padded with code 0 and zero activations), each value `j`, and each
//! half `h` of the group, lane `l` (vector `32g + 16h + l`) adds `x · (C[c][j] + R[c₂][j])`
//! — the entry sum as decoding forms it, then a product, then a sum: no fused multiply-add
//! — into accumulator `(j, h)`; then per `j` the two halves are added, the `j` sums in
//! order, the 16 lanes in [`hsum16`]'s tree, times the row's scale; outlier columns are
//! corrected after, as in [`super::vq`]. Equal to decoding and dotting up to f32
//! summation order (tested against the f64 reference in `kernels::tests`).

use std::sync::OnceLock;

use super::acts::{ExactRow, QuantRow};
use super::isa::Level;
use super::rows::{hsum16, prefetch_next};
use crate::format::f16_at;
use crate::format::native::read_bits;
use crate::format::vq::{Codebook, VqFormat};

/// Rows ahead whose bytes are prefetched (smollm2 vq4x256+128 tg128: 2 ahead 90 t/s, 4: 88,
/// 8: 85, 16: 79; none: 53).
const PREFETCH_ROWS: usize = 2;

/// Most values per vector a byte-table kernel runs (two accumulators per value).
const MAX_DIM: usize = 8;

/// A VQ matrix's codebooks as byte tables: per value `j`, `pairs × 128` bytes holding
/// entry `e`'s f16 bits at `2e` (zero past `K`), main codebook then residual.
pub(crate) struct ByteBook {
    /// `dim × main_pairs × 128` bytes.
    main: Vec<u8>,
    /// `dim × res_pairs × 128` bytes (empty without a residual codebook).
    residual: Vec<u8>,
    /// Register pairs per value of the main codebook (1, 2 or 4: up to 64, 128, 256 entries).
    main_pairs: usize,
    /// The same for the residual codebook (0 without one).
    res_pairs: usize,
    /// The main codebook as int16 on one power-of-two grid shared with the residual
    /// (`int16_scale`), laid out as `main` — the integer path's weights.
    main16: Vec<u8>,
    /// The residual codebook likewise (empty without one).
    residual16: Vec<u8>,
    /// The grid step: the smallest power of two with `max|C| + max|R| ≤ 32767·step`, so
    /// `C + R` never leaves int16. Entries at or above 1/32 of the largest are exact on
    /// it (f16 has 11 significant bits); smaller ones are within half a step.
    int16_scale: f32,
}

impl ByteBook {
    /// The byte tables of `book`, if this kernel runs `f` on rows of `cols` values:
    /// vectors of 2, 4 or 8 values, codes of at most 8 bits, and a code stream
    /// whose residual part starts on a byte (`cols/dim × bits` a multiple of 8).
    pub(crate) fn new(f: &VqFormat, book: &Codebook, cols: usize) -> Option<ByteBook> {
        let (dim, k, k2) = (f.dim, f.entries(), f.residual_entries());
        let n = cols / dim;
        if ![2, 4, MAX_DIM].contains(&dim)
            || f.bits > 8
            || f.residual_bits > 8
            || !(n * f.bits as usize).is_multiple_of(8)
        {
            return None;
        }
        let pairs = |entries: usize| entries.div_ceil(64).next_power_of_two();
        let table = |vals: &[f32], entries: usize, bytes: &dyn Fn(f32) -> [u8; 2]| {
            let p = pairs(entries);
            let mut t = vec![0u8; dim * p * 128];
            for (e, v) in vals.chunks_exact(dim).enumerate().take(entries) {
                for (j, &x) in v.iter().enumerate() {
                    t[j * p * 128 + 2 * e..j * p * 128 + 2 * e + 2].copy_from_slice(&bytes(x));
                }
            }
            t
        };
        let (main, res) = book.entries[..(k + k2) * dim].split_at(k * dim);
        let amax = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let span = amax(main) + amax(res);
        if !span.is_finite() {
            return None;
        }
        let int16_scale = if span > 0.0 { 2f32.powi((span / 32767.0).log2().ceil() as i32) } else { 1.0 };
        let int16_scale = if span > 32767.0 * int16_scale { 2.0 * int16_scale } else { int16_scale };
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let i16 = |x: f32| ((x / int16_scale).round() as i16).to_le_bytes();
        Some(ByteBook {
            main: table(main, k, &f16),
            residual: if k2 > 0 { table(res, k2, &f16) } else { Vec::new() },
            main_pairs: pairs(k),
            res_pairs: if k2 > 0 { pairs(k2) } else { 0 },
            main16: table(main, k, &i16),
            residual16: if k2 > 0 { table(res, k2, &i16) } else { Vec::new() },
            int16_scale,
        })
    }
}

impl ByteBook {
    /// The integer path's grid step (tests bound its error with it).
    #[cfg(test)]
    pub(crate) fn int16_step(&self) -> f32 {
        self.int16_scale
    }
}

/// Whether this CPU has AVX-512 VBMI (`vpermi2b`, `vpermb`, `vpmultishiftqb`).
fn vbmi() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512vbmi")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

thread_local! {
    /// Each worker thread's rearranged f32 activations (`dim` runs of `n` rounded up to
    /// 32 per activation row), or the integer path's block scales per pair of vectors.
    static XT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's rearranged Q8_0 codes (the integer path).
    static XQ: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Stored rows (`row_bytes` each) × the f32 activation rows `xs` (exact numerics):
/// `out[r·t + i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    level: Level,
    f: &VqFormat,
    book: &Codebook,
    bb: &ByteBook,
    rows: &[u8],
    row_bytes: usize,
    xs: &[ExactRow],
    out: &mut [f32],
) {
    let cols = xs.first().map_or(0, |x| x.x.len());
    let (dim, n) = (f.dim, cols / f.dim);
    let padded = n.div_ceil(32) * 32;
    let fast = level == Level::Avx512 && vbmi();
    XT.with(|xt| {
        let xt = &mut xt.borrow_mut();
        xt.clear();
        xt.resize(xs.len() * dim * padded, 0.0);
        for (x, xt) in xs.iter().zip(xt.chunks_exact_mut(dim * padded)) {
            by_value(&x.x, dim, padded, xt);
        }
        let sum = |codes: &[u8], i: usize| {
            let xt = &xt[i * dim * padded..(i + 1) * dim * padded];
            if fast {
                // SAFETY: `fast` only where the CPU has AVX-512 F/BW/VL/VNNI
                // (Level::Avx512) and VBMI (detected above).
                unsafe { sum_fast::<false>(f, bb, codes, n, Acts::F32(xt), padded) }
            } else {
                sum_portable(f, book, codes, n, xt, padded)
            }
        };
        each_row(f, book, rows, row_bytes, xs.len(), 1.0, sum, |i, col| xs[i].x[col], out);
    });
}

/// Stored rows × activation rows quantized to Q8_0 (llama.cpp numerics: VQ matrices take
/// the activations llama.cpp gives its 32-value block types), with the codebooks as int16
/// ([`ByteBook`]'s `int16_scale`): per group of 32 vectors, `vpdpwssd` of the looked-up
/// `C + R` with the codes, exact in int32, then one multiply-add by the blocks' scales.
/// Differs from decoding by the int16 grid only (at most half a step per weight, 2⁻¹⁶
/// of the codebooks' range; the Q8_0 rounding of the activations is ~250× that).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_q8(
    level: Level,
    f: &VqFormat,
    book: &Codebook,
    bb: &ByteBook,
    rows: &[u8],
    row_bytes: usize,
    acts: &[QuantRow],
    out: &mut [f32],
) {
    let cols = acts.first().map_or(0, |a| a.q.len());
    let (dim, n) = (f.dim, cols / f.dim);
    let padded = n.div_ceil(32) * 32;
    let fast = level == Level::Avx512 && vbmi();
    XQ.with(|xq| {
        XT.with(|dl| {
            let (xq, dl) = (&mut xq.borrow_mut(), &mut dl.borrow_mut());
            xq.clear();
            xq.resize(acts.len() * dim * padded, 0);
            dl.clear();
            dl.resize(acts.len() * padded / 2, 0.0);
            for ((a, xq), dl) in acts.iter().zip(xq.chunks_exact_mut(dim * padded)).zip(dl.chunks_exact_mut(padded / 2))
            {
                by_value(&a.q, dim, padded, xq);
                for (p, d) in dl.iter_mut().enumerate().take(n.div_ceil(2)) {
                    *d = a.d[2 * p * dim / 32];
                }
            }
            let sum = |codes: &[u8], i: usize| {
                let (xq, dl) =
                    (&xq[i * dim * padded..(i + 1) * dim * padded], &dl[i * padded / 2..(i + 1) * padded / 2]);
                if fast {
                    // SAFETY: as in `rows`.
                    unsafe { sum_fast::<true>(f, bb, codes, n, Acts::Q8 { x: xq, dl }, padded) }
                } else {
                    sum_q8_portable(f, bb, codes, n, xq, dl, padded)
                }
            };
            let x_at = |i: usize, col: usize| acts[i].q[col] as f32 * acts[i].d[col / 32];
            each_row(f, book, rows, row_bytes, acts.len(), bb.int16_scale, sum, x_at, out);
        })
    });
}

/// One activation row rearranged by value of a vector: `out[j·padded + c] = x[c·dim + j]`
/// (both numerics' kernels read value j of 32 vectors as one run).
fn by_value<T: Copy>(x: &[T], dim: usize, padded: usize, out: &mut [T]) {
    for (c, v) in x.chunks_exact(dim).enumerate() {
        for (j, &xv) in v.iter().enumerate() {
            out[j * padded + c] = xv;
        }
    }
}

/// [`sum_vbmi`] for the format's vector length (2, 4 or 8: what [`ByteBook::new`] admits).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[allow(unused_variables)]
unsafe fn sum_fast<const INT: bool>(
    f: &VqFormat,
    bb: &ByteBook,
    codes: &[u8],
    n: usize,
    acts: Acts<'_>,
    padded: usize,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY (each arm): the caller's contract.
    match f.dim {
        2 => unsafe { sum_vbmi::<2, INT>(f, bb, codes, n, acts, padded) },
        4 => unsafe { sum_vbmi::<4, INT>(f, bb, codes, n, acts, padded) },
        8 => unsafe { sum_vbmi::<8, INT>(f, bb, codes, n, acts, padded) },
        d => unreachable!("byte tables are made for 2-, 4- and 8-value vectors, not {d}"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the byte-table kernels are x86-64 only")
}

/// The row loop both numerics share: prefetch, `sum(codes, i) · unit · scale` for each
/// activation row `i`, then the outlier columns' corrections with the activation value
/// `x_at(i, col)`.
#[allow(clippy::too_many_arguments)]
fn each_row(
    f: &VqFormat,
    book: &Codebook,
    rows: &[u8],
    row_bytes: usize,
    t: usize,
    unit: f32,
    sum: impl Fn(&[u8], usize) -> f32,
    x_at: impl Fn(usize, usize) -> f32,
    out: &mut [f32],
) {
    let n = f.cols_of_row_bytes(row_bytes).unwrap_or(0) / f.dim;
    let outl = f.outliers as usize;
    for (r, (row, o)) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(t)).enumerate() {
        // The row PREFETCH_ROWS ahead (rows are short: one ahead arrives too late).
        prefetch_next(rows, (r + PREFETCH_ROWS - 1) * row_bytes, row_bytes);
        let scale = f16_at(row, 0);
        let codes = &row[2..row.len() - 2 * outl];
        for (i, o) in o.iter_mut().enumerate() {
            *o = sum(codes, i) * unit * scale + super::vq::outlier_terms(f, book, row, n, |col| x_at(i, col));
        }
    }
}

/// One row's `Σ d_b · Σ q·(C₁₆ + R₁₆)` (the integer path before its grid step and scale):
/// per group of 32 vectors the integer sum over values and pairs of vectors (exact), then
/// lane `l` (vectors 2l, 2l+1 of the group) adds it times their block's scale — the
/// reference for [`sum_vbmi`] with `INT`.
fn sum_q8_portable(f: &VqFormat, bb: &ByteBook, codes: &[u8], n: usize, xq: &[i16], dl: &[f32], padded: usize) -> f32 {
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let entry = |t: &[u8], pairs: usize, j: usize, e: usize| {
        let o = j * pairs * 128 + 2 * e;
        i16::from_le_bytes([t[o], t[o + 1]]) as i32
    };
    let mut acc = [0f32; 16];
    for c0 in (0..padded).step_by(32) {
        let mut sums = [0i32; 16];
        for i in 0..32 {
            let c = c0 + i;
            let (cm, cr) = if c < n {
                let cr = if rbits > 0 { read_bits(codes, n * bits + c * rbits, rbits) as usize } else { 0 };
                (read_bits(codes, c * bits, bits) as usize, cr)
            } else {
                (0, 0)
            };
            for j in 0..dim {
                let mut w = entry(&bb.main16, bb.main_pairs, j, cm);
                if rbits > 0 {
                    w += entry(&bb.residual16, bb.res_pairs, j, cr);
                }
                sums[i / 2] += w * xq[j * padded + c] as i32;
            }
        }
        for l in 0..16 {
            acc[l] += sums[l] as f32 * dl[c0 / 2 + l];
        }
    }
    hsum16(&acc)
}

/// One row's `Σ x·(C + R)` before its scale, in the order the module header states (the
/// reference for [`sum_vbmi`]).
fn sum_portable(f: &VqFormat, book: &Codebook, codes: &[u8], n: usize, xt: &[f32], padded: usize) -> f32 {
    let (dim, bits, rbits, k) = (f.dim, f.bits as usize, f.residual_bits as usize, f.entries());
    let e = &book.entries;
    let mut acc = [[[0f32; 16]; 2]; MAX_DIM];
    for c in 0..padded {
        let (cm, cr) = if c < n {
            let cr = if rbits > 0 { read_bits(codes, n * bits + c * rbits, rbits) as usize } else { 0 };
            (read_bits(codes, c * bits, bits) as usize, cr)
        } else {
            (0, 0)
        };
        let (h, l) = ((c / 16) % 2, c % 16);
        for j in 0..dim {
            let mut w = e[cm * dim + j];
            if rbits > 0 {
                w += e[(k + cr) * dim + j];
            }
            acc[j][h][l] += xt[j * padded + c] * w;
        }
    }
    let mut total = [0f32; 16];
    for (j, a) in acc.iter().take(dim).enumerate() {
        for l in 0..16 {
            let s = a[0][l] + a[1][l];
            total[l] = if j == 0 { s } else { total[l] + s };
        }
    }
    hsum16(&total)
}

/// For codes of `b` < 8 bits: group i of 8 codes is bytes [i·b, i·b + b) of 64 codes'
/// bytes, so `vpermb` by the first 64 bytes of `UNPACK[b]` copies bytes i·b… into qword
/// i, and `vpmultishiftqb` by the last 64 picks code t's b bits from bit t·b of the qword.
static UNPACK: [[u8; 128]; 9] = unpack_tables();

const fn unpack_tables() -> [[u8; 128]; 9] {
    let mut t = [[0u8; 128]; 9];
    let mut b = 1;
    while b <= 8 {
        let mut i = 0;
        while i < 8 {
            let mut k = 0;
            while k < 8 {
                let g = i * b + k;
                t[b][8 * i + k] = if g > 63 { 63 } else { g as u8 };
                t[b][64 + 8 * i + k] = (k * b) as u8;
                k += 1;
            }
            i += 1;
        }
        b += 1;
    }
    t
}

/// The activations of one row as a kernel reads them (rearranged by value `j`).
#[derive(Clone, Copy)]
enum Acts<'a> {
    /// f32 values (exact numerics).
    F32(&'a [f32]),
    /// Q8_0 codes and, per pair of vectors, their block's scale.
    Q8 { x: &'a [i16], dl: &'a [f32] },
}

/// [`sum_portable`] (`INT` = false) or [`sum_q8_portable`] (`INT` = true) with byte
/// permutes (AVX-512 VBMI; VNNI `vpdpwssd` for the integer path).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn sum_vbmi<const D: usize, const INT: bool>(
    f: &VqFormat,
    bb: &ByteBook,
    codes: &[u8],
    n: usize,
    acts: Acts<'_>,
    padded: usize,
) -> f32 {
    use std::arch::x86_64::*;
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let (xt, xq, dl) = match acts {
        Acts::F32(xt) => (xt, &[][..], &[][..]),
        Acts::Q8 { x, dl } => (&[][..], x, dl),
    };
    assert!(dim == D && bits <= 8 && rbits <= 8 && padded >= n && padded.is_multiple_of(32));
    if INT {
        assert!(xq.len() >= dim * padded && dl.len() >= padded / 2);
        assert!(bb.main16.len() == bb.main.len() && bb.residual16.len() == bb.residual.len());
    } else {
        assert!(xt.len() >= dim * padded);
    }
    assert!(bb.main.len() == dim * bb.main_pairs * 128 && bb.residual.len() == dim * bb.res_pairs * 128);
    assert!((rbits > 0) == (bb.res_pairs > 0) && [1, 2, 4].contains(&bb.main_pairs));
    assert!(codes.len() * 8 >= n * (bits + rbits) && (n * bits).is_multiple_of(8));
    // SAFETY: every load below is in bounds: `unpack` reads with a byte mask covering only
    // the chunk's code bytes, which lie inside `codes` (asserted length: n·(bits+rbits)
    // bits, the residual part starting on a byte); table loads read 64 bytes at
    // j·pairs·128 + 64·q < dim·pairs·128 = the table's length (asserted, the int16 tables
    // as long); activation loads read 32 values (f32 or i16) at j·padded + c, c + 32 ≤
    // padded, so inside dim·padded ≤ the slice's length (asserted), and 16 block scales
    // at c/2 + 16 ≤ padded/2 ≤ dl.len() (asserted).
    unsafe {
        let fields = |b: usize| {
            let t = &UNPACK[b];
            (_mm512_loadu_si512(t.as_ptr().cast()), _mm512_loadu_si512(t.as_ptr().add(64).cast()))
        };
        let (main_fields, res_fields) = (fields(bits), fields(rbits));
        // Unpacks `cnt` ≤ 64 codes of `b` bits starting at byte `start` of `codes` into
        // bytes; codes past `cnt` are 0.
        let unpack = |start: usize, b: usize, cnt: usize, (gather, shifts): (__m512i, __m512i)| -> __m512i {
            let nbytes = (cnt * b).div_ceil(8);
            let m: __mmask64 = if nbytes >= 64 { !0 } else { (1u64 << nbytes) - 1 };
            // A plain load where the 64 bytes lie inside `codes` (masked loads cost far
            // more on this path: measured), masked to the chunk's bytes.
            let raw = if start + 64 <= codes.len() {
                _mm512_maskz_mov_epi8(m, _mm512_loadu_si512(codes.as_ptr().add(start).cast()))
            } else {
                _mm512_maskz_loadu_epi8(m, codes.as_ptr().add(start).cast())
            };
            let keep: __mmask64 = if cnt >= 64 { !0 } else { (1u64 << cnt) - 1 };
            if b == 8 {
                return _mm512_maskz_mov_epi8(keep, raw);
            }
            let f = _mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(gather, raw));
            _mm512_and_si512(_mm512_maskz_mov_epi8(keep, f), _mm512_set1_epi8(((1u16 << b) - 1) as i8))
        };
        // 32 codes (bytes) → their 16-bit lanes' byte indices 2(c mod 64) | (2(c mod 64)+1)<<8,
        // and the masks of codes with bit 6 and with bit 7 set.
        let index = |c8: __m256i| -> (__m512i, __mmask32, __mmask32) {
            let c = _mm512_cvtepu8_epi16(c8);
            let low = _mm512_and_si512(c, _mm512_set1_epi16(63));
            let idx = _mm512_add_epi16(_mm512_mullo_epi16(low, _mm512_set1_epi16(514)), _mm512_set1_epi16(256));
            (idx, _mm512_test_epi16_mask(c, _mm512_set1_epi16(64)), _mm512_test_epi16_mask(c, _mm512_set1_epi16(128)))
        };
        // 32 codes' f16 values from one value's table of `pairs` register pairs.
        let look = |(idx, b6, b7): (__m512i, __mmask32, __mmask32), t: *const u8, pairs: usize| -> __m512i {
            let pair = |p: usize| {
                _mm512_permutex2var_epi8(
                    _mm512_loadu_si512(t.add(128 * p).cast()),
                    idx,
                    _mm512_loadu_si512(t.add(128 * p + 64).cast()),
                )
            };
            let v = pair(0);
            if pairs == 1 {
                return v;
            }
            let v = _mm512_mask_mov_epi16(v, b6, pair(1));
            if pairs == 2 {
                return v;
            }
            _mm512_mask_mov_epi16(v, b7, _mm512_mask_mov_epi16(pair(2), b6, pair(3)))
        };
        let (mp, rp) = (bb.main_pairs, bb.res_pairs);
        let mut acc = [[_mm512_setzero_ps(); 2]; D];
        let mut acc_int = _mm512_setzero_ps();
        let (xp, qp) = (xt.as_ptr(), xq.as_ptr());
        for c0 in (0..n).step_by(64) {
            let cnt = n.saturating_sub(c0).min(64);
            let cm = unpack(c0 * bits / 8, bits, cnt, main_fields);
            let cr = if rbits > 0 {
                unpack((n * bits + c0 * rbits) / 8, rbits, cnt, res_fields)
            } else {
                _mm512_setzero_si512()
            };
            for half in 0..if cnt > 32 { 2 } else { 1 } {
                let (im, ir) = if half == 0 {
                    (index(_mm512_castsi512_si256(cm)), index(_mm512_castsi512_si256(cr)))
                } else {
                    (index(_mm512_extracti64x4_epi64::<1>(cm)), index(_mm512_extracti64x4_epi64::<1>(cr)))
                };
                let c = c0 + 32 * half;
                if INT {
                    // Integer sums are exact: two chains, any order.
                    let mut sums = [_mm512_setzero_si512(); 2];
                    for j in 0..D {
                        let mut w = look(im, bb.main16.as_ptr().add(j * mp * 128), mp);
                        if rp > 0 {
                            w = _mm512_add_epi16(w, look(ir, bb.residual16.as_ptr().add(j * rp * 128), rp));
                        }
                        let x = _mm512_loadu_si512(qp.add(j * padded + c).cast());
                        sums[j % 2] = _mm512_dpwssd_epi32(sums[j % 2], w, x);
                    }
                    let s = _mm512_cvtepi32_ps(_mm512_add_epi32(sums[0], sums[1]));
                    acc_int = _mm512_add_ps(acc_int, _mm512_mul_ps(s, _mm512_loadu_ps(dl.as_ptr().add(c / 2))));
                    continue;
                }
                for (j, acc) in acc.iter_mut().enumerate() {
                    let v = look(im, bb.main.as_ptr().add(j * mp * 128), mp);
                    let mut lo = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
                    let mut hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v));
                    if rp > 0 {
                        let r = look(ir, bb.residual.as_ptr().add(j * rp * 128), rp);
                        lo = _mm512_add_ps(lo, _mm512_cvtph_ps(_mm512_castsi512_si256(r)));
                        hi = _mm512_add_ps(hi, _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(r)));
                    }
                    let x0 = _mm512_loadu_ps(xp.add(j * padded + c));
                    let x1 = _mm512_loadu_ps(xp.add(j * padded + c + 16));
                    acc[0] = _mm512_add_ps(acc[0], _mm512_mul_ps(x0, lo));
                    acc[1] = _mm512_add_ps(acc[1], _mm512_mul_ps(x1, hi));
                }
            }
        }
        let mut l = [0f32; 16];
        if INT {
            _mm512_storeu_ps(l.as_mut_ptr(), acc_int);
            return hsum16(&l);
        }
        let mut total = _mm512_add_ps(acc[0][0], acc[0][1]);
        for a in acc.iter().skip(1) {
            total = _mm512_add_ps(total, _mm512_add_ps(a[0], a[1]));
        }
        _mm512_storeu_ps(l.as_mut_ptr(), total);
        hsum16(&l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every code width (packed and whole-byte, up to 256 entries), ragged last groups,
    /// outlier columns: equal to decoding in f64, and the same bits at every level.
    #[test]
    fn byte_tables_match_decoding_and_every_level_gives_the_same_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (name, vectors) in
            [("vq4x256+128", 144), ("vq4x256", 70), ("vq4x64+64o2", 88), ("vq2x256+256", 200), ("vq8x16+128o3", 40)]
        {
            let f = VqFormat::from_name(name).unwrap_or_else(|| panic!("{name}"));
            let cols = vectors * f.dim;
            let (k, k2) = (f.entries(), f.residual_entries());
            let f16 = |v: f32| half::f16::from_f32(v).to_f32();
            let main: Vec<f32> = (0..k * f.dim).map(|_| f16(rng.random::<f32>() * 3.0 - 1.5)).collect();
            let res: Vec<f32> = (0..k2 * f.dim).map(|_| f16(rng.random::<f32>() * 0.5 - 0.25)).collect();
            let book = Codebook {
                entries: main.into_iter().chain(res).collect(),
                outlier_columns: (0..f.outliers as usize).map(|j| 3 + 11 * j).collect(),
            };
            let bb = ByteBook::new(&f, &book, cols).unwrap_or_else(|| panic!("{name}: no byte tables"));
            let (bytes, rb) = super::super::vq::random_rows(&f, cols, 7, &mut rng);
            let xs: Vec<ExactRow> = (0..2)
                .map(|_| {
                    let mut x = ExactRow::default();
                    x.set(&(0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<_>>());
                    x
                })
                .collect();
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                let mut out = vec![0f32; 7 * 2];
                rows(level, &f, &book, &bb, &bytes, rb, &xs, &mut out);
                for (r, got) in bytes.chunks_exact(rb).zip(out.chunks_exact(2)) {
                    let mut w = vec![0f32; cols];
                    f.decode_row(&book, r, &mut w);
                    for (x, got) in xs.iter().zip(got) {
                        let want: f64 = w.iter().zip(&x.x).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let abs: f64 = w.iter().zip(&x.x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        assert!((*got as f64 - want).abs() <= 1e-5 * abs + 1e-6, "{name} {level:?}: {got} vs {want}");
                    }
                }
                match &first {
                    None => first = Some(out),
                    Some(fst) => assert!(fst == &out, "{name} {level:?}: differs from the portable loop"),
                }
            }
        }
    }

    /// The integer path (Q8_0 activations): equal to decoding and dotting with the
    /// activations' Q8_0 values up to the int16 grid (half a step per weight), the same
    /// bits at every level.
    #[test]
    fn integer_path_matches_decoding_within_the_grid_and_every_level_agrees() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for (name, vectors) in [("vq4x256+128", 144), ("vq4x64+64o2", 88), ("vq2x256+256", 208), ("vq8x16+128o3", 40)] {
            let f = VqFormat::from_name(name).unwrap_or_else(|| panic!("{name}"));
            let cols = vectors * f.dim;
            let (k, k2) = (f.entries(), f.residual_entries());
            let f16 = |v: f32| half::f16::from_f32(v).to_f32();
            let entries: Vec<f32> = (0..(k + k2) * f.dim)
                .map(|i| {
                    f16(if i < k * f.dim { rng.random::<f32>() * 3.0 - 1.5 } else { rng.random::<f32>() * 0.5 - 0.25 })
                })
                .collect();
            let book = Codebook { entries, outlier_columns: (0..f.outliers as usize).map(|j| 3 + 11 * j).collect() };
            let bb = ByteBook::new(&f, &book, cols).unwrap();
            let (bytes, rb) = super::super::vq::random_rows(&f, cols, 5, &mut rng);
            let acts: Vec<QuantRow> = (0..2)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
                    let mut q = QuantRow::default();
                    q.quantize(&x, crate::format::GgmlType::Q8_0);
                    q
                })
                .collect();
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                let mut out = vec![0f32; 5 * 2];
                rows_q8(level, &f, &book, &bb, &bytes, rb, &acts, &mut out);
                for (r, got) in bytes.chunks_exact(rb).zip(out.chunks_exact(2)) {
                    let mut w = vec![0f32; cols];
                    f.decode_row(&book, r, &mut w);
                    for (a, got) in acts.iter().zip(got) {
                        let x: Vec<f64> = a.q.iter().enumerate().map(|(i, &q)| q as f64 * a.d[i / 32] as f64).collect();
                        let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b).sum();
                        let abs: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b).abs()).sum();
                        let grid = bb.int16_scale as f64 / 2.0 * 0.7 * x.iter().map(|v| v.abs()).sum::<f64>();
                        assert!(
                            (*got as f64 - want).abs() <= grid + 1e-5 * abs + 1e-6,
                            "{name} {level:?}: {got} vs {want} (grid {grid})"
                        );
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
    fn formats_past_the_tables_fall_back() {
        let book = |f: &VqFormat| Codebook {
            entries: vec![0.5; f.dim * (f.entries() + f.residual_entries())],
            outlier_columns: vec![],
        };
        for (name, cols, fits) in [
            ("vq4x256+256", 64, true),
            ("vq4x16", 64, true),
            ("vq4x1024", 64, false),
            ("vq16x256", 64, false),
            ("vq4x64", 12, false),
        ] {
            let f = VqFormat::from_name(name).unwrap();
            assert_eq!(ByteBook::new(&f, &book(&f), cols).is_some(), fits, "{name} at {cols} columns");
        }
    }
}
