//! Helpers shared by the CLI's misuse tests: the `lowbit` binary with a private cache, a
//! small synthetic source model, and the check that a failure is clean.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lowbit::format::GgmlType;
use lowbit::gguf::{GgufWriter, TensorSpec, Value};

/// The `lowbit` binary, with a cache folder of its own.
pub fn lowbit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    c.env("LOWBIT_HOME", std::env::temp_dir().join("lowbit-bad-input-home"));
    c
}

/// A small llama-style GGUF named `name` in `dir` with F32 weights; `nan_in` puts a NaN
/// into that tensor.
pub fn source(dir: &Path, name: &str, nan_in: Option<&str>) -> PathBuf {
    let path = dir.join(name);
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
    for (i, (n, d)) in tensors.iter().enumerate() {
        let len: u64 = d.iter().product();
        let mut vals: Vec<f32> = (0..len).map(|j| ((j * 7919 + i as u64) % 1000) as f32 / 1000.0 - 0.5).collect();
        if nan_in == Some(*n) {
            let at = 300 % vals.len();
            vals[at] = f32::NAN;
        }
        w.write_tensor(n, &vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    w.finish().unwrap();
    path
}

/// Exit 1, no panic, and every `expect` fragment in the message.
pub fn assert_clean_failure(out: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "missing '{e}' in: {stderr}");
    }
}
