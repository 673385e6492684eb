//! Speed as `llama-bench` measures it, so the two can be compared directly: `pp` — a
//! prompt of `p` random tokens processed in one batch from an empty cache, logits of the
//! last token; `tg` — `n` tokens decoded one at a time from an empty cache, logits of
//! each. Each is repeated (after one warm-up run) and reported as tokens/s mean ± sample
//! standard deviation. For `tg`, the bound set by memory: one token reads every weight
//! matrix once, so `read bandwidth / weight bytes` tokens/s is the most any engine can
//! reach; the bandwidth is measured here, by streaming a buffer of the same size (up to
//! 1 GiB) with the same threads.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::Result;
use crate::model::LoadedLm;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt tokens (0: skip pp).
    pub prompt: usize,
    /// Generated tokens (0: skip tg).
    pub generate: usize,
    /// Timed repetitions of each test.
    pub repetitions: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        // llama-bench's defaults (-p 512 -n 128); 3 repetitions instead of its 5.
        BenchOptions { prompt: 512, generate: 128, repetitions: 3 }
    }
}

/// Tokens/s of one test.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Speed {
    /// Mean tokens/s.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Each repetition's tokens/s.
    pub samples: Vec<f64>,
}

impl Speed {
    fn of(samples: Vec<f64>) -> Speed {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n.max(1.0);
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Speed { mean, std: var.sqrt(), samples }
    }
}

/// What [`bench`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Prompt processing, when measured.
    pub pp: Option<Speed>,
    /// Generation, when measured.
    pub tg: Option<Speed>,
    /// Bytes of weights one generated token reads.
    pub weight_bytes_per_token: u64,
    /// Measured read bandwidth over a buffer that size, bytes/s.
    pub read_bandwidth: f64,
    /// `tg` as a fraction of `read_bandwidth / weight_bytes_per_token`.
    pub tg_bandwidth_fraction: Option<f64>,
    /// Threads used.
    pub threads: usize,
}

/// Measures `lm` (in the current rayon pool, whose size is the thread count).
pub fn bench(lm: &LoadedLm, o: &BenchOptions) -> Result<BenchResult> {
    let m = &lm.model;
    let vocab = m.vocab_size() as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut tokens = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let d = m.hidden_size();
    let reps = o.repetitions.max(1);
    let pp = if o.prompt > 0 {
        let mut samples = Vec::new();
        for rep in 0..=reps {
            let toks = tokens(o.prompt);
            let mut cache = m.new_cache(o.prompt);
            let start = Instant::now();
            let hidden = m.forward_hidden(&toks, &mut cache)?;
            std::hint::black_box(m.logits(&hidden[(o.prompt - 1) * d..], 1));
            crate::interrupt::check()?;
            if rep > 0 {
                samples.push(o.prompt as f64 / start.elapsed().as_secs_f64());
            }
        }
        Some(Speed::of(samples))
    } else {
        None
    };
    let tg = if o.generate > 0 {
        let mut samples = Vec::new();
        for rep in 0..=reps {
            let mut cache = m.new_cache(o.generate);
            let mut tok = tokens(1)[0];
            let start = Instant::now();
            for _ in 0..o.generate {
                let hidden = m.forward_hidden(&[tok], &mut cache)?;
                let logits = m.logits(&hidden, 1);
                // The next token depends on this one, as in real decoding.
                tok = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
                    as u32;
                crate::interrupt::check()?;
            }
            if rep > 0 {
                samples.push(o.generate as f64 / start.elapsed().as_secs_f64());
            }
        }
        Some(Speed::of(samples))
    } else {
        None
    };
    let weight_bytes_per_token = m.weight_bytes_per_token();
    let read_bandwidth = read_bandwidth(weight_bytes_per_token as usize);
    let tg_bandwidth_fraction = tg.as_ref().map(|s| s.mean / (read_bandwidth / weight_bytes_per_token.max(1) as f64));
    Ok(BenchResult {
        pp,
        tg,
        weight_bytes_per_token,
        read_bandwidth,
        tg_bandwidth_fraction,
        threads: rayon::current_num_threads(),
    })
}

/// Bytes/s of reading a buffer of `bytes` (at least 1 MiB, at most 1 GiB) with the
/// current pool's threads, best of several passes (the same cache conditions a token's
/// weights see). The cap keeps an 8B model's bench from holding a second copy of its
/// weights: a buffer far beyond the last-level cache streams at the same rate.
pub fn read_bandwidth(bytes: usize) -> f64 {
    let n = bytes.clamp(1 << 20, 1 << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(4096);
    let mut best = 0f64;
    let start_all = Instant::now();
    let mut passes = 0;
    while passes < 5 || (start_all.elapsed().as_secs_f64() < 0.5 && passes < 100) {
        let start = Instant::now();
        let s: u64 = buf.par_chunks(chunk).map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v))).sum();
        std::hint::black_box(s);
        best = best.max((n * 8) as f64 / start.elapsed().as_secs_f64());
        passes += 1;
    }
    best
}
