//! Speed of lowbit's f32 forward pass (2 threads by default): prompt processing (pp512)
//! and generation (tg128, one token at a time through the KV cache), interleaved with
//! llama.cpp's `llama-bench` on the same model when `LLAMA_BENCH` names its binary and
//! `LOWBIT_BENCH_F32_DIR` holds F32 GGUFs made by `lowbit dequantize`
//! (`smollm2-135m.f32.gguf`, `gemma3-270m.f32.gguf`). Generation reads every weight once
//! per token, so it is bound by memory bandwidth: the bench also measures the machine's
//! read bandwidth in the same run and prints the fraction of it each generator reaches.
//! Prints medians and the ratios measured in the same run.
//! Run: `cargo bench -p lowbit --bench pp512`.

use std::process::Command;
use std::time::Instant;

use lowbit::gguf::GgufFile;
use lowbit::model::{load_gguf_lm, LoadOptions};
use rayon::prelude::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// llama-bench's tokens/s for `model` (`-p P -n N`), or `None` if it cannot run.
fn llama_bench(bin: &str, model: &std::path::Path, threads: usize, p: usize, n: usize) -> Option<f64> {
    let out = Command::new(bin)
        .args(["-m"])
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &p.to_string(), "-n", &n.to_string(), "-r", "1", "-o", "json"])
        .output()
        .ok()?;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    j.get(0)?.get("avg_ts")?.as_f64()
}

/// Read bandwidth of this machine in bytes/s: summing a 512 MiB buffer with the thread
/// pool (vectorized, so reading is the bottleneck), best of three.
fn read_bandwidth() -> f64 {
    let buf = vec![1.0f32; 128 << 20];
    (0..3)
        .map(|_| {
            let t = Instant::now();
            // Sixteen independent lanes, so the sum vectorizes and memory is the limit.
            let s: f32 = buf
                .par_chunks(1 << 16)
                .map(|c| {
                    let lanes = c.chunks_exact(16).fold([0.0f32; 16], |mut a, x| {
                        a.iter_mut().zip(x).for_each(|(a, x)| *a += x);
                        a
                    });
                    lanes.iter().sum::<f32>()
                })
                .sum();
            std::hint::black_box(s);
            (buf.len() * 4) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let threads: usize = std::env::var("LOWBIT_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    let repeats = 3;
    let bandwidth = read_bandwidth();
    println!("read bandwidth: {:.1} GB/s ({threads} threads)", bandwidth / 1e9);
    for name in ["smollm2-135m", "gemma3-270m"] {
        let Some(path) = lowbit::zoo::find(name).and_then(|m| m.cached()) else {
            println!("{name}: not fetched (run `lowbit fetch {name}`), skipped");
            continue;
        };
        let lm = load_gguf_lm(&path, LoadOptions::default()).expect("model loads");
        // Bytes one generated token reads: every weight once as f32 (lowbit computes in
        // f32), the token embedding counted once (a tied output reads it in full).
        let params: u64 = GgufFile::open(&path).expect("opens").tensors.iter().map(|t| t.n_elements).sum();
        let bytes_per_token = 4.0 * params as f64;
        let tokens: Vec<u32> = (0..512u32).map(|i| (i * 7919) % lm.model.vocab_size() as u32).collect();
        let f32_model = std::env::var("LOWBIT_BENCH_F32_DIR")
            .ok()
            .map(|d| std::path::Path::new(&d).join(format!("{name}.f32.gguf")));
        let bench_bin = std::env::var("LLAMA_BENCH").ok();
        let (mut pp, mut tg, mut pp_l, mut tg_l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            // A B A B …: lowbit, then llama.cpp, so machine noise hits both alike.
            let mut cache = lm.model.new_cache(512);
            let t0 = Instant::now();
            let h = lm.model.forward_hidden(&tokens, &mut cache).expect("forward");
            let _ = lm.model.logits(&h[511 * lm.model.hidden_size()..], 1);
            pp.push(512.0 / t0.elapsed().as_secs_f64());
            let mut cache = lm.model.new_cache(129);
            let t0 = Instant::now();
            let mut next = tokens[0];
            for _ in 0..128 {
                let h = lm.model.forward_hidden(&[next], &mut cache).expect("forward");
                let logits = lm.model.logits(&h, 1);
                next = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
                    as u32;
            }
            tg.push(128.0 / t0.elapsed().as_secs_f64());
            if let (Some(bin), Some(m)) = (&bench_bin, &f32_model) {
                pp_l.extend(llama_bench(bin, m, threads, 512, 0));
                tg_l.extend(llama_bench(bin, m, threads, 0, 128));
            }
        }
        let (pp, tg) = (median(&mut pp), median(&mut tg));
        let frac = |ts: f64| 100.0 * ts * bytes_per_token / bandwidth;
        print!("{name}: lowbit f32 pp512 {pp:.1} tok/s, tg128 {tg:.1} tok/s ({:.0}% of read bandwidth)", frac(tg));
        if !pp_l.is_empty() && !tg_l.is_empty() {
            let (lp, lt) = (median(&mut pp_l), median(&mut tg_l));
            print!(
                "; llama.cpp F32 pp512 {lp:.1}, tg128 {lt:.1} tok/s ({:.0}%); ratios pp {:.2}, tg {:.2}",
                frac(lt),
                pp / lp,
                tg / lt
            );
        }
        println!(" [{repeats} runs each, {threads} threads]");
    }
}
