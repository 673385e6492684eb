//! `lowbit quantize` and `lowbit eval` with bad arguments or a failing disk: a clear error
//! naming the problem, a non-zero exit, no panic, the input untouched and no output or
//! temporary file left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lowbit::format::GgmlType;
use lowbit::gguf::{GgufWriter, TensorSpec, Value};

mod support;

use support::{assert_clean_failure, lowbit};

/// The shared synthetic source; `bad` puts a NaN into `blk.0.attn_q.weight`.
fn source(dir: &Path, name: &str, bad: bool) -> PathBuf {
    support::source(dir, name, bad.then_some("blk.0.attn_q.weight"))
}

/// Files in `dir` other than `keep`.
fn extra_files(dir: &Path, keep: &[&Path]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.contains(&p.as_path()))
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn bad_quantize_arguments_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), "src.gguf", false);
    let before = std::fs::read(&src).unwrap();
    let out = dir.path().join("out.gguf");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--type", "Q9_K"], vec!["unknown --type 'Q9_K'", "int4_g128"]),
        (vec!["--type", "Q4_K_M", "--override", "attn_zz=Q8_0"], vec!["'attn_zz=Q8_0' matches no tensor"]),
        (vec!["--type", "Q4_K_M", "--override", "attn_q"], vec!["expected REGEX=TYPE"]),
        (vec!["--type", "Q4_K_M", "--override", "attn_q=TQ1_0"], vec!["'TQ1_0' is not a type lowbit can write"]),
        (vec!["--type", "Q4_K_M", "--override", "attn_(q=Q8_0"], vec!["bad regex"]),
        (vec!["--type", "Q4_K_M", "--method", "gptq9"], vec!["unknown --method 'gptq9'"]),
        (vec!["--type", "int9_g32"], vec!["unknown --type 'int9_g32'"]),
        (vec!["--type", "vq"], vec!["--type vq needs --bpw"]),
        (vec!["--type", "Q4_K_M", "--bpw", "2"], vec!["go with --type vq"]),
        (vec!["--type", "vq", "--bpw", "2", "--codebook", "100"], vec!["--codebook 100: a power of two"]),
        (
            vec!["--type", "vq", "--bpw", "2", "--vec", "8", "--codebook", "256"],
            vec!["16 code bits per vector", "--residual"],
        ),
        (vec!["--type", "vq", "--bpw", "3", "--vec", "8"], vec!["each codebook takes 1 to 16 bits"]),
        (vec!["--type", "Q4_K_M", "--outliers", "4"], vec!["go with --type vq"]),
        (vec!["--type", "vq", "--bpw", "2", "--outliers", "5000"], vec!["--outliers 5000: at most 4096"]),
        // A codebook with more entries than the matrix has vectors learns nothing.
        (vec!["--type", "vq4x65536"], vec!["blk.0.attn_q.weight", "65536 entries", "16384 vectors"]),
    ];
    for (args, expect) in cases {
        let o = lowbit().args(["quantize", "--model"]).arg(&src).args(&args).arg("-o").arg(&out).output().unwrap();
        assert_clean_failure(&o, &expect);
        assert!(extra_files(dir.path(), &[&src]).is_empty(), "{args:?} left {:?}", extra_files(dir.path(), &[&src]));
    }
    // The output may not be the input (also through another spelling of its path).
    let same = dir.path().join(".").join("src.gguf");
    let o =
        lowbit().args(["quantize", "--model"]).arg(&src).args(["--type", "Q8_0", "-o"]).arg(&same).output().unwrap();
    assert_clean_failure(&o, &["would overwrite the input"]);
    // An output folder that does not exist.
    let o = lowbit()
        .args(["quantize", "--model"])
        .arg(&src)
        .args(["--type", "Q8_0", "-o"])
        .arg(dir.path().join("no/such/dir/out.gguf"))
        .output()
        .unwrap();
    assert_clean_failure(&o, &["no/such/dir"]);
    assert_eq!(std::fs::read(&src).unwrap(), before, "the input is never modified");
    assert!(extra_files(dir.path(), &[&src]).is_empty());
}

#[test]
fn damaged_source_names_tensor_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), "nan.gguf", true);
    let out = dir.path().join("out.gguf");
    let o = lowbit().args(["quantize", "--model"]).arg(&src).args(["--type", "Q4_0", "-o"]).arg(&out).output().unwrap();
    assert_clean_failure(&o, &["nan.gguf", "blk.0.attn_q.weight", "NaN", "damaged"]);
    assert!(extra_files(dir.path(), &[&src]).is_empty(), "{:?}", extra_files(dir.path(), &[&src]));
}

/// A full disk, simulated with a file-size limit (the write fails with EFBIG once the
/// output passes 64 KiB): the error names the output, and no partial file remains.
#[cfg(unix)]
#[test]
fn a_full_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), "src.gguf", false);
    let out = dir.path().join("out.gguf");
    let script = format!(
        "trap '' XFSZ; ulimit -f 128; exec '{}' quantize --model '{}' --type F32 -o '{}'",
        env!("CARGO_BIN_EXE_lowbit"),
        src.display(),
        out.display()
    );
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_clean_failure(&o, &["out.gguf"]);
    assert!(extra_files(dir.path(), &[&src]).is_empty(), "{:?}", extra_files(dir.path(), &[&src]));
}

/// A source big enough that quantizing it takes a while: 64 tensors of 256×1024.
fn big_source(dir: &Path) -> PathBuf {
    let path = dir.join("big.gguf");
    let md = vec![("general.architecture".to_string(), Value::String("llama".into()))];
    let names: Vec<String> = (0..64).map(|i| format!("blk.{i}.ffn_up.weight")).collect();
    let specs =
        names.iter().map(|n| TensorSpec { name: n.clone(), dims: vec![1024, 256], ty: GgmlType::F32 }).collect();
    let mut w = GgufWriter::create(&path, &md, specs).unwrap();
    let vals: Vec<u8> = (0..1024 * 256).flat_map(|j| ((j % 977) as f32 / 977.0 - 0.5).to_le_bytes()).collect();
    for n in &names {
        w.write_tensor(n, &vals).unwrap();
    }
    w.finish().unwrap();
    path
}

/// Starts quantizing `src` into `out`, waits until the temporary output exists, sends
/// `signal`; returns the exit status and stderr, or `None` when the run finished first.
fn quantize_and_signal(src: &Path, out: &Path, signal: &str) -> Option<(std::process::ExitStatus, String)> {
    let dir = out.parent().unwrap();
    let mut child = lowbit()
        .args(["quantize", "--model"])
        .arg(src)
        .args(["--type", "IQ4_XS", "-o"])
        .arg(out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while extra_files(dir, &[src]).is_empty() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    if status.success() {
        // Finished before the signal arrived (very fast machine): nothing to check.
        eprintln!("SKIPPED: quantize finished before SIG{signal}");
        return None;
    }
    Some((status, stderr))
}

/// Ctrl-C and SIGTERM during `quantize`: the run stops, exits 130 and leaves no
/// temporary file.
#[cfg(unix)]
#[test]
fn interrupting_quantize_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = big_source(dir.path());
    let out = dir.path().join("out.gguf");
    for signal in ["INT", "TERM"] {
        let Some((status, stderr)) = quantize_and_signal(&path, &out, signal) else { continue };
        assert_eq!(status.code(), Some(130), "SIG{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(extra_files(dir.path(), &[&path]).is_empty(), "{:?}", extra_files(dir.path(), &[&path]));
    }
}

/// SIGKILL cannot be caught: its temporary file stays, and the next run writing the same
/// output removes it (and writes the output).
#[cfg(unix)]
#[test]
fn a_killed_runs_temp_file_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = big_source(dir.path());
    let out = dir.path().join("out.gguf");
    let Some((status, _)) = quantize_and_signal(&path, &out, "KILL") else { return };
    assert_eq!(status.code(), None, "killed by a signal");
    let left = extra_files(dir.path(), &[&path]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".tmp"), "{left:?}");
    let o =
        lowbit().args(["quantize", "--model"]).arg(&path).args(["--type", "Q8_0", "-o"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(extra_files(dir.path(), &[&path]), vec![out.display().to_string()]);
}

/// Outputs are checked before any work, and lowbit never replaces what is not a regular
/// file: a device (`/dev/null`), a named pipe, a symlink or a folder given as `-o`,
/// `--report`, `calibrate -o` or `eval --save-logits` is refused and left as it was.
#[cfg(unix)]
#[test]
fn outputs_are_checked_first_and_special_files_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), "src.gguf", false);
    let target = dir.path().join("target.gguf");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.gguf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("pipe.gguf");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let keep: Vec<&Path> = vec![&src, &target, &link, &fifo, &sub];
    let good = dir.path().join("good.gguf");
    let quantize = |o: &Path, extra: &[&str]| {
        lowbit()
            .args(["quantize", "--model"])
            .arg(&src)
            .args(["--type", "Q8_0", "-o"])
            .arg(o)
            .args(extra)
            .output()
            .unwrap()
    };
    for (o, expect) in [
        (Path::new("/dev/null"), "device, pipe or socket"),
        (fifo.as_path(), "device, pipe or socket"),
        (link.as_path(), "symbolic link"),
        (sub.as_path(), "a folder"),
    ] {
        assert_clean_failure(&quantize(o, &[]), &[expect, "regular files"]);
        // --report is checked before the quantization: no model is written either.
        assert_clean_failure(&quantize(&good, &["--report", o.to_str().unwrap()]), &[expect]);
        assert_clean_failure(
            &quantize(&good, &["--report", dir.path().join("no/such/r.json").to_str().unwrap()]),
            &["no/such"],
        );
        let o2 = lowbit()
            .args(["calibrate", "--model"])
            .arg(&src)
            .args(["--text", "/nonexistent.txt", "-o"])
            .arg(o)
            .output()
            .unwrap();
        assert_clean_failure(&o2, &[expect]);
        let o3 = lowbit()
            .args(["eval", "--model"])
            .arg(&src)
            .args(["--text", "/nonexistent.txt", "--save-logits"])
            .arg(o)
            .output()
            .unwrap();
        assert_clean_failure(&o3, &[expect]);
        assert!(extra_files(dir.path(), &keep).is_empty(), "{o:?} left {:?}", extra_files(dir.path(), &keep));
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(sub.is_dir() && std::fs::read_dir(&sub).unwrap().count() == 0);
}

#[test]
fn eval_refuses_a_truncated_saved_reference() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ref.logits");
    std::fs::write(&bogus, b"LBLOGIT1\x05\x00\x00\x00{\"a\":").unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "hello").unwrap();
    let src = source(dir.path(), "src.gguf", false);
    let o = lowbit()
        .args(["eval", "--model"])
        .arg(&src)
        .arg("--reference")
        .arg(&bogus)
        .arg("--text")
        .arg(&text)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("ref.logits") && stderr.contains("header"), "{stderr}");
}
