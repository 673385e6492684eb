//! Outlier columns of a VQ tensor: which columns are kept apart as f16 values, and the
//! values that absorb exactly what the codebooks get wrong (step 1 and the outlier refits
//! of [`super`]).

use super::*;

/// The columns kept apart ([`VqFormat::outliers`]) and every row's values there.
#[derive(Clone, Default)]
pub(super) struct Outliers {
    /// Ascending column indices.
    pub(super) columns: Vec<usize>,
    /// Per column of the matrix, whether it is an outlier column (empty without any).
    pub(super) mask: Vec<bool>,
    /// Every row's values there (f16-exact), rows × columns.
    pub(super) values: Vec<f32>,
}

impl Outliers {
    /// The `n` columns of largest `column_weight` (ties to the lower index), ascending.
    pub(super) fn choose(column_weight: &[f32], n: usize) -> Outliers {
        if n == 0 {
            return Outliers::default();
        }
        let mut order: Vec<usize> = (0..column_weight.len()).collect();
        order.sort_by(|&a, &b| column_weight[b].total_cmp(&column_weight[a]).then(a.cmp(&b)));
        let mut columns = order[..n].to_vec();
        columns.sort_unstable();
        let mut mask = vec![false; column_weight.len()];
        columns.iter().for_each(|&c| mask[c] = true);
        Outliers { columns, mask, ..Outliers::default() }
    }

    /// Whether column `j` is coded by the codebooks (not kept apart).
    pub(super) fn coded(&self, j: usize) -> bool {
        self.mask.get(j).is_none_or(|o| !o)
    }

    /// Stores `raw` (rows × columns) as the f16 values decoding will see.
    pub(super) fn set(&mut self, raw: &[f32]) {
        self.values = raw.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    }
}

/// The best outlier values for everything else fixed: with e_r the row's error on the
/// coded columns, the values o_r = w_{r,O} + H_OO⁻¹ H_{O,·} e_rᵀ minimise the output
/// error — the outlier columns absorb, exactly, what the codebooks get wrong (the
/// optimal-brain-surgeon update, restricted to the columns kept apart).
pub(super) struct OutlierCompensation {
    /// H_OO⁻¹ H_{O,·}: outliers × cols, row-major (empty without outliers).
    pub(super) gain: Vec<f32>,
}

impl OutlierCompensation {
    pub(super) fn new(outliers: &Outliers, h: &[f32], cols: usize) -> OutlierCompensation {
        let o = &outliers.columns;
        let n = o.len();
        if n == 0 {
            return OutlierCompensation { gain: Vec::new() };
        }
        let mean_diag = o.iter().map(|&c| h[c * cols + c] as f64).sum::<f64>() / n as f64;
        let damp = 1e-6 * mean_diag.max(f64::MIN_POSITIVE);
        let hoo =
            faer::Mat::<f64>::from_fn(n, n, |a, b| h[o[a] * cols + o[b]] as f64 + if a == b { damp } else { 0.0 });
        let rhs = faer::Mat::<f64>::from_fn(n, cols, |a, j| h[o[a] * cols + j] as f64);
        let Ok(llt) = hoo.llt(faer::Side::Lower) else {
            return OutlierCompensation { gain: Vec::new() };
        };
        use faer::linalg::solvers::Solve;
        let g = llt.solve(&rhs);
        OutlierCompensation { gain: (0..n * cols).map(|k| g[(k / cols, k % cols)] as f32).collect() }
    }

    /// Replaces the outlier values of `codes` by the best ones for the rest.
    pub(super) fn refit(&self, f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, codes: &mut Codes) {
        if self.gain.is_empty() {
            return;
        }
        let coded = codes.decode(f.dim, scales, false);
        let o = &codes.outliers.columns;
        let raw: Vec<f32> = w
            .par_chunks_exact(cols)
            .zip(coded.par_chunks_exact(cols))
            .flat_map_iter(|(wr, qr)| {
                let e: Vec<f32> = wr
                    .iter()
                    .zip(qr)
                    .enumerate()
                    .map(|(j, (a, b))| if codes.outliers.coded(j) { a - b } else { 0.0 })
                    .collect();
                o.iter()
                    .enumerate()
                    .map(move |(t, &c)| {
                        let g = &self.gain[t * cols..(t + 1) * cols];
                        wr[c] + g.iter().zip(&e).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect::<Vec<f32>>()
            })
            .collect();
        codes.outliers.set(&raw);
    }
}
