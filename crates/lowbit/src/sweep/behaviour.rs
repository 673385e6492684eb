//! What a sweep measures beyond the logits: HellaSwag accuracy on a fixed task subset
//! (llama.cpp's draw, so the subset is the one `llama-perplexity --hellaswag-tasks N`
//! scores) and greedy generation against the source's continuations of the bundled
//! prompts. The source's choices and continuations are computed once and kept with its
//! result; every setting is compared with them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::generation::{self, Continuation};
use crate::eval::hellaswag::{self, Task};
use crate::model::LoadedLm;

/// The task and prompt subsets every file of a sweep is measured on.
pub struct Probe {
    tasks: Vec<Task>,
    prompts: Vec<String>,
    tokens: usize,
}

/// The source's answers, kept so settings compare with them without rerunning it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceBehaviour {
    /// HellaSwag acc_norm on the subset (None when no tasks were asked for).
    pub hellaswag_acc_norm: Option<f64>,
    /// The source's chosen ending per task.
    pub choices: Vec<u8>,
    /// The source's greedy continuations of the prompts.
    pub continuations: Vec<Continuation>,
}

/// A quantized file's behaviour against the source's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// HellaSwag acc_norm on the subset.
    pub hellaswag_acc_norm: Option<f64>,
    /// Share of tasks where it chooses the source's ending.
    pub hellaswag_agreement: Option<f64>,
    /// Share of prompts continued token-for-token as the source does.
    pub exact_match: Option<f64>,
    /// Mean tokens before its continuation first differs from the source's.
    pub first_divergence: Option<f64>,
    /// Mean ROUGE-L F1 against the source's continuations.
    pub rouge_l: Option<f64>,
}

impl Probe {
    /// The first `tasks` of llama.cpp's HellaSwag draw and the first `prompts` bundled
    /// prompts, continued by `tokens` tokens (0 tasks / 0 prompts: that part is skipped).
    pub fn load(tasks: usize, prompts: usize, tokens: usize) -> Result<Probe> {
        let read = |name: &str| -> Result<(std::path::PathBuf, String)> {
            let p = crate::data::resolve_one(std::path::Path::new(name))?;
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            Ok((p, text))
        };
        let tasks = if tasks > 0 {
            let (p, text) = read("hellaswag")?;
            hellaswag::select(hellaswag::parse(&text, &p)?, tasks)
        } else {
            Vec::new()
        };
        let prompts = if prompts > 0 && tokens > 0 {
            let (_, text) = read("prompts")?;
            text.lines().map(str::trim).filter(|l| !l.is_empty()).take(prompts).map(String::from).collect()
        } else {
            Vec::new()
        };
        Ok(Probe { tasks, prompts, tokens })
    }

    /// Part of a cache key: what the probe measures.
    pub fn key(&self) -> String {
        format!("tasks {} prompts {} tokens {}", self.tasks.len(), self.prompts.len(), self.tokens)
    }

    fn run(
        &self,
        lm: &LoadedLm,
        progress: &mut dyn FnMut(&'static str, usize, usize),
    ) -> Result<(Option<hellaswag::HellaswagReport>, Vec<Continuation>)> {
        let hs = if self.tasks.is_empty() {
            None
        } else {
            Some(hellaswag::hellaswag(lm, None, &self.tasks, None, &mut |d, t| progress("tasks", d, t))?)
        };
        let prompts: Vec<&str> = self.prompts.iter().map(String::as_str).collect();
        let cont = if prompts.is_empty() {
            Vec::new()
        } else {
            generation::continue_prompts(lm, &prompts, self.tokens, &mut |d, t| progress("prompts", d, t))?
        };
        Ok((hs, cont))
    }

    /// The source's answers.
    pub fn source(
        &self,
        lm: &LoadedLm,
        progress: &mut dyn FnMut(&'static str, usize, usize),
    ) -> Result<SourceBehaviour> {
        let (hs, continuations) = self.run(lm, progress)?;
        Ok(SourceBehaviour {
            hellaswag_acc_norm: hs.as_ref().map(|r| r.acc_norm.value),
            choices: hs.map(|r| r.choices.iter().map(|&c| c as u8).collect()).unwrap_or_default(),
            continuations,
        })
    }

    /// A quantized model's answers against the source's.
    pub fn compare(
        &self,
        lm: &LoadedLm,
        source: &SourceBehaviour,
        progress: &mut dyn FnMut(&'static str, usize, usize),
    ) -> Result<Behaviour> {
        let (hs, cont) = self.run(lm, progress)?;
        let agreement = hs.as_ref().filter(|r| r.choices.len() == source.choices.len()).map(|r| {
            let same = r.choices.iter().zip(&source.choices).filter(|(a, b)| **a == **b as usize).count();
            same as f64 / r.choices.len().max(1) as f64
        });
        let gen = if cont.is_empty() {
            None
        } else {
            Some(generation::compare(&cont, &source.continuations, self.tokens, None)?)
        };
        Ok(Behaviour {
            hellaswag_acc_norm: hs.map(|r| r.acc_norm.value),
            hellaswag_agreement: agreement,
            exact_match: gen.as_ref().map(|g| g.exact_match),
            first_divergence: gen.as_ref().map(|g| g.first_divergence_mean),
            rouge_l: gen.map(|g| g.rouge_l),
        })
    }
}
