//! The continuous step between sweeps (step 5 of [`super`]): both codebooks by least
//! squares on the layer output error with the full Hessian (conjugate gradients), then the
//! row scales in closed form.

use super::*;

/// Rows per partial sum of [`scatter`]: a fixed split, so that the sums (and the bytes
/// written) do not depend on the number of threads.
pub(super) const SCATTER_ROWS: usize = 32;

/// The adjoint of [`decode_rows`] without outliers (a linear map of the codebooks):
/// gathers `g` (rows × cols) onto the entries, Σ over the vectors using an entry of
/// s_r · g's slice, outlier columns left out. Returns main entries then residual entries.
pub(super) fn scatter(
    dim: usize,
    codes: &Codes,
    n_main: usize,
    n_residual: usize,
    scales: &[f32],
    g: &[f32],
) -> Vec<f64> {
    let per_row = codes.main.len() / scales.len();
    let cols = per_row * dim;
    let coded: Vec<f64> = (0..cols).map(|j| if codes.outliers.coded(j) { 1.0 } else { 0.0 }).collect();
    let partials: Vec<Vec<f64>> = g
        .par_chunks(SCATTER_ROWS * cols)
        .enumerate()
        .map(|(chunk, block)| {
            let mut acc = vec![0.0f64; n_main + n_residual];
            for (k, row) in block.chunks_exact(cols).enumerate() {
                let r = chunk * SCATTER_ROWS + k;
                let s = scales[r] as f64;
                for (gi, (v, live)) in row.chunks_exact(dim).zip(coded.chunks_exact(dim)).enumerate() {
                    let i = r * per_row + gi;
                    let c = codes.main[i] as usize * dim;
                    for ((a, &b), l) in acc[c..c + dim].iter_mut().zip(v).zip(live) {
                        *a += s * l * b as f64;
                    }
                    if n_residual > 0 {
                        let c2 = n_main + codes.residual[i] as usize * dim;
                        for ((a, &b), l) in acc[c2..c2 + dim].iter_mut().zip(v).zip(live) {
                            *a += s * l * b as f64;
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; n_main + n_residual];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Conjugate-gradient steps of [`refit_codebooks`]: the normal equations converge to a
/// small fraction of the initial residual well within this many on real layers.
pub(super) const CG_STEPS: usize = 24;

/// Least-squares codebooks for fixed codes, scales and outlier values: both codebooks
/// together minimise the layer output error Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ — the full
/// Hessian, so that entries absorb the correlations between the columns a vector spans
/// and the vectors a row holds (the continuous step of PV-Tuning, solved instead of
/// followed by gradients). The normal equations Pᵀ S H S P c = Pᵀ S H (w − o) (P: codes →
/// positions, S: row scales, o: outlier values) are solved by conjugate gradients
/// preconditioned by their diagonal, starting from the current codebooks; each step is
/// one decode, one product with H and one gather. The solution is then rounded to the
/// precision they are stored in ([`round_book`]).
pub(super) fn refit_codebooks(f: &VqFormat, w: &[f32], scales: &[f32], cols: usize, h: &[f32], codes: &mut Codes) {
    let (mut main, mut residual) = solve_codebooks(f, w, scales, cols, h, codes);
    round_book(&mut main, codes.grid);
    round_book(&mut residual, codes.grid);
    (codes.codebook, codes.residual_codebook) = (main, residual);
}

/// [`refit_codebooks`]' least-squares solution before the grid: the main and residual
/// codebooks.
pub(super) fn solve_codebooks(
    f: &VqFormat,
    w: &[f32],
    scales: &[f32],
    cols: usize,
    h: &[f32],
    codes: &Codes,
) -> (Vec<f32>, Vec<f32>) {
    let dim = f.dim;
    let rows = scales.len();
    let (n_main, n_residual) = (codes.codebook.len(), codes.residual_codebook.len());
    let times_h = |q: &[f32]| {
        let mut out = vec![0.0f32; q.len()];
        crate::tensor::matmul_wt(q, rows, cols, h, cols, &mut out);
        out
    };
    // Diagonal preconditioner: Σ s_r² H_jj over the positions an entry coordinate takes.
    let mut diag = vec![0.0f64; n_main + n_residual];
    let per_row = cols / dim;
    for (i, &c) in codes.main.iter().enumerate() {
        let (r, g) = (i / per_row, i % per_row);
        let s2 = (scales[r] as f64).powi(2);
        for k in (0..dim).filter(|k| codes.outliers.coded(g * dim + k)) {
            let hjj = h[(g * dim + k) * (cols + 1)] as f64 * s2;
            diag[c as usize * dim + k] += hjj;
            if n_residual > 0 {
                diag[n_main + codes.residual[i] as usize * dim + k] += hjj;
            }
        }
    }
    let mut x: Vec<f64> = codes.codebook.iter().chain(&codes.residual_codebook).map(|&v| v as f64).collect();
    let split = |v: &[f64]| -> (Vec<f32>, Vec<f32>) {
        (v[..n_main].iter().map(|&a| a as f32).collect(), v[n_main..].iter().map(|&a| a as f32).collect())
    };
    let apply = |v: &[f64]| -> Vec<f64> {
        let (a, b) = split(v);
        scatter(dim, codes, n_main, n_residual, scales, &times_h(&decode_rows(dim, codes, &a, &b, scales, false)))
    };
    // r = Pᵀ S H (w − ŵ)
    let decoded = codes.decode(dim, scales, true);
    let diff: Vec<f32> = w.iter().zip(&decoded).map(|(a, b)| a - b).collect();
    let mut r = scatter(dim, codes, n_main, n_residual, scales, &times_h(&diff));
    let precondition =
        |r: &[f64]| -> Vec<f64> { r.iter().zip(&diag).map(|(a, d)| if *d > 0.0 { a / d } else { 0.0 }).collect() };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut z = precondition(&r);
    let mut p = z.clone();
    let mut rz = dot(&r, &z);
    let rz0 = rz;
    for _ in 0..CG_STEPS {
        if rz <= 1e-10 * rz0 || rz <= 0.0 {
            break;
        }
        let ap = apply(&p);
        let pap = dot(&p, &ap);
        if pap <= 0.0 {
            break;
        }
        let alpha = rz / pap;
        x.iter_mut().zip(&p).for_each(|(a, b)| *a += alpha * b);
        r.iter_mut().zip(&ap).for_each(|(a, b)| *a -= alpha * b);
        z = precondition(&r);
        let rz_next = dot(&r, &z);
        let beta = rz_next / rz;
        p.iter_mut().zip(&z).for_each(|(a, b)| *a = b + beta * *a);
        rz = rz_next;
    }
    split(&x)
}

/// Least-squares row scales for fixed codes, codebooks and outlier values:
/// s_r = ((w_r − o_r) H u_rᵀ)/(u_r H u_rᵀ) for the decoded unit-scale row u_r (0 at the
/// outlier columns, whose values o_r do not scale), stored as f16. A row whose code
/// decodes to zero keeps its scale.
pub(super) fn refit_scales(f: &VqFormat, w: &[f32], scales: &mut [f32], cols: usize, h: &[f32], codes: &Codes) {
    let rows = scales.len();
    let unit = codes.decode(f.dim, &vec![1.0; rows], false);
    let mut uh = vec![0.0f32; unit.len()];
    crate::tensor::matmul_wt(&unit, rows, cols, h, cols, &mut uh);
    let n_out = codes.outliers.columns.len();
    let mut target = vec![0.0f32; cols];
    for (r, s) in scales.iter_mut().enumerate() {
        let span = r * cols..(r + 1) * cols;
        // The part of the row the scale multiplies: w_r − o_r.
        target.copy_from_slice(&w[span.clone()]);
        for (&c, &o) in codes.outliers.columns.iter().zip(&codes.outliers.values[r * n_out..(r + 1) * n_out]) {
            target[c] -= o;
        }
        let num: f64 = target.iter().zip(&uh[span.clone()]).map(|(a, b)| *a as f64 * *b as f64).sum();
        let den: f64 = unit[span.clone()].iter().zip(&uh[span]).map(|(a, b)| *a as f64 * *b as f64).sum();
        if den > 0.0 && num > 0.0 {
            *s = half::f16::from_f64(num / den).to_f32();
        }
    }
}
