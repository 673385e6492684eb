use rand::{Rng, SeedableRng};

use super::*;

/// GPTQ as published (damp 0.01, no shrinkage): the theory below assumes the true H.
const CLASSIC: GptqOptions = GptqOptions { damp: 0.01, shrink: 0.0, refine: false };
use crate::format::dequantize_to_vec;
use crate::format::encode::quantize_rows;

/// Standard normal samples (Box–Muller) from a seeded generator.
fn gaussian(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (a, b): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        })
        .collect()
}

/// Inputs with correlated columns: `latent` factors mixed into `n` columns plus
/// independent noise of standard deviation `noise`. Returns H = XᵀX.
fn correlated_hessian(rng: &mut rand::rngs::StdRng, t: usize, n: usize, latent: usize, noise: f32) -> Vec<f32> {
    let z = gaussian(rng, t * latent);
    let a = gaussian(rng, latent * n);
    let e = gaussian(rng, t * n);
    let mut x = vec![0.0f64; t * n];
    for s in 0..t {
        for j in 0..n {
            let mix: f32 = (0..latent).map(|k| z[s * latent + k] * a[k * n + j]).sum();
            x[s * n + j] = (mix + noise * e[s * n + j]) as f64;
        }
    }
    let mut h = vec![0.0f64; n * n];
    for row in x.chunks_exact(n) {
        for i in 0..n {
            for k in 0..n {
                h[i * n + k] += row[i] * row[k];
            }
        }
    }
    h.into_iter().map(|v| v as f32).collect()
}

/// The output error GPTQ should reach relative to independent rounding, if every
/// rounding error had the same variance: the error of column j is then seen through
/// R_jj² (the variance of input j left unexplained by the inputs quantized after it,
/// R = U⁻¹) instead of H_jj. Σ_j R_jj² / Σ_j H_jj, with R_jj = 1 / U_jj.
fn predicted_ratio(h: &[f32], n: usize) -> f64 {
    let u = inverse_factor(h, n, &CLASSIC).unwrap().u;
    let r2: f64 = (0..n).map(|j| 1.0 / (u[j * n + j] as f64).powi(2)).sum();
    let diag: f64 = (0..n).map(|j| h[j * n + j] as f64).sum();
    r2 / diag
}

#[test]
fn gptq_beats_rounding_on_correlated_inputs_by_the_predicted_margin() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (rows, n) = (32, 256);
    let h = correlated_hessian(&mut rng, 1024, n, 24, 0.5);
    let w = gaussian(&mut rng, rows * n);
    let predicted = predicted_ratio(&h, n);
    for ty in [GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q3_K, GgmlType::IQ4_XS] {
        let rtn = dequantize_to_vec(ty, &quantize_rows(ty, &w, n, None, Fit::Search).unwrap(), w.len()).unwrap();
        let gptq = dequantize_to_vec(ty, &gptq_rows(ty, &w, n, &h, &CLASSIC).unwrap(), w.len()).unwrap();
        let (e_rtn, e_gptq) = (output_error(&w, &rtn, n, &h), output_error(&w, &gptq, n, &h));
        let ratio = e_gptq / e_rtn;
        eprintln!("{ty}: rtn {e_rtn:.4e} gptq {e_gptq:.4e} ratio {ratio:.3} predicted {predicted:.3}");
        // Measured 0.065–0.098 against 0.079 predicted (rounding errors are not exactly
        // equal in variance: coarser grids clamp more, block fits see updated weights).
        assert!(
            ratio > 0.6 * predicted && ratio < 1.5 * predicted,
            "{ty}: ratio {ratio:.3} vs predicted {predicted:.3}"
        );
    }
}

#[test]
fn gptq_equals_plain_rounding_error_when_inputs_are_independent() {
    // With H diagonal there is nothing to compensate: GPTQ's output error matches
    // importance-weighted rounding's within the noise of the block fits.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (rows, n) = (16, 256);
    let diag: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
    let mut h = vec![0.0; n * n];
    (0..n).for_each(|i| h[i * n + i] = diag[i]);
    let w = gaussian(&mut rng, rows * n);
    let imp: Vec<f32> = diag.clone();
    let ty = GgmlType::Q4_K;
    let plain = dequantize_to_vec(ty, &quantize_rows(ty, &w, n, Some(&imp), Fit::Search).unwrap(), w.len()).unwrap();
    let gptq = dequantize_to_vec(ty, &gptq_rows(ty, &w, n, &h, &CLASSIC).unwrap(), w.len()).unwrap();
    let ratio = output_error(&w, &gptq, n, &h) / output_error(&w, &plain, n, &h);
    assert!((0.9..1.1).contains(&ratio), "ratio {ratio:.3}");
}

#[test]
fn dead_and_degenerate_hessians_are_handled() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let n = 64;
    let w = gaussian(&mut rng, 4 * n);
    // Rank one (every input the same direction) and some columns never active.
    let v: Vec<f32> = (0..n).map(|i| if i % 9 == 0 { 0.0 } else { 1.0 + (i % 3) as f32 }).collect();
    let h: Vec<f32> = (0..n * n).map(|k| v[k / n] * v[k % n]).collect();
    let bytes = gptq_rows(GgmlType::Q4_0, &w, n, &h, &CLASSIC).unwrap();
    let q = dequantize_to_vec(GgmlType::Q4_0, &bytes, w.len()).unwrap();
    assert!(q.iter().all(|x| x.is_finite()));
    // Dead columns carry no output error: GPTQ zeroes them.
    assert!((0..4).all(|r| (0..n).step_by(9).all(|i| q[r * n + i] == 0.0)));
    // Same inputs, same bytes.
    assert_eq!(bytes, gptq_rows(GgmlType::Q4_0, &w, n, &h, &CLASSIC).unwrap());
}

#[test]
fn bad_shapes_and_values_are_errors() {
    let h = vec![1.0; 64 * 64];
    assert!(gptq_rows(GgmlType::Q4_0, &[0.0; 60], 60, &vec![1.0; 3600], &CLASSIC).is_err());
    assert!(gptq_rows(GgmlType::Q4_0, &[0.0; 64], 64, &h[..100], &CLASSIC).is_err());
    let mut w = vec![0.5f32; 64];
    w[3] = f32::NAN;
    assert!(matches!(gptq_rows(GgmlType::Q4_0, &w, 64, &h, &CLASSIC), Err(EncodeError::NonFinite { index: 3, .. })));
    assert!(gptq_rows(GgmlType::MXFP4, &[0.0; 64], 64, &h, &CLASSIC).is_err());
}

#[test]
fn refinement_never_raises_the_output_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, n) = (16, 256);
    let h = correlated_hessian(&mut rng, 1024, n, 24, 0.5);
    let w = gaussian(&mut rng, rows * n);
    let refined = GptqOptions { refine: true, ..CLASSIC };
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q2_K, GgmlType::Q6_K, GgmlType::IQ4_XS] {
        let plain = dequantize_to_vec(ty, &gptq_rows(ty, &w, n, &h, &CLASSIC).unwrap(), w.len()).unwrap();
        let better = dequantize_to_vec(ty, &gptq_rows(ty, &w, n, &h, &refined).unwrap(), w.len()).unwrap();
        let (a, b) = (output_error(&w, &plain, n, &h), output_error(&w, &better, n, &h));
        eprintln!("{ty}: gptq {a:.4e}, refined {b:.4e} ({:.4})", b / a);
        // Per row the refit is kept only if the error under the (nearly identical,
        // damp 0.01) regularised H dropped; summed over rows it cannot rise beyond that.
        assert!(b <= a * 1.001, "{ty}: refinement raised the error {a:.4e} → {b:.4e}");
    }
}

#[test]
fn lattice_gptq_beats_importance_rounding_on_correlated_inputs() {
    // The i-quants round 8 columns at a time, so the columns of a group cannot compensate
    // each other: the gain is somewhat smaller than the scalar prediction, but of its order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (rows, n) = (32, 256);
    let h = correlated_hessian(&mut rng, 1024, n, 24, 0.5);
    let w = gaussian(&mut rng, rows * n);
    let diag: Vec<f32> = (0..n).map(|i| h[i * n + i]).collect();
    let predicted = predicted_ratio(&h, n);
    for ty in [
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
    ] {
        let plain = quantize_rows(ty, &w, n, Some(&diag), Fit::Search).unwrap();
        let plain = dequantize_to_vec(ty, &plain, w.len()).unwrap();
        let gptq = dequantize_to_vec(ty, &gptq_rows(ty, &w, n, &h, &CLASSIC).unwrap(), w.len()).unwrap();
        let (e_plain, e_gptq) = (output_error(&w, &plain, n, &h), output_error(&w, &gptq, n, &h));
        let ratio = e_gptq / e_plain;
        eprintln!(
            "{ty}: importance {e_plain:.4e} gptq {e_gptq:.4e} ratio {ratio:.3} predicted (scalar) {predicted:.3}"
        );
        // Measured 0.097–0.166 against 0.079: 1.2–2.1× (IQ1 most: its sub-scale and shift
        // are fitted before the updates arrive).
        assert!(ratio < 2.5 * predicted, "{ty}: ratio {ratio:.3} vs predicted {predicted:.3}");
    }
}

#[test]
fn native_gptq_beats_rounding_by_the_predicted_margin_and_decodes_as_the_format() {
    use crate::format::native::NativeFormat;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, n) = (16, 256);
    let h = correlated_hessian(&mut rng, 1024, n, 24, 0.5);
    let w = gaussian(&mut rng, rows * n);
    let predicted = predicted_ratio(&h, n);
    for name in ["int4_g64", "int3_g64_zp", "int8_g32", "nf4_g64", "fp4_g32", "fp8_g32"] {
        let f = NativeFormat::from_name(name).unwrap();
        let rb = f.row_bytes(n).unwrap();
        let decode = |bytes: &[u8]| {
            let mut out = vec![0f32; w.len()];
            for (r, o) in bytes.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
                f.decode_row(r, o);
            }
            out
        };
        let mut plain = vec![0u8; rows * rb];
        for (x, o) in w.chunks_exact(n).zip(plain.chunks_exact_mut(rb)) {
            f.encode_row(x, None, Fit::Search, o).unwrap();
        }
        let gptq = gptq_native(f, &w, n, &h, &CLASSIC).unwrap();
        assert_eq!(gptq.len(), plain.len(), "{name}: row layout");
        let (e_plain, e_gptq) = (output_error(&w, &decode(&plain), n, &h), output_error(&w, &decode(&gptq), n, &h));
        let ratio = e_gptq / e_plain;
        eprintln!("{name}: search {e_plain:.4e} gptq {e_gptq:.4e} ratio {ratio:.3} predicted {predicted:.3}");
        assert!(
            ratio > 0.5 * predicted && ratio < 1.6 * predicted,
            "{name}: ratio {ratio:.3} vs predicted {predicted:.3}"
        );
    }
}

#[test]
fn the_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse() {
    // UᵀU·H' = I for the regularised H', and U is upper triangular with a positive diagonal.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let n = 96;
    let h = correlated_hessian(&mut rng, 256, n, 12, 0.3);
    let f = inverse_factor(&h, n, &GptqOptions::default()).unwrap();
    let regularised = f.regularised(&h);
    for i in 0..n {
        assert!(f.u[i * n + i] > 0.0);
        assert!((0..i).all(|j| f.u[i * n + j] == 0.0));
    }
    let mut worst = 0.0f64;
    for i in 0..n {
        for k in 0..n {
            // (UᵀU·H')[i][k] = Σ_j Σ_l U[j][i]·U[j][l]·H'[l][k]
            let v: f64 = (0..n)
                .map(|j| {
                    let uji = f.u[j * n + i] as f64;
                    uji * (0..n).map(|l| f.u[j * n + l] as f64 * regularised[l * n + k] as f64).sum::<f64>()
                })
                .sum();
            worst = worst.max((v - if i == k { 1.0 } else { 0.0 }).abs());
        }
    }
    assert!(worst < 1e-4, "UᵀU·H' is {worst:.2e} away from the identity");
}

#[test]
fn lazy_panels_give_the_column_by_column_sweep() {
    // The deferred update reorders float sums only: rounding to a fixed grid with 128-column
    // panels and with one panel spanning the matrix must give the same weights, up to the
    // rare decision that a summation-order difference flips.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (rows, n) = (20, 640);
    let h = correlated_hessian(&mut rng, 1024, n, 32, 0.4);
    let w = gaussian(&mut rng, rows * n);
    let f = inverse_factor(&h, n, &CLASSIC).unwrap();
    let sweep = |width: usize| {
        let mut work = w.clone();
        let mut out = vec![0u8; rows];
        let mut states = vec![(); rows.div_ceil(ROW_TILE)];
        lazy_sweep(&mut work, n, &f, width, &mut out, 1, &mut states, |_, p| {
            for j in p.p0..p.p1 {
                for r in 0..p.rows() {
                    let q = (p.at(r, j) * 4.0).round() / 4.0;
                    p.settle(r, j, q, &f);
                }
            }
            Ok(())
        })
        .unwrap();
        work
    };
    let (lazy, direct) = (sweep(panel_width(32)), sweep(n));
    let differ = lazy.iter().zip(&direct).filter(|(a, b)| a != b).count();
    assert!(differ * 200 <= lazy.len(), "{differ} of {} weights differ", lazy.len());
    let (e_lazy, e_direct) = (output_error(&w, &lazy, n, &h), output_error(&w, &direct, n, &h));
    assert!((e_lazy / e_direct - 1.0).abs() < 0.01, "output errors {e_lazy:.4e} vs {e_direct:.4e}");
}
