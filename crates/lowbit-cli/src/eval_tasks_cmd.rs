//! `lowbit eval --task hellaswag` and `lowbit eval --generate`: task accuracy and
//! generation similarity, with progress bars (the arguments live in `eval_cmd`).

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit::model::load_lm;

use crate::eval_cmd::{is_saved_reference, read_text, resume_for, EvalArgs, Kept};

/// `--task hellaswag`: task accuracy (and agreement with a reference model).
pub fn run_hellaswag(args: &EvalArgs) -> Result<()> {
    use lowbit::eval::hellaswag;
    if args.save_logits.is_some() {
        anyhow::bail!("--save-logits applies to perplexity evaluation, not to --task");
    }
    let path = lowbit::data::resolve_one(args.text.as_deref().unwrap_or(std::path::Path::new("hellaswag")))?;
    let all = hellaswag::parse(&read_text(&path)?, &path)?;
    let available = all.len();
    let tasks = hellaswag::select(all, if args.tasks == 0 { usize::MAX } else { args.tasks });
    let (load, load_ref) = args.load_options();
    let reference = match &args.reference {
        Some(r) if is_saved_reference(r) => {
            anyhow::bail!("{r}: a saved-logits file cannot be a task reference; pass the reference model")
        }
        Some(r) => Some(load_lm(&crate::resolve_model(r)?, load_ref)?),
        None => None,
    };
    let model_path = crate::resolve_model(&args.model)?;
    eprintln!("lowbit: loading {}", model_path.display());
    let lm = load_lm(&model_path, load)?;
    let bar = ProgressBar::new(tasks.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("hellaswag [{bar:30}] {pos}/{len} tasks, {per_sec}, ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut log = crate::LogProgress::new("hellaswag");
    // Finished tasks are journaled: an interrupted run continues where it stopped.
    let resume = resume_for(args, &model_path, "hellaswag ");
    let mut kept = Kept::new("tasks");
    let report = hellaswag::hellaswag(&lm, reference.as_ref(), &tasks, Some(&resume), &mut |done, total| {
        kept.update(&bar, done, total);
        log.update(done as u64, total as u64, "tasks");
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let report = kept.result(report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let pct = |a: hellaswag::Accuracy| format!("{:.2} ± {:.2} %", 100.0 * a.value, 100.0 * a.err);
    println!("model:      {}", model_path.display());
    println!("tasks:      {} of {available} in {}", report.tasks, path.display());
    println!("acc_norm:   {}   (mean token log-probability; llama.cpp's HellaSwag score)", pct(report.acc_norm));
    println!("acc:        {}   (summed log-probability)", pct(report.acc));
    if let (Some(r), Some(agree)) = (report.reference_acc_norm, report.agreement) {
        println!("reference acc_norm: {}", pct(r));
        println!("same choice as the reference: {:.2} %", 100.0 * agree);
    }
    println!("speed:      {:.2} tasks/s", report.tasks_per_second);
    Ok(())
}

/// `--generate PROMPTS`: greedy continuations compared with the reference's.
pub fn run_generate(args: &EvalArgs) -> Result<()> {
    use lowbit::eval::generation;
    if args.save_logits.is_some() || args.task.is_some() {
        anyhow::bail!("--generate cannot be combined with --save-logits or --task");
    }
    let path = lowbit::data::resolve_one(args.generate.as_deref().expect("checked by the caller"))?;
    let text = read_text(&path)?;
    let limit = if args.prompts == 0 { usize::MAX } else { args.prompts };
    let prompts: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(limit).collect();
    if prompts.is_empty() {
        anyhow::bail!("{}: no prompts (one per line)", path.display());
    }
    let Some(reference) = args.reference.as_deref() else {
        anyhow::bail!("--generate compares with a reference: pass --reference (e.g. the unquantized model)")
    };
    if is_saved_reference(reference) {
        anyhow::bail!("{reference}: a saved-logits file cannot be a generation reference; pass the reference model");
    }
    let (load, load_ref) = args.load_options();
    let ref_lm = load_lm(&crate::resolve_model(reference)?, load_ref)?;
    let model_path = crate::resolve_model(&args.model)?;
    let lm = load_lm(&model_path, load)?;
    if lm.model.vocab_size() != ref_lm.model.vocab_size() {
        anyhow::bail!("the reference and the model have different vocabularies: their tokens cannot be compared");
    }
    let embedder = lowbit::model::bert::Bert::open(&crate::resolve_model("minilm-l6")?)?;
    let run = |lm: &lowbit::model::LoadedLm, label: &str| -> Result<Vec<generation::Continuation>> {
        let bar = ProgressBar::new(prompts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!("{label} [{{bar:30}}] {{pos}}/{{len}} prompts, ETA {{eta}}"))
                .expect("valid template")
                .progress_chars("=> "),
        );
        let mut log = crate::LogProgress::new(label);
        let out = generation::continue_prompts(lm, &prompts, args.n, &mut |d, t| {
            log.update(d as u64, t as u64, "prompts");
            bar.set_position(d as u64);
        });
        bar.finish_and_clear();
        Ok(out?)
    };
    let theirs = run(&ref_lm, "reference")?;
    let ours = run(&lm, "model")?;
    let r = generation::compare(&ours, &theirs, args.n, Some(&embedder))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("model:      {}", model_path.display());
    println!("prompts:    {} from {}, {} tokens each (greedy)", r.prompts, path.display(), r.max_tokens);
    println!("exact match:       {:.2} %", 100.0 * r.exact_match);
    println!("first divergence:  mean {:.1} tokens, median {:.1}", r.first_divergence_mean, r.first_divergence_median);
    println!("ROUGE-L F1:        {:.4}", r.rouge_l);
    if let Some(s) = r.semantic_similarity {
        println!("semantic (MiniLM): {s:.4} mean cosine");
    }
    Ok(())
}
