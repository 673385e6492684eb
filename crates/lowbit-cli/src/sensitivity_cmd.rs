//! `lowbit sensitivity`: what allocation to a size measures — every tensor's sensitivity
//! and its candidate types' predicted costs — and, with `--validate N`, how well those
//! predictions match real single-tensor swaps (Spearman rank correlation).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use lowbit::eval::EvalOptions;
use lowbit::plan::Mix;
use lowbit::quantize::{CalibrationInput, QuantizeJob};

/// Arguments of `lowbit sensitivity`.
#[derive(Args)]
pub struct SensitivityArgs {
    /// Source model: a GGUF file, a Hugging Face folder or a zoo name.
    #[arg(long)]
    model: String,
    /// Calibration text files (or bundled names such as austen, or `self[:TOKENS]`), as for
    /// `quantize --calib`.
    #[arg(long, num_args = 1.., required = true)]
    calib: Vec<PathBuf>,
    /// Chunks of the calibration text for the importances (0 = all).
    #[arg(long, default_value_t = 64)]
    calib_chunks: usize,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    calib_ctx: usize,
    /// Chunks each sensitivity measurement runs.
    #[arg(long, default_value_t = lowbit::allocate::CostOptions::default().chunks)]
    sensitivity_chunks: usize,
    /// Only ggml types llama.cpp runs as candidates (as `quantize --llama-cpp`).
    #[arg(long)]
    llama_cpp: bool,
    /// Also measure this many real swaps (tensors spread over the model, each to a type
    /// other than its probe) and compare them with the predictions.
    #[arg(long, default_value_t = 0)]
    validate: usize,
    /// Write the cost table (and the validation) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `lowbit sensitivity`.
pub fn run(mut args: SensitivityArgs) -> Result<()> {
    if let Some(p) = &args.json {
        lowbit::atomic::check_output(p)?;
    }
    args.calib = crate::calib_texts(&args.calib, &args.model, args.calib_ctx)?;
    let input = crate::resolve_model(&args.model)?;
    let eval = EvalOptions {
        ctx: args.calib_ctx,
        max_chunks: (args.calib_chunks > 0).then_some(args.calib_chunks),
        ..Default::default()
    };
    let job = QuantizeJob {
        calibration: CalibrationInput::Texts { paths: args.calib.clone(), eval },
        cost_options: lowbit::allocate::CostOptions {
            chunks: args.sensitivity_chunks.max(1),
            ctx: args.calib_ctx,
            llama_cpp_only: args.llama_cpp,
            ..Default::default()
        },
        ..QuantizeJob::new(Mix::from_name("Q8_0").expect("Q8_0 is a mix"), vec![])
    };
    let (table, validation) = crate::quantize_cmd::with_progress(Some(args.calib_ctx as u64), |p| {
        lowbit::quantize::sensitivities(&input, &job, args.validate, p)
    })?;
    println!(
        "{} tensors, sensitivity measured on {} tokens ({} scored rows)",
        table.tensors.len(),
        table.tokens,
        table.scored_rows
    );
    println!("{:<34} {:>7} {:>11} {:>11}  predicted KLD per candidate", "tensor", "probe", "probe KLD", "S_t");
    let mut order: Vec<&lowbit::allocate::TensorCosts> = table.tensors.iter().collect();
    order.sort_by(|a, b| b.sensitivity.probe_kld.total_cmp(&a.sensitivity.probe_kld));
    for t in order {
        let costs: Vec<String> =
            (0..t.candidates.len()).map(|k| format!("{} {:.2e}", t.candidates[k].ty, t.predicted(k))).collect();
        println!(
            "{:<34} {:>7} {:>11.3e} {:>11.3e}  {}",
            t.name,
            t.sensitivity.probe,
            t.sensitivity.probe_kld,
            t.sensitivity.scale(),
            costs.join(", ")
        );
    }
    if let Some(v) = &validation {
        println!();
        println!("{:<34} {:>8} {:>11} {:>11}", "swap", "type", "predicted", "measured");
        for s in &v.swaps {
            println!("{:<34} {:>8} {:>11.3e} {:>11.3e}", s.name, s.ty, s.predicted, s.measured);
        }
        println!(
            "{} swaps: Spearman rank correlation {:.3}, median measured/predicted {:.2}",
            v.swaps.len(),
            v.spearman,
            v.median_ratio
        );
    }
    if let Some(p) = &args.json {
        let json = serde_json::json!({ "table": table, "validation": validation });
        lowbit::atomic::write_atomic(p, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(())
}
