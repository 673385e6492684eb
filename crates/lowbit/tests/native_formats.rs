//! lowbit-native formats in a real model: written into the GGUF container beside ggml
//! types, read back with their logical shapes, decoded close to the source, evaluated;
//! and the file stays a valid GGUF for other readers (gguf-py).

mod support;

use std::process::Command;

use lowbit::eval::{evaluate, EvalOptions};
use lowbit::format::native::NativeFormat;
use lowbit::format::storage::StorageType;
use lowbit::gguf::{GgufFile, TensorType};
use lowbit::method::Method;
use lowbit::model::{load_gguf_lm, LoadOptions};
use lowbit::plan::{Mix, Override};
use lowbit::quantize::{quantize_gguf, QuantizeOptions};

#[test]
fn native_formats_round_trip_through_a_real_model() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mixed.gguf");
    let overrides = [
        "attn_q=nf4_g64",
        "attn_k=fp4_g32",
        "attn_v=fp8_g32",
        "attn_output=int3_g64_zp",
        "ffn_down=int4_g128_zp",
        "ffn_up=int5_g64",
    ];
    let opts = QuantizeOptions {
        overrides: overrides.iter().map(|o| Override::parse(o).unwrap()).collect(),
        ..QuantizeOptions::new(Mix::from_name("Q4_K_M").unwrap(), Method::Search)
    };
    quantize_gguf(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let (s, q) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    let mut seen = std::collections::HashSet::new();
    for t in &q.tensors {
        let source = s.tensor_info(&t.name).unwrap();
        assert_eq!(t.dims, source.dims, "{}: logical dims", t.name);
        let TensorType::Known(StorageType::Native(f)) = t.ty else { continue };
        seen.insert(f.to_string());
        // Relative RMS error of the decoded weights against the source: a b-bit grid's
        // step over a group's range is about 2^-b of it, so the RMS error is well below
        // 2^(1-b) of the weights' RMS (grids: their coarsest equivalent, 3–4 bits).
        let (a, b) = (s.dequantize(&t.name).unwrap(), q.dequantize(&t.name).unwrap());
        let err = (a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        let rms = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        let bits = match f.to_string().as_str() {
            s if s.starts_with("int") => f.code_bits() as i32,
            s if s.starts_with("fp8") => 4,
            _ => 3,
        };
        assert!(err < 2f64.powi(1 - bits) * rms, "{} ({f}): RMS error {err:.3e} vs weights' RMS {rms:.3e}", t.name);
    }
    let want: std::collections::HashSet<String> =
        ["nf4_g64", "fp4_g32", "fp8_g32", "int3_g64_zp", "int4_g128_zp", "int5_g64"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(seen, want, "every override's format appears");
    assert_eq!(NativeFormat::from_name("int4_g128_zp").unwrap().bits_per_weight(), 4.25);

    // The model runs: PPL on two short chunks is finite and near the source's (these
    // formats at 3–8 bits on the less sensitive matrices; 3 bits on ffn_down alone, from
    // this 4-bit source, roughly doubles it).
    let text = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let eval = EvalOptions { ctx: 128, max_chunks: Some(2), ..Default::default() };
    let ppl = |p: &std::path::Path| {
        let lm = load_gguf_lm(p, LoadOptions::default()).unwrap();
        evaluate(&lm, None, None, &text, &eval, &mut |_, _, _| {}).unwrap().ppl
    };
    let (ps, pq) = (ppl(&src), ppl(&out));
    eprintln!("PPL {pq:.3} vs source {ps:.3}");
    assert!(pq.is_finite() && pq < 2.0 * ps, "PPL {pq} vs source {ps}");

    // Other GGUF readers see a valid file (the native tensors as raw I8 bytes).
    let Some(py) = support::reference_python() else { return };
    let code = "import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); \
                n = [t for t in r.tensors if t.tensor_type.name == 'I8']; print(len(r.tensors), len(n))";
    let o = Command::new(py).args(["-c", code]).arg(&out).output().unwrap();
    assert!(o.status.success(), "gguf-py: {}", String::from_utf8_lossy(&o.stderr));
    let natives = q.tensors.iter().filter(|t| matches!(t.ty, TensorType::Known(StorageType::Native(_)))).count();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{} {natives}", q.tensors.len()));
}

#[test]
fn vq_formats_round_trip_through_a_real_model() {
    let Some(src) = support::zoo_model("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vq.gguf");
    let opts = QuantizeOptions {
        overrides: ["attn_output=vq4x256+256o8", "attn_q=vq4x256"]
            .iter()
            .map(|o| Override::parse(o).unwrap())
            .collect(),
        ..QuantizeOptions::new(Mix::from_name("Q8_0").unwrap(), Method::Search)
    };
    let summary = quantize_gguf(&src, &out, &opts, &mut |_, _| {}).unwrap();
    assert!(summary.tensors.iter().all(|t| !t.name.ends_with(".codebook")));
    // Every VQ tensor reports its codebook use; k-means++ seeding leaves no entry unused
    // on tensors of this size.
    assert_eq!(summary.codebooks.len(), 60);
    assert!(summary.codebooks.iter().all(|c| c.used * 10 >= c.entries * 9), "codebook collapse");
    // Without calibration there is no output error to report.
    assert!(summary.codebooks.iter().all(|c| c.relative_output_error.is_none()));
    // The file's size counts the codebooks: a planned VQ tensor's bytes are its rows plus
    // its codebook tensor.
    let (s, q) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    let planned: u64 = summary.tensors.iter().map(|t| t.bytes).sum();
    let stored: u64 = q.tensors.iter().map(|t| t.n_bytes.unwrap()).sum();
    assert_eq!(planned, stored);
    let mut vq = 0;
    for t in &q.tensors {
        let TensorType::Known(StorageType::Vq(f)) = t.ty else { continue };
        vq += 1;
        assert_eq!(t.dims, s.tensor_info(&t.name).unwrap().dims, "{}: logical dims", t.name);
        // Relative RMS error within 2^(1 − bits per weight), as for the scalar formats
        // (measured: about 0.31 at 2 bits, 0.09 at 4).
        let (a, b) = (s.dequantize(&t.name).unwrap(), q.dequantize(&t.name).unwrap());
        let err = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let bits = (f.code_bits() / f.dim) as i32;
        assert!(err < 2f64.powi(1 - bits) * norm, "{} ({f}): relative error {:.3}", t.name, err / norm);
    }
    assert_eq!(vq, 60);
    // The model runs (2 bits on attn_q costs a lot on a 135M model; finite and bounded).
    let text = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let eval = EvalOptions { ctx: 128, max_chunks: Some(2), ..Default::default() };
    let lm = load_gguf_lm(&out, LoadOptions::default()).unwrap();
    let ppl = evaluate(&lm, None, None, &text, &eval, &mut |_, _, _| {}).unwrap().ppl;
    assert!(ppl.is_finite() && ppl < 200.0, "PPL {ppl}");
    // Re-quantizing a VQ file: its VQ tensors (with codebooks) are copied byte for byte
    // when they keep their format, and the codebook tensors are not planned on their own.
    let again = dir.path().join("again.gguf");
    quantize_gguf(&out, &again, &opts, &mut |_, _| {}).unwrap();
    let r = GgufFile::open(&again).unwrap();
    assert_eq!(r.tensors.len(), q.tensors.len());
    for t in q.tensors.iter().filter(|t| matches!(t.ty, TensorType::Known(StorageType::Vq(_)))) {
        assert_eq!(r.tensor_bytes(&t.name).unwrap().1, q.tensor_bytes(&t.name).unwrap().1, "{}", t.name);
        let cb = format!("{}.codebook", t.name);
        assert_eq!(r.tensor_bytes(&cb).unwrap().1, q.tensor_bytes(&cb).unwrap().1, "{cb}");
    }
}
