//! The many-rows path in llama.cpp numerics: a tile of stored rows is unpacked once into
//! the integer form of [`super::blocks`] (`w` = code × sub-scale, one float scale per block)
//! and multiplied with the whole batch of quantized activations (Q8_0/Q8_1/Q8_K, as ggml
//! quantizes them) by exact integer multiply-adds, with one float multiply-add per block
//! and token — ggml's `vec_dot_*_q8_*` arithmetic, computed 16 tokens × 8 rows at a time.
//!
//! Why: decoding tiles to f32 for `gemm` (the exact path) runs 16 multiply-adds per
//! instruction; AVX-512 VNNI's `vpdpbusd` runs 64 u8×i8 multiply-adds (32-value block
//! types, whose codes all fit in i8; activations offset by +128, taken back by starting
//! each block's sum at −128·Σ codes) and `vpdpwssd` 32 i16 ones (super-blocks, whose
//! codes × sub-scales need i16), and the per-block scaling costs a few instructions per
//! 32 (or 256) values. Measured on smollm2's Q4_0 file (`lowbit bench`, pp512, 2 threads,
//! this machine): 957 t/s with f32 tiles, 1726 with `vpdpwssd` and the vectorised
//! softmax, and the figures in the README's speed table with `vpdpbusd`.
//!
//! Layouts: activations in panels of [`LANES`] tokens, each quad (u8, Q8_0/Q8_1) or pair
//! (i16, Q8_K) of consecutive values of a token in one 32-bit lane, with each
//! block's scale per lane (`d[group][block][lane]`), Q8_1's `d·Σq` (`s`), Q8_K's per-16
//! sums in the same pair layout. Weights: the tile's rows of unpacked codes (i8 or i16), each
//! quad or pair broadcast to all lanes. Outputs are `t × n`, row-major by token.
//!
//! Only AVX-512 VNNI runs it ([`used_at`]): with AVX2, `vpmaddwd` + `vpaddd` do 8
//! multiply-adds per instruction, no more than f32 FMAs, and the portable loop compiled
//! for AVX2 ran pp512 at 0.56× the f32 tile path (smollm2 Q4_0, 289 against 514 t/s). The
//! portable loop is the AVX-512 kernel's reference: integer sums are exact, and the float
//! steps (`acc·(dx·d)` added to the output, then the minimum term) are the same
//! multiplies and adds, never fused, in the same order per lane, so the two agree bit for
//! bit (tested below).
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::acts::QuantRow;
use super::blocks::{Small, SmallBlock, Super, SuperBlock};
use super::isa::{multiversion, Level};
use crate::format::GgmlType;

/// Tokens per panel (one 512-bit register of i32 lanes).
pub(crate) const LANES: usize = 16;
/// Stored rows per microkernel call (8 integer and 8 float accumulators in registers).
pub(crate) const RB: usize = 8;

/// Whether the integer tile path is the fast one at `level`.
pub(crate) fn used_at(level: Level) -> bool {
    level == Level::Avx512
}

/// How a block's minimum enters the dot product.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum MinTerm {
    /// Symmetric types.
    #[default]
    None,
    /// 32-value blocks `d·w + m` with Q8_1 activations: `+ m·s` (ggml's `s = d·Σq`).
    Offset,
    /// Super-blocks `d·w − dmin·mins[j/16]` with Q8_K: `− dx·dmin·Σ mins·bsums`.
    Mins,
}

/// A batch of quantized activation rows, in panels of [`LANES`] tokens.
pub(crate) struct Panels {
    /// Values per block (32 or 256).
    block: usize,
    /// Values per token.
    k: usize,
    /// Panels (`⌈t / LANES⌉`).
    groups: usize,
    /// Q8_0/Q8_1: `[group][quad][lane][4]`, codes + 128 (`vpdpbusd`'s unsigned side).
    q8: Vec<u8>,
    /// Q8_K: `[group][pair][lane][2]`.
    q16: Vec<i16>,
    /// `[group][block][lane]`.
    d: Vec<f32>,
    /// Q8_1: `[group][block][lane]`.
    s: Vec<f32>,
    /// Q8_K: `[group][block][8 pairs][lane][2]`.
    bsum: Vec<i16>,
}

impl Panels {
    /// Quantizes the `t` rows of `x` (`k` values each) to `act` (Q8_0, Q8_1 or Q8_K) as
    /// [`QuantRow::quantize`] does, and lays them out in panels. Padding tokens are zero.
    pub(crate) fn new(x: &[f32], t: usize, k: usize, act: GgmlType) -> Panels {
        let block = if act == GgmlType::Q8_K { 256 } else { 32 };
        assert!(k.is_multiple_of(block) && x.len() == t * k, "Panels: x is not t×k whole blocks");
        let (groups, nb) = (t.div_ceil(LANES), k / block);
        let mut p = Panels {
            block,
            k,
            groups,
            q8: if block == 32 { vec![0; groups * k * LANES] } else { Vec::new() },
            q16: if block == 256 { vec![0; groups * k * LANES] } else { Vec::new() },
            d: vec![0.0; groups * nb * LANES],
            s: if act == GgmlType::Q8_1 { vec![0.0; groups * nb * LANES] } else { Vec::new() },
            bsum: if act == GgmlType::Q8_K { vec![0; groups * nb * 16 * LANES] } else { Vec::new() },
        };
        let (s_len, b_len) =
            (if p.s.is_empty() { 0 } else { nb * LANES }, if p.bsum.is_empty() { 0 } else { nb * 16 * LANES });
        let mut q8s = p.q8.chunks_mut(k * LANES);
        let mut q16s = p.q16.chunks_mut(k * LANES);
        let mut ds = p.d.chunks_mut(nb * LANES);
        let mut ss = p.s.chunks_mut(s_len.max(1));
        let mut bs = p.bsum.chunks_mut(b_len.max(1));
        let mut jobs = Vec::with_capacity(groups);
        for g in 0..groups {
            let q8 = if block == 32 { q8s.next() } else { None };
            let q16 = if block == 256 { q16s.next() } else { None };
            let d = ds.next().expect("sized above");
            let s = if s_len > 0 { ss.next() } else { None };
            let b = if b_len > 0 { bs.next() } else { None };
            jobs.push((g, q8, q16, d, s, b));
        }
        jobs.into_par_iter().for_each(|(g, mut q8, mut q16, d, mut s, mut b)| {
            let mut row = QuantRow::default();
            for lane in 0..LANES.min(t - g * LANES) {
                let i = g * LANES + lane;
                row.quantize(&x[i * k..(i + 1) * k], act);
                if let Some(q) = q8.as_deref_mut() {
                    // Q8_0/Q8_1 codes are in −127..=127.
                    for (qi, quad) in row.q.chunks_exact(4).enumerate() {
                        for j in 0..4 {
                            q[(qi * LANES + lane) * 4 + j] = (quad[j] + 128) as u8;
                        }
                    }
                }
                if let Some(q) = q16.as_deref_mut() {
                    for (pi, pair) in row.q.chunks_exact(2).enumerate() {
                        q[(pi * LANES + lane) * 2] = pair[0];
                        q[(pi * LANES + lane) * 2 + 1] = pair[1];
                    }
                }
                for (ib, &v) in row.d.iter().enumerate() {
                    d[ib * LANES + lane] = v;
                }
                if let Some(s) = s.as_deref_mut() {
                    for (ib, &v) in row.s.iter().enumerate() {
                        s[ib * LANES + lane] = v;
                    }
                }
                if let Some(b) = b.as_deref_mut() {
                    // |Σ of 16 codes| ≤ 16·127: exact in i16.
                    for (pi, pair) in row.bsums.chunks_exact(2).enumerate() {
                        b[(pi * LANES + lane) * 2] = pair[0] as i16;
                        b[(pi * LANES + lane) * 2 + 1] = pair[1] as i16;
                    }
                }
            }
        });
        p
    }
}

/// A tile of stored rows in integer form, rows padded with zeros to a multiple of [`RB`].
#[derive(Default)]
pub(crate) struct IntTile {
    /// Rows, padded.
    rows: usize,
    /// Rows that are real (the rest are padding).
    valid: usize,
    /// How the block minimums enter.
    min: MinTerm,
    /// Values per row.
    k: usize,
    /// Values per block (32 or 256).
    block: usize,
    /// Super-blocks: `[row][k]`, codes × sub-scales.
    w: Vec<i16>,
    /// 32-value blocks: `[row][k]`, codes (all such types' codes fit in i8).
    w8: Vec<i8>,
    /// 32-value blocks: `[row][block]`, −128·Σ codes (the activations' +128, taken back).
    corr: Vec<i32>,
    /// `[row][block]`: block scale.
    d: Vec<f32>,
    /// `[row][block]`: 32-value blocks' offset `m`, or super-blocks' `dmin`.
    m: Vec<f32>,
    /// `[row][block][16]`: super-blocks' per-16 minimums.
    mins: Vec<i16>,
}

impl IntTile {
    /// Sizes the tile for `rows` stored rows of `k` values in blocks of `block`, zeroed.
    fn reset(&mut self, rows: usize, k: usize, block: usize, min: MinTerm) {
        let padded = rows.div_ceil(RB) * RB;
        let nb = k / block;
        (self.rows, self.valid, self.k, self.block, self.min) = (padded, rows, k, block, min);
        self.w.clear();
        self.w8.clear();
        self.corr.clear();
        if block == 256 {
            self.w.resize(padded * k, 0);
        } else {
            self.w8.resize(padded * k, 0);
            self.corr.resize(padded * nb, 0);
        }
        self.d.clear();
        self.d.resize(padded * nb, 0.0);
        self.m.clear();
        self.m.resize(padded * nb, 0.0);
        self.mins.clear();
        if block == 256 {
            self.mins.resize(padded * nb * 16, 0);
        }
    }
}

multiversion! {
    /// Unpacks rows of a 32-value block type (`row_bytes` each) into `tile`.
    fn small_unpack<K: SmallBlock>(bytes: &[u8], row_bytes: usize, tile: &mut IntTile) {
        let nb = row_bytes / K::BYTES;
        let k = nb * 32;
        tile.reset(bytes.len() / row_bytes, k, 32, if K::HAS_MIN { MinTerm::Offset } else { MinTerm::None });
        let mut s = Small::default();
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            for (b, blk) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(blk, &mut s);
                let mut sum = 0i32;
                for (o, &v) in tile.w8[r * k + b * 32..r * k + b * 32 + 32].iter_mut().zip(&s.w) {
                    // Every 32-value type's codes come from an i8 table or ≤ 5 bits
                    // (Q8_0's i8, Q4/Q5 nibbles, IQ4_NL/MXFP4 i8 levels).
                    debug_assert!((-128..=127).contains(&v));
                    *o = v as i8;
                    sum += v as i32;
                }
                tile.corr[r * nb + b] = -128 * sum;
                tile.d[r * nb + b] = s.d;
                tile.m[r * nb + b] = s.m;
            }
        }
    }
}

multiversion! {
    /// Unpacks rows of a super-block type (`row_bytes` each) into `tile`.
    fn super_unpack<K: SuperBlock>(bytes: &[u8], row_bytes: usize, tile: &mut IntTile) {
        let nb = row_bytes / K::BYTES;
        let k = nb * 256;
        tile.reset(bytes.len() / row_bytes, k, 256, if K::HAS_MIN { MinTerm::Mins } else { MinTerm::None });
        let mut s = Super::default();
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            for (b, blk) in row.chunks_exact(K::BYTES).enumerate() {
                K::unpack::<S>(blk, &mut s);
                tile.w[r * k + b * 256..r * k + b * 256 + 256].copy_from_slice(&s.w);
                tile.d[r * nb + b] = s.d;
                tile.m[r * nb + b] = s.dmin;
                tile.mins[(r * nb + b) * 16..(r * nb + b) * 16 + 16].copy_from_slice(&s.mins);
            }
        }
    }
}

/// `out[token][r0 + row] = Σ` over the tile's real rows × every panel's real tokens
/// (`t`), row stride `n`.
///
/// # Safety
/// `out` must point to `t × n` f32 values that no one else reads or writes while this
/// runs, except outside columns `r0..r0 + tile.valid`.
pub(crate) unsafe fn multiply(
    level: Level,
    tile: &IntTile,
    panels: &Panels,
    t: usize,
    n: usize,
    r0: usize,
    out: *mut f32,
) {
    let (valid, min) = (tile.valid, tile.min);
    assert_eq!(tile.k, panels.k, "tile and panels differ in width");
    assert_eq!(tile.block, panels.block, "tile and panels differ in block size");
    assert!(valid <= tile.rows && panels.groups * LANES >= t);
    let nb = tile.k / tile.block;
    let gq = tile.k * LANES;
    let gd = nb * LANES;
    for g in 0..panels.groups {
        let view = PanelView {
            q8: if panels.q8.is_empty() { &[] } else { &panels.q8[g * gq..(g + 1) * gq] },
            q16: if panels.q16.is_empty() { &[] } else { &panels.q16[g * gq..(g + 1) * gq] },
            d: &panels.d[g * gd..(g + 1) * gd],
            s: if panels.s.is_empty() { &[] } else { &panels.s[g * gd..(g + 1) * gd] },
            bsum: if panels.bsum.is_empty() { &[] } else { &panels.bsum[g * gd * 16..(g + 1) * gd * 16] },
        };
        for rg in (0..valid).step_by(RB) {
            let rows = TileRows {
                w: if tile.w.is_empty() { &[] } else { &tile.w[rg * tile.k..(rg + RB) * tile.k] },
                w8: if tile.w8.is_empty() { &[] } else { &tile.w8[rg * tile.k..(rg + RB) * tile.k] },
                corr: if tile.corr.is_empty() { &[] } else { &tile.corr[rg * nb..(rg + RB) * nb] },
                d: &tile.d[rg * nb..(rg + RB) * nb],
                m: &tile.m[rg * nb..(rg + RB) * nb],
                mins: if tile.mins.is_empty() { &[] } else { &tile.mins[rg * nb * 16..(rg + RB) * nb * 16] },
                k: tile.k,
                nb,
            };
            let mut acc = [[0f32; LANES]; RB];
            micro(level, &rows, &view, min, &mut acc);
            for lane in 0..LANES.min(t - g * LANES) {
                let tok = g * LANES + lane;
                for r in 0..RB.min(valid - rg) {
                    // SAFETY: tok < t and r0 + rg + r < r0 + valid ≤ n (the caller's
                    // columns), so the element is inside `out` and this call's own.
                    unsafe { *out.add(tok * n + r0 + rg + r) = acc[r][lane] };
                }
            }
        }
    }
}

/// One panel's activations.
struct PanelView<'a> {
    q8: &'a [u8],
    q16: &'a [i16],
    d: &'a [f32],
    s: &'a [f32],
    bsum: &'a [i16],
}

/// [`RB`] stored rows in integer form.
struct TileRows<'a> {
    w: &'a [i16],
    w8: &'a [i8],
    corr: &'a [i32],
    d: &'a [f32],
    m: &'a [f32],
    mins: &'a [i16],
    k: usize,
    nb: usize,
}

/// `acc[r][lane]` = row `r` · token `lane`, by the level's microkernel.
fn micro(level: Level, w: &TileRows, x: &PanelView, min: MinTerm, acc: &mut [[f32; LANES]; RB]) {
    let block = w.k / w.nb;
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        // SAFETY: `Level::Avx512` is reported only where the CPU has AVX-512 F/BW/VNNI
        // (`Level::supported`); the kernel reads only inside the slices (asserted there).
        return unsafe {
            match block {
                32 => micro_avx512::<32>(w, x, min, acc),
                _ => micro_avx512::<256>(w, x, min, acc),
            }
        };
    }
    let _ = level;
    match block {
        32 => micro_portable::<32>(w, x, min, acc),
        _ => micro_portable::<256>(w, x, min, acc),
    }
}

/// The portable microkernel (`BL`-value blocks): the same integer sums and the same float
/// steps as [`micro_avx512`], lane by lane.
#[inline(always)]
fn micro_portable<const BL: usize>(w: &TileRows, x: &PanelView, min: MinTerm, out: &mut [[f32; LANES]; RB]) {
    let (k, nb) = (w.k, w.nb);
    for b in 0..nb {
        let mut acc = [[0i32; LANES]; RB];
        if BL == 32 {
            // Bytes in quads: Σ (q + 128)·w − 128·Σ w.
            for r in 0..RB {
                acc[r] = [w.corr[r * nb + b]; LANES];
            }
            for qd in 0..8 {
                let a = &x.q8[(b * 8 + qd) * 4 * LANES..(b * 8 + qd + 1) * 4 * LANES];
                for r in 0..RB {
                    let w4 = &w.w8[r * k + b * 32 + 4 * qd..r * k + b * 32 + 4 * qd + 4];
                    for l in 0..LANES {
                        for j in 0..4 {
                            acc[r][l] += a[4 * l + j] as i32 * w4[j] as i32;
                        }
                    }
                }
            }
        } else {
            for p in 0..BL / 2 {
                let a = &x.q16[(b * BL / 2 + p) * 2 * LANES..(b * BL / 2 + p + 1) * 2 * LANES];
                for r in 0..RB {
                    let (w0, w1) = (w.w[r * k + b * BL + 2 * p] as i32, w.w[r * k + b * BL + 2 * p + 1] as i32);
                    for l in 0..LANES {
                        acc[r][l] += w0 * a[2 * l] as i32 + w1 * a[2 * l + 1] as i32;
                    }
                }
            }
        }
        let dx = &x.d[b * LANES..(b + 1) * LANES];
        for r in 0..RB {
            let d = w.d[r * nb + b];
            for l in 0..LANES {
                out[r][l] += acc[r][l] as f32 * (dx[l] * d);
            }
        }
        match min {
            MinTerm::None => {}
            MinTerm::Offset => {
                let s = &x.s[b * LANES..(b + 1) * LANES];
                for r in 0..RB {
                    let m = w.m[r * nb + b];
                    for l in 0..LANES {
                        out[r][l] += s[l] * m;
                    }
                }
            }
            MinTerm::Mins => {
                let mut acc = [[0i32; LANES]; RB];
                for p in 0..8 {
                    let a = &x.bsum[(b * 8 + p) * 2 * LANES..(b * 8 + p + 1) * 2 * LANES];
                    for r in 0..RB {
                        let mm = &w.mins[(r * nb + b) * 16 + 2 * p..];
                        let (m0, m1) = (mm[0] as i32, mm[1] as i32);
                        for l in 0..LANES {
                            acc[r][l] += m0 * a[2 * l] as i32 + m1 * a[2 * l + 1] as i32;
                        }
                    }
                }
                for r in 0..RB {
                    let dmin = w.m[r * nb + b];
                    for l in 0..LANES {
                        out[r][l] -= acc[r][l] as f32 * (dx[l] * dmin);
                    }
                }
            }
        }
    }
}

/// The AVX-512 VNNI microkernel. 32-value blocks: per block 8 × [`RB`] `vpdpbusd` (a
/// panel register of unsigned activation quads times one broadcast quad of signed
/// codes; 64 multiply-adds each), the accumulators starting from −128·Σ codes;
/// super-blocks: 128 × [`RB`] `vpdpwssd` on i16 pairs. Then the scaling.
///
/// # Safety
/// The CPU must have AVX-512 F/BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_avx512<const BL: usize>(w: &TileRows, x: &PanelView, min: MinTerm, out: &mut [[f32; LANES]; RB]) {
    use std::arch::x86_64::*;
    let (k, nb) = (w.k, w.nb);
    assert!(k == nb * BL && w.d.len() >= RB * nb && w.m.len() >= RB * nb && x.d.len() >= nb * LANES);
    if BL == 32 {
        assert!(w.w8.len() >= RB * k && w.corr.len() >= RB * nb && x.q8.len() >= k * LANES);
    } else {
        assert!(w.w.len() >= RB * k && x.q16.len() >= k * LANES);
    }
    match min {
        MinTerm::None => {}
        MinTerm::Offset => assert!(x.s.len() >= nb * LANES),
        MinTerm::Mins => assert!(x.bsum.len() >= nb * 16 * LANES && w.mins.len() >= RB * nb * 16),
    }
    // SAFETY: every pointer below is offset inside the slice it comes from, by the
    // lengths asserted above: code quads at r·k + b·32 + 4qd + 3 < RB·k and panel quads
    // at (b·8 + qd + 1)·64 ≤ k·16 bytes; i16 pairs at r·k + b·256 + 2p + 1 < RB·k and panel
    // pairs at (b·128 + p + 1)·32 ≤ k·16; scales at b·LANES + 16 ≤ nb·LANES; bsum pairs at
    // (b·8 + p + 1)·32 ≤ nb·256; minimum pairs at (r·nb + b)·16 + 2p + 1 < RB·nb·16; the
    // CPU features are the caller's promise.
    unsafe {
        let dp = x.d.as_ptr();
        let word = |ptr: *const i32| _mm512_set1_epi32(ptr.read_unaligned());
        let mut o = [_mm512_setzero_ps(); RB];
        for b in 0..nb {
            let mut acc = [_mm512_setzero_si512(); RB];
            if BL == 32 {
                let (wp, qp) = (w.w8.as_ptr(), x.q8.as_ptr());
                for r in 0..RB {
                    acc[r] = _mm512_set1_epi32(w.corr[r * nb + b]);
                }
                for qd in 0..8 {
                    let a = _mm512_loadu_si512(qp.add((b * 8 + qd) * 4 * LANES).cast());
                    for r in 0..RB {
                        acc[r] = _mm512_dpbusd_epi32(acc[r], a, word(wp.add(r * k + b * 32 + 4 * qd).cast()));
                    }
                }
            } else {
                let (wp, qp) = (w.w.as_ptr(), x.q16.as_ptr());
                for p in 0..BL / 2 {
                    let a = _mm512_loadu_si512(qp.add((b * BL / 2 + p) * 2 * LANES).cast());
                    for r in 0..RB {
                        acc[r] = _mm512_dpwssd_epi32(acc[r], a, word(wp.add(r * k + b * BL + 2 * p).cast()));
                    }
                }
            }
            let dx = _mm512_loadu_ps(dp.add(b * LANES));
            for r in 0..RB {
                let sc = _mm512_mul_ps(dx, _mm512_set1_ps(w.d[r * nb + b]));
                o[r] = _mm512_add_ps(o[r], _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r]), sc));
            }
            match min {
                MinTerm::None => {}
                MinTerm::Offset => {
                    let s = _mm512_loadu_ps(x.s.as_ptr().add(b * LANES));
                    for r in 0..RB {
                        o[r] = _mm512_add_ps(o[r], _mm512_mul_ps(s, _mm512_set1_ps(w.m[r * nb + b])));
                    }
                }
                MinTerm::Mins => {
                    let mut acc = [_mm512_setzero_si512(); RB];
                    for p in 0..8 {
                        let a = _mm512_loadu_si512(x.bsum.as_ptr().add((b * 8 + p) * 2 * LANES).cast());
                        for r in 0..RB {
                            acc[r] = _mm512_dpwssd_epi32(
                                acc[r],
                                a,
                                word(w.mins.as_ptr().add((r * nb + b) * 16 + 2 * p).cast()),
                            );
                        }
                    }
                    for r in 0..RB {
                        let sc = _mm512_mul_ps(dx, _mm512_set1_ps(w.m[r * nb + b]));
                        o[r] = _mm512_sub_ps(o[r], _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r]), sc));
                    }
                }
            }
        }
        for r in 0..RB {
            _mm512_storeu_ps(out[r].as_mut_ptr(), o[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::activation::vec_dot_type;
    use crate::format::encode::encodable_types;
    use crate::kernels::{PackedMatrix, WeightBytes};
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_level_computes_the_same_bits() {
        let (rows, k, t) = (13, 512, 21);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let w: Vec<f32> = (0..rows * k).map(|_| rng.random::<f32>() - 0.5).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
        let mut tested = 0;
        for ty in encodable_types() {
            let (Some(kern), Some(act)) = (ty.facts().kernel, vec_dot_type(ty)) else { continue };
            if !kern.tiles_with(act) {
                continue;
            }
            let st = crate::format::storage::StorageType::Ggml(ty);
            let bytes = crate::format::storage::encode_rows(st, &w, k, None, crate::format::encode::Fit::Rtn).unwrap();
            let m = PackedMatrix::new(st, WeightBytes::owned(bytes), None, rows, k).unwrap();
            let panels = Panels::new(&x, t, k, act);
            let mut tile = IntTile::default();
            let mut first: Option<Vec<f32>> = None;
            for level in Level::supported() {
                (kern.unpack)(level, &m.bytes, m.row_bytes, &mut tile);
                let mut out = vec![f32::NAN; t * rows];
                // SAFETY: `out` is t × rows, written only here.
                unsafe { multiply(level, &tile, &panels, t, rows, 0, out.as_mut_ptr()) };
                assert!(out.iter().all(|v| v.is_finite()), "{ty} {level:?}: an output was not written");
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(f == &out, "{ty} {level:?}: differs from the portable loop"),
                }
            }
            tested += 1;
        }
        assert!(tested >= 15, "only {tested} types took the integer tile path");
    }
}
