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
//! of [`ROW_TILE`] rows, and the columns in panels whose errors reach the later columns
//! as one matrix product (GPTQ's lazy batch updates, [`panels`]). The result does not
//! depend on the number of threads.

use faer::Mat;

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
    /// The regularised H is (1 − shrink)·H + diag(`added`): H's off-diagonal shrunk, and
    /// its diagonal restored and dampened (a unit-scale diagonal for dead columns, whose
    /// rows of H are zero). Kept in this form so that an n × n copy is only made where a
    /// caller needs one ([`Factor::regularised`]).
    pub(crate) keep: f32,
    /// See [`Factor::keep`].
    pub(crate) added: Vec<f32>,
}

impl Factor {
    /// The regularised H (n × n, row-major) for the Hessian `h` it was made from.
    pub(crate) fn regularised(&self, h: &[f32]) -> Vec<f32> {
        let n = self.diag.len();
        let mut r: Vec<f32> = h.iter().map(|&v| v * self.keep).collect();
        for i in 0..n {
            r[i * n + i] = self.diag[i];
        }
        r
    }
}

/// Columns of L⁻¹ solved for at a time when building [`Factor::u`].
const INVERSE_PANEL: usize = 256;

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) after dampening, as f32 row-major,
/// and the dampened diagonal. Columns never seen in calibration (zero diagonal) get a
/// unit diagonal, so that they decouple from the rest. If H is still not positive
/// definite (rounding, near-duplicate columns), the dampening grows tenfold, up to six
/// times.
///
/// U comes from one factorisation and one triangular inverse: with J the reversal of
/// the index order, J·H·J = L·Lᵀ gives H = R·Rᵀ with R = J·L·J upper triangular, so
/// H⁻¹ = R⁻ᵀ·R⁻¹ and U = R⁻¹ = J·L⁻¹·J (positive diagonal, hence *the* factor). L⁻¹ is
/// solved for [`INVERSE_PANEL`] columns at a time and written straight into U, so the
/// only n × n f64 matrix is L (factored in place). Inverting H and then factoring H⁻¹
/// took three dense n³ steps and three n × n f64 matrices — for an 8B model's 14336-wide
/// down projection, minutes and 5 GB.
pub(crate) fn inverse_factor(h: &[f32], n: usize, opts: &GptqOptions) -> Result<Factor, String> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
    use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
    let live: Vec<f64> = (0..n).map(|i| h[i * n + i] as f64).filter(|&d| d > 0.0).collect();
    let mean_diag = if live.is_empty() { 1.0 } else { live.iter().sum::<f64>() / live.len() as f64 };
    let mut damp = opts.damp.max(1e-8) * mean_diag;
    let par = faer::get_global_parallelism();
    let keep = 1.0 - opts.shrink;
    for _ in 0..6 {
        let regularised = |i: usize, j: usize| {
            let v = h[i * n + j] as f64;
            match (i == j, h[i * n + i] > 0.0 && h[j * n + j] > 0.0) {
                (true, true) => v + damp,
                (true, false) => mean_diag + damp,
                (false, true) => v * keep,
                (false, false) => 0.0,
            }
        };
        let mut l = Mat::<f64>::from_fn(n, n, |i, j| if j <= i { regularised(n - 1 - i, n - 1 - j) } else { 0.0 });
        let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
        let factored =
            cholesky_in_place(l.as_mut(), Default::default(), par, MemStack::new(&mut mem), Default::default());
        if factored.is_err() {
            damp *= 10.0;
            continue;
        }
        let mut u = vec![0.0f32; n * n];
        for c in (0..n).step_by(INVERSE_PANEL) {
            if crate::interrupt::requested() {
                return Err("interrupted".into()); // `prepare` reports it as such
            }
            let (w, m) = (INVERSE_PANEL.min(n - c), n - c);
            // X = L[c.., c..]⁻¹ · I[c.., c..c+w]: columns c…c+w of L⁻¹ below row c (above
            // it they are zero).
            let mut x = Mat::<f64>::from_fn(m, w, |a, b| if a == b { 1.0 } else { 0.0 });
            solve_lower_triangular_in_place(l.as_ref().submatrix(c, c, m, m), x.as_mut(), par);
            for a in 0..m {
                for b in 0..w.min(a + 1) {
                    let (i, j) = (n - 1 - (c + a), n - 1 - (c + b));
                    u[i * n + j] = x[(a, b)] as f32;
                }
            }
        }
        drop(l);
        if u.iter().all(|v| v.is_finite()) {
            let diag: Vec<f32> = (0..n).map(|i| regularised(i, i) as f32).collect();
            let added = (0..n).map(|i| diag[i] - (h[i * n + i] as f64 * keep) as f32).collect();
            return Ok(Factor { u, diag, keep: keep as f32, added });
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
    let (f, dead) = prepare(w, ncols, h, opts)?;
    let rows = w.len() / ncols;
    let row_bytes = ncols / bs * ts;
    let mut out = vec![0u8; rows * row_bytes];
    let sigma2: Vec<f32> = w.chunks_exact(ncols).map(|r| sum_of_squares(r) / ncols as f32).collect();
    let mut work = working_copy(w, ncols, &dead);
    if let Gptq::Lattice(fmt) = ty.facts().gptq {
        lattice::sweep(fmt, ts, ncols, &f, &sigma2, &mut work, &mut out);
        return Ok(out);
    }
    let mut tiles: Vec<ScalarTile> = (0..rows)
        .step_by(ROW_TILE)
        .map(|r0| {
            let n = ROW_TILE.min(rows - r0);
            ScalarTile { levels: vec![Vec::with_capacity(ncols / bs); n], codes: vec![0; n * ncols] }
        })
        .collect();
    lazy_sweep(&mut work, ncols, &f, panel_width(bs), &mut out, row_bytes, &mut tiles, |tile, p| {
        for j in p.p0..p.p1 {
            let (block, pos) = (j / bs, j % bs);
            if pos == 0 {
                for r in 0..p.rows() {
                    let x = &p.work[r * ncols + j..r * ncols + j + bs];
                    let b = BlockInput {
                        x,
                        importance: Some(&f.diag[j..j + bs]),
                        row_sigma2: sigma2[p.row0 + r],
                        fit: Fit::Search,
                    };
                    let o = &mut p.out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                    encode_block(ty, &b, o);
                    tile.levels[r].push(block_levels(ty, o).expect("supported types have levels"));
                }
            }
            for r in 0..p.rows() {
                let (c, q) = tile.levels[r][block].nearest(pos, p.at(r, j));
                tile.codes[r * ncols + j] = c;
                p.settle(r, j, q, &f);
            }
            if pos == bs - 1 {
                for r in 0..p.rows() {
                    let o = &mut p.out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts];
                    pack_codes(ty, &tile.codes[r * ncols + j + 1 - bs..r * ncols + j + 1], o);
                }
            }
        }
        Ok(())
    })?;
    if opts.refine {
        refine::refine(w, ncols, h, &f, ts, &mut tiles, &mut out);
        if crate::interrupt::requested() {
            return Err(EncodeError::Interrupted); // the refinement stopped part-way
        }
    }
    Ok(out)
}

/// A block-format sweep's state for one tile of rows: each row's block levels (the values
/// its fitted scales allow) and codes, which the refinement reads.
pub(crate) struct ScalarTile {
    levels: Vec<Vec<BlockLevels>>,
    codes: Vec<u8>,
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
    let factor = inverse_factor(h, ncols, opts).map_err(|e| match crate::interrupt::requested() {
        true => EncodeError::Interrupted,
        false => EncodeError::Hessian(e),
    })?;
    let dead = (0..ncols).map(|i| h[i * ncols + i] <= 0.0).collect();
    Ok((factor, dead))
}

/// The sweep's working copy of rows (of `ncols`): dead columns zeroed.
pub(crate) fn working_copy(rows: &[f32], ncols: usize, dead: &[bool]) -> Vec<f32> {
    let mut work = rows.to_vec();
    for (i, &d) in dead.iter().enumerate() {
        if d {
            work.iter_mut().skip(i).step_by(ncols).for_each(|v| *v = 0.0);
        }
    }
    work
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
mod panels;
mod refine;
pub use native::gptq_native;
use panels::{lazy_sweep, panel_width};
#[cfg(test)]
mod tests;
