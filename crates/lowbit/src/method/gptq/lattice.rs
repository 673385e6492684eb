//! GPTQ for the lattice i-quants (IQ1–IQ3): the sweep of [`super`], but a format stores 8
//! weights as one grid point, so the unit of rounding is a group of 8 columns. When the
//! sweep reaches a 256-column block, the block's scales are fitted on the weights as
//! updated so far; at each group of 8 the group's signs and grid point are chosen for the
//! updated weights (weighted by each column's conditional precision 1/U_jj², the diagonal
//! of the group's error metric), then the 8 errors are pushed, column by column, onto the
//! columns not yet quantized. With the group's values fixed first, the column-by-column
//! updates are exactly the block update GPTVQ (van Baalen et al., 2024) makes.

use super::panels::lazy_sweep;
use super::{Factor, ROW_TILE};
use crate::format::encode::iquant::{fit_lattice, requantize_group, LatticeBlock, LatticeFormat};
use crate::format::encode::BlockInput;
use crate::format::encode::Fit;
use crate::format::QK_K;

/// The sweep of the lattice format `fmt` (blocks of `ts` bytes) over `work` (rows of
/// `ncols` with dead columns zeroed, updated in place), one 256-column block per panel;
/// writes the encoded rows to `out`.
pub(super) fn sweep(
    fmt: &LatticeFormat,
    ts: usize,
    ncols: usize,
    f: &Factor,
    sigma2: &[f32],
    work: &mut [f32],
    out: &mut [u8],
) {
    let rows = work.len() / ncols;
    let row_bytes = ncols / QK_K * ts;
    let mut tiles: Vec<Vec<Option<LatticeBlock>>> =
        (0..rows).step_by(ROW_TILE).map(|r0| (r0..rows.min(r0 + ROW_TILE)).map(|_| None).collect()).collect();
    let swept = lazy_sweep(work, ncols, f, QK_K, out, row_bytes, &mut tiles, |blocks, p| {
        for g in p.p0 / 8..p.p1 / 8 {
            let j0 = 8 * g;
            let (block, pos) = (j0 / QK_K, j0 % QK_K);
            if pos == 0 {
                for (r, slot) in blocks.iter_mut().enumerate() {
                    let b = BlockInput {
                        x: &p.work[r * ncols + j0..r * ncols + j0 + QK_K],
                        importance: Some(&f.diag[j0..j0 + QK_K]),
                        row_sigma2: sigma2[p.row0 + r],
                        fit: Fit::Search,
                    };
                    *slot = Some(fit_lattice(fmt, &b));
                }
            }
            // Conditional precision of each column of the group: the error metric's diagonal.
            let mut w = [0.0f32; 8];
            for (k, wk) in w.iter_mut().enumerate() {
                let ujj = f.u[(j0 + k) * ncols + j0 + k];
                *wk = 1.0 / (ujj * ujj);
            }
            for (r, slot) in blocks.iter_mut().enumerate() {
                let q = slot.as_mut().expect("fitted at the block's first group");
                let y = requantize_group(fmt, q, pos / 8, &p.work[r * ncols + j0..r * ncols + j0 + 8], &w);
                for (k, &yk) in y.iter().enumerate() {
                    p.settle(r, j0 + k, yk, f);
                }
                if pos + 8 == QK_K {
                    (fmt.pack)(q, &mut p.out[r * row_bytes + block * ts..r * row_bytes + (block + 1) * ts]);
                }
            }
        }
        Ok(())
    });
    swept.expect("the lattice sweep has no failing step");
}
