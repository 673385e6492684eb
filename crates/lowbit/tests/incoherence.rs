//! Per-layer incoherence (`quantize --incoherence`) on a real model (smollm2): block
//! matrices of a lowbit-native type are stored rotated on their input side (their seed in
//! `lowbit.incoherence.<tensor>`), ggml-typed ones are not; the dense decode rotates them
//! back; the runtime, which rotates each layer's input (once per q/k/v or gate/up group),
//! computes what the dense weights compute — with a low-rank branch in the rotated basis
//! too; and the file is a valid source for another quantization.

mod support;

use lowbit::gguf::{incoherence_key, GgufFile};
use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions, Weight};
use lowbit::plan::{Mix, Override};
use lowbit::quantize::{quantize_gguf, QuantizeOptions};

fn options(incoherence: bool, low_rank: Option<usize>) -> QuantizeOptions {
    QuantizeOptions {
        // Block matrices in a native type except ffn_down (a ggml type: never rotated).
        overrides: vec![Override::parse("ffn_down=Q4_K").unwrap(), Override::parse("blk\\.=int4_g64").unwrap()],
        low_rank,
        incoherence,
        ..QuantizeOptions::new(Mix::from_name("Q8_0").unwrap(), Method::Rtn)
    }
}

#[test]
fn incoherent_weights_are_written_rotated_and_run() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (plain, rotated) = (dir.path().join("plain.gguf"), dir.path().join("rot.gguf"));
    quantize_gguf(&src, &plain, &options(false, None), &mut |_, _| {}).unwrap();
    quantize_gguf(&src, &rotated, &options(true, Some(2)), &mut |_, _| {}).unwrap();
    let (gs, gp, gr) =
        (GgufFile::open(&src).unwrap(), GgufFile::open(&plain).unwrap(), GgufFile::open(&rotated).unwrap());
    let mut rotated_count = 0;
    for t in gp.tensors.iter().filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2) {
        let key = gr.get(&incoherence_key(&t.name)).and_then(|v| v.as_u64());
        if t.name.contains("ffn_down") {
            assert_eq!(key, None, "{}: a ggml type stays unrotated", t.name);
            continue;
        }
        assert_eq!(key, Some(lowbit::method::incoherence::SEED), "{}", t.name);
        rotated_count += 1;
        // Stored rows differ (rotated), decoded weights are close to the source's.
        assert_ne!(gp.tensor_bytes(&t.name).unwrap().1, gr.tensor_bytes(&t.name).unwrap().1, "{}", t.name);
        let w = gs.dequantize(&t.name).unwrap();
        let rel = |q: &[f32]| {
            w.iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
                / w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
        };
        let (e0, e1) = (rel(&gp.dequantize(&t.name).unwrap()), rel(&gr.dequantize(&t.name).unwrap()));
        // 4-bit groups of 64: a few percent either way; rotated back correctly, not garbage.
        assert!(e1 < 3.0 * e0 && e1 < 0.05, "{}: relative error {e1} rotated, {e0} plain", t.name);
    }
    assert_eq!(rotated_count, 30 * 6);

    let packed = load_gguf_lm(&rotated, LoadOptions::default()).unwrap();
    let mut dense = load_gguf_lm(&rotated, LoadOptions::default()).unwrap();
    for lin in dense.model.block_linears_mut() {
        assert_eq!(lin.weight.rotation().is_some(), !lin.name.contains("ffn_down"), "{}", lin.name);
        assert!(lin.weight.branch().is_some(), "{}", lin.name);
        let d = lin.weight.dense().into_owned();
        assert_eq!(d, gr.dequantize(&lin.name).unwrap(), "{}: one dense decode", lin.name);
        lin.weight = Weight::Dense(d);
    }
    let tokens: Vec<u32> = (0..20u32).map(|i| 100 + 37 * i).collect();
    let run = |lm: &lowbit::model::LoadedLm| {
        let m = &lm.model;
        let mut cache = m.new_cache(tokens.len());
        let h = m.forward_hidden(&tokens[..16], &mut cache).unwrap();
        let mut out = m.logits(&h, 16);
        for &t in &tokens[16..] {
            let h = m.forward_hidden(&[t], &mut cache).unwrap();
            out.extend(m.logits(&h, 1));
        }
        out
    };
    let (a, b) = (run(&packed), run(&dense));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // f32 summation order only (the rotation is one more f32 product per layer).
    assert!(worst <= 1e-4 * scale, "rotated runtime vs dense: max |Δlogit| {worst} (largest {scale})");

    // As a source: re-quantized to Q8_0, the weights are the rotated-back ones.
    let again = dir.path().join("q8.gguf");
    let q8 = QuantizeOptions::new(Mix::from_name("Q8_0").unwrap(), Method::Rtn);
    quantize_gguf(&rotated, &again, &q8, &mut |_, _| {}).unwrap();
    let g8 = GgufFile::open(&again).unwrap();
    let name = "blk.5.attn_q.weight";
    assert!(g8.get(&incoherence_key(name)).is_none());
    let (w8, wr) = (g8.dequantize(name).unwrap(), gr.dequantize(name).unwrap());
    let rel = w8.iter().zip(&wr).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
        / wr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    assert!(rel < 1e-4, "re-quantized {name}: relative error {rel}");
}
