//! `lowbit quantize`: argument handling, progress bar and the closing summary.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::allocate::SizeTarget;
use lowbit::eval::EvalOptions;
use lowbit::format::vq::VqFormat;
use lowbit::method::Method;
use lowbit::plan::{Mix, Override};
use lowbit::quantize::{mix_for_type, CalibrationInput, QuantizeJob, QuantizeSummary, Stage};

/// Arguments of `lowbit quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// Source model: a GGUF file or a zoo name.
    #[arg(long)]
    model: String,
    /// Mix (llama-quantize names): Q2_K, Q2_K_S, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M,
    /// Q5_K_S, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, IQ3_M, IQ3_S,
    /// IQ3_XS, IQ3_XXS, IQ2_M, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S, MXFP4_MOE, F16, BF16, F32;
    /// or a lowbit-native format for every weight matrix (int2…int8 with _gGROUP and
    /// optional _zp, nf4_gG, fp8_gG, fp4_gG, e.g. int4_g128; llama.cpp cannot run those),
    /// for the blocks' matrices, with Q8_0 for the token embedding and output and where a
    /// matrix's rows are not whole groups; or learned-codebook vector quantization for the
    /// blocks' matrices: `vq` with --bpw (and --vec, --codebook, --residual, --outliers), or
    /// a VQ format by name (vq4x256, vq8x256+256, vq4x256+128o8, …). Not needed with
    /// --size, --bpw (alone) or --recipe.
    #[arg(long = "type", required_unless_present_any = ["size", "bpw", "recipe"])]
    ty: Option<String>,
    /// Allocate to a file size: every tensor's type is chosen by its measured sensitivity
    /// so the predicted KL divergence is least within the size (bytes, or a number with a
    /// unit: 94371840, 90MB, 85.5MiB). Needs --calib. The file is never larger.
    #[arg(long, conflicts_with_all = ["ty", "bpw", "recipe"])]
    size: Option<String>,
    /// Without --type: allocate to this many bits per weight over the whole file (as
    /// --size, with size = bpw × weights / 8). With `--type vq`: bits per weight in codes
    /// (scales and codebooks come on top and are counted in the summary).
    #[arg(long)]
    bpw: Option<f64>,
    /// With --size / --bpw: choose only among ggml types llama.cpp runs (k-quants,
    /// i-quants, legacy blocks). Without it lowbit-native group-wise formats (int2–int6,
    /// NF4) are candidates too, and the file may need lowbit to run it; VQ candidates
    /// are not searched yet.
    #[arg(long)]
    llama_cpp: bool,
    /// Equivalent transforms folded into the weights before quantizing: `awq` (AWQ
    /// channel scales searched on --calib, folded into norms, up and v), `rotate` (a
    /// residual-stream randomized Hadamard rotation with the norms folded; llama family;
    /// unties a tied embedding), `rotate+awq`, or `none`. The output stays a llama.cpp
    /// model.
    #[arg(long = "transform", default_value = "none")]
    transforms: String,
    /// A low-rank branch of this rank beside every quantized block matrix: f16 factors
    /// A·B fitted to the matrix's quantization error in its calibration metric (Hessian,
    /// else importance). The file needs lowbit to run it; with --size its bytes come out
    /// of the budget.
    #[arg(long)]
    low_rank: Option<usize>,
    /// Store every block matrix of a lowbit-native or VQ type rotated on its input side by
    /// a seeded randomized Hadamard matrix (QuIP#'s incoherence processing); lowbit's
    /// runtime rotates the layer's inputs. ggml-typed tensors are left as they are.
    #[arg(long)]
    incoherence: bool,
    /// Follow a saved allocation (`NAME=TYPE` lines, from --save-recipe).
    #[arg(long, conflicts_with_all = ["ty", "size"])]
    recipe: Option<PathBuf>,
    /// With --size / --bpw: write the allocation (`NAME=TYPE` lines) to this file, for
    /// --recipe.
    #[arg(long)]
    save_recipe: Option<PathBuf>,
    /// With --size / --bpw: calibration chunks (of --calib-ctx tokens) each sensitivity
    /// measurement runs (one forward pass per tensor).
    #[arg(long, default_value_t = lowbit::allocate::CostOptions::default().chunks)]
    sensitivity_chunks: usize,
    /// With --size / --bpw: at most this many of the swaps the allocation relies on are
    /// measured end to end (one forward pass each) instead of predicted, re-allocating
    /// after each round; 0 (the default: it did not pay on the zoo models, see
    /// `allocate::REFINE_SWAPS`) allocates on the predictions alone.
    #[arg(long, default_value_t = lowbit::allocate::CostOptions::default().refine)]
    refine: usize,
    /// With `--type vq`: weights per vector.
    #[arg(long = "vec", default_value_t = 4)]
    vec_len: usize,
    /// With `--type vq`: entries of the (first) codebook, a power of two up to 65536.
    #[arg(long)]
    codebook: Option<usize>,
    /// With `--type vq`: add a residual codebook (the code bits are split between the two).
    #[arg(long)]
    residual: bool,
    /// With `--type vq`: input columns per matrix kept apart as f16 values (those with the
    /// largest inputs; 16 bits per row each, on top of --bpw).
    #[arg(long, default_value_t = 0)]
    outliers: u16,
    /// With VQ types: store the codebooks on int8 grids, so lowbit's integer kernels look up
    /// one byte per value (AVX-512 VBMI: smollm2 vq4x256+128 generates at 129–135 instead
    /// of 107–112 tokens/s) — at a KLD cost (+5 % on that file over two seeds; README).
    #[arg(long)]
    vq_int8: bool,
    /// Output GGUF (required unless --dry-run).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Per-tensor type, `REGEX=TYPE` (repeatable; first match wins), e.g. 'ffn_down=Q6_K'.
    #[arg(long = "override")]
    overrides: Vec<String>,
    /// How values are chosen: `rtn` (round to nearest), `search` (weighted least-squares
    /// scale search; with an importance matrix, importance-weighted) or `gptq` (error
    /// compensation with the input Hessians; needs --calib or --stats). Default: the best
    /// the inputs allow (gptq with Hessians, else search).
    #[arg(long)]
    method: Option<String>,
    /// Importance matrix (llama.cpp's GGUF or legacy .dat, e.g. from `lowbit calibrate`
    /// or `llama-imatrix`): the scale search then minimises importance-weighted error.
    #[arg(long, conflicts_with_all = ["calib", "stats"])]
    imatrix: Option<PathBuf>,
    /// Calibration text files (concatenated; BENCHMARKS.md: the Austen novels): runs them
    /// through the source model first and records importances and input Hessians. Also
    /// bundled names (`austen`) and `self[:TOKENS]`: text sampled from the model itself
    /// (default 16384 tokens; chunks are taken from the start, so `self austen` mixes both).
    #[arg(long, num_args = 1.., conflicts_with = "stats")]
    calib: Vec<PathBuf>,
    /// Chunks of the calibration text to use (with --calib; 0 = all).
    #[arg(long, default_value_t = 64)]
    calib_chunks: usize,
    /// Tokens per calibration chunk (with --calib).
    #[arg(long, default_value_t = 512)]
    calib_ctx: usize,
    /// Saved calibration statistics (`lowbit calibrate -o FILE.safetensors`).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// With --calib: GPTQ block by block, each block calibrated on the outputs of the
    /// blocks before it as already quantized — the default with --calib (one block's
    /// statistics in memory, resumable after a kill; every block runs twice).
    #[arg(long, requires = "calib", conflicts_with = "no_sequential")]
    sequential: bool,
    /// With --calib: calibrate the whole float model first, then quantize (all Hessians in
    /// memory at once; faster on small models, not resumable).
    #[arg(long, requires = "calib")]
    no_sequential: bool,
    /// Memory to stay within (bytes or a number with a unit: 8GB, 6GiB). With --calib
    /// (sequential GPTQ) the calibration hidden states go to the work folder when the
    /// model, one block's work and the states would not fit, and a budget too small for the
    /// model and one block is refused before any work. The summary reports the peak.
    #[arg(long)]
    max_memory: Option<String>,
    /// Print the plan (tensor, type, bytes), size and bpw without quantizing.
    #[arg(long)]
    dry_run: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn print_summary(s: &QuantizeSummary, ty: &str, per_tensor: bool) {
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
    // A whole-block native or VQ type rides on the Q8_0 mix's rules for the rest.
    let what = if let Some(r) = &s.recipe {
        format!("allocated to {} tensor bytes, predicted KLD {:.4}, file type {}", r.budget, r.predicted_kld, s.mix)
    } else if ty.eq_ignore_ascii_case(&s.mix) {
        format!("mix {}", s.mix)
    } else {
        format!("{ty} (mix {} elsewhere)", s.mix)
    };
    println!(
        "{what} ({}): tensor data {:.2} MB, {:.4} bpw overall, {:.4} bpw in quantized matrices",
        s.method,
        s.tensor_bytes as f64 / 1e6,
        s.bpw,
        s.bpw_quantized
    );
    if let (Some(f), Some(t)) = (s.file_bytes, s.seconds) {
        println!("file {:.2} MB ({f} bytes), quantized in {t:.1} s", f as f64 / 1e6);
    }
    if !s.codebooks.is_empty() {
        let share = |u: usize, k: usize| u as f64 / k.max(1) as f64;
        let worst = s.codebooks.iter().min_by(|a, b| share(a.used, a.entries).total_cmp(&share(b.used, b.entries)));
        let mean = s.codebooks.iter().map(|c| share(c.used, c.entries)).sum::<f64>() / s.codebooks.len() as f64;
        if let Some(w) = worst {
            println!(
                "codebooks: {} tensors, mean {:.1}% of entries used; least {} ({}/{})",
                s.codebooks.len(),
                100.0 * mean,
                w.tensor,
                w.used,
                w.entries
            );
        }
        let errors: Vec<(&str, f64)> =
            s.codebooks.iter().filter_map(|c| Some((c.tensor.as_str(), c.relative_output_error?))).collect();
        if let Some(&(name, e)) = errors.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            let mean = errors.iter().map(|x| x.1).sum::<f64>() / errors.len() as f64;
            println!(
                "VQ output error on the calibration inputs (relative): mean {:.3}%, largest {name} ({:.3}%)",
                100.0 * mean,
                100.0 * e
            );
        }
    }
}

/// The VQ format `--type vq --bpw B [--vec V --codebook K --residual]` asks for: B·V
/// code bits per vector, all in one codebook or split between two.
fn vq_format(args: &QuantizeArgs) -> Result<VqFormat> {
    let bpw = args.bpw.ok_or_else(|| anyhow!("--type vq needs --bpw (code bits per weight, e.g. 2)"))?;
    let v = args.vec_len;
    anyhow::ensure!((2..=16).contains(&v), "--vec {v}: vectors of 2 to 16 weights");
    let bits = (bpw * v as f64).round() as i64;
    let main = match args.codebook {
        Some(k) => {
            anyhow::ensure!(k.is_power_of_two() && (2..=65536).contains(&k), "--codebook {k}: a power of two, 2…65536");
            k.trailing_zeros() as i64
        }
        None if args.residual => (bits + 1) / 2,
        None => bits,
    };
    let residual = if args.residual { bits - main } else { 0 };
    anyhow::ensure!(
        args.residual || main == bits,
        "--bpw {bpw} with --vec {v} is {bits} code bits per vector, but --codebook {} has {main}; add --residual or change --bpw",
        args.codebook.unwrap_or(0)
    );
    anyhow::ensure!(
        (1..=16).contains(&main) && (0..=16).contains(&residual) && (!args.residual || residual >= 1),
        "--bpw {bpw} with --vec {v} is {bits} code bits per vector: each codebook takes 1 to 16 bits (try --vec {} or --residual)",
        (16.0 / bpw).floor().max(2.0)
    );
    anyhow::ensure!(
        args.outliers <= lowbit::format::vq::MAX_OUTLIERS,
        "--outliers {}: at most {}",
        args.outliers,
        lowbit::format::vq::MAX_OUTLIERS
    );
    let mut name = if args.residual {
        format!("vq{v}x{}+{}", 1u64 << main, 1u64 << residual)
    } else {
        format!("vq{v}x{}", 1u64 << main)
    };
    if args.outliers > 0 {
        name += &format!("o{}", args.outliers);
    }
    VqFormat::from_name(&name).ok_or_else(|| anyhow!("{name} is not a valid VQ format"))
}

/// The quantization job the arguments describe (checked before any work).
fn job(args: &QuantizeArgs) -> Result<QuantizeJob> {
    let is_vq = args.ty.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("vq"));
    let vq_flags =
        (args.ty.is_some() && args.bpw.is_some()) || args.codebook.is_some() || args.residual || args.outliers > 0;
    anyhow::ensure!(!vq_flags || is_vq, "--bpw (with --type), --codebook, --residual and --outliers go with --type vq");
    let target = match (&args.size, args.bpw) {
        (Some(s), _) => Some(SizeTarget::parse_size(s)?),
        (None, Some(b)) if args.ty.is_none() => {
            anyhow::ensure!(b.is_finite() && b > 0.0 && b <= 32.0, "--bpw {b}: bits per weight between 0 and 32");
            Some(SizeTarget::Bpw(b))
        }
        _ => None,
    };
    anyhow::ensure!(
        target.is_some() || (args.save_recipe.is_none() && !args.llama_cpp),
        "--save-recipe and --llama-cpp go with --size or --bpw (an allocation)"
    );
    let mut overrides = args.overrides.iter().map(|o| Override::parse(o)).collect::<Result<Vec<_>, _>>()?;
    let mix = if let Some(ty) = &args.ty {
        let ty = if is_vq { vq_format(args)?.to_string() } else { ty.clone() };
        let (mix, blocks) = mix_for_type(&ty).ok_or_else(|| {
            if let Some(why) = lowbit::format::native::NativeFormat::why_not(&ty) {
                return anyhow!("unknown --type '{ty}': {why}");
            }
            let hint = crate::did_you_mean(&ty, &Mix::names()).map(|m| format!(" (did you mean {m}?)")).unwrap_or_default();
            anyhow!(
                "unknown --type '{ty}'{hint}; known: {}, a native format such as int4_g128, int3_g64_zp, nf4_g64, fp8_g32, fp4_g32, or vq (with --bpw) / a VQ format such as vq4x256",
                Mix::names().join(", ")
            )
        })?;
        // The user's overrides come first (first match wins), then the whole-block format.
        overrides.extend(blocks);
        mix
    } else if let Some(path) = &args.recipe {
        // A recipe names every tensor it allocated; the mix only names the file type.
        let recipe = lowbit::allocate::read_recipe(path)?;
        let mix = lowbit::allocate::dominant_mix(recipe.iter().map(|o| (o.ty, 1)));
        overrides.extend(recipe);
        mix
    } else {
        Mix::from_name("Q8_0").expect("Q8_0 is a mix")
    };
    let method = match args.method.as_deref() {
        None => None,
        Some(m) => Some(Method::from_name(m).ok_or_else(|| anyhow!("unknown --method '{m}' (rtn, search, gptq)"))?),
    };
    anyhow::ensure!(
        !args.dry_run || args.calib.is_empty() || target.is_some(),
        "--dry-run does not calibrate; drop --calib (the plan does not depend on it)"
    );
    let calibration = if let Some(p) = &args.imatrix {
        CalibrationInput::Imatrix(p.clone())
    } else if let Some(p) = &args.stats {
        CalibrationInput::Stats(p.clone())
    } else if !args.calib.is_empty() {
        let eval = EvalOptions {
            ctx: args.calib_ctx,
            max_chunks: (args.calib_chunks > 0).then_some(args.calib_chunks),
            ..Default::default()
        };
        CalibrationInput::Texts { paths: args.calib.clone(), eval }
    } else {
        CalibrationInput::None
    };
    let cost_options = lowbit::allocate::CostOptions {
        chunks: args.sensitivity_chunks.max(1),
        ctx: args.calib_ctx,
        llama_cpp_only: args.llama_cpp,
        refine: args.refine,
        ..Default::default()
    };
    let job = QuantizeJob {
        method,
        calibration,
        sequential: match (args.sequential, args.no_sequential) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        target,
        cost_options,
        transforms: lowbit::transform::Transforms::parse(&args.transforms)?,
        low_rank: args.low_rank,
        incoherence: args.incoherence,
        memory: crate::memory_limit(args.max_memory.as_deref())?,
        method_options: lowbit::method::MethodOptions {
            vq: lowbit::method::vq::VqOptions { int8_grid: args.vq_int8, ..Default::default() },
            ..Default::default()
        },
        ..QuantizeJob::new(mix, overrides)
    };
    job.check()?;
    Ok(job)
}

/// Runs `lowbit quantize`: the library's [`lowbit::quantize::run`] with progress bars.
pub fn run(mut args: QuantizeArgs) -> Result<()> {
    // Every output path is checked before any work (a bad --report used to fail only
    // after the whole quantization), then the inputs.
    for p in args.output.iter().chain(&args.report).chain(&args.save_recipe) {
        lowbit::atomic::check_output(p)?;
    }
    args.calib = crate::calib_texts(&args.calib, &args.model, args.calib_ctx)?;
    let job = job(&args)?;
    let input = crate::resolve_model(&args.model)?;
    let mut inputs: Vec<(&str, &std::path::Path)> = vec![("--model", &input)];
    inputs.extend(args.imatrix.iter().map(|p| ("--imatrix", p.as_path())));
    inputs.extend(args.stats.iter().map(|p| ("--stats", p.as_path())));
    inputs.extend(args.calib.iter().map(|p| ("--calib", p.as_path())));
    inputs.extend(args.recipe.iter().map(|p| ("--recipe", p.as_path())));
    for p in args.output.iter().chain(&args.report).chain(&args.save_recipe) {
        lowbit::atomic::refuse_overwriting_inputs(p, &inputs)?;
    }
    let what = match (&args.ty, &args.recipe) {
        (Some(t), _) => t.clone(),
        (None, Some(r)) => format!("recipe {}", r.display()),
        (None, None) => String::new(),
    };
    let summary = if args.dry_run {
        let s = with_progress(Some(args.calib_ctx as u64), |p| lowbit::quantize::plan_job(&input, &job, p))?;
        print_summary(&s, &what, true);
        s
    } else {
        let output = args.output.as_ref().ok_or_else(|| anyhow!("--output is required (or use --dry-run)"))?;
        let s = with_progress(Some(args.calib_ctx as u64), |p| lowbit::quantize::run(&input, output, &job, p))?;
        println!("{}", output.display());
        print_summary(&s, &what, false);
        crate::print_memory(s.memory.as_ref(), job.memory.bytes());
        s
    };
    if let (Some(path), Some(recipe)) = (&args.save_recipe, &summary.recipe) {
        lowbit::atomic::write_atomic(path, recipe.to_text().as_bytes())?;
        println!("recipe written to {}", path.display());
    }
    if let Some(path) = args.report {
        let json = serde_json::to_string_pretty(&summary)?;
        lowbit::atomic::write_atomic(&path, json.as_bytes())?;
    }
    Ok(())
}

/// Runs `work` with a progress bar per stage (and log lines when not on a terminal).
/// With `ctx` (tokens per calibration chunk), the calibration bar also shows tokens per
/// second; the sequential-GPTQ bar shows calibration tokens per second through its blocks.
pub(crate) fn with_progress<T>(
    ctx: Option<u64>,
    work: impl FnOnce(&mut dyn FnMut(Stage, u64, u64)) -> lowbit::Result<T>,
) -> lowbit::Result<T> {
    let bar = ProgressBar::new(0);
    let mut stage = None;
    let mut log: Option<crate::LogProgress> = None;
    let mut stage_start = (std::time::Instant::now(), 0u64);
    let r = work(&mut |st, d, t| {
        if stage != Some(st) {
            stage_start = (std::time::Instant::now(), d);
        }
        let per_unit = match st {
            Stage::Calibrate => ctx,
            Stage::Sequential { tokens, .. } => Some(tokens),
            _ => None,
        };
        let secs = stage_start.0.elapsed().as_secs_f64();
        let rate = per_unit
            .filter(|&p| p > 0 && d > stage_start.1 && secs > 0.0)
            .map(|per| format!(", {:.0} tokens/s", (d - stage_start.1) as f64 * per as f64 / secs));
        let (label, unit, template) = stage_display(st);
        if stage != Some(st) {
            if let Stage::Sequential { memory, .. } = st {
                bar.suspend(|| {
                    eprintln!("lowbit: memory: {}", memory.describe());
                    if d > 0 {
                        eprintln!(
                            "lowbit: resuming: {d} of {t} blocks were finished by an interrupted run of this command"
                        )
                    }
                });
            }
            log = Some(crate::LogProgress::new(label));
            stage = Some(st);
            bar.reset();
            bar.set_message("");
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        }
        if let Some(r) = &rate {
            bar.set_message(r.clone());
        }
        if let Some(l) = log.as_mut() {
            l.update(d, t, &format!("{unit}{}", rate.as_deref().unwrap_or("")));
        }
        bar.set_length(t);
        bar.set_position(d);
        if d == stage_start.1 {
            // A resumed stage starts part done: its rate and ETA count from here.
            bar.reset_eta();
        }
    });
    bar.finish_and_clear();
    r
}

/// Each stage's label, the unit its progress counts and its progress bar.
fn stage_display(stage: Stage) -> (&'static str, &'static str, &'static str) {
    match stage {
        Stage::Calibrate => {
            ("calibrate", "chunks", "calibrate [{bar:30}] {pos}/{len} chunks{msg}, {elapsed} elapsed, ETA {eta}")
        }
        Stage::Sequential { .. } => (
            "sequential gptq",
            "blocks",
            "sequential gptq [{bar:30}] {pos}/{len} blocks{msg}, {elapsed} elapsed, ETA {eta}",
        ),
        Stage::Sensitivity => {
            ("sensitivity", "tensors", "sensitivity [{bar:30}] {pos}/{len} tensors, {elapsed} elapsed, ETA {eta}")
        }
        Stage::Candidates => (
            "candidate errors",
            "tensors",
            "candidate errors [{bar:30}] {pos}/{len} tensors, {elapsed} elapsed, ETA {eta}",
        ),
        Stage::Refine => {
            ("refine", "swaps", "refine allocation [{bar:30}] {pos}/{len} swaps at most, {elapsed} elapsed, ETA {eta}")
        }
        Stage::Transform => {
            ("awq scales", "groups", "awq scales [{bar:30}] {pos}/{len} groups, {elapsed} elapsed, ETA {eta}")
        }
        Stage::Quantize => {
            ("quantize", "weights", "quantize [{bar:30}] {percent}% of weights, {elapsed} elapsed, ETA {eta}")
        }
    }
}
