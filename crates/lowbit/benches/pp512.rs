//! Prompt-processing speed of lowbit's f32 forward pass (pp512, 2 threads by default),
//! interleaved with llama.cpp's `llama-bench` on the same model when `LLAMA_BENCH` names
//! its binary and `LOWBIT_BENCH_F32_DIR` holds F32 GGUFs made by `lowbit dequantize`
//! (`smollm2-135m.f32.gguf`, `gemma3-270m.f32.gguf`). Prints min/median tokens/s and the
//! ratio measured in the same run. Run: `cargo bench -p lowbit --bench pp512`.

use std::process::Command;
use std::time::Instant;

use lowbit::model::{load_gguf_lm, LoadOptions};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// llama-bench's pp512 tokens/s for `model`, or `None` if it cannot run.
fn llama_bench(bin: &str, model: &std::path::Path, threads: usize) -> Option<f64> {
    let out = Command::new(bin)
        .args(["-m"])
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", "512", "-n", "0", "-r", "1", "-o", "json"])
        .output()
        .ok()?;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    j.get(0)?.get("avg_ts")?.as_f64()
}

fn main() {
    let threads: usize = std::env::var("LOWBIT_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    let repeats = 3;
    for name in ["smollm2-135m", "gemma3-270m"] {
        let Some(path) = lowbit::zoo::find(name).and_then(|m| m.cached()) else {
            println!("{name}: not fetched (run `lowbit fetch {name}`), skipped");
            continue;
        };
        let lm = load_gguf_lm(&path, LoadOptions::default()).expect("model loads");
        let tokens: Vec<u32> = (0..512u32).map(|i| (i * 7919) % lm.model.vocab_size() as u32).collect();
        let f32_model = std::env::var("LOWBIT_BENCH_F32_DIR")
            .ok()
            .map(|d| std::path::Path::new(&d).join(format!("{name}.f32.gguf")));
        let bench_bin = std::env::var("LLAMA_BENCH").ok();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            // A B A B …: lowbit, then llama.cpp, so machine noise hits both alike.
            let mut cache = lm.model.new_cache(512);
            let t0 = Instant::now();
            let h = lm.model.forward_hidden(&tokens, &mut cache).expect("forward");
            let _ = lm.model.logits(&h[511 * lm.model.hidden_size()..], 1);
            ours.push(512.0 / t0.elapsed().as_secs_f64());
            if let (Some(bin), Some(m)) = (&bench_bin, &f32_model) {
                if let Some(ts) = llama_bench(bin, m, threads) {
                    theirs.push(ts);
                }
            }
        }
        let min = ours.iter().cloned().fold(f64::INFINITY, f64::min);
        let med = median(&mut ours);
        print!("{name}: lowbit f32 pp512 {med:.1} tok/s (min {min:.1}, {repeats} runs, {threads} threads)");
        if !theirs.is_empty() {
            let tm = median(&mut theirs);
            print!("; llama.cpp F32 pp512 {tm:.1} tok/s; ratio {:.2}", med / tm);
        }
        println!();
    }
}
