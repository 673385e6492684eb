//! Token ids equal llama.cpp's (`llama-tokenize`, built by scripts/test.sh from the pinned
//! llama.cpp source) for both zoo LLMs, on wiki text and on strings that stress the
//! pre-tokenizers (digit runs, whitespace runs, tabs, accents, emoji, CJK, code).

mod support;

use std::process::Command;

use lowbit::gguf::GgufFile;
use lowbit::tokenizer::Tokenizer;

/// llama-tokenize's ids for the text in `file` (BOS as the model asks, special-token text
/// not parsed), from its last line.
fn llama_ids(bin: &std::path::Path, model: &std::path::Path, file: &std::path::Path) -> Vec<u32> {
    let out = Command::new(bin.join("llama-tokenize"))
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(file)
        // Special-token text is plain text, as llama-perplexity tokenizes.
        .args(["--ids", "--log-disable", "--no-parse-special"])
        .output()
        .expect("llama-tokenize runs");
    assert!(out.status.success(), "llama-tokenize: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('[')).expect("an id list");
    line.trim_matches(|c| c == '[' || c == ']').split(',').map(|s| s.trim().parse().unwrap()).collect()
}

#[test]
fn token_ids_equal_llama_cpp() {
    let Some(bin) = support::llama_bin() else { return };
    if !bin.join("llama-tokenize").is_file() {
        let msg = format!("{} has no llama-tokenize", bin.display());
        assert!(!support::required("LOWBIT_REQUIRE_REF"), "LOWBIT_REQUIRE_REF=1 but {msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let wiki = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let cut = wiki.char_indices().nth(40_000).map_or(wiki.len(), |(i, _)| i);
    let tricky = "Hello  world!\t\ttabs 123 4567 1234567890 3.14159 -42\n\n\n  indented\r\nwindows line\n\
                  ünïcödé façade naïve Ωμέγα Привет 日本語のテキスト 中文 한국어 🙂🚀👍🏽\n\
                  fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); } // code\n\
                  <|im_start|> <start_of_turn> don't won't it's I'm you're  '  \"quoted\"  \u{00a0}nbsp";
    let dir = tempfile::tempdir().unwrap();
    for name in ["smollm2-135m", "gemma3-270m"] {
        let Some(model) = support::zoo_model(name) else { return };
        let tok = Tokenizer::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
        for (label, text) in [("wiki", &wiki[..cut]), ("tricky", tricky)] {
            let file = dir.path().join(format!("{label}.txt"));
            std::fs::write(&file, text).unwrap();
            let theirs = llama_ids(&bin, &model, &file);
            let ours = tok.encode(text, true).unwrap();
            if ours != theirs {
                let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
                panic!(
                    "{name} {label}: {} ids vs llama.cpp's {}; first difference at {at}: {:?} vs {:?}",
                    ours.len(),
                    theirs.len(),
                    &ours[at.saturating_sub(2)..(at + 3).min(ours.len())],
                    &theirs[at.saturating_sub(2)..(at + 3).min(theirs.len())]
                );
            }
        }
    }
}
