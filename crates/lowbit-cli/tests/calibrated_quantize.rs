//! Calibrated quantization end to end on the real smollm2-135m (short calibration):
//! `calibrate -o FILE.safetensors` then `quantize --stats` (GPTQ), and `quantize --calib
//! --sequential`; both files load and evaluate, are deterministic, and bad combinations
//! of options are refused with a clear message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn lowbit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

fn zoo(name: &str) -> Option<PathBuf> {
    if let Some(p) = lowbit::zoo::find(name).and_then(|m| m.cached()) {
        return Some(p);
    }
    let msg = format!("zoo model {name} is not fetched (run `lowbit fetch {name}`; .ci/run does)");
    assert!(std::env::var("LOWBIT_REQUIRE_MODELS").as_deref() != Ok("1"), "LOWBIT_REQUIRE_MODELS=1 but {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data").join(rel)
}

fn run_ok(args: &[&str]) -> String {
    let out = lowbit().args(args).output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lowbit {args:?} failed: {se}");
    so.to_string()
}

fn kld(model: &Path, src: &Path) -> f64 {
    let json = run_ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--reference",
        src.to_str().unwrap(),
        "--text",
        shared("wikitext-2/wiki.valid.raw").to_str().unwrap(),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["kld"]["mean"].as_f64().unwrap()
}

#[test]
fn gptq_from_saved_statistics_and_sequential_gptq() {
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let emma = shared("austen/emma.txt");
    let (emma, src_s) = (emma.to_str().unwrap(), src.to_str().unwrap());
    let cal = ["--ctx", "64", "--chunks", "4"];
    run_ok(&[&["calibrate", "--model", src_s, "--text", emma, "-o", &p("stats.safetensors")][..], &cal].concat());
    // GPTQ on the first two blocks only (the rest keeps its Q4_1 source type and is
    // copied), to keep the test short in debug builds.
    let q = |out: &str, extra: &[&str]| {
        let base = [
            "quantize",
            "--model",
            src_s,
            "--type",
            "Q4_0",
            "--override",
            r"^blk\.[01]\.=Q4_0",
            "--override",
            r"^blk\.=Q4_1",
            "-o",
            out,
        ];
        run_ok(&[&base[..], extra].concat())
    };
    let summary = q(&p("gptq.gguf"), &["--stats", &p("stats.safetensors")]);
    assert!(summary.contains("(gptq)"), "{summary}");
    q(&p("gptq-again.gguf"), &["--stats", &p("stats.safetensors")]);
    assert_eq!(std::fs::read(p("gptq.gguf")).unwrap(), std::fs::read(p("gptq-again.gguf")).unwrap());
    // Sequential GPTQ is what --calib does by default; --no-sequential calibrates the float
    // model first, as --stats does.
    let seq = ["--calib", emma, "--calib-ctx", "64", "--calib-chunks", "4"];
    let summary = q(&p("seq.gguf"), &seq);
    assert!(summary.contains("(gptq-sequential)"), "{summary}");
    let summary = q(&p("float-calib.gguf"), &[&seq[..], &["--no-sequential"]].concat());
    assert!(summary.contains("(gptq)"), "{summary}");
    let plain = q(&p("plain.gguf"), &["--method", "rtn"]);
    assert!(plain.contains("(rtn)"), "{plain}");
    // Same tensor bytes for every method (files differ only in the method's name in the
    // metadata); every file evaluates to a finite, small divergence.
    let size = |n: &str| std::fs::metadata(p(n)).unwrap().len() as i64;
    assert!((size("gptq.gguf") - size("plain.gguf")).abs() < 64);
    assert!((size("seq.gguf") - size("plain.gguf")).abs() < 64);
    for f in ["gptq.gguf", "seq.gguf", "plain.gguf"] {
        let k = kld(Path::new(&p(f)), &src);
        assert!(k.is_finite() && k > 0.0 && k < 1.0, "{f}: KLD {k}");
    }
}

#[test]
fn calibration_options_that_cannot_work_are_refused() {
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let base = ["quantize", "--model", src.to_str().unwrap(), "--type", "Q4_0", "-o", out.to_str().unwrap()];
    for (extra, want) in [
        (vec!["--method", "gptq"], "needs calibration data"),
        (vec!["--method", "magic"], "unknown --method"),
        (vec!["--sequential"], "--calib"),
        (vec!["--stats", "/nonexistent/stats.safetensors"], "/nonexistent/stats.safetensors"),
        (vec!["--max-memory", "lots"], "--max-memory 'lots': expected bytes"),
        (vec!["--calib", "austen", "--calib-chunks", "2", "--max-memory", "2MB"], "--max-memory 2.00 MB: too small"),
    ] {
        let o = lowbit().args([&base[..], &extra].concat()).output().unwrap();
        let se = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && se.contains(want) && !se.contains("panicked"), "{extra:?}: {se}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{extra:?} left files behind");
    }
}

/// Sequential GPTQ keeps each finished block in a work folder beside the output: killed
/// with SIGKILL twice and rerun, it finishes with the same bytes as an uninterrupted run,
/// and removes the folder.
#[cfg(unix)]
#[test]
fn sequential_gptq_resumes_after_kill_9_with_identical_bytes() {
    use std::process::{Command, Stdio};
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let emma = shared("austen/emma.txt");
    let args = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
        c.args(["quantize", "--type", "Q4_0", "--calib-ctx", "64", "--calib-chunks", "4", "--sequential"])
            .arg("--model")
            .arg(&src)
            .arg("--calib")
            .arg(&emma)
            .arg("-o")
            .arg(out);
        c
    };
    let whole = dir.path().join("whole.gguf");
    let o = args(&whole).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("resumed.gguf");
    let work = dir.path().join(".resumed.gguf.lowbit-work");
    let blocks_done = || -> u64 {
        std::fs::read(work.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["blocks_done"].as_u64())
            .unwrap_or(0)
    };
    for at_least in [4, 12] {
        let mut child = args(&out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let t0 = std::time::Instant::now();
        while blocks_done() < at_least && t0.elapsed().as_secs() < 600 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().code(), None, "killed by the signal");
        assert!(!out.exists(), "no output before the run finishes");
    }
    let kept = blocks_done();
    assert!(kept >= 12, "{kept} blocks kept");
    let o = args(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("resuming: {kept} of 30 blocks")), "{stderr}");
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&out).unwrap(), "resumed output differs");
    assert!(!work.exists(), "the work folder is removed once the output is written");
}
