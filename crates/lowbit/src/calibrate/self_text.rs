//! Calibration text sampled from the model itself (`--calib self[:TOKENS]`), for users
//! without data of their own — ZeroQ's idea for vision models, and what EXL3 does for
//! LLMs: the model's own distribution is what its quantized weights must keep.
//!
//! Sequences of the calibration chunk length are sampled from the start-of-text token
//! (temperature 1, nucleus 0.95 within the 200 likeliest tokens: the model's distribution
//! without the tail of junk tokens a long unconstrained sample wanders into), decoded and
//! joined by blank lines. The text is cached as a file under `$LOWBIT_HOME/calibration/`,
//! keyed by the model file, the token count, the sequence length and the seed, so the
//! same command reuses it and its statistics name a real file. Deterministic: one seeded
//! RNG (see [`crate::generate::sample_batch`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generate::{sample_batch, Sampling};
use crate::model::LoadedLm;

/// Tokens sampled when `--calib self` names no count: 32 chunks of 512, half of the
/// default 64-chunk calibration (BENCHMARKS.md's Austen protocol), so `self` mixed with a
/// text (`--calib self austen`) calibrates on half of each.
pub const DEFAULT_TOKENS: usize = 16_384;

/// The seed of the sampling (fixed: a calibration must be reproducible).
const SEED: u64 = 0x5e1f;

/// A parsed `self[:TOKENS]` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfText {
    /// Tokens to sample (at least).
    pub tokens: usize,
}

impl SelfText {
    /// `self` or `self:TOKENS` (`self:8192`, `self:16k`); `None` for any other argument.
    pub fn parse(arg: &str) -> Option<Result<SelfText>> {
        let rest = arg.strip_prefix("self")?;
        if rest.is_empty() {
            return Some(Ok(SelfText { tokens: DEFAULT_TOKENS }));
        }
        let n = rest.strip_prefix(':')?;
        let (digits, mult) = match n.strip_suffix(['k', 'K']) {
            Some(d) => (d, 1024),
            None => (n, 1),
        };
        Some(match digits.parse::<usize>() {
            Ok(v) if v > 0 && v.checked_mul(mult).is_some() => Ok(SelfText { tokens: v * mult }),
            _ => {
                Err(Error::Usage(format!("'{arg}': self-calibration takes a token count, e.g. self:16384 or self:16k")))
            }
        })
    }

    /// The cached text file for the model at `source` (sampled now when missing), in
    /// sequences of `seq_len` tokens. `progress(done, total)` counts sequences.
    pub fn file(&self, source: &Path, seq_len: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<PathBuf> {
        let key = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(crate::eval::file_identity(source));
            h.update(format!("{} {} {SEED}", self.tokens, seq_len));
            crate::hex(&h.finalize()[..8])
        };
        let path = crate::zoo::home().join("calibration").join(format!("self-{}-{key}.txt", self.tokens));
        if path.is_file() {
            return Ok(path);
        }
        let lm = crate::model::load_lm(source, crate::model::LoadOptions::default())?;
        let text = self.sample(&lm, seq_len, progress)?;
        let dir = path.parent().expect("under the home folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::atomic::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Samples the text from `lm`: sequences of `seq_len` tokens until `tokens` are drawn.
    pub fn sample(&self, lm: &LoadedLm, seq_len: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<String> {
        let seq_len = seq_len.max(8);
        let s = Sampling { temperature: 1.0, top_k: 200, top_p: 0.95, seed: SEED };
        let mut pieces = Vec::new();
        let (mut drawn, mut round) = (0usize, 0u64);
        // Sequences that end early (at end-of-sequence) are made up by another round.
        while drawn < self.tokens {
            let want = (self.tokens - drawn).div_ceil(seq_len);
            progress(drawn / seq_len, self.tokens.div_ceil(seq_len));
            let batch = sample_batch(lm, want, seq_len, &Sampling { seed: s.seed + round, ..s.clone() })?;
            let got: usize = batch.iter().map(Vec::len).sum();
            if got == 0 {
                return Err(Error::Usage(
                    "the model ends every sampled sequence at once; give calibration text".into(),
                ));
            }
            for seq in batch {
                drawn += seq.len();
                pieces.push(lm.tokenizer.decode(&seq)?);
            }
            round += 1;
        }
        progress(self.tokens.div_ceil(seq_len), self.tokens.div_ceil(seq_len));
        Ok(pieces.join("\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        assert_eq!(SelfText::parse("self").unwrap().unwrap().tokens, DEFAULT_TOKENS);
        assert_eq!(SelfText::parse("self:8192").unwrap().unwrap().tokens, 8192);
        assert_eq!(SelfText::parse("self:16k").unwrap().unwrap().tokens, 16384);
        assert!(SelfText::parse("austen").is_none());
        assert!(SelfText::parse("selfish.txt").is_none());
        for bad in ["self:", "self:0", "self:-3", "self:lots"] {
            let e = SelfText::parse(bad).unwrap().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
