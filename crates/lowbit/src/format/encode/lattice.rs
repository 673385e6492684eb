//! Lattice codebooks of llama.cpp's i-quants: a group of 8 (or 4) weights is stored as the
//! index of one point of a fixed grid (256 to 2048 points whose coordinates take 3 or 8
//! values). Every i-quant encoder repeatedly asks "which grid point is nearest to these
//! targets, in this weighted metric, at this scale?"; [`Grid`] answers it from a table of
//! candidates built once per grid for every cell of the full lattice the points live on
//! (3⁸ = 6561 or 8⁴ = 4096 cells), so a query scores a few dozen candidates — side by
//! side, one vector lane each — instead of scanning the whole grid.

use std::sync::OnceLock;

use crate::format::iquant_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

/// Most candidates kept per lattice cell. With the margin below the lists are shorter
/// than this almost everywhere; the cap bounds the worst case.
const MAX_CANDIDATES: usize = 96;

/// One i-quant grid with its per-cell candidate table.
pub(crate) struct Grid {
    /// Values per point (8, or 4 for the IQ3 grids).
    pub dim: usize,
    /// Point coordinates, `dim` per point.
    coords: Vec<f32>,
    /// The sorted distinct coordinate values.
    levels: Vec<f32>,
    /// Midpoints between consecutive levels (cell boundaries).
    bounds: Vec<f32>,
    /// `candidates[cell_start[c]..cell_start[c + 1]]` are the points to try for cell `c`.
    cell_start: Vec<u32>,
    candidates: Vec<u16>,
    /// The candidates' coordinates (as bytes) cell by cell, coordinate-major within a cell: cell
    /// `c`'s `n` candidates start at `dim · cell_start[c]`, coordinate `j` of its `k`-th
    /// at `+ j·n + k` — so a query computes every candidate's error side by side (one
    /// vector lane per candidate) instead of one short dot product at a time.
    cell_coords: Vec<i8>,
}

impl Grid {
    /// Builds the grid from packed points (`dim` bytes each, little-endian), reading the
    /// bytes as signed when `signed` (IQ1's −1/0/+1 grid).
    fn build(points: &[u64], dim: usize, signed: bool) -> Grid {
        let byte = |p: u64, j: usize| {
            let b = (p >> (8 * j)) as u8;
            if signed {
                b as i8 as f32
            } else {
                b as f32
            }
        };
        let coords: Vec<f32> = points.iter().flat_map(|&p| (0..dim).map(move |j| byte(p, j))).collect();
        let mut levels: Vec<f32> = coords.clone();
        levels.sort_by(f32::total_cmp);
        levels.dedup();
        let bounds: Vec<f32> = levels.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        // Under a weighted metric a point further than the nearest can win: keep every point
        // within the nearest distance plus 1.5 of the largest level steps. (Measured on
        // random targets with weights spread 20×: 1.0 misses the weighted optimum in 2–3 %
        // of groups, 1.5 in under 1 %, 2.0 almost never but with 1.6× the candidates.)
        let step = levels.windows(2).map(|w| w[1] - w[0]).fold(0.0f32, f32::max);
        let margin = 1.5 * step;
        let n_cells = levels.len().pow(dim as u32);
        let (mut cell_start, mut candidates) = (Vec::with_capacity(n_cells + 1), Vec::new());
        let mut cell = vec![0.0f32; dim];
        let mut dist: Vec<(f32, u16)> = Vec::with_capacity(points.len());
        for c in 0..n_cells {
            let mut rest = c;
            for j in (0..dim).rev() {
                cell[j] = levels[rest % levels.len()];
                rest /= levels.len();
            }
            dist.clear();
            for (i, p) in coords.chunks_exact(dim).enumerate() {
                let d: f32 = p.iter().zip(&cell).map(|(a, b)| (a - b) * (a - b)).sum();
                dist.push((d, i as u16));
            }
            dist.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let nearest = dist[0].0;
            cell_start.push(candidates.len() as u32);
            let radius = nearest.sqrt() + margin;
            candidates.extend(dist.iter().take_while(|d| d.0 <= radius * radius).take(MAX_CANDIDATES).map(|d| d.1));
        }
        cell_start.push(candidates.len() as u32);
        // Every grid's coordinates are small integers (at most 62): one byte each.
        assert!(coords.iter().all(|&v| v == v as i8 as f32), "grid coordinates fit in i8");
        let mut cell_coords = Vec::with_capacity(candidates.len() * dim);
        for c in 0..n_cells {
            let cands = &candidates[cell_start[c] as usize..cell_start[c + 1] as usize];
            for j in 0..dim {
                cell_coords.extend(cands.iter().map(|&i| coords[dim * i as usize + j] as i8));
            }
        }
        Grid { dim, coords, levels, bounds, cell_start, candidates, cell_coords }
    }

    /// Number of points.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.coords.len() / self.dim
    }

    /// The coordinates of point `i`.
    pub fn point(&self, i: usize) -> &[f32] {
        &self.coords[self.dim * i..self.dim * (i + 1)]
    }

    /// The largest coordinate value.
    pub fn max_level(&self) -> f32 {
        *self.levels.last().expect("grids are not empty")
    }

    /// The lattice cell whose levels are nearest to `y` coordinate by coordinate.
    fn cell_of(&self, y: impl Iterator<Item = f32>) -> usize {
        let l = self.levels.len();
        y.fold(0, |c, v| c * l + self.bounds.iter().take_while(|&&b| v > b).count())
    }

    /// The grid point minimising Σ wⱼ (tⱼ − scale·gⱼ)² among the candidates of the cell
    /// nearest to t / scale, and that error. `scale` must be positive.
    pub fn nearest(&self, t: &[f32], w: &[f32], scale: f32) -> (usize, f32) {
        debug_assert!(t.len() == self.dim && w.len() == self.dim && scale > 0.0);
        match self.dim {
            8 => self.nearest_in::<8>(t, w, scale),
            _ => self.nearest_in::<4>(t, w, scale),
        }
    }

    /// [`Grid::nearest`] for `D`-value points. Every candidate's error is summed over the
    /// coordinates in order, each term `(w·r)·r` with `r = t − scale·g`, as a one-point-at-
    /// a-time loop would (so the same values, bit for bit: `nearest_one_at_a_time` in
    /// the tests), but with the candidates side by side, which the compiler vectorizes;
    /// the first of equal errors wins. Measured (perf, the 2–3-bit i-quants' search
    /// encoding 256×1536 Gaussian rows with importance): 2.2× less time in the query than
    /// the one-at-a-time loop, the encoders 1.7–2.5× faster, the same bytes.
    fn nearest_in<const D: usize>(&self, t: &[f32], w: &[f32], scale: f32) -> (usize, f32) {
        let (t, w): (&[f32; D], &[f32; D]) = match (t.try_into(), w.try_into()) {
            (Ok(t), Ok(w)) => (t, w),
            _ => panic!("a grid query takes {D} targets and weights"),
        };
        let inv = 1.0 / scale;
        let c = self.cell_of(t.iter().map(|v| v * inv));
        let (a, b) = (self.cell_start[c] as usize, self.cell_start[c + 1] as usize);
        let n = b - a;
        let coords = &self.cell_coords[D * a..D * b];
        let mut err = [0.0f32; MAX_CANDIDATES];
        let err = &mut err[..n];
        for j in 0..D {
            let (tj, wj) = (t[j], w[j]);
            for (e, &g) in err.iter_mut().zip(&coords[j * n..(j + 1) * n]) {
                let r = tj - scale * g as f32;
                *e += wj * r * r;
            }
        }
        // The least error (NaN never wins, as with `<`), then the first candidate with it.
        // (Sixteen running minima, so the compiler vectorizes it too.)
        let mut lanes = [f32::INFINITY; 16];
        let whole = err.chunks_exact(16);
        let rest = whole.remainder().iter().fold(f32::INFINITY, |m, &e| m.min(e));
        for c in whole {
            lanes.iter_mut().zip(c).for_each(|(l, &e)| *l = l.min(e));
        }
        let least = lanes.iter().fold(rest, |m, &e| m.min(e));
        if least < f32::INFINITY {
            let k = err.iter().position(|&e| e == least).expect("the least is one of them");
            (self.candidates[a + k] as usize, err[k])
        } else {
            (0, least) // no finite error: as the one-at-a-time loop answers
        }
    }

    /// [`Grid::nearest`] one candidate at a time (the reference its vectorized loop must
    /// match bit for bit).
    #[cfg(test)]
    pub fn nearest_one_at_a_time(&self, t: &[f32], w: &[f32], scale: f32) -> (usize, f32) {
        let inv = 1.0 / scale;
        let c = self.cell_of(t.iter().map(|v| v * inv));
        let mut best = (0usize, f32::INFINITY);
        for &i in &self.candidates[self.cell_start[c] as usize..self.cell_start[c + 1] as usize] {
            let p = self.point(i as usize);
            let mut e = 0.0f32;
            for j in 0..self.dim {
                let r = t[j] - scale * p[j];
                e += w[j] * r * r;
            }
            if e < best.1 {
                best = (i as usize, e);
            }
        }
        best
    }

    /// The exact weighted-nearest point by scanning the whole grid (for tests).
    #[cfg(test)]
    pub fn nearest_exhaustive(&self, t: &[f32], w: &[f32], scale: f32) -> (usize, f32) {
        let mut best = (0usize, f32::INFINITY);
        for i in 0..self.len() {
            let e: f32 =
                self.point(i).iter().zip(t).zip(w).map(|((g, t), w)| w * (t - scale * g) * (t - scale * g)).sum();
            if e < best.1 {
                best = (i, e);
            }
        }
        best
    }
}

macro_rules! grid_fn {
    ($(#[$doc:meta])* $name:ident, $table:expr, $dim:expr, $signed:expr) => {
        $(#[$doc])*
        pub(crate) fn $name() -> &'static Grid {
            static G: OnceLock<Grid> = OnceLock::new();
            G.get_or_init(|| {
                let points: Vec<u64> = $table.iter().map(|&p| p as u64).collect();
                Grid::build(&points, $dim, $signed)
            })
        }
    };
}

grid_fn!(
    /// IQ2_XXS: 256 points in {8, 25, 43}⁸.
    iq2xxs_grid, IQ2XXS_GRID, 8, false
);
grid_fn!(
    /// IQ2_XS: 512 points in {8, 25, 43}⁸.
    iq2xs_grid, IQ2XS_GRID, 8, false
);
grid_fn!(
    /// IQ2_S: 1024 points in {8, 25, 43}⁸.
    iq2s_grid, IQ2S_GRID, 8, false
);
grid_fn!(
    /// IQ3_XXS: 256 points in {4, 12, …, 52, 62}⁴.
    iq3xxs_grid, IQ3XXS_GRID, 4, false
);
grid_fn!(
    /// IQ3_S: 512 points in {1, 3, …, 15}⁴.
    iq3s_grid, IQ3S_GRID, 4, false
);
grid_fn!(
    /// IQ1_S / IQ1_M: 2048 points in {−1, 0, 1}⁸.
    iq1s_grid, IQ1S_GRID, 8, true
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn grid_points_are_their_own_nearest() {
        for grid in [iq2xxs_grid(), iq2s_grid(), iq3xxs_grid(), iq3s_grid(), iq1s_grid()] {
            let w = vec![1.0; grid.dim];
            for i in (0..grid.len()).step_by(7) {
                let t: Vec<f32> = grid.point(i).iter().map(|g| 0.5 * g).collect();
                let (j, e) = grid.nearest(&t, &w, 0.5);
                assert_eq!((j, e), (i, 0.0));
            }
        }
    }

    /// The vectorized query gives the one-candidate-at-a-time loop's point and error, bit
    /// for bit, on every grid (random targets, weights and scales; ties between equal
    /// points included via exact grid points).
    #[test]
    fn vectorized_query_matches_one_at_a_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for grid in [iq2xxs_grid(), iq2xs_grid(), iq2s_grid(), iq3xxs_grid(), iq3s_grid(), iq1s_grid()] {
            for q in 0..20000 {
                let scale: f32 = rng.random_range(0.01..2.0);
                let t: Vec<f32> = if q % 10 == 0 {
                    let i = rng.random_range(0..grid.len());
                    grid.point(i).iter().map(|g| scale * g).collect()
                } else {
                    (0..grid.dim).map(|_| rng.random_range(-0.3..1.3) * scale * grid.max_level()).collect()
                };
                let w: Vec<f32> = (0..grid.dim).map(|_| rng.random_range(0.0..3.0)).collect();
                let (i, e) = grid.nearest(&t, &w, scale);
                let (i0, e0) = grid.nearest_one_at_a_time(&t, &w, scale);
                assert_eq!((i, e.to_bits()), (i0, e0.to_bits()), "dim {} query {q}", grid.dim);
            }
        }
    }

    /// The candidate table must find the exhaustive optimum almost always, and when it
    /// misses, lose little: the encoders' quality rests on it.
    #[test]
    fn candidate_search_matches_exhaustive_search() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (grid, signed) in
            [(iq2xxs_grid(), false), (iq2xs_grid(), false), (iq3xxs_grid(), false), (iq1s_grid(), true)]
        {
            let (mut misses, mut extra, mut total) = (0, 0.0f64, 0.0f64);
            let n = 2000;
            for _ in 0..n {
                let t: Vec<f32> = (0..grid.dim)
                    .map(|_| {
                        let v: f32 = rng.random_range(0.0..1.2);
                        if signed && rng.random_bool(0.5) {
                            -v
                        } else {
                            v
                        }
                    })
                    .collect();
                let w: Vec<f32> = (0..grid.dim).map(|_| rng.random_range(0.05..1.0)).collect();
                let scale = 1.0 / grid.max_level();
                let (_, e) = grid.nearest(&t, &w, scale);
                let (_, e0) = grid.nearest_exhaustive(&t, &w, scale);
                assert!(e >= e0 - 1e-5);
                if e > e0 + 1e-6 {
                    misses += 1;
                }
                extra += (e - e0) as f64;
                total += e0 as f64;
            }
            eprintln!(
                "dim {} len {}: {misses} misses, excess {:.4}, avg cands {:.1}",
                grid.dim,
                grid.len(),
                extra / total,
                grid.candidates.len() as f64 / (grid.cell_start.len() - 1) as f64
            );
            assert!(misses < n / 50, "{misses} misses in {n}");
            assert!(extra < 0.005 * total, "excess error {extra} of {total}");
        }
    }
}
