//! `lowbit sweep` end to end on the real smollm2-135m (short evaluation): every output
//! file appears, the PNGs are real images, peer files are evaluated by the same code,
//! and an interrupted sweep resumes from the finished settings to the same report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

fn text() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/wikitext-2/wiki.valid.raw")
}

/// PNG signature and IHDR size.
fn png_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", p.display());
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// report.json with the timing fields removed (a re-run setting is timed again).
fn report_without_timings(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    for r in v["results"].as_array_mut().unwrap() {
        r["quantize_seconds"] = serde_json::Value::Null;
    }
    v["source_result"]["tokens_per_second"] = serde_json::Value::Null;
    v
}

#[test]
fn sweep_writes_report_and_plots_and_resumes() {
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    // A peer file for --compare: lowbit's own Q4_0 made outside the sweep.
    let peer = dir.path().join("peer-Q4_0.gguf");
    let st = lowbit()
        .args(["quantize", "--model"])
        .arg(&src)
        .args(["--type", "Q4_0", "--method", "rtn", "-o"])
        .arg(&peer)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let out = dir.path().join("sweep");
    let args = |o: &Path| {
        let mut c = lowbit();
        c.args(["sweep", "--model"])
            .arg(&src)
            .args(["--types", "Q8_0,Q4_K_M,Q4_K_M:rtn", "--ctx", "64", "--chunks", "2"])
            .args(["--tasks", "6", "--prompts", "3", "--gen-tokens", "8", "--text"])
            .arg(text());
        c.arg("--compare").arg(&peer).arg("-o").arg(o);
        c
    };
    let first = args(&out).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for f in ["report.md", "report.html", "report.json", "pareto.svg", "pareto.png", "layers.svg", "layers.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(out.join("tasks.svg").is_file() && out.join("tasks.png").is_file(), "tasks plot missing");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for part in ["<table class=\"sortable\"", "HS acc_norm %", "gen exact %", "peer-Q4_0", "<svg", "<script>"] {
        assert!(html.contains(part), "{part} missing from report.html");
    }
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "report.html loads an external asset");
    screenshot(&out.join("report.html"));
    assert_eq!(png_size(&out.join("pareto.png")), (1000, 650));
    assert_eq!(png_size(&out.join("layers.png")), (1200, 650));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in ["| Q8_0 | lowbit", "| Q4_K_M | lowbit", "| Q4_K_M-rtn | lowbit", "| peer-Q4_0 | compare"] {
        assert!(md.contains(name), "{name} missing from report.md:\n{md}");
    }
    let report = report_without_timings(&out);
    assert_eq!(report["source_sha256"].as_str().unwrap().len(), 64);
    let roles: Vec<&str> = report["inputs"].as_array().unwrap().iter().map(|i| i["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["source", "text", "compare"]);
    let results = report["results"].as_array().unwrap();
    let kld = |n: &str| results.iter().find(|r| r["name"] == n).unwrap()["kld_mean"].as_f64().unwrap();
    // More bits, closer to the source; search no worse than round-to-nearest.
    assert!(kld("Q8_0") < kld("Q4_K_M") && kld("Q4_K_M") <= kld("Q4_K_M-rtn") * 1.05, "{results:?}");
    assert!(!out.join("models").exists(), "quantized files are removed without --keep");

    // Forget one finished setting (as if the run had been interrupted before it): the
    // rerun reuses the rest and yields the same report (timings aside).
    std::fs::remove_file(out.join("settings/Q4_K_M-rtn.json")).unwrap();
    let second = args(&out).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("Q8_0: done in an earlier run") && !err.contains("Q4_K_M-rtn: done"), "{err}");
    assert_eq!(report_without_timings(&out), report);
}

/// Ctrl-C in the middle of a sweep: exit 130, finished settings kept, no stray temporary
/// files; the rerun finishes the rest.
#[cfg(unix)]
#[test]
fn interrupted_sweep_resumes() {
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let run = || {
        let mut c = lowbit();
        c.args(["sweep", "--model"])
            .arg(&src)
            .args(["--types", "Q8_0,Q6_K,Q5_K_M", "--ctx", "64", "--chunks", "4", "--tasks", "0", "--prompts", "0"])
            .arg("--text")
            .arg(text())
            .arg("-o")
            .arg(&out);
        c
    };
    let mut child = run().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while !out.join("settings/Q8_0.json").exists() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    if status.success() {
        eprintln!("SKIPPED: the sweep finished before the interrupt");
        return;
    }
    assert_eq!(status.code(), Some(130));
    assert!(out.join("settings/Q8_0.json").is_file() && !out.join("report.md").exists());
    let strays: Vec<_> =
        walk(&out).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
    assert!(strays.is_empty(), "temporary files left: {strays:?}");
    let again = run().output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && err.contains("Q8_0: done in an earlier run"), "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| Q6_K |") && md.contains("| Q5_K_M |"), "{md}");
}

/// Renders `html` in headless Chromium (the Debian package) and checks the screenshot is
/// a full page with content. Skipped without Chromium unless LOWBIT_REQUIRE_CHROMIUM=1
/// (scripts/test.sh installs it under CI). Look at the image itself when the report
/// changes: it is left at target/report-screenshot.png.
fn screenshot(html: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        assert!(std::env::var("LOWBIT_REQUIRE_CHROMIUM").as_deref() != Ok("1"), "Chromium is required but missing");
        eprintln!("SKIPPED: no chromium to render report.html");
        return;
    };
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let o = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,2600"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png_size(&shot), (1400, 2600));
    // A blank page compresses to a few kB; the table and three plots do not.
    let bytes = std::fs::metadata(&shot).unwrap().len();
    assert!(bytes > 100_000, "screenshot of {bytes} bytes: the page looks empty");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            v.extend(walk(&e));
        } else {
            v.push(e);
        }
    }
    v
}

/// With calibration texts the sweep computes an importance matrix once (in llama.cpp's
/// format), quantizes with it, and says so in the report.
#[test]
fn calibrated_sweep_uses_an_importance_matrix() {
    let Some(src) = zoo("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let emma = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/austen/emma.txt");
    let o = lowbit()
        .args(["sweep", "--model"])
        .arg(&src)
        .args(["--types", "Q3_K_M", "--ctx", "64", "--chunks", "2", "--calib-chunks", "1", "--tasks", "0"])
        .args(["--prompts", "0", "--text"])
        .arg(text())
        .arg("--calib")
        .arg(&emma)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = lowbit::calibrate::Imatrix::read(&out.join("imatrix.gguf")).unwrap();
    assert_eq!((m.entries.len(), m.chunk_count, m.chunk_size), (210, 1, 512));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("importance matrix from") && md.contains("emma.txt"), "{md}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["calib_chunks"], 1);
}
