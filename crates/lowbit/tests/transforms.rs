//! Equivalent transforms ([`lowbit::transform`]) on the real zoo models:
//! - the rotated smollm2 (norms folded, residual stream rotated, embedding untied) computes
//!   the source's function: KL divergence at f32-rounding level, top-1 identical; its
//!   quantized file is an ordinary llama-architecture GGUF that llama.cpp runs with the
//!   perplexity lowbit computes for it;
//! - AWQ's folded scales leave the function unchanged too, every group's searched error is
//!   no larger than unscaled (α = 0 is on the grid), and some groups do scale;
//! - Gemma 3 refuses the rotation with the reason.

mod support;

use lowbit::calibrate::calibrate_files;
use lowbit::eval::{evaluate, EvalOptions, Reference};
use lowbit::format::storage::StorageType;
use lowbit::model::{load_gguf_lm, LoadOptions};
use lowbit::plan::Mix;
use lowbit::quantize::{run, QuantizeJob};
use lowbit::transform::{transformed_source, Transforms};

/// KL divergence (mean) and top-1 agreement of `model` against `source` on wiki.valid.
fn distance(source: &std::path::Path, model: &std::path::Path, eval: &EvalOptions) -> (f64, f64) {
    let wiki = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let src = load_gguf_lm(source, LoadOptions::default()).unwrap();
    let lm = load_gguf_lm(model, LoadOptions::default()).unwrap();
    let r = evaluate(&lm, Some(Reference::Model(&src)), None, &wiki, eval, &mut |_, _, _| {}).unwrap();
    let k = r.kld.unwrap();
    (k.mean, k.top1_agreement)
}

/// Removes the transformed sources with `transforms` the job cache got since `started`.
fn remove_made_since(started: std::time::SystemTime, transforms: &str) {
    let dir = lowbit::zoo::home().join("transformed");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        // (A .gguf listed here may be gone: removed with its report.)
        let fresh = std::fs::metadata(&p).is_ok_and(|m| m.modified().unwrap() >= started);
        if fresh && p.extension().is_some_and(|e| e == "json") {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if r["transforms"] == transforms {
                std::fs::remove_file(p.with_extension("gguf")).ok();
                std::fs::remove_file(&p).ok();
            }
        }
    }
}

#[test]
fn rotation_is_exact_and_llama_cpp_runs_the_result() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let rotate = Transforms { rotate: true, awq: false };
    let q8 = |_: &str, _: usize| StorageType::from_name("Q8_0").unwrap();
    let work = tempfile::tempdir().unwrap();
    let rotated =
        transformed_source(work.path(), &src, rotate, "", &q8, &mut || unreachable!("no AWQ"), &mut |_, _| {}).unwrap();
    let g = lowbit::gguf::GgufFile::open(&rotated).unwrap();
    assert!(g.tensor_info("output.weight").is_some(), "the tied embedding is untied");
    assert!(g.dequantize("blk.3.attn_norm.weight").unwrap().iter().all(|&x| x == 1.0), "norms folded");
    drop(g);
    let eval = EvalOptions { ctx: 128, max_chunks: Some(4), ..Default::default() };
    let (kld, top1) = distance(&src, &rotated, &eval);
    // f32 rounding of the rotated products (measured 6e-9 at ctx 512): far below any
    // quantization's 1e-3.
    assert!(kld < 1e-5 && top1 == 1.0, "rotated model: KLD {kld:e}, top-1 {top1}");
    drop(work);

    // Quantized through the job, the file is a llama model llama.cpp runs. (The job keeps
    // its transformed source in $LOWBIT_HOME/transformed/; this test removes it.)
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rot-q8.gguf");
    let job = QuantizeJob { transforms: rotate, ..QuantizeJob::new(Mix::from_name("Q8_0").unwrap(), vec![]) };
    let started = std::time::SystemTime::now();
    run(&src, &out, &job, &mut |_, _, _| {}).unwrap();
    remove_made_since(started, "rotate");
    let g = lowbit::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(g.get("lowbit.transform").and_then(|v| v.as_str()), Some("rotate"));
    drop(g);
    let (kld, _) = distance(&src, &out, &eval);
    assert!(kld < 0.01, "rotated Q8_0: KLD {kld}");
    let Some(bin) = support::llama_bin() else { return };
    let (theirs, ours) = support::perplexity_both_ways(&bin, &out, 128, 8);
    assert!((ours - theirs).abs() / theirs < 0.02, "llama.cpp PPL {theirs:.4}, lowbit {ours:.4}");
}

#[test]
fn awq_scales_are_exact_and_never_worse_than_none() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let emma = support::shared_data("austen/emma.txt");
    let calib = EvalOptions { ctx: 64, max_chunks: Some(4), ..Default::default() };
    let q4_0 = |_: &str, _: usize| StorageType::from_name("Q4_0").unwrap();
    let mut hessians =
        || Ok(calibrate_files(&src, std::slice::from_ref(&emma), &calib, true, &mut |_, _| {})?.hessians_by_weight());
    let awq = Transforms { rotate: false, awq: true };
    let dir = tempfile::tempdir().unwrap();
    let transformed = transformed_source(dir.path(), &src, awq, "test", &q4_0, &mut hessians, &mut |_, _| {}).unwrap();
    let made = transformed.with_extension("json");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&made).unwrap()).unwrap();
    assert_eq!(report["transforms"], "awq");
    let groups = report["awq"].as_array().unwrap();
    assert_eq!(groups.len(), 4 * 30, "q/k/v, gate/up, down and o in each of 30 blocks");
    let mut scaled = 0;
    for g in groups {
        let c = &g[1];
        let (e, e0) = (c["error"].as_f64().unwrap(), c["error_unscaled"].as_f64().unwrap());
        assert!(e <= e0, "{g}");
        scaled += usize::from(c["alpha"].as_f64().unwrap() > 0.0);
    }
    assert!(scaled > 0, "no group chose a scale");
    let eval = EvalOptions { ctx: 128, max_chunks: Some(4), ..Default::default() };
    let (kld, top1) = distance(&src, &transformed, &eval);
    assert!(kld < 1e-5 && top1 == 1.0, "AWQ-scaled model: KLD {kld:e}, top-1 {top1}");
}

#[test]
fn gemma3_refuses_the_rotation_with_the_reason() {
    let Some(src) = support::zoo_model("gemma3-270m") else { return };
    let job = QuantizeJob {
        transforms: Transforms { rotate: true, awq: false },
        ..QuantizeJob::new(Mix::from_name("Q8_0").unwrap(), vec![])
    };
    let dir = tempfile::tempdir().unwrap();
    let e = run(&src, &dir.path().join("x.gguf"), &job, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("gemma3") && e.contains("--transform awq"), "{e}");
}
