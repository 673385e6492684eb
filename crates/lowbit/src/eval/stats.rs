//! The statistics of a model against its reference over the scored tokens, as
//! `llama-perplexity --kl-divergence` prints them (tools/perplexity/perplexity.cpp,
//! `kl_divergence`): PPL(Q)/PPL(base) and its logarithm with errors corrected for the
//! covariance of the two models' per-token log-likelihoods, KL divergence mean and
//! percentiles, the change Δp = p_Q(next token) − p_base(next token) with its
//! percentiles and RMS, and how often the two most likely tokens agree ("same top p").
//!
//! Conventions follow llama.cpp so numbers can be compared line by line: a mean's error
//! is √((Σx²/n − x̄²)/(n − 1)); percentiles interpolate linearly between sorted values at
//! `fraction · (n − 1)`; the median averages the two middle values of an even count.

use serde::Serialize;

use super::journal::Row;

/// Percentiles of one per-token quantity (the subset llama.cpp prints, plus quartiles).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Largest value.
    pub max: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 75th percentile.
    pub p75: f64,
    /// Median.
    pub median: f64,
    /// 25th percentile.
    pub p25: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 5th percentile.
    pub p5: f64,
    /// 1st percentile.
    pub p1: f64,
    /// 0.1st percentile.
    pub p0_1: f64,
    /// Smallest value.
    pub min: f64,
}

impl Percentiles {
    /// Percentiles of `values` (sorted here).
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let at = |fraction: f64| {
            let p = fraction * (n - 1) as f64;
            let i = p as usize;
            let f = p - i as f64;
            (1.0 - f) * values[i] + f * values[(i + 1).min(n - 1)]
        };
        let median = if n.is_multiple_of(2) { 0.5 * (values[n / 2] + values[n / 2 - 1]) } else { values[n / 2] };
        Percentiles {
            max: values[n - 1],
            p99_9: at(0.999),
            p99: at(0.99),
            p95: at(0.95),
            p90: at(0.90),
            p75: at(0.75),
            median,
            p25: at(0.25),
            p10: at(0.10),
            p5: at(0.05),
            p1: at(0.01),
            p0_1: at(0.001),
            min: values[0],
        }
    }
}

/// How the probability of the actual next token moved (Δp = p_Q − p_base, as a fraction).
#[derive(Clone, Debug, Serialize)]
pub struct DeltaP {
    /// Mean Δp.
    pub mean: f64,
    /// Its standard error.
    pub mean_err: f64,
    /// Root mean square of Δp.
    pub rms: f64,
    /// Its standard error.
    pub rms_err: f64,
    /// Percentiles of Δp.
    pub percentiles: Percentiles,
}

/// Divergence of a model from a reference over the scored tokens.
#[derive(Clone, Debug, Serialize)]
pub struct KldReport {
    /// Mean KL(P_reference ‖ P_model), nats.
    pub mean: f64,
    /// Standard error of the mean.
    pub mean_err: f64,
    /// Percentiles of the per-token KL divergence.
    pub percentiles: Percentiles,
    /// Share of scored tokens where both models' most likely token agrees ("same top p").
    pub top1_agreement: f64,
    /// Its standard error.
    pub top1_agreement_err: f64,
    /// Reference perplexity on the same tokens, PPL(base).
    pub reference_ppl: f64,
    /// Its standard error.
    pub reference_ppl_err: f64,
    /// Correlation of the two models' per-token negative log-likelihoods.
    pub ln_ppl_correlation: f64,
    /// Mean ln(PPL(Q)/PPL(base)).
    pub ln_ppl_ratio: f64,
    /// Its standard error, corrected for the covariance of the two.
    pub ln_ppl_ratio_err: f64,
    /// PPL(Q)/PPL(base).
    pub ppl_ratio: f64,
    /// Its standard error.
    pub ppl_ratio_err: f64,
    /// PPL(Q) − PPL(base).
    pub ppl_diff: f64,
    /// Its standard error.
    pub ppl_diff_err: f64,
    /// Change of the actual next token's probability.
    pub delta_p: DeltaP,
}

impl KldReport {
    /// The three blocks `llama-perplexity --kl-divergence` ends with, in its layout, for a
    /// model of perplexity `ppl ± ppl_err`, so the two tools' outputs can be diffed.
    pub fn llama_cpp_text(&self, ppl: f64, ppl_err: f64) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let k = &self.percentiles;
        let d = &self.delta_p;
        let dq = &d.percentiles;
        let _ = writeln!(o, "====== Perplexity statistics ======");
        let _ = writeln!(o, "Mean PPL(Q)                   : {ppl:10.6} ± {ppl_err:10.6}");
        let _ = writeln!(
            o,
            "Mean PPL(base)                : {:10.6} ± {:10.6}",
            self.reference_ppl, self.reference_ppl_err
        );
        let _ = writeln!(o, "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * self.ln_ppl_correlation);
        let _ =
            writeln!(o, "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}", self.ln_ppl_ratio, self.ln_ppl_ratio_err);
        let _ = writeln!(o, "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}", self.ppl_ratio, self.ppl_ratio_err);
        let _ = writeln!(o, "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}", self.ppl_diff, self.ppl_diff_err);
        let _ = writeln!(o, "\n====== KL divergence statistics ======");
        let _ = writeln!(o, "Mean    KLD: {:10.6} ± {:10.6}", self.mean, self.mean_err);
        for (name, v) in [
            ("Maximum", k.max),
            ("99.9%  ", k.p99_9),
            ("99.0%  ", k.p99),
            ("95.0%  ", k.p95),
            ("90.0%  ", k.p90),
            ("Median ", k.median),
            ("10.0%  ", k.p10),
            (" 5.0%  ", k.p5),
            (" 1.0%  ", k.p1),
            (" 0.1%  ", k.p0_1),
            ("Minimum", k.min),
        ] {
            let _ = writeln!(o, "{name} KLD: {v:10.6}");
        }
        let _ = writeln!(o, "\n====== Token probability statistics ======");
        let _ = writeln!(o, "Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * d.mean, 100.0 * d.mean_err);
        for (name, v) in [
            ("Maximum", dq.max),
            ("99.9%  ", dq.p99_9),
            ("99.0%  ", dq.p99),
            ("95.0%  ", dq.p95),
            ("90.0%  ", dq.p90),
            ("75.0%  ", dq.p75),
            ("Median ", dq.median),
            ("25.0%  ", dq.p25),
            ("10.0%  ", dq.p10),
            (" 5.0%  ", dq.p5),
            (" 1.0%  ", dq.p1),
            (" 0.1%  ", dq.p0_1),
            ("Minimum", dq.min),
        ] {
            let _ = writeln!(o, "{name} Δp: {:6.3}%", 100.0 * v);
        }
        let _ = writeln!(o, "RMS Δp    : {:6.3} ± {:5.3} %", 100.0 * d.rms, 100.0 * d.rms_err);
        let _ =
            writeln!(o, "Same top p: {:6.3} ± {:5.3} %", 100.0 * self.top1_agreement, 100.0 * self.top1_agreement_err);
        o
    }
}

/// Mean and its standard error from a sum and a sum of squares (llama.cpp's
/// `mean_and_uncertainty`: no error below 11 values).
fn mean_and_err(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let m = sum / n as f64;
    let v = sum2 / n as f64 - m * m;
    (m, if v > 0.0 && n > 10 { (v / (n - 1) as f64).sqrt() } else { 0.0 })
}

/// Covariance of the two means (llama.cpp's `covariance`: zero below 10 values).
fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, n: usize) -> f64 {
    if n < 10 {
        return 0.0;
    }
    let n = n as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

/// Perplexity and its standard error (llama-perplexity's formula) from Σnll and Σnll² over `n` tokens (kept as
/// running sums while chunks are scored).
pub(super) fn perplexity_from_sums(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    let (m, e) = mean_and_err(sum, sum2, n);
    (m.exp(), m.exp() * e)
}

/// The statistics against the reference over `rows` (each must carry a reference part).
pub(super) fn kl_statistics(rows: &[Row]) -> KldReport {
    let n = rows.len();
    let mut sums = [0.0f64; 9]; // nll, nll², base, base², nll·base, kld, kld², Δp, Δp²
    let mut dp4 = 0.0;
    let mut same = 0usize;
    let mut klds = Vec::with_capacity(n);
    let mut dps = Vec::with_capacity(n);
    for r in rows {
        let (kl, agree, base) = r.kl.expect("rows scored against a reference");
        let dp = (-r.nll).exp() - (-base).exp();
        for (s, v) in
            sums.iter_mut().zip([r.nll, r.nll * r.nll, base, base * base, r.nll * base, kl, kl * kl, dp, dp * dp])
        {
            *s += v;
        }
        dp4 += dp * dp * dp * dp;
        same += agree as usize;
        klds.push(kl);
        dps.push(dp);
    }
    let [nll, nll2, base, base2, cross, kld, kld2, dp, dp2] = sums;
    let (ln_q, ln_q_err) = mean_and_err(nll, nll2, n);
    let (ln_b, ln_b_err) = mean_and_err(base, base2, n);
    let cov = covariance(nll, base, cross, n);
    let (ppl_q, ppl_b) = (ln_q.exp(), ln_b.exp());
    let (ppl_q_err, ppl_b_err) = (ppl_q * ln_q_err, ppl_b * ln_b_err);
    let ln_ratio = ln_q - ln_b;
    let ln_ratio_err = (ln_q_err * ln_q_err + ln_b_err * ln_b_err - 2.0 * cov).max(0.0).sqrt();
    let ppl_cov = ppl_q * ppl_b * cov;
    let (kld_mean, kld_err) = mean_and_err(kld, kld2, n);
    let (dp_mean, dp_err) = mean_and_err(dp, dp2, n);
    let (mse, mse_err) = mean_and_err(dp2, dp4, n);
    let rms = mse.sqrt();
    let top = same as f64 / n.max(1) as f64;
    KldReport {
        mean: kld_mean,
        mean_err: kld_err,
        percentiles: Percentiles::of(klds),
        top1_agreement: top,
        top1_agreement_err: if n > 1 { (top * (1.0 - top) / (n - 1) as f64).sqrt() } else { 0.0 },
        reference_ppl: ppl_b,
        reference_ppl_err: ppl_b_err,
        ln_ppl_correlation: if ln_q_err > 0.0 && ln_b_err > 0.0 { cov / (ln_q_err * ln_b_err) } else { 0.0 },
        ln_ppl_ratio: ln_ratio,
        ln_ppl_ratio_err: ln_ratio_err,
        ppl_ratio: ln_ratio.exp(),
        ppl_ratio_err: ln_ratio.exp() * ln_ratio_err,
        ppl_diff: ppl_q - ppl_b,
        ppl_diff_err: (ppl_q_err * ppl_q_err + ppl_b_err * ppl_b_err - 2.0 * ppl_cov).max(0.0).sqrt(),
        delta_p: DeltaP {
            mean: dp_mean,
            mean_err: dp_err,
            rms,
            rms_err: if rms > 0.0 { 0.5 / rms * mse_err } else { 0.0 },
            percentiles: Percentiles::of(dps),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_llama_cpp() {
        let p = Percentiles::of((0..=10).rev().map(f64::from).collect());
        assert_eq!((p.min, p.max, p.median), (0.0, 10.0, 5.0));
        assert!((p.p99 - 9.9).abs() < 1e-12 && (p.p25 - 2.5).abs() < 1e-12);
        let even = Percentiles::of(vec![1.0, 2.0, 3.0, 10.0]);
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn identical_models_have_ratio_one_and_zero_error() {
        let rows: Vec<Row> = (0..100)
            .map(|i| {
                let nll = 1.0 + (i % 7) as f64 * 0.3;
                Row { nll, kl: Some((0.0, true, nll)) }
            })
            .collect();
        let k = kl_statistics(&rows);
        assert!((k.ppl_ratio - 1.0).abs() < 1e-12 && k.ln_ppl_ratio_err < 1e-6);
        assert!((k.ln_ppl_correlation - 1.0).abs() < 1e-9);
        assert_eq!((k.top1_agreement, k.delta_p.rms, k.mean), (1.0, 0.0, 0.0));
        let (s, s2) = rows.iter().fold((0.0, 0.0), |(s, s2), r| (s + r.nll, s2 + r.nll * r.nll));
        let (ppl, _) = perplexity_from_sums(s, s2, rows.len());
        assert!((ppl - k.reference_ppl).abs() < 1e-12);
    }

    #[test]
    fn a_uniform_shift_moves_ln_ratio_by_exactly_the_shift() {
        // Q's nll is the base's plus 0.1 on every token: ln ratio 0.1, perfectly correlated
        // so its error vanishes although each perplexity has a large one.
        let rows: Vec<Row> = (0..200)
            .map(|i| {
                let base = 0.5 + (i * 37 % 11) as f64 * 0.4;
                Row { nll: base + 0.1, kl: Some((0.01 * (i % 3) as f64, i % 4 != 0, base)) }
            })
            .collect();
        let k = kl_statistics(&rows);
        assert!((k.ln_ppl_ratio - 0.1).abs() < 1e-12);
        assert!(k.ln_ppl_ratio_err < 1e-6, "{}", k.ln_ppl_ratio_err);
        assert!((k.top1_agreement - 0.75).abs() < 1e-12);
        assert!(k.delta_p.mean < 0.0 && k.delta_p.percentiles.max <= 0.0);
        let expected_err = (0.75f64 * 0.25 / 199.0).sqrt();
        assert!((k.top1_agreement_err - expected_err).abs() < 1e-12);
    }
}
