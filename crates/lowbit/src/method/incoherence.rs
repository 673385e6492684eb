//! Per-layer incoherence processing (QuIP#; issue 18 item 3): a weight matrix is stored
//! rotated on its input side, `W' = W·Qᵀ` with `Q` a seeded randomized Hadamard matrix
//! ([`super::orthogonal`]), and the runtime rotates the layer's input the same way
//! (`x' = Q·x`, so `W'·x' = W·x`). The rotation spreads every input channel — outliers
//! included — evenly over all of them, so the rounding sees incoherent rows.
//!
//! Unlike the residual rotation ([`crate::transform`]), nothing folds it away: the file
//! needs lowbit's runtime, so it applies to lowbit-native and VQ formats only. The input
//! statistics rotate with the weights: `H' = Q·H·Qᵀ`, and the importance becomes `diag(H')`
//! scaled to the importance's total (for a randomized Hadamard, nearly flat).

use std::sync::Arc;

/// The rotation's seed written for every rotated tensor (fixed: same command, same file).
pub const SEED: u64 = 0x1c0_4e7e;

/// The widest input rotated: `Q` and `Qᵀ` are dense (2·n² f32: 128 MB at 4096); wider
/// inputs (an 8B model's 14336-wide down projection) need a fast Hadamard transform.
pub const MAX_ORDER: usize = 4096;

/// An input rotation of order `n`: `Q` and `Qᵀ` (row-major), from `seed`.
#[derive(Debug, PartialEq)]
pub struct Rotation {
    /// Order (the layer's input width).
    pub n: usize,
    /// The seed `Q` was made from ([`super::orthogonal::random_orthogonal`]).
    pub seed: u64,
    q: Vec<f32>,
    qt: Vec<f32>,
}

impl Rotation {
    /// The rotation of order `n` made from `seed`.
    pub fn new(n: usize, seed: u64) -> Rotation {
        let (q, _) = super::orthogonal::random_orthogonal(n, seed);
        let mut qt = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                qt[j * n + i] = q[i * n + j];
            }
        }
        Rotation { n, seed, q, qt }
    }

    /// A shared rotation, reused for every layer of the same width and seed.
    pub fn shared(n: usize, seed: u64) -> Arc<Rotation> {
        use std::collections::HashMap;
        use std::sync::Mutex;
        type Cache = HashMap<(usize, u64), Arc<Rotation>>;
        static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
        let mut cache = CACHE.lock().expect("rotation cache");
        cache
            .get_or_insert_with(HashMap::new)
            .entry((n, seed))
            .or_insert_with(|| Arc::new(Rotation::new(n, seed)))
            .clone()
    }

    /// `t` rows of `x` rotated: each row `x` becomes `Q·x` (the layer's input, and the
    /// weights' rows at quantization time: `W' = W·Qᵀ`).
    pub fn rotate_rows(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = vec![0.0; t * self.n];
        crate::tensor::matmul_wt(x, t, self.n, &self.q, self.n, &mut out);
        out
    }

    /// Rows rotated back: each row `w'` becomes `Qᵀ·w'` (the dense decode `W = W'·Q`).
    pub fn unrotate_rows(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = vec![0.0; t * self.n];
        crate::tensor::matmul_wt(x, t, self.n, &self.qt, self.n, &mut out);
        out
    }

    /// The input Hessian in the rotated basis, `Q·H·Qᵀ` (row-major `n × n`).
    pub fn rotate_hessian(&self, h: &[f32]) -> Vec<f32> {
        let n = self.n;
        // (Q·H)·Qᵀ: rows of Q·H are Q's rows times H (H symmetric: Hᵀ = H).
        let mut qh = vec![0.0; n * n];
        crate::tensor::matmul_wt(&self.q, n, n, h, n, &mut qh);
        let mut out = vec![0.0; n * n];
        crate::tensor::matmul_wt(&qh, n, n, &self.q, n, &mut out);
        out
    }

    /// Per-column importance in the rotated basis: `diag(Q·H·Qᵀ)` scaled to the same total
    /// as `importance`, from the rotated Hessian when there is one, else from
    /// `diag(Q·diag(importance)·Qᵀ)`.
    pub fn rotate_importance(&self, importance: &[f32], rotated_hessian: Option<&[f32]>) -> Vec<f32> {
        let n = self.n;
        let diag: Vec<f64> = match rotated_hessian {
            Some(h) => (0..n).map(|i| h[i * n + i] as f64).collect(),
            None => (0..n)
                .map(|i| (0..n).map(|j| (self.q[i * n + j] as f64).powi(2) * importance[j] as f64).sum())
                .collect(),
        };
        let (want, have) = (importance.iter().map(|&v| v as f64).sum::<f64>(), diag.iter().sum::<f64>());
        let scale = if have > 0.0 { want / have } else { 0.0 };
        diag.iter().map(|&v| (v * scale) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating the weights and the input leaves the product unchanged, rotating back
    /// restores the weights, and the Hessian rotates to the rotated inputs' Gram matrix.
    #[test]
    fn rotated_weights_and_inputs_give_the_same_outputs() {
        let n = 24; // 24 = 2 · 12: Sylvester × Paley (q = 11)
        let r = Rotation::new(n, SEED);
        let w: Vec<f32> = (0..5 * n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let x: Vec<f32> = (0..3 * n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
        let (w2, x2) = (r.rotate_rows(&w, 5), r.rotate_rows(&x, 3));
        let (mut y, mut y2) = (vec![0.0; 15], vec![0.0; 15]);
        crate::tensor::matmul_wt(&x, 3, n, &w, 5, &mut y);
        crate::tensor::matmul_wt(&x2, 3, n, &w2, 5, &mut y2);
        y.iter().zip(&y2).for_each(|(a, b)| assert!((a - b).abs() < 1e-4, "{a} vs {b}"));
        r.unrotate_rows(&w2, 5).iter().zip(&w).for_each(|(a, b)| assert!((a - b).abs() < 1e-5));
        let gram = |v: &[f32]| {
            let mut g = vec![0.0f32; n * n];
            for row in v.chunks_exact(n) {
                for i in 0..n {
                    for j in 0..n {
                        g[i * n + j] += row[i] * row[j];
                    }
                }
            }
            g
        };
        let h2 = r.rotate_hessian(&gram(&x));
        h2.iter().zip(&gram(&x2)).for_each(|(a, b)| assert!((a - b).abs() < 1e-3, "{a} vs {b}"));
        let imp: Vec<f32> = (0..n).map(|i| if i == 3 { 100.0 } else { 1.0 }).collect();
        let flat = r.rotate_importance(&imp, None);
        // A Hadamard rotation spreads the loud channel evenly: every entry is the mean.
        let mean = imp.iter().sum::<f32>() / n as f32;
        flat.iter().for_each(|v| assert!((v - mean).abs() < 1e-3 * mean, "{v} vs {mean}"));
    }
}
