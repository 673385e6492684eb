//! The KV cache's storage: keys and values of past positions, per layer, in f32 or in low
//! bits. Two families:
//!
//! - **llama.cpp's cache types** (`-ctk/-ctv f16|bf16|q8_0|q5_0|q5_1|q4_0|q4_1|iq4_nl`):
//!   each position's key row (after RoPE) and value row encoded as that ggml type, blocks of
//!   32 along the row, round to nearest as ggml's `quantize_row_*_ref` — what llama.cpp's
//!   CPU backend stores.
//! - **KVQuant-style** (`kvq4`, `kvq3`, `kvq2`; Hooper et al. 2024, in the seed, with
//!   KIVI's grouping): keys quantized *per channel* and *before RoPE* (a channel's scale and
//!   minimum per group of [`KVQ_GROUP`] positions; the last, unfinished group stays f32
//!   until it fills; the first position — the attention sink — kept in f16 out of the
//!   ranges, as KVQuant does), values per position (Walsh–Hadamard-rotated, then a scale
//!   and minimum per [`KVQ_GROUP`] values of a row); asymmetric N-bit codes, f16
//!   scale/minimum. The `…o` variants (`kvq4o`) also keep the largest 1/128 of each row's
//!   magnitudes apart, in f16, out of the ranges ("dense-and-sparse"). Keys get RoPE when
//!   read. The sink and the value rotation were chosen on Emma (not the evaluation text):
//!   smollm2, ctx 512, 8 chunks, mean KLD of kvq4 / kvq3: neither 0.0176 / 0.0851, sink
//!   0.0160 / 0.0793, rotation 0.0160 / 0.0789, both 0.0135 / 0.0672.
//!
//! Attention reads a layer's whole cache as f32 rows ([`LayerKv::read`]): f32 storage lends
//! its rows, the others decode into fresh buffers.

use std::borrow::Cow;

use half::f16;

use crate::format::encode::{quantize_row, Fit};
use crate::format::GgmlType;

/// Positions per key group (and values per value group) of the KVQuant-style modes: an
/// f16 scale and minimum per 64 codes is 0.5 bit per value, as llama.cpp's q4_0 pays.
pub const KVQ_GROUP: usize = 64;

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Plain f32 (exact; the default).
    #[default]
    F32,
    /// A ggml type, per position row, as llama.cpp's `-ctk/-ctv`.
    Ggml(GgmlType),
    /// KVQuant-style: `bits`-bit keys per channel before RoPE, values per position;
    /// `outliers`: the largest 1/128 of each row kept exactly.
    Kvq {
        /// Code bits (2…4).
        bits: u8,
        /// Keep each row's largest magnitudes apart.
        outliers: bool,
    },
}

/// The ggml types llama.cpp's CPU backend accepts for its KV cache.
const GGML_KV_TYPES: &[GgmlType] = &[
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
];

impl KvType {
    /// Parses `f32`, a llama.cpp cache type (`f16`, `bf16`, `q8_0`, `q5_0`, `q5_1`, `q4_0`,
    /// `q4_1`, `iq4_nl`), or `kvq4`/`kvq3`/`kvq2` with an optional `o` (outliers apart).
    pub fn parse(s: &str) -> Option<KvType> {
        let l = s.to_ascii_lowercase();
        if l == "f32" {
            return Some(KvType::F32);
        }
        if let Some(rest) = l.strip_prefix("kvq") {
            let (digits, outliers) = match rest.strip_suffix('o') {
                Some(d) => (d, true),
                None => (rest, false),
            };
            return match digits.parse::<u8>() {
                Ok(bits @ 2..=4) => Some(KvType::Kvq { bits, outliers }),
                _ => None,
            };
        }
        let ty = GgmlType::from_name(&s.to_ascii_uppercase())?;
        GGML_KV_TYPES.contains(&ty).then_some(KvType::Ggml(ty))
    }

    /// Every name [`KvType::parse`] takes, for help texts and errors.
    pub const NAMES: &'static str =
        "f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, iq4_nl, kvq4, kvq3, kvq2, kvq4o, kvq3o, kvq2o";

    /// The name `parse` reads back.
    pub fn name(self) -> String {
        match self {
            KvType::F32 => "f32".into(),
            KvType::Ggml(t) => t.name().to_ascii_lowercase(),
            KvType::Kvq { bits, outliers } => format!("kvq{bits}{}", if outliers { "o" } else { "" }),
        }
    }

    /// Why rows of `row` values (one position's keys or values) cannot be stored, if so.
    pub fn check_row(self, row: usize) -> Result<(), String> {
        let block = match self {
            KvType::F32 => 1,
            KvType::Ggml(t) => t.block_size(),
            KvType::Kvq { .. } => KVQ_GROUP.min(row).max(8),
        };
        if row == 0 || !row.is_multiple_of(block) || (matches!(self, KvType::Kvq { .. }) && !row.is_multiple_of(8)) {
            return Err(format!(
                "a {row}-value key/value row is not whole blocks of {block} for a {} KV cache",
                self.name()
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvType::parse(s).ok_or_else(|| format!("unknown KV cache type '{s}' (one of: {})", KvType::NAMES))
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// How keys are rotated when read (KVQuant stores them before RoPE).
pub struct Rope<'a> {
    /// Rotated dimensions per head.
    pub dim: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// NEOX pairing.
    pub neox: bool,
    /// The angles of position `p`.
    pub angles: &'a dyn Fn(usize) -> Vec<(f32, f32)>,
}

/// One layer's keys and values.
#[derive(Clone)]
pub enum LayerKv {
    /// f32 rows.
    F32 {
        /// Keys after RoPE.
        k: Vec<f32>,
        /// Values.
        v: Vec<f32>,
    },
    /// ggml-type rows.
    Ggml {
        /// The type.
        ty: GgmlType,
        /// Width of the Walsh–Hadamard rotation applied to keys before encoding (undone
        /// after decoding), 0 for none: llama.cpp's `attn_rot_k`.
        rot_k: usize,
        /// The same for values (`attn_rot_v`).
        rot_v: usize,
        /// Encoded key rows (after RoPE).
        k: Vec<u8>,
        /// Encoded value rows.
        v: Vec<u8>,
    },
    /// KVQuant-style.
    Kvq {
        /// Keys before RoPE, per channel.
        k: ChannelGroups,
        /// Values per position.
        v: TokenGroups,
    },
}

/// Asymmetric `bits`-bit codes of `x` with f16 scale and minimum; returns (scale, min).
/// `skip[i]` excludes a value from the range (an outlier stored apart).
fn fit_range(x: impl Iterator<Item = (f32, bool)> + Clone, bits: u8) -> (f16, f16) {
    let (lo, hi) = x
        .filter(|&(_, skip)| !skip)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (v, _)| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (f16::ZERO, f16::ZERO);
    }
    let levels = ((1u32 << bits) - 1) as f32;
    (f16::from_f32((hi - lo) / levels), f16::from_f32(lo))
}

fn code(v: f32, scale: f16, min: f16, bits: u8) -> u8 {
    let s = scale.to_f32();
    if s == 0.0 {
        return 0;
    }
    ((v - min.to_f32()) / s).round().clamp(0.0, ((1u32 << bits) - 1) as f32) as u8
}

/// Appends `codes` packed `bits` to a value, least significant first.
fn pack(codes: &[u8], bits: u8, out: &mut Vec<u8>) {
    let (mut acc, mut n) = (0u32, 0u8);
    for &c in codes {
        acc |= (c as u32) << n;
        n += bits;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
    }
}

/// The `i`-th `bits`-bit code of `packed`.
fn unpack(packed: &[u8], bits: u8, i: usize) -> u8 {
    let bit = i * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = packed[byte] as u16;
    let hi = packed.get(byte + 1).copied().unwrap_or(0) as u16;
    (((lo | hi << 8) >> shift) & ((1 << bits) - 1)) as u8
}

/// The positions of the largest `row.len() / 128` (at least one) magnitudes of `row`.
fn outlier_mask(row: &[f32]) -> Vec<bool> {
    let n = (row.len() / 128).max(1);
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
    let mut mask = vec![false; row.len()];
    order[..n].iter().for_each(|&i| mask[i] = true);
    mask
}

/// Coded values: `bits`-bit asymmetric codes (packed in push order), their f16 (scale,
/// min) pairs, and the values kept apart in f16 (outliers, the sink) — the storage both
/// KVQuant-style stores share; they differ only in which pair codes which value.
#[derive(Clone)]
struct Coded {
    bits: u8,
    codes: Vec<u8>,
    params: Vec<(f16, f16)>,
    /// (index among all coded values, exact value).
    apart: Vec<(u32, f16)>,
    /// Values coded so far.
    len: usize,
}

impl Coded {
    fn new(bits: u8) -> Self {
        Coded { bits, codes: vec![], params: vec![], apart: vec![], len: 0 }
    }

    /// Codes `x` (a whole number of bytes of codes), value `i` with `params[param_of(i)]`;
    /// values whose `mask` is set are also kept apart.
    fn push(&mut self, x: &[f32], mask: &[bool], params: Vec<(f16, f16)>, param_of: impl Fn(usize) -> usize) {
        let codes: Vec<u8> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (s, m) = params[param_of(i)];
                code(v, s, m, self.bits)
            })
            .collect();
        pack(&codes, self.bits, &mut self.codes);
        for (i, (&v, &m)) in x.iter().zip(mask).enumerate() {
            if m {
                self.apart.push(((self.len + i) as u32, f16::from_f32(v)));
            }
        }
        self.params.extend(params);
        self.len += x.len();
    }

    /// Every coded value, value `i` decoded with `params[param_of(i)]`, the kept-apart
    /// ones restored.
    fn decode(&self, param_of: impl Fn(usize) -> usize) -> Vec<f32> {
        let mut out: Vec<f32> = (0..self.len)
            .map(|i| {
                let (s, m) = self.params[param_of(i)];
                m.to_f32() + unpack(&self.codes, self.bits, i) as f32 * s.to_f32()
            })
            .collect();
        for &(i, v) in &self.apart {
            out[i as usize] = v.to_f32();
        }
        out
    }

    fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.params.len() + 6 * self.apart.len()
    }
}

/// Keys quantized per channel over groups of [`KVQ_GROUP`] positions; the unfinished
/// group kept as f32 rows.
#[derive(Clone)]
pub struct ChannelGroups {
    outliers: bool,
    row: usize,
    /// Finished groups: codes position-major; one (scale, min) per group and channel.
    coded: Coded,
    /// Rows of the unfinished group.
    pending: Vec<f32>,
}

impl ChannelGroups {
    fn new(bits: u8, outliers: bool, row: usize) -> Self {
        ChannelGroups { outliers, row, coded: Coded::new(bits), pending: vec![] }
    }

    fn push(&mut self, rows: &[f32]) {
        self.pending.extend_from_slice(rows);
        while self.pending.len() >= KVQ_GROUP * self.row {
            let group: Vec<f32> = self.pending.drain(..KVQ_GROUP * self.row).collect();
            self.seal(&group);
        }
    }

    fn seal(&mut self, group: &[f32]) {
        let row = self.row;
        let mut mask: Vec<bool> = if self.outliers {
            group.chunks_exact(row).flat_map(outlier_mask).collect()
        } else {
            vec![false; group.len()]
        };
        // The first position (the attention sink: BOS) has keys far off the others';
        // KVQuant keeps it in f16 rather than stretch every channel's first range.
        if self.coded.len == 0 {
            mask[..row].iter_mut().for_each(|m| *m = true);
        }
        let params: Vec<(f16, f16)> = (0..row)
            .map(|c| fit_range((0..KVQ_GROUP).map(|p| (group[p * row + c], mask[p * row + c])), self.coded.bits))
            .collect();
        self.coded.push(group, &mask, params, |i| i % row);
    }

    fn bytes(&self) -> usize {
        self.coded.bytes() + 4 * self.pending.len()
    }

    /// All rows, decoded, before RoPE.
    fn decode(&self) -> Vec<f32> {
        let row = self.row;
        let mut out = self.coded.decode(|i| (i / (KVQ_GROUP * row)) * row + i % row);
        out.extend_from_slice(&self.pending);
        out
    }
}

/// Values quantized per position, in groups of [`KVQ_GROUP`] values of a row.
#[derive(Clone)]
pub struct TokenGroups {
    outliers: bool,
    row: usize,
    /// One (scale, min) per group of a row.
    coded: Coded,
}

impl TokenGroups {
    fn new(bits: u8, outliers: bool, row: usize) -> Self {
        TokenGroups { outliers, row, coded: Coded::new(bits) }
    }

    fn group(&self) -> usize {
        KVQ_GROUP.min(self.row)
    }

    /// Width of the Walsh–Hadamard rotation values get before grouping (the group, when
    /// a power of two): it spreads a row's outliers over its group, as llama.cpp's
    /// `attn_rot_v` does for its value cache.
    fn rotation(&self) -> usize {
        let g = self.group();
        if g.is_power_of_two() {
            g
        } else {
            0
        }
    }

    fn push(&mut self, rows: &[f32]) {
        let mut rows = rows.to_vec();
        rotate(&mut rows, self.rotation());
        let g = self.group();
        for r in rows.chunks_exact(self.row) {
            let mask = if self.outliers { outlier_mask(r) } else { vec![false; r.len()] };
            let params: Vec<(f16, f16)> = r
                .chunks_exact(g)
                .zip(mask.chunks_exact(g))
                .map(|(x, m)| fit_range(x.iter().copied().zip(m.iter().copied()), self.coded.bits))
                .collect();
            self.coded.push(r, &mask, params, |i| i / g);
        }
    }

    fn bytes(&self) -> usize {
        self.coded.bytes()
    }

    /// All rows, decoded, still rotated.
    fn decode(&self) -> Vec<f32> {
        let g = self.group();
        self.coded.decode(|i| i / g)
    }
}

/// The orthonormal Walsh–Hadamard transform of `x` (a power-of-two length), in place:
/// Sylvester order, scaled by 1/√n, so applying it twice gives `x` back — the matrix
/// llama.cpp's `ggml_gen_hadamard` builds.
fn hadamard(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

/// Rotates every `width`-value block of `rows` (no-op for width 0).
fn rotate(rows: &mut [f32], width: usize) {
    if width > 0 {
        rows.chunks_exact_mut(width).for_each(hadamard);
    }
}

/// llama.cpp's rotation widths for a quantized cache of `head_dim`-wide heads (its
/// `llama_kv_cache` since PR 21038): keys by the largest power of two ≥ 64 dividing the
/// head, values by 64; none unless the head is a multiple of 64 and the type quantized.
fn llama_cpp_rotations(ty: GgmlType, head_dim: usize) -> (usize, usize) {
    if matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::F32) || !head_dim.is_multiple_of(64) {
        return (0, 0);
    }
    let mut k = 64;
    while head_dim.is_multiple_of(2 * k) {
        k *= 2;
    }
    (k, 64)
}

impl LayerKv {
    /// An empty layer cache of `kind` for `row`-value rows of `head_dim`-wide heads, room
    /// for `capacity` positions.
    pub fn new(kind: KvType, row: usize, head_dim: usize, capacity: usize) -> LayerKv {
        match kind {
            KvType::F32 => {
                LayerKv::F32 { k: Vec::with_capacity(capacity * row), v: Vec::with_capacity(capacity * row) }
            }
            KvType::Ggml(ty) => {
                let (rot_k, rot_v) = llama_cpp_rotations(ty, head_dim);
                LayerKv::Ggml { ty, rot_k, rot_v, k: vec![], v: vec![] }
            }
            KvType::Kvq { bits, outliers } => {
                LayerKv::Kvq { k: ChannelGroups::new(bits, outliers, row), v: TokenGroups::new(bits, outliers, row) }
            }
        }
    }

    /// Whether keys are stored before RoPE (then `append` takes them unrotated).
    pub fn keys_before_rope(&self) -> bool {
        matches!(self, LayerKv::Kvq { .. })
    }

    /// Appends rows of keys (rotated or not, per [`LayerKv::keys_before_rope`]) and values.
    pub fn append(&mut self, k: &[f32], v: &[f32], row: usize) {
        match self {
            LayerKv::F32 { k: ks, v: vs } => {
                ks.extend_from_slice(k);
                vs.extend_from_slice(v);
            }
            LayerKv::Ggml { ty, rot_k, rot_v, k: ks, v: vs } => {
                let rb = row / ty.block_size() * ty.type_size();
                for (src, dst, rot) in [(k, ks, *rot_k), (v, vs, *rot_v)] {
                    let mut r = vec![0.0; row];
                    for src_row in src.chunks_exact(row) {
                        r.copy_from_slice(src_row);
                        rotate(&mut r, rot);
                        let at = dst.len();
                        dst.resize(at + rb, 0);
                        // A non-finite activation is stored as whatever the encoder refuses
                        // to: the row stays zero, and the logits' own NaN check reports it.
                        let _ = quantize_row(*ty, &r, None, Fit::Rtn, &mut dst[at..]);
                    }
                }
            }
            LayerKv::Kvq { k: ks, v: vs } => {
                ks.push(k);
                vs.push(v);
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            LayerKv::F32 { k, v } => 4 * (k.len() + v.len()),
            LayerKv::Ggml { k, v, .. } => k.len() + v.len(),
            LayerKv::Kvq { k, v } => k.bytes() + v.bytes(),
        }
    }

    /// Every stored position's keys (after RoPE) and values as f32 rows.
    pub fn read(&self, row: usize, rope: &Rope) -> (Cow<'_, [f32]>, Cow<'_, [f32]>) {
        match self {
            LayerKv::F32 { k, v } => (Cow::Borrowed(k), Cow::Borrowed(v)),
            LayerKv::Ggml { ty, rot_k, rot_v, k, v } => {
                // Rotating back after decoding is rotating the queries (keys) and the
                // attention output (values) as llama.cpp does: H is orthonormal.
                let dec = |b: &[u8], rot: usize| {
                    let n = b.len() / ty.type_size() * ty.block_size();
                    let mut x = crate::format::dequantize_to_vec(*ty, b, n).unwrap_or_else(|_| vec![f32::NAN; n]);
                    rotate(&mut x, rot);
                    x
                };
                (Cow::Owned(dec(k, *rot_k)), Cow::Owned(dec(v, *rot_v)))
            }
            LayerKv::Kvq { k, v } => {
                let mut keys = k.decode();
                for (p, r) in keys.chunks_exact_mut(row).enumerate() {
                    let ang = (rope.angles)(p);
                    for head in r.chunks_exact_mut(rope.head_dim) {
                        crate::tensor::apply_rope(head, &ang[..rope.dim / 2], rope.neox);
                    }
                }
                let mut values = v.decode();
                rotate(&mut values, v.rotation());
                (Cow::Owned(keys), Cow::Owned(values))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for n in KvType::NAMES.split(", ") {
            let t = KvType::parse(n).unwrap_or_else(|| panic!("{n}"));
            assert_eq!(t.name(), n);
        }
        for bad in ["q2_k", "kvq5", "kvq1", "kvq", "f64", ""] {
            assert!(KvType::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_rotation_is_llama_cpp_s_orthonormal_hadamard() {
        // Sylvester H₄/2: rows (1,1,1,1), (1,−1,1,−1), (1,1,−1,−1), (1,−1,−1,1).
        let mut e = [0.0, 1.0, 0.0, 0.0];
        hadamard(&mut e);
        assert_eq!(e, [0.5, -0.5, 0.5, -0.5]);
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut y = x.clone();
        hadamard(&mut y);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y) - norm(&x)).abs() <= 1e-4 * norm(&x));
        hadamard(&mut y);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 1e-5));
        assert_eq!(llama_cpp_rotations(GgmlType::Q4_0, 64), (64, 64));
        assert_eq!(llama_cpp_rotations(GgmlType::Q4_0, 256), (256, 64));
        assert_eq!(llama_cpp_rotations(GgmlType::Q8_0, 96), (0, 0));
        assert_eq!(llama_cpp_rotations(GgmlType::F16, 128), (0, 0));
    }

    #[test]
    fn packing_round_trips_every_width() {
        for bits in 2..=4u8 {
            let codes: Vec<u8> = (0..200).map(|i| (i * 7 % (1 << bits)) as u8).collect();
            let mut p = vec![];
            pack(&codes, bits, &mut p);
            assert_eq!(p.len(), (200 * bits as usize).div_ceil(8));
            assert!(codes.iter().enumerate().all(|(i, &c)| unpack(&p, bits, i) == c));
        }
    }

    /// Every stored value comes back within half a step of its group's range (the
    /// unfinished key group and the outliers exactly, up to f16), and the bytes are what
    /// the layout says.
    #[test]
    fn kvq_rows_come_back_within_half_a_step() {
        let row = 128;
        let n = 150; // two finished key groups and 22 pending positions
        let x: Vec<f32> =
            (0..n * row).map(|i| ((i as f32 * 0.731).sin() * 2.0) * if i % row == 5 { 20.0 } else { 1.0 }).collect();
        // Values are grouped after their rotation: the bound holds there.
        let mut xr = x.clone();
        rotate(&mut xr, 64);
        let no_rope = |_p: usize| vec![(0.0f32, 1.0f32); 32];
        let rope = Rope { dim: 64, head_dim: 64, neox: false, angles: &no_rope };
        for outliers in [false, true] {
            let mut l = LayerKv::new(KvType::Kvq { bits: 4, outliers }, row, 64, n);
            l.append(&x[..70 * row], &x[..70 * row], row);
            l.append(&x[70 * row..], &x[70 * row..], row);
            let (k, v) = l.read(row, &rope);
            let mut v = v.into_owned();
            rotate(&mut v, 64);
            for (name, got, want) in [("keys", &k[..], &x), ("values", &v[..], &xr)] {
                for (i, (&a, &b)) in got.iter().zip(want.iter()).enumerate() {
                    let members: Vec<f32> = if name == "keys" {
                        let (g, c) = (i / row / KVQ_GROUP, i % row);
                        if g >= 2 {
                            assert_eq!(a, b, "pending keys are kept as they are");
                            continue;
                        }
                        (0..KVQ_GROUP).map(|p| x[(g * KVQ_GROUP + p) * row + c]).collect()
                    } else {
                        xr[i / 64 * 64..i / 64 * 64 + 64].to_vec()
                    };
                    let (lo, hi) = members.iter().fold((f32::MAX, f32::MIN), |(l, h), &m| (l.min(m), h.max(m)));
                    let step = (hi - lo) / 15.0;
                    // Half a step, plus the f16 rounding of scale and minimum (15 steps of
                    // a relative 2⁻¹¹ each, and the minimum's own), plus two rotations'
                    // f32 rounding for values.
                    let tol = 0.5 * step + 16.0 * (hi - lo).abs() / 2048.0 + lo.abs() / 2048.0 + 1e-5 * hi.abs();
                    assert!((a - b).abs() <= tol, "{name} {i}: {a} vs {b} (tol {tol}, outliers {outliers})");
                }
            }
            // The sink's keys are apart (f16, 6 bytes each); with outliers also one per
            // other key row of a finished group and one per value row.
            let apart = if outliers { 6 * (row + (2 * KVQ_GROUP - 1) + n) } else { 6 * row };
            let finished = 2 * KVQ_GROUP * row;
            assert_eq!(
                l.bytes(),
                finished / 2 + 4 * 2 * row + 4 * 22 * row + n * row / 2 + 4 * n * row / 64 + apart,
                "outliers {outliers}"
            );
        }
    }

    #[test]
    fn ggml_rows_are_llama_cpp_s_reference_rounding() {
        let row = 64;
        let x: Vec<f32> = (0..3 * row).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut l = LayerKv::new(KvType::Ggml(GgmlType::Q8_0), row, 32, 3);
        l.append(&x, &x, row);
        assert_eq!(l.bytes(), 2 * 3 * 2 * 34);
        let rope = Rope { dim: 0, head_dim: 64, neox: false, angles: &|_| vec![] };
        let (k, _) = l.read(row, &rope);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Half a step of d = amax/127, plus d's own f16 rounding (2⁻¹¹ relative) times the
        // largest code.
        let tol = (0.5 + 127.0 / 2048.0) * amax / 127.0 * 1.001;
        assert!(k.iter().zip(&x).all(|(a, b)| (a - b).abs() <= tol));
    }
}
