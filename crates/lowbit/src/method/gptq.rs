//! GPTQ (Frantar et al., 2022) for every ggml block format lowbit encodes: the weights of
//! a linear layer are quantized one input column at a time, and each rounding error is
//! compensated by the columns not yet quantized, using the layer's input Hessian
//! H = XᵀX. What is minimised is the layer's output error ‖(W − Ŵ)Xᵀ‖², not the
//! weight error.
//!
//! Block formats fit in naturally: when the sweep reaches the first column of a block,
//! that block's scales (and minimums, sub-scales) are fitted by the importance-weighted
//! search of [`crate::format::encode`] on the weights *as updated so far*; then each of
//! its weights is rounded to the nearest value those scales can represent
//! ([`crate::format::encode::levels`]). The output is an ordinary block of the format,
//! which llama.cpp decodes as any other.
//!
//! Rows are independent given the Hessian, so they are processed in parallel, in tiles
//! of [`ROW_TILE`] rows that share each pass over the inverse-Hessian factor. The
//! result does not depend on the number of threads.

use faer::linalg::solvers::{DenseSolveCore, Solve};
use faer::{Mat, Side};
use rayon::prelude::*;

use crate::format::encode::levels::{block_levels, pack_codes, BlockLevels};
use crate::format::encode::Fit;
use crate::format::encode::{encode_block, sum_of_squares, BlockInput, EncodeError};
use crate::format::{GgmlType, Gptq};

/// Rows processed together against one pass over the inverse-Hessian factor.
const ROW_TILE: usize = 8;

/// Options of the GPTQ sweep.
#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// Dampening added to H's diagonal, as a fraction of its mean diagonal (GPTQ's
    /// `percdamp`, 0.01 by default): keeps the inverse well conditioned when the
    /// calibration data does not span every direction.
    pub damp: f64,
    /// Shrinkage of H's off-diagonal towards zero, 0…1: H' = (1 − s)·H + s·diag(H). The
    /// correlations between inputs are the part of H that depends most on the
    /// calibration text; the diagonal (the importance matrix) transfers better.
    pub shrink: f64,
    /// After the sweep, refit every block's float super-scales (d, dmin) for the chosen
    /// codes in closed form, minimising the row's output error under the regularised H
    /// (the layer-wise refinement of AdaQuant / decoupleQ, for the parameters a block
    /// format leaves free); kept per row only where the error drops.
    pub refine: bool,
}

impl Default for GptqOptions {
    /// damp 0.1, shrink 0.25. GPTQ's usual damp 0.01 fits the calibration text's
    /// correlations too closely: on smollm2-135m calibrated on the Austen text, GPTQ's
    /// layer output error on held-out Austen (mansfield-park.txt) was 0.30–0.54 of the
    /// importance-weighted search's, but on Wikipedia text 0.57–1.14 (worse than the
    /// search on some layers). With damp 0.1 and shrink 0.25: 0.32–0.57 and 0.52–0.96.
    fn default() -> Self {
        GptqOptions { damp: 0.1, shrink: 0.25, refine: true }
    }
}

/// Whether [`gptq_rows`] supports `ty`: every scalar block format lowbit writes and the
/// lattice i-quants.
pub fn supports(ty: GgmlType) -> bool {
    !matches!(ty.facts().gptq, Gptq::No)
}

/// What the sweep needs from the Hessian.
pub(crate) struct Factor {
    /// Upper Cholesky factor of the regularised H⁻¹, row-major.
    pub(crate) u: Vec<f32>,
    /// The regularised diagonal (importance of each column for the block fits).
    pub(crate) diag: Vec<f32>,
    /// The regularised H itself, row-major (for the refinement).
    pub(crate) regularised: Vec<f32>,
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) after dampening, as f32 row-major,
/// and the dampened diagonal. Columns never seen in calibration (zero diagonal) get a
/// unit diagonal, so that they decouple from the rest. If H is still not positive
/// definite (rounding, near-duplicate columns), the dampening grows tenfold, up to six
/// times.
pub(crate) fn inverse_factor(h: &[f32], n: usize, opts: &GptqOptions) -> Result<Factor, String> {
    let live: Vec<f64> = (0..n).map(|i| h[i * n + i] as f64).filter(|&d| d > 0.0).collect();
    let mean_diag = if live.is_empty() { 1.0 } else { live.iter().sum::<f64>() / live.len() as f64 };
    let mut damp = opts.damp.max(1e-8) * mean_diag;
    for _ in 0..6 {
        let hd = Mat::<f64>::from_fn(n, n, |i, j| {
            let v = h[i * n + j] as f64;
            match (i == j, h[i * n + i] > 0.0 && h[j * n + j] > 0.0) {
                (true, true) => v + damp,
                (true, false) => mean_diag + damp,
                (false, true) => v * (1.0 - opts.shrink),
                (false, false) => 0.0,
            }
        });
        let diag: Vec<f32> = (0..n).map(|i| hd[(i, i)] as f32).collect();
        let Ok(llt) = hd.llt(Side::Lower) else {
            damp *= 10.0;
            continue;
        };
        let inv = llt.inverse();
        let Ok(llt_inv) = inv.llt(Side::Lower) else {
            damp *= 10.0;
            continue;
        };
        // H⁻¹ = L Lᵀ, so U = Lᵀ: U[i][j] = L[j][i] for j ≥ i.
        let l = llt_inv.L();
        let mut u = vec![0.0f32; n * n];
        for i in 0..n {
            for j in i..n {
                u[i * n + j] = l[(j, i)] as f32;
            }
        }
        if u.iter().all(|v| v.is_finite()) {
            let regularised = (0..n * n).map(|k| hd[(k / n, k % n)] as f32).collect();
            return Ok(Factor { u, diag, regularised });
        }
        damp *= 10.0;
    }
    Err("the calibration Hessian is not positive definite even after dampening".into())
}

/// Quantizes the row-major matrix `w` (rows of `ncols`) to `ty` by GPTQ against the
/// input Hessian `h` (ncols × ncols, row-major, any positive scale: Σ xxᵀ or its mean).
/// Block scales are fitted with the diagonal of H as importance. Returns the encoded
/// rows, laid out as [`crate::format::encode::quantize_rows`] lays them out.
pub fn gptq_rows(ty: GgmlType, w: &[f32], ncols: usize, h: &[f32], opts: &GptqOptions) -> Result<Vec<u8>, EncodeError> {
    if !supports(ty) {
        return Err(EncodeError::NotEncodable(ty));
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if ncols == 0 || !ncols.is_multiple_of(bs) || !w.len().is_multiple_of(ncols) {
        return Err(EncodeError::PartialBlock { ty, n: ncols, block: bs });
    }
    let (factor, dead) = prepare(w, ncols, h, opts)?;
    let row_bytes = ncols / bs * ts;
    let mut out = vec![0u8; w.len() / ncols * row_bytes];
    out.par_chunks_mut(ROW_TILE * row_bytes).zip(w.par_chunks(ROW_TILE * ncols)).for_each(|(o, rows)| {
        sweep_tile(ty, rows, ncols, &factor, &dead, opts.refine, o);
    });
    Ok(out)
}

/// Checks a sweep's Hessian (ncols × ncols) and weights (finite), and returns the
/// inverse-Hessian factor and the dead columns (never active in calibration).
pub(crate) fn prepare(
    w: &[f32],
    ncols: usize,
    h: &[f32],
    opts: &GptqOptions,
) -> Result<(Factor, Vec<bool>), EncodeError> {
    if h.len() != ncols * ncols {
        return Err(EncodeError::ImportanceLength { got: h.len(), need: ncols * ncols });
    }
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFinite { index, value });
    }
    let factor = inverse_factor(h, ncols, opts).map_err(EncodeError::Hessian)?;
    let dead = (0..ncols).map(|i| h[i * ncols + i] <= 0.0).collect();
    Ok((factor, dead))
}

/// The sweep's working copy of a tile of rows (of `ncols`): dead columns zeroed.
pub(crate) fn working_copy(rows: &[f32], ncols: usize, dead: &[bool]) -> Vec<f32> {
    let mut work = rows.to_vec();
    for (i, &d) in dead.iter().enumerate() {
        if d {
            work.iter_mut().skip(i).step_by(ncols).for_each(|v| *v = 0.0);
        }
    }
    work
}

/// GPTQ's step for one weight: `row[0]` becomes `q`, and its error, divided by the
/// factor's diagonal (`inv_diag` = 1 / `u_row[0]`), is pushed through `u_row` onto the
/// columns after it.
#[inline]
pub(crate) fn compensate(row: &mut [f32], q: f32, u_row: &[f32], inv_diag: f32) {
    let err = (row[0] - q) * inv_diag;
    row[0] = q;
    for (x, &uk) in row[1..].iter_mut().zip(&u_row[1..]) {
        *x -= err * uk;
    }
}

/// The GPTQ sweep over one tile of rows (`rows`: up to [`ROW_TILE`] rows of `ncols`),
/// then the optional refinement of each row's super-scales.
fn sweep_tile(ty: GgmlType, rows: &[f32], ncols: usize, f: &Factor, dead: &[bool], refine: bool, out: &mut [u8]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let n_rows = rows.len() / ncols;
    let row_bytes = ncols / bs * ts;
    let sigma2: Vec<f32> = rows.chunks_exact(ncols).map(|r| sum_of_squares(r) / ncols as f32).collect();
    let mut work = working_copy(rows, ncols, dead);
    if let Gptq::Lattice(fmt) = ty.facts().gptq {
        lattice::sweep_tile(fmt, ty.type_size(), ncols, f, &sigma2, &mut work, out);
        return;
    }
    let n_blocks = ncols / bs;
    let mut levels: Vec<Vec<BlockLevels>> = vec![Vec::with_capacity(n_blocks); n_rows];
    let mut codes = vec![0u8; n_rows * ncols];
    for j in 0..ncols {
        let (block, pos) = (j / bs, j % bs);
        if pos == 0 {
            for r in 0..n_rows {
                let x = &work[r * ncols + j..r * ncols + j + bs];
                let b = BlockInput { x, importance: Some(&f.diag[j..j + bs]), row_sigma2: sigma2[r], fit: Fit::Search };
                let o = &mut out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                encode_block(ty, &b, o);
                levels[r].push(block_levels(ty, o).expect("supported types have levels"));
            }
        }
        let u_row = &f.u[j * ncols + j..(j + 1) * ncols];
        let inv_diag = 1.0 / u_row[0];
        for r in 0..n_rows {
            let row = &mut work[r * ncols + j..(r + 1) * ncols];
            let (c, q) = levels[r][block].nearest(pos, row[0]);
            codes[r * ncols + j] = c;
            compensate(row, q, u_row, inv_diag);
        }
        if pos == bs - 1 {
            for r in 0..n_rows {
                let o = &mut out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                pack_codes(ty, &codes[r * ncols + j + 1 - bs..r * ncols + j + 1], o);
            }
        }
    }
    if refine {
        for r in 0..n_rows {
            let w = &rows[r * ncols..(r + 1) * ncols];
            let o = &mut out[r * row_bytes..(r + 1) * row_bytes];
            refine_row(w, &codes[r * ncols..(r + 1) * ncols], &mut levels[r], &f.regularised, ts, o);
        }
    }
}

/// Refits the super-scales of one row's blocks for fixed codes: ŵ = A·θ with θ the
/// blocks' (d, dmin), minimise E(θ) = (w − Aθ)ᵀH(w − Aθ) by solving AᵀHA θ = AᵀHw, store
/// θ as f16 and keep it if E went down. E is evaluated from the same products:
/// E(θ) = wᵀHw − 2θᵀAᵀHw + θᵀAᵀHAθ (exact for any θ, including the rounded one).
fn refine_row(w: &[f32], codes: &[u8], levels: &mut [BlockLevels], h: &[f32], ts: usize, out: &mut [u8]) {
    let n = w.len();
    let bs = n / levels.len();
    let per_block = if levels[0].has_min() { 2 } else { 1 };
    let p = levels.len() * per_block;
    // a[k][i]: coefficient of parameter k at position i (non-zero only inside k's block).
    let mut a = vec![0.0f32; n * per_block];
    for (i, &c) in codes.iter().enumerate() {
        let (ad, am) = levels[i / bs].basis(i % bs, c);
        a[i * per_block] = ad;
        if per_block == 2 {
            a[i * per_block + 1] = am;
        }
    }
    // HA, one contiguous column per parameter (H symmetric: column = Σ_i a_ik·H[i, :]),
    // and Hw.
    let mut ha = vec![0.0f32; p * n];
    let mut hw = vec![0.0f32; n];
    for (i, h_row) in h.chunks_exact(n).enumerate() {
        let b = i / bs;
        for k in 0..per_block {
            let coef = a[i * per_block + k];
            if coef != 0.0 {
                let col = &mut ha[(b * per_block + k) * n..(b * per_block + k + 1) * n];
                col.iter_mut().zip(h_row).for_each(|(x, &hv)| *x += coef * hv);
            }
        }
        let wi = w[i];
        hw.iter_mut().zip(h_row).for_each(|(x, &hv)| *x += wi * hv);
    }
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>();
    let whw = dot(w, &hw);
    let mut g = Mat::<f64>::zeros(p, p);
    let mut rhs = Mat::<f64>::zeros(p, 1);
    for k in 0..p {
        let (b, kk) = (k / per_block, k % per_block);
        let support = b * bs..(b + 1) * bs;
        for col in 0..p {
            let column = &ha[col * n..(col + 1) * n];
            g[(k, col)] = support.clone().map(|i| a[i * per_block + kk] as f64 * column[i] as f64).sum();
        }
        rhs[(k, 0)] = dot(&ha[k * n..(k + 1) * n], w);
    }
    let theta_now: Vec<f64> = (0..p)
        .map(|k| {
            let lv = &levels[k / per_block];
            if k % per_block == 0 {
                lv.d as f64
            } else {
                lv.dmin as f64
            }
        })
        .collect();
    let error = |theta: &[f64]| {
        let quad: f64 = (0..p).map(|k| theta[k] * (0..p).map(|l| g[(k, l)] * theta[l]).sum::<f64>()).sum();
        whw - 2.0 * (0..p).map(|k| theta[k] * rhs[(k, 0)]).sum::<f64>() + quad
    };
    let before = error(&theta_now);
    // A parameter no code uses (all-zero column) keeps its value: a unit row fixes it.
    let mut system = g.clone();
    let mut target = rhs.clone();
    let trace = (0..p).map(|k| g[(k, k)]).sum::<f64>() / p as f64;
    for k in 0..p {
        if g[(k, k)] <= 1e-12 * trace.max(f64::MIN_POSITIVE) {
            for col in 0..p {
                system[(k, col)] = 0.0;
                system[(col, k)] = 0.0;
            }
            system[(k, k)] = 1.0;
            target[(k, 0)] = theta_now[k];
        }
    }
    let Ok(llt) = system.llt(Side::Lower) else { return };
    let theta = llt.solve(&target);
    if (0..p).any(|k| !theta[(k, 0)].is_finite()) {
        return;
    }
    let saved: Vec<BlockLevels> = levels.to_vec();
    let saved_bytes = out.to_vec();
    for (b, lv) in levels.iter_mut().enumerate() {
        let d = theta[(b * per_block, 0)] as f32;
        let dmin = if per_block == 2 { theta[(b * per_block + 1, 0)] as f32 } else { 0.0 };
        lv.store_scales(&mut out[b * ts..(b + 1) * ts], d, dmin);
    }
    let stored: Vec<f64> = (0..p)
        .map(|k| if k % per_block == 0 { levels[k / per_block].d as f64 } else { levels[k / per_block].dmin as f64 })
        .collect();
    if error(&stored).partial_cmp(&before) != Some(std::cmp::Ordering::Less) {
        levels.clone_from_slice(&saved);
        out.copy_from_slice(&saved_bytes);
    }
}

/// ‖(W − Ŵ)Xᵀ‖² written with the Hessian: Σ_rows δ H δᵀ, δ = w − ŵ per row. The
/// quantity GPTQ minimises; used by tests and reports.
pub fn output_error(w: &[f32], w_hat: &[f32], ncols: usize, h: &[f32]) -> f64 {
    w.chunks_exact(ncols)
        .zip(w_hat.chunks_exact(ncols))
        .map(|(a, b)| {
            let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y) as f64).collect();
            (0..ncols).map(|i| d[i] * (0..ncols).map(|k| h[i * ncols + k] as f64 * d[k]).sum::<f64>()).sum::<f64>()
        })
        .sum()
}

mod lattice;
mod native;
pub use native::gptq_native;
#[cfg(test)]
mod tests;
