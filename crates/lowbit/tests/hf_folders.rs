//! Hugging Face folders read as the GGUF llama.cpp's converter writes (`lowbit::hf`): the
//! zoo's GGUF models exported as folders (`hf::export::export`: PyTorch names, q/k rows in
//! rotate-half order, Gemma norms as w − 1, tokenizer.json/tokenizer_config.json) and read
//! back give the same tensors, metadata, token ids and logits — and quantizing the folder
//! gives the same bytes as quantizing the GGUF.

mod support;

use lowbit::gguf::{GgufFile, Value};
use lowbit::hf::export::{export, ExportOptions};
use lowbit::model::{load_lm, LoadOptions};
use lowbit::safetensors::StDtype;

/// The two round trips write f32 folders of 0.5 and 1.1 GB: one at a time, so the suite's
/// peak disk use is one folder plus its two quantized files (a CI machine once ran out of
/// disk with both at once).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn round_trip(zoo: &str, shard: Option<u64>, mix: &str) {
    let Some(src) = support::zoo_model(zoo) else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let g = GgufFile::open(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    export(&g, &folder, ExportOptions { dtype: StDtype::F32, max_shard_bytes: shard }).unwrap();
    if shard.is_some() {
        assert!(folder.join("model.safetensors.index.json").exists());
    }
    let h = lowbit::hf::open(&folder).unwrap();

    // Same tensors (in the converter's order, which older files need not follow),
    // decoding to the same values.
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(names(&h), names(&g));
    for t in &g.tensors {
        assert_eq!(h.tensor_info(&t.name).unwrap().dims, t.dims, "{}", t.name);
        let (a, b) = (g.dequantize(&t.name).unwrap(), h.dequantize(&t.name).unwrap());
        let exact = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        if t.dims.len() == 1 && zoo == "gemma3-270m" {
            // Gemma norms travel as w − 1 and come back as (w − 1) + 1: f32 rounding.
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0)), "{}", t.name);
        } else {
            assert!(exact, "{} differs", t.name);
        }
    }
    // The converter's metadata: every hyper-parameter and tokenizer key the GGUF has.
    for (k, v) in &g.metadata {
        let arch_key = k.starts_with(&format!("{}.", g.architecture().unwrap()));
        let tok_key = k.starts_with("tokenizer.") && k != "tokenizer.ggml.add_sep_token";
        if !(arch_key || tok_key) {
            continue;
        }
        let got = h.get(k).unwrap_or_else(|| panic!("{k} missing"));
        let same = match (v, got) {
            (Value::Array(_, a), Value::Array(_, b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_str() == y.as_str() && x.as_f64() == y.as_f64())
            }
            (a, b) => a.as_str() == b.as_str() && a.as_f64().map(|x| x as f32) == b.as_f64().map(|x| x as f32),
        };
        // SentencePiece scores come back through tokenizer.model exactly; the rest too.
        assert!(same, "{k}: {} vs {}", v.summary(), got.summary());
    }

    // Same token ids and logits through the runtime.
    let a = load_lm(&src, LoadOptions::default()).unwrap();
    let b = load_lm(&folder, LoadOptions::default()).unwrap();
    let text = "The capital of France is Paris. In 1867, 42 scientists met in Zürich!\n\n  Done.";
    let ids = a.tokenizer.encode(text, true).unwrap();
    assert_eq!(ids, b.tokenizer.encode(text, true).unwrap(), "same token ids");
    let logits = |lm: &lowbit::model::LoadedLm| {
        let mut cache = lm.model.new_cache(ids.len());
        let h = lm.model.forward_hidden(&ids, &mut cache).unwrap();
        lm.model.logits(&h, ids.len())
    };
    let (la, lb) = (logits(&a), logits(&b));
    // Packed source vs decoded f32 folder: the same products summed in another order.
    let max_diff = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let scale = la.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-3 * scale, "max logit difference {max_diff} (largest logit {scale})");
    drop((a, b, h));

    // Quantizing the folder writes the same tensors as quantizing the GGUF. The folder is
    // quantized first and deleted before the GGUF is, to keep the peak disk use down.
    let opts =
        lowbit::quantize::QuantizeOptions::new(lowbit::plan::Mix::from_name(mix).unwrap(), lowbit::method::Method::Rtn);
    let (qa, qb) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    lowbit::quantize::quantize_gguf(&folder, &qb, &opts, &mut |_, _| {}).unwrap();
    std::fs::remove_dir_all(&folder).unwrap();
    lowbit::quantize::quantize_gguf(&src, &qa, &opts, &mut |_, _| {}).unwrap();
    let (qa, qb) = (GgufFile::open(&qa).unwrap(), GgufFile::open(&qb).unwrap());
    let mut compared = 0;
    for t in &qa.tensors {
        let (ia, da) = qa.tensor_bytes(&t.name).unwrap();
        let (ib, db) = qb.tensor_bytes(&t.name).unwrap();
        assert_eq!(ia.ty, ib.ty, "{}", t.name);
        // A tensor the GGUF already stores in its target type is copied from it, while
        // the folder's f32 copy is encoded afresh; and Gemma's norms differ by rounding.
        let copied = g.tensor_info(&t.name).unwrap().ty == ia.ty;
        let gemma_norm = t.dims.len() == 1 && zoo == "gemma3-270m";
        if !(copied || gemma_norm) {
            assert!(da == db, "{} differs after quantization", t.name);
            compared += 1;
        }
    }
    assert!(compared * 3 >= qa.tensors.len(), "only {compared} tensors compared");
}

#[test]
fn smollm2_folder_reads_as_its_gguf() {
    round_trip("smollm2-135m", Some(60_000_000), "Q4_K_M");
}

#[test]
fn gemma3_folder_reads_as_its_gguf() {
    // The source is Q4_K_M already: a mix with other types, so tensors are encoded.
    round_trip("gemma3-270m", None, "Q8_0");
}
