//! HellaSwag task accuracy with `llama-perplexity --hellaswag`'s conventions
//! (tools/perplexity/perplexity.cpp, `hellaswag_score`), so the two tools' scores on the
//! same file can be compared:
//!
//! - the data file holds 6 lines per task: context, the gold ending's index, four endings
//!   (lm-evaluation-harness's preprocessing; `data/hellaswag/`);
//! - with fewer tasks than the file holds, tasks are drawn at random exactly as llama.cpp
//!   draws them (`std::mt19937` seeded with 1, libstdc++'s `uniform_int_distribution`,
//!   each drawn task removed from the pool), so `--tasks 400` scores the same 400 tasks;
//! - each ending is scored as `context + " " + ending`, tokenised with BOS; the tokens
//!   after the four sequences' common prefix are the ending's; its score is the mean
//!   log-probability of those tokens (llama.cpp's "acc_norm"). lowbit also reports the
//!   choice by their sum ("acc", lm-evaluation-harness's unnormalised accuracy).
//!
//! The common prefix runs once per task; each ending continues from a copy of its KV
//! cache. Tasks run in parallel; each task's result is independent of the thread count.
//! Finished tasks are journaled, so an interrupted run resumes (`TaskJournal`).

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::LoadedLm;

/// One HellaSwag task.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// The context (activity label, ": ", context).
    pub context: String,
    /// Index of the correct ending.
    pub gold: usize,
    /// The four candidate endings.
    pub endings: [String; 4],
}

/// Reads llama.cpp's HellaSwag text format (6 lines per task), naming `path` in errors.
pub fn parse(text: &str, path: &std::path::Path) -> Result<Vec<Task>> {
    let lines: Vec<&str> = text.lines().collect();
    let bad = |what: String| Error::Format { path: path.to_path_buf(), what };
    if lines.is_empty() || !lines.len().is_multiple_of(6) {
        return Err(bad(format!(
            "{} lines: a HellaSwag file has 6 per task (context, gold index, four endings)",
            lines.len()
        )));
    }
    lines
        .chunks_exact(6)
        .enumerate()
        .map(|(i, l)| {
            let gold = l[1].trim().parse::<usize>().ok().filter(|&g| g < 4).ok_or_else(|| {
                bad(format!("task {} (line {}): gold ending '{}' is not 0, 1, 2 or 3", i + 1, 6 * i + 2, l[1]))
            })?;
            Ok(Task { context: l[0].to_string(), gold, endings: [l[2], l[3], l[4], l[5]].map(str::to_string) })
        })
        .collect()
}

/// The 32-bit Mersenne Twister (`std::mt19937`), for llama.cpp's task draw. Written here
/// rather than taken from a crate because the draw must also reproduce libstdc++'s
/// `uniform_int_distribution`, which no crate does.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..n` as libstdc++ (GCC ≥ 11) draws it from a 32-bit
    /// engine: Lemire's multiply-and-shift with rejection of the biased low products.
    fn below(&mut self, n: u32) -> u32 {
        let mut product = self.next() as u64 * n as u64;
        let mut low = product as u32;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                product = self.next() as u64 * n as u64;
                low = product as u32;
            }
        }
        (product >> 32) as u32
    }
}

/// The tasks llama.cpp scores for `--hellaswag-tasks n`: all of them, in order, when `n`
/// covers the file; otherwise `n` drawn at random without replacement, in draw order.
pub fn select(mut all: Vec<Task>, n: usize) -> Vec<Task> {
    if n >= all.len() {
        return all;
    }
    let mut rng = Mt19937::new(1);
    (0..n).map(|_| all.remove(rng.below(all.len() as u32) as usize)).collect()
}

/// A task's scores for its four endings under one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskScores {
    /// Sum of the ending tokens' log-probabilities.
    pub sum: [f64; 4],
    /// Their mean (llama.cpp's score).
    pub mean: [f64; 4],
}

impl TaskScores {
    /// The ending with the largest mean log-probability (first on ties, as llama.cpp).
    pub fn choice_norm(&self) -> usize {
        first_max(&self.mean)
    }

    /// The ending with the largest summed log-probability.
    pub fn choice(&self) -> usize {
        first_max(&self.sum)
    }
}

fn first_max(v: &[f64; 4]) -> usize {
    (1..4).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Scores one task's four endings under `lm`.
pub fn score_task(lm: &LoadedLm, task: &Task) -> Result<TaskScores> {
    Ok(score_tasks(lm, std::slice::from_ref(task))?.remove(0))
}

/// One task's tokens: the four `context + " " + ending` sequences and the length of their
/// common prefix (run once; each ending keeps at least one token of its own).
fn tokenize_task(lm: &LoadedLm, task: &Task) -> Result<(Vec<Vec<u32>>, usize)> {
    let seqs: Vec<Vec<u32>> = task
        .endings
        .iter()
        .map(|e| lm.tokenizer.encode(&format!("{} {e}", task.context), true))
        .collect::<Result<_>>()?;
    let min_len = seqs.iter().map(Vec::len).min().unwrap_or(0);
    let mut prefix = 0;
    while prefix < min_len && seqs.iter().all(|s| s[prefix] == seqs[0][prefix]) {
        prefix += 1;
    }
    let prefix = prefix.min(min_len.saturating_sub(1));
    if prefix == 0 {
        return Err(Error::Usage(format!("HellaSwag task '{}': nothing to condition the endings on", task.context)));
    }
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(trained) = lm.context_length.filter(|&c| longest > c) {
        return Err(Error::Usage(format!(
            "a HellaSwag task needs {longest} tokens, over the model's context of {trained}"
        )));
    }
    Ok((seqs, prefix))
}

/// Bytes of logits computed at once when scoring: each pass over the output matrix serves
/// as many rows as fit (512 of smollm2's 49k vocabulary, 128 of Gemma 3's 262k), so the
/// matrix is unpacked rarely and a batch never holds all its logits.
const LOGIT_BYTES: usize = 128 << 20;

/// Log-probabilities of targets under the logits of each hidden row: row `i` scores
/// `targets[i·per_row..(i+1)·per_row]`, its normaliser computed once.
fn target_log_probs(lm: &LoadedLm, hidden: &[f32], targets: &[u32], per_row: usize) -> Vec<f64> {
    let (d, v) = (lm.model.hidden_size(), lm.model.vocab_size());
    let rows = (LOGIT_BYTES / (4 * v.max(1))).clamp(8, 512);
    let mut out = Vec::with_capacity(targets.len());
    for (h, tg) in hidden.chunks(rows * d).zip(targets.chunks(rows * per_row)) {
        let logits = lm.model.logits(h, tg.len() / per_row);
        let per: Vec<Vec<f64>> = logits
            .par_chunks_exact(v)
            .zip(tg.par_chunks_exact(per_row))
            .map(|(row, ts)| {
                let (max, ln_sum) = super::log_sum_exp_parts(row);
                ts.iter().map(|&t| row[t as usize] as f64 - max - ln_sum).collect()
            })
            .collect();
        out.extend(per.into_iter().flatten());
    }
    out
}

/// Scores several tasks' endings under `lm` in two batched passes: every task's common
/// prefix together, then all endings together, each continuing from a copy of its task's
/// prefix cache. A task's scores are those of scoring it alone up to the float summation
/// order of the batched products.
pub fn score_tasks(lm: &LoadedLm, tasks: &[Task]) -> Result<Vec<TaskScores>> {
    let tokenized: Vec<(Vec<Vec<u32>>, usize)> =
        tasks.par_iter().map(|t| tokenize_task(lm, t)).collect::<Result<_>>()?;
    let d = lm.model.hidden_size();
    let mut caches: Vec<_> =
        tokenized.iter().map(|(seqs, _)| lm.model.new_cache(seqs.iter().map(Vec::len).max().unwrap_or(0))).collect();
    // Pass 1: the prefixes; each one's last row predicts its endings' first tokens.
    let hidden = {
        let mut batch: Vec<(&[u32], &mut _)> =
            tokenized.iter().zip(caches.iter_mut()).map(|((seqs, p), c)| (&seqs[0][..*p], c)).collect();
        lm.model.forward_batch(&mut batch)?
    };
    let mut last_rows = Vec::with_capacity(tasks.len() * d);
    let mut row = 0;
    for (_, p) in &tokenized {
        row += p;
        last_rows.extend_from_slice(&hidden[(row - 1) * d..row * d]);
    }
    let firsts: Vec<u32> = tokenized.iter().flat_map(|(seqs, p)| seqs.iter().map(move |s| s[*p])).collect();
    let first_lp = target_log_probs(lm, &last_rows, &firsts, 4);
    crate::interrupt::check()?;
    // Pass 2: every ending's tokens but its last, each predicting the next one.
    let mut ending_caches: Vec<_> = caches.iter().flat_map(|c| std::iter::repeat_n(c, 4).cloned()).collect();
    let rests: Vec<&[u32]> =
        tokenized.iter().flat_map(|(seqs, p)| seqs.iter().map(move |s| &s[*p..s.len() - 1])).collect();
    let hidden = {
        let mut batch: Vec<(&[u32], &mut _)> = rests.iter().copied().zip(ending_caches.iter_mut()).collect();
        lm.model.forward_batch(&mut batch)?
    };
    let targets: Vec<u32> =
        tokenized.iter().flat_map(|(seqs, p)| seqs.iter().flat_map(move |s| s[*p + 1..].iter().copied())).collect();
    let rest_lp = target_log_probs(lm, &hidden, &targets, 1);
    let mut at = 0;
    Ok(tokenized
        .iter()
        .enumerate()
        .map(|(ti, (seqs, p))| {
            let mut scores = TaskScores { sum: [0.0; 4], mean: [0.0; 4] };
            for (s, seq) in seqs.iter().enumerate() {
                let n = seq.len() - p - 1;
                let total = rest_lp[at..at + n].iter().fold(first_lp[ti * 4 + s], |a, &b| a + b);
                at += n;
                scores.sum[s] = total;
                scores.mean[s] = total / (seq.len() - p) as f64;
            }
            scores
        })
        .collect())
}

/// An accuracy and its standard error √(p(1−p)/(n−1)).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Accuracy {
    /// Share of tasks answered correctly.
    pub value: f64,
    /// Its standard error.
    pub err: f64,
}

impl Accuracy {
    fn of(hits: usize, n: usize) -> Accuracy {
        let p = hits as f64 / n.max(1) as f64;
        Accuracy { value: p, err: if n > 1 { (p * (1.0 - p) / (n - 1) as f64).sqrt() } else { 0.0 } }
    }
}

/// What `hellaswag` measured.
#[derive(Clone, Debug, Serialize)]
pub struct HellaswagReport {
    /// Tasks scored.
    pub tasks: usize,
    /// Accuracy choosing by mean token log-probability (llama.cpp's score, "acc_norm").
    pub acc_norm: Accuracy,
    /// Accuracy choosing by summed log-probability ("acc").
    pub acc: Accuracy,
    /// The reference's acc_norm on the same tasks, when one was given.
    pub reference_acc_norm: Option<Accuracy>,
    /// Share of tasks where model and reference choose the same ending (by mean).
    pub agreement: Option<f64>,
    /// Tasks per second (model and reference together).
    pub tasks_per_second: f64,
    /// Tasks taken from an interrupted earlier run of the same evaluation.
    pub resumed_tasks: usize,
    /// The model's chosen ending per task (by mean), in task order (in `--json`, so two
    /// runs on the same draw can be compared choice by choice afterwards).
    pub choices: Vec<usize>,
}

/// Tasks scored between progress reports and journal writes, and batched through the
/// model together (prefixes in one pass, endings in another). Measured with `lowbit eval
/// --task hellaswag --tasks 100 --llama-cpp-numerics` (64 for gemma3): one task at a time
/// (tasks in parallel) ran smollm2 at 2.07 and gemma3 at 0.55 tasks/s; batches of 32 run
/// 2.85 and 1.57 (16: gemma3 1.43 tasks/s, peak 0.93 GB instead of 1.37 GB — the
/// endings' KV caches).
const TASKS_PER_BATCH: usize = 32;

/// Bytes of one journaled task: the model's 8 scores, then the reference's (NaN: none).
const TASK_BYTES: usize = 16 * 8;

/// Finished tasks kept on disk, so an interrupted run continues where it stopped:
/// `scores.bin` in `ROOT/hellaswag-<key>/`, one [`TASK_BYTES`] record per task, appended
/// and synced batch by batch; a torn tail is cut back to whole records; removed when the
/// run finishes. The key hashes the caller's identity (models, numerics) and the tasks.
struct TaskJournal {
    dir: std::path::PathBuf,
    file: std::fs::File,
}

type Scored = (TaskScores, Option<TaskScores>);

impl TaskJournal {
    fn open(r: &super::Resume, tasks: &[Task], with_reference: bool) -> Result<(TaskJournal, Vec<Scored>)> {
        use sha2::{Digest, Sha256};
        use std::io::{Read, Seek};
        let mut h = Sha256::new();
        h.update(r.identity.as_bytes());
        h.update(format!("{} reference {with_reference}", env!("CARGO_PKG_VERSION")));
        for t in tasks {
            h.update(format!("{}\n{}\n{}\n", t.context, t.gold, t.endings.join("\n")));
        }
        let key: String = crate::hex(&h.finalize()[..8]);
        let dir = r.root.join(format!("hellaswag-{key}"));
        if r.fresh && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join("scores.bin");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
        let done = (bytes.len() / TASK_BYTES).min(tasks.len());
        file.set_len((done * TASK_BYTES) as u64).map_err(|e| Error::io(&path, e))?;
        file.seek(std::io::SeekFrom::End(0)).map_err(|e| Error::io(&path, e))?;
        let f = |b: &[u8], i: usize| f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let scores = |b: &[u8], at: usize| TaskScores {
            sum: [f(b, at), f(b, at + 1), f(b, at + 2), f(b, at + 3)],
            mean: [f(b, at + 4), f(b, at + 5), f(b, at + 6), f(b, at + 7)],
        };
        let kept = bytes[..done * TASK_BYTES]
            .chunks_exact(TASK_BYTES)
            .map(|b| (scores(b, 0), (!f(b, 8).is_nan()).then(|| scores(b, 8))))
            .collect();
        Ok((TaskJournal { dir, file }, kept))
    }

    fn append(&mut self, scored: &[Scored]) -> Result<()> {
        use std::io::Write;
        let mut bytes = Vec::with_capacity(scored.len() * TASK_BYTES);
        for (own, theirs) in scored {
            let nan = TaskScores { sum: [f64::NAN; 4], mean: [f64::NAN; 4] };
            for s in [own, theirs.as_ref().unwrap_or(&nan)] {
                s.sum.iter().chain(&s.mean).for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
            }
        }
        let path = self.dir.join("scores.bin");
        self.file.write_all(&bytes).and_then(|_| self.file.sync_data()).map_err(|e| Error::io(&path, e))
    }

    fn finish(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// Scores `tasks` under `lm` (and `reference`, when given); `progress(done, total)`.
/// With `resume`, finished tasks are journaled and an interrupted run continues from them.
pub fn hellaswag(
    lm: &LoadedLm,
    reference: Option<&LoadedLm>,
    tasks: &[Task],
    resume: Option<&super::Resume>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<HellaswagReport> {
    if tasks.is_empty() {
        return Err(Error::Usage("no HellaSwag tasks to score".into()));
    }
    if let Some(r) = reference.filter(|r| r.model.vocab_size() != lm.model.vocab_size()) {
        return Err(Error::Usage(format!(
            "the reference has a vocabulary of {} tokens, the model {}: they cannot be compared",
            r.model.vocab_size(),
            lm.model.vocab_size()
        )));
    }
    let start = std::time::Instant::now();
    let (mut journal, mut results) = match resume {
        Some(r) => {
            let (j, kept) = TaskJournal::open(r, tasks, reference.is_some())?;
            (Some(j), kept)
        }
        None => (None, Vec::with_capacity(tasks.len())),
    };
    let resumed = results.len();
    progress(resumed, tasks.len());
    for batch in tasks[resumed..].chunks(TASKS_PER_BATCH) {
        crate::interrupt::check()?;
        let ours = score_tasks(lm, batch)?;
        let theirs = match reference {
            Some(r) => score_tasks(r, batch)?.into_iter().map(Some).collect(),
            None => vec![None; batch.len()],
        };
        let scored: Vec<Scored> = ours.into_iter().zip(theirs).collect();
        if let Some(j) = journal.as_mut() {
            j.append(&scored)?;
        }
        results.extend(scored);
        progress(results.len(), tasks.len());
    }
    if let Some(j) = journal {
        j.finish()?;
    }
    let n = tasks.len();
    let hits = |choice: fn(&TaskScores) -> usize, reference: bool| {
        let picked = |r: &Scored| if reference { r.1 } else { Some(r.0) };
        results.iter().zip(tasks).filter(|(r, t)| picked(r).is_some_and(|s| choice(&s) == t.gold)).count()
    };
    Ok(HellaswagReport {
        tasks: n,
        acc_norm: Accuracy::of(hits(TaskScores::choice_norm, false), n),
        acc: Accuracy::of(hits(TaskScores::choice, false), n),
        reference_acc_norm: reference.map(|_| Accuracy::of(hits(TaskScores::choice_norm, true), n)),
        agreement: reference.map(|_| {
            let same = results.iter().filter(|(a, b)| b.is_some_and(|b| b.choice_norm() == a.choice_norm())).count();
            same as f64 / n as f64
        }),
        tasks_per_second: (n - resumed) as f64 / start.elapsed().as_secs_f64().max(1e-9),
        resumed_tasks: resumed,
        choices: results.iter().map(|r| r.0.choice_norm()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_matches_libstdcpp() {
        // std::mt19937 rng(1): its first outputs, and the first twelve task indices
        // llama-perplexity draws from 10,042 tasks (printed by a C++ program built with
        // GCC 12's libstdc++, the compiler the tests build llama.cpp with).
        let mut rng = Mt19937::new(1);
        assert_eq!((rng.next(), rng.next()), (1_791_095_845, 4_282_876_139));
        let mut rng = Mt19937::new(1);
        let drawn: Vec<u32> = (0..12).map(|i| rng.below(10_042 - i)).collect();
        assert_eq!(drawn, [4187, 10012, 7232, 9361, 1, 1285, 3034, 10025, 1472, 2368, 926, 3978]);
    }

    #[test]
    fn parse_refuses_a_ragged_file_and_a_bad_gold_index() {
        let p = std::path::Path::new("hs.txt");
        let ok = "ctx\n2\na\nb\nc\nd\n";
        assert_eq!(parse(ok, p).unwrap()[0].gold, 2);
        let err = parse("ctx\n2\na\nb\nc\n", p).unwrap_err().to_string();
        assert!(err.contains("hs.txt") && err.contains("6 per task"), "{err}");
        let err = parse("ctx\n7\na\nb\nc\nd\n", p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn selection_without_replacement_keeps_all_when_asked_for_all() {
        let tasks: Vec<Task> = (0..10)
            .map(|i| Task { context: format!("c{i}"), gold: 0, endings: ["a", "b", "c", "d"].map(String::from) })
            .collect();
        assert_eq!(select(tasks.clone(), 10), tasks);
        let some = select(tasks, 5);
        let mut names: Vec<_> = some.iter().map(|t| t.context.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 5);
    }
}
