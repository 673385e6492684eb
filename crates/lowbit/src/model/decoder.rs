//! The decoder-only transformer block machinery shared by the llama and Gemma 3 families:
//! pre-norm attention with grouped-query heads, rotary positions and an optional sliding
//! window, and a gated MLP. Architecture files fill in a [`DecoderConfig`] and weights.

use rayon::prelude::*;

use super::kv::{KvType, Rope};
use super::{GgufWeights, Linear, Weight};
use crate::error::Result;
use crate::kernels::pointwise;
use crate::scratch;
use crate::tensor::{apply_rope, multi_head_attention, rms_norm, rope_angles};

/// The gate activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU: llama).
    Silu,
    /// GELU, tanh approximation (GeGLU: Gemma).
    GeluTanh,
}

/// Hyper-parameters of a decoder.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP inner width.
    pub d_ff: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Rotated dimensions per head.
    pub rope_dim: usize,
    /// NEOX-style (split halves) rotary pairs rather than adjacent pairs.
    pub rope_neox: bool,
    /// Score scale applied to queries (usually 1/√head_dim).
    pub attn_scale: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Multiply embeddings by this (Gemma: √d_model).
    pub embed_scale: f32,
    /// MLP gate activation.
    pub activation: Activation,
}

/// Per-layer attention settings.
#[derive(Clone, Debug)]
pub struct LayerAttention {
    /// Rotary frequencies for this layer.
    pub rope: crate::tensor::RopeFreqs,
    /// Sliding window (a query attends to the last `w` positions), or `None` for global.
    pub window: Option<usize>,
}

/// One transformer block's weights.
pub struct Block {
    /// Norm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: Linear,
    /// Key projection.
    pub wk: Linear,
    /// Value projection.
    pub wv: Linear,
    /// Attention output projection.
    pub wo: Linear,
    /// Per-head RMSNorm of queries (Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm of keys (Gemma 3).
    pub k_norm: Option<Vec<f32>>,
    /// Norm of the attention output before the residual add (Gemma).
    pub attn_post_norm: Option<Vec<f32>>,
    /// Norm before the MLP.
    pub ffn_norm: Vec<f32>,
    /// MLP gate projection.
    pub w_gate: Linear,
    /// MLP up projection.
    pub w_up: Linear,
    /// MLP down projection.
    pub w_down: Linear,
    /// Norm of the MLP output before the residual add (Gemma).
    pub ffn_post_norm: Option<Vec<f32>>,
    /// Attention settings.
    pub attention: LayerAttention,
}

/// A decoder-only transformer.
pub struct Decoder {
    /// Hyper-parameters.
    pub cfg: DecoderConfig,
    /// Token embeddings, `vocab` rows of `d_model` (also the output matrix when tied).
    pub tok_embd: Weight,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub out_norm: Vec<f32>,
    /// Output projection; `None` when tied to the embeddings.
    pub output: Option<Linear>,
    /// Activation quantization for the tied output layer (llama.cpp numerics).
    pub tied_act_quant: Option<crate::format::GgmlType>,
    /// How new caches store keys and values.
    pub kv_type: KvType,
}

/// The sizes every decoder GGUF states under `{arch}.*`, read and checked in one place for
/// all architectures.
pub struct DecoderDims {
    /// Hidden width.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// MLP inner width.
    pub d_ff: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
}

impl DecoderDims {
    /// Reads the sizes of architecture `arch`; when the file does not state
    /// `attention.key_length`, the head width is `default_head_dim(d_model, n_head)`.
    pub fn read(w: &GgufWeights, arch: &str, default_head_dim: impl FnOnce(usize, usize) -> usize) -> Result<Self> {
        let p = |k: &str| format!("{arch}.{k}");
        let d_model = w.hparam(&p("embedding_length"))?;
        let n_head = w.hparam(&p("attention.head_count"))?;
        let n_head_kv = w.hparam(&p("attention.head_count_kv")).unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(crate::Error::format(
                w.file.path(),
                format!("{n_head} heads cannot share {n_head_kv} key/value heads"),
            ));
        }
        let head_dim = w.hparam(&p("attention.key_length")).unwrap_or_else(|_| default_head_dim(d_model, n_head));
        let embd = w
            .file
            .tensor_info("token_embd.weight")
            .ok_or_else(|| crate::Error::tensor(w.file.path(), "token_embd.weight", "missing"))?;
        Ok(DecoderDims {
            d_model,
            n_layer: w.hparam(&p("block_count"))?,
            n_head,
            n_head_kv,
            d_ff: w.hparam(&p("feed_forward_length"))?,
            head_dim,
            vocab: embd.dims.get(1).copied().unwrap_or(0) as usize,
        })
    }
}

/// One sequence's share of a batch: its new rows and the position of the first.
#[derive(Clone, Copy)]
struct Span {
    t: usize,
    pos0: usize,
}

/// Keys and values of past positions, per layer: `len` rows of `n_head_kv × head_dim`,
/// stored as the cache type says ([`super::kv`]).
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<super::kv::LayerKv>,
    kind: super::kv::KvType,
    row: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty f32 cache for `layers` layers of `row`-wide keys, up to `capacity` positions.
    pub fn new(layers: usize, row: usize, capacity: usize) -> KvCache {
        KvCache::with_type(super::kv::KvType::F32, layers, row, row, capacity)
    }

    /// An empty cache storing keys and values as `kind` (whose rows the caller checked
    /// with [`super::kv::KvType::check_row`]); a row holds heads `head_dim` wide.
    pub fn with_type(kind: super::kv::KvType, layers: usize, row: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| super::kv::LayerKv::new(kind, row, head_dim, capacity)).collect(),
            kind,
            row,
            head_dim,
            len: 0,
            capacity,
        }
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the cache holds (every layer's keys and values, as stored).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(super::kv::LayerKv::bytes).sum()
    }

    /// The storage's type.
    pub fn kind(&self) -> super::kv::KvType {
        self.kind
    }

    /// Bytes a cache of this shape and type holds after `positions` positions (measured
    /// by storing that many rows in one layer).
    pub fn bytes_at(&self, positions: usize) -> usize {
        let mut layer = super::kv::LayerKv::new(self.kind, self.row, self.head_dim, positions);
        let rows = vec![0.0f32; positions * self.row];
        layer.append(&rows, &rows, self.row);
        layer.bytes() * self.layers.len()
    }
}

impl Decoder {
    /// Completes a decoder around its blocks: the token embedding, the final norm, and the
    /// output layer (separate, or tied to the embedding in its stored type).
    pub fn assemble(w: &GgufWeights, cfg: DecoderConfig, blocks: Vec<Block>) -> Result<Decoder> {
        let (d, vocab) = (cfg.d_model, cfg.vocab);
        let tok_embd = Weight::Packed(w.packed("token_embd.weight", d, vocab)?);
        let tied_act_quant = w.act_quant_for("token_embd.weight");
        let out_norm = w.get("output_norm.weight", &[d])?;
        let output = if w.has("output.weight") { Some(w.linear("output.weight", d, vocab)?) } else { None };
        let kv_type = w.kv_type;
        kv_type.check_row(cfg.n_head_kv * cfg.head_dim).map_err(|why| crate::Error::format(w.file.path(), why))?;
        Ok(Decoder { cfg, tok_embd, blocks, out_norm, output, tied_act_quant, kv_type })
    }

    /// A cache sized for this model.
    pub fn new_cache(&self, max_tokens: usize) -> KvCache {
        let c = &self.cfg;
        KvCache::with_type(self.kv_type, self.blocks.len(), c.n_head_kv * c.head_dim, c.head_dim, max_tokens)
    }

    /// Embeds `tokens`, runs every block, applies the final norm.
    pub fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.forward_batch(&mut [(tokens, cache)])
    }

    /// Runs several independent sequences at once — each its new `tokens` after what its
    /// own cache holds — and returns their final hidden states, the sequences' rows one
    /// after the other. The linear layers see all rows together (one weight pass for the
    /// batch, the point of batching); rotary positions and attention stay per sequence.
    pub fn forward_batch(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<f32>> {
        let c = &self.cfg;
        for (tokens, cache) in seqs.iter() {
            if cache.len + tokens.len() > cache.capacity {
                return Err(crate::Error::Usage(format!(
                    "sequence of {} tokens exceeds the context of {}",
                    cache.len + tokens.len(),
                    cache.capacity
                )));
            }
        }
        let all: Vec<u32> = seqs.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let mut x = self.embed(&all)?;
        let spans: Vec<Span> = seqs.iter().map(|(t, cache)| Span { t: t.len(), pos0: cache.len }).collect();
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|(_, c)| &mut **c).collect();
        for (il, block) in self.blocks.iter().enumerate() {
            self.block_forward(il, block, &mut x, &spans, &mut caches, None);
        }
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.len += span.t;
        }
        rms_norm(&mut x, c.d_model, &self.out_norm, c.eps);
        Ok(x)
    }

    /// The scaled token embeddings of `tokens`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let mut x = vec![0.0f32; tokens.len() * c.d_model];
        for (row, &tok) in x.chunks_exact_mut(c.d_model).zip(tokens) {
            let tok = tok as usize;
            if tok >= c.vocab {
                return Err(crate::Error::Usage(format!("token id {tok} is outside the vocabulary of {}", c.vocab)));
            }
            match &self.tok_embd {
                Weight::Dense(e) => row.copy_from_slice(&e[tok * c.d_model..(tok + 1) * c.d_model]),
                Weight::Packed(e) => e.decode_rows(tok, row),
                // Embeddings never get a branch; a file that gives one is read as dense.
                Weight::Extended(..) => {
                    row.copy_from_slice(&self.tok_embd.dense()[tok * c.d_model..(tok + 1) * c.d_model])
                }
            }
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        Ok(x)
    }

    /// Runs block `b` (number `il`) on the rows `x`, with its layer named like `swap`, if
    /// any, replaced by `swap`.
    fn block_forward(
        &self,
        il: usize,
        b: &Block,
        x: &mut [f32],
        spans: &[Span],
        caches: &mut [&mut KvCache],
        swap: Option<&Linear>,
    ) {
        let t: usize = spans.iter().map(|s| s.t).sum();
        let inputs = self.block_until_down(il, b, x, spans, caches, swap);
        self.mlp_output(b, &inputs[3], t, x, swap);
        inputs.into_iter().for_each(scratch::give);
    }

    /// The block up to its last projection: the attention sub-layer is added to the
    /// residual rows `x`, and the four distinct inputs of its linear layers come back —
    /// the attention-normed rows (q/k/v), the heads' outputs (o), the MLP-normed rows
    /// (gate/up) and the MLP's inner activations (down).
    fn block_until_down(
        &self,
        il: usize,
        b: &Block,
        x: &mut [f32],
        spans: &[Span],
        caches: &mut [&mut KvCache],
        swap: Option<&Linear>,
    ) -> [Vec<f32>; 4] {
        let c = &self.cfg;
        let t: usize = spans.iter().map(|s| s.t).sum();
        let mut h = scratch::copy_of(x);
        rms_norm(&mut h, c.d_model, &b.attn_norm, c.eps);
        let attn = self.attention(il, b, &h, spans, caches, swap);
        self.attention_output(b, &attn, t, x, swap);
        let mut h_mlp = scratch::copy_of(x);
        rms_norm(&mut h_mlp, c.d_model, &b.ffn_norm, c.eps);
        let act = self.mlp_activations(b, &h_mlp, t, swap);
        [h, attn, h_mlp, act]
    }

    /// The attention heads' outputs (`t` rows of `n_head × head_dim`, before the output
    /// projection) for the attention-normed rows `h`, each sequence attending to its own
    /// cache (which gains the new keys and values).
    fn attention(
        &self,
        il: usize,
        b: &Block,
        h: &[f32],
        spans: &[Span],
        caches: &mut [&mut KvCache],
        swap: Option<&Linear>,
    ) -> Vec<f32> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_head_kv);
        let t: usize = spans.iter().map(|s| s.t).sum();
        let [mut q, mut k, v]: [Vec<f32>; 3] =
            super::forward_many(&[pick(&b.wq, swap), pick(&b.wk, swap), pick(&b.wv, swap)], h, t)
                .try_into()
                .expect("three outputs");
        if let Some(w) = &b.q_norm {
            rms_norm(&mut q, hd, w, c.eps);
        }
        if let Some(w) = &b.k_norm {
            rms_norm(&mut k, hd, w, c.eps);
        }
        let positions: Vec<usize> = spans.iter().flat_map(|s| s.pos0..s.pos0 + s.t).collect();
        let angles: Vec<Vec<(f32, f32)>> =
            positions.into_par_iter().map(|p| rope_angles(p, c.rope_dim, &b.attention.rope)).collect();
        // A cache that keeps keys before RoPE (KVQuant-style) is given them unrotated.
        let pre_rope = caches.iter().any(|c| c.layers[il].keys_before_rope()).then(|| k.clone());
        q.par_chunks_mut(nh * hd).zip(&angles).for_each(|(row, ang)| {
            for head in row.chunks_exact_mut(hd) {
                apply_rope(head, ang, c.rope_neox);
                head.iter_mut().for_each(|v| *v *= c.attn_scale);
            }
        });
        k.par_chunks_mut(nkv * hd).zip(&angles).for_each(|(row, ang)| {
            for head in row.chunks_exact_mut(hd) {
                apply_rope(head, ang, c.rope_neox);
            }
        });

        let window = b.attention.window;
        let (q_row, kv_row) = (nh * hd, nkv * hd);
        let mut starts = Vec::with_capacity(spans.len());
        spans.iter().fold(0, |row, s| {
            starts.push(row);
            row + s.t
        });
        // Each sequence attends to its own cache: query i (position pos0 + i) sees the keys
        // up to itself, within the window if any.
        let per_seq: Vec<Vec<f32>> = caches
            .par_iter_mut()
            .zip(spans.par_iter().zip(&starts))
            .map(|(cache, (s, &r0))| {
                let rows = r0..r0 + s.t;
                let layer = &mut cache.layers[il];
                let keys = if layer.keys_before_rope() { pre_rope.as_deref().unwrap_or(&k) } else { &k };
                let kv_rows = rows.start * kv_row..rows.end * kv_row;
                layer.append(&keys[kv_rows.clone()], &v[kv_rows], kv_row);
                let angles_of = |p: usize| rope_angles(p, c.rope_dim, &b.attention.rope);
                let rope = Rope { dim: c.rope_dim, head_dim: hd, neox: c.rope_neox, angles: &angles_of };
                let (ks, vs) = layer.read(kv_row, &rope);
                let pos0 = s.pos0;
                multi_head_attention(
                    &q[rows.start * q_row..rows.end * q_row],
                    &ks,
                    &vs,
                    s.t,
                    pos0 + s.t,
                    nh,
                    nkv,
                    hd,
                    |i| {
                        let p = pos0 + i;
                        window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1
                    },
                )
            })
            .collect();
        [q, k, v].into_iter().for_each(scratch::give);
        if per_seq.len() == 1 {
            per_seq.into_iter().next().unwrap_or_default()
        } else {
            let all = per_seq.concat();
            per_seq.into_iter().for_each(scratch::give);
            all
        }
    }

    /// Adds the attention sub-layer's output (the heads' `attn` through the output
    /// projection and the post-norm, if any) to the residual rows `x`.
    fn attention_output(&self, b: &Block, attn: &[f32], t: usize, x: &mut [f32], swap: Option<&Linear>) {
        let mut a = pick(&b.wo, swap).forward(attn, t);
        if let Some(w) = &b.attn_post_norm {
            rms_norm(&mut a, self.cfg.d_model, w, self.cfg.eps);
        }
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        scratch::give(a);
    }

    /// The gated MLP's inner activations (`t` rows of `d_ff`: act(gate) · up) for the
    /// MLP-normed rows `h`: the down projection's input.
    fn mlp_activations(&self, b: &Block, h: &[f32], t: usize, swap: Option<&Linear>) -> Vec<f32> {
        let [mut gate, up]: [Vec<f32>; 2] =
            super::forward_many(&[pick(&b.w_gate, swap), pick(&b.w_up, swap)], h, t).try_into().expect("two outputs");
        let act = self.cfg.activation;
        gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| match act {
            Activation::Silu => pointwise::silu_gate(g, u),
            Activation::GeluTanh => pointwise::gelu_gate(g, u),
        });
        scratch::give(up);
        gate
    }

    /// Adds the MLP's output (`act` through the down projection and the post-norm, if
    /// any) to the residual rows `x`.
    fn mlp_output(&self, b: &Block, act: &[f32], t: usize, x: &mut [f32], swap: Option<&Linear>) {
        let mut m = pick(&b.w_down, swap).forward(act, t);
        if let Some(w) = &b.ffn_post_norm {
            rms_norm(&mut m, self.cfg.d_model, w, self.cfg.eps);
        }
        x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
        scratch::give(m);
    }

    /// Logits for `t` rows of final hidden states.
    pub fn logits(&self, hidden: &[f32], t: usize) -> Vec<f32> {
        match &self.output {
            Some(o) => o.forward(hidden, t),
            None => self.tok_embd.project(hidden, t, self.cfg.d_model, self.cfg.vocab, self.tied_act_quant),
        }
    }
}

/// `l`, or `swap` where it stands for `l` (the same tensor name).
fn pick<'a>(l: &'a Linear, swap: Option<&'a Linear>) -> &'a Linear {
    match swap {
        Some(s) if s.name == l.name => s,
        _ => l,
    }
}

impl super::CausalLm for Decoder {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }
    fn hidden_size(&self) -> usize {
        self.cfg.d_model
    }
    fn new_cache(&self, max_tokens: usize) -> KvCache {
        Decoder::new_cache(self, max_tokens)
    }
    fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Decoder::forward_hidden(self, tokens, cache)
    }
    fn forward_batch(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<f32>> {
        Decoder::forward_batch(self, seqs)
    }
    fn logits(&self, hidden: &[f32], t: usize) -> Vec<f32> {
        Decoder::logits(self, hidden, t)
    }
    fn output_rows(&self, r0: usize, out: &mut [f32]) {
        let w = self.output.as_ref().map_or(&self.tok_embd, |o| &o.weight);
        let span = r0 * self.cfg.d_model..r0 * self.cfg.d_model + out.len();
        match w {
            Weight::Packed(p) => p.decode_rows(r0, out),
            Weight::Dense(v) => out.copy_from_slice(&v[span]),
            Weight::Extended(..) => out.copy_from_slice(&w.dense()[span]),
        }
    }
    fn final_norm(&self, x: &mut [f32]) {
        rms_norm(x, self.cfg.d_model, &self.out_norm, self.cfg.eps);
    }
    fn weight_mut(&mut self, name: &str) -> Option<&mut Weight> {
        if name == "token_embd.weight" {
            return Some(&mut self.tok_embd);
        }
        if self.output.as_ref().is_some_and(|o| o.name == name) {
            return self.output.as_mut().map(|o| &mut o.weight);
        }
        self.block_linears_mut().into_iter().find(|l| l.name == name).map(|l| &mut l.weight)
    }
    fn block_count(&self) -> usize {
        self.blocks.len()
    }
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Decoder::embed(self, tokens)
    }
    fn run_block(&self, il: usize, x: &mut [f32], t: usize) {
        let mut cache = self.new_cache(t);
        self.block_forward(il, &self.blocks[il], x, &[Span { t, pos0: 0 }], &mut [&mut cache], None);
    }
    fn run_block_swapped(&self, il: usize, x: &mut [f32], t: usize, swap: &Linear) {
        let mut cache = self.new_cache(t);
        self.block_forward(il, &self.blocks[il], x, &[Span { t, pos0: 0 }], &mut [&mut cache], Some(swap));
    }
    fn block_inputs(&self, il: usize, x: &mut [f32], t: usize, advance: bool) -> Vec<(String, Vec<f32>)> {
        let mut cache = self.new_cache(t);
        let b = &self.blocks[il];
        let spans = [Span { t, pos0: 0 }];
        let inputs = if advance {
            // `block_forward`'s two steps, keeping the inputs.
            let inputs = self.block_until_down(il, b, x, &spans, &mut [&mut cache], None);
            self.mlp_output(b, &inputs[3], t, x, None);
            inputs
        } else {
            self.block_until_down(il, b, &mut x.to_vec(), &spans, &mut [&mut cache], None)
        };
        [&b.wq, &b.wo, &b.w_gate, &b.w_down].iter().map(|l| l.name.clone()).zip(inputs).collect()
    }
    fn block_linears_of(&mut self, il: usize) -> Vec<&mut super::Linear> {
        let b = &mut self.blocks[il];
        vec![&mut b.wq, &mut b.wk, &mut b.wv, &mut b.wo, &mut b.w_gate, &mut b.w_up, &mut b.w_down]
    }
    fn weight_bytes_per_token(&self) -> u64 {
        let blocks: usize = self
            .blocks
            .iter()
            .flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down])
            .map(|l| l.weight.stored_bytes())
            .sum();
        let output = self.output.as_ref().map_or(self.tok_embd.stored_bytes(), |o| o.weight.stored_bytes());
        (blocks + output) as u64
    }
    fn block_linears_mut(&mut self) -> Vec<&mut super::Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| [&mut b.wq, &mut b.wk, &mut b.wv, &mut b.wo, &mut b.w_gate, &mut b.w_up, &mut b.w_down])
            .collect()
    }
}
