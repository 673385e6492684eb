//! Helpers shared by the integration tests: locating the reference Python and the zoo
//! models, and deciding whether a missing prerequisite skips or fails a test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// True when CI demands that tests needing external references run (not skip).
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A Python interpreter that can `import gguf`, or `None` (after printing why).
pub fn reference_python() -> Option<String> {
    let candidates: Vec<String> =
        std::env::var("LOWBIT_REF_PYTHON").into_iter().chain(["python3".to_string()]).collect();
    for py in candidates {
        let ok = Command::new(&py).args(["-c", "import gguf, numpy"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    let msg = "no Python with the `gguf` and `numpy` packages (set LOWBIT_REF_PYTHON; .ci/run makes one)";
    assert!(!required("LOWBIT_REQUIRE_REF"), "LOWBIT_REQUIRE_REF=1 but {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// The reference script's path.
pub fn ref_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/gguf_ref.py")
}

/// The local path of zoo model `name` if it has been fetched, else `None` (after printing
/// why, or failing when LOWBIT_REQUIRE_MODELS=1).
pub fn zoo_model(name: &str) -> Option<PathBuf> {
    let m = lowbit::zoo::find(name).expect("a zoo name");
    if let Some(p) = m.cached() {
        return Some(p);
    }
    let msg = format!("zoo model {name} is not fetched (run `lowbit fetch {name}`; .ci/run does)");
    assert!(!required("LOWBIT_REQUIRE_MODELS"), "LOWBIT_REQUIRE_MODELS=1 but {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// A file under the repository's `data/` folder.
pub fn shared_data(rel: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    root.join(rel)
}

/// llama.cpp's tools folder, or `None` when the tests run without it.
pub fn llama_bin() -> Option<std::path::PathBuf> {
    match std::env::var_os("LOWBIT_LLAMA_BIN") {
        Some(b) => Some(b.into()),
        None => {
            let msg =
                "LOWBIT_LLAMA_BIN (a folder with llama.cpp's llama-perplexity and llama-tokenize) is not set; scripts/test.sh builds it";
            assert!(!required("LOWBIT_REQUIRE_REF"), "LOWBIT_REQUIRE_REF=1 but {msg}");
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// Final perplexity printed by `llama-perplexity`.
pub fn llama_perplexity(
    bin: &std::path::Path,
    model: &std::path::Path,
    text: &std::path::Path,
    ctx: usize,
    chunks: usize,
) -> f64 {
    let out = Command::new(bin.join("llama-perplexity"))
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args([
            "-c",
            &ctx.to_string(),
            "--chunks",
            &chunks.to_string(),
            "-t",
            "2",
            "-b",
            &ctx.to_string(),
            "-fa",
            "off",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "llama-perplexity failed on {}:\n{log}", model.display());
    let line = log.lines().find(|l| l.contains("Final estimate: PPL =")).expect("a final estimate line");
    line.split("PPL =").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// Perplexity of `model` on wiki.valid (`chunks` chunks of `ctx`) from `llama-perplexity`
/// and from lowbit in llama.cpp's numerics: (llama.cpp's, lowbit's).
pub fn perplexity_both_ways(bin: &std::path::Path, model: &std::path::Path, ctx: usize, chunks: usize) -> (f64, f64) {
    use lowbit::eval::{evaluate, EvalOptions};
    use lowbit::model::{load_gguf_lm, LoadOptions};
    let text = shared_data("wikitext-2/wiki.valid.raw");
    let theirs = llama_perplexity(bin, model, &text, ctx, chunks);
    let wiki = std::fs::read_to_string(&text).unwrap();
    let lm = load_gguf_lm(model, LoadOptions { llama_cpp_numerics: true, ..Default::default() }).unwrap();
    let eval = EvalOptions { ctx, max_chunks: Some(chunks), ..Default::default() };
    let ours = evaluate(&lm, None, None, &wiki, &eval, &mut |_, _, _| {}).unwrap().ppl;
    (theirs, ours)
}
