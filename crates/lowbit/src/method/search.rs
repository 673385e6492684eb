//! Weighted least-squares fitting of block scales, minimums and codes: the error-minimising
//! search that every scalar format's encoder uses. Each function minimises
//! Σ wᵢ (xᵢ − x̂ᵢ)² over a family of candidate scales: for a candidate, codes are rounded to
//! nearest, the float scale (and minimum) are then solved in closed form, and the best
//! candidate wins. The weights carry what matters: the weights' own magnitudes when
//! nothing is known, or an importance matrix from calibration.
//!
//! The candidate families follow llama.cpp's `make_qx_quants`, `make_qkx3_quants`,
//! `make_qp_quants` and its IQ4 search, so lowbit is never worse than it on the same
//! objective; [`fit_symmetric`] adds a coordinate-descent polish of the codes.

/// Rounds half to even, as llama.cpp's `nearest_int` does, with the same trick: adding
/// 1.5·2^23 leaves the rounded integer in the mantissa. Inputs beyond ±(2^22 − 1) (only
/// from degenerate scales; every caller clamps to a small code range) saturate there.
/// Branch-free, so the fits' loops vectorize; `f32::round_ties_even` would be a libm
/// call on baseline x86-64.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x.clamp(-4_194_303.0, 4_194_303.0) + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Lanes of the partial sums in the fits' inner loops. Summing in eight fixed lanes
/// lets the compiler vectorize (a single running f32 sum may not be reordered) and keeps
/// results deterministic.
const LANES: usize = 8;

/// Rounds iscale·x to codes in [lo, hi]; returns (Σ w·x·l, Σ w·l²).
#[inline]
fn round_and_sum(x: &[f32], w: &[f32], iscale: f32, lo: i32, hi: i32, codes: &mut [i32]) -> (f32, f32) {
    let (mut slx, mut sl2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let n = x.len() / LANES * LANES;
    for ((xc, wc), cc) in
        x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)).zip(codes[..n].chunks_exact_mut(LANES))
    {
        for k in 0..LANES {
            let l = nearest_int(iscale * xc[k]).clamp(lo, hi);
            cc[k] = l;
            let lf = l as f32;
            slx[k] += wc[k] * xc[k] * lf;
            sl2[k] += wc[k] * lf * lf;
        }
    }
    for i in n..x.len() {
        let l = nearest_int(iscale * x[i]).clamp(lo, hi);
        codes[i] = l;
        slx[0] += w[i] * x[i] * l as f32;
        sl2[0] += w[i] * (l * l) as f32;
    }
    (slx.iter().sum(), sl2.iter().sum())
}

/// A block whose largest magnitude is below this is stored as zeros (ggml's GROUP_MAX_EPS).
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// The element of largest magnitude (its signed value), and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric fit: x ≈ s·l with integer codes l ∈ [lo, hi] (lo < 0 < hi). Candidate inverse
/// scales map the largest-magnitude element to `lo + step·k` for k in −steps..=steps
/// (0.1 apart), then up to five coordinate-descent passes move single codes while that
/// improves the weighted fit. Writes the codes to `codes`, returns s (0 for an all-zero
/// block). With `steps == 0` and `polish == false` it is round-to-nearest plus the
/// least-squares scale.
/// Blocks hold at most 256 values (the largest ggml block), as for every fit here.
pub fn fit_symmetric(x: &[f32], w: &[f32], lo: i32, hi: i32, steps: i32, polish: bool, codes: &mut [i32]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|c| *c = 0);
        return 0.0;
    }
    let nmax = -lo as f32;
    let eval = |iscale: f32, codes: &mut [i32]| round_and_sum(x, w, iscale, lo, hi, codes);
    let (mut sumlx, mut suml2) = eval(-nmax / max, codes);
    let mut trial_buf = [0i32; 256];
    let trial = &mut trial_buf[..x.len()];
    for k in -steps..=steps {
        if k == 0 {
            continue;
        }
        let (slx, sl2) = eval(-(nmax + 0.1 * k as f32) / max, trial);
        // Better when slx²/sl2 > sumlx²/suml2 (the error drop of the least-squares scale).
        if sl2 > 0.0 && (suml2 <= 0.0 || slx * slx * suml2 > sumlx * sumlx * sl2) {
            codes.copy_from_slice(trial);
            (sumlx, suml2) = (slx, sl2);
        }
    }
    if polish {
        (sumlx, suml2) = polish_codes(x, w, lo, hi, codes, sumlx, suml2);
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Coordinate descent on codes l ∈ [lo, hi] for x ≈ s·l with the least-squares s: up to
/// five passes, each moving single codes to their best value given the others while that
/// raises (Σw·x·l)²/Σw·l² (i.e. lowers the error). `sumlx`, `suml2` are those sums for the
/// codes given; returns them for the codes left. With non-negative codes the scale must
/// be positive, so only a positive Σw·x·l is followed.
fn polish_codes(x: &[f32], w: &[f32], lo: i32, hi: i32, codes: &mut [i32], sumlx: f32, suml2: f32) -> (f32, f32) {
    let (mut sumlx, mut suml2) = (sumlx, suml2);
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..x.len() {
            let (xi, wi, li) = (x[i], w[i], codes[i] as f32);
            let slx = sumlx - wi * xi * li;
            let sl2 = suml2 - wi * li * li;
            let usable = if lo >= 0 { slx > 0.0 } else { slx != 0.0 };
            if !usable || sl2 <= 0.0 {
                continue;
            }
            let new_l = nearest_int(xi * sl2 / slx).clamp(lo, hi);
            if new_l == codes[i] {
                continue;
            }
            let nl = new_l as f32;
            let (slx2, sl22) = (slx + wi * xi * nl, sl2 + wi * nl * nl);
            if sl22 > 0.0 && slx2 * slx2 * suml2 > sumlx * sumlx * sl22 {
                codes[i] = new_l;
                (sumlx, suml2) = (slx2, sl22);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    (sumlx, suml2)
}

/// Affine fit: x ≈ s·l − m with codes l ∈ [0, nmax], s > 0 and m ≥ 0 (the block minimum
/// is never positive, as the k-quants require). Candidate inverse scales
/// `(nmax + rmin + rdelta·k) / (max − min)` for k in 0..=nstep; for each, s and m are solved
/// by weighted least squares. `mad` minimises Σ w|err| instead of Σ w·err². Returns (s, m).
#[allow(clippy::too_many_arguments)]
pub fn fit_affine(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mad: bool,
    codes: &mut [u8],
) -> (f32, f32) {
    let mut min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (sum_w, sum_x) = x.iter().zip(w).fold((0.0f32, 0.0f32), |(a, b), (&xi, &wi)| (a + wi, b + wi * xi));
    let sum_x2: f64 = x.iter().zip(w).map(|(&xi, &wi)| wi as f64 * xi as f64 * xi as f64).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        codes.iter_mut().for_each(|c| *c = 0);
        return (0.0, -min);
    }
    let error = |scale: f32, min: f32, codes: &[u8]| -> f32 {
        let mut e = [0.0f32; LANES];
        for (i, ((&xi, &wi), &l)) in x.iter().zip(w).zip(codes).enumerate() {
            let d = scale * l as f32 + min - xi;
            e[i % LANES] += wi * if mad { d.abs() } else { d * d };
        }
        e.iter().sum()
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (c, &xi) in codes.iter_mut().zip(x) {
        *c = nearest_int(iscale * (xi - min)).clamp(0, nmax) as u8;
    }
    let mut best = error(scale, min, codes);
    let mut trial_buf = [0u8; 256];
    let trial = &mut trial_buf[..x.len()];
    if nstep < 1 {
        return (scale, -min);
    }
    for k in 0..=nstep {
        let iscale = (rmin + rdelta * k as f32 + nmax as f32) / (max - min);
        let (mut lane_l, mut lane_l2, mut lane_xl) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        for (i, ((t, &xi), &wi)) in trial.iter_mut().zip(x).zip(w).enumerate() {
            let l = nearest_int(iscale * (xi - min)).clamp(0, nmax);
            *t = l as u8;
            let l = l as f32;
            lane_l[i % LANES] += wi * l;
            lane_l2[i % LANES] += wi * l * l;
            lane_xl[i % LANES] += wi * l * xi;
        }
        let (sum_l, sum_l2, sum_xl): (f32, f32, f32) =
            (lane_l.iter().sum(), lane_l2.iter().sum(), lane_xl.iter().sum());
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            // Squared error in closed form from the sums (no second pass); f64 keeps the
            // cancellation harmless. The absolute-error variant needs the pass.
            let e = if mad {
                error(this_scale, this_min, trial)
            } else {
                let (s, m) = (this_scale as f64, this_min as f64);
                (s * s * sum_l2 as f64 + 2.0 * s * m * sum_l as f64 + m * m * sum_w as f64
                    - 2.0 * s * sum_xl as f64
                    - 2.0 * m * sum_x as f64
                    + sum_x2) as f32
            };
            if e < best {
                codes.copy_from_slice(trial);
                best = e;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Fit of non-negative values (sub-block scales or minimums) as x ≈ s·l, l ∈ [0, nmax]:
/// nine candidate scales around max/nmax, then coordinate descent on the codes. Returns s.
pub fn fit_unsigned(x: &[f32], w: &[f32], nmax: i32, codes: &mut [u8]) -> f32 {
    let max = x.iter().copied().fold(0.0f32, f32::max);
    if max < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|c| *c = 0);
        return 0.0;
    }
    let mse = |iscale: f32| -> f32 {
        let scale = 1.0 / iscale;
        x.iter()
            .zip(w)
            .map(|(&xi, &wi)| {
                let l = nearest_int(iscale * xi).min(nmax);
                let d = xi - scale * l as f32;
                wi * d * d
            })
            .sum()
    };
    let mut iscale = nmax as f32 / max;
    let mut best = mse(iscale);
    for k in -4..=4 {
        if k == 0 {
            continue;
        }
        let cand = (0.1 * k as f32 + nmax as f32) / max;
        let e = mse(cand);
        if e < best {
            best = e;
            iscale = cand;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    let mut l_buf = [0i32; 256];
    let l = &mut l_buf[..x.len()];
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * xi).clamp(0, nmax);
    }
    for ((&xi, &wi), &li) in x.iter().zip(w).zip(l.iter()) {
        sumlx += wi * xi * li as f32;
        suml2 += wi * (li * li) as f32;
    }
    (sumlx, suml2) = polish_codes(x, w, 0, nmax, l, sumlx, suml2);
    for (c, &li) in codes.iter_mut().zip(l.iter()) {
        *c = li as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Index of the value in sorted `values` nearest to `x` (ties to the upper), as ggml's
/// `best_index_int8`.
#[inline]
pub fn nearest_index(values: &[i8], x: f32) -> usize {
    let n = values.len();
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[n - 1] as f32 {
        return n - 1;
    }
    let (mut lo, mut hi) = (0usize, n - 1);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < values[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (values[hi - 1] as f32) < values[hi] as f32 - x {
        hi - 1
    } else {
        hi
    }
}

/// Codebook fit: x ≈ d·values[l] for a sorted non-uniform grid (IQ4_NL's). Candidates map
/// the largest-magnitude element to `values[0] + k`, k in −ntry..=ntry, each followed by
/// the least-squares d. Returns d; codes are the indices for the best candidate.
pub fn fit_codebook(x: &[f32], w: &[f32], values: &[i8], ntry: i32, codes: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        // Index of the value nearest zero, so the block decodes to (almost) zero.
        let z = nearest_index(values, 0.0) as u8;
        codes.iter_mut().for_each(|c| *c = z);
        return 0.0;
    }
    let v0 = values[0] as f32;
    let eval = |id: f32, codes: &mut [u8]| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for ((&xi, &wi), c) in x.iter().zip(w).zip(codes.iter_mut()) {
            let l = nearest_index(values, id * xi);
            *c = l as u8;
            let q = values[l] as f32;
            sumqx += wi * q * xi;
            sumq2 += wi * q * q;
        }
        (sumqx, sumq2)
    };
    let (mut sumqx, mut sumq2) = eval(v0 / max, codes);
    let mut trial_buf = [0u8; 256];
    let trial = &mut trial_buf[..x.len()];
    for k in -ntry..=ntry {
        let (sqx, sq2) = eval((k as f32 + v0) / max, trial);
        if sq2 > 0.0 && (sumq2 <= 0.0 || sqx * sqx * sumq2 > sumqx * sumqx * sq2) {
            codes.copy_from_slice(trial);
            (sumqx, sumq2) = (sqx, sq2);
        }
    }
    if sumq2 > 0.0 {
        sumqx / sumq2
    } else {
        0.0
    }
}

/// Σ w·(x − x̂)²: the objective every fit above minimises.
pub fn weighted_error(x: &[f32], xhat: &[f32], w: &[f32]) -> f64 {
    x.iter().zip(xhat).zip(w).map(|((&a, &b), &wi)| wi as f64 * ((a - b) as f64).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn block(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    #[test]
    fn symmetric_search_never_loses_to_round_to_nearest() {
        for seed in 0..200 {
            let x = block(seed, 32);
            let w: Vec<f32> = x.iter().map(|v| v * v).collect();
            let mut c0 = vec![0; 32];
            let s0 = fit_symmetric(&x, &w, -8, 7, 0, false, &mut c0);
            let mut c1 = vec![0; 32];
            let s1 = fit_symmetric(&x, &w, -8, 7, 9, true, &mut c1);
            let e = |s: f32, c: &[i32]| {
                let xh: Vec<f32> = c.iter().map(|&l| s * l as f32).collect();
                weighted_error(&x, &xh, &w)
            };
            assert!(e(s1, &c1) <= e(s0, &c0) * (1.0 + 1e-5), "seed {seed}");
            assert!(c1.iter().all(|&l| (-8..=7).contains(&l)));
        }
    }

    #[test]
    fn round_to_nearest_error_is_within_half_a_step() {
        let x = block(7, 32);
        let w = vec![1.0; 32];
        let mut c = vec![0; 32];
        let s = fit_symmetric(&x, &w, -127, 127, 0, false, &mut c);
        // Without search the codes are x rounded at the max-based scale s0, so each value
        // is within half a step of s0·l; the returned scale is the least-squares one for
        // those codes, hence no worse in total.
        let (max, _) = signed_max(&x);
        let s0 = -max / 127.0;
        for (&xi, &l) in x.iter().zip(&c) {
            assert!((xi - s0 * l as f32).abs() <= 0.5 * s0.abs() * (1.0 + 1e-5));
        }
        let err = |s: f32| x.iter().zip(&c).map(|(&xi, &l)| (xi - s * l as f32).powi(2)).sum::<f32>();
        assert!(err(s) <= err(s0) * (1.0 + 1e-6));
    }

    #[test]
    fn affine_fit_reproduces_a_block_on_its_grid() {
        // Values exactly on a 4-bit grid with min -0.3 and step 0.05: the fit recovers it.
        let codes_in: Vec<u8> = (0..32).map(|i| (i * 7 % 16) as u8).collect();
        let x: Vec<f32> = codes_in.iter().map(|&l| 0.05 * l as f32 - 0.3).collect();
        let w = vec![1.0; 32];
        let mut c = vec![0; 32];
        let (s, m) = fit_affine(&x, &w, 15, -1.0, 0.1, 20, false, &mut c);
        for (&xi, &l) in x.iter().zip(&c) {
            assert!((s * l as f32 - m - xi).abs() < 1e-5);
        }
    }

    #[test]
    fn unsigned_and_codebook_fits_are_exact_on_their_grids() {
        let x: Vec<f32> = (0..8).map(|i| 0.01 * (i * 9 % 64) as f32).collect();
        let mut c = vec![0; 8];
        let s = fit_unsigned(&x, &[1.0; 8], 63, &mut c);
        for (&xi, &l) in x.iter().zip(&c) {
            assert!((s * l as f32 - xi).abs() < 1e-5);
        }
        let values = crate::format::iquant::KVALUES_IQ4NL;
        let x: Vec<f32> = (0..32).map(|i| 0.002 * values[(i * 5) % 16] as f32).collect();
        let mut c = vec![0; 32];
        let d = fit_codebook(&x, &[1.0; 32], &values, 7, &mut c);
        for (&xi, &l) in x.iter().zip(&c) {
            assert!((d * values[l as usize] as f32 - xi).abs() < 1e-5);
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.51, -8),
            (1e9, 4_194_303),
            (-1e9, -4_194_303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        for i in -100_000..100_000 {
            let x = i as f32 * 0.37;
            assert_eq!(nearest_int(x), x.round_ties_even() as i32);
        }
    }

    #[test]
    fn nearest_index_matches_a_linear_scan() {
        let values = crate::format::iquant::KVALUES_IQ4NL;
        for i in -1400..1400 {
            let x = i as f32 * 0.1;
            let got = nearest_index(&values, x);
            let best = values.iter().map(|&v| (v as f32 - x).abs()).fold(f32::INFINITY, f32::min);
            assert!(((values[got] as f32) - x).abs() <= best + 1e-6);
        }
    }
}
