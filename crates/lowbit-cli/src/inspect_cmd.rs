//! `lowbit inspect`: prints a [`lowbit::inspect::ModelSummary`] as a table or JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use lowbit::inspect::{summarize, ModelSummary};

/// `writeln!` into a String (cannot fail).
macro_rules! outln {
    ($o:expr) => { let _ = writeln!($o); };
    ($o:expr, $($arg:tt)*) => { let _ = writeln!($o, $($arg)*); };
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn render_table(s: &ModelSummary, o: &mut String) {
    outln!(o, "model:        {}", s.path);
    let version = s.gguf_version.map(|v| format!(" v{v}")).unwrap_or_default();
    outln!(o, "container:    {}{}", s.container, version);
    outln!(o, "architecture: {}", s.architecture.as_deref().unwrap_or("(not stated)"));
    if let Some(n) = &s.name {
        outln!(o, "name:         {n}");
    }
    let vocab = s.vocab_size.map(|v| format!(", {v} tokens")).unwrap_or_default();
    outln!(o, "tokenizer:    {}{}", s.tokenizer.as_deref().unwrap_or("(none)"), vocab);
    outln!(o, "file size:    {} ({} bytes)", lowbit::units::human_bytes(s.file_size), s.file_size);
    outln!(o, "parameters:   {} ({:.1} M)", s.params, s.params as f64 / 1e6);
    outln!(o, "tensor data:  {} bytes, {:.4} bits per weight", s.tensor_bytes, s.bpw);
    if !s.hyperparameters.is_empty() {
        outln!(o, "\nhyper-parameters:");
        for (k, v) in &s.hyperparameters {
            outln!(o, "  {k:<40} {v}");
        }
    }
    outln!(o, "\nby type:");
    outln!(o, "  {:<10} {:>7} {:>14} {:>14} {:>8}", "type", "tensors", "params", "bytes", "bpw");
    for (t, e) in &s.by_type {
        outln!(o, "  {:<10} {:>7} {:>14} {:>14} {:>8.4}", t, e.tensors, e.params, e.bytes, e.bpw);
    }
    outln!(o, "\n{} tensors:", s.tensors.len());
    outln!(o, "  {:<44} {:<22} {:<10} {:>12}", "name", "shape", "type", "bytes");
    for t in &s.tensors {
        let shape = format!("{:?}", t.shape);
        let bytes = t.bytes.map(|b| b.to_string()).unwrap_or_else(|| "?".into());
        outln!(o, "  {:<44} {:<22} {:<10} {:>12}", t.name, shape, t.dtype, bytes);
    }
    if !s.unknown_type_tensors.is_empty() {
        outln!(
            o,
            "\nwarning: {} tensor(s) use a type lowbit does not know and cannot be read: {}",
            s.unknown_type_tensors.len(),
            s.unknown_type_tensors.join(", ")
        );
    }
}

/// Runs `inspect` on `path`.
pub fn run(path: &Path, json: bool, metadata: bool) -> Result<()> {
    let summary = summarize(path)?;
    let mut o = String::new();
    if json {
        let mut v = serde_json::to_value(&summary)?;
        if metadata && summary.container == "gguf" {
            let g = lowbit::gguf::GgufFile::open(path)?;
            let md: serde_json::Map<String, serde_json::Value> =
                g.metadata.iter().map(|(k, val)| (k.clone(), serde_json::to_value(val).unwrap_or_default())).collect();
            v["metadata"] = serde_json::Value::Object(md);
        }
        outln!(o, "{}", serde_json::to_string_pretty(&v)?);
    } else {
        render_table(&summary, &mut o);
        if metadata && summary.container == "gguf" {
            let g = lowbit::gguf::GgufFile::open(path)?;
            outln!(o, "\nmetadata:");
            for (k, v) in &g.metadata {
                outln!(o, "  {k:<44} {}", v.summary());
            }
        }
    }
    emit(&o)
}
