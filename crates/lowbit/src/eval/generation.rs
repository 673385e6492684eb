//! Generation similarity: does the quantized model still *say* what the source says?
//! Both models continue the same prompts greedily; the continuations are compared as
//! token sequences (exact match, position of the first differing token), as words
//! (ROUGE-L F1: longest common subsequence of whitespace-separated words), and by
//! meaning (cosine of MiniLM sentence embeddings, when an embedder is given) — the
//! measures of "Give Me BF16 or Give Me Death" (Kurtic et al. 2024) for free-form output.
//!
//! Prompts run in parallel; greedy decoding makes every continuation a function of the
//! model and prompt alone, whatever the thread count.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::generate::greedy_batch;
use crate::model::bert::Bert;
use crate::model::LoadedLm;

/// A greedy continuation of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Continuation {
    /// New token ids (stops early at end-of-sequence).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
}

/// Greedy continuations of `prompts` by up to `n` tokens each; `progress(done, total)`.
pub fn continue_prompts(
    lm: &LoadedLm,
    prompts: &[&str],
    n: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Continuation>> {
    let mut out = Vec::with_capacity(prompts.len());
    progress(0, prompts.len());
    // Sequences run batched per step; a few batches per report keep progress moving.
    for batch in prompts.chunks(2 * crate::kernels::MAX_ROWS) {
        for tokens in greedy_batch(lm, batch, n)? {
            out.push(Continuation { text: lm.tokenizer.decode(&tokens)?, tokens });
        }
        progress(out.len(), prompts.len());
    }
    Ok(out)
}

/// Longest common subsequence length of two sequences (O(|a|·|b|) time, O(|b|) memory).
fn lcs<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

/// ROUGE-L F1 of two texts over whitespace-separated words (1 when both are empty).
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r): (Vec<&str>, Vec<&str>) =
        (candidate.split_whitespace().collect(), reference.split_whitespace().collect());
    if c.is_empty() && r.is_empty() {
        return 1.0;
    }
    let l = lcs(&c, &r) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, q) = (l / c.len() as f64, l / r.len() as f64);
    2.0 * p * q / (p + q)
}

/// Tokens until two continuations first differ (the shorter's length when one is a
/// prefix of the other; the full length when equal).
pub fn first_divergence(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// How closely a model's greedy continuations follow a reference's.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationReport {
    /// Prompts compared.
    pub prompts: usize,
    /// Tokens asked for per prompt.
    pub max_tokens: usize,
    /// Share of prompts whose continuations are token-for-token identical.
    pub exact_match: f64,
    /// Mean number of tokens before the first differing one.
    pub first_divergence_mean: f64,
    /// Median of the same.
    pub first_divergence_median: f64,
    /// Mean ROUGE-L F1 (words) against the reference's continuation.
    pub rouge_l: f64,
    /// Mean cosine similarity of the two continuations' MiniLM embeddings, when measured.
    pub semantic_similarity: Option<f64>,
}

/// Compares `model`'s continuations with `reference`'s (same prompts, same order);
/// `embedder` adds semantic similarity.
pub fn compare(
    model: &[Continuation],
    reference: &[Continuation],
    max_tokens: usize,
    embedder: Option<&Bert>,
) -> Result<GenerationReport> {
    if model.len() != reference.len() || model.is_empty() {
        return Err(Error::Usage(format!(
            "cannot compare {} continuations with {} reference continuations",
            model.len(),
            reference.len()
        )));
    }
    let n = model.len() as f64;
    let mut div: Vec<f64> =
        model.iter().zip(reference).map(|(a, b)| first_divergence(&a.tokens, &b.tokens) as f64).collect();
    div.sort_by(f64::total_cmp);
    let mid = div.len() / 2;
    let median = if div.len().is_multiple_of(2) { 0.5 * (div[mid - 1] + div[mid]) } else { div[mid] };
    let semantic = match embedder {
        Some(e) => {
            let cos: Vec<f64> = model
                .par_iter()
                .zip(reference)
                .map(|(a, b)| {
                    let (x, y) = (e.embed(&a.text)?, e.embed(&b.text)?);
                    Ok(x.iter().zip(&y).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>())
                })
                .collect::<Result<_>>()?;
            Some(cos.iter().sum::<f64>() / n)
        }
        None => None,
    };
    Ok(GenerationReport {
        prompts: model.len(),
        max_tokens,
        exact_match: model.iter().zip(reference).filter(|(a, b)| a.tokens == b.tokens).count() as f64 / n,
        first_divergence_mean: div.iter().sum::<f64>() / n,
        first_divergence_median: median,
        rouge_l: model.iter().zip(reference).map(|(a, b)| rouge_l(&a.text, &b.text)).sum::<f64>() / n,
        semantic_similarity: semantic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_is_lcs_f1_over_words() {
        assert_eq!(rouge_l("a b c d", "a b c d"), 1.0);
        assert_eq!(rouge_l("x y", "a b"), 0.0);
        // LCS "a c d" = 3 of 4 candidate words, 3 of 5 reference words.
        let (p, r) = (0.75, 0.6);
        assert!((rouge_l("a b c d", "a c x d y") - 2.0 * p * r / (p + r)).abs() < 1e-12);
        assert_eq!(rouge_l("", ""), 1.0);
    }

    #[test]
    fn first_divergence_counts_the_common_prefix() {
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(first_divergence(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(first_divergence(&[5], &[6]), 0);
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 3]), 3);
    }

    #[test]
    fn a_model_matches_itself_and_differences_show() {
        let c = |t: &[u32], s: &str| Continuation { tokens: t.to_vec(), text: s.into() };
        let reference = vec![c(&[1, 2, 3], "the cat sat"), c(&[4, 5], "on mats")];
        let same = compare(&reference, &reference, 3, None).unwrap();
        assert_eq!((same.exact_match, same.rouge_l, same.first_divergence_mean), (1.0, 1.0, 2.5));
        let other = vec![c(&[1, 9, 9], "the dog ran"), c(&[4, 5], "on mats")];
        let r = compare(&other, &reference, 3, None).unwrap();
        assert_eq!((r.exact_match, r.first_divergence_mean, r.first_divergence_median), (0.5, 1.5, 1.5));
        assert!(r.rouge_l < 1.0 && r.rouge_l > 0.5);
    }
}
