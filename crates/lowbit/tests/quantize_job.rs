//! A calibrated quantization in one library call ([`lowbit::quantize::run`]) on the real
//! smollm2-135m: it gives the same bytes as the two-step path (statistics, then the
//! writer with the resolved options), picks GPTQ by default when Hessians are there, and
//! GPTQ lowers the quantized layer's output error on the calibration inputs below the
//! importance-weighted search's. One tensor is re-quantized (the rest are copied) so the
//! test stays fast in a debug build.

mod support;

use lowbit::calibrate::compute_stats;
use lowbit::eval::EvalOptions;
use lowbit::gguf::GgufFile;
use lowbit::method::gptq::output_error;
use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions};
use lowbit::plan::{Mix, Override};
use lowbit::quantize::{quantize_gguf, run, CalibrationInput, QuantizeJob, QuantizeOptions};

const TENSOR: &str = "blk.0.ffn_down.weight";

/// smollm2 with the source's own types everywhere (copied) but one matrix re-quantized as
/// Q4_K, calibrated on two 64-token chunks of emma.txt.
fn one_matrix_job(sequential: bool) -> (std::path::PathBuf, QuantizeJob) {
    let emma = support::shared_data("austen/emma.txt");
    let eval = EvalOptions { ctx: 64, max_chunks: Some(2), ..Default::default() };
    let overrides =
        vec![Override::parse(&format!("{TENSOR}=Q4_K")).unwrap(), Override::parse("token_embd=Q8_0").unwrap()];
    let job = QuantizeJob {
        calibration: CalibrationInput::Texts { paths: vec![emma.clone()], eval },
        sequential: Some(sequential),
        ..QuantizeJob::new(Mix::from_name("Q4_1").unwrap(), overrides)
    };
    (emma, job)
}

/// Sequential GPTQ with the calibration hidden states on disk computes exactly what it
/// computes with them in memory; a `--max-memory` below the model is refused before any
/// work, leaving nothing behind.
#[test]
fn sequential_gptq_spills_hidden_states_without_changing_a_byte() {
    use lowbit::calibrate::budget::MemoryLimit;
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let (_, job) = one_matrix_job(true);
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"), dir.path().join("c.gguf"));
    let in_memory = run(&src, &a, &job, &mut |_, _, _| {}).unwrap();
    let spilled =
        run(&src, &b, &QuantizeJob { memory: MemoryLimit::SpillHidden, ..job.clone() }, &mut |_, _, _| {}).unwrap();
    let (m, s) = (in_memory.memory.unwrap(), spilled.memory.unwrap());
    assert!(!m.spill && s.spill, "{m:?} {s:?}");
    assert_eq!(m.hidden, 2 * 64 * 576 * 4, "two chunks of 64 tokens, 576 wide, f32");
    assert!(s.block > 4 * 576 * 576 * 8, "at least the block's f64 accumulators: {s:?}");
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "spilling changed the output");
    let tight = QuantizeJob { memory: MemoryLimit::Bytes(1 << 20), ..job };
    let e = run(&src, &c, &tight, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("--max-memory 1.05 MB: too small for this model; it needs about"), "{e}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["a.gguf", "b.gguf"], "a refused run leaves nothing behind");
}

#[test]
fn calibrated_quantization_in_one_call() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    // Calibration on the float model (the sequential default would calibrate each block on
    // the quantized blocks before it, which the by-hand statistics below do not).
    let (emma, job) = one_matrix_job(false);
    let CalibrationInput::Texts { eval, .. } = job.calibration.clone() else { unreachable!() };
    let overrides = job.overrides.clone();
    assert!(QuantizeJob { sequential: None, ..job.clone() }.is_sequential(), "texts + GPTQ: sequential by default");
    assert!(!QuantizeJob { sequential: None, low_rank: Some(4), ..job.clone() }.is_sequential());
    assert!(!QuantizeJob { sequential: None, method: Some(Method::Search), ..job.clone() }.is_sequential());
    let dir = tempfile::tempdir().unwrap();
    let one_call = dir.path().join("one-call.gguf");
    let summary = run(&src, &one_call, &job, &mut |_, _, _| {}).unwrap();
    assert_eq!(summary.method, "gptq", "Hessians are there, so the default method is GPTQ");

    // The same by hand: statistics, then the writer.
    let text = std::fs::read_to_string(&emma).unwrap();
    let mut lm = load_gguf_lm(&src, LoadOptions::default()).unwrap();
    let stats = compute_stats(&mut lm, &text, "emma.txt", &eval, true, &mut |_, _| {}).unwrap();
    let by_hand = |method: Method, path: &std::path::Path| {
        let opts = QuantizeOptions {
            overrides: overrides.clone(),
            importance: Some(stats.imatrix.importance()),
            hessians: Some(stats.hessians_by_weight()),
            ..QuantizeOptions::new(Mix::from_name("Q4_1").unwrap(), method)
        };
        quantize_gguf(&src, path, &opts, &mut |_, _| {}).unwrap();
    };
    let two_steps = dir.path().join("two-steps.gguf");
    by_hand(Method::Gptq, &two_steps);
    assert_eq!(std::fs::read(&one_call).unwrap(), std::fs::read(&two_steps).unwrap());

    // GPTQ minimises the output error on the calibration inputs: lower than the search's.
    let searched = dir.path().join("search.gguf");
    by_hand(Method::Search, &searched);
    let w = GgufFile::open(&src).unwrap().dequantize(TENSOR).unwrap();
    let h = &stats.hessians_by_weight()[TENSOR];
    let err =
        |p: &std::path::Path| output_error(&w, &GgufFile::open(p).unwrap().dequantize(TENSOR).unwrap(), h.n, &h.xtx);
    let (e_gptq, e_search) = (err(&one_call), err(&searched));
    assert!(e_gptq < e_search, "GPTQ output error {e_gptq:.4e} is not below the search's {e_search:.4e}");
}
