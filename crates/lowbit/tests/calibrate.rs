//! `compute_imatrix` on the real smollm2-135m: one entry per block linear layer with one
//! value per input column, counts equal to the tokens run, shared inputs giving equal
//! statistics, llama.cpp's file format round trip, and no state left in the model.

mod support;

use lowbit::calibrate::{compute_imatrix, Imatrix};
use lowbit::eval::EvalOptions;
use lowbit::model::{load_gguf_lm, LoadOptions};

#[test]
fn imatrix_of_a_real_model() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let text = std::fs::read_to_string(support::shared_data("austen/emma.txt")).unwrap();
    let mut lm = load_gguf_lm(&src, LoadOptions::default()).unwrap();
    let opts = EvalOptions { ctx: 64, max_chunks: Some(2) };
    let m = compute_imatrix(&mut lm, &text, "emma.txt", &opts, &mut |_, _| {}).unwrap();
    assert_eq!(m.entries.len(), 30 * 7);
    for (name, e) in &m.entries {
        let want = if name.contains("ffn_down") { 1536 } else { 576 };
        assert_eq!(e.sums.len(), want, "{name}");
        assert_eq!(e.count, 128.0, "{name}: rows = 2 chunks × 64 tokens");
        assert!(e.sums.iter().all(|v| v.is_finite() && *v >= 0.0) && e.sums.iter().any(|v| *v > 0.0), "{name}");
    }
    // q, k and v see the same input (the attention norm's output).
    let q = &m.entries["blk.3.attn_q.weight"];
    assert_eq!(q, &m.entries["blk.3.attn_k.weight"]);
    assert_eq!(q, &m.entries["blk.3.attn_v.weight"]);
    // Round trip through llama.cpp's file format.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("imatrix.gguf");
    m.write_gguf(&p).unwrap();
    assert_eq!(Imatrix::read(&p).unwrap(), m);
    // The recorders are detached afterwards: another forward pass changes nothing.
    let again = compute_imatrix(&mut lm, &text, "emma.txt", &opts, &mut |_, _| {}).unwrap();
    assert_eq!(again, m, "deterministic and independent of earlier runs");
}
