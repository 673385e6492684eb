//! Learned vector codebooks for one tensor ([`crate::format::vq`]), after VPTQ (Liu et al.,
//! 2024) with the PV-Tuning idea of alternating discrete and continuous updates, without
//! gradients:
//!
//! 1. the format's outlier columns, if any, are the columns of largest importance (the
//!    Hessian diagonal: the channels with the largest inputs); they are stored apart as
//!    f16 values and left out of everything below;
//! 2. every row is normalised by its RMS (stored as the row's f16 scale);
//! 3. the codebook is fitted by weighted k-means ([`crate::method::kmeans`]) on the
//!    row vectors, each coordinate weighted by its column's importance and each row by
//!    its scale², so that the distortion k-means minimises is the weight error that
//!    matters; a residual codebook, if the format has one, is fitted the same way on what
//!    the first one leaves;
//! 4. with a calibration Hessian, codes are chosen by a GPTQ sweep over column groups of
//!    the vector length: each vector takes its nearest entry for the weights as updated so
//!    far, and its error is pushed onto the columns not yet quantized (the error feedback
//!    of GPTQ, as VPTQ does); the outlier values are then set to absorb exactly what the
//!    codes get wrong;
//! 5. then, alternating: both codebooks by least squares on the layer output error with
//!    the full Hessian, the row scales likewise, the outlier values again — and the sweep
//!    re-chooses every code for the new codebooks (candidate re-assignment); the state
//!    with the lowest output error ‖(W − Ŵ)Xᵀ‖² is kept.
//!
//! Without a Hessian, step 4 is plain nearest-entry assignment (what k-means ends with)
//! and the outlier values are the weights themselves.
//!
//! Files: [`fit`] (k-means, step 3), [`sweep`] (codes, step 4), [`refit`] (least squares,
//! step 5), [`outliers`] (steps 1 and the outlier refits); this file holds the options, the
//! state and the loop.

mod fit;
mod outliers;
mod refit;
mod sweep;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

use fit::*;
use outliers::*;
use refit::*;
use sweep::*;

use super::gptq::{inverse_factor, GptqOptions};
use super::kmeans::{kmeans, nearest, used_entries, KmeansOptions};
use crate::format::encode::EncodeError;
use crate::format::vq::{pack_row, Codebook, VqFormat};

/// Options of [`quantize_vq`].
#[derive(Clone, Copy, Debug)]
pub struct VqOptions {
    /// k-means settings (iterations, seed).
    pub kmeans: KmeansOptions,
    /// Codebook-update / re-assignment rounds after the first sweep (Hessian only).
    pub rounds: usize,
    /// Dampening and shrinkage of the Hessian for the sweep (as for GPTQ).
    pub gptq: GptqOptions,
    /// How the codebooks are refitted between sweeps.
    pub refit: CodebookRefit,
    /// Store the codebooks on int8 grids ([`crate::format::vq::GRID_MAX`]) instead of as
    /// plain f16 values, so lowbit's integer kernels take their one-byte path (one byte
    /// plane per codebook instead of two). Measured on smollm2 vq4x256+128 (Austen
    /// statistics, GPTQ; wiki.valid KLD, exact numerics) with two k-means seeds: 0.2146 and
    /// 0.2282 without, 0.2337 and 0.2309 with (+5 % on average — the seed alone moves it
    /// by 6 %); the layers' output error on the calibration inputs 0.473 % → 0.477 %.
    /// tg128 (`lowbit bench -t 2 -p 0 -n 128`, AVX-512 VBMI, interleaved): 107–112 →
    /// 129–135 t/s. Off by default: quality first.
    pub int8_grid: bool,
}

impl Default for VqOptions {
    fn default() -> Self {
        VqOptions {
            kmeans: KmeansOptions::default(),
            rounds: 2,
            gptq: GptqOptions::default(),
            refit: CodebookRefit::Auto,
            int8_grid: false,
        }
    }
}

/// The continuous step between sweeps (with a Hessian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodebookRefit {
    /// Every entry to the importance-weighted mean of the vectors using it (the k-means
    /// centroid step): the weight error, with the Hessian's diagonal only.
    Centroids,
    /// Both codebooks and the row scales by least squares on the layer output error with
    /// the full (regularised) Hessian.
    LeastSquares,
    /// Least squares at up to 2.5 code bits per weight, centroids above. Measured on
    /// smollm2-135m and gemma3-270m (Austen calibration, wiki.valid KLD): at 2 bits least
    /// squares lowers KLD by 9 % (1.944 → 1.778), at 3.5–3.8 bits it raises it by 5–11 %
    /// (0.2144 → 0.2379, 0.3301 → 0.3454), and also (0.1272 → 0.1308) with Hessians from
    /// wikitext-2, the evaluation's own domain: once the codes are fine, a lower layer output error
    /// stops meaning a lower KLD.
    Auto,
}

impl CodebookRefit {
    /// The refit `Auto` stands for with format `f`; others stand for themselves.
    pub fn resolve(self, f: &VqFormat) -> CodebookRefit {
        match self {
            CodebookRefit::Auto if f.code_bits() as f64 / f.dim as f64 <= 2.5 => CodebookRefit::LeastSquares,
            CodebookRefit::Auto => CodebookRefit::Centroids,
            other => other,
        }
    }
}

/// One tensor encoded as a VQ format.
#[derive(Clone, Debug)]
pub struct VqTensor {
    /// The stored rows (scale + codes).
    pub payload: Vec<u8>,
    /// The codebook tensor's bytes (f16, main entries then residual ones).
    pub codebook: Vec<u8>,
    /// Main-codebook entries some vector uses.
    pub used: usize,
    /// Residual-codebook entries some vector uses (0 without one).
    pub used_residual: usize,
    /// Layer output error ‖(W − Ŵ)Xᵀ‖² of the result, when a Hessian was given.
    pub output_error: Option<f64>,
    /// The same relative to the layer's output, ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖².
    pub relative_output_error: Option<f64>,
}

/// Codes of every vector and the codebooks, in normalised units, and the outlier
/// columns' values.
#[derive(Clone, Default)]
struct Codes {
    main: Vec<u32>,
    residual: Vec<u32>,
    codebook: Vec<f32>,
    residual_codebook: Vec<f32>,
    outliers: Outliers,
    /// Codebooks rounded to their int8 grids ([`VqOptions::int8_grid`]), else to f16.
    grid: bool,
}

impl Codes {
    /// Decodes the rows with the current codebooks ([`decode_rows`]).
    fn decode(&self, dim: usize, scales: &[f32], with_outliers: bool) -> Vec<f32> {
        decode_rows(dim, self, &self.codebook, &self.residual_codebook, scales, with_outliers)
    }
}

/// Quantizes the row-major matrix `w` (rows of `cols`) as `f`. `importance` (one per
/// column) weighs the codebook fit; `hessian` (cols × cols) enables the GPTQ sweep and the
/// refinement rounds, and supplies the importance (its diagonal) when none is given.
pub fn quantize_vq(
    f: &VqFormat,
    w: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
    hessian: Option<&[f32]>,
    opts: &VqOptions,
) -> Result<VqTensor, EncodeError> {
    let dim = f.dim;
    if f.outliers as usize >= cols {
        return Err(EncodeError::Codebook(format!(
            "{f} keeps {} columns apart, but the rows have only {cols}",
            f.outliers
        )));
    }
    let row_bytes = f
        .row_bytes(cols)
        .filter(|_| w.len().is_multiple_of(cols))
        .ok_or_else(|| EncodeError::PartialGroup { format: f.to_string(), n: cols, group: dim })?;
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFinite { index, value });
    }
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(EncodeError::ImportanceLength { got: imp.len(), need: cols });
        }
    }
    if let Some(h) = hessian {
        if h.len() != cols * cols {
            return Err(EncodeError::ImportanceLength { got: h.len(), need: cols * cols });
        }
    }
    let rows = w.len() / cols;
    let vectors = w.len() / dim;
    if f.entries() > vectors / 2 {
        return Err(EncodeError::Codebook(format!(
            "a codebook of {} entries for only {vectors} vectors learns nothing: use fewer entries (or a residual codebook)",
            f.entries()
        )));
    }
    let column_weight: Vec<f32> = match (importance, hessian) {
        (Some(imp), _) => imp.iter().map(|v| v.max(0.0)).collect(),
        (None, Some(h)) => (0..cols).map(|i| h[i * cols + i].max(0.0)).collect(),
        (None, None) => vec![1.0; cols],
    };
    let mut outliers = Outliers::choose(&column_weight, f.outliers as usize);
    let coded_cols = cols - outliers.columns.len();
    // Row scales as stored (f16): the RMS over the coded columns; the normalised rows.
    let mut scales: Vec<f32> = w
        .chunks_exact(cols)
        .map(|r| {
            let sq: f32 = r.iter().enumerate().filter(|(j, _)| outliers.coded(*j)).map(|(_, v)| v * v).sum();
            half::f16::from_f32((sq / coded_cols as f32).sqrt()).to_f32()
        })
        .collect();
    let x: Vec<f32> = w
        .chunks_exact(cols)
        .zip(&scales)
        .flat_map(|(r, &s)| r.iter().map(move |v| if s > 0.0 { v / s } else { 0.0 }))
        .collect();
    // A column no input ever reaches (zero importance) would give k-means nothing to fit;
    // an outlier column is not the codebooks' to fit.
    let floor = column_weight.iter().sum::<f32>() / cols as f32 * 1e-6;
    let column_weight: Vec<f32> =
        column_weight.iter().enumerate().map(|(j, &c)| if outliers.coded(j) { c + floor } else { 0.0 }).collect();
    let weights: Vec<f32> = scales.iter().flat_map(|&s| column_weight.iter().map(move |&c| c * s * s)).collect();
    let raw: Vec<f32> = w.chunks_exact(cols).flat_map(|r| outliers.columns.iter().map(|&c| r[c])).collect();
    outliers.set(&raw);
    let mut codes = Codes { outliers, ..fit_codebooks(f, &x, &weights, opts) };
    let output_error = match hessian {
        None => None,
        Some(h) => {
            let factor = inverse_factor(h, cols, &opts.gptq).map_err(EncodeError::Hessian)?;
            // The continuous refits and the choice between rounds use the regularised H
            // (dampened, off-diagonal shrunk) as the sweep does: fitted to the raw
            // calibration Hessian, they would let the error grow along the directions
            // the calibration text barely excites.
            let hr = &factor.regularised(h);
            let compensation = OutlierCompensation::new(&codes.outliers, hr, cols);
            sweep(f, w, &scales, cols, &factor.u, &mut codes);
            compensation.refit(f, w, &scales, cols, &mut codes);
            let mut best = (output_error(f, w, &scales, cols, &codes, hr), codes.clone(), scales.clone());
            let mut keep_if_better = |codes: &Codes, scales: &[f32]| {
                let e = output_error(f, w, scales, cols, codes, hr);
                if e < best.0 {
                    best = (e, codes.clone(), scales.to_vec());
                }
            };
            for _ in 0..opts.rounds {
                if opts.refit.resolve(f) == CodebookRefit::LeastSquares {
                    refit_codebooks(f, w, &scales, cols, hr, &mut codes);
                    refit_scales(f, w, &mut scales, cols, hr, &codes);
                } else {
                    refit_centroids(f, &x, &weights, &mut codes);
                }
                compensation.refit(f, w, &scales, cols, &mut codes);
                keep_if_better(&codes, &scales);
                sweep(f, w, &scales, cols, &factor.u, &mut codes);
                compensation.refit(f, w, &scales, cols, &mut codes);
                keep_if_better(&codes, &scales);
            }
            (_, codes, scales) = best;
            Some(output_error(f, w, &scales, cols, &codes, h))
        }
    };
    // Store the codebooks as f16 (what decoding will see).
    let codebook = Codebook {
        entries: codes.codebook.iter().chain(&codes.residual_codebook).copied().collect(),
        outlier_columns: codes.outliers.columns.clone(),
    }
    .to_bytes();
    let per_row = cols / dim;
    let n_out = codes.outliers.columns.len();
    let mut payload = vec![0u8; rows * row_bytes];
    payload.par_chunks_mut(row_bytes).enumerate().for_each(|(r, out)| {
        let main = &codes.main[r * per_row..(r + 1) * per_row];
        let residual =
            if codes.residual.is_empty() { &[][..] } else { &codes.residual[r * per_row..(r + 1) * per_row] };
        pack_row(f, scales[r], main, residual, &codes.outliers.values[r * n_out..(r + 1) * n_out], out);
    });
    Ok(VqTensor {
        payload,
        codebook,
        used: used_entries(&codes.main, f.entries()),
        used_residual: used_entries(&codes.residual, f.residual_entries()),
        output_error,
        relative_output_error: output_error
            .zip(hessian)
            .map(|(e, h)| e / quadratic_form(w, cols, h).max(f64::MIN_POSITIVE)),
    })
}

/// Rounds a codebook's entries as they will be stored: to its int8 grid
/// ([`crate::format::vq::round_to_grid`], exact in f16) with `grid`
/// ([`VqOptions::int8_grid`]), else to f16.
fn round_book(v: &mut [f32], grid: bool) {
    if grid {
        crate::format::vq::round_to_grid(v);
    } else {
        v.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
    }
}

/// Σ_rows d H dᵀ for the rows of `d` (a gemm, then an f64 sum): with d = w it is the
/// layer's output energy ‖WXᵀ‖² on the calibration inputs, with d = w − ŵ the output
/// error. [`crate::method::gptq::output_error`] is the same quantity as a plain loop.
fn quadratic_form(d: &[f32], cols: usize, h: &[f32]) -> f64 {
    let mut dh = vec![0.0f32; d.len()];
    crate::tensor::matmul_wt(d, d.len() / cols, cols, h, cols, &mut dh);
    d.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// ‖(W − Ŵ)Xᵀ‖² = Σ_rows δ H δᵀ for the decoded codes.
fn output_error(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, codes: &Codes, h: &[f32]) -> f64 {
    let decoded = codes.decode(f.dim, scales, true);
    let delta: Vec<f32> = w.iter().zip(&decoded).map(|(a, b)| a - b).collect();
    quadratic_form(&delta, cols, h)
}
