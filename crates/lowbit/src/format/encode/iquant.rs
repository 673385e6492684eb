//! Encoders for llama.cpp's lattice i-quants: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and
//! IQ1_S. A 256-value super-block has one f16 scale `d`; sub-blocks of 16 or 32 values have
//! a small odd-multiple sub-scale `D·(2c + 1)`; each group of 8 weights is a grid point
//! (one 8-vector, or two 4-vectors for IQ3) with its own signs (IQ1_S: no signs, a shared
//! ±1/8 shift instead).
//!
//! The encoder, for every format:
//! 1. signs from the weights; where the format stores only 7 sign bits (the eighth is
//!    their parity), an odd group flips the sign of its cheapest value, and that value's
//!    target becomes −|x| (llama.cpp keeps +|x| there, which misjudges that value's error);
//! 2. per sub-block, a scale search: for each trial scale every group takes its
//!    weighted-nearest grid point ([`Grid::nearest`]), then the scale is refitted by
//!    weighted least squares for those points; the best trial wins;
//! 3. `D` and the sub-scale codes `c` by weighted least squares over the sub-blocks
//!    (weights: each sub-block's Σ w·g², the curvature of its error in the scale);
//! 4. every group re-chooses its grid point under the sub-scale as stored.

use super::lattice::{iq1s_grid, iq2s_grid, iq2xs_grid, iq2xxs_grid, iq3s_grid, iq3xxs_grid, Grid};
use super::{magnitude_weight, put_f16, sum_of_squares, BlockInput};
use crate::format::encode::Fit;
use crate::format::iquant::IQ1S_DELTA;
use crate::format::QK_K;

/// What distinguishes one lattice format from another, for the shared encoder.
#[derive(Clone, Copy)]
pub(crate) struct LatticeFormat {
    /// The grid.
    pub grid: fn() -> &'static Grid,
    /// Values sharing one sub-scale (16 or 32).
    pub scale_group: usize,
    /// Only 7 sign bits per 8 values are stored (the eighth makes the count even).
    pub parity_signs: bool,
    /// Signs are stored at all (IQ1 has none: its grid is signed).
    pub signed_grid: bool,
    /// Largest sub-scale code.
    pub max_code: u8,
    /// Sub-scale of code c is `d · unit · (2c + 1)`.
    pub unit: f32,
    /// IQ1_M: every 8 values choose their own shift (IQ1_S: one per 32).
    pub shift_per_vector: bool,
    /// Writes a chosen block in the type's byte layout.
    pub pack: fn(&LatticeBlock, &mut [u8]),
}

/// IQ2_XXS: 256-point grid, 7 sign bits, 4-bit scale per 32; d·(0.5 + c)·0.25.
pub(crate) const IQ2_XXS: LatticeFormat = LatticeFormat {
    grid: iq2xxs_grid,
    scale_group: 32,
    parity_signs: true,
    signed_grid: false,
    max_code: 15,
    unit: 0.125,
    shift_per_vector: false,
    pack: pack_iq2_xxs,
};
/// IQ2_XS: 512-point grid, 7 sign bits, 4-bit scale per 16.
pub(crate) const IQ2_XS: LatticeFormat =
    LatticeFormat { grid: iq2xs_grid, scale_group: 16, pack: pack_iq2_xs, ..IQ2_XXS };
/// IQ2_S: 1024-point grid, 8 sign bits, 4-bit scale per 16.
pub(crate) const IQ2_S: LatticeFormat =
    LatticeFormat { grid: iq2s_grid, scale_group: 16, parity_signs: false, pack: pack_iq2_s, ..IQ2_XXS };
/// IQ3_XXS: 256 4-vectors, 7 sign bits per 8, 4-bit scale per 32; d·(0.5 + c)·0.5.
pub(crate) const IQ3_XXS: LatticeFormat =
    LatticeFormat { grid: iq3xxs_grid, unit: 0.25, pack: pack_iq3_xxs, ..IQ2_XXS };
/// IQ3_S: 512 4-vectors, 8 sign bits, 4-bit scale per 32; d·(1 + 2c).
pub(crate) const IQ3_S: LatticeFormat =
    LatticeFormat { grid: iq3s_grid, parity_signs: false, unit: 1.0, pack: pack_iq3_s, ..IQ2_XXS };
/// IQ1_S: 2048 signed 8-vectors, 3-bit scale and a ±1/8 shift per 32; d·(2c + 1).
pub(crate) const IQ1_S: LatticeFormat = LatticeFormat {
    grid: iq1s_grid,
    scale_group: 32,
    parity_signs: false,
    signed_grid: true,
    max_code: 7,
    unit: 1.0,
    shift_per_vector: false,
    pack: pack_iq1_s,
};
/// IQ1_M: 2048 signed 8-vectors, 3-bit scale per 16, a ±1/8 shift per 8.
pub(crate) const IQ1_M: LatticeFormat =
    LatticeFormat { scale_group: 16, shift_per_vector: true, pack: pack_iq1_m, ..IQ1_S };

/// The chosen representation of one 256-value block, before packing.
pub(crate) struct LatticeBlock {
    /// Stored f16 super-scale.
    pub d: f32,
    /// Sub-scale code per scale group.
    pub codes: Vec<u8>,
    /// Grid index per grid vector (8 or 4 values).
    pub points: [u16; 64],
    /// Sign bits per 8 values (bit j set: value j negative).
    pub signs: [u8; 32],
    /// IQ1: the shift of each 8 values is −1/8 (else +1/8).
    pub negative_shift: [bool; 32],
}

/// Signs of 8 values and the magnitudes the grid must approximate. With `parity`, an odd
/// count of negatives flips the sign of the value cheapest to get wrong (smallest w·x²),
/// whose target becomes −|x|.
fn signs_and_targets(x: &[f32], w: &[f32], parity: bool, t: &mut [f32]) -> u8 {
    let mut s = 0u8;
    for j in 0..8 {
        t[j] = x[j].abs();
        if x[j] < 0.0 {
            s |= 1 << j;
        }
    }
    if parity && s.count_ones() % 2 == 1 {
        let j = (0..8).min_by(|&a, &b| (w[a] * x[a] * x[a]).total_cmp(&(w[b] * x[b] * x[b]))).unwrap_or(0);
        s ^= 1 << j;
        t[j] = -t[j];
    }
    s
}

/// Picks the grid point of every `grid.dim` targets at `scale`; returns Σ w·t·g, Σ w·g²
/// and the total weighted error.
fn assign(grid: &Grid, t: &[f32], w: &[f32], scale: f32, points: &mut [u16]) -> (f32, f32, f32) {
    let (mut tg, mut gg, mut err) = (0.0f32, 0.0f32, 0.0f32);
    for ((tv, wv), p) in t.chunks_exact(grid.dim).zip(w.chunks_exact(grid.dim)).zip(points.iter_mut()) {
        let (i, e) = grid.nearest(tv, wv, scale);
        *p = i as u16;
        err += e;
        for ((&g, &ti), &wi) in grid.point(i).iter().zip(tv).zip(wv) {
            tg += wi * ti * g;
            gg += wi * g * g;
        }
    }
    (tg, gg, err)
}

/// The weighted-least-squares scale of one sub-block (targets `t`, weights `w`) and the
/// curvature Σ w·g² of its error at that scale. Trial scales span 0.7–1.4 of "largest
/// target on the largest level"; each is refitted for the points it chose.
fn fit_sub_scale(grid: &Grid, t: &[f32], w: &[f32], fit: Fit, points: &mut [u16]) -> (f32, f32) {
    let max = t.iter().copied().fold(0.0f32, f32::max);
    if max <= 0.0 {
        return (0.0, 0.0);
    }
    let base = max / grid.max_level();
    let trials: &[f32] = match fit {
        Fit::Rtn => &[1.0],
        Fit::Search => &[0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4],
    };
    let mut best = (f32::INFINITY, 0.0f32, 0.0f32);
    let mut trial_points = vec![0u16; points.len()];
    for &k in trials {
        let (tg, gg, _) = assign(grid, t, w, base * k, &mut trial_points);
        if gg <= 0.0 || tg <= 0.0 {
            continue;
        }
        let s = tg / gg;
        let (_, gg2, err) = assign(grid, t, w, s, &mut trial_points);
        if err < best.0 {
            best = (err, s, gg2);
            points.copy_from_slice(&trial_points);
        }
    }
    (best.1, best.2)
}

/// Chooses D and codes c ∈ [0, max_code] with sᵢ ≈ D·(2cᵢ + 1), minimising
/// Σ aᵢ (sᵢ − D(2cᵢ + 1))² over a few trial D refitted by least squares.
fn fit_odd_scales(s: &[f32], a: &[f32], max_code: u8, codes: &mut [u8]) -> f32 {
    let max = s.iter().copied().fold(0.0f32, f32::max);
    if max <= 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let top = (2 * max_code as i32 + 1) as f32;
    let quantize = |dd: f32, c: &mut [u8]| {
        let (mut num, mut den) = (0.0f32, 0.0f32);
        for ((ci, &si), &ai) in c.iter_mut().zip(s).zip(a) {
            *ci = (((si / dd - 1.0) * 0.5).round()).clamp(0.0, max_code as f32) as u8;
            let m = (2 * *ci as i32 + 1) as f32;
            num += ai * si * m;
            den += ai * m * m;
        }
        if den > 0.0 {
            num / den
        } else {
            dd
        }
    };
    let error = |dd: f32, c: &[u8]| -> f32 {
        c.iter().zip(s).zip(a).map(|((&ci, &si), &ai)| ai * (si - dd * (2 * ci as i32 + 1) as f32).powi(2)).sum()
    };
    let mut best = (f32::INFINITY, max / top);
    let mut c = vec![0u8; s.len()];
    for step in 0..8 {
        let dd = max / (top - 0.25 * step as f32);
        let refit = quantize(dd, &mut c);
        let e = error(refit, &c);
        if e < best.0 {
            best = (e, refit);
        }
    }
    quantize(best.1, codes);
    best.1
}

/// Chooses d, the sub-scale codes and every group's grid point of one 256-value block
/// (without packing).
pub(crate) fn fit_lattice(fmt: &LatticeFormat, b: &BlockInput) -> LatticeBlock {
    let grid = (fmt.grid)();
    let x = b.x;
    let sigma2 = 2.0 * sum_of_squares(x) / QK_K as f32;
    let mut w = [0.0f32; QK_K];
    b.weights(0..QK_K, sigma2, &mut w, magnitude_weight(sigma2));
    let mut block = LatticeBlock {
        d: 0.0,
        codes: vec![0; QK_K / fmt.scale_group],
        points: [0; 64],
        signs: [0; 32],
        negative_shift: [false; 32],
    };
    let vectors_per_scale = fmt.scale_group / grid.dim;
    if fmt.signed_grid {
        return encode_shifted(fmt, grid, x, &w, b.fit, block);
    }
    let mut t = [0.0f32; QK_K];
    for g in 0..QK_K / 8 {
        let r = 8 * g..8 * g + 8;
        block.signs[g] = signs_and_targets(&x[r.clone()], &w[r.clone()], fmt.parity_signs, &mut t[r]);
    }
    let n_scales = QK_K / fmt.scale_group;
    let (mut s, mut a) = (vec![0.0f32; n_scales], vec![0.0f32; n_scales]);
    for j in 0..n_scales {
        let r = fmt.scale_group * j..fmt.scale_group * (j + 1);
        let p = &mut block.points[vectors_per_scale * j..vectors_per_scale * (j + 1)];
        (s[j], a[j]) = fit_sub_scale(grid, &t[r.clone()], &w[r], b.fit, p);
    }
    let dd = fit_odd_scales(&s, &a, fmt.max_code, &mut block.codes);
    block.d = half::f16::from_f32(dd / fmt.unit).to_f32();
    requantize_all(fmt, &mut block, x, &w);
    if b.fit == Fit::Search {
        refit_super_scale(fmt, &mut block, x, &w);
    }
    block
}

/// The sub-scale as stored for the 8 values of group `g`.
fn group_scale(fmt: &LatticeFormat, block: &LatticeBlock, g: usize) -> f32 {
    block.d * fmt.unit * (2 * block.codes[8 * g / fmt.scale_group] as i32 + 1) as f32
}

/// The block's weighted error and its least-squares super-scale for the codes as chosen:
/// every value is d·a with a = unit·(2c + 1)·(±g), so d* = Σ w·x·a / Σ w·a².
fn block_fit(fmt: &LatticeFormat, block: &LatticeBlock, x: &[f32], w: &[f32]) -> (f32, f32) {
    let grid = (fmt.grid)();
    let per = 8 / grid.dim;
    let (mut xa, mut aa) = (0.0f32, 0.0f32);
    let (mut err, d) = (0.0f32, block.d);
    for g in 0..QK_K / 8 {
        let m = fmt.unit * (2 * block.codes[8 * g / fmt.scale_group] as i32 + 1) as f32;
        for k in 0..per {
            let p = grid.point(block.points[per * g + k] as usize);
            for (jj, &gv) in p.iter().enumerate() {
                let j = grid.dim * k + jj;
                let i = 8 * g + j;
                let a = if block.signs[g] & (1 << j) != 0 { -m * gv } else { m * gv };
                xa += w[i] * x[i] * a;
                aa += w[i] * a * a;
                err += w[i] * (x[i] - d * a) * (x[i] - d * a);
            }
        }
    }
    (err, if aa > 0.0 { xa / aa } else { d })
}

/// After the codes are chosen: refit d by least squares for them, store it as f16,
/// re-choose the codes under it, and keep the result only if the weighted error fell.
fn refit_super_scale(fmt: &LatticeFormat, block: &mut LatticeBlock, x: &[f32], w: &[f32]) {
    if block.d <= 0.0 {
        return;
    }
    let (before, d_star) = block_fit(fmt, block, x, w);
    let d_new = half::f16::from_f32(d_star).to_f32();
    if d_new.is_nan() || d_new <= 0.0 || d_new == block.d {
        return;
    }
    let saved = (block.d, block.points, block.signs);
    block.d = d_new;
    requantize_all(fmt, block, x, w);
    let (after, _) = block_fit(fmt, block, x, w);
    if after >= before {
        (block.d, block.points, block.signs) = saved;
    }
}

/// Re-chooses every group's signs and grid point (IQ1: and shift) under the stored scales.
fn requantize_all(fmt: &LatticeFormat, block: &mut LatticeBlock, x: &[f32], w: &[f32]) {
    if block.d > 0.0 {
        for g in 0..QK_K / 8 {
            requantize_group(fmt, block, g, &x[8 * g..8 * g + 8], &w[8 * g..8 * g + 8]);
        }
    }
}

/// Chooses the signs and grid point(s) of group `g` (8 values `x`, error weights `w`)
/// under the block's stored scales (IQ1_M: and the group's shift; IQ1_S keeps the
/// sub-block's), records them in `block` and returns the 8 values as they will decode.
/// The step GPTQ's sweep takes at each group with the weights updated so far.
pub(crate) fn requantize_group(
    fmt: &LatticeFormat,
    block: &mut LatticeBlock,
    g: usize,
    x: &[f32],
    w: &[f32],
) -> [f32; 8] {
    let grid = (fmt.grid)();
    let scale = group_scale(fmt, block, g);
    let mut y = [0.0f32; 8];
    if scale <= 0.0 {
        return y;
    }
    if fmt.signed_grid {
        let options: &[bool] =
            if fmt.shift_per_vector { &[false, true] } else { std::slice::from_ref(&block.negative_shift[g]) };
        let (i, _, neg) = nearest_shifted(grid, x, w, scale, options);
        (block.points[g], block.negative_shift[g]) = (i as u16, neg);
        for (yi, &p) in y.iter_mut().zip(grid.point(i)) {
            *yi = scale * (p + shift(neg));
        }
        return y;
    }
    let mut t = [0.0f32; 8];
    // With parity-constrained signs and an odd count of negatives, one value must take the
    // wrong sign: try the three cheapest (by w·x²) and keep the one the grid fits best.
    let natural = (0..8).fold(0u8, |s, j| if x[j] < 0.0 { s | (1 << j) } else { s });
    let flips: Vec<Option<usize>> = if fmt.parity_signs && natural.count_ones() % 2 == 1 {
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| (w[a] * x[a] * x[a]).total_cmp(&(w[b] * x[b] * x[b])).then(a.cmp(&b)));
        order.into_iter().take(3).map(Some).collect()
    } else {
        vec![None]
    };
    let per = 8 / grid.dim;
    let mut best = (f32::INFINITY, 0u8, [0u16; 2]);
    for flip in flips {
        for j in 0..8 {
            t[j] = x[j].abs();
        }
        let mut signs = natural;
        if let Some(j) = flip {
            signs ^= 1 << j;
            t[j] = -t[j];
        }
        let (mut err, mut pts) = (0.0f32, [0u16; 2]);
        for (k, p) in pts.iter_mut().enumerate().take(per) {
            let r = grid.dim * k..grid.dim * (k + 1);
            let (i, e) = grid.nearest(&t[r.clone()], &w[r], scale);
            *p = i as u16;
            err += e;
        }
        if err < best.0 {
            best = (err, signs, pts);
        }
    }
    let (_, signs, pts) = best;
    block.signs[g] = signs;
    for (k, &i) in pts.iter().enumerate().take(per) {
        block.points[per * g + k] = i;
        for (j, &p) in (grid.dim * k..grid.dim * (k + 1)).zip(grid.point(i as usize)) {
            y[j] = if signs & (1 << j) != 0 { -scale * p } else { scale * p };
        }
    }
    y
}

/// The IQ1 grid shift: −1/8 when `negative`, else +1/8.
fn shift(negative: bool) -> f32 {
    if negative {
        -IQ1S_DELTA
    } else {
        IQ1S_DELTA
    }
}

/// For 8 values x ≈ scale·(g + δ): the grid point and shift (among `options`, true =
/// negative) with the least weighted error, as (point, error, negative).
fn nearest_shifted(grid: &Grid, x: &[f32], w: &[f32], scale: f32, options: &[bool]) -> (usize, f32, bool) {
    let mut t = [0.0f32; 8];
    let mut best = (0usize, f32::INFINITY, options[0]);
    for &neg in options {
        let delta = shift(neg);
        for (ti, &xi) in t.iter_mut().zip(x) {
            *ti = xi - scale * delta;
        }
        let (i, e) = grid.nearest(&t, w, scale);
        if e < best.1 {
            best = (i, e, neg);
        }
    }
    best
}

/// Picks, for values x ≈ scale·(g + δ), each vector's grid point and (with
/// `per_vector`) its shift δ = ±1/8; without, every vector takes `shift[0]`. Then refits
/// the scale by least squares; returns (scale, Σ w·(g + δ)², error at that scale).
fn assign_shifted(
    grid: &Grid,
    xs: &[f32],
    ws: &[f32],
    scale: f32,
    per_vector: bool,
    shifts: &mut [bool],
    points: &mut [u16],
) -> (f32, f32, f32) {
    let (mut num, mut den) = (0.0f32, 0.0f32);
    for (k, (xv, wv)) in xs.chunks_exact(8).zip(ws.chunks_exact(8)).enumerate() {
        let options: &[bool] = if per_vector { &[false, true] } else { std::slice::from_ref(&shifts[0]) };
        let (i, _, neg) = nearest_shifted(grid, xv, wv, scale, options);
        points[k] = i as u16;
        if per_vector {
            shifts[k] = neg;
        }
        let delta = shift(neg);
        for ((&g, &xi), &wi) in grid.point(i).iter().zip(xv).zip(wv) {
            num += wi * xi * (g + delta);
            den += wi * (g + delta) * (g + delta);
        }
    }
    let s = if den > 0.0 { num / den } else { 0.0 };
    let mut err = 0.0f32;
    for (k, (xv, wv)) in xs.chunks_exact(8).zip(ws.chunks_exact(8)).enumerate() {
        let delta = shift(if per_vector { shifts[k] } else { shifts[0] });
        for ((&g, &xi), &wi) in grid.point(points[k] as usize).iter().zip(xv).zip(wv) {
            let r = xi - s * (g + delta);
            err += wi * r * r;
        }
    }
    (s, den, err)
}

/// IQ1_S / IQ1_M: no signs; values are d·(2c + 1)·(g ± 1/8), one shift per 32 values
/// (IQ1_S, both tried at every trial scale) or per 8 (IQ1_M, chosen with the point).
fn encode_shifted(
    fmt: &LatticeFormat,
    grid: &Grid,
    x: &[f32],
    w: &[f32],
    fit: Fit,
    mut block: LatticeBlock,
) -> LatticeBlock {
    let per_vector = fmt.shift_per_vector;
    let n_scales = QK_K / fmt.scale_group;
    let nv = fmt.scale_group / 8;
    let (mut s, mut a) = (vec![0.0f32; n_scales], vec![0.0f32; n_scales]);
    let (mut shifts, mut points) = ([false; 4], [0u16; 4]);
    for j in 0..n_scales {
        let r = fmt.scale_group * j..fmt.scale_group * (j + 1);
        let (xs, ws) = (&x[r.clone()], &w[r]);
        let max = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut best = (f32::INFINITY, 0.0f32, 0.0f32);
        if max > 0.0 {
            let trials: &[f32] = match fit {
                Fit::Rtn => &[1.0],
                Fit::Search => &[0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25],
            };
            let shift_options: &[bool] = if per_vector { &[false] } else { &[false, true] };
            for &k in trials {
                for &neg in shift_options {
                    shifts[0] = neg;
                    let (sc, den, err) =
                        assign_shifted(grid, xs, ws, max * k, per_vector, &mut shifts[..nv], &mut points[..nv]);
                    if sc > 0.0 && err < best.0 {
                        best = (err, sc, den);
                        let chosen = if per_vector { shifts } else { [neg; 4] };
                        block.negative_shift[nv * j..nv * (j + 1)].copy_from_slice(&chosen[..nv]);
                    }
                }
            }
        }
        (s[j], a[j]) = (best.1, best.2);
    }
    let dd = fit_odd_scales(&s, &a, fmt.max_code, &mut block.codes);
    block.d = half::f16::from_f32(dd / fmt.unit).to_f32();
    requantize_all(fmt, &mut block, x, w);
    block
}

/// IQ2_XXS: f16 d; per 32 values two u32: four 8-bit grid indices, then 4×7 sign bits
/// and the 4-bit sub-scale.
fn pack_iq2_xxs(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    for ib in 0..8 {
        let (mut aux0, mut aux1) = (0u32, (q.codes[ib] as u32) << 28);
        for l in 0..4 {
            aux0 |= (q.points[4 * ib + l] as u32) << (8 * l);
            aux1 |= ((q.signs[4 * ib + l] & 127) as u32) << (7 * l);
        }
        out[2 + 8 * ib..6 + 8 * ib].copy_from_slice(&aux0.to_le_bytes());
        out[6 + 8 * ib..10 + 8 * ib].copy_from_slice(&aux1.to_le_bytes());
    }
}

/// IQ2_XS: f16 d; 32 u16 (9-bit grid index, 7 sign bits); 8 bytes of two 4-bit scales.
fn pack_iq2_xs(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    for g in 0..32 {
        let v = q.points[g] | (((q.signs[g] & 127) as u16) << 9);
        out[2 + 2 * g..4 + 2 * g].copy_from_slice(&v.to_le_bytes());
    }
    for ib in 0..8 {
        out[66 + ib] = q.codes[2 * ib] | (q.codes[2 * ib + 1] << 4);
    }
}

/// IQ2_S: f16 d; qs[32] low index bits, signs[32], qh[8] (two high index bits per group),
/// scales[8] (two 4-bit scales per 32).
fn pack_iq2_s(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    out[66..74].fill(0);
    for g in 0..32 {
        out[2 + g] = q.points[g] as u8;
        out[34 + g] = q.signs[g];
        out[66 + g / 4] |= ((q.points[g] >> 8) as u8 & 3) << (2 * (g % 4));
    }
    for ib in 0..8 {
        out[74 + ib] = q.codes[2 * ib] | (q.codes[2 * ib + 1] << 4);
    }
}

/// IQ3_XXS: f16 d; qs[64] 8-bit indices of 4-vectors; per 32 values a u32 of 4×7 sign
/// bits and the 4-bit sub-scale.
fn pack_iq3_xxs(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    for i in 0..64 {
        out[2 + i] = q.points[i] as u8;
    }
    for ib in 0..8 {
        let mut aux = (q.codes[ib] as u32) << 28;
        for l in 0..4 {
            aux |= ((q.signs[4 * ib + l] & 127) as u32) << (7 * l);
        }
        out[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&aux.to_le_bytes());
    }
}

/// IQ3_S: f16 d; qs[64] low index bits, qh[8] ninth bits, signs[32], scales[4].
fn pack_iq3_s(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    out[66..74].fill(0);
    for i in 0..64 {
        out[2 + i] = q.points[i] as u8;
        out[66 + i / 8] |= ((q.points[i] >> 8) as u8 & 1) << (i % 8);
    }
    out[74..106].copy_from_slice(&q.signs);
    for ib in 0..4 {
        out[106 + ib] = q.codes[2 * ib] | (q.codes[2 * ib + 1] << 4);
    }
}

/// IQ1_S: f16 d; qs[32] low index bits; per 32 values a u16 of 4×3 high index bits, the
/// 3-bit sub-scale and the shift's sign.
fn pack_iq1_s(q: &LatticeBlock, out: &mut [u8]) {
    put_f16(out, 0, q.d);
    for ib in 0..8 {
        let mut qh = ((q.codes[ib] as u16) << 12) | ((q.negative_shift[4 * ib] as u16) << 15);
        for l in 0..4 {
            let p = q.points[4 * ib + l];
            out[2 + 4 * ib + l] = p as u8;
            qh |= ((p >> 8) & 7) << (3 * l);
        }
        out[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&qh.to_le_bytes());
    }
}

/// IQ1_M: qs[32] low index bits; qh[16]: per 8 values 3 high index bits and the shift's
/// sign; scales: four u16 holding two 3-bit sub-scales per 32 values, and in their top
/// nibbles the bits of the f16 super-scale.
fn pack_iq1_m(q: &LatticeBlock, out: &mut [u8]) {
    let d_bits = half::f16::from_f32(q.d).to_bits();
    out[32..48].fill(0);
    for g in 0..32 {
        let p = q.points[g];
        out[g] = p as u8;
        let nibble = ((p >> 8) & 7) as u8 | ((q.negative_shift[g] as u8) << 3);
        out[32 + g / 2] |= nibble << (4 * (g % 2));
    }
    for k in 0..4 {
        let (c0, c1, c2, c3) = (q.codes[4 * k], q.codes[4 * k + 1], q.codes[4 * k + 2], q.codes[4 * k + 3]);
        let v = (c0 as u16)
            | ((c1 as u16) << 3)
            | ((c2 as u16) << 6)
            | ((c3 as u16) << 9)
            | (((d_bits >> (4 * k)) & 15) << 12);
        out[48 + 2 * k..50 + 2 * k].copy_from_slice(&v.to_le_bytes());
    }
}

/// Encodes one 256-value block of the lattice format `fmt`.
pub(crate) fn encode(fmt: &LatticeFormat, b: &BlockInput, out: &mut [u8]) {
    (fmt.pack)(&fit_lattice(fmt, b), out);
}
