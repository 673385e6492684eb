//! The quantized runtime's compute: matrix products straight from stored weights, in
//! every format lowbit reads, without a dense f32 copy of the matrix.
//!
//! Contract: [`PackedMatrix::matmul`] computes `out[t×n] = x[t×k] · Wᵀ` for a matrix `W`
//! of `n` stored rows of `k` values, equal to decoding `W` (the type's decoder in
//! `format/`) and multiplying in f32 — up to f32 summation order — or, with an activation
//! type, to llama.cpp's CPU arithmetic (activations quantized to Q8_0/Q8_1/Q8_K, integer
//! dot products per block, as `ggml_vec_dot_*` do). Each output is computed the same way
//! whatever the number of threads, so results are identical with 1, 2 or N threads.
//!
//! How, per shape (measured on the zoo models, `lowbit bench`):
//! - a few activation rows (generation; `t ≤ rows::MAX_ROWS`): each block of a weight row
//!   is unpacked once into small integers ([`blocks`]: `value = d·w − dmin·min`) and
//!   dotted with every activation row — integer multiply-adds against quantized
//!   activations, or f32 lanes against exact ones (at AVX-512, Q4_0/IQ4_NL/Q5_0/Q8_0 against
//!   Q8_0 activations are dotted as bytes instead, two rows at a time: [`bytes32`]; the grid
//!   i-quants against Q8_K too: [`iq_bytes`]). VQ formats look their codebooks up in
//!   registers ([`vq_bytes`]: f16 entries against exact activations, int16 entries against
//!   Q8_0 ones), or through per-token f32 tables ([`vq`]) where the byte tables do not fit;
//!   other types without an integer form (floats, lowbit's native formats) decode the row
//!   to f32 and dot it.
//! - many rows (prompt processing, evaluation chunks): tiles of 64 weight rows, each
//!   unpacked once for the whole batch. In llama.cpp numerics on AVX-512 VNNI they stay
//!   integers and meet activations quantized once per batch ([`tiles`]: `vpdpwssd`, one
//!   float multiply-add per block); otherwise they are decoded to f32 and multiplied with
//!   `gemm`'s register-blocked microkernel. Unpacking costs `1/t` of the multiply-adds.
//!
//! Every loop is compiled for AVX-512, AVX2 and the build's baseline ([`isa`]) and picked
//! at run time; tests check each against the scalar reference
//! ([`crate::format::storage::dot_reference`]) for every type.
#![allow(unsafe_code)]

pub mod acts;
mod aligned;
pub mod blocks;
mod bytes32;
mod iq_bytes;
pub mod isa;
mod nibbles;
/// Whether a native format takes Q8_0 activations in llama.cpp numerics (the model's
/// `act_quant_for` and the kernel bench ask).
pub use nibbles::takes_q8 as nibbles_take_q8;
pub mod pointwise;
mod rows;
pub mod simd;
#[cfg(test)]
mod tests;
mod tiles;
mod vq;
mod vq_bytes;

use std::ops::Deref;
use std::sync::Arc;

use rayon::prelude::*;

use crate::format::activation::fake_quantize_row;
use crate::format::storage::StorageType;
use crate::format::vq::Codebook;
use crate::format::{DecodeError, GgmlType};
use acts::{ExactRow, QuantRow};
use blocks::{SmallBlock, SuperBlock};
use isa::Level;

pub use rows::MAX_ROWS;

/// A type's row kernels, named in its [`crate::format::TypeFacts`] entry: stored rows ×
/// quantized activation rows (llama.cpp numerics), and stored rows × f32 rows (exact).
/// Both write `out[r·t + i]` for row `r` and activation row `i`.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Rows × activations quantized to the type's `vec_dot` type.
    pub quant: fn(Level, &[u8], usize, &[QuantRow], &mut [f32]),
    /// Rows × f32 activations.
    pub exact: fn(Level, &[u8], usize, &[ExactRow], &mut [f32]),
    /// Whole blocks decoded to f32 through the unpacked form (`d·w − dmin·min`: the
    /// decoder's values up to f32 rounding), vectorised — the exact tile path's decoder.
    pub decode: fn(Level, &[u8], &mut [f32]),
    /// Whole rows unpacked to the integer tile form (the integer tile path).
    unpack: fn(Level, &[u8], usize, &mut tiles::IntTile),
    /// Values per block of the integer form (32 or 256).
    block: usize,
    /// How the block minimum enters a dot product.
    min: tiles::MinTerm,
}

impl Kernel {
    /// The kernels of a 32-value block type.
    pub const fn small<K: SmallBlock>() -> Kernel {
        Kernel {
            quant: rows::small_q8::<K>,
            exact: rows::small_f32::<K>,
            decode: rows::small_decode::<K>,
            unpack: tiles::small_unpack::<K>,
            block: 32,
            min: if K::HAS_MIN { tiles::MinTerm::Offset } else { tiles::MinTerm::None },
        }
    }

    /// The kernels of a 256-value super-block type.
    pub const fn super_block<K: SuperBlock>() -> Kernel {
        Kernel {
            quant: rows::super_q8k::<K>,
            exact: rows::super_f32::<K>,
            decode: rows::super_decode::<K>,
            unpack: tiles::super_unpack::<K>,
            block: 256,
            min: if K::HAS_MIN { tiles::MinTerm::Mins } else { tiles::MinTerm::None },
        }
    }

    /// Whether the integer tile path computes this kernel's products with activations
    /// quantized to `act`: the activation blocks must be the ones its integer form pairs
    /// with (ggml's `vec_dot_type`).
    fn tiles_with(&self, act: GgmlType) -> bool {
        match (self.block, act, self.min) {
            (32, GgmlType::Q8_1, _) => true,
            (32, GgmlType::Q8_0, m) => m != tiles::MinTerm::Offset,
            (256, GgmlType::Q8_K, _) => true,
            _ => false,
        }
    }
}

/// Bytes of a stored matrix: borrowed from a memory-mapped file (kept alive by an `Arc`)
/// or owned (a tensor quantized in memory).
#[derive(Clone)]
pub struct WeightBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl WeightBytes {
    /// Owned bytes.
    pub fn owned(v: Vec<u8>) -> WeightBytes {
        let len = v.len();
        WeightBytes { owner: Arc::new(v), start: 0, len }
    }

    /// `len` bytes at `start` of `owner` (a memory map), which must hold them.
    pub fn shared(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> WeightBytes {
        assert!(start.checked_add(len).is_some_and(|end| end <= (*owner).as_ref().len()), "range outside the buffer");
        WeightBytes { owner, start, len }
    }
}

impl Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

/// A matrix of `rows` stored rows of `cols` values each, in its stored format.
#[derive(Clone)]
pub struct PackedMatrix {
    ty: StorageType,
    bytes: WeightBytes,
    codebook: Option<Arc<Codebook>>,
    /// A VQ matrix's f16 codebooks as byte tables, when its format fits them ([`vq_bytes`]).
    byte_book: Option<Arc<vq_bytes::ByteBook>>,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

/// Weight rows decoded per tile on the many-rows path (64 rows of up to 16k values stay
/// in L2 while the whole batch streams past them).
const TILE_ROWS: usize = 64;

impl PackedMatrix {
    /// Wraps stored bytes, checking they are exactly `rows` rows of `cols` values of `ty`
    /// (a VQ matrix also needs its codebook tensor's bytes).
    pub fn new(
        ty: StorageType,
        bytes: WeightBytes,
        codebook: Option<&[u8]>,
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, DecodeError> {
        let row_bytes = match ty {
            StorageType::Vq(f) => f.row_bytes(cols),
            _ => ty.row_block().and_then(|(bs, bb)| cols.is_multiple_of(bs).then(|| cols / bs * bb)),
        }
        .ok_or_else(|| DecodeError::Invalid(format!("rows of {cols} values cannot be stored as {ty}")))?;
        if bytes.len() != rows * row_bytes {
            return Err(DecodeError::Invalid(format!(
                "{} bytes for {rows} rows of {cols} {ty} values, expected {}",
                bytes.len(),
                rows * row_bytes
            )));
        }
        let codebook = match ty {
            StorageType::Vq(f) => Some(Arc::new(f.parse_codebook(
                codebook.ok_or_else(|| DecodeError::Invalid("a VQ tensor needs its codebook".into()))?,
                cols,
            )?)),
            _ => None,
        };
        let byte_book = match (ty, &codebook) {
            (StorageType::Vq(f), Some(book)) => vq_bytes::ByteBook::new(&f, book, cols).map(Arc::new),
            _ => None,
        };
        Ok(PackedMatrix { ty, bytes, codebook, byte_book, rows, cols, row_bytes })
    }

    /// The storage type.
    pub fn ty(&self) -> StorageType {
        self.ty
    }

    /// Stored rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (the rows; a VQ codebook is counted by its file, not here).
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Decodes rows `r0 ..` into `out` (a whole number of rows of `cols` values).
    pub fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols.max(1);
        assert!(out.len() == n * self.cols && r0 + n <= self.rows, "decode_rows: rows out of range");
        let bytes = &self.bytes[r0 * self.row_bytes..(r0 + n) * self.row_bytes];
        self.decode_into(Level::detected(), bytes, out);
    }

    /// The whole matrix as f32 (for the paths that need dense weights: GPTQ, tests).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1) * 64).enumerate().for_each(|(i, o)| self.decode_rows(i * 64, o));
        out
    }

    /// The first value that decodes to NaN or ±inf, with its index (row-major), if any.
    /// Decodes tile by tile in parallel; keeps nothing.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        let tiles = self.rows.div_ceil(TILE_ROWS);
        (0..tiles).into_par_iter().find_map_first(|tile| {
            let r0 = tile * TILE_ROWS;
            with_scratch(TILE_ROWS.min(self.rows - r0) * self.cols, |buf| {
                self.decode_rows(r0, buf);
                buf.iter().position(|v| !v.is_finite()).map(|i| (r0 * self.cols + i, buf[i]))
            })
        })
    }

    fn decode_into(&self, level: Level, bytes: &[u8], out: &mut [f32]) {
        match self.ty {
            StorageType::Ggml(t) => {
                let f = t.facts();
                for (b, o) in bytes.chunks_exact(f.bytes).zip(out.chunks_exact_mut(f.block)) {
                    (f.decode)(b, o);
                }
            }
            StorageType::Native(f) => nibbles::decode(level, &f, bytes, out),
            StorageType::Vq(f) => {
                let book = self.codebook.as_ref().expect("checked in new");
                for (r, o) in bytes.chunks_exact(self.row_bytes).zip(out.chunks_exact_mut(self.cols)) {
                    f.decode_row(book, r, o);
                }
            }
        }
    }

    /// `out[t×rows] = x[t×cols] · Wᵀ`. With `act` (llama.cpp numerics), each row of `x`
    /// is first quantized to that activation type, as ggml's CPU backend does.
    pub fn matmul(&self, x: &[f32], t: usize, act: Option<GgmlType>, out: &mut [f32]) {
        self.matmul_at(Level::detected(), x, t, act, out)
    }

    /// [`PackedMatrix::matmul`] with the kernels of one instruction-set level (tests,
    /// benchmarks).
    pub fn matmul_at(&self, level: Level, x: &[f32], t: usize, act: Option<GgmlType>, out: &mut [f32]) {
        matmul_batch_at(level, x, t, &mut [Product { m: self, act, out }]);
    }

    /// Whether this native matrix's few-rows products take Q8_0 activations through
    /// [`nibbles::rows_q8`] (4-bit int/NF4/FP4 levels, groups of whole 64s).
    fn nibbles_q8(&self) -> bool {
        matches!(self.ty, StorageType::Native(f) if nibbles::takes_q8(&f))
    }

    /// Whether a VQ matrix's few-rows products go through codebook tables ([`vq`]): not
    /// when its codebooks are byte tables ([`vq_bytes`]).
    fn vq_tables_pay(&self) -> bool {
        self.byte_book.is_none() && matches!(self.ty, StorageType::Vq(f) if vq::worth_it(&f, self.rows))
    }

    /// The kernels of this matrix's type, if it has an integer form.
    fn kernel(&self) -> Option<Kernel> {
        match self.ty {
            StorageType::Ggml(g) => g.facts().kernel,
            _ => None,
        }
    }

    /// Rows per work item of the few-rows path: ~32 KiB of weights, whole rows (the split
    /// never changes what any one output sums).
    fn rows_per_item(&self) -> usize {
        (32768 / self.row_bytes.max(1)).clamp(1, self.rows.max(1))
    }

    /// Decodes rows `r0..` into `buf` and multiplies them by all of `x` into their columns
    /// of the output.
    fn tile(&self, level: Level, r0: usize, buf: &mut [f32], x: &[f32], t: usize, out_ptr: SendPtr) {
        let (k, n) = (self.cols, self.rows);
        let rows = buf.len() / k;
        match self.kernel() {
            Some(kern) => {
                let bytes = &self.bytes[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
                (kern.decode)(level, bytes, buf);
            }
            None => self.decode_rows(r0, buf),
        }
        // SAFETY: `out_ptr` is a product's output, t×n f32 (asserted in
        // matmul_batch_at; each product's output is its own &mut slice); this tile
        // writes only columns r0..r0+rows of each of its t rows (dst = out + r0, row
        // stride n, column stride 1, rows ≤ n − r0), and a product's tiles cover
        // disjoint column ranges, so no two tasks write the same element and nothing
        // reads the outputs until the parallel pass ends. `x`
        // holds t×k values (row stride k), `buf` rows×k (read as its transpose:
        // element (i, j) at buf[j·k + i]). gemm runs on this thread only
        // (Parallelism::None), so its result does not depend on the thread count.
        unsafe { crate::tensor::gemm_xwt(out_ptr.0.add(r0), n, x, t, k, buf, rows, gemm::Parallelism::None) };
    }
}

thread_local! {
    /// Each worker thread's tile buffer, kept between calls (a fresh large allocation
    /// per tile is a fresh mapping the kernel zeroes page by page).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's decoded-row buffer (the few-rows path of types without an
    /// integer form).
    static ROW_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's integer tile (the integer tile path).
    static INT_TILE: std::cell::RefCell<tiles::IntTile> = std::cell::RefCell::new(tiles::IntTile::default());
}

/// Runs `f` on this thread's scratch buffer, `len` values long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        f(&mut v[..len])
    })
}

/// One product of a batch: matrix `m` times the batch's input, activations rounded to
/// `act` first when given (llama.cpp numerics), into `out` (`t × m.rows()`).
pub struct Product<'a> {
    /// The matrix.
    pub m: &'a PackedMatrix,
    /// Activation type (llama.cpp numerics), or `None` for exact f32.
    pub act: Option<GgmlType>,
    /// Output, `t` rows of `m.rows()`.
    pub out: &'a mut [f32],
}

impl Product<'_> {
    /// The activation type that applies: `act`, where the rows split into its blocks.
    fn act(&self) -> Option<GgmlType> {
        self.act.filter(|a| self.m.cols.is_multiple_of(a.block_size()))
    }
}

/// Several products of one input `x` (`t` rows) — a block's q, k and v, or its gate and
/// up — in one parallel pass: the activations are prepared once per activation type and
/// the threads meet once, not once per matrix.
pub fn matmul_batch(x: &[f32], t: usize, products: &mut [Product]) {
    matmul_batch_at(Level::detected(), x, t, products)
}

/// Which prepared rows a product reads: (integer kernel, activation type, row width).
type PrepKey = (bool, Option<GgmlType>, usize);

/// The activation rows a product needs, prepared once per batch.
enum Prepared {
    Quant(Vec<QuantRow>),
    Exact(Vec<ExactRow>),
}

fn matmul_batch_at(level: Level, x: &[f32], t: usize, products: &mut [Product]) {
    for p in products.iter() {
        assert_eq!(x.len(), t * p.m.cols, "matmul: x is not t×k");
        assert_eq!(p.out.len(), t * p.m.rows, "matmul: out is not t×n");
    }
    if t == 0 {
        return;
    }
    if t > MAX_ROWS {
        return matmul_tiles(level, x, t, products);
    }
    // What each product reads: (integer kernel?, activation type) → prepared rows.
    let key = |p: &Product| {
        let act = p.act();
        let integer = (p.m.kernel().is_some() && matches!(act, Some(GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K)))
            || ((p.m.byte_book.is_some() || p.m.nibbles_q8()) && act == Some(GgmlType::Q8_0));
        (integer, act, p.m.cols)
    };
    let mut prepared: Vec<(PrepKey, Prepared)> = Vec::new();
    for p in products.iter() {
        let kk = key(p);
        if prepared.iter().any(|(k2, _)| *k2 == kk) {
            continue;
        }
        let (integer, act, k) = kk;
        let rows = if integer {
            let a = act.expect("integer kernels have an activation type");
            Prepared::Quant(
                x.chunks_exact(k)
                    .map(|xr| {
                        let mut q = QuantRow::default();
                        q.quantize(xr, a);
                        q
                    })
                    .collect(),
            )
        } else {
            Prepared::Exact(exact_rows(x, k, act))
        };
        prepared.push((kk, rows));
    }
    let ms: Vec<(&PackedMatrix, &Prepared)> = products
        .iter()
        .map(|p| {
            let kk = key(p);
            (p.m, &prepared.iter().find(|(k2, _)| *k2 == kk).expect("prepared above").1)
        })
        .collect();
    // VQ products with enough rows: each activation row's codebook tables, built once
    // (in parallel over products and rows) for all of the matrix's stored rows.
    let vq_jobs: Vec<(usize, usize)> = ms
        .iter()
        .enumerate()
        .filter(|(_, (m, prep))| m.vq_tables_pay() && matches!(prep, Prepared::Exact(_)))
        .flat_map(|(i, _)| (0..t).map(move |r| (i, r)))
        .collect();
    let books_t: Vec<Option<Vec<f32>>> = ms
        .iter()
        .map(|(m, _)| match (m.ty, &m.codebook) {
            (StorageType::Vq(f), Some(book)) if m.vq_tables_pay() => Some(vq::transposed(&f, book)),
            _ => None,
        })
        .collect();
    let built: Vec<Vec<f32>> = vq_jobs
        .par_iter()
        .map(|&(i, r)| {
            let (m, prep) = ms[i];
            let (StorageType::Vq(f), Some(book_t), Prepared::Exact(xs)) = (m.ty, &books_t[i], prep) else {
                unreachable!("filtered above")
            };
            vq::tables(level, &f, book_t, &xs[r])
        })
        .collect();
    let mut tabs: Vec<Vec<Vec<f32>>> = vec![Vec::new(); ms.len()];
    for (&(i, _), tab) in vq_jobs.iter().zip(built) {
        tabs[i].push(tab);
    }
    // Byte-table VQ and 4-bit native products: the activations rearranged (by value of a vector)
    // once per product, not per work item.
    let by_value: Vec<Option<vq_bytes::ByValue>> = ms
        .iter()
        .map(|(m, prep)| match (m.ty, &m.byte_book, prep) {
            (StorageType::Vq(f), Some(_), Prepared::Quant(q)) => Some(vq_bytes::ByValue::q8(q, f.dim)),
            (StorageType::Native(_), _, Prepared::Quant(q)) if m.nibbles_q8() => Some(vq_bytes::ByValue::q8(q, 1)),
            (StorageType::Ggml(ty), _, Prepared::Quant(q)) if bytes32::ByteBlock::at(level, ty, m.cols).is_some() => {
                Some(vq_bytes::ByValue::q8(q, 1))
            }
            (StorageType::Ggml(ty), _, Prepared::Quant(q)) if iq_bytes::at(level, ty).is_some() => {
                Some(vq_bytes::ByValue::Codes(iq_bytes::code_bytes(q)))
            }
            (StorageType::Vq(f), Some(_), Prepared::Exact(xs)) => Some(vq_bytes::ByValue::exact(xs, f.dim)),
            _ => None,
        })
        .collect();
    // Outputs row-major by weight row (`dst[r·t + i]`): the products' own buffers when
    // t = 1, else temporaries transposed at the end.
    let mut temps: Vec<Vec<f32>> =
        products.iter().map(|p| if t == 1 { Vec::new() } else { vec![0.0; p.out.len()] }).collect();
    let mut items: Vec<(usize, &mut [f32], &[u8])> = Vec::new();
    for (i, (p, tmp)) in products.iter_mut().zip(temps.iter_mut()).enumerate() {
        let m = p.m;
        let per = m.rows_per_item();
        let dst: &mut [f32] = if t == 1 { &mut *p.out } else { tmp };
        for (o, w) in dst.chunks_mut(per * t).zip(m.bytes.chunks(per * m.row_bytes)) {
            items.push((i, o, w));
        }
    }
    items.into_par_iter().for_each(|(i, o, w)| {
        let (m, prep) = ms[i];
        match (prep, m.kernel()) {
            (Prepared::Quant(q), Some(_)) if by_value[i].is_some() => {
                let bv = by_value[i].as_ref().expect("checked");
                let StorageType::Ggml(ty) = m.ty else { unreachable!("byte paths are ggml types") };
                match bv {
                    vq_bytes::ByValue::Codes(xq) => {
                        let run = iq_bytes::at(level, ty).expect("codes are made for grid i-quants only");
                        run(level, w, m.row_bytes, q, xq, o)
                    }
                    _ => {
                        let kind = bytes32::ByteBlock::of(ty).expect("rearranged for byte blocks only");
                        bytes32::rows_q8(level, kind, w, m.row_bytes, q.len(), bv, o)
                    }
                }
            }
            (Prepared::Quant(q), Some(kern)) => (kern.quant)(level, w, m.row_bytes, q, o),
            (Prepared::Exact(xs), Some(kern)) => (kern.exact)(level, w, m.row_bytes, xs, o),
            (Prepared::Exact(xs), None) if m.byte_book.is_some() => {
                let (StorageType::Vq(f), Some(book), Some(bb)) = (m.ty, &m.codebook, &m.byte_book) else {
                    unreachable!("byte books are VQ")
                };
                let bv = by_value[i].as_ref().expect("rearranged above");
                vq_bytes::rows(level, &f, book, bb, w, m.row_bytes, xs, bv, o)
            }
            (Prepared::Exact(xs), None) if !tabs[i].is_empty() => {
                let (StorageType::Vq(f), Some(book)) = (m.ty, &m.codebook) else { unreachable!("tables are VQ") };
                vq::rows(level, &f, book, w, m.row_bytes, xs, &tabs[i], o)
            }
            (Prepared::Exact(xs), None) => {
                let decode = |b: &[u8], out: &mut [f32]| m.decode_into(level, b, out);
                ROW_SCRATCH.with(|buf| rows::decoded_f32(level, &decode, w, m.row_bytes, xs, o, &mut buf.borrow_mut()))
            }
            (Prepared::Quant(q), None) if m.nibbles_q8() => {
                let StorageType::Native(f) = m.ty else { unreachable!("nibbles_q8 is native") };
                let bv = by_value[i].as_ref().expect("rearranged above");
                nibbles::rows_q8(level, &f, w, m.row_bytes, q, bv, o)
            }
            (Prepared::Quant(q), None) => {
                let (StorageType::Vq(f), Some(book), Some(bb)) = (m.ty, &m.codebook, &m.byte_book) else {
                    unreachable!("integer rows are prepared only for kernels, byte books and 4-bit natives")
                };
                let bv = by_value[i].as_ref().expect("rearranged above");
                vq_bytes::rows_q8(level, &f, book, bb, w, m.row_bytes, q, bv, o)
            }
        }
    });
    if t > 1 {
        for (p, tmp) in products.iter_mut().zip(&temps) {
            let n = p.m.rows;
            for (r, row) in tmp.chunks_exact(t).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    p.out[i * n + r] = *v;
                }
            }
        }
    }
}

/// The many-rows path, every product's tiles in one parallel pass. Products with an
/// integer form and quantized activations take the integer tile path ([`tiles`]:
/// activations quantized once per type and width, tiles unpacked to integers); the rest
/// decode tiles of weight rows to f32 and multiply them by all of `x` (rounded to the
/// product's activation type first, once per type) with `gemm`.
fn matmul_tiles(level: Level, x: &[f32], t: usize, products: &mut [Product]) {
    let integer = |p: &Product| -> Option<(Kernel, GgmlType)> {
        let (a, kern) = (p.act()?, p.m.kernel()?);
        (tiles::used_at(level) && kern.tiles_with(a)).then_some((kern, a))
    };
    let mut panels: Vec<(GgmlType, usize, tiles::Panels)> = Vec::new();
    let mut rounded: Vec<(GgmlType, usize, Vec<f32>)> = Vec::new();
    for p in products.iter() {
        let k = p.m.cols;
        if let Some((_, a)) = integer(p) {
            if !panels.iter().any(|(b, kb, _)| *b == a && *kb == k) {
                panels.push((a, k, tiles::Panels::new(x, t, k, a)));
            }
        } else if let Some(a) = p.act() {
            if !rounded.iter().any(|(b, kb, _)| *b == a && *kb == k) {
                let mut v = x.to_vec();
                v.par_chunks_mut(k).for_each(|r| fake_quantize_row(r, a));
                rounded.push((a, k, v));
            }
        }
    }
    let mut work: Vec<(usize, usize)> = Vec::new();
    for (i, p) in products.iter().enumerate() {
        work.extend((0..p.m.rows.div_ceil(TILE_ROWS)).map(|tile| (i, tile * TILE_ROWS)));
    }
    type Job<'a> = (&'a PackedMatrix, &'a [f32], SendPtr, Option<(Kernel, &'a tiles::Panels)>);
    let jobs: Vec<Job> = products
        .iter_mut()
        .map(|p| {
            let k = p.m.cols;
            let int = integer(p)
                .map(|(kern, a)| (kern, &panels.iter().find(|(b, kb, _)| *b == a && *kb == k).expect("made above").2));
            let xp = match p.act() {
                Some(a) if int.is_none() => {
                    &rounded.iter().find(|(b, kb, _)| *b == a && *kb == k).expect("rounded above").2[..]
                }
                _ => x,
            };
            (p.m, xp, SendPtr(p.out.as_mut_ptr()), int)
        })
        .collect();
    work.into_par_iter().for_each(|(i, r0)| {
        let (m, xp, out_ptr, int) = jobs[i];
        let rows = TILE_ROWS.min(m.rows - r0);
        match int {
            Some((kern, panels)) => INT_TILE.with(|tile| {
                let tile = &mut tile.borrow_mut();
                (kern.unpack)(level, &m.bytes[r0 * m.row_bytes..(r0 + rows) * m.row_bytes], m.row_bytes, tile);
                // SAFETY: `out_ptr` is this product's output, t × m.rows f32 (asserted in
                // matmul_batch_at); this task writes only columns r0..r0 + rows, and the
                // product's tiles cover disjoint column ranges, so no two tasks write the
                // same element and nothing reads the output until the pass ends.
                unsafe { tiles::multiply(level, tile, panels, t, m.rows, r0, out_ptr.0) }
            }),
            None => with_scratch(rows * m.cols, |buf| m.tile(level, r0, buf, xp, t, out_ptr)),
        }
    });
}

/// The output pointer shared by the tile tasks (each writes its own columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only used by `matmul_tiles`, whose tasks write disjoint elements
// of a buffer that outlives them (the parallel loop ends before `matmul_tiles` returns).
unsafe impl Send for SendPtr {}
// SAFETY: as above; shared references to the wrapper only copy the pointer.
unsafe impl Sync for SendPtr {}

/// `t` rows of `x` as exact rows, first rounded to activation type `act` when given.
fn exact_rows(x: &[f32], k: usize, act: Option<GgmlType>) -> Vec<ExactRow> {
    x.chunks_exact(k)
        .map(|xr| {
            let mut e = ExactRow::default();
            match act {
                Some(a) => {
                    let mut r = xr.to_vec();
                    fake_quantize_row(&mut r, a);
                    e.set(&r);
                }
                None => e.set(xr),
            }
            e
        })
        .collect()
}
