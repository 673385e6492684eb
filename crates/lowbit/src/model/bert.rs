//! BERT encoders (MiniLM and friends, from Hugging Face safetensors folders): absolute
//! position and token-type embeddings, post-LayerNorm blocks with exact-GELU MLPs, and
//! sentence embeddings by mean pooling plus L2 normalisation (sentence-transformers).

use std::path::Path;

use super::Linear;
use crate::error::{Error, Result};
use crate::safetensors::SafetensorsModel;
use crate::tensor::{gelu_erf, layer_norm, multi_head_attention};
use crate::tokenizer::Tokenizer;

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_ln: (Vec<f32>, Vec<f32>),
    ffn_in: Linear,
    ffn_out: Linear,
    out_ln: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder with its tokenizer.
pub struct Bert {
    d: usize,
    n_head: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    max_positions: usize,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    /// The WordPiece tokenizer from `tokenizer.json`.
    pub tokenizer: Tokenizer,
}

fn get(m: &SafetensorsModel, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    // Accept both bare names and a `bert.` prefix (BertForMaskedLM-style checkpoints).
    let key = if m.tensors.contains_key(name) { name.to_string() } else { format!("bert.{name}") };
    let t = m
        .tensors
        .get(&key)
        .ok_or_else(|| Error::tensor(&m.dir, name, "required by the BERT architecture but missing"))?;
    if t.shape != shape {
        return Err(Error::tensor(m.shard_path(t), name, format!("shape {:?}, expected {shape:?}", t.shape)));
    }
    let v = m.to_f32(&key)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(m.shard_path(t), name, format!("element {i} is {} (NaN/inf weights)", v[i])));
    }
    Ok(v)
}

fn linear(m: &SafetensorsModel, prefix: &str, out_f: usize, in_f: usize) -> Result<Linear> {
    Ok(Linear {
        name: format!("{prefix}.weight"),
        weight: super::Weight::Dense(get(m, &format!("{prefix}.weight"), &[out_f, in_f])?),
        bias: Some(get(m, &format!("{prefix}.bias"), &[out_f])?),
        in_features: in_f,
        out_features: out_f,
        act_quant: None,
    })
}

fn ln(m: &SafetensorsModel, prefix: &str, d: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok((get(m, &format!("{prefix}.weight"), &[d])?, get(m, &format!("{prefix}.bias"), &[d])?))
}

impl Bert {
    /// Loads a BERT model folder (config.json, safetensors, tokenizer.json).
    pub fn open(dir: &Path) -> Result<Bert> {
        let m = SafetensorsModel::open(dir)?;
        let cfg_path = dir.join("config.json");
        let need = |k: &str| {
            m.config_usize(k).ok_or_else(|| Error::format(&cfg_path, format!("missing or non-integer \"{k}\"")))
        };
        let model_type = m.config.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "bert" {
            return Err(Error::unsupported(&cfg_path, format!("model_type \"{model_type}\" (this loader reads BERT)")));
        }
        let (d, n_layer, n_head, d_ff) = (
            need("hidden_size")?,
            need("num_hidden_layers")?,
            need("num_attention_heads")?,
            need("intermediate_size")?,
        );
        if n_head == 0 || d % n_head != 0 {
            return Err(Error::format(&cfg_path, format!("hidden_size {d} is not divisible by {n_head} heads")));
        }
        let vocab = need("vocab_size")?;
        let max_positions = need("max_position_embeddings")?;
        let types = m.config_usize("type_vocab_size").unwrap_or(2);
        let eps = m.config.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12) as f32;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: linear(&m, &format!("{p}.attention.self.query"), d, d)?,
                k: linear(&m, &format!("{p}.attention.self.key"), d, d)?,
                v: linear(&m, &format!("{p}.attention.self.value"), d, d)?,
                attn_out: linear(&m, &format!("{p}.attention.output.dense"), d, d)?,
                attn_ln: ln(&m, &format!("{p}.attention.output.LayerNorm"), d)?,
                ffn_in: linear(&m, &format!("{p}.intermediate.dense"), d_ff, d)?,
                ffn_out: linear(&m, &format!("{p}.output.dense"), d, d_ff)?,
                out_ln: ln(&m, &format!("{p}.output.LayerNorm"), d)?,
            });
        }
        Ok(Bert {
            d,
            n_head,
            eps,
            word: get(&m, "embeddings.word_embeddings.weight", &[vocab, d])?,
            position: get(&m, "embeddings.position_embeddings.weight", &[max_positions, d])?,
            token_type: get(&m, "embeddings.token_type_embeddings.weight", &[types, d])?,
            max_positions,
            emb_ln: ln(&m, "embeddings.LayerNorm", d)?,
            layers,
            tokenizer: Tokenizer::from_json_file(&dir.join("tokenizer.json"))?,
        })
    }

    /// Hidden states of the last layer for one tokenised sentence (`t` rows of d).
    pub fn encode_ids(&self, ids: &[u32], type_ids: &[u32]) -> Result<Vec<f32>> {
        let (d, t) = (self.d, ids.len());
        if t > self.max_positions {
            return Err(Error::Usage(format!("{t} tokens exceed BERT's {} positions", self.max_positions)));
        }
        let vocab = self.word.len() / d;
        let mut x = vec![0.0f32; t * d];
        for (i, row) in x.chunks_exact_mut(d).enumerate() {
            let (id, ty) = (ids[i] as usize, type_ids.get(i).copied().unwrap_or(0) as usize);
            if id >= vocab || (ty + 1) * d > self.token_type.len() {
                return Err(Error::Usage(format!("token {id} (type {ty}) is outside the vocabulary")));
            }
            let (w, tt, p) = (&self.word[id * d..], &self.token_type[ty * d..], &self.position[i * d..]);
            for (j, r) in row.iter_mut().enumerate() {
                *r = w[j] + tt[j] + p[j];
            }
        }
        layer_norm(&mut x, d, &self.emb_ln.0, &self.emb_ln.1, self.eps);
        let (nh, hd) = (self.n_head, d / self.n_head);
        let scale = 1.0 / (hd as f32).sqrt();
        for l in &self.layers {
            let mut q = l.q.forward(&x, t);
            q.iter_mut().for_each(|v| *v *= scale);
            let k = l.k.forward(&x, t);
            let v = l.v.forward(&x, t);
            // Bidirectional: every token sees the whole sentence.
            let ctx = multi_head_attention(&q, &k, &v, t, t, nh, nh, hd, |_| 0..t);
            let a = l.attn_out.forward(&ctx, t);
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
            layer_norm(&mut x, d, &l.attn_ln.0, &l.attn_ln.1, self.eps);
            let mut h = l.ffn_in.forward(&x, t);
            h.iter_mut().for_each(|v| *v = gelu_erf(*v));
            let o = l.ffn_out.forward(&h, t);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            layer_norm(&mut x, d, &l.out_ln.0, &l.out_ln.1, self.eps);
        }
        Ok(x)
    }

    /// The sentence embedding of `text`: mean of the last hidden states, L2-normalised.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let (mut ids, mut types) = self.tokenizer.encode_for_encoder(text)?;
        if ids.len() > self.max_positions {
            // Truncate as sentence-transformers does, keeping the final [SEP].
            let sep = *ids.last().expect("non-empty");
            ids.truncate(self.max_positions);
            types.truncate(self.max_positions);
            ids[self.max_positions - 1] = sep;
        }
        let h = self.encode_ids(&ids, &types)?;
        let t = ids.len();
        let mut e = vec![0.0f32; self.d];
        for row in h.chunks_exact(self.d) {
            e.iter_mut().zip(row).for_each(|(e, r)| *e += r / t as f32);
        }
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        e.iter_mut().for_each(|v| *v /= norm);
        Ok(e)
    }

    /// Hidden width (embedding size).
    pub fn hidden_size(&self) -> usize {
        self.d
    }
}
