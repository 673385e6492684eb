//! A saved reference (`lowbit eval --save-logits`) gives the same comparison as running
//! the reference model live, and is refused for a different text or chunk count.

mod support;

use lowbit::eval::{evaluate, EvalOptions, Reference, SaveLogits};
use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions};
use lowbit::plan::Mix;
use lowbit::quantize::{quantize_gguf, QuantizeOptions};
use lowbit::saved_logits::{LogitsFormat, LogitsReader};

#[test]
fn saved_reference_matches_the_live_reference() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let text = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let quantized = dir.path().join("q3.gguf");
    let opts = QuantizeOptions::new(Mix::from_name("Q3_K_M").unwrap(), Method::Rtn);
    quantize_gguf(&src, &quantized, &opts, &mut |_, _| {}).unwrap();
    let reference = load_gguf_lm(&src, LoadOptions::default()).unwrap();
    let model = load_gguf_lm(&quantized, LoadOptions::default()).unwrap();
    let eval = EvalOptions { ctx: 64, max_chunks: Some(3), ..Default::default() };
    let logits = dir.path().join("ref.logits");
    let save = SaveLogits { path: &logits, model_name: "smollm2-135m".into(), format: LogitsFormat::Lowbit };
    let own = evaluate(&reference, None, Some(save), &text, &eval, &mut |_, _, _| {}).unwrap();
    let live = evaluate(&model, Some(Reference::Model(&reference)), None, &text, &eval, &mut |_, _, _| {}).unwrap();
    let mut reader = LogitsReader::open(&logits).unwrap();
    let saved = evaluate(&model, Some(Reference::Saved(&mut reader)), None, &text, &eval, &mut |_, _, _| {}).unwrap();
    let (a, b) = (live.kld.unwrap(), saved.kld.unwrap());
    // Stored log-probabilities are within 2.3e-4 nats; the KL sums move by a small
    // fraction of that, far below the mean's standard error.
    assert!((a.mean - b.mean).abs() < 1e-4 + 1e-3 * a.mean, "KLD live {} vs saved {}", a.mean, b.mean);
    assert!((a.mean - b.mean).abs() < 0.05 * a.mean_err);
    // Argmax and the target's NLL are stored exactly (NLL as f32).
    assert_eq!(a.top1_agreement, b.top1_agreement);
    assert!((a.reference_ppl - b.reference_ppl).abs() < 1e-5 * a.reference_ppl);
    assert!((b.reference_ppl - own.ppl).abs() < 1e-5 * own.ppl);
    assert_eq!(live.ppl, saved.ppl);

    // Another chunk count is refused, naming the file and the fix.
    let mut reader = LogitsReader::open(&logits).unwrap();
    let other = EvalOptions { ctx: 64, max_chunks: Some(2), ..Default::default() };
    let err = evaluate(&model, Some(Reference::Saved(&mut reader)), None, &text, &other, &mut |_, _, _| {})
        .expect_err("mismatch refused")
        .to_string();
    assert!(err.contains("ref.logits") && err.contains("--chunks 3"), "{err}");
    // So is another text.
    let mut reader = LogitsReader::open(&logits).unwrap();
    let shifted = &text[1000..];
    let err = evaluate(&model, Some(Reference::Saved(&mut reader)), None, shifted, &eval, &mut |_, _, _| {})
        .expect_err("other text refused")
        .to_string();
    assert!(err.contains("different tokens"), "{err}");
}
