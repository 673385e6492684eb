//! `lowbit inspect` on the real zoo models: tensor counts and types as BENCHMARKS.md
//! states them, and the safetensors folder of MiniLM. Skips (or, under CI, fails) when
//! the models have not been fetched.

use std::collections::BTreeSet;
use std::process::Command;

fn inspect_json(name: &str) -> Option<serde_json::Value> {
    let m = lowbit::zoo::find(name).unwrap();
    if m.cached().is_none() {
        let msg = format!("zoo model {name} is not fetched (run `lowbit fetch {name}`)");
        assert!(std::env::var("LOWBIT_REQUIRE_MODELS").as_deref() != Ok("1"), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit")).args(["inspect", name, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn types(j: &serde_json::Value) -> BTreeSet<String> {
    j["tensors"].as_array().unwrap().iter().map(|t| t["dtype"].as_str().unwrap().to_string()).collect()
}

#[test]
fn smollm2_lists_272_tensors() {
    let Some(j) = inspect_json("smollm2-135m") else { return };
    assert_eq!(j["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(types(&j), ["F32", "Q4_1", "Q8_0"].iter().map(|s| s.to_string()).collect());
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["tokenizer"], "gpt2");
    assert_eq!(j["vocab_size"], 49152);
    assert_eq!(j["params"], 134_515_008);
    assert_eq!(j["hyperparameters"]["block_count"], 30);
}

#[test]
fn gemma3_lists_236_tensors() {
    let Some(j) = inspect_json("gemma3-270m") else { return };
    assert_eq!(j["tensors"].as_array().unwrap().len(), 236);
    assert_eq!(types(&j), ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"].iter().map(|s| s.to_string()).collect());
    assert_eq!(j["architecture"], "gemma3");
    assert_eq!(j["tokenizer"], "llama");
    assert_eq!(j["vocab_size"], 262_144);
    assert_eq!(j["hyperparameters"]["block_count"], 18);
}

#[test]
fn minilm_folder_is_read() {
    let Some(j) = inspect_json("minilm-l6") else { return };
    assert_eq!(j["container"], "safetensors");
    assert_eq!(j["architecture"], "BertModel");
    assert_eq!(j["vocab_size"], 30522);
    // 22.7M parameters plus the 512 position ids buffer.
    let params = j["params"].as_u64().unwrap();
    assert!((22_600_000..22_800_000).contains(&params), "{params}");
}

/// `run` and `eval` bound what they allocate by the model's trained context (smollm2:
/// 8192 tokens), before loading anything big: `-n 99999999999` used to abort on a 76 TB
/// allocation, and `--ctx 9000` passed silently.
#[test]
fn generation_and_evaluation_stay_within_the_trained_context() {
    if inspect_json("smollm2-135m").is_none() {
        return;
    }
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_lowbit")).args(args).output().unwrap();
    let o = run(&["run", "--model", "smollm2-135m", "--prompt", "Hello", "-n", "99999999999"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("trained context of 8192") && !stderr.contains("panicked"), "{stderr}");
    let text = std::env::temp_dir().join(format!("lowbit-ctx-{}.txt", std::process::id()));
    std::fs::write(&text, "word ".repeat(20000)).unwrap();
    let o = run(&["eval", "--model", "smollm2-135m", "--text", text.to_str().unwrap(), "--ctx", "9000"]);
    let _ = std::fs::remove_file(&text);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--ctx 9000") && stderr.contains("8192"), "{stderr}");
}

/// `tokenize` prints each token's text, not its byte-level vocabulary spelling ("é", not
/// "Ã©").
#[test]
fn tokenize_prints_text_not_byte_level_spelling() {
    if inspect_json("smollm2-135m").is_none() {
        return;
    }
    let o = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["tokenize", "--model", "smollm2-135m", "café"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains('é') && !stdout.contains('Ã'), "{stdout}");
}

/// `run` stops on the first Ctrl-C (it used to say it was cleaning up and keep
/// generating): exit 130 once text has started to stream.
#[cfg(unix)]
#[test]
fn run_stops_on_the_first_ctrl_c() {
    use std::io::Read;
    use std::process::Stdio;
    if inspect_json("smollm2-135m").is_none() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["run", "--model", "smollm2-135m", "--prompt", "The history of the city", "-n", "4000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    let streamed = child.stdout.as_mut().unwrap().read(&mut first).unwrap() == 1;
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.as_mut().unwrap().read_to_string(&mut stderr).unwrap();
    if status.success() {
        eprintln!("SKIPPED: generation ended before the interrupt");
        return;
    }
    assert!(streamed, "{stderr}");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_reports_prompt_and_generation_speed() {
    if inspect_json("smollm2-135m").is_none() {
        return;
    }
    for extra in [&[][..], &["--exact"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
            .args(["bench", "--model", "smollm2-135m", "-p", "16", "-n", "4", "-r", "1", "-t", "2", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["pp", "tg", "read_bandwidth_bytes_per_s", "tg_bandwidth_fraction"] {
            assert!(j[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{key}: {j}");
        }
        // A token reads every block matrix and the tied output matrix: all of the file but
        // its header, norms and tokenizer (a few percent).
        let file = lowbit::zoo::find("smollm2-135m").unwrap().cached().unwrap();
        let len = std::fs::metadata(file).unwrap().len();
        let bytes = j["weight_bytes_per_token"].as_u64().unwrap();
        assert!(bytes <= len && bytes * 10 >= len * 9, "{bytes} bytes per token, file {len}");
        assert_eq!(j["threads"], 2);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["bench", "--model", "smollm2-135m", "-r", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "-r 0 is refused");
}
