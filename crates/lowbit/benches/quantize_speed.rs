//! Quantization speed. Part one: single-thread encoding throughput of every type lowbit
//! writes (million weights per second, search and round-to-nearest) on Gaussian rows.
//! Part two: `lowbit quantize` of a whole model against llama.cpp's `llama-quantize` on
//! the same source, interleaved, when `LLAMA_QUANTIZE` names its binary and
//! `LOWBIT_BENCH_SOURCE` a GGUF (e.g. an F32 GGUF made by `lowbit dequantize`); prints the
//! median seconds of each and their ratio measured in the same run.
//! Part three (alone, when `LOWBIT_BENCH_GPTQ=ROWSxCOLS` is set): GPTQ on one matrix of
//! that shape, phase by phase.
//! Run: `cargo bench -p lowbit --bench quantize_speed` (`LOWBIT_BENCH_THREADS`, default 2;
//! `LOWBIT_BENCH_MIX`, default Q4_K_M).

use std::process::Command;
use std::time::Instant;

use lowbit::format::encode::{encodable_types, quantize_rows};
use lowbit::format::GgmlType;
use lowbit::method::Method;
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};
use rand::{Rng, SeedableRng};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn encoding_throughput() {
    let (rows, cols) = (512, 2048);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Box–Muller normals, σ = 0.02 (a typical weight scale).
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u, v) = (rng.random::<f32>().max(1e-12), rng.random::<f32>());
            0.02 * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    println!("single-thread encoding, {rows}x{cols} Gaussian weights: million weights/s");
    println!("{:<8} {:>10} {:>10}", "type", "search", "rtn");
    for ty in encodable_types() {
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            continue;
        }
        let rate = |method: Method| {
            let mut secs: Vec<f64> = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    pool.install(|| quantize_rows(ty, &data, cols, None, method.fit()).expect("encodes"));
                    t.elapsed().as_secs_f64()
                })
                .collect();
            data.len() as f64 / median(&mut secs) / 1e6
        };
        println!("{:<8} {:>10.1} {:>10.1}", ty.to_string(), rate(Method::Search), rate(Method::Rtn));
    }
}

fn whole_model(threads: usize) {
    let (Ok(llama), Ok(source)) = (std::env::var("LLAMA_QUANTIZE"), std::env::var("LOWBIT_BENCH_SOURCE")) else {
        println!("whole model: set LLAMA_QUANTIZE and LOWBIT_BENCH_SOURCE to compare with llama-quantize");
        return;
    };
    let mix_name = std::env::var("LOWBIT_BENCH_MIX").unwrap_or_else(|_| "Q4_K_M".into());
    let mix = Mix::from_name(&mix_name).expect("known mix");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.gguf");
    let opts = QuantizeOptions::new(mix, Method::Search);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..7 {
        let t = Instant::now();
        quantize_gguf(source.as_ref(), &out, &opts, &mut |_, _| {}).expect("lowbit quantizes");
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let status = Command::new(&llama)
            .arg("--allow-requantize")
            .arg(&source)
            .arg(&out)
            .arg(&mix_name)
            .arg(threads.to_string())
            .output()
            .expect("llama-quantize runs")
            .status;
        assert!(status.success(), "llama-quantize failed");
        theirs.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!("whole model {source} → {mix_name}, {threads} threads, median of 7 interleaved runs:");
    println!("  lowbit quantize {a:.2} s, llama-quantize {b:.2} s, ratio lowbit/llama {:.2}", a / b);
}

/// Part three: GPTQ on one matrix of an 8B model's shape (`LOWBIT_BENCH_GPTQ=ROWSxCOLS`,
/// e.g. 4096x14336 for Llama-3-8B's down projection) against a Hessian of 2048 random
/// correlated tokens: the inverse factor alone (8 rows), the sweep, and the sweep plus
/// refinement, each timed once (seconds; the 8B figures in the README come from whole runs).
fn gptq_matrix(spec: &str) {
    use lowbit::method::gptq::{gptq_rows, GptqOptions};
    let (rows, cols) =
        spec.split_once('x').and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?))).expect("ROWSxCOLS");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let t = 2048;
    let mut normal = || {
        let (u, v) = (rng.random::<f32>().max(1e-12), rng.random::<f32>());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let latent: Vec<f32> = (0..t * 64).map(|_| normal()).collect();
    let mix: Vec<f32> = (0..64 * cols).map(|_| normal()).collect();
    let mut x: Vec<f32> = (0..t * cols).map(|_| 0.5 * normal()).collect();
    for s in 0..t {
        for k in 0..64 {
            let z = latent[s * 64 + k];
            x[s * cols..(s + 1) * cols].iter_mut().zip(&mix[k * cols..(k + 1) * cols]).for_each(|(v, m)| *v += z * m);
        }
    }
    let mut h = vec![0.0f32; cols * cols];
    lowbit::tensor::gram(&x, t, cols, &mut h);
    drop(x);
    let w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * normal()).collect();
    let time = |rows: usize, refine: bool| {
        let opts = GptqOptions { refine, ..Default::default() };
        let t0 = Instant::now();
        gptq_rows(GgmlType::Q4_K, &w[..rows * cols], cols, &h, &opts).expect("gptq");
        t0.elapsed().as_secs_f64()
    };
    let factor = time(8, false);
    let sweep = time(rows, false);
    let refined = time(rows, true);
    println!(
        "GPTQ Q4_K on {rows}x{cols}: factor {factor:.1} s, factor + sweep {sweep:.1} s, + refinement {refined:.1} s"
    );
}

fn main() {
    if let Ok(spec) = std::env::var("LOWBIT_BENCH_GPTQ") {
        let threads: usize = std::env::var("LOWBIT_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
        gptq_matrix(&spec);
        return;
    }
    let threads: usize = std::env::var("LOWBIT_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    encoding_throughput();
    whole_model(threads);
}
