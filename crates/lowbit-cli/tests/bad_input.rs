//! The bad-input catalogue: hostile or broken model files must produce a clear error that
//! names the file and the problem, a non-zero exit code, no panic and no huge allocation.
//! Each case runs the real `lowbit` binary (`inspect`, which parses everything a model
//! load parses).

use std::path::{Path, PathBuf};
use std::process::Command;

use lowbit::format::GgmlType;
use lowbit::gguf::{GgufWriter, TensorSpec, Value, ValueType};

/// Builds raw GGUF headers byte by byte, so cases can lie in any field.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Raw {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A key–value pair with a u32 value.
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Raw {
        self.str(k).u32(ValueType::U32 as u32).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_to(&mut self, align: usize) -> &mut Raw {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// A small valid GGUF (two Q8_0 tensors), written by lowbit's own writer.
fn valid_gguf(path: &Path) -> Vec<u8> {
    let md = vec![
        ("general.architecture".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(ValueType::String, vec![Value::String("a".into()); 4])),
    ];
    let specs = vec![
        TensorSpec { name: "a.weight".into(), dims: vec![64, 2], ty: GgmlType::Q8_0 },
        TensorSpec { name: "b.weight".into(), dims: vec![32], ty: GgmlType::F32 },
    ];
    let mut w = GgufWriter::create(path, &md, specs).unwrap();
    let mut a = vec![0u8; 4 * 34];
    for b in a.chunks_exact_mut(34) {
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    }
    w.write_tensor("a.weight", &a).unwrap();
    w.write_tensor("b.weight", &[0u8; 128]).unwrap();
    w.finish().unwrap();
    std::fs::read(path).unwrap()
}

struct Case {
    name: &'static str,
    /// Creates the input inside the folder and returns the path to pass to `inspect`.
    make: Box<dyn Fn(&Path) -> PathBuf>,
    /// A fragment the error message must contain (besides the file name).
    expect: &'static str,
}

fn file_case(name: &'static str, expect: &'static str, bytes: impl Fn(&Path) -> Vec<u8> + 'static) -> Case {
    Case {
        name,
        expect,
        make: Box::new(move |dir| {
            let p = dir.join(format!("{name}.gguf"));
            let b = bytes(dir);
            std::fs::write(&p, b).unwrap();
            p
        }),
    }
}

/// A safetensors file from a JSON header string and data length.
fn st_bytes(header: &str, data: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data, 0);
    v
}

const BERT_CONFIG: &str =
    r#"{"architectures":["BertModel"],"hidden_size":4,"vocab_size":8,"num_hidden_layers":1,"intermediate_size":8}"#;
const BERT_HEADER: &str = r#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"encoder.layer.0.intermediate.dense.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[128,256]}}"#;

fn folder_case(
    name: &'static str,
    expect: &'static str,
    files: impl Fn() -> Vec<(&'static str, Vec<u8>)> + 'static,
) -> Case {
    Case {
        name,
        expect,
        make: Box::new(move |dir| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (f, b) in files() {
                std::fs::write(d.join(f), b).unwrap();
            }
            d
        }),
    }
}

fn catalogue() -> Vec<Case> {
    let big = 1u64 << 60;
    vec![
        file_case("empty", "too short", |_| vec![]),
        file_case("three_bytes", "too short", |_| b"GGU".to_vec()),
        file_case("random_bytes", "not a GGUF file", |_| {
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
        }),
        file_case("version_1", "version 1", |_| Raw::header(1, 0, 0).0),
        file_case("version_99", "unknown GGUF version 99", |_| Raw::header(99, 0, 0).0),
        file_case("big_endian", "big-endian", |_| Raw::header(3u32.swap_bytes(), 0, 0).0),
        file_case("tensor_count_2_60", "claims 1152921504606846976 tensors", move |_| Raw::header(3, big, 0).0),
        file_case("kv_count_2_60", "claims 1152921504606846976 metadata", move |_| Raw::header(3, 0, big).0),
        file_case("key_10tb", "exceeds the limit", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.u64(10 << 40).zeros(64);
            r.0
        }),
        file_case("string_value_10tb", "truncated", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("general.name").u32(ValueType::String as u32).u64(10 << 40);
            r.0
        }),
        file_case("unknown_value_type", "unknown value type 99", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("k").u32(99).u32(0);
            r.0
        }),
        file_case("array_2_40_elements", "exceeds the limit", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("k").u32(ValueType::Array as u32).u32(ValueType::U8 as u32).u64(1 << 40);
            r.0
        }),
        file_case("array_longer_than_file", "truncated", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("k").u32(ValueType::Array as u32).u32(ValueType::U64 as u32).u64(1 << 20);
            r.0
        }),
        file_case("bool_byte_7", "bool byte is 7", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("k").u32(ValueType::Bool as u32).u8(7);
            r.0
        }),
        file_case("arrays_nested_deep", "nested deeper", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.str("k").u32(ValueType::Array as u32);
            for _ in 0..10 {
                r.u32(ValueType::Array as u32).u64(1);
            }
            r.u32(ValueType::U8 as u32).u64(1).u8(0);
            r.0
        }),
        file_case("duplicate_key", "duplicate metadata key", |_| {
            let mut r = Raw::header(3, 0, 2);
            r.kv_u32("k", 1).kv_u32("k", 2);
            r.0
        }),
        file_case("alignment_zero", "general.alignment is 0", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.kv_u32("general.alignment", 0);
            r.0
        }),
        file_case("alignment_not_power_of_two", "general.alignment is 24", |_| {
            let mut r = Raw::header(3, 0, 1);
            r.kv_u32("general.alignment", 24);
            r.0
        }),
        file_case("five_dims", "5 dimensions", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
            r.0
        }),
        file_case("shape_overflow", "overflows", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[1 << 40, 1 << 40], 0, 0);
            r.0
        }),
        file_case("offset_past_eof", "past the end of the file", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[32], 0, 1 << 20).pad_to(32).zeros(128);
            r.0
        }),
        file_case("offset_overflow", "past the end of the file", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[32], 0, u64::MAX - 31).pad_to(32).zeros(128);
            r.0
        }),
        file_case("misaligned_offset", "not aligned", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[32], 0, 4).pad_to(32).zeros(256);
            r.0
        }),
        file_case("overlapping_tensors", "overlaps", |_| {
            let mut r = Raw::header(3, 2, 0);
            r.tensor("t1", &[64], 0, 0).tensor("t2", &[64], 0, 128).pad_to(32).zeros(512);
            r.0
        }),
        file_case("duplicate_tensor_name", "appears twice", |_| {
            let mut r = Raw::header(3, 2, 0);
            r.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).pad_to(32).zeros(64);
            r.0
        }),
        file_case("row_not_whole_blocks", "not a multiple of Q4_0's block size 32", |_| {
            let mut r = Raw::header(3, 1, 0);
            r.tensor("t", &[33, 2], 2, 0).pad_to(32).zeros(256);
            r.0
        }),
        file_case("truncated_half", "truncated or corrupt", |dir| {
            let b = valid_gguf(&dir.join("ok_for_truncation.gguf"));
            b[..b.len() - 100].to_vec()
        }),
        file_case("truncated_in_tensor_info", "truncated", |dir| {
            let b = valid_gguf(&dir.join("ok_for_header_cut.gguf"));
            b[..b.len() - 128 - 4 * 34 - 20].to_vec()
        }),
        Case { name: "directory_as_gguf", expect: "no config.json", make: Box::new(|dir| dir.to_path_buf()) },
        Case { name: "nonexistent", expect: "no such file", make: Box::new(|dir| dir.join("does-not-exist.gguf")) },
        file_case("st_header_longer_than_file", "invalid safetensors", |_| {
            let mut v = 1000u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }),
        file_case("st_header_2_60", "invalid safetensors", |_| (1u64 << 60).to_le_bytes().to_vec()),
        file_case("st_header_not_json", "invalid safetensors", |_| st_bytes("{not json", 0)),
        file_case("st_offsets_past_end", "invalid safetensors", |_| {
            st_bytes(r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8)
        }),
        file_case("st_shape_does_not_match_bytes", "invalid safetensors", |_| {
            st_bytes(r#"{"t":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#, 16)
        }),
        file_case("st_shape_overflow", "invalid safetensors", |_| {
            st_bytes(r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#, 16)
        }),
        folder_case("st_missing_config", "config.json", || vec![("model.safetensors", st_bytes(BERT_HEADER, 256))]),
        folder_case("st_config_not_json", "invalid JSON", || {
            vec![("config.json", b"{\"hidden_size\": 4,".to_vec()), ("model.safetensors", st_bytes(BERT_HEADER, 256))]
        }),
        folder_case("st_config_lies_hidden_size", "vocab_size/hidden_size", || {
            let cfg = BERT_CONFIG.replace("\"hidden_size\":4", "\"hidden_size\":16");
            vec![("config.json", cfg.into_bytes()), ("model.safetensors", st_bytes(BERT_HEADER, 256))]
        }),
        folder_case("st_config_lies_layers", "num_hidden_layers is 3", || {
            let cfg = BERT_CONFIG.replace("\"num_hidden_layers\":1", "\"num_hidden_layers\":3");
            vec![("config.json", cfg.into_bytes()), ("model.safetensors", st_bytes(BERT_HEADER, 256))]
        }),
        folder_case("st_shard_missing", "model-00002-of-00002.safetensors", || {
            let index = r#"{"weight_map":{"embeddings.word_embeddings.weight":"model-00001-of-00002.safetensors","encoder.layer.0.intermediate.dense.weight":"model-00002-of-00002.safetensors"}}"#;
            let shard1 = st_bytes(
                r#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]}}"#,
                128,
            );
            vec![
                ("config.json", BERT_CONFIG.as_bytes().to_vec()),
                ("model.safetensors.index.json", index.as_bytes().to_vec()),
                ("model-00001-of-00002.safetensors", shard1),
            ]
        }),
        folder_case("st_index_path_traversal", "not a plain file name", || {
            let index = r#"{"weight_map":{"x":"../../etc/passwd"}}"#;
            vec![
                ("config.json", BERT_CONFIG.as_bytes().to_vec()),
                ("model.safetensors.index.json", index.as_bytes().to_vec()),
            ]
        }),
        folder_case("st_index_tensor_not_in_shard", "not present in it", || {
            let index = r#"{"weight_map":{"ghost.weight":"model.safetensors","embeddings.word_embeddings.weight":"model.safetensors"}}"#;
            vec![
                ("config.json", BERT_CONFIG.as_bytes().to_vec()),
                ("model.safetensors.index.json", index.as_bytes().to_vec()),
                ("model.safetensors", st_bytes(BERT_HEADER, 256)),
            ]
        }),
        folder_case("st_unsupported_dtype", "not supported", || {
            let h = r#"{"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
            vec![("config.json", b"{}".to_vec()), ("model.safetensors", st_bytes(h, 4))]
        }),
    ]
}

fn lowbit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    // Never let a test reach the network or the user's cache.
    c.env("LOWBIT_HOME", std::env::temp_dir().join("lowbit-bad-input-home"));
    c
}

#[test]
fn every_bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cases = catalogue();
    assert!(cases.len() >= 25, "the catalogue must hold at least 25 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let path = (case.make)(dir.path());
        // Safetensors cases built as single files are opened through a folder.
        let arg = if case.name.starts_with("st_") && path.extension().is_some_and(|e| e == "gguf") {
            let folder = dir.path().join(format!("{}_dir", case.name));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("config.json"), b"{}").unwrap();
            std::fs::rename(&path, folder.join("model.safetensors")).unwrap();
            folder
        } else {
            path
        };
        let out = lowbit().arg("inspect").arg(&arg).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let file_named = arg.file_name().map(|n| stderr.contains(&*n.to_string_lossy())).unwrap_or(false);
        let ok = out.status.code() == Some(1)
            && !stderr.contains("panicked")
            && stderr.contains(case.expect)
            && (file_named || case.name.starts_with("st_shard_missing"));
        if !ok {
            failures.push(format!("{}: exit {:?}, stderr: {}", case.name, out.status.code(), stderr.trim()));
        }
    }
    assert!(failures.is_empty(), "bad inputs not handled cleanly:\n{}", failures.join("\n"));
}

#[test]
fn unknown_tensor_type_is_listed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unknown_type.gguf");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("future.weight", &[256], 200, 0).tensor("ok.weight", &[8], 0, 256).pad_to(32).zeros(288);
    std::fs::write(&p, &r.0).unwrap();
    let out = lowbit().arg("inspect").arg(&p).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("future.weight") && stdout.contains("unknown type 200"), "{stdout}");
    let g = lowbit::gguf::GgufFile::open(&p).unwrap();
    let err = g.dequantize("future.weight").unwrap_err().to_string();
    assert!(err.contains("future.weight") && err.contains("unknown type 200"), "{err}");
    assert_eq!(g.dequantize("ok.weight").unwrap(), vec![0.0; 8]);
}

#[test]
fn random_corruptions_never_panic() {
    // Flip bytes of a valid file at deterministic pseudo-random places: the reader must
    // either open it or return an error; it must never panic or over-allocate.
    let dir = tempfile::tempdir().unwrap();
    let base = valid_gguf(&dir.path().join("base.gguf"));
    let p = dir.path().join("mutant.gguf");
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        if next() % 5 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        std::fs::write(&p, &b).unwrap();
        if let Ok(g) = lowbit::gguf::GgufFile::open(&p) {
            for t in &g.tensors {
                let _ = g.dequantize(&t.name);
            }
        }
    }
}
