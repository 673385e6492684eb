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

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use rayon::prelude::*;

use crate::format::encode::levels::{block_levels, has_levels, pack_codes, BlockLevels};
use crate::format::encode::{encode_block, sum_of_squares, BlockInput, EncodeError};
use crate::format::GgmlType;
use crate::method::Method;

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
}

impl Default for GptqOptions {
    /// damp 0.1, shrink 0.25. GPTQ's usual damp 0.01 fits the calibration text's
    /// correlations too closely: on smollm2-135m calibrated on the Austen text, GPTQ's
    /// layer output error on held-out Austen (mansfield-park.txt) was 0.30–0.54 of the
    /// importance-weighted search's, but on Wikipedia text 0.57–1.14 (worse than the
    /// search on some layers). With damp 0.1 and shrink 0.25: 0.32–0.57 and 0.52–0.96.
    fn default() -> Self {
        GptqOptions { damp: 0.1, shrink: 0.25 }
    }
}

/// Whether [`gptq_rows`] supports `ty`.
pub fn supports(ty: GgmlType) -> bool {
    has_levels(ty)
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) after dampening, as f32 row-major,
/// and the dampened diagonal. Columns never seen in calibration (zero diagonal) get a
/// unit diagonal, so that they decouple from the rest. If H is still not positive
/// definite (rounding, near-duplicate columns), the dampening grows tenfold, up to six
/// times.
fn inverse_factor(h: &[f64], n: usize, opts: &GptqOptions) -> Result<(Vec<f32>, Vec<f32>), String> {
    let live: Vec<f64> = (0..n).map(|i| h[i * n + i]).filter(|&d| d > 0.0).collect();
    let mean_diag = if live.is_empty() { 1.0 } else { live.iter().sum::<f64>() / live.len() as f64 };
    let mut damp = opts.damp.max(1e-8) * mean_diag;
    for _ in 0..6 {
        let hd = Mat::<f64>::from_fn(n, n, |i, j| {
            let v = h[i * n + j];
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
            return Ok((u, diag));
        }
        damp *= 10.0;
    }
    Err("the calibration Hessian is not positive definite even after dampening".into())
}

/// Quantizes the row-major matrix `w` (rows of `ncols`) to `ty` by GPTQ against the
/// input Hessian `h` (ncols × ncols, row-major, any positive scale: Σ xxᵀ or its mean).
/// Block scales are fitted with the diagonal of H as importance. Returns the encoded
/// rows, laid out as [`crate::format::encode::quantize_rows`] lays them out.
pub fn gptq_rows(ty: GgmlType, w: &[f32], ncols: usize, h: &[f64], opts: &GptqOptions) -> Result<Vec<u8>, EncodeError> {
    if !supports(ty) {
        return Err(EncodeError::NotEncodable(ty));
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if ncols == 0 || !ncols.is_multiple_of(bs) || !w.len().is_multiple_of(ncols) {
        return Err(EncodeError::PartialBlock { ty, n: ncols, block: bs });
    }
    if h.len() != ncols * ncols {
        return Err(EncodeError::ImportanceLength { got: h.len(), need: ncols * ncols });
    }
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFinite { index, value });
    }
    let (u, importance) = inverse_factor(h, ncols, opts).map_err(EncodeError::Hessian)?;
    let dead: Vec<bool> = (0..ncols).map(|i| h[i * ncols + i] <= 0.0).collect();
    let row_bytes = ncols / bs * ts;
    let mut out = vec![0u8; w.len() / ncols * row_bytes];
    out.par_chunks_mut(ROW_TILE * row_bytes).zip(w.par_chunks(ROW_TILE * ncols)).for_each(|(o, rows)| {
        sweep_tile(ty, rows, ncols, &u, &importance, &dead, o);
    });
    Ok(out)
}

/// The GPTQ sweep over one tile of rows (`rows`: up to [`ROW_TILE`] rows of `ncols`).
fn sweep_tile(ty: GgmlType, rows: &[f32], ncols: usize, u: &[f32], importance: &[f32], dead: &[bool], out: &mut [u8]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let n_rows = rows.len() / ncols;
    let row_bytes = ncols / bs * ts;
    let sigma2: Vec<f32> = rows.chunks_exact(ncols).map(|r| sum_of_squares(r) / ncols as f32).collect();
    let mut work = rows.to_vec();
    for (i, &d) in dead.iter().enumerate() {
        if d {
            work.iter_mut().skip(i).step_by(ncols).for_each(|v| *v = 0.0);
        }
    }
    let mut levels: Vec<Option<BlockLevels>> = vec![None; n_rows];
    let mut codes = vec![0u8; n_rows * bs];
    for j in 0..ncols {
        let (block, pos) = (j / bs, j % bs);
        if pos == 0 {
            for r in 0..n_rows {
                let x = &work[r * ncols + j..r * ncols + j + bs];
                let b = BlockInput {
                    x,
                    importance: Some(&importance[j..j + bs]),
                    row_sigma2: sigma2[r],
                    method: Method::Search,
                };
                let o = &mut out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                encode_block(ty, &b, o);
                levels[r] = block_levels(ty, o);
            }
        }
        let u_row = &u[j * ncols + j..(j + 1) * ncols];
        let inv_diag = 1.0 / u_row[0];
        for r in 0..n_rows {
            let row = &mut work[r * ncols + j..(r + 1) * ncols];
            let l = levels[r].as_ref().expect("fitted at the block's first column");
            let (c, q) = l.nearest(pos, row[0]);
            codes[r * bs + pos] = c;
            let err = (row[0] - q) * inv_diag;
            row[0] = q;
            for (x, &uk) in row[1..].iter_mut().zip(&u_row[1..]) {
                *x -= err * uk;
            }
        }
        if pos == bs - 1 {
            for r in 0..n_rows {
                let o = &mut out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                pack_codes(ty, &codes[r * bs..(r + 1) * bs], o);
            }
        }
    }
}

/// ‖(W − Ŵ)Xᵀ‖² written with the Hessian: Σ_rows δ H δᵀ, δ = w − ŵ per row. The
/// quantity GPTQ minimises; used by tests and reports.
pub fn output_error(w: &[f32], w_hat: &[f32], ncols: usize, h: &[f64]) -> f64 {
    w.chunks_exact(ncols)
        .zip(w_hat.chunks_exact(ncols))
        .map(|(a, b)| {
            let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y) as f64).collect();
            (0..ncols).map(|i| d[i] * (0..ncols).map(|k| h[i * ncols + k] * d[k]).sum::<f64>()).sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests;
