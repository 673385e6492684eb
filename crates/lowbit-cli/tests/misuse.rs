//! Misuse an adversarial new user tried (issue 20): known-bad choices refused before any
//! work, damaged values never copied into an output, a lone `.safetensors` file read as
//! itself, and messages that say what to do. Each case asserts the exit code, the message
//! and that nothing was written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lowbit::format::GgmlType;
use lowbit::gguf::{GgufWriter, TensorSpec, Value};

fn lowbit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    c.env("LOWBIT_HOME", std::env::temp_dir().join("lowbit-misuse-home"));
    c
}

/// A small llama-style GGUF with F32 weights; `nan_in` puts a NaN into that tensor.
fn source(dir: &Path, nan_in: Option<&str>) -> PathBuf {
    let path = dir.join("src.gguf");
    let md = vec![
        ("general.architecture".to_string(), Value::String("llama".into())),
        ("llama.block_count".to_string(), Value::U32(1)),
    ];
    let tensors = [
        ("token_embd.weight", vec![256u64, 64]),
        ("blk.0.attn_q.weight", vec![256, 256]),
        ("blk.0.attn_norm.weight", vec![256]),
    ];
    let specs =
        tensors.iter().map(|(n, d)| TensorSpec { name: n.to_string(), dims: d.clone(), ty: GgmlType::F32 }).collect();
    let mut w = GgufWriter::create(&path, &md, specs).unwrap();
    for (n, d) in &tensors {
        let len: u64 = d.iter().product();
        let mut vals: Vec<f32> = (0..len).map(|j| (j % 1000) as f32 / 1000.0 - 0.5).collect();
        if nan_in == Some(*n) {
            vals[7] = f32::NAN;
        }
        w.write_tensor(n, &vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    w.finish().unwrap();
    path
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

fn assert_fails(o: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "missing '{e}' in: {stderr}");
    }
}

/// The 1–2-bit i-quant mixes (and overrides) without calibration: refused, as
/// llama-quantize refuses them, instead of a model at perplexity ~5800.
#[test]
fn very_low_bit_types_need_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), None);
    let out = dir.path().join("out.gguf");
    for args in [
        vec!["--type", "IQ2_XXS"],
        vec!["--type", "IQ1_S"],
        vec!["--type", "Q2_K_S"],
        vec!["--type", "Q4_K_M", "--override", "attn_q=IQ2_XS"],
    ] {
        let o = lowbit().args(["quantize", "--model"]).arg(&src).args(&args).arg("-o").arg(&out).output().unwrap();
        assert_fails(&o, &["without calibration", "--calib", "--imatrix"]);
        assert_eq!(files(dir.path()), vec!["src.gguf"], "{args:?}");
    }
}

/// A NaN in a tensor that is copied as stored (an F32 norm weight) is refused like one in
/// a quantized matrix, naming the file and the tensor.
#[test]
fn damaged_copied_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), Some("blk.0.attn_norm.weight"));
    let out = dir.path().join("out.gguf");
    let o = lowbit().args(["quantize", "--model"]).arg(&src).args(["--type", "Q8_0", "-o"]).arg(&out).output().unwrap();
    assert_fails(&o, &["src.gguf", "blk.0.attn_norm.weight", "NaN", "damaged"]);
    assert_eq!(files(dir.path()), vec!["src.gguf"]);
}

/// Typos and near-misses get a pointed message.
#[test]
fn type_typos_get_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), None);
    let out = dir.path().join("out.gguf");
    let quantize = |ty: &str| {
        lowbit().args(["quantize", "--model"]).arg(&src).args(["--type", ty, "-o"]).arg(&out).output().unwrap()
    };
    assert_fails(&quantize("Q4_K_N"), &["did you mean Q4_K_S or Q4_K_M?"]);
    assert_fails(&quantize("q5_k_s2"), &["did you mean Q5_K_S?"]);
    assert_fails(&quantize("int4_g100"), &["int4_g100", "multiple of 8"]);
    assert_fails(&quantize("int9_g64"), &["N from 2 to 8"]);
    assert_eq!(files(dir.path()), vec!["src.gguf"]);
}

/// Calibration text that is not UTF-8: the byte position and what to do.
#[test]
fn calibration_text_must_be_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), None);
    let text = dir.path().join("latin1.txt");
    std::fs::write(&text, b"caf\xe9 au lait").unwrap();
    let out = dir.path().join("stats.gguf");
    let o = lowbit()
        .args(["calibrate", "--model"])
        .arg(&src)
        .arg("--text")
        .arg(&text)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_fails(&o, &["latin1.txt", "not UTF-8", "index 3", "iconv"]);
    assert!(!out.exists());
}

/// A lone `.safetensors` file (no config.json beside it) is inspected as itself; a broken
/// one is named with its own problem, not its folder's.
#[test]
fn a_lone_safetensors_file_is_read_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"lora_A.weight":{"dtype":"F32","shape":[4,2],"data_offsets":[0,32]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + 32, 0);
    let good = dir.path().join("adapter.safetensors");
    std::fs::write(&good, &bytes).unwrap();
    let o = lowbit().args(["inspect"]).arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("lora_A.weight"), "{stdout}");
    for (name, bad) in [
        ("json.safetensors", {
            let mut b = 10u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{not json}");
            b
        }),
        ("huge.safetensors", (1u64 << 50).to_le_bytes().to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bad).unwrap();
        let o = lowbit().args(["inspect"]).arg(&p).output().unwrap();
        assert_fails(&o, &[name]);
        assert!(!String::from_utf8_lossy(&o.stderr).contains("config.json"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
