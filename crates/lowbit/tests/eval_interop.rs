//! lowbit's evaluations against `llama-perplexity`'s on the same files: the two read each
//! other's KL-divergence base files (`--kl-divergence-base`) and their KL statistics
//! agree; HellaSwag draws the same tasks and scores them alike.

mod support;

use std::path::Path;
use std::process::Command;

use lowbit::eval::{evaluate, hellaswag, EvalOptions, Reference, SaveLogits};
use lowbit::method::Method;
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};
use lowbit::saved_logits::{LogitsFormat, LogitsReader};

const CTX: usize = 128;
const CHUNKS: usize = 16;

/// Runs llama-perplexity with `args` and returns its log.
fn llama(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin.join("llama-perplexity"))
        .args(args)
        .args(["-b", &CTX.to_string(), "-t", "2", "-fa", "off"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "llama-perplexity {args:?} failed:\n{log}");
    log
}

/// The first number after `label` in llama-perplexity's statistics block.
fn stat(log: &str, label: &str) -> f64 {
    let line = log.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no '{label}' line in:\n{log}"));
    line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().trim_end_matches('%').parse().unwrap()
}

#[test]
fn lowbit_and_llama_cpp_read_each_others_kl_base_files() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let Some(bin) = support::llama_bin() else { return };
    let text_path = support::shared_data("wikitext-2/wiki.valid.raw");
    let text = std::fs::read_to_string(&text_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let quant = dir.path().join("q3km.gguf");
    let opts = QuantizeOptions::new(Mix::from_name("Q3_K_M").unwrap(), Method::Search);
    quantize_gguf(&src, &quant, &opts, &mut |_, _| {}).unwrap();
    let load = |p: &Path| {
        lowbit::model::load_gguf_lm(p, lowbit::model::LoadOptions { llama_cpp_numerics: true, ..Default::default() })
            .unwrap()
    };
    let (source, model) = (load(&src), load(&quant));
    let eval = EvalOptions { ctx: CTX, max_chunks: Some(CHUNKS), resume: None };
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // 1. llama.cpp writes the base; lowbit reads it (its tokens, no text needed).
    let llama_base = dir.path().join("llama.kld");
    let (chunks, ctx) = (CHUNKS.to_string(), CTX.to_string());
    let base_args = ["-c", &ctx, "-f", &s(&text_path), "--chunks", &chunks, "--kl-divergence-base", &s(&llama_base)];
    llama(&bin, &[&["-m", &s(&src)][..], &base_args].concat());
    let theirs =
        llama(&bin, &["-m", &s(&quant), "-c", &ctx, "--kl-divergence-base", &s(&llama_base), "--kl-divergence"]);
    let mut reader = LogitsReader::open(&llama_base).unwrap();
    assert_eq!((reader.format, reader.header.ctx, reader.header.chunks), (LogitsFormat::LlamaCpp, CTX, CHUNKS));
    let ours = evaluate(&model, Some(Reference::Saved(&mut reader)), None, "", &eval, &mut |_, _, _| {}).unwrap();
    let ours = ours.kld.unwrap();
    // How far the two implementations' forward passes are apart on identical weights:
    // the floor under any comparison of their KL numbers.
    let mut reader = LogitsReader::open(&llama_base).unwrap();
    let floor = evaluate(&source, Some(Reference::Saved(&mut reader)), None, "", &eval, &mut |_, _, _| {}).unwrap();
    let floor = floor.kld.unwrap().mean;
    // Both read the base's likelihoods from the same codes: equal to the printed digits.
    let base_ppl = stat(&theirs, "Mean PPL(base)");
    assert!((ours.reference_ppl - base_ppl).abs() < 2e-6 * base_ppl, "PPL(base) {} vs {base_ppl}", ours.reference_ppl);
    let kld = stat(&theirs, "Mean    KLD");
    eprintln!("llama.cpp base: KLD lowbit {:.6}, llama.cpp {kld:.6}, numerics floor {floor:.6}", ours.mean);
    assert!(floor < 0.02, "lowbit's source forward is {floor} nats from llama.cpp's: a misread base file?");
    assert!((ours.mean - kld).abs() < floor, "KLD lowbit {} vs llama.cpp {kld} (floor {floor})", ours.mean);
    let same_top = stat(&theirs, "Same top p") / 100.0;
    assert!((ours.top1_agreement - same_top).abs() < 3.0 * ours.top1_agreement_err);

    // 2. lowbit writes the base; llama.cpp reads it.
    let lowbit_base = dir.path().join("lowbit.kld");
    let save = SaveLogits { path: &lowbit_base, model_name: "source".into(), format: LogitsFormat::LlamaCpp };
    let own = evaluate(&source, None, Some(save), &text, &eval, &mut |_, _, _| {}).unwrap();
    let theirs =
        llama(&bin, &["-m", &s(&quant), "-c", &ctx, "--kl-divergence-base", &s(&lowbit_base), "--kl-divergence"]);
    let live = evaluate(&model, Some(Reference::Model(&source)), None, &text, &eval, &mut |_, _, _| {}).unwrap();
    let live = live.kld.unwrap();
    // The file stores log-probabilities to 16 nats below the top: the base perplexity read
    // back differs from the live one only on tokens the source gave under e^-16.
    let base_ppl = stat(&theirs, "Mean PPL(base)");
    assert!((base_ppl - own.ppl).abs() < 0.005 * own.ppl, "PPL(base) {base_ppl} vs lowbit's own {}", own.ppl);
    let kld = stat(&theirs, "Mean    KLD");
    eprintln!("lowbit base: KLD lowbit {:.6}, llama.cpp {kld:.6}", live.mean);
    assert!((live.mean - kld).abs() < floor, "KLD lowbit {} vs llama.cpp {kld} (floor {floor})", live.mean);
}

/// Per task, whether llama-perplexity's HellaSwag choice was right, from its running
/// accuracy lines (`i<TAB>acc%<TAB>[interval]`).
fn llama_hits(log: &str) -> Vec<bool> {
    let mut hits = Vec::new();
    let mut before = 0i64;
    for line in log.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(i), Some(acc)) = (f.first().and_then(|v| v.parse::<i64>().ok()), f.get(1)) else { continue };
        let Ok(acc) = acc.trim_end_matches('%').parse::<f64>() else { continue };
        let total = (acc * i as f64 / 100.0).round() as i64;
        hits.push(total > before);
        before = total;
    }
    hits
}

#[test]
fn hellaswag_scores_the_tasks_llama_cpp_scores_and_agrees_per_task() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let Some(bin) = support::llama_bin() else { return };
    let path = support::shared_data("hellaswag/hellaswag_val_full.txt");
    const N: usize = 20;
    let log = llama(
        &bin,
        &["-m", src.to_str().unwrap(), "-f", path.to_str().unwrap(), "--hellaswag", "--hellaswag-tasks", "20"],
    );
    let theirs = llama_hits(&log);
    assert_eq!(theirs.len(), N, "could not read llama.cpp's per-task lines:\n{log}");
    let all = hellaswag::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let tasks = hellaswag::select(all, N);
    let lm = lowbit::model::load_gguf_lm(
        &src,
        lowbit::model::LoadOptions { llama_cpp_numerics: true, ..Default::default() },
    )
    .unwrap();
    let ours: Vec<bool> =
        tasks.iter().map(|t| hellaswag::score_task(&lm, t).unwrap().choice_norm() == t.gold).collect();
    // Same tasks, same scoring: only a near-tie between two endings may flip under the
    // two implementations' rounding. A different draw would agree on ~60 % of tasks.
    let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    eprintln!(
        "HellaSwag, {N} tasks: lowbit {} right, llama.cpp {}, {differ} differ",
        ours.iter().filter(|&&h| h).count(),
        theirs.iter().filter(|&&h| h).count()
    );
    assert!(differ <= 2, "{differ} of {N} tasks scored differently");
}
