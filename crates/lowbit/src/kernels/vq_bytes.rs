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
//! costs a memory access of its own.
//!
//! Two numerics. In llama.cpp numerics ([`rows_q8`]) the activations are Q8_0 codes and
//! the codebooks integers in byte planes of up to 128 entries per register pair
//! ([`Planes`]): one `vpermi2b` looks up 64 codes' bytes, and `vpdpbusd` dots them with
//! 64 activation bytes, exact in int32 (see there), two rows at a time. Codebooks on
//! their int8 grids (`quantize --vq-int8`, [`crate::format::vq::grid_codes`]) take one
//! plane each, exactly; others are int16 on one power-of-two grid in two planes (the
//! high byte plus 128, the low byte) — half again as many lookups and dot products
//! (smollm2 vq4x256+128 tg128: 93–95 t/s on the int16 planes, 119–124 on the int8 ones,
//! interleaved). Before (int16 lanes, `vpdpwssd`, one row at a time), 32 codes took as
//! many permutes and blends as 64 do now.
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
use super::aligned::Aligned;
use super::isa::Level;
use super::rows::{hsum16, prefetch_next};
use crate::format::f16_at;
use crate::format::native::read_bits;
use crate::format::vq::{grid_codes, Codebook, VqFormat};

/// Rows ahead whose bytes are prefetched (smollm2 vq4x256+128 tg128: 2 ahead 90 t/s, 4: 88,
/// 8: 85, 16: 79; none: 53).
const PREFETCH_ROWS: usize = 2;

/// Most values per vector a byte-table kernel runs (two accumulators per value).
const MAX_DIM: usize = 8;

/// Products (stored row × activation row) the integer kernel computes at once, sharing
/// each table load and overlapping their dependency chains.
const PER_CALL: usize = 2;

/// A VQ matrix's codebooks as byte tables: per value `j`, `pairs × 128` bytes holding
/// entry `e`'s f16 bits at `2e` (zero past `K`), main codebook then residual.
pub(crate) struct ByteBook {
    /// `dim × main_pairs × 128` bytes.
    main: Aligned<u8>,
    /// `dim × res_pairs × 128` bytes (empty without a residual codebook).
    residual: Aligned<u8>,
    /// Register pairs per value of the main codebook (1, 2 or 4: up to 64, 128, 256 entries).
    main_pairs: usize,
    /// The same for the residual codebook (0 without one).
    res_pairs: usize,
    /// The main codebook as integers in byte planes — the integer path's weights: per
    /// value `j`, one plane (Int8) or two (Int16) of `main_pairs8 × 128` bytes, entry `e` at byte `e`
    /// ([`ByteBook::int_value`] reads one back). [`Planes::Int8`]: the grid codes + 128;
    /// [`Planes::Int16`]: the high bytes + 128, then the low bytes.
    main8: Aligned<u8>,
    /// The residual codebook likewise (empty without one).
    residual8: Aligned<u8>,
    /// Register pairs per byte plane of the main codebook (1 or 2: up to 128, 256 entries).
    main_pairs8: usize,
    /// The same for the residual codebook (0 without one).
    res_pairs8: usize,
    /// How the integer weights are held.
    planes: Planes,
    /// What one integer step of the integer path's sums is worth (a power of two).
    unit: f32,
}

/// How [`ByteBook`] holds the codebooks as integers for the Q8_0 path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Planes {
    /// Both codebooks on their int8 grids ([`crate::format::vq::grid_codes`]: what
    /// lowbit's quantizer writes), one byte plane each, exact: an entry sum is
    /// `k_C · main + k_R · res` units (each grid's step in units, `m · 2^(e − e_min)`;
    /// `res` 0 without a residual).
    Int8 { main: i32, res: i32 },
    /// Codebooks off those grids (files written before): `C + R` as int16 on one
    /// power-of-two grid — the smallest step with `max|C| + max|R| ≤ 32767·step` — in two
    /// byte planes per codebook. Entries at or above 1/32 of the largest are exact on it
    /// (f16 has 11 significant bits); smaller ones are within half a step.
    Int16,
}

/// Largest sum of [`Planes::Int8`]'s two multipliers: a lane's 4 vectors of up to 8
/// values sum `|k·x| ≤ 127·127` each, so `(main + res) · 32 · 127²` must stay below 2³¹.
const MAX_MULTIPLIERS: i32 = 4161;

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
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let pairs8 = |entries: usize| entries.div_ceil(128);
        // Per value j, the planes `bytes` makes of each entry's value.
        let layout = |vals: &[f32], entries: usize, bytes: &dyn Fn(f32) -> Vec<u8>| {
            let p = pairs8(entries) * 128;
            let planes = bytes(0.0).len();
            let mut t = vec![0u8; dim * planes * p];
            for (e, v) in vals.chunks_exact(dim).enumerate().take(entries) {
                for (j, &x) in v.iter().enumerate() {
                    for (q, b) in bytes(x).into_iter().enumerate() {
                        t[(j * planes + q) * p + e] = b;
                    }
                }
            }
            t
        };
        let (main8, residual8, planes, unit) = match int8_grids(main, (k2 > 0).then_some(res)) {
            Some((planes, unit, (sm, sr))) => {
                // On the grids, x / step is the grid code exactly.
                let code = |step: f32| move |x: f32| vec![((x / step) as i32 + 128) as u8];
                let residual8 = if k2 > 0 { layout(res, k2, &code(sr)) } else { Vec::new() };
                (layout(main, k, &code(sm)), residual8, planes, unit)
            }
            None => {
                let step = if span > 0.0 { 2f32.powi((span / 32767.0).log2().ceil() as i32) } else { 1.0 };
                let step = if span > 32767.0 * step { 2.0 * step } else { step };
                let int16 = |x: f32| {
                    let w = (x / step).round() as i16;
                    vec![((w >> 8) + 128) as u8, w as u8]
                };
                let residual8 = if k2 > 0 { layout(res, k2, &int16) } else { Vec::new() };
                (layout(main, k, &int16), residual8, Planes::Int16, step)
            }
        };
        Some(ByteBook {
            main: Aligned::from_slice(&table(main, k, &f16)),
            residual: Aligned::from_slice(&if k2 > 0 { table(res, k2, &f16) } else { Vec::new() }),
            main_pairs: pairs(k),
            res_pairs: if k2 > 0 { pairs(k2) } else { 0 },
            main8: Aligned::from_slice(&main8),
            residual8: Aligned::from_slice(&residual8),
            main_pairs8: pairs8(k),
            res_pairs8: if k2 > 0 { pairs8(k2) } else { 0 },
            planes,
            unit,
        })
    }
}

/// [`Planes::Int8`] for a main and an optional residual codebook when both lie on their
/// int8 grids ([`grid_codes`]) and their steps, as integer multiples of the finer one's
/// power of two, stay within [`MAX_MULTIPLIERS`]: the planes, what one unit is worth, and
/// the two steps (the residual's 0 without one).
fn int8_grids(main: &[f32], res: Option<&[f32]>) -> Option<(Planes, f32, (f32, f32))> {
    let ((mm, em), _) = grid_codes(main)?;
    let ((mr, er), _) = match res {
        Some(r) => grid_codes(r)?,
        None => ((0, em), Vec::new()),
    };
    let low = em.min(er);
    let (a, b) = ((em - low < 12).then(|| mm << (em - low))?, (er - low < 12).then(|| mr << (er - low))?);
    let step = |m: i32, e: i32| m as f32 * 2f32.powi(e);
    (a + b <= MAX_MULTIPLIERS).then(|| (Planes::Int8 { main: a, res: b }, 2f32.powi(low), (step(mm, em), step(mr, er))))
}

impl ByteBook {
    /// How far the integer path's weights may lie from the stored codebooks, per unit of
    /// a row's scale: half the int16 grid's step, 0 on the int8 grids (tests bound the
    /// error with it).
    #[cfg(test)]
    pub(crate) fn int_rounding(&self) -> f32 {
        match self.planes {
            Planes::Int8 { .. } => 0.0,
            Planes::Int16 => self.unit / 2.0,
        }
    }

    /// How the integer weights are held (tests check which path a codebook takes).
    #[cfg(test)]
    pub(crate) fn planes(&self) -> Planes {
        self.planes
    }

    /// Value `j` of main entry `cm` plus residual entry `cr` in units ([`ByteBook`]'s
    /// `unit`), from the byte planes, as the integer kernel forms it.
    fn int_value(&self, j: usize, cm: usize, cr: usize) -> i32 {
        let read = |t: &[u8], pairs8: usize, e: usize| {
            let p = pairs8 * 128;
            match self.planes {
                Planes::Int8 { .. } => t[j * p + e] as i32 - 128,
                Planes::Int16 => 256 * (t[j * 2 * p + e] as i32 - 128) + t[j * 2 * p + p + e] as i32,
            }
        };
        let main = read(&self.main8, self.main_pairs8, cm);
        let res = if self.res_pairs8 > 0 { read(&self.residual8, self.res_pairs8, cr) } else { 0 };
        match self.planes {
            Planes::Int8 { main: a, res: b } => main * a + res * b,
            Planes::Int16 => main + res,
        }
    }
}

/// Whether this CPU has AVX-512 VBMI (`vpermi2b`, `vpermb`, `vpmultishiftqb`).
pub(super) fn vbmi() -> bool {
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

/// A batch's activation rows rearranged for these kernels (made once per product by
/// [`ByValue::exact`] or [`ByValue::q8`], then shared by every worker's rows: made per
/// call of 120 rows, it took 8 % of smollm2's generation).
pub(crate) enum ByValue {
    /// Exact numerics: per activation row, `dim` runs of `padded` f32 values
    /// (`n` rounded up to 32).
    F32 { xt: Aligned<f32>, padded: usize },
    /// llama.cpp numerics: per activation row, `dim` runs of `padded` Q8_0 codes (`n`
    /// rounded up to 64); per lane of 4 vectors the codes' sum (for the high bytes'
    /// offset) and the block's scale.
    Q8 { xq: Aligned<i8>, xs: Aligned<i32>, dl: Aligned<f32>, padded: usize },
    /// Q8_K codes as bytes, one run per activation row, in order
    /// ([`super::iq_bytes::code_bytes`]).
    Codes(Aligned<i8>),
}

impl ByValue {
    /// The f32 rows `xs` for vectors of `dim` values.
    pub(crate) fn exact(xs: &[ExactRow], dim: usize) -> ByValue {
        let n = xs.first().map_or(0, |x| x.x.len()) / dim;
        let padded = n.div_ceil(32) * 32;
        let mut xt = Aligned::zeroed(xs.len() * dim * padded);
        for (x, xt) in xs.iter().zip(xt.chunks_exact_mut(dim * padded)) {
            by_value(&x.x, dim, padded, xt, |v| v);
        }
        ByValue::F32 { xt, padded }
    }

    /// The Q8_0 rows `acts` for vectors of `dim` values.
    pub(crate) fn q8(acts: &[QuantRow], dim: usize) -> ByValue {
        let n = acts.first().map_or(0, |a| a.q.len()) / dim;
        let padded = n.div_ceil(64) * 64;
        let lanes = padded / 4;
        let mut xq = Aligned::zeroed(acts.len() * dim * padded);
        let mut xs = Aligned::zeroed(acts.len() * lanes);
        let mut dl = Aligned::zeroed(acts.len() * lanes);
        for (((a, xq), dl), xs) in acts
            .iter()
            .zip(xq.chunks_exact_mut(dim * padded))
            .zip(dl.chunks_exact_mut(lanes))
            .zip(xs.chunks_exact_mut(lanes))
        {
            // Q8_0 codes are within ±127.
            by_value(&a.q, dim, padded, xq, |q| q as i8);
            // A lane's 4 vectors (4·dim ≤ 32 values, 4-aligned) lie in one block.
            for (l, d) in dl.iter_mut().enumerate().take(n.div_ceil(4)) {
                *d = a.d[4 * l * dim / 32];
            }
            for (l, s) in xs.iter_mut().enumerate() {
                *s = (0..dim).map(|j| xq[j * padded + 4 * l..][..4].iter().map(|&v| v as i32).sum::<i32>()).sum();
            }
        }
        ByValue::Q8 { xq, xs, dl, padded }
    }
}

/// Stored rows (`row_bytes` each) × the f32 activation rows `xs` (exact numerics),
/// rearranged in `bv` ([`ByValue::exact`]): `out[r·t + i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    level: Level,
    f: &VqFormat,
    book: &Codebook,
    bb: &ByteBook,
    rows: &[u8],
    row_bytes: usize,
    xs: &[ExactRow],
    bv: &ByValue,
    out: &mut [f32],
) {
    let ByValue::F32 { xt, padded } = bv else { unreachable!("exact rows are rearranged as f32") };
    let (cols, padded) = (xs.first().map_or(0, |x| x.x.len()), *padded);
    let (dim, n) = (f.dim, cols / f.dim);
    let fast = level == Level::Avx512 && vbmi();
    let one = |codes: &[u8], i: usize| {
        let xt = &xt[i * dim * padded..(i + 1) * dim * padded];
        if fast {
            // SAFETY: `fast` only where the CPU has AVX-512 F/BW/VL/VNNI
            // (Level::Avx512) and VBMI (detected above).
            unsafe { sum_fast(f, bb, codes, n, xt, padded) }
        } else {
            sum_portable(f, book, codes, n, xt, padded)
        }
    };
    let sum = |items: [(&[u8], usize); PER_CALL]| items.map(|(c, i)| one(c, i));
    each_row(f, book, rows, row_bytes, xs.len(), 1.0, sum, |i, col| xs[i].x[col], out);
}

/// Stored rows × activation rows quantized to Q8_0 (llama.cpp numerics: VQ matrices take
/// the activations llama.cpp gives its 32-value block types), rearranged in `bv`
/// ([`ByValue::q8`]), with the codebooks as integers ([`Planes`]) in byte planes: per 64
/// vectors and value, `vpdpbusd` of each plane's looked-up bytes (+ 128 where signed)
/// with the codes, exact in int32; per lane of 4 vectors the planes' sums, their offsets
/// taken back, combine exactly into `Σ q·(C + R)` in units — `2^shift·(ΣC₈ − 128·Σx) +
/// ΣR₈ − 128·Σx` on the int8 grids, `256·(Σhi − 128·b·Σx) + Σlo` on the int16 one (b
/// codebooks) — and one multiply-add by the block's scale follows. On the int8 grids
/// (lowbit's files) this is decoding up to f32 summation; off them it differs by the
/// int16 grid only (at most half a step per weight, 2⁻¹⁶ of the codebooks' range; the
/// Q8_0 rounding of the activations is ~250× that).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_q8(
    level: Level,
    f: &VqFormat,
    book: &Codebook,
    bb: &ByteBook,
    rows: &[u8],
    row_bytes: usize,
    acts: &[QuantRow],
    bv: &ByValue,
    out: &mut [f32],
) {
    let ByValue::Q8 { xq, xs, dl, padded } = bv else { unreachable!("Q8_0 rows are rearranged as codes") };
    let (cols, padded) = (acts.first().map_or(0, |a| a.q.len()), *padded);
    let (dim, n, lanes) = (f.dim, cols / f.dim, padded / 4);
    let fast = level == Level::Avx512 && vbmi();
    let sum = |items: [(&[u8], usize); PER_CALL]| {
        let jobs = items.map(|(codes, i)| Job {
            codes,
            xq: &xq[i * dim * padded..(i + 1) * dim * padded],
            xs: &xs[i * lanes..(i + 1) * lanes],
            dl: &dl[i * lanes..(i + 1) * lanes],
        });
        if fast {
            // SAFETY: as in `rows`.
            match bb.planes {
                Planes::Int8 { .. } => unsafe { sum_q8_int8(f, bb, n, padded, jobs) },
                Planes::Int16 => unsafe { sum_q8_fast(f, bb, n, padded, jobs) },
            }
        } else {
            jobs.map(|j| sum_q8_portable(f, bb, j.codes, n, j.xq, j.dl, padded))
        }
    };
    let x_at = |i: usize, col: usize| acts[i].q[col] as f32 * acts[i].d[col / 32];
    each_row(f, book, rows, row_bytes, acts.len(), bb.unit, sum, x_at, out);
}

/// One activation row rearranged by value of a vector: `out[j·padded + c] = x[c·dim + j]`
/// (both numerics' kernels read value j of 32 or 64 vectors as one run).
fn by_value<T: Copy, U>(x: &[T], dim: usize, padded: usize, out: &mut [U], conv: impl Fn(T) -> U) {
    for (c, v) in x.chunks_exact(dim).enumerate() {
        for (j, &xv) in v.iter().enumerate() {
            out[j * padded + c] = conv(xv);
        }
    }
}

/// [`sum_vbmi`] for the format's vector length (2, 4 or 8: what [`ByteBook::new`] admits).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[allow(unused_variables)]
unsafe fn sum_fast(f: &VqFormat, bb: &ByteBook, codes: &[u8], n: usize, xt: &[f32], padded: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY (each arm): the caller's contract.
    match f.dim {
        2 => unsafe { sum_vbmi::<2>(f, bb, codes, n, xt, padded) },
        4 => unsafe { sum_vbmi::<4>(f, bb, codes, n, xt, padded) },
        8 => unsafe { sum_vbmi::<8>(f, bb, codes, n, xt, padded) },
        d => unreachable!("byte tables are made for 2-, 4- and 8-value vectors, not {d}"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the byte-table kernels are x86-64 only")
}

/// [`sum_q8_int8_vbmi`] for the format's vector length: a function of its own beside
/// [`sum_q8_fast`], so that the int16 path's dispatch keeps the size the inliner handled
/// before (with all six kernels behind one match, the int16 path ran 12 % slower: 94–102
/// against 111–116 t/s on smollm2 vq4x256+128, interleaved).
///
/// # Safety
/// As [`sum_q8_fast`].
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn sum_q8_int8(
    f: &VqFormat,
    bb: &ByteBook,
    n: usize,
    padded: usize,
    jobs: [Job<'_>; PER_CALL],
) -> [f32; PER_CALL] {
    // SAFETY (each arm): the caller's contract.
    match f.dim {
        2 => unsafe { sum_q8_int8_vbmi::<2>(f, bb, n, padded, jobs) },
        4 => unsafe { sum_q8_int8_vbmi::<4>(f, bb, n, padded, jobs) },
        8 => unsafe { sum_q8_int8_vbmi::<8>(f, bb, n, padded, jobs) },
        d => unreachable!("byte tables are made for 2-, 4- and 8-value vectors, not {d}"),
    }
}

/// Defines, inside a VBMI kernel, the closures both byte-plane kernels look up with:
/// `$regs(table, pairs)` loads one plane's `pairs` register pairs (zeros past them), and
/// `$look(codes, bit7, regs, pairs)` gives 64 codes' bytes from them (`vpermi2b`, and a
/// blend on bit 7 for a second pair). A macro rather than functions, so each kernel
/// compiles exactly the closures it had inline (these kernels moved by 10–15 % with how
/// their helpers were inlined).
#[cfg(target_arch = "x86_64")]
macro_rules! byte_plane_lookups {
    ($Regs:ident, $regs:ident, $look:ident, $zero:ident) => {
        type $Regs = (__m512i, __m512i, __m512i, __m512i);
        let $regs = |t: *const u8, pairs: usize| -> $Regs {
            let at = |q: usize| if q < 2 * pairs { _mm512_loadu_si512(t.add(64 * q).cast()) } else { $zero };
            (at(0), at(1), at(2), at(3))
        };
        let $look = |idx: __m512i, k7: __mmask64, t: $Regs, pairs: usize| -> __m512i {
            let v = _mm512_permutex2var_epi8(t.0, idx, t.1);
            if pairs == 1 {
                return v;
            }
            _mm512_mask_blend_epi8(k7, v, _mm512_permutex2var_epi8(t.2, idx, t.3))
        };
    };
}

/// `[e(0), e(1)]` for the [`PER_CALL`] products, with `p` the product in `e` — spelled out:
/// closures (`array::map`) inside a `target_feature` function may not be inlined, and
/// called per step they cost the int8 kernel 10–15 % of smollm2's tg128 (measured).
macro_rules! per_call {
    ($p:ident => $e:expr) => {
        [
            {
                let $p = 0;
                $e
            },
            {
                let $p = 1;
                $e
            },
        ]
    };
}
const _: () = assert!(PER_CALL == 2, "per_call! spells out two products");

/// One product of the integer path: a stored row's codes and one activation row as
/// [`rows_q8`] rearranged it (codes by value, lane sums, lane scales).
#[derive(Clone, Copy)]
struct Job<'a> {
    codes: &'a [u8],
    xq: &'a [i8],
    xs: &'a [i32],
    dl: &'a [f32],
}

/// [`sum_q8_vbmi`] for the format's vector length.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[allow(unused_variables)]
unsafe fn sum_q8_fast(
    f: &VqFormat,
    bb: &ByteBook,
    n: usize,
    padded: usize,
    jobs: [Job<'_>; PER_CALL],
) -> [f32; PER_CALL] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY (each arm): the caller's contract.
    match f.dim {
        2 => unsafe { sum_q8_vbmi::<2>(f, bb, n, padded, jobs) },
        4 => unsafe { sum_q8_vbmi::<4>(f, bb, n, padded, jobs) },
        8 => unsafe { sum_q8_vbmi::<8>(f, bb, n, padded, jobs) },
        d => unreachable!("byte tables are made for 2-, 4- and 8-value vectors, not {d}"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the byte-table kernels are x86-64 only")
}

/// The row loop both numerics share: prefetch, then the products of every (stored row,
/// activation row) pair [`PER_CALL`] at a time (`sum`; the integer kernel runs them at
/// once; a short last group repeats its last product), each `· unit · scale` plus the
/// outlier columns' corrections with the activation value `x_at(i, col)`.
#[allow(clippy::too_many_arguments)]
fn each_row<'a>(
    f: &VqFormat,
    book: &Codebook,
    rows: &'a [u8],
    row_bytes: usize,
    t: usize,
    unit: f32,
    sum: impl Fn([(&'a [u8], usize); PER_CALL]) -> [f32; PER_CALL],
    x_at: impl Fn(usize, usize) -> f32,
    out: &mut [f32],
) {
    let n = f.cols_of_row_bytes(row_bytes).unwrap_or(0) / f.dim;
    let outl = f.outliers as usize;
    let total = rows.len() / row_bytes * t;
    let codes = |r: usize| &rows[r * row_bytes + 2..(r + 1) * row_bytes - 2 * outl];
    // (stored row, activation row) of the next product, counted along (a division per
    // product cost more than the kernel's setup).
    let (mut r, mut i) = (0, 0);
    for k in (0..total).step_by(PER_CALL) {
        let items: [(usize, usize); PER_CALL] = std::array::from_fn(|q| {
            let here = (r, i);
            if k + q + 1 < total {
                i += 1;
                if i == t {
                    (r, i) = (r + 1, 0);
                }
            }
            here
        });
        // The rows PREFETCH_ROWS ahead (rows are short: one ahead arrives too late), each
        // once.
        for (q, &(r, i)) in items.iter().enumerate() {
            if i == 0 && k + q < total {
                prefetch_next(rows, (r + PREFETCH_ROWS - 1) * row_bytes, row_bytes);
            }
        }
        let sums = sum(items.map(|(r, i)| (codes(r), i)));
        for (q, &(r, i)) in items.iter().enumerate().take(total - k) {
            let row = &rows[r * row_bytes..(r + 1) * row_bytes];
            out[r * t + i] =
                sums[q] * unit * f16_at(row, 0) + super::vq::outlier_terms(f, book, row, n, |col| x_at(i, col));
        }
    }
}

/// One row's `Σ d_b · Σ q·(C₁₆ + R₁₆)` (the integer path before its grid step and scale):
/// per 64 vectors, lane `l` (vectors 4l…4l+3) sums over them and the values exactly, then
/// adds that times their block's scale — the reference for [`sum_q8_vbmi`].
fn sum_q8_portable(f: &VqFormat, bb: &ByteBook, codes: &[u8], n: usize, xq: &[i8], dl: &[f32], padded: usize) -> f32 {
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let mut acc = [0f32; 16];
    for c0 in (0..padded).step_by(64) {
        let mut sums = [0i32; 16];
        for i in 0..64 {
            let c = c0 + i;
            let (cm, cr) = if c < n {
                let cr = if rbits > 0 { read_bits(codes, n * bits + c * rbits, rbits) as usize } else { 0 };
                (read_bits(codes, c * bits, bits) as usize, cr)
            } else {
                (0, 0)
            };
            for j in 0..dim {
                sums[i / 4] += bb.int_value(j, cm, cr) * xq[j * padded + c] as i32;
            }
        }
        for l in 0..16 {
            acc[l] += sums[l] as f32 * dl[c0 / 4 + l];
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

/// Unpacks `cnt` ≤ 64 codes of `b` ≤ 8 bits starting at byte `start` of `codes` into
/// bytes (codes past `cnt` are 0), with `fields` = [`UNPACK`]`[b]` loaded.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VBMI; the `⌈cnt·b/8⌉` bytes from `start` must lie
/// inside `codes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
pub(super) unsafe fn unpack_codes(
    codes: &[u8],
    start: usize,
    b: usize,
    cnt: usize,
    (gather, shifts): (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i),
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let bits = _mm512_set1_epi8(((1u16 << b) - 1) as i8);
    if cnt == 64 && start + 64 <= codes.len() {
        // A whole step inside `codes`: no masks (the gather reads only its 8·b bytes).
        // SAFETY: the 64 bytes from `start` lie inside `codes` (checked).
        let raw = unsafe { _mm512_loadu_si512(codes.as_ptr().add(start).cast()) };
        if b == 8 {
            return raw;
        }
        return _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(gather, raw)), bits);
    }
    let nbytes = (cnt * b).div_ceil(8);
    let m: __mmask64 = if nbytes >= 64 { !0 } else { (1u64 << nbytes) - 1 };
    // SAFETY: a plain load only where the 64 bytes lie inside `codes` (masked loads cost
    // far more on this path: measured), masked to the chunk's bytes; else a masked load of
    // the chunk's bytes, inside `codes` by the caller's contract.
    let raw = unsafe {
        if start + 64 <= codes.len() {
            _mm512_maskz_mov_epi8(m, _mm512_loadu_si512(codes.as_ptr().add(start).cast()))
        } else {
            _mm512_maskz_loadu_epi8(m, codes.as_ptr().add(start).cast())
        }
    };
    let keep: __mmask64 = if cnt >= 64 { !0 } else { (1u64 << cnt) - 1 };
    if b == 8 {
        return _mm512_maskz_mov_epi8(keep, raw);
    }
    let f = _mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(gather, raw));
    _mm512_and_si512(_mm512_maskz_mov_epi8(keep, f), bits)
}

/// [`UNPACK`]`[b]` as the two registers [`unpack_codes`] takes.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn unpack_fields(b: usize) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let t = &UNPACK[b];
    // SAFETY: each table is 128 bytes.
    unsafe { (_mm512_loadu_si512(t.as_ptr().cast()), _mm512_loadu_si512(t.as_ptr().add(64).cast())) }
}

/// [`sum_portable`] with byte permutes (AVX-512 VBMI).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn sum_vbmi<const D: usize>(
    f: &VqFormat,
    bb: &ByteBook,
    codes: &[u8],
    n: usize,
    xt: &[f32],
    padded: usize,
) -> f32 {
    use std::arch::x86_64::*;
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    assert!(dim == D && bits <= 8 && rbits <= 8 && padded >= n && padded.is_multiple_of(32));
    assert!(xt.len() >= dim * padded);
    assert!(bb.main.len() == dim * bb.main_pairs * 128 && bb.residual.len() == dim * bb.res_pairs * 128);
    assert!((rbits > 0) == (bb.res_pairs > 0) && [1, 2, 4].contains(&bb.main_pairs));
    assert!(codes.len() * 8 >= n * (bits + rbits) && (n * bits).is_multiple_of(8));
    // SAFETY: every load below is in bounds: `unpack_codes` reads only the chunk's code
    // bytes, which lie inside `codes` (asserted length: n·(bits+rbits) bits, the residual
    // part starting on a byte); table loads read 64 bytes at j·pairs·128 + 64·q <
    // dim·pairs·128 = the table's length (asserted); activation loads read 16 f32 at
    // j·padded + c + 16h, c + 32 ≤ padded, so inside dim·padded ≤ xt.len() (asserted).
    unsafe {
        let (main_fields, res_fields) = (unpack_fields(bits), unpack_fields(rbits));
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
        let xp = xt.as_ptr();
        for c0 in (0..n).step_by(64) {
            let cnt = n.saturating_sub(c0).min(64);
            let cm = unpack_codes(codes, c0 * bits / 8, bits, cnt, main_fields);
            let cr = if rbits > 0 {
                unpack_codes(codes, (n * bits + c0 * rbits) / 8, rbits, cnt, res_fields)
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
        let mut total = _mm512_add_ps(acc[0][0], acc[0][1]);
        for a in acc.iter().skip(1) {
            total = _mm512_add_ps(total, _mm512_add_ps(a[0], a[1]));
        }
        _mm512_storeu_ps(l.as_mut_ptr(), total);
        hsum16(&l)
    }
}

/// [`sum_q8_portable`] for two products at once, with byte permutes and `vpdpbusd`
/// (AVX-512 VBMI and VNNI). Per 64 vectors and value: each plane's register pairs are
/// loaded once for both products, one `vpermi2b` per plane and pair (a blend on the
/// code's bit 7 for 256 entries), one `vpdpbusd` per plane into register accumulators
/// (main and residual apart: four independent chains per product). Two products keep
/// the permute units busy where one row's dependency chains and its setup and final sum
/// left them idle (smollm2's rows are 144 vectors: 3 steps of 64).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn sum_q8_vbmi<const D: usize>(
    f: &VqFormat,
    bb: &ByteBook,
    n: usize,
    padded: usize,
    jobs: [Job<'_>; PER_CALL],
) -> [f32; PER_CALL] {
    use std::arch::x86_64::*;
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let (mp, rp) = (bb.main_pairs8, bb.res_pairs8);
    assert!(dim == D && bits <= 8 && rbits <= 8 && padded >= n && padded.is_multiple_of(64));
    for j in &jobs {
        assert!(j.xq.len() >= dim * padded && j.xs.len() >= padded / 4 && j.dl.len() >= padded / 4);
        assert!(j.codes.len() * 8 >= n * (bits + rbits));
    }
    assert!(bb.main8.len() == dim * 2 * mp * 128 && bb.residual8.len() == dim * 2 * rp * 128);
    assert!((rbits > 0) == (rp > 0) && (1..=2).contains(&mp) && rp <= 2 && (n * bits).is_multiple_of(8));
    // SAFETY: every load below is in bounds: `unpack_codes` reads only the step's code
    // bytes, inside each job's `codes` (asserted length; the residual part starts on a
    // byte); plane loads read 64 bytes at (2j + plane)·pairs·128 + 64·q, q < 2·pairs,
    // inside the table's dim·2·pairs·128 bytes (asserted); activation loads read 64 bytes
    // at j·padded + 64s < dim·padded ≤ xq.len(), and 16 lane sums and scales at 16s,
    // 16s + 16 ≤ padded/4 ≤ their lengths (asserted).
    unsafe {
        let (main_fields, res_fields) = (unpack_fields(bits), unpack_fields(rbits));
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi32(128 * if rp > 0 { 2 } else { 1 });
        byte_plane_lookups!(Regs, regs, look, zero);
        let mut acc = [_mm512_setzero_ps(); PER_CALL];
        for s in 0..padded / 64 {
            let c0 = s * 64;
            let cnt = n.saturating_sub(c0).min(64);
            let cm = jobs.map(|j| unpack_codes(j.codes, c0 * bits / 8, bits, cnt, main_fields));
            let km = cm.map(|c| _mm512_movepi8_mask(c));
            let cr = if rbits > 0 {
                jobs.map(|j| unpack_codes(j.codes, (n * bits + c0 * rbits) / 8, rbits, cnt, res_fields))
            } else {
                [zero; PER_CALL]
            };
            let kr = cr.map(|c| _mm512_movepi8_mask(c));
            // High and low plane sums of each product: main, and residual apart.
            let (mut h, mut l) = ([[zero; 2]; PER_CALL], [[zero; 2]; PER_CALL]);
            for j in 0..D {
                let x = jobs.map(|jb| _mm512_loadu_si512(jb.xq.as_ptr().add(j * padded + c0).cast()));
                let mh = regs(bb.main8.as_ptr().add(2 * j * mp * 128), mp);
                let ml = regs(bb.main8.as_ptr().add((2 * j + 1) * mp * 128), mp);
                for p in 0..PER_CALL {
                    h[p][0] = _mm512_dpbusd_epi32(h[p][0], look(cm[p], km[p], mh, mp), x[p]);
                    l[p][0] = _mm512_dpbusd_epi32(l[p][0], look(cm[p], km[p], ml, mp), x[p]);
                }
                if rp > 0 {
                    let rh = regs(bb.residual8.as_ptr().add(2 * j * rp * 128), rp);
                    let rl = regs(bb.residual8.as_ptr().add((2 * j + 1) * rp * 128), rp);
                    for p in 0..PER_CALL {
                        h[p][1] = _mm512_dpbusd_epi32(h[p][1], look(cr[p], kr[p], rh, rp), x[p]);
                        l[p][1] = _mm512_dpbusd_epi32(l[p][1], look(cr[p], kr[p], rl, rp), x[p]);
                    }
                }
            }
            for (p, (acc, jb)) in acc.iter_mut().zip(&jobs).enumerate() {
                let xsum = _mm512_loadu_si512(jb.xs.as_ptr().add(s * 16).cast());
                let hi = _mm512_sub_epi32(_mm512_add_epi32(h[p][0], h[p][1]), _mm512_mullo_epi32(xsum, offset));
                let lane = _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), _mm512_add_epi32(l[p][0], l[p][1]));
                let d = _mm512_loadu_ps(jb.dl.as_ptr().add(s * 16));
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(lane), d));
            }
        }
        acc.map(|a| {
            let mut l = [0f32; 16];
            _mm512_storeu_ps(l.as_mut_ptr(), a);
            hsum16(&l)
        })
    }
}

/// [`sum_q8_portable`] on the int8 planes ([`Planes::Int8`]) for two products at once:
/// [`sum_q8_vbmi`]'s scheme with one plane per codebook — per 64 vectors and value one
/// lookup (a `vpermi2b`, and a blend on bit 7 for 256 entries) and one `vpdpbusd` per
/// codebook, two independent chains per product; per lane of 4 vectors
/// `ΣC₈·main + ΣR₈·res − 128·Σx·(main + res)`, exact in int32 (wrapping products, a result
/// within ±2³¹ by [`MAX_MULTIPLIERS`]). The two products' arrays are spelled out
/// (`per_call!`): with `array::map` closures here this kernel ran at 114 against 125–138
/// t/s (smollm2 vq4x256+128 tg128).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VBMI and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn sum_q8_int8_vbmi<const D: usize>(
    f: &VqFormat,
    bb: &ByteBook,
    n: usize,
    padded: usize,
    jobs: [Job<'_>; PER_CALL],
) -> [f32; PER_CALL] {
    use std::arch::x86_64::*;
    let (dim, bits, rbits) = (f.dim, f.bits as usize, f.residual_bits as usize);
    let (mp, rp) = (bb.main_pairs8, bb.res_pairs8);
    let Planes::Int8 { main: hmul, res: lmul } = bb.planes else { unreachable!("int8 planes") };
    assert!(dim == D && bits <= 8 && rbits <= 8 && padded >= n && padded.is_multiple_of(64));
    for j in &jobs {
        assert!(j.xq.len() >= dim * padded && j.xs.len() >= padded / 4 && j.dl.len() >= padded / 4);
        assert!(j.codes.len() * 8 >= n * (bits + rbits));
    }
    assert!(bb.main8.len() == dim * mp * 128 && bb.residual8.len() == dim * rp * 128);
    assert!((rbits > 0) == (rp > 0) && (1..=2).contains(&mp) && rp <= 2 && (n * bits).is_multiple_of(8));
    // SAFETY: every load below is in bounds: `unpack_codes` reads only the step's code
    // bytes, inside each job's `codes` (asserted length; the residual part starts on a
    // byte); plane loads read 64 bytes at j·pairs·128 + 64·q, q < 2·pairs, inside the
    // table's dim·pairs·128 bytes (asserted); activation loads read 64 bytes at
    // j·padded + 64s < dim·padded ≤ xq.len(), and 16 lane sums and scales at 16s,
    // 16s + 16 ≤ padded/4 ≤ their lengths (asserted).
    unsafe {
        let (main_fields, res_fields) = (unpack_fields(bits), unpack_fields(rbits));
        let zero = _mm512_setzero_si512();
        let off = _mm512_set1_epi32(128 * (hmul + lmul));
        let (hmul, lmul) = (_mm512_set1_epi32(hmul), _mm512_set1_epi32(lmul));
        byte_plane_lookups!(Regs, regs, look, zero);
        let mut acc = [_mm512_setzero_ps(); PER_CALL];
        for s in 0..padded / 64 {
            let c0 = s * 64;
            let cnt = n.saturating_sub(c0).min(64);
            let cm = per_call!(p => unpack_codes(jobs[p].codes, c0 * bits / 8, bits, cnt, main_fields));
            let km = per_call!(p => _mm512_movepi8_mask(cm[p]));
            let cr = if rbits > 0 {
                per_call!(p => unpack_codes(jobs[p].codes, (n * bits + c0 * rbits) / 8, rbits, cnt, res_fields))
            } else {
                [zero; PER_CALL]
            };
            let kr = per_call!(p => _mm512_movepi8_mask(cr[p]));
            // Per product: the main codebook's plane sums, the residual's.
            let (mut h, mut l) = ([zero; PER_CALL], [zero; PER_CALL]);
            for j in 0..D {
                let x = per_call!(p => _mm512_loadu_si512(jobs[p].xq.as_ptr().add(j * padded + c0).cast()));
                let mt = regs(bb.main8.as_ptr().add(j * mp * 128), mp);
                for p in 0..PER_CALL {
                    h[p] = _mm512_dpbusd_epi32(h[p], look(cm[p], km[p], mt, mp), x[p]);
                }
                if rp > 0 {
                    let rt = regs(bb.residual8.as_ptr().add(j * rp * 128), rp);
                    for p in 0..PER_CALL {
                        l[p] = _mm512_dpbusd_epi32(l[p], look(cr[p], kr[p], rt, rp), x[p]);
                    }
                }
            }
            for p in 0..PER_CALL {
                let xsum = _mm512_loadu_si512(jobs[p].xs.as_ptr().add(s * 16).cast());
                let sum = _mm512_add_epi32(_mm512_mullo_epi32(h[p], hmul), _mm512_mullo_epi32(l[p], lmul));
                let lane = _mm512_sub_epi32(sum, _mm512_mullo_epi32(xsum, off));
                let d = _mm512_loadu_ps(jobs[p].dl.as_ptr().add(s * 16));
                acc[p] = _mm512_add_ps(acc[p], _mm512_mul_ps(_mm512_cvtepi32_ps(lane), d));
            }
        }
        per_call!(p => {
            let mut l = [0f32; 16];
            _mm512_storeu_ps(l.as_mut_ptr(), acc[p]);
            hsum16(&l)
        })
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
                rows(level, &f, &book, &bb, &bytes, rb, &xs, &ByValue::exact(&xs, f.dim), &mut out);
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

    /// The integer path (Q8_0 activations; one row past a chunk of 8 × 64 vectors): equal
    /// to decoding and dotting with the activations' Q8_0 values — up to f32 summation
    /// for codebooks on their int8 grids (what lowbit writes; one byte plane each), and
    /// up to the int16 grid (half a step per weight) for codebooks off them — the same
    /// bits at every level.
    #[test]
    fn integer_path_matches_decoding_within_the_grid_and_every_level_agrees() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for ((name, vectors), on_grid) in [
            ("vq4x256+128", 144),
            ("vq4x256+128", 704),
            ("vq4x64+64o2", 88),
            ("vq2x256+256", 208),
            ("vq8x16+128o3", 40),
            ("vq4x256", 72),
        ]
        .into_iter()
        .flat_map(|c| [(c, false), (c, true)])
        {
            let f = VqFormat::from_name(name).unwrap_or_else(|| panic!("{name}"));
            let cols = vectors * f.dim;
            let (k, k2) = (f.entries(), f.residual_entries());
            let f16 = |v: f32| half::f16::from_f32(v).to_f32();
            let mut entries: Vec<f32> = (0..(k + k2) * f.dim)
                .map(|i| {
                    f16(if i < k * f.dim { rng.random::<f32>() * 3.0 - 1.5 } else { rng.random::<f32>() * 0.5 - 0.25 })
                })
                .collect();
            if on_grid {
                let (main, res) = entries.split_at_mut(k * f.dim);
                crate::format::vq::round_to_grid(main);
                crate::format::vq::round_to_grid(res);
            }
            let book = Codebook { entries, outlier_columns: (0..f.outliers as usize).map(|j| 3 + 11 * j).collect() };
            let bb = ByteBook::new(&f, &book, cols).unwrap();
            assert_eq!(matches!(bb.planes(), Planes::Int8 { .. }), on_grid, "{name} {:?}", bb.planes());
            let (bytes, rb) = super::super::vq::random_rows(&f, cols, 5, &mut rng);
            let acts = super::super::acts::random_q8_rows(cols, 2, &mut rng);
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                let mut out = vec![0f32; 5 * 2];
                rows_q8(level, &f, &book, &bb, &bytes, rb, &acts, &ByValue::q8(&acts, f.dim), &mut out);
                for (r, got) in bytes.chunks_exact(rb).zip(out.chunks_exact(2)) {
                    let mut w = vec![0f32; cols];
                    f.decode_row(&book, r, &mut w);
                    for (a, &got) in acts.iter().zip(got) {
                        let x = super::super::acts::q8_values(a);
                        let grid = bb.int_rounding() as f64 * 0.7 * x.iter().map(|v| v.abs()).sum::<f64>();
                        super::super::acts::assert_dot(got, &w, &x, grid, &format!("{name} {level:?}"));
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
