//! A whole quantization in one call: read or compute the calibration statistics, resolve
//! the method they allow, plan, (for sequential GPTQ) quantize the blocks one by one on
//! the calibration text, and write the file. The CLI's `quantize` and the sweep both go
//! through [`run`], so every format and method is available to both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{plan_model, plan_model_with, write_planned, QuantizeOptions, QuantizeSummary};
use crate::allocate::{CostOptions, Recipe, SizeTarget};
use crate::calibrate::{calibrate_files, read_texts, CalibrationStats, Hessian, Imatrix};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::format::storage::StorageType;
use crate::method::{Method, MethodOptions};
use crate::model::LoadOptions;
use crate::plan::{Mix, Override};
use crate::sequential::checkpoint::Checkpoint;
use crate::transform::Transforms;

/// Where a quantization's calibration comes from.
#[derive(Clone, Debug, Default)]
pub enum CalibrationInput {
    /// None: every block fitted on its own, weighted by the weights' magnitudes.
    #[default]
    None,
    /// An importance matrix file (llama.cpp's GGUF or legacy `.dat`, from `lowbit
    /// calibrate` or `llama-imatrix`).
    Imatrix(PathBuf),
    /// A statistics file with Hessians (`lowbit calibrate -o FILE.safetensors`).
    Stats(PathBuf),
    /// Calibration texts, concatenated in order and run through the source first.
    Texts {
        /// The text files (BENCHMARKS.md: the Austen novels).
        paths: Vec<PathBuf>,
        /// Chunk length and count.
        eval: EvalOptions,
    },
}

/// What to produce from a source model.
#[derive(Clone, Debug)]
pub struct QuantizeJob {
    /// The mix (default type plus llama.cpp's promotion rules).
    pub mix: Mix,
    /// Per-tensor overrides, first match wins.
    pub overrides: Vec<Override>,
    /// The method; `None` means the best the calibration allows (GPTQ with Hessians,
    /// else the importance-weighted search).
    pub method: Option<Method>,
    /// Calibration statistics, if any.
    pub calibration: CalibrationInput,
    /// GPTQ block by block, each block calibrated on the outputs of the blocks before it as
    /// already quantized ([`crate::sequential`]); needs calibration texts. `None` (the
    /// default) means: whenever the job allows it ([`QuantizeJob::is_sequential`]), since it
    /// holds one block's statistics at a time, resumes after a kill, and measured a lower KL
    /// divergence than calibrating on the float model.
    pub sequential: Option<bool>,
    /// Method tunables.
    pub method_options: MethodOptions,
    /// A size to allocate to ([`crate::allocate`]): every quantizable tensor's type is
    /// chosen by measured sensitivity within it (the user's overrides stay fixed); the
    /// mix then only names the file type.
    pub target: Option<SizeTarget>,
    /// How the allocation measures its costs.
    pub cost_options: CostOptions,
    /// Equivalent transforms folded into the source first ([`crate::transform`]).
    pub transforms: Transforms,
    /// A low-rank branch of this rank beside every quantized block matrix
    /// ([`crate::method::low_rank`]); with a size target its bytes come out of the budget.
    pub low_rank: Option<usize>,
    /// Block matrices in lowbit-native or VQ formats stored rotated on their input side
    /// ([`crate::method::incoherence`]).
    pub incoherence: bool,
    /// `--max-memory`: sequential GPTQ keeps the calibration hidden states on disk when
    /// the model, one block's work and the states would not fit, and refuses a budget below
    /// the model and one block ([`crate::calibrate::budget`]). The other paths hold one
    /// tensor at a time anyway.
    pub memory: crate::calibrate::budget::MemoryLimit,
}

impl QuantizeJob {
    /// Options for the writer with `method` and the given statistics (none pre-encoded).
    fn options(
        &self,
        method: Method,
        importance: Option<HashMap<String, Vec<f32>>>,
        hessians: Option<HashMap<String, Arc<Hessian>>>,
    ) -> QuantizeOptions {
        QuantizeOptions {
            mix: self.mix,
            overrides: self.overrides.clone(),
            method,
            importance,
            hessians,
            pre_encoded: Default::default(),
            method_options: self.method_options,
            low_rank: self.low_rank,
            incoherence: self.incoherence,
        }
    }

    /// A job for `mix` and `overrides` without calibration, method chosen by default.
    pub fn new(mix: Mix, overrides: Vec<Override>) -> QuantizeJob {
        QuantizeJob {
            mix,
            overrides,
            method: None,
            calibration: CalibrationInput::None,
            sequential: None,
            method_options: MethodOptions::default(),
            target: None,
            cost_options: CostOptions::default(),
            transforms: Transforms::default(),
            low_rank: None,
            incoherence: false,
            memory: Default::default(),
        }
    }

    /// Whether the job runs sequential GPTQ: as asked, or by default when it calibrates on
    /// texts with GPTQ (or the method left to the calibration) and nothing it needs is
    /// missing from the sequential path (`--incoherence`, `--low-rank`, which fit on the
    /// float model's statistics).
    pub fn is_sequential(&self) -> bool {
        self.sequential.unwrap_or_else(|| {
            matches!(self.calibration, CalibrationInput::Texts { .. })
                && matches!(self.method, None | Some(Method::Gptq))
                && !self.incoherence
                && self.low_rank.is_none()
        })
    }

    /// Refuses combinations that cannot work, before any work is done.
    pub fn check(&self) -> Result<()> {
        if self.low_rank == Some(0) {
            return Err(Error::Usage("--low-rank takes a rank of at least 1".into()));
        }
        if self.incoherence && self.cost_options.llama_cpp_only {
            return Err(Error::Usage(
                "--incoherence rotates lowbit-native and VQ tensors, which --llama-cpp excludes: drop one".into(),
            ));
        }
        if self.incoherence && self.sequential == Some(true) {
            return Err(Error::Usage("--incoherence does not work with --sequential yet: drop one".into()));
        }
        if self.low_rank.is_some() && self.cost_options.llama_cpp_only {
            return Err(Error::Usage(
                "--low-rank adds tensors llama.cpp does not load: drop --llama-cpp or --low-rank".into(),
            ));
        }
        let has_stats = matches!(self.calibration, CalibrationInput::Stats(_) | CalibrationInput::Texts { .. });
        if self.method == Some(Method::Gptq) && !has_stats {
            return Err(Error::Usage(
                "--method gptq needs calibration data: --calib TEXT… or --stats FILE (from `lowbit calibrate -o FILE.safetensors`)"
                    .into(),
            ));
        }
        if matches!(self.calibration, CalibrationInput::None) {
            if let Some(ty) = self.very_low_bit_type() {
                return Err(Error::Usage(format!(
                    "{ty} without calibration damages the model (smollm2-135m as IQ2_XXS: perplexity ~5800 against \
                     ~17): give --calib TEXT… (e.g. austen, or a path), --stats FILE or --imatrix FILE; \
                     llama-quantize refuses this too"
                )));
            }
        }
        if self.target.is_some() && !matches!(self.calibration, CalibrationInput::Texts { .. }) {
            return Err(Error::Usage(
                "--size / --bpw measure every tensor's sensitivity on calibration text: give --calib TEXT… (e.g. austen)"
                    .into(),
            ));
        }
        if self.transforms.awq && !matches!(self.calibration, CalibrationInput::Texts { .. }) {
            return Err(Error::Usage(
                "--transform awq searches its scales on calibration text: give --calib TEXT… (e.g. austen)".into(),
            ));
        }
        if self.sequential == Some(true) {
            if !matches!(self.calibration, CalibrationInput::Texts { .. }) {
                return Err(Error::Usage("--sequential needs calibration texts (--calib)".into()));
            }
            if let Some(m) = self.method.filter(|&m| m != Method::Gptq) {
                return Err(Error::Usage(format!("--sequential is a GPTQ mode: drop --method {}", m.name())));
            }
        }
        Ok(())
    }

    /// The 1–2-bit type (mix or override) that must not be used without calibration, as
    /// llama-quantize's list has it: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S and the Q2_K_S mix.
    fn very_low_bit_type(&self) -> Option<String> {
        use crate::format::GgmlType::*;
        let low = |t: StorageType| matches!(t, StorageType::Ggml(IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S));
        if self.mix.name == "Q2_K_S" || low(StorageType::Ggml(self.mix.default)) {
            return Some(format!("--type {}", self.mix.name));
        }
        self.overrides.iter().find(|o| low(o.ty)).map(|o| format!("--override '{}'", o.text))
    }
}

/// The stages [`run`] reports progress for; each counts in its own unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Running the calibration text through the source (chunks).
    Calibrate,
    /// Sequential GPTQ (blocks), each block running `tokens` calibration tokens.
    Sequential {
        /// Calibration tokens per block (for a tokens-per-second figure).
        tokens: u64,
        /// How the pass uses memory (shown before the first block).
        memory: crate::calibrate::budget::MemoryPlan,
    },
    /// Measuring each tensor's sensitivity for a size target (tensors).
    Sensitivity,
    /// Every candidate type's error on each tensor's sampled rows, for a size target
    /// (tensors; ~40 s on smollm2 over all formats, most of it the 2–3-bit i-quants).
    Candidates,
    /// Measuring the swaps an allocation relies on, end to end (swaps, at most).
    Refine,
    /// Searching AWQ scales for a transformed source (groups of weights).
    Transform,
    /// Encoding and writing tensors (weights).
    Quantize,
}

/// The mix and overrides a `--type` name stands for: a llama-quantize mix (`Q4_K_M`), or a
/// lowbit-native or VQ format (`int4_g64`, `vq4x256+128`) for every block weight matrix,
/// with Q8_0 for the token embedding and output (as llama.cpp's mixes protect them) and
/// where a matrix's rows are not whole groups.
pub fn mix_for_type(name: &str) -> Option<(Mix, Vec<Override>)> {
    if let Some(m) = Mix::from_name(name) {
        return Some((m, Vec::new()));
    }
    match StorageType::from_name(name)? {
        st @ (StorageType::Native(_) | StorageType::Vq(_)) => {
            Some((Mix::from_name("Q8_0").expect("Q8_0 is a mix"), vec![Override::blocks(st)]))
        }
        StorageType::Ggml(_) => None,
    }
}

/// Reads or computes `job`'s calibration and resolves it into quantizer options (method,
/// importances, Hessians). `progress(Stage::Calibrate, done, total)` while computing.
pub fn resolve(source: &Path, job: &QuantizeJob, progress: &mut dyn FnMut(Stage, u64, u64)) -> Result<QuantizeOptions> {
    job.check()?;
    resolve_checked(source, job, progress)
}

/// [`resolve`] for a job already checked.
fn resolve_checked(
    source: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<QuantizeOptions> {
    let want_hessians = matches!(job.method, None | Some(Method::Gptq));
    let stats = match &job.calibration {
        CalibrationInput::Stats(p) => Some(CalibrationStats::read(p)?),
        CalibrationInput::Texts { paths, eval } => {
            Some(calibrate_files(source, paths, eval, want_hessians, &mut |d, t| {
                progress(Stage::Calibrate, d as u64, t as u64)
            })?)
        }
        CalibrationInput::None | CalibrationInput::Imatrix(_) => None,
    };
    let searching = job.method != Some(Method::Rtn);
    let importance = match (&job.calibration, &stats) {
        (CalibrationInput::Imatrix(p), _) => Some(Imatrix::read(p)?.importance()),
        (_, Some(s)) if searching => Some(s.imatrix.importance()),
        _ => None,
    };
    let hessians: Option<HashMap<String, Arc<Hessian>>> = match &stats {
        Some(s) if want_hessians && !s.hessians.is_empty() => Some(s.hessians_by_weight()),
        Some(_) if job.method == Some(Method::Gptq) => {
            return Err(Error::Usage("the statistics file has no Hessians (calibrate with -o FILE.safetensors)".into()))
        }
        _ => None,
    };
    let method = match (job.method, &hessians) {
        (Some(m), _) => m,
        (None, Some(_)) => Method::Gptq,
        (None, None) => Method::Search,
    };
    Ok(job.options(method, importance, hessians))
}

/// Quantizes the GGUF at `source` into `output` as `job` says: calibrate (when asked),
/// plan, quantize, write atomically. Returns the summary with file size and time.
pub fn run(
    source: &Path,
    output: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<QuantizeSummary> {
    job.check()?;
    crate::atomic::check_output(output)?;
    let source = &transformed(source, job, progress)?;
    if job.is_sequential() {
        return run_sequential(source, output, job, progress);
    }
    let (g, opts, recipe) = resolve_and_allocate(source, job, progress)?;
    let mut plan = plan_model(&g, &opts)?;
    plan.recipe = recipe;
    let target = job.target.map(|t| t.bytes(plan.elements));
    let s = write_planned(&g, plan, output, &opts, &mut |d, t| progress(Stage::Quantize, d, t))?;
    if let (Some(want), Some(got)) = (target, s.file_bytes) {
        // The allocation was sized exactly (`planned_file_bytes`): a bug, never a user error.
        debug_assert!(got <= want, "allocated file of {got} bytes over the {want}-byte target");
    }
    Ok(s)
}

/// The source the job quantizes: `source` itself, or with transforms the transformed
/// model ([`crate::transform::transformed_source`], made once and cached). AWQ measures
/// each weight's rounding with the type it will get: with a size target the allocation's
/// probe type for its width, else the mix's plan.
fn transformed(source: &Path, job: &QuantizeJob, progress: &mut dyn FnMut(Stage, u64, u64)) -> Result<PathBuf> {
    if job.transforms.is_none() {
        return Ok(source.to_path_buf());
    }
    let planned: HashMap<String, StorageType> = match job.target {
        Some(_) => HashMap::new(),
        None => {
            let g = crate::hf::open_model(source)?;
            let plan = plan_model_with(&g, &job.options(Method::Search, None, None), true)?;
            plan.tensors.into_iter().map(|t| (t.name, t.target)).collect()
        }
    };
    let native = !job.cost_options.llama_cpp_only;
    let awq_type = |name: &str, cols: usize| match planned.get(name) {
        Some(&t) => t,
        None => crate::allocate::probe_type(&crate::allocate::candidates(cols as u64, native)),
    };
    let key = match &job.calibration {
        CalibrationInput::Texts { paths, eval } => {
            use sha2::{Digest, Sha256};
            let text = read_texts(paths)?;
            let digest: String = crate::hex(&Sha256::digest(text.text.as_bytes()));
            format!("{digest} {} {:?}", eval.ctx, eval.max_chunks)
        }
        _ => String::new(),
    };
    // Both callbacks report through `progress`, one at a time.
    let progress = std::cell::RefCell::new(progress);
    let mut hessians = || match &job.calibration {
        CalibrationInput::Texts { paths, eval } => {
            let stats = calibrate_files(source, paths, eval, true, &mut |d, t| {
                (progress.borrow_mut())(Stage::Calibrate, d as u64, t as u64)
            })?;
            Ok(stats.hessians_by_weight())
        }
        _ => Err(Error::Usage("--transform awq needs calibration texts (--calib)".into())),
    };
    let mut groups = |d: usize, t: usize| (progress.borrow_mut())(Stage::Transform, d as u64, t as u64);
    let dir = crate::zoo::home().join("transformed");
    crate::transform::transformed_source(&dir, source, job.transforms, &key, &awq_type, &mut hessians, &mut groups)
}

/// What [`run`] would write, planned without writing it (`--dry-run`): the same plan and
/// recipe (a sequential job's from [`sequential_plan`]), its stages up to the allocation
/// run as `run` runs them.
pub fn plan_job(
    source: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<QuantizeSummary> {
    job.check()?;
    let source = &transformed(source, job, progress)?;
    if job.is_sequential() {
        return Ok(sequential_plan(source, job, progress)?.2);
    }
    let (g, opts, recipe) = resolve_and_allocate(source, job, progress)?;
    let mut plan = plan_model(&g, &opts)?;
    plan.recipe = recipe;
    Ok(plan)
}

/// The plan's inputs: the opened source, the resolved options and, with a size target,
/// the allocation (its overrides already in the options).
fn resolve_and_allocate(
    source: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<(crate::gguf::GgufFile, QuantizeOptions, Option<Recipe>)> {
    let mut opts = resolve_checked(source, job, progress)?;
    let g = crate::hf::open_model(source)?;
    let Some(target) = job.target else { return Ok((g, opts, None)) };
    let text = calibration_text(job)?;
    let mut table = measure_costs(source, &g, job, &opts, &text, progress)?;
    let elements: u64 = g
        .tensors
        .iter()
        .filter(|t| !crate::gguf::is_companion(&g, &t.name))
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let want = target.bytes(elements);
    // Low-rank branches (at most one per block matrix) come out of the budget first.
    let branches: u64 = job.low_rank.map_or(0, |rank| {
        g.tensors
            .iter()
            .filter(|t| super::block_matrix(&t.name, &t.dims))
            .map(|t| super::branch_bytes_for(&t.dims, rank))
            .sum()
    });
    // A rotated (native) tensor's seed is a metadata entry: counted for every block matrix
    // that may become native (the exact sizing below then spends what is left over).
    let rotations: u64 = if job.incoherence {
        g.tensors
            .iter()
            .filter(|t| super::block_matrix(&t.name, &t.dims))
            .map(|t| {
                crate::gguf::metadata_bytes(&[crate::gguf::incoherence_entry(
                    &t.name,
                    crate::method::incoherence::SEED,
                )])
            })
            .sum()
    } else {
        0
    };
    let fixed = crate::allocate::fixed_bytes(&g, &table) + branches + rotations;
    let user = crate::allocate::overrides_bytes(&opts.overrides);
    let allowance = crate::allocate::worst_overrides_bytes(&table) + user;
    let budget = |allowance: u64| {
        want.checked_sub(fixed + allowance).ok_or_else(|| {
            Error::Usage(format!(
                "a {want}-byte file cannot hold this model: the tensors that stay as they are and the header take {}",
                fixed + allowance
            ))
        })
    };
    // The swaps the allocation hinges on, measured instead of predicted. Called with
    // `refine == 0` too: it also drops measured swaps a cached table holds from earlier
    // runs, so the allocation never depends on the cache.
    let importance = opts.importance.clone().unwrap_or_default();
    crate::allocate::refine(
        &g,
        &mut table,
        &text,
        &importance,
        &job.cost_options,
        budget(allowance)?,
        &opts.overrides,
        g.alignment,
        &mut |d, t| progress(Stage::Refine, d as u64, t as u64),
    )?;
    // First with room for the longest possible overrides, then with what this recipe's
    // own take, as long as the new recipe's still fit in what it was given.
    let mut recipe = crate::allocate::allocate(&table, budget(allowance)?, &opts.overrides, g.alignment)?;
    for _ in 0..3 {
        let used = user + crate::allocate::overrides_bytes(&recipe.overrides());
        let Ok(more) = budget(used) else { break };
        let next = crate::allocate::allocate(&table, more, &opts.overrides, g.alignment)?;
        if next.entries.iter().zip(&recipe.entries).all(|(a, b)| a.ty == b.ty)
            || user + crate::allocate::overrides_bytes(&next.overrides()) > used
        {
            break;
        }
        recipe = next;
    }
    // The mix recorded is the one whose own rules need the fewest overrides; then the
    // bytes the budget's bounds left are spent, sized exactly.
    let user_overrides = opts.overrides.len();
    let fixed = opts.overrides.clone();
    let planned = closest_mix(&g, &mut opts, &recipe);
    let over = |r: &Recipe| r.overrides_over(&|n| planned.get(n).copied());
    let mut size_of = |r: &Recipe| {
        opts.overrides.truncate(user_overrides);
        opts.overrides.extend(over(r));
        crate::quantize::planned_file_bytes(&g, &opts)
    };
    let size = crate::allocate::spend_slack(&table, &mut recipe, &fixed, g.alignment, want, &mut size_of)?;
    opts.overrides.truncate(user_overrides);
    opts.overrides.extend(over(&recipe));
    if size > want {
        return Err(Error::Usage(format!(
            "the allocation's file would take {size} bytes, over the {want}-byte target (a bound in the budget is wrong: please report)"
        )));
    }
    Ok((g, opts, Some(recipe)))
}

/// Of llama.cpp's mixes, the one whose own rules (with the user's overrides in `opts`)
/// already give the most of `recipe`'s tensors their allocated type, counted in the bytes
/// of the overrides the rest need; ties go to the recipe's dominant mix ([`Recipe::mix`]),
/// then to the list's order. Sets `opts.mix` and returns that mix's planned types. On a
/// source kept whole (gemma3 at its own size) this is the source's mix and no override
/// is recorded (36 KB of them once made the file miss the size).
fn closest_mix(g: &crate::gguf::GgufFile, opts: &mut QuantizeOptions, recipe: &Recipe) -> HashMap<String, StorageType> {
    let dominant = recipe.mix();
    let mut best: Option<(u64, bool, crate::plan::Mix, HashMap<String, StorageType>)> = None;
    for &mix in crate::plan::MIXES {
        opts.mix = mix;
        let Ok(plan) = plan_model(g, opts) else { continue };
        let planned: HashMap<String, StorageType> = plan.tensors.into_iter().map(|t| (t.name, t.target)).collect();
        let bytes = crate::allocate::overrides_bytes(&recipe.overrides_over(&|n| planned.get(n).copied()));
        let key = (bytes, mix.name != dominant.name);
        if best.as_ref().is_none_or(|b| key < (b.0, b.1)) {
            best = Some((key.0, key.1, mix, planned));
        }
    }
    match best {
        Some((_, _, mix, planned)) => {
            opts.mix = mix;
            planned
        }
        None => {
            opts.mix = dominant;
            HashMap::new()
        }
    }
}

/// `job`'s calibration texts, read (sensitivities are measured on them).
fn calibration_text(job: &QuantizeJob) -> Result<crate::calibrate::CalibrationText> {
    match &job.calibration {
        CalibrationInput::Texts { paths, .. } => read_texts(paths),
        _ => Err(Error::Usage("measuring sensitivities needs calibration texts (--calib)".into())),
    }
}

/// The allocation's cost table for `job`'s calibration `text` (cached: see
/// [`crate::allocate::cost_table`]), with the importances `opts` resolved.
fn measure_costs(
    source: &Path,
    g: &crate::gguf::GgufFile,
    job: &QuantizeJob,
    opts: &QuantizeOptions,
    text: &crate::calibrate::CalibrationText,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<crate::allocate::CostTable> {
    let CalibrationInput::Texts { eval, .. } = &job.calibration else {
        return Err(Error::Usage("measuring sensitivities needs calibration texts (--calib)".into()));
    };
    let importance = opts.importance.clone().unwrap_or_default();
    let importance_key = format!("calib {} {:?} {}", eval.ctx, eval.max_chunks, text.dataset);
    crate::allocate::cost_table(source, g, text, &importance, &importance_key, &job.cost_options, &mut |step, d, t| {
        let stage = match step {
            crate::allocate::CostStep::Sensitivity => Stage::Sensitivity,
            crate::allocate::CostStep::Candidates => Stage::Candidates,
        };
        progress(stage, d as u64, t as u64)
    })
}

/// The cost table alone (for `lowbit sensitivity`), and `validate` real swaps checked
/// against it (none with 0). The job needs calibration texts.
pub fn sensitivities(
    source: &Path,
    job: &QuantizeJob,
    validate: usize,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<(crate::allocate::CostTable, Option<crate::allocate::Validation>)> {
    let source = &transformed(source, job, progress)?;
    // Only importances are needed, not Hessians.
    let light = QuantizeJob { method: Some(Method::Search), ..job.clone() };
    let opts = resolve_checked(source, &light, progress)?;
    let g = crate::hf::open_model(source)?;
    let text = calibration_text(job)?;
    let table = measure_costs(source, &g, job, &opts, &text, progress)?;
    if validate == 0 {
        return Ok((table, None));
    }
    let importance = opts.importance.clone().unwrap_or_default();
    let v = crate::allocate::validate(&g, &table, &text, &importance, &job.cost_options, validate, &mut |d, t| {
        progress(Stage::Sensitivity, d as u64, t as u64)
    })?;
    Ok((table, Some(v)))
}

/// A sequential job's plan (and its resolved options): with a size target the allocation
/// comes first, on importances alone (the sensitivities do not need Hessians); sequential
/// GPTQ then follows the recipe. What `--dry-run` prints and the real run writes.
fn sequential_plan(
    source: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<(crate::gguf::GgufFile, QuantizeOptions, QuantizeSummary)> {
    let mut opts = job.options(Method::Gptq, None, None);
    let recipe = match job.target {
        Some(_) => {
            let light = QuantizeJob {
                method: Some(Method::Search),
                sequential: Some(false),
                calibration: allocation_calibration(&job.calibration),
                ..job.clone()
            };
            let (_, allocated, recipe) = resolve_and_allocate(source, &light, progress)?;
            opts.mix = allocated.mix;
            opts.overrides = allocated.overrides;
            recipe
        }
        None => None,
    };
    let g = crate::hf::open_model(source)?;
    let mut plan = plan_model_with(&g, &opts, true)?;
    plan.recipe = recipe;
    plan.method = super::SEQUENTIAL_GPTQ.into();
    Ok((g, opts, plan))
}

/// Sequential GPTQ: plan once ([`sequential_plan`]; an importance matrix will be there),
/// quantize the blocks on the calibration text, then write the file with the rest encoded
/// as usual.
fn run_sequential(
    source: &Path,
    output: &Path,
    job: &QuantizeJob,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<QuantizeSummary> {
    let CalibrationInput::Texts { paths, eval } = &job.calibration else {
        return Err(Error::Usage("--sequential needs calibration texts (--calib)".into()));
    };
    let (g, mut opts, plan) = sequential_plan(source, job, progress)?;
    let text = read_texts(paths)?;
    // Finished blocks are kept in a work folder beside the output: a rerun of the same
    // command after a crash or kill continues from them.
    let key = sequential_key(source, &plan.tensors, &text, eval, &job.method_options);
    let (checkpoint, done) = Checkpoint::open(output, key)?;
    let mut lm = crate::model::load_lm_from(&g, LoadOptions::default())?;
    let r = crate::sequential::sequential_gptq(
        &mut lm,
        &g,
        &plan.tensors,
        &text,
        eval,
        &job.method_options,
        &checkpoint,
        done,
        job.memory,
        &mut |d, t, tokens, plan| {
            progress(Stage::Sequential { tokens: tokens as u64, memory: *plan }, d as u64, t as u64)
        },
    )
    .inspect_err(|_| checkpoint.discard_if_empty())?;
    drop(lm);
    opts.importance = Some(r.imatrix.importance());
    opts.pre_encoded = r.encoded;
    let mut summary = write_planned(&g, plan, output, &opts, &mut |d, t| progress(Stage::Quantize, d, t))?;
    checkpoint.remove()?;
    summary.memory = Some(r.memory);
    Ok(summary)
}

/// Calibration chunks at most that the allocation's importances come from when sequential
/// GPTQ quantizes the file: there they only weight each candidate type's error (the file
/// is quantized with the sequential pass's own statistics), and the mean squared input of
/// a column settles long before BENCHMARKS.md's 64 chunks. Measured on smollm2-135m,
/// `quantize --size 75MB --calib austen` (KLD on wiki.valid 40 × 512 against the source):
/// importances from 64 chunks 0.1330, from 16 chunks 0.1305 (PPL 19.45 and 19.38), the
/// calibration for them 61 s → 17 s. The file's own GPTQ still runs on all the chunks.
pub const ALLOCATION_CHUNKS: usize = 16;

/// `calibration` with at most [`ALLOCATION_CHUNKS`] chunks, for the allocation's
/// importances ahead of sequential GPTQ.
fn allocation_calibration(calibration: &CalibrationInput) -> CalibrationInput {
    match calibration {
        CalibrationInput::Texts { paths, eval } => {
            let chunks = eval.max_chunks.map_or(ALLOCATION_CHUNKS, |c| c.min(ALLOCATION_CHUNKS));
            CalibrationInput::Texts {
                paths: paths.clone(),
                eval: EvalOptions { max_chunks: Some(chunks), ..eval.clone() },
            }
        }
        other => other.clone(),
    }
}

/// What decides a sequential run's result, hashed: a work folder made for another key is
/// not resumed.
fn sequential_key(
    source: &Path,
    plan: &[crate::plan::PlannedTensor],
    text: &crate::calibrate::CalibrationText,
    eval: &EvalOptions,
    options: &crate::method::MethodOptions,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update(crate::eval::file_identity(source));
    for t in plan {
        h.update(format!("{}={};", t.name, t.target));
    }
    h.update(text.text.as_bytes());
    h.update(format!("{} {:?} {:?}", eval.ctx, eval.max_chunks, options));
    crate::hex(&h.finalize())
}
