//! AWQ's per-input-channel scale search (Lin et al., "AWQ: Activation-aware Weight
//! Quantization"), measured with the input Hessian instead of a forward pass.
//!
//! For weights W that read one input x (q, k and v; gate and up; down; o), scaling input
//! channel j of W by s_j and dividing the producer of x_j by it (a norm weight, the rows of
//! up or v) leaves the model unchanged, but changes what rounding costs: channels with large
//! activations get finer steps. AWQ takes s = a^α with a_j the channel's typical magnitude
//! (here its RMS over the calibration rows, √(H_jj / rows)) and α searched on a grid. The
//! loss of each α is the layer-output error the scaled weights' quantization leaves,
//! ‖(Q(W·diag s)·diag(1/s) − W)·Xᵀ‖² = tr(ΔW·H·ΔWᵀ) with H = Σ xxᵀ — the same quantity
//! GPTQ minimises — so no forward pass is needed. α = 0 (no scaling) is on the grid, so the
//! chosen scales never measure worse than none. The error is measured on up to
//! [`SAMPLE_ROWS`] evenly spread rows of each weight (gemma3: 448 s for the search over all
//! rows on a loaded machine, the bulk of it encodes of 2048-row matrices).

use crate::calibrate::Hessian;
use crate::error::{Error, Result};
use crate::format::storage::StorageType;
use crate::method::{quantize_tensor, Calibration, Method, MethodOptions};

/// The α grid: 0, 0.1, …, 1 (AWQ's own grid has 20 points; 11 measured the same optimum
/// within one step on smollm2's layers and halve the time).
pub const ALPHA_GRID: usize = 11;

/// Rows of each weight the search measures (evenly spread; all when fewer).
pub const SAMPLE_ROWS: usize = 256;

/// The outcome of one group's search.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AwqChoice {
    /// The chosen exponent.
    pub alpha: f32,
    /// Output error without scaling (α = 0).
    pub error_unscaled: f64,
    /// Output error with the chosen scales.
    pub error: f64,
}

/// One weight of a group: row-major values (rows of `n` columns) and the type its
/// quantization is measured with.
pub struct GroupWeight<'a> {
    /// The values.
    pub values: &'a [f32],
    /// The type to measure rounding with.
    pub ty: StorageType,
}

/// Searches the scales for `weights`, all reading the input whose Hessian is `h` (n × n).
/// `tie` maps each column to a class whose columns must share one scale (o's columns of
/// the query heads that read the same KV head, since the scale folds into v's rows), or
/// `None`. Returns one scale per column (geometric mean 1 over the extremes) and the
/// choice.
pub fn search(
    weights: &[GroupWeight],
    h: &Hessian,
    tie: Option<&[usize]>,
    options: &MethodOptions,
) -> Result<(Vec<f32>, AwqChoice)> {
    let n = h.n;
    let rows = h.count.max(1) as f64;
    let mut magnitude: Vec<f64> = (0..n).map(|j| (h.xtx[j * n + j] as f64 / rows).max(0.0).sqrt()).collect();
    if let Some(class) = tie {
        let classes = class.iter().max().map_or(0, |m| m + 1);
        let mut sum = vec![0f64; classes];
        let mut count = vec![0f64; classes];
        for (j, &c) in class.iter().enumerate() {
            sum[c] += magnitude[j];
            count[c] += 1.0;
        }
        for (j, &c) in class.iter().enumerate() {
            magnitude[j] = sum[c] / count[c];
        }
    }
    let top = magnitude.iter().cloned().fold(0f64, f64::max);
    if top <= 0.0 {
        let error = group_error(weights, h, &vec![1.0; n], options)?;
        return Ok((vec![1.0; n], AwqChoice { alpha: 0.0, error_unscaled: error, error }));
    }
    let floor = top * 1e-4;
    let magnitude: Vec<f64> = magnitude.iter().map(|&a| a.max(floor)).collect();
    let mut best: Option<(f64, f32, Vec<f32>)> = None;
    let mut unscaled = 0.0;
    for step in 0..ALPHA_GRID {
        let alpha = step as f64 / (ALPHA_GRID - 1) as f64;
        let s = scales(&magnitude, alpha);
        let error = group_error(weights, h, &s, options)?;
        if step == 0 {
            unscaled = error;
        }
        if best.as_ref().is_none_or(|b| error < b.0) {
            best = Some((error, alpha as f32, s));
        }
    }
    let (error, alpha, s) = best.expect("the grid is not empty");
    Ok((s, AwqChoice { alpha, error_unscaled: unscaled, error }))
}

/// s = a^α, normalised so that √(max·min) = 1 (AWQ's normalisation).
fn scales(magnitude: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = magnitude.iter().map(|a| a.powf(alpha)).collect();
    let (lo, hi) = s.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|x| (x / norm) as f32).collect()
}

/// Σ over the group of tr(ΔW·H·ΔWᵀ), ΔW = Q(W·diag s)·diag(1/s) − W.
fn group_error(weights: &[GroupWeight], h: &Hessian, s: &[f32], options: &MethodOptions) -> Result<f64> {
    let n = h.n;
    // The scaled weights' column importances (the imatrix the quantizer weighs by).
    let importance: Vec<f32> = (0..n).map(|j| h.xtx[j * n + j] / (s[j] * s[j])).collect();
    let mut total = 0.0;
    for w in weights {
        // The same evenly spread rows for every α (rows round independently, so the error
        // of a sample ranks the α values as the whole matrix does, at a fraction of the
        // encodes and products).
        let all = w.values.len() / n;
        let out = all.min(SAMPLE_ROWS);
        let rows: Vec<&[f32]> = (0..out).map(|i| &w.values[i * all / out * n..][..n]).collect();
        let original: Vec<f32> = rows.concat();
        let scaled: Vec<f32> = rows.iter().flat_map(|r| r.iter().zip(s).map(|(x, s)| x * s)).collect();
        let calibration = Calibration { importance: Some(&importance), hessian: None };
        let encoded = quantize_tensor(w.ty, &scaled, n, Method::Search, &calibration, options)
            .map_err(|e| Error::Usage(format!("AWQ search: cannot encode as {}: {e}", w.ty)))?;
        let decoded = encoded
            .decode(w.ty, scaled.len(), n)
            .map_err(|e| Error::Usage(format!("AWQ search: cannot decode {}: {e}", w.ty)))?;
        let delta: Vec<f32> = decoded
            .chunks_exact(n)
            .zip(original.chunks_exact(n))
            .flat_map(|(q, r)| q.iter().zip(r).zip(s).map(|((q, r), s)| q / s - r))
            .collect();
        let mut dh = vec![0f32; delta.len()];
        // H is symmetric, so Δ·Hᵀ = Δ·H.
        crate::tensor::matmul_wt(&delta, out, n, &h.xtx, n, &mut dh);
        total += delta.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A layer whose input has a few channels 30× larger than the rest: scaling must cut
    /// the output error (AWQ's premise), and never raise it (α = 0 is on the grid).
    #[test]
    fn scales_cut_the_error_of_outlier_channels() {
        let (n, out, t) = (64, 32, 512);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..t * n)
            .map(|i| {
                let hot = (i % n) % 16 == 0;
                (rng.random::<f32>() - 0.5) * if hot { 30.0 } else { 1.0 }
            })
            .collect();
        let mut xtx = vec![0f32; n * n];
        crate::tensor::gram(&x, t, n, &mut xtx);
        let h = Hessian { n, xtx: xtx.into(), count: t as u64 };
        let w: Vec<f32> = (0..out * n).map(|_| rng.random::<f32>() - 0.5).collect();
        let ty = StorageType::from_name("Q4_0").unwrap();
        let group = [GroupWeight { values: &w, ty }];
        let (s, choice) = search(&group, &h, None, &MethodOptions::default()).unwrap();
        assert!(choice.error <= choice.error_unscaled);
        assert!(choice.error < 0.9 * choice.error_unscaled, "{choice:?}");
        assert!(choice.alpha > 0.0);
        // The hot channels get the larger scales.
        assert!(s[0] > s[1] && s[16] > s[17]);
        // Tied columns share one scale.
        let class: Vec<usize> = (0..n).map(|j| j % 8).collect();
        let (s, _) = search(&group, &h, Some(&class), &MethodOptions::default()).unwrap();
        assert!((0..n).all(|j| s[j] == s[j % 8]));
    }
}
