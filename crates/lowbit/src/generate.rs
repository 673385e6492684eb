//! Text generation with a KV cache: greedy by default, or temperature / top-k / top-p
//! sampling with a seeded RNG (same seed, same text).

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::LoadedLm;

/// How the next token is chosen.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Sampling {
    /// Refuses values that cannot sample: a temperature that is negative or not finite,
    /// a top-p outside (0, 1] (NaN included).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Usage(format!("--temp {}: a finite temperature ≥ 0 (0 = greedy)", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Usage(format!("--top-p {}: a probability in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

fn pick(logits: &[f32], s: &Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax =
        || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
    if s.temperature <= 0.0 {
        return argmax() as u32;
    }
    let mut cand: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    // Most likely first, ties by token id: a total order, so the k kept are the same
    // whichever way they are found (a partial selection first: sorting a 262k vocabulary
    // every token dominated sampling).
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if s.top_k > 0 && s.top_k < cand.len() {
        cand.select_nth_unstable_by(s.top_k - 1, order);
        cand.truncate(s.top_k);
    }
    cand.sort_by(order);
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|&(_, l)| (((l - max) / s.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= s.top_p as f64
        });
        if let Some(k) = keep {
            probs.truncate(k + 1);
            cand.truncate(k + 1);
        }
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return cand[i].0 as u32;
        }
    }
    cand[cand.len() - 1].0 as u32
}

/// The context assumed for a model whose file does not state one (it bounds the KV cache
/// `-n` can ask for).
const UNKNOWN_CONTEXT: usize = 1 << 17;

/// Runs `prompt` into a cache with room for `n` more tokens; returns the cache and the
/// logits of the prompt's last position. Refuses an empty prompt and one that, with `n`,
/// exceeds the model's trained context — before anything is allocated.
fn prefill(lm: &LoadedLm, prompt: &str, n: usize) -> Result<(crate::model::decoder::KvCache, Vec<f32>)> {
    prefill_ids(lm, &lm.tokenizer.encode(prompt, true)?, n)
}

/// [`prefill`] for token ids.
fn prefill_ids(lm: &LoadedLm, ids: &[u32], n: usize) -> Result<(crate::model::decoder::KvCache, Vec<f32>)> {
    if ids.is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    let limit = lm.context_length.unwrap_or(UNKNOWN_CONTEXT);
    if ids.len() >= limit || n > limit - ids.len() {
        return Err(Error::Usage(format!(
            "the prompt's {} tokens and -n {n} exceed the model's trained context of {limit} tokens; use -n {} or less",
            ids.len(),
            limit.saturating_sub(ids.len())
        )));
    }
    let m = &lm.model;
    let mut cache = m.new_cache(ids.len() + n);
    let hidden = m.forward_hidden(ids, &mut cache)?;
    let last = m.logits(&hidden[(ids.len() - 1) * m.hidden_size()..], 1);
    Ok((cache, last))
}

/// Greedy continuations of several prompts by up to `n` tokens each (each stops at
/// end-of-sequence), the same tokens `generate` gives each prompt alone: prompts are
/// prefilled one by one (in parallel), then every step runs all unfinished sequences'
/// next tokens in one batched pass — up to [`crate::kernels::MAX_ROWS`] at a time, the
/// widest batch whose rows the kernels compute exactly as they compute a single row.
pub fn greedy_batch(lm: &LoadedLm, prompts: &[&str], n: usize) -> Result<Vec<Vec<u32>>> {
    let starts = prompts.iter().map(|p| lm.tokenizer.encode(p, true)).collect::<Result<Vec<_>>>()?;
    continue_batch(lm, &starts, n, &Sampling::default())
}

/// `count` sequences sampled from the model itself as `s` says, each from the
/// start-of-text token alone (BOS, else EOS: what a document follows) for up to `n`
/// tokens (a sequence ends early at end-of-sequence). Batched as [`greedy_batch`]; one
/// seeded RNG draws the tokens in sequence order, so the result does not depend on the
/// thread count. Calibration text for models without user data (`--calib self`).
pub fn sample_batch(lm: &LoadedLm, count: usize, n: usize, s: &Sampling) -> Result<Vec<Vec<u32>>> {
    s.check()?;
    let start = lm.tokenizer.bos.or(lm.tokenizer.eos).ok_or_else(|| {
        Error::Usage("the model's tokenizer has neither a BOS nor an EOS token to start sampling from".into())
    })?;
    continue_batch(lm, &vec![vec![start]; count], n, s)
}

/// Continues every sequence of `starts` (token ids) by up to `n` tokens, batched.
fn continue_batch(lm: &LoadedLm, starts: &[Vec<u32>], n: usize, s: &Sampling) -> Result<Vec<Vec<u32>>> {
    use rayon::prelude::*;
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let mut out = Vec::with_capacity(starts.len());
    for batch in starts.chunks(crate::kernels::MAX_ROWS) {
        crate::interrupt::check()?;
        let (mut caches, mut lasts): (Vec<_>, Vec<_>) =
            batch.par_iter().map(|ids| prefill_ids(lm, ids, n)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
        let mut tokens = vec![Vec::with_capacity(n); batch.len()];
        let mut live: Vec<usize> = (0..batch.len()).collect();
        for _ in 0..n {
            crate::interrupt::check()?;
            let next: Vec<u32> = live.iter().map(|&i| pick(&lasts[i], s, &mut rng)).collect();
            let keep: Vec<(usize, u32)> =
                live.iter().copied().zip(next).filter(|&(_, tok)| Some(tok) != lm.tokenizer.eos).collect();
            if keep.is_empty() {
                break;
            }
            for &(i, tok) in &keep {
                tokens[i].push(tok);
            }
            live = keep.iter().map(|&(i, _)| i).collect();
            let mut steps: Vec<(&[u32], &mut crate::model::decoder::KvCache)> = Vec::with_capacity(live.len());
            for (i, cache) in caches.iter_mut().enumerate() {
                if live.contains(&i) {
                    steps.push((std::slice::from_ref(&tokens[i][tokens[i].len() - 1]), cache));
                }
            }
            let hidden = lm.model.forward_batch(&mut steps)?;
            let logits = lm.model.logits(&hidden, live.len());
            let v = lm.model.vocab_size();
            for (&i, row) in live.iter().zip(logits.chunks_exact(v)) {
                lasts[i] = row.to_vec();
            }
        }
        out.extend(tokens);
    }
    Ok(out)
}

/// Continues `prompt` by up to `n` tokens, calling `on_text` with each new piece of text
/// as soon as it is complete. Stops early at end-of-sequence. Returns the new token ids.
pub fn generate(
    lm: &LoadedLm,
    prompt: &str,
    n: usize,
    s: &Sampling,
    on_text: &mut dyn FnMut(&str),
) -> Result<Vec<u32>> {
    s.check()?;
    let (mut cache, mut last) = prefill(lm, prompt, n)?;
    let m = &lm.model;
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let mut out = Vec::new();
    let mut printed = String::new();
    for _ in 0..n {
        crate::interrupt::check()?;
        let tok = pick(&last, s, &mut rng);
        if Some(tok) == lm.tokenizer.eos {
            break;
        }
        out.push(tok);
        let text = lm.tokenizer.decode(&out)?;
        // Emit only whole characters: a byte-fallback token may end mid-character.
        if !text.ends_with('\u{FFFD}') && text.len() > printed.len() && text.starts_with(&printed) {
            on_text(&text[printed.len()..]);
            printed = text;
        }
        let hidden = m.forward_hidden(&[tok], &mut cache)?;
        last = m.logits(&hidden, 1);
    }
    Ok(out)
}
