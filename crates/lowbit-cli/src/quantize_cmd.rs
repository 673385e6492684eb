//! `lowbit quantize`: argument handling, progress bar and the closing summary.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::method::Method;
use lowbit::plan::{Mix, Override};
use lowbit::quantize::{plan_model, quantize_gguf, QuantizeOptions, QuantizeSummary};

/// Arguments of `lowbit quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// Source model: a GGUF file or a zoo name.
    #[arg(long)]
    model: String,
    /// Mix (llama-quantize names): Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S,
    /// Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, MXFP4_MOE, F16, BF16, F32;
    /// or a lowbit-native format for every weight matrix (int2…int8 with _gGROUP and
    /// optional _zp, nf4_gG, fp8_gG, fp4_gG, e.g. int4_g128; llama.cpp cannot run those),
    /// for the blocks' matrices, with Q8_0 for the token embedding and output and where a
    /// matrix's rows are not whole groups.
    #[arg(long = "type")]
    ty: String,
    /// Output GGUF (required unless --dry-run).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Per-tensor type, `REGEX=TYPE` (repeatable; first match wins), e.g. 'ffn_down=Q6_K'.
    #[arg(long = "override")]
    overrides: Vec<String>,
    /// How scales are chosen: `search` (weighted least squares, default) or `rtn`.
    #[arg(long, default_value = "search")]
    method: String,
    /// Importance matrix (llama.cpp's GGUF or legacy .dat, e.g. from `lowbit calibrate`
    /// or `llama-imatrix`): the scale search then minimises importance-weighted error.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Print the plan (tensor, type, bytes), size and bpw without quantizing.
    #[arg(long)]
    dry_run: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn print_summary(s: &QuantizeSummary, per_tensor: bool) {
    if per_tensor {
        println!("{:<40} {:<18} {:>7} -> {:<7} {:>12}  why", "tensor", "shape", "source", "type", "bytes");
        for t in &s.tensors {
            let dims = format!("{:?}", t.dims);
            println!(
                "{:<40} {:<18} {:>7} -> {:<7} {:>12}  {}",
                t.name,
                dims,
                t.source.to_string(),
                t.target.to_string(),
                t.bytes,
                t.reason
            );
        }
        println!();
    }
    println!("{:<8} {:>8} {:>14} {:>14} {:>8}", "type", "tensors", "weights", "bytes", "bpw");
    for t in &s.by_type {
        let bpw = 8.0 * t.bytes as f64 / t.elements.max(1) as f64;
        println!("{:<8} {:>8} {:>14} {:>14} {:>8.4}", t.ty.to_string(), t.tensors, t.elements, t.bytes, bpw);
    }
    println!(
        "mix {} ({}): tensor data {:.2} MB, {:.4} bpw overall, {:.4} bpw in quantized matrices",
        s.mix,
        s.method,
        s.tensor_bytes as f64 / 1e6,
        s.bpw,
        s.bpw_quantized
    );
    if let (Some(f), Some(t)) = (s.file_bytes, s.seconds) {
        println!("file {:.2} MB ({f} bytes), quantized in {t:.1} s", f as f64 / 1e6);
    }
}

/// Runs `lowbit quantize`.
pub fn run(args: QuantizeArgs) -> Result<()> {
    let native = lowbit::format::native::NativeFormat::from_name(&args.ty);
    let mix = match (Mix::from_name(&args.ty), native) {
        (Some(m), _) => m,
        (None, Some(_)) => Mix::from_name("Q8_0").expect("Q8_0 is a mix"),
        (None, None) => {
            return Err(anyhow!(
                "unknown --type '{}'; known: {}, or a native format such as int4_g128, int3_g64_zp, nf4_g64, fp8_g32, fp4_g32",
                args.ty,
                Mix::names().join(", ")
            ))
        }
    };
    let method =
        Method::from_name(&args.method).ok_or_else(|| anyhow!("unknown --method '{}' (rtn, search)", args.method))?;
    let mut overrides = args.overrides.iter().map(|o| Override::parse(o)).collect::<Result<Vec<_>, _>>()?;
    if let Some(f) = native {
        // Every block weight matrix the user did not override gets the native format; the
        // token embedding and output stay Q8_0, as llama.cpp's mixes protect them.
        overrides.push(Override::parse(&format!("^blk\\.={f}"))?);
    }
    let input = crate::resolve_model(&args.model)?;
    let importance = match &args.imatrix {
        Some(p) => Some(lowbit::calibrate::Imatrix::read(p)?.importance()),
        None => None,
    };
    let opts = QuantizeOptions { mix, overrides, method, importance };
    let summary = if args.dry_run {
        let g = lowbit::gguf::GgufFile::open(&input)?;
        let s = plan_model(&g, &opts)?;
        print_summary(&s, true);
        s
    } else {
        let output = args.output.ok_or_else(|| anyhow!("--output is required (or use --dry-run)"))?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("quantize [{bar:30}] {percent}% of weights, {elapsed} elapsed, ETA {eta}")
                .expect("valid template"),
        );
        let s = quantize_gguf(&input, &output, &opts, &mut |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        });
        bar.finish_and_clear();
        let s = s?;
        println!("{}", output.display());
        print_summary(&s, false);
        s
    };
    if let Some(path) = args.report {
        let json = serde_json::to_string_pretty(&summary)?;
        lowbit::atomic::write_atomic(&path, json.as_bytes())?;
    }
    Ok(())
}
