//! Measuring a model: perplexity with `llama-perplexity`'s conventions, and KL
//! divergence / top-1 agreement against a reference model on the same scored tokens.
//! An interrupted evaluation keeps its finished chunks and resumes ([`journal`]).

pub mod generation;
pub mod hellaswag;
mod journal;
mod stats;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::LoadedLm;
use crate::saved_logits::{LogitsFormat, LogitsHeader, LogitsReader, LogitsWriter};
use journal::{Journal, Row};
pub use stats::{DeltaP, KldReport, Percentiles};

/// Where the reference distributions come from.
pub enum Reference<'a> {
    /// Run this model on the same chunks.
    Model(&'a LoadedLm),
    /// Read them from a file written by an earlier `--save-logits` run, or by
    /// `llama-perplexity --kl-divergence-base` (whose stored tokens are then evaluated).
    Saved(&'a mut LogitsReader),
}

/// Where to save the evaluated model's own distributions, for later use as a reference.
pub struct SaveLogits<'a> {
    /// Output file (written atomically).
    pub path: &'a std::path::Path,
    /// How the model is named in the file's header.
    pub model_name: String,
    /// lowbit's layout, or llama.cpp's `--kl-divergence-base` file.
    pub format: LogitsFormat,
}

/// A batch of reference rows, as the per-row comparison needs them.
enum ReferenceBatch {
    None,
    Logits(Vec<f32>),
    Records(Vec<u8>, LogitsFormat),
}

/// KL(P‖Q) from log-probabilities, skipping entries of negligible P.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(&p, &q)| if p > -700.0 { p.exp() * (p - q) } else { 0.0 }).sum::<f64>().max(0.0)
}

/// sha256 of token ids (little-endian u32), hex.
fn tokens_sha256(tokens: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    crate::hex(&h.finalize())
}

/// Evaluation settings.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens per chunk (llama.cpp `-c`).
    pub ctx: usize,
    /// Evaluate at most this many chunks (llama.cpp `--chunks`).
    pub max_chunks: Option<usize>,
    /// Keep finished chunks so an interrupted run resumes (see [`Resume`]).
    pub resume: Option<Resume>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { ctx: 512, max_chunks: Some(40), resume: None }
    }
}

/// Where an evaluation keeps its finished chunks, and what identifies it.
#[derive(Clone, Debug)]
pub struct Resume {
    /// Folder holding one journal folder per evaluation (e.g. `$LOWBIT_HOME/resume`).
    pub root: std::path::PathBuf,
    /// Everything outside the text that decides the result: the model's and reference's
    /// identities ([`file_identity`]) and the numerics. Part of the journal's name, so a
    /// changed input starts afresh.
    pub identity: String,
    /// Discard what an earlier run kept and start over.
    pub fresh: bool,
}

/// A cheap identity of a model file or folder: its absolute path, and every file's size
/// and modification time (hashing a many-GB model on every run would cost more than the
/// work it protects).
pub fn file_identity(path: &std::path::Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p).map_or_else(
            |_| "missing".to_string(),
            |m| {
                let t = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                format!("{}:{}", m.len(), t.map_or(0, |d| d.as_nanos()))
            },
        )
    };
    let mut id = format!("{}={}", abs.display(), stamp(&abs));
    if abs.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&abs).into_iter().flatten().flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            id.push_str(&format!(";{}={}", n.display(), stamp(&n)));
        }
    }
    id
}

/// What `evaluate` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Perplexity.
    pub ppl: f64,
    /// Its standard error (as llama-perplexity computes it).
    pub ppl_err: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Tokens scored in total.
    pub scored_tokens: usize,
    /// Divergence from the reference, when one was given.
    pub kld: Option<KldReport>,
    /// Tokens processed per second by the evaluated model (prompt processing).
    pub tokens_per_second: f64,
    /// Perplexity over the first 1, 2, … chunks (llama-perplexity's `[i]` values).
    pub running_ppl: Vec<f64>,
    /// Chunks taken from an interrupted earlier run of the same evaluation.
    pub resumed_chunks: usize,
}

/// A logits row's normaliser in two parts, in f64: its largest value and ln Σ exp(v − max)
/// (log-sum-exp = their sum). Shared by every log-probability lowbit computes.
pub(crate) fn log_sum_exp_parts(row: &[f32]) -> (f64, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    (max, sum.ln())
}

/// log-softmax of one logits row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let (max, ln_sum) = log_sum_exp_parts(row);
    let lse = max + ln_sum;
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// Final hidden states of one chunk, run from an empty cache.
fn chunk_hidden(lm: &LoadedLm, chunk: &[u32]) -> Result<Vec<f32>> {
    let mut cache = lm.model.new_cache(chunk.len());
    lm.model.forward_hidden(chunk, &mut cache)
}

/// Rows of hidden states projected to the vocabulary per batch, so a 262k-token
/// vocabulary never needs a full ctx × vocab buffer.
const LOGIT_ROWS_PER_BATCH: usize = 32;

/// Refuses saved distributions that were not computed on this run's chunks (`tokens`:
/// the text's tokens before BOS is put first in each chunk).
fn check_saved_reference(r: &LogitsReader, header: &LogitsHeader, tokens: &[u32]) -> Result<()> {
    let h = &r.header;
    let n = header.ctx * header.chunks;
    let why = if h.ctx != header.ctx {
        Some(format!("they were saved with --ctx {}, this run uses {}", h.ctx, header.ctx))
    } else if h.chunks != header.chunks {
        Some(format!("they hold {} chunks, this run evaluates {}: use --chunks {}", h.chunks, header.chunks, h.chunks))
    } else if match &r.tokens {
        // llama.cpp's files hold the tokens themselves, lowbit's a hash of them.
        Some(t) => t.len() < n || tokens.len() < n || t[..n] != tokens[..n],
        None => h.tokens_sha256 != header.tokens_sha256,
    } {
        Some("they were computed on different tokens (another text or tokenizer)".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Usage(format!("{}: cannot be the reference here: {why}", r.path().display()))),
        None => Ok(()),
    }
}

/// Per scored token: its negative log-likelihood; with a reference, (KL divergence,
/// whether the top-1 tokens agree, the reference's nll); the encoded record when saving.
type RowStats = (Row, Vec<u8>);

/// Scores `targets.len()` rows of `logits` (vocabulary `v`), row `i` predicting
/// `targets[i]`, against the reference batch; rows in parallel, results in row order.
fn score_rows(
    logits: &[f32],
    reference: &ReferenceBatch,
    targets: &[u32],
    v: usize,
    save: Option<LogitsFormat>,
) -> Vec<RowStats> {
    (0..targets.len())
        .into_par_iter()
        .map(|i| {
            let row = &logits[i * v..(i + 1) * v];
            let lp = log_softmax(row);
            let target = targets[i] as usize;
            let top = argmax(row);
            let kl = match reference {
                ReferenceBatch::None => None,
                ReferenceBatch::Logits(rl) => {
                    let rrow = &rl[i * v..(i + 1) * v];
                    let rlp = log_softmax(rrow);
                    Some((kl_divergence(&rlp, &lp), argmax(rrow) == top, -rlp[target]))
                }
                ReferenceBatch::Records(recs, format) => {
                    let mut rlp = vec![0.0; v];
                    let rec_bytes = format.record_bytes(v);
                    let saved = format.decode_row(&recs[i * rec_bytes..(i + 1) * rec_bytes], target, &mut rlp);
                    Some((kl_divergence(&rlp, &lp), saved.argmax == top, saved.target_nll))
                }
            };
            let mut record = Vec::new();
            if let Some(format) = save {
                record.reserve_exact(format.record_bytes(v));
                format.encode_row(&lp, top, -lp[target], &mut record);
            }
            (Row { nll: -lp[target], kl }, record)
        })
        .collect()
}

/// The scored tokens' results, in scoring order, and running sums of their nll (so the
/// running perplexity after each chunk costs nothing).
#[derive(Default)]
struct Totals {
    rows: Vec<Row>,
    nll: f64,
    nll2: f64,
}

impl Totals {
    fn add(&mut self, row: Row) {
        self.nll += row.nll;
        self.nll2 += row.nll * row.nll;
        self.rows.push(row);
    }

    /// Perplexity and its standard error (llama-perplexity's formula).
    fn ppl(&self) -> (f64, f64) {
        stats::perplexity_from_sums(self.nll, self.nll2, self.rows.len())
    }
}

/// Evaluates `lm` on `text` (or, with a llama.cpp reference file and an empty `text`,
/// on the tokens that file stores): tokenise once, cut into `ctx`-token chunks, put BOS first in
/// each chunk when the tokenizer adds one, score the second half of every chunk. With
/// `reference`, also the KL divergence and top-1 agreement on the same tokens; with
/// `save`, the model's own distributions are written for later use as a reference.
pub fn evaluate(
    lm: &LoadedLm,
    mut reference: Option<Reference>,
    save: Option<SaveLogits>,
    text: &str,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<EvalReport> {
    if opts.ctx < 8 {
        return Err(Error::Usage(format!("--ctx {} is too small (at least 8)", opts.ctx)));
    }
    if let Some(trained) = lm.context_length.filter(|&c| opts.ctx > c) {
        return Err(Error::Usage(format!(
            "--ctx {} is longer than the model's trained context of {trained} tokens: its positions past that are untrained",
            opts.ctx
        )));
    }
    let ref_vocab = match &reference {
        Some(Reference::Model(r)) => Some(r.model.vocab_size()),
        Some(Reference::Saved(r)) => Some(r.header.vocab),
        None => None,
    };
    if let Some(rv) = ref_vocab.filter(|&rv| rv != lm.model.vocab_size()) {
        return Err(Error::Usage(format!(
            "the reference has a vocabulary of {rv} tokens, the model {}: they cannot be compared",
            lm.model.vocab_size()
        )));
    }
    let tokens = match &reference {
        Some(Reference::Saved(r)) if text.is_empty() && r.tokens.is_some() => r.tokens.clone().unwrap_or_default(),
        _ => lm.tokenizer.encode(text, true)?,
    };
    let ctx = opts.ctx;
    let available = tokens.len() / ctx;
    if available == 0 {
        return Err(Error::Usage(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}; use a longer text or a smaller --ctx",
            tokens.len()
        )));
    }
    let n_chunks = opts.max_chunks.map_or(available, |c| c.min(available));
    let first = ctx / 2;
    let chunk_tokens = |c: usize| {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if lm.tokenizer.add_bos {
            chunk[0] = lm.tokenizer.bos.expect("add_bos implies bos");
        }
        chunk
    };
    let header = LogitsHeader {
        lowbit_version: env!("CARGO_PKG_VERSION").into(),
        model: save.as_ref().map(|s| s.model_name.clone()).unwrap_or_default(),
        vocab: lm.model.vocab_size(),
        ctx,
        chunks: n_chunks,
        scored_per_chunk: ctx - 1 - first,
        tokens_sha256: tokens_sha256(&(0..n_chunks).flat_map(chunk_tokens).collect::<Vec<u32>>()),
    };
    if let Some(Reference::Saved(r)) = &reference {
        check_saved_reference(r, &header, &tokens)?;
    }
    let rows_per_chunk = ctx - 1 - first;
    // The saved file's head (lowbit's header by default; it also keys the journal).
    let head = save.as_ref().map_or(LogitsFormat::Lowbit, |s| s.format).head_bytes(&header, &tokens);
    let mut journal = match &opts.resume {
        Some(r) => {
            let dir = r.root.join(format!("eval-{}", journal_key(r, &head, save.as_ref())));
            if r.fresh && dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            let saved = save.as_ref().map(|s| (&head[..], s.format.record_bytes(header.vocab)));
            let j = Journal::open(&dir, rows_per_chunk, saved)?;
            Some(j)
        }
        None => None,
    };
    // Without a journal the saved logits stream straight to their (atomic) output.
    let mut writer = match (&save, &journal) {
        (Some(s), None) => Some(LogitsWriter::create(s.path, &head)?),
        _ => None,
    };
    let save_format = save.as_ref().map(|s| s.format);
    let mut totals = Totals::default();
    let mut model_time = 0f64;
    let mut running = Vec::with_capacity(n_chunks);
    let resumed = journal.as_ref().map_or(0, |j| j.done.min(n_chunks));
    if let Some(j) = &journal {
        for chunk_rows in j.rows.chunks(rows_per_chunk).take(resumed) {
            chunk_rows.iter().for_each(|&r| totals.add(r));
            running.push(totals.ppl().0);
        }
    }
    if let Some(Reference::Saved(r)) = &mut reference {
        r.skip_records(resumed * rows_per_chunk)?;
    }
    progress(resumed, n_chunks, resumed * ctx);
    let mut chunk_rows = Vec::with_capacity(rows_per_chunk);
    let mut chunk_records = Vec::new();
    for c in resumed..n_chunks {
        crate::interrupt::check()?;
        let chunk = chunk_tokens(c);
        let t0 = std::time::Instant::now();
        let hidden = chunk_hidden(lm, &chunk)?;
        model_time += t0.elapsed().as_secs_f64();
        let ref_hidden = match &reference {
            Some(Reference::Model(r)) => Some(chunk_hidden(r, &chunk)?),
            _ => None,
        };
        let (d, v) = (lm.model.hidden_size(), lm.model.vocab_size());
        // Scored rows are first … ctx-2, each predicting the next token; model and
        // reference logits are taken batch by batch and compared row by row.
        let mut start = first;
        chunk_rows.clear();
        chunk_records.clear();
        while start < ctx - 1 {
            let n = LOGIT_ROWS_PER_BATCH.min(ctx - 1 - start);
            let t0 = std::time::Instant::now();
            let logits = lm.model.logits(&hidden[start * d..(start + n) * d], n);
            model_time += t0.elapsed().as_secs_f64();
            let ref_batch = match (&mut reference, &ref_hidden) {
                (Some(Reference::Model(r)), Some(h)) => {
                    ReferenceBatch::Logits(r.model.logits(&h[start * d..(start + n) * d], n))
                }
                (Some(Reference::Saved(r)), _) => {
                    let mut recs = Vec::new();
                    r.next_records(n, &mut recs)?;
                    ReferenceBatch::Records(recs, r.format)
                }
                _ => ReferenceBatch::None,
            };
            let per_row = score_rows(&logits, &ref_batch, &chunk[start + 1..start + 1 + n], v, save_format);
            for (row, record) in per_row {
                totals.add(row);
                chunk_rows.push(row);
                if let Some(w) = writer.as_mut() {
                    w.push_encoded(&record)?;
                } else {
                    chunk_records.extend_from_slice(&record);
                }
            }
            start += n;
        }
        if let Some(j) = journal.as_mut() {
            j.append(&chunk_rows, &chunk_records)?;
        }
        running.push(totals.ppl().0);
        progress(c + 1, n_chunks, (c + 1) * ctx);
    }
    let (ppl, ppl_err) = totals.ppl();
    if let Some(w) = writer {
        w.finish()?;
    }
    if let Some(j) = journal {
        j.finish(save.as_ref().map(|s| s.path))?;
    }
    let kld = reference.map(|_| stats::kl_statistics(&totals.rows));
    Ok(EvalReport {
        ppl,
        ppl_err,
        chunks: n_chunks,
        ctx,
        scored_tokens: totals.rows.len(),
        kld,
        tokens_per_second: ((n_chunks - resumed) * ctx) as f64 / model_time.max(1e-9),
        running_ppl: running,
        resumed_chunks: resumed,
    })
}

/// The journal folder's name for this evaluation: a hash of the caller's identity, the
/// saved-logits head (format, tokens, ctx, chunks, vocabulary, lowbit version) and the
/// save target.
fn journal_key(r: &Resume, head: &[u8], save: Option<&SaveLogits>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(r.identity.as_bytes());
    h.update(head);
    if let Some(s) = save {
        let abs = std::path::absolute(s.path).unwrap_or_else(|_| s.path.to_path_buf());
        h.update(abs.to_string_lossy().as_bytes());
    }
    crate::hex(&h.finalize()[..8])
}

/// How closely an encoder's sentence embeddings follow a reference encoder's.
#[derive(Clone, Debug, Serialize)]
pub struct EmbeddingReport {
    /// Sentences compared.
    pub sentences: usize,
    /// Mean cosine similarity between the two models' embeddings of the same sentence.
    pub mean_cosine: f64,
    /// Worst (smallest) cosine similarity.
    pub min_cosine: f64,
    /// Mean overlap of each sentence's 10 nearest neighbours (by cosine) under the two
    /// models: 1.0 means retrieval is unchanged.
    pub top10_agreement: f64,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

fn top10(emb: &[Vec<f32>], i: usize) -> Vec<usize> {
    let mut sims: Vec<(f64, usize)> =
        emb.iter().enumerate().filter(|(j, _)| *j != i).map(|(j, e)| (cosine(&emb[i], e), j)).collect();
    sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    sims.into_iter().take(10).map(|(_, j)| j).collect()
}

/// Compares the sentence embeddings of `model` and `reference` over `sentences`.
pub fn compare_embeddings(
    model: &crate::model::bert::Bert,
    reference: &crate::model::bert::Bert,
    sentences: &[&str],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EmbeddingReport> {
    if sentences.len() < 11 {
        return Err(Error::Usage("need at least 11 non-empty lines to compare nearest neighbours".into()));
    }
    let mut a = Vec::with_capacity(sentences.len());
    let mut b = Vec::with_capacity(sentences.len());
    for (i, s) in sentences.iter().enumerate() {
        a.push(model.embed(s)?);
        b.push(reference.embed(s)?);
        progress(i + 1, sentences.len());
    }
    let cos: Vec<f64> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
    let agree: f64 = (0..a.len())
        .into_par_iter()
        .map(|i| {
            let (ta, tb) = (top10(&a, i), top10(&b, i));
            ta.iter().filter(|j| tb.contains(j)).count() as f64 / 10.0
        })
        .sum();
    Ok(EmbeddingReport {
        sentences: sentences.len(),
        mean_cosine: cos.iter().sum::<f64>() / cos.len() as f64,
        min_cosine: cos.iter().copied().fold(f64::INFINITY, f64::min),
        top10_agreement: agree / a.len() as f64,
    })
}
