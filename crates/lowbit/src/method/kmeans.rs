//! Weighted k-means for learned vector codebooks (VPTQ, AQLM's initialisation): points are
//! `dim`-vectors with a weight per coordinate (the Hessian diagonal of the column each
//! coordinate came from), and the distance is Σ wⱼ (xⱼ − cⱼ)², the quantization error
//! those weights measure. Seeding is k-means++ from a seeded generator; every step is
//! deterministic and independent of the number of threads (assignments are per point;
//! sums are accumulated per fixed chunk and combined in order).
//!
//! Written here rather than taken from a crate: the clustering crates on crates.io
//! (linfa-clustering, kmeans) have no per-coordinate weights, which is what makes the
//! codebook minimise the layer's error instead of the plain weight error.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Points per parallel work item (fixed, so sums do not depend on the thread count).
const CHUNK: usize = 4096;

/// Options of [`kmeans`].
#[derive(Clone, Copy, Debug)]
pub struct KmeansOptions {
    /// Lloyd iterations after seeding (stops early when no assignment changes).
    pub iterations: usize,
    /// Seed of the k-means++ sampling.
    pub seed: u64,
}

impl Default for KmeansOptions {
    fn default() -> Self {
        KmeansOptions { iterations: 20, seed: 0 }
    }
}

/// A k-means result: the centroids (a codebook) and which one each point uses.
#[derive(Clone, Debug)]
pub struct Clustering {
    /// Vector length.
    pub dim: usize,
    /// `k × dim` centroids, row-major.
    pub centroids: Vec<f32>,
    /// The centroid each point was assigned to in the last step.
    pub assignment: Vec<u32>,
    /// Total weighted distortion of the points to their centroids.
    pub distortion: f64,
}

impl Clustering {
    /// Number of centroids.
    pub fn len(&self) -> usize {
        self.centroids.len() / self.dim
    }

    /// Whether the codebook is empty.
    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }

    /// How many distinct centroids some point uses (collapse guard: far below `len()`
    /// means the codebook wastes its bits).
    pub fn used(&self) -> usize {
        used_entries(&self.assignment, self.len())
    }
}

/// How many of `k` codebook entries the `assignment` uses.
pub fn used_entries(assignment: &[u32], k: usize) -> usize {
    let mut seen = vec![false; k];
    assignment.iter().for_each(|&a| seen[a as usize] = true);
    seen.iter().filter(|&&s| s).count()
}

/// Weighted squared distance.
#[inline]
pub fn distance(x: &[f32], w: &[f32], c: &[f32]) -> f32 {
    let mut d = 0.0f32;
    for j in 0..x.len() {
        let r = x[j] - c[j];
        d += w[j] * r * r;
    }
    d
}

/// The nearest centroid to `x` under weights `w` and its distance (ties: lowest index).
pub fn nearest(centroids: &[f32], dim: usize, x: &[f32], w: &[f32]) -> (u32, f32) {
    let mut best = (0u32, f32::INFINITY);
    for (i, c) in centroids.chunks_exact(dim).enumerate() {
        let d = distance(x, w, c);
        if d < best.1 {
            best = (i as u32, d);
        }
    }
    best
}

/// Clusters `points` (`n × dim`, row-major) with per-coordinate `weights` (same shape)
/// into at most `k` centroids. With fewer distinct points than `k`, the extra centroids
/// duplicate existing ones (unused, harmless). Deterministic for a given seed.
pub fn kmeans(points: &[f32], weights: &[f32], dim: usize, k: usize, opts: &KmeansOptions) -> Clustering {
    assert!(dim > 0 && points.len() == weights.len() && points.len().is_multiple_of(dim) && k > 0);
    let n = points.len() / dim;
    if n == 0 {
        return Clustering { dim, centroids: vec![0.0; k * dim], assignment: vec![], distortion: 0.0 };
    }
    let mut centroids = seed_plus_plus(points, weights, dim, k, opts.seed);
    let mut assignment = vec![u32::MAX; n];
    for _ in 0..opts.iterations.max(1) {
        let (changed, _) = assign(points, weights, dim, &centroids, &mut assignment);
        update(points, weights, dim, &assignment, &mut centroids);
        if changed == 0 {
            break;
        }
    }
    let (_, distortion) = assign(points, weights, dim, &centroids, &mut assignment);
    Clustering { dim, centroids, assignment, distortion }
}

/// k-means++ seeding with weighted distances: each next centroid is a point drawn with
/// probability proportional to its distance to the nearest centroid so far. For large
/// inputs the draw is among a deterministic subsample (at most 64·k points), which keeps
/// seeding at O(64·k²·dim).
fn seed_plus_plus(points: &[f32], weights: &[f32], dim: usize, k: usize, seed: u64) -> Vec<f32> {
    let n = points.len() / dim;
    let stride = (n / (64 * k)).max(1);
    let sample: Vec<usize> = (0..n).step_by(stride).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut centroids = Vec::with_capacity(k * dim);
    let first = sample[rng.random_range(0..sample.len())];
    centroids.extend_from_slice(&points[first * dim..(first + 1) * dim]);
    let mut best: Vec<f32> = sample
        .par_iter()
        .map(|&i| distance(&points[i * dim..(i + 1) * dim], &weights[i * dim..(i + 1) * dim], &centroids[..dim]))
        .collect();
    while centroids.len() < k * dim {
        let total: f64 = best.iter().map(|&d| d as f64).sum();
        let pick = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            let mut chosen = sample.len() - 1;
            for (s, &d) in best.iter().enumerate() {
                r -= d as f64;
                if r <= 0.0 {
                    chosen = s;
                    break;
                }
            }
            sample[chosen]
        } else {
            // Every point already sits on a centroid: duplicate one (never used).
            sample[rng.random_range(0..sample.len())]
        };
        let c = points[pick * dim..(pick + 1) * dim].to_vec();
        best.par_iter_mut().zip(sample.par_iter()).for_each(|(b, &i)| {
            let d = distance(&points[i * dim..(i + 1) * dim], &weights[i * dim..(i + 1) * dim], &c);
            if d < *b {
                *b = d;
            }
        });
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Assigns every point to its nearest centroid; returns (changed assignments, total
/// distortion).
fn assign(points: &[f32], weights: &[f32], dim: usize, centroids: &[f32], assignment: &mut [u32]) -> (usize, f64) {
    let per_chunk: Vec<(usize, f64)> = assignment
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(ci, a)| {
            let (mut changed, mut total) = (0usize, 0.0f64);
            for (k, slot) in a.iter_mut().enumerate() {
                let i = ci * CHUNK + k;
                let (c, d) = nearest(centroids, dim, &points[i * dim..(i + 1) * dim], &weights[i * dim..(i + 1) * dim]);
                if *slot != c {
                    changed += 1;
                    *slot = c;
                }
                total += d as f64;
            }
            (changed, total)
        })
        .collect();
    per_chunk.iter().fold((0, 0.0), |(c, t), &(c2, t2)| (c + c2, t + t2))
}

/// Moves every centroid to the weighted mean of its points, coordinate by coordinate
/// (the minimiser of Σ wⱼ (xⱼ − cⱼ)² for fixed assignments). A centroid without points
/// keeps its place.
fn update(points: &[f32], weights: &[f32], dim: usize, assignment: &[u32], centroids: &mut [f32]) {
    let k = centroids.len() / dim;
    let partial: Vec<(Vec<f64>, Vec<f64>)> = assignment
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(ci, a)| {
            let (mut num, mut den) = (vec![0.0f64; k * dim], vec![0.0f64; k * dim]);
            for (kk, &c) in a.iter().enumerate() {
                let i = ci * CHUNK + kk;
                for j in 0..dim {
                    let (x, w) = (points[i * dim + j] as f64, weights[i * dim + j] as f64);
                    num[c as usize * dim + j] += w * x;
                    den[c as usize * dim + j] += w;
                }
            }
            (num, den)
        })
        .collect();
    let (mut num, mut den) = (vec![0.0f64; k * dim], vec![0.0f64; k * dim]);
    for (pn, pd) in &partial {
        num.iter_mut().zip(pn).for_each(|(a, b)| *a += b);
        den.iter_mut().zip(pd).for_each(|(a, b)| *a += b);
    }
    for ((c, &s), &w) in centroids.iter_mut().zip(&num).zip(&den) {
        if w > 0.0 {
            *c = (s / w) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `k` well-separated cluster centres in `dim` dimensions and `per` noisy points
    /// around each; returns (points, true cluster of each point, centres).
    fn clustered(k: usize, per: usize, dim: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..k * dim).map(|_| rng.random_range(-10.0..10.0)).collect();
        let (mut pts, mut label) = (Vec::new(), Vec::new());
        for i in 0..k * per {
            let c = i % k;
            for j in 0..dim {
                pts.push(centres[c * dim + j] + noise * (rng.random::<f32>() - 0.5));
            }
            label.push(c);
        }
        (pts, label, centres)
    }

    #[test]
    fn recovers_well_separated_clusters() {
        let (k, dim) = (16, 4);
        let (pts, label, centres) = clustered(k, 200, dim, 0.5, 1);
        let w = vec![1.0f32; pts.len()];
        let cb = kmeans(&pts, &w, dim, k, &KmeansOptions::default());
        // Same partition: points of one true cluster share one centroid, and different
        // clusters get different centroids.
        let mut map = vec![u32::MAX; k];
        for (i, &l) in label.iter().enumerate() {
            if map[l] == u32::MAX {
                map[l] = cb.assignment[i];
            }
            assert_eq!(cb.assignment[i], map[l], "point {i} of cluster {l} split off");
        }
        let mut distinct = map.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), k);
        assert_eq!(cb.used(), k);
        // Centroids sit at the cluster means: within noise/√200 of the true centres
        // (uniform noise ±0.25 has s.d. 0.144; the mean of 200 is within ~0.04).
        for (l, &c) in map.iter().enumerate() {
            for j in 0..dim {
                let got = cb.centroids[c as usize * dim + j];
                assert!((got - centres[l * dim + j]).abs() < 0.05, "cluster {l} coordinate {j}: {got}");
            }
        }
    }

    #[test]
    fn weights_pull_centroids_towards_heavy_points() {
        // One cluster, two points: the centroid is their weighted mean per coordinate.
        let pts = [0.0f32, 0.0, 1.0, 1.0];
        let w = [3.0f32, 1.0, 1.0, 3.0];
        let cb = kmeans(&pts, &w, 2, 1, &KmeansOptions::default());
        assert!((cb.centroids[0] - 0.25).abs() < 1e-6 && (cb.centroids[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn distortion_lies_between_shannon_and_scalar_lloyd_max_on_gaussian_data() {
        // Unit Gaussian vectors, dim 2, k = 2^(2R): no quantizer beats Shannon's 2^(−2R);
        // the best scalar (Lloyd–Max) quantizer applied per coordinate is itself a 2-D
        // codebook, so the optimum is at most its distortion (0.3634 at R = 1, 0.1175 at
        // R = 2); k-means should land there or better (2 % slack for sampling).
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let n = 20000;
        let pts: Vec<f32> = (0..2 * n)
            .map(|_| {
                let (a, b): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
            })
            .collect();
        let w = vec![1.0f32; pts.len()];
        for (bits, lloyd_max) in [(1u32, 0.3634), (2, 0.1175)] {
            let k = 1usize << (2 * bits);
            let cb = kmeans(&pts, &w, 2, k, &KmeansOptions { iterations: 50, seed: 0 });
            let mse = cb.distortion / (2 * n) as f64;
            let shannon = (-2.0 * bits as f64).exp2();
            eprintln!("R={bits}: mse {mse:.4}, Shannon {shannon:.4}");
            assert!(
                mse >= shannon && mse < 1.02 * lloyd_max,
                "R={bits}: mse {mse:.4}, bounds {shannon:.4}…{lloyd_max}"
            );
        }
    }

    #[test]
    fn same_seed_same_codebook_regardless_of_threads() {
        let (pts, _, _) = clustered(8, 700, 8, 4.0, 2);
        let w: Vec<f32> = (0..pts.len()).map(|i| 1.0 + (i % 5) as f32).collect();
        let a = kmeans(&pts, &w, 8, 32, &KmeansOptions::default());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let b = pool.install(|| kmeans(&pts, &w, 8, 32, &KmeansOptions::default()));
        assert_eq!(a.centroids, b.centroids);
        assert_eq!(a.assignment, b.assignment);
    }
}
