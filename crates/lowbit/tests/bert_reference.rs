//! MiniLM sentence embeddings from lowbit's BERT forward pass must match an independent
//! NumPy implementation (float64) with cosine ≥ 0.9999 on 120 real sentences.

mod support;

use std::process::Command;

use lowbit::model::bert::Bert;

#[test]
fn minilm_embeddings_match_numpy_reference() {
    let Some(dir) = support::zoo_model("minilm-l6") else {
        return;
    };
    let Some(py) = support::reference_python() else {
        return;
    };
    let bert = Bert::open(&dir).unwrap();
    let text = std::fs::read_to_string(support::shared_data("wikitext-2/wiki.valid.raw")).unwrap();
    let sentences: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 20 && !l.starts_with('='))
        .flat_map(|l| l.split(" . ").take(2))
        .filter(|s| s.len() > 10)
        .take(120)
        .collect();
    assert_eq!(sentences.len(), 120);
    let mut ids = Vec::new();
    let mut ours = Vec::new();
    for s in &sentences {
        let (mut i, _) = bert.tokenizer.encode_for_encoder(s).unwrap();
        i.truncate(512);
        ids.push(i);
        ours.push(bert.embed(s).unwrap());
    }
    let tmp = tempfile::tempdir().unwrap();
    let ids_path = tmp.path().join("ids.json");
    let out_path = tmp.path().join("emb.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/bert_ref.py");
    let status = Command::new(py).arg(script).arg(&dir).arg(&ids_path).arg(&out_path).status().unwrap();
    assert!(status.success());
    let theirs: Vec<Vec<f64>> = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    let mut worst = 1.0f64;
    for (a, b) in ours.iter().zip(&theirs) {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        worst = worst.min(dot / (na * nb));
    }
    eprintln!("worst cosine over {} sentences: {worst:.8}", sentences.len());
    assert!(worst >= 0.9999, "worst cosine {worst}");
}
