//! Tests of learned-codebook quantization.

use super::*;
use crate::format::vq::VqFormat;
use rand::{Rng, SeedableRng};

fn gaussian(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (a, b): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
            (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        })
        .collect()
}

fn decode(f: &VqFormat, t: &VqTensor, cols: usize) -> Vec<f32> {
    f.decode(&t.payload, &t.codebook, cols).unwrap()
}

#[test]
fn gaussian_distortion_matches_the_codebook_size() {
    // Unit Gaussian weights, vq2x16 (2 bits per value) and vq4x256 (2 bits per value):
    // a trained codebook of 2^(2·dim) entries lands between Shannon's bound 2^(−2R) = 0.0625
    // and the scalar Lloyd–Max quantizer's 0.1175 (itself a product codebook), a little
    // above the optimum for the finite sample and the f16 storage.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (rows, cols) = (256, 256);
    let w = gaussian(&mut rng, rows * cols);
    for name in ["vq2x16", "vq4x256"] {
        let f = VqFormat::from_name(name).unwrap();
        let t = quantize_vq(&f, &w, cols, None, None, &VqOptions::default()).unwrap();
        let y = decode(&f, &t, cols);
        let mse: f64 = w.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / w.len() as f64;
        eprintln!("{name}: mse {mse:.4}, used {}/{}", t.used, f.entries());
        assert!(mse > 0.0625 && mse < 0.1175, "{name}: mse {mse:.4}");
        assert!(t.used * 10 >= f.entries() * 9, "{name}: only {} of {} entries used", t.used, f.entries());
    }
}

#[test]
fn residual_codebook_lowers_the_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (rows, cols) = (128, 256);
    let w = gaussian(&mut rng, rows * cols);
    let err = |name: &str| {
        let f = VqFormat::from_name(name).unwrap();
        let t = quantize_vq(&f, &w, cols, None, None, &VqOptions::default()).unwrap();
        let y = decode(&f, &t, cols);
        w.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / w.len() as f64
    };
    let (one, two) = (err("vq4x16"), err("vq4x16+16"));
    eprintln!("vq4x16 {one:.4}, vq4x16+16 {two:.4}");
    // 1 bit per value → 2 bits per value: the error should fall by well over a third.
    assert!(two < 0.66 * one, "{two:.4} vs {one:.4}");
}

/// The Hessian (Gram matrix) of `t` correlated inputs of `cols` features: `factors`
/// latent Gaussian factors mixed into every feature, plus Gaussian noise of `noise`.
fn correlated_hessian(rng: &mut rand::rngs::StdRng, t: usize, cols: usize, factors: usize, noise: f32) -> Vec<f32> {
    let z = gaussian(rng, t * factors);
    let mix = gaussian(rng, factors * cols);
    let e = gaussian(rng, t * cols);
    let x: Vec<f32> = (0..t * cols)
        .map(|i| {
            let latent: f32 = (0..factors).map(|k| z[(i / cols) * factors + k] * mix[k * cols + i % cols]).sum();
            latent + noise * e[i]
        })
        .collect();
    let mut h = vec![0.0f32; cols * cols];
    crate::tensor::gram(&x, t, cols, &mut h);
    h
}

#[test]
fn hessian_sweep_lowers_the_output_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (rows, cols, t) = (64, 128, 512);
    let h = correlated_hessian(&mut rng, t, cols, 8, 0.3);
    let w = gaussian(&mut rng, rows * cols);
    let f = VqFormat::from_name("vq4x256").unwrap();
    let diag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
    let plain = quantize_vq(&f, &w, cols, Some(&diag), None, &VqOptions::default()).unwrap();
    let y = decode(&f, &plain, cols);
    let e_plain = crate::method::gptq::output_error(&w, &y, cols, &h);
    for refit in [CodebookRefit::Centroids, CodebookRefit::LeastSquares] {
        let opts = VqOptions { refit, ..VqOptions::default() };
        let swept = quantize_vq(&f, &w, cols, None, Some(&h), &opts).unwrap();
        let e_swept = crate::method::gptq::output_error(&w, &decode(&f, &swept, cols), cols, &h);
        eprintln!("output error: importance k-means {e_plain:.4e}, with sweep and {refit:?} {e_swept:.4e}");
        assert!(e_swept < 0.7 * e_plain, "{refit:?}: {e_swept:.4e} vs {e_plain:.4e}");
        // The reported error is the error of what decodes.
        let reported = swept.output_error.unwrap();
        assert!((reported - e_swept).abs() < 1e-3 * e_swept, "{refit:?}: {reported} vs {e_swept}");
        // Relative to the layer's output energy Σ w H wᵀ.
        let zero = vec![0.0f32; w.len()];
        let energy = crate::method::gptq::output_error(&w, &zero, cols, &h);
        let relative = swept.relative_output_error.unwrap();
        assert!((relative - e_swept / energy).abs() < 1e-3 * relative, "{relative} vs {}", e_swept / energy);
    }
    assert_eq!(CodebookRefit::Auto.resolve(&f), CodebookRefit::LeastSquares);
    let fine = VqFormat::from_name("vq4x256+256").unwrap();
    assert_eq!(CodebookRefit::Auto.resolve(&fine), CodebookRefit::Centroids);
}

/// Minimises Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ over the codebooks by building the normal
/// equations densely and solving them (Gaussian elimination, a tiny ridge for the
/// main/residual shift the objective cannot see); returns the minimum and the largest
/// amount rounding the codebooks to their grids can add to the objective near it:
/// Σ_pq |A_pq| · δ_p · δ_q (A the normal matrix, δ half the grid step of the entry's
/// codebook, `steps` = (main, residual); the gradient there is zero, so that is the whole
/// second-order change).
fn dense_optimum(
    f: &VqFormat,
    w: &[f32],
    scales: &[f32],
    cols: usize,
    h: &[f32],
    codes: &Codes,
    steps: (f64, f64),
) -> (f64, f64) {
    let (dim, per_row) = (f.dim, cols / f.dim);
    let (n_main, n) = (codes.codebook.len(), codes.codebook.len() + codes.residual_codebook.len());
    let index = |r: usize, j: usize| -> Vec<usize> {
        let i = r * per_row + j / dim;
        let mut v = vec![codes.main[i] as usize * dim + j % dim];
        if n > n_main {
            v.push(n_main + codes.residual[i] as usize * dim + j % dim);
        }
        v
    };
    let (mut a, mut b) = (vec![vec![0.0f64; n + 1]; n], vec![0.0f64; n]);
    for (r, &s) in scales.iter().enumerate() {
        let s = s as f64;
        for j in 0..cols {
            for j2 in 0..cols {
                let hv = h[j * cols + j2] as f64;
                for &p in &index(r, j) {
                    b[p] += s * hv * w[r * cols + j2] as f64;
                    for &q in &index(r, j2) {
                        a[p][q] += s * s * hv;
                    }
                }
            }
        }
    }
    let delta: Vec<f64> = (0..n).map(|p| if p < n_main { steps.0 / 2.0 } else { steps.1 / 2.0 }).collect();
    let rounding: f64 = (0..n).map(|p| (0..n).map(|q| a[p][q].abs() * delta[p] * delta[q]).sum::<f64>()).sum();
    let ridge = 1e-9 * (0..n).map(|i| a[i][i]).sum::<f64>() / n as f64;
    for i in 0..n {
        a[i][i] += ridge.max(1e-12);
        a[i][n] = b[i];
    }
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs())).unwrap();
        a.swap(c, p);
        let pivot = a[c].clone();
        for (_, row) in a.iter_mut().enumerate().filter(|(r, _)| *r != c) {
            let m = row[c] / pivot[c];
            row.iter_mut().zip(&pivot).skip(c).for_each(|(x, p)| *x -= m * p);
        }
    }
    let x: Vec<f32> = (0..n).map(|i| (a[i][n] / a[i][i]) as f32).collect();
    let optimal = Codes { codebook: x[..n_main].to_vec(), residual_codebook: x[n_main..].to_vec(), ..codes.clone() };
    (output_error(f, w, scales, cols, &optimal, h), rounding)
}

#[test]
fn codebook_refit_reaches_the_least_squares_optimum() {
    // Correlated inputs, so that the full Hessian matters; random codes. The solved
    // codebooks (conjugate gradients, f32) must reach the dense solution's output error
    // within 1e-4; rounded to their int8 grids, within what that rounding can add.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (rows, cols, t) = (24, 16, 256);
    let h = correlated_hessian(&mut rng, t, cols, 3, 0.2);
    let w = gaussian(&mut rng, rows * cols);
    let scales: Vec<f32> = (0..rows).map(|r| 0.5 + 0.05 * r as f32).collect();
    for name in ["vq2x8", "vq4x4+4"] {
        let f = VqFormat::from_name(name).unwrap();
        let vectors = rows * cols / f.dim;
        let mut codes = Codes {
            main: (0..vectors).map(|_| rng.random_range(0..f.entries() as u32)).collect(),
            residual: (0..vectors).map(|_| rng.random_range(0..f.residual_entries().max(1) as u32)).collect(),
            codebook: gaussian(&mut rng, f.entries() * f.dim),
            residual_codebook: gaussian(&mut rng, f.residual_entries() * f.dim),
            grid: true,
            ..Codes::default()
        };
        if f.residual_bits == 0 {
            codes.residual.clear();
        }
        let before = output_error(&f, &w, &scales, cols, &codes, &h);
        let (main, residual) = solve_codebooks(&f, &w, &scales, cols, &h, &codes);
        let step = |book: &[f32]| {
            let (m, e) = crate::format::vq::grid_step(book).unwrap();
            m as f64 * 2f64.powi(e)
        };
        let (optimum, rounding) = dense_optimum(&f, &w, &scales, cols, &h, &codes, (step(&main), step(&residual)));
        let solved = Codes { codebook: main, residual_codebook: residual, ..codes.clone() };
        let solved = output_error(&f, &w, &scales, cols, &solved, &h);
        refit_codebooks(&f, &w, &scales, cols, &h, &mut codes);
        let after = output_error(&f, &w, &scales, cols, &codes, &h);
        eprintln!("{name}: before {before:.5e}, solved {solved:.5e}, on the grid {after:.5e}, optimum {optimum:.5e} (+ rounding ≤ {rounding:.3e})");
        assert!(solved <= optimum * (1.0 + 1e-4), "{name}: {solved:.6e} vs optimum {optimum:.6e}");
        assert!(after <= solved * (1.0 + 1e-4) + rounding, "{name}: {after:.6e} vs {solved:.6e} + {rounding:.3e}");
        assert!(after < 0.9 * before, "{name}: {after:.4e} vs {before:.4e}");
        // The scale refit cannot raise the error either (beyond the f16 rounding).
        let mut s2 = scales.clone();
        refit_scales(&f, &w, &mut s2, cols, &h, &codes);
        let rescaled = output_error(&f, &w, &s2, cols, &codes, &h);
        assert!(rescaled <= after * (1.0 + 1e-3), "{name}: scales {rescaled:.6e} vs {after:.6e}");
    }
}

#[test]
fn outlier_columns_take_the_massive_inputs() {
    // Four input channels 30× larger than the rest (LLM "massive activations"): kept
    // apart as f16 values, they stop dominating the 1-bit codes' output error.
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let (rows, cols, t) = (64, 128, 512);
    let hot = [5usize, 40, 41, 99];
    let mut x = gaussian(&mut rng, t * cols);
    for (i, v) in x.iter_mut().enumerate() {
        if hot.contains(&(i % cols)) {
            *v *= 30.0;
        }
    }
    let mut h = vec![0.0f32; cols * cols];
    crate::tensor::gram(&x, t, cols, &mut h);
    let w = gaussian(&mut rng, rows * cols);
    let run = |name: &str| {
        let f = VqFormat::from_name(name).unwrap();
        let q = quantize_vq(&f, &w, cols, None, Some(&h), &VqOptions::default()).unwrap();
        let y = decode(&f, &q, cols);
        let e = crate::method::gptq::output_error(&w, &y, cols, &h);
        let reported = q.output_error.unwrap();
        assert!((reported - e).abs() < 1e-3 * e, "{name}: reported {reported} vs decoded {e}");
        (f, q, y, e)
    };
    let (_, _, _, plain) = run("vq4x16");
    let (f, q, y, kept) = run("vq4x16o4");
    eprintln!("output error: vq4x16 {plain:.4e}, vq4x16o4 {kept:.4e}");
    assert!(kept < 0.5 * plain, "{kept:.4e} vs {plain:.4e}");
    let book = f.parse_codebook(&q.codebook, cols).unwrap();
    assert_eq!(book.outlier_columns, hot);
    // The outlier values minimise the output error for the rest fixed: no single
    // value moved by ±1 % of its column's largest magnitude lowers it.
    let h64 = |d: &[f32]| -> f64 {
        let mut dh = vec![0.0f32; d.len()];
        crate::tensor::matmul_wt(d, rows, cols, &h, cols, &mut dh);
        d.iter().zip(&dh).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let base = h64(&w.iter().zip(&y).map(|(a, b)| a - b).collect::<Vec<f32>>());
    for &c in &hot {
        let step = 0.01 * (0..rows).map(|r| y[r * cols + c].abs()).fold(0.0f32, f32::max);
        for r in [0, rows / 2, rows - 1] {
            for sign in [-1.0f32, 1.0] {
                let mut z = y.clone();
                z[r * cols + c] += sign * step;
                let e = h64(&w.iter().zip(&z).map(|(a, b)| a - b).collect::<Vec<f32>>());
                assert!(e >= base * (1.0 - 1e-6), "column {c}, row {r}: {e:.6e} < {base:.6e}");
            }
        }
    }
    // No Hessian: the outlier columns are the most important ones and hold the
    // weights as f16.
    let imp: Vec<f32> = (0..cols).map(|j| if hot.contains(&j) { 900.0 } else { 1.0 }).collect();
    let q = quantize_vq(&f, &w, cols, Some(&imp), None, &VqOptions::default()).unwrap();
    let y = decode(&f, &q, cols);
    for &c in &hot {
        for r in 0..rows {
            let d = (w[r * cols + c] - y[r * cols + c]).abs();
            assert!(d <= w[r * cols + c].abs() / 2048.0 + 1e-7, "column {c}, row {r}: {d}");
        }
    }
}

#[test]
fn deterministic_and_bad_input_is_an_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let w = gaussian(&mut rng, 32 * 64);
    let f = VqFormat::from_name("vq8x16+16").unwrap();
    let a = quantize_vq(&f, &w, 64, None, None, &VqOptions::default()).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| quantize_vq(&f, &w, 64, None, None, &VqOptions::default()).unwrap());
    assert_eq!((a.payload, a.codebook), (b.payload, b.codebook));
    // With a Hessian too (sweep, least-squares refits and their fixed-split sums).
    let x = gaussian(&mut rng, 200 * 64);
    let mut h = vec![0.0f32; 64 * 64];
    crate::tensor::gram(&x, 200, 64, &mut h);
    let a = quantize_vq(&f, &w, 64, None, Some(&h), &VqOptions::default()).unwrap();
    let b = pool.install(|| quantize_vq(&f, &w, 64, None, Some(&h), &VqOptions::default()).unwrap());
    assert_eq!((a.payload, a.codebook), (b.payload, b.codebook));
    assert!(quantize_vq(&f, &w, 60, None, None, &VqOptions::default()).is_err());
    let mut bad = w.clone();
    bad[7] = f32::NAN;
    assert!(matches!(
        quantize_vq(&f, &bad, 64, None, None, &VqOptions::default()),
        Err(EncodeError::NonFinite { index: 7, .. })
    ));
    assert!(quantize_vq(&f, &w, 64, Some(&[1.0; 3]), None, &VqOptions::default()).is_err());
    let wide = VqFormat::from_name("vq8x16o64").unwrap(); // all 64 columns apart
    assert!(matches!(quantize_vq(&wide, &w, 64, None, None, &VqOptions::default()), Err(EncodeError::Codebook(_))));
    let big = VqFormat::from_name("vq8x1024").unwrap(); // 256 vectors
    assert!(matches!(quantize_vq(&big, &w, 64, None, None, &VqOptions::default()), Err(EncodeError::Codebook(_))));
}

/// With `int8_grid`, every codebook the quantizer stores lies on its int8 grid (what the
/// integer kernels need for their one-byte path) — after the first fit, the centroid
/// refit and the least-squares refit alike.
#[test]
fn stored_codebooks_lie_on_their_int8_grids() {
    use crate::format::vq::grid_codes;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (rows, cols, t) = (64, 128, 512);
    let h = correlated_hessian(&mut rng, t, cols, 8, 0.3);
    let w = gaussian(&mut rng, rows * cols);
    for name in ["vq4x256", "vq4x64+64", "vq2x16+16o2"] {
        let f = VqFormat::from_name(name).unwrap();
        for (hessian, refit) in [
            (None, CodebookRefit::Auto),
            (Some(&h[..]), CodebookRefit::Centroids),
            (Some(&h), CodebookRefit::LeastSquares),
        ] {
            let opts = VqOptions { refit, int8_grid: true, ..VqOptions::default() };
            let q = quantize_vq(&f, &w, cols, None, hessian, &opts).unwrap();
            let entries: Vec<f32> =
                q.codebook.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            let (main, rest) = entries.split_at(f.entries() * f.dim);
            let res = &rest[..f.residual_entries() * f.dim];
            assert!(grid_codes(main).is_some(), "{name} {refit:?}: main codebook off its grid");
            assert!(grid_codes(res).is_some(), "{name} {refit:?}: residual codebook off its grid");
        }
    }
}
