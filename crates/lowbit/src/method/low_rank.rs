//! A low-rank branch beside a quantized matrix (issue 18 item 4; LQER's error
//! reconstruction, the low-rank half of SVDQuant and LR²VQ in the seed):
//! `W ≈ Ŵ + A·B`, with `Ŵ` the quantized matrix as stored and `A` (`rows × r`), `B`
//! (`r × cols`) two small f16 matrices fitted to the quantization error `E = W − Ŵ`.
//!
//! The fit minimises the layer's output error on the calibration inputs,
//! `tr((E − AB)·H·(E − AB)ᵀ)` with `H = Σ xxᵀ` (dampened as GPTQ dampens it): with
//! `H = L·Lᵀ` (Cholesky) that is `‖(E − AB)·L‖²_F`, whose minimum over rank `r` is the
//! truncated SVD of `E·L` (Eckart–Young), mapped back: `A = U_r·S_r`, `B = V_rᵀ·L⁻¹`.
//! Without a Hessian, `L = diag(√importance)` (the importance matrix's metric); without
//! either, the plain Frobenius norm. `A` and `B` are rounded to f16 as they are stored, so
//! the runtime's branch and the dense decode use the same values.
//!
//! Fitting after quantization (rather than quantizing `W − AB`, SVDQuant's order) keeps
//! every method — GPTQ included — unchanged and lets the branch see exactly the error the
//! stored rows make.

use faer::{Mat, Side};
use half::f16;

/// Rank-`rank` factors `A` (`rows × rank`) and `B` (`rank × cols`), row-major, f16 values.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// Rank `r`.
    pub rank: usize,
    /// Rows of the matrix (output features).
    pub rows: usize,
    /// Columns of the matrix (input features).
    pub cols: usize,
    /// `rows × rank`.
    pub a: Vec<f32>,
    /// `rank × cols`.
    pub b: Vec<f32>,
}

/// The bytes of a rank-`rank` branch for a `rows × cols` matrix (two f16 factors).
pub fn branch_bytes(rows: u64, cols: u64, rank: u64) -> u64 {
    2 * rank * (rows + cols)
}

impl LowRank {
    /// Factors read back from their stored f16 bytes (`A` then `B` as written by
    /// [`LowRank::a_bytes`] and [`LowRank::b_bytes`]).
    pub fn from_f16(a: &[u8], b: &[u8], rows: usize, cols: usize, rank: usize) -> Option<LowRank> {
        if a.len() != 2 * rows * rank || b.len() != 2 * rank * cols {
            return None;
        }
        let read = |v: &[u8]| v.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        Some(LowRank { rank, rows, cols, a: read(a), b: read(b) })
    }

    /// `A` as stored (f16, row-major `rows × rank`).
    pub fn a_bytes(&self) -> Vec<u8> {
        self.a.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
    }

    /// `B` as stored (f16, row-major `rank × cols`).
    pub fn b_bytes(&self) -> Vec<u8> {
        self.b.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
    }

    /// Adds `A·B` to the row-major `rows × cols` matrix `w` (the dense decode of a tensor
    /// with a branch).
    pub fn add_to(&self, w: &mut [f32]) {
        assert_eq!(w.len(), self.rows * self.cols, "matrix size");
        for (i, row) in w.chunks_exact_mut(self.cols).enumerate() {
            for (k, &aik) in self.a[i * self.rank..(i + 1) * self.rank].iter().enumerate() {
                let bk = &self.b[k * self.cols..(k + 1) * self.cols];
                row.iter_mut().zip(bk).for_each(|(w, &b)| *w += aik * b);
            }
        }
    }

    /// Adds the branch's output for `t` input rows `x` (each `cols` wide) to `out`
    /// (`t × rows`): `out += (x·Bᵀ)·Aᵀ`, two thin products.
    pub fn apply(&self, x: &[f32], t: usize, out: &mut [f32]) {
        let mut mid = vec![0.0; t * self.rank];
        crate::tensor::matmul_wt(x, t, self.cols, &self.b, self.rank, &mut mid);
        let mut add = vec![0.0; t * self.rows];
        crate::tensor::matmul_wt(&mid, t, self.rank, &self.a, self.rows, &mut add);
        out.iter_mut().zip(&add).for_each(|(o, a)| *o += a);
    }
}

/// Fits a rank-`rank` branch to `error` (`E = W − Ŵ`, row-major, rows of `cols`) in the
/// metric of the layer's output error: `hessian` (`cols × cols`, dampened by `damp` times
/// its mean diagonal) when given, else `importance` (per-column mean squared input), else
/// the Frobenius norm. The rank is capped at `min(rows, cols)`. Deterministic.
pub fn fit(
    error: &[f32],
    cols: usize,
    rank: usize,
    hessian: Option<&[f32]>,
    importance: Option<&[f32]>,
    damp: f64,
) -> LowRank {
    let rows = error.len() / cols.max(1);
    let rank = rank.min(rows).min(cols);
    // The metric's factor L (H = L·Lᵀ), lower triangular; `None` is the identity.
    let factor: Option<Mat<f64>> = match (hessian.filter(|h| h.len() == cols * cols), importance) {
        (Some(h), _) => cholesky(h, cols, damp),
        (None, Some(imp)) if imp.len() == cols => {
            let mean = imp.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let floor = (damp * mean).max(1e-12);
            Some(Mat::from_fn(cols, cols, |i, j| if i == j { (imp[i] as f64).max(0.0).max(floor).sqrt() } else { 0.0 }))
        }
        _ => None,
    };
    let e = Mat::<f64>::from_fn(rows, cols, |i, j| error[i * cols + j] as f64);
    let m = match &factor {
        Some(l) => &e * l,
        None => e,
    };
    let Ok(svd) = m.thin_svd() else {
        return LowRank { rank: 0, rows, cols, a: Vec::new(), b: Vec::new() };
    };
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let mut a = vec![0.0f32; rows * rank];
    for i in 0..rows {
        for k in 0..rank {
            a[i * rank + k] = round_f16(u[(i, k)] * s[k]);
        }
    }
    // B = V_rᵀ·L⁻¹: each row k solves Lᵀ·bₖ = vₖ (back substitution, L lower triangular).
    let mut b = vec![0.0f32; rank * cols];
    for k in 0..rank {
        let mut x: Vec<f64> = (0..cols).map(|j| v[(j, k)]).collect();
        if let Some(l) = &factor {
            for i in (0..cols).rev() {
                let mut acc = x[i];
                for (r, &xr) in x.iter().enumerate().skip(i + 1) {
                    acc -= l[(r, i)] * xr;
                }
                x[i] = acc / l[(i, i)];
            }
        }
        for (j, &xj) in x.iter().enumerate() {
            b[k * cols + j] = round_f16(xj);
        }
    }
    LowRank { rank, rows, cols, a, b }
}

fn round_f16(v: f64) -> f32 {
    f16::from_f64(v).to_f32()
}

/// The lower Cholesky factor of `h + damp·mean(diag)·I` (columns never seen get the mean
/// diagonal, as GPTQ treats them); the dampening grows tenfold until it factors.
fn cholesky(h: &[f32], n: usize, damp: f64) -> Option<Mat<f64>> {
    let mean_diag = ((0..n).map(|i| h[i * n + i] as f64).sum::<f64>() / n as f64).max(1e-12);
    let mut d = damp.max(1e-8) * mean_diag;
    for _ in 0..6 {
        let hd = Mat::<f64>::from_fn(n, n, |i, j| {
            let dead = h[i * n + i] <= 0.0 || h[j * n + j] <= 0.0;
            match (i == j, dead) {
                (true, true) => mean_diag + d,
                (true, false) => h[i * n + i] as f64 + d,
                (false, true) => 0.0,
                (false, false) => h[i * n + j] as f64,
            }
        });
        if let Ok(llt) = hd.llt(Side::Lower) {
            return Some(llt.L().to_owned());
        }
        d *= 10.0;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn weighted_error(e: &[f32], cols: usize, h: &[f32]) -> f64 {
        // tr(E·H·Eᵀ)
        e.chunks_exact(cols)
            .map(|row| {
                (0..cols)
                    .map(|i| (0..cols).map(|j| row[i] as f64 * h[i * cols + j] as f64 * row[j] as f64).sum::<f64>())
                    .sum::<f64>()
            })
            .sum()
    }

    /// A planted rank-2 error is removed almost entirely (f16 rounding remains), in the
    /// Frobenius metric and in a Hessian's.
    #[test]
    fn a_planted_low_rank_error_is_recovered() {
        let (rows, cols) = (24, 16);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let u: Vec<f32> = (0..rows * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let v: Vec<f32> = (0..2 * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut e = vec![0.0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                e[i * cols + j] = u[i * 2] * v[j] + u[i * 2 + 1] * v[cols + j];
            }
        }
        let x: Vec<f32> = (0..64 * cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        let mut h = vec![0.0f32; cols * cols];
        for r in x.chunks_exact(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += r[i] * r[j];
                }
            }
        }
        for hess in [None, Some(h.as_slice())] {
            let lr = fit(&e, cols, 2, hess, None, 1e-6);
            let mut rest: Vec<f32> = e.iter().map(|v| -v).collect();
            lr.add_to(&mut rest);
            let before = weighted_error(&e, cols, &h);
            let after = weighted_error(&rest, cols, &h);
            // f16 factors: relative error near 2⁻¹¹ per value.
            assert!(after < 1e-5 * before, "{after} vs {before}");
        }
    }

    /// With a Hessian, the fit's weighted error is no worse than the Frobenius fit's (it is
    /// the optimum of that metric), and both are below the error without a branch.
    #[test]
    fn the_hessian_fit_minimises_the_output_error() {
        let (rows, cols) = (32, 24);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let e: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        // Inputs with a few loud channels.
        let x: Vec<f32> =
            (0..200 * cols).map(|i| rng.random_range(-1.0..1.0f32) * if i % cols < 3 { 10.0 } else { 1.0 }).collect();
        let mut h = vec![0.0f32; cols * cols];
        for r in x.chunks_exact(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += r[i] * r[j];
                }
            }
        }
        let residual = |lr: &LowRank| {
            let mut rest: Vec<f32> = e.iter().map(|v| -v).collect();
            lr.add_to(&mut rest);
            weighted_error(&rest, cols, &h)
        };
        let with_h = residual(&fit(&e, cols, 4, Some(&h), None, 1e-6));
        let plain = residual(&fit(&e, cols, 4, None, None, 1e-6));
        let none = weighted_error(&e, cols, &h);
        assert!(with_h <= plain * 1.001, "{with_h} vs {plain}");
        assert!(plain < none && with_h < 0.9 * none, "{with_h} {plain} {none}");
    }

    /// The runtime's two thin products give what adding `A·B` to the matrix gives.
    #[test]
    fn apply_equals_the_dense_sum() {
        let (rows, cols, t) = (10, 12, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let e: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        let lr = fit(&e, cols, 3, None, None, 0.0);
        let back = LowRank::from_f16(&lr.a_bytes(), &lr.b_bytes(), rows, cols, 3).unwrap();
        assert_eq!(back, lr, "f16 bytes round-trip exactly");
        let x: Vec<f32> = (0..t * cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        let mut w = vec![0.0f32; rows * cols];
        lr.add_to(&mut w);
        let mut dense = vec![0.0f32; t * rows];
        crate::tensor::matmul_wt(&x, t, cols, &w, rows, &mut dense);
        let mut out = vec![0.0f32; t * rows];
        lr.apply(&x, t, &mut out);
        for (a, b) in out.iter().zip(&dense) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
