//! GPTQ's lazy batch updates (Frantar et al., 2022, "Lazy Batch-Updates"): the sweep
//! walks the columns in panels of about [`PANEL`] columns. Inside a panel each rounding
//! error is pushed only onto the panel's own later columns, and the scaled errors are
//! kept; when the panel is done, all of them reach every column after it at once, as one
//! matrix product `W[:, p1..] −= E · U[p0..p1, p1..]` (through `gemm`, in tiles of
//! [`GEMM_ROWS`] rows). The result is the column-by-column sweep's, up to the order of
//! float summation, but the O(rows·n²) update runs as a matrix product instead of
//! n rank-one updates: an 8B model's 14336-wide down projection no longer takes hours.
//!
//! Panels are whole blocks of the format (a block's scales are fitted when the sweep
//! reaches its first column, on the weights as updated so far), so a block never spans two
//! panels. Row tiles and gemm tiles are fixed sizes, so the bytes do not depend on the
//! thread count.

use rayon::prelude::*;

use super::{Factor, ROW_TILE};
use crate::format::encode::EncodeError;
use crate::tensor::{matmul_sub_strided, StridedMat};

/// Columns per panel (rounded up to whole blocks). GPTQ's reference uses 128; wider
/// panels move more of the update into the product but make the in-panel part, which is
/// not a product, longer.
const PANEL: usize = 128;

/// Rows per deferred-update product: enough rows that each pass over the factor's panel
/// does many multiply-adds per byte loaded.
const GEMM_ROWS: usize = 64;

/// The panel width for blocks of `unit` columns: the smallest multiple of `unit` that is at
/// least [`PANEL`].
pub(super) fn panel_width(unit: usize) -> usize {
    unit * PANEL.div_ceil(unit)
}

/// One row tile's share of one panel: what a format's step function sees.
pub(super) struct PanelTile<'a> {
    /// The tile's rows (full width), as updated so far.
    pub(super) work: &'a mut [f32],
    /// The tile's encoded rows.
    pub(super) out: &'a mut [u8],
    /// Index of the tile's first row in the matrix.
    pub(super) row0: usize,
    /// The panel's columns.
    pub(super) p0: usize,
    /// One past the panel's last column.
    pub(super) p1: usize,
    /// Scaled errors, tile rows × (p1 − p0).
    err: &'a mut [f32],
    /// Columns per row.
    pub(super) ncols: usize,
}

impl PanelTile<'_> {
    /// Rows in the tile.
    pub(super) fn rows(&self) -> usize {
        self.work.len() / self.ncols
    }

    /// Row `r`'s weight in column `j`, as updated so far.
    pub(super) fn at(&self, r: usize, j: usize) -> f32 {
        self.work[r * self.ncols + j]
    }

    /// GPTQ's step for weight (r, j): it becomes `q`; its error divided by the factor's
    /// diagonal U_jj is pushed through row j of U onto the panel's later columns and kept
    /// for the columns after the panel.
    pub(super) fn settle(&mut self, r: usize, j: usize, q: f32, f: &Factor) {
        let n = self.ncols;
        let row = &mut self.work[r * n + j..r * n + self.p1];
        let u_row = &f.u[j * n + j..j * n + self.p1];
        let err = (row[0] - q) / u_row[0];
        row[0] = q;
        for (x, &uk) in row[1..].iter_mut().zip(&u_row[1..]) {
            *x -= err * uk;
        }
        self.err[r * (self.p1 - self.p0) + j - self.p0] = err;
    }
}

/// Runs a GPTQ sweep over `work` (rows of `ncols`, updated in place) in panels of `width`
/// columns: `step` quantizes one tile's share of one panel (calling
/// [`PanelTile::settle`] for each weight, in column order), with `states[t]` the format's
/// state for tile t (rows `t·ROW_TILE…`); the deferred update follows each panel.
#[allow(clippy::too_many_arguments)]
pub(super) fn lazy_sweep<S: Send>(
    work: &mut [f32],
    ncols: usize,
    f: &Factor,
    width: usize,
    out: &mut [u8],
    row_bytes: usize,
    states: &mut [S],
    step: impl Fn(&mut S, &mut PanelTile) -> Result<(), EncodeError> + Sync,
) -> Result<(), EncodeError> {
    let rows = work.len() / ncols;
    debug_assert_eq!(states.len(), rows.div_ceil(ROW_TILE));
    let mut err = vec![0.0f32; rows * width.min(ncols)];
    let mut p0 = 0;
    while p0 < ncols {
        // An 8B down projection's sweep takes a minute: Ctrl-C is answered between panels.
        if crate::interrupt::requested() {
            return Err(EncodeError::Interrupted);
        }
        let p1 = (p0 + width).min(ncols);
        let pw = p1 - p0;
        let err = &mut err[..rows * pw];
        work.par_chunks_mut(ROW_TILE * ncols)
            .zip(out.par_chunks_mut(ROW_TILE * row_bytes))
            .zip(err.par_chunks_mut(ROW_TILE * pw))
            .zip(states.par_iter_mut())
            .enumerate()
            .try_for_each(|(t, (((work, out), err), state))| {
                let mut tile = PanelTile { work, out, row0: t * ROW_TILE, p0, p1, err, ncols };
                step(state, &mut tile)
            })?;
        if p1 < ncols {
            work.par_chunks_mut(GEMM_ROWS * ncols).zip(err.par_chunks(GEMM_ROWS * pw)).for_each(|(work, e)| {
                let m = work.len() / ncols;
                let lhs = StridedMat { data: e, offset: 0, row_stride: pw, col_stride: 1 };
                let rhs = StridedMat { data: &f.u, offset: p0 * ncols + p1, row_stride: ncols, col_stride: 1 };
                matmul_sub_strided(m, ncols - p1, pw, &lhs, &rhs, &mut work[p1..], ncols);
            });
        }
        p0 = p1;
    }
    Ok(())
}
