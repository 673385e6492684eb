//! Orthogonal matrices for rotations folded into weights: a randomized Hadamard matrix
//! H·diag(±1)/√n where a Hadamard matrix of order n can be built, else a seeded random
//! orthogonal matrix (Gram–Schmidt on Gaussian columns, in f64).
//!
//! Hadamard orders built here (QuaRot and QuIP# use the same families): Sylvester's 2^k,
//! Paley's construction I for q + 1 with q a prime ≡ 3 (mod 4), and their Kronecker
//! products 2^k · (q + 1). That covers the widths of the models lowbit meets: 576 = 8 · 72
//! (q = 71), 640 = 8 · 80 (q = 79), 1536 = 4 · 384 (q = 383), 2048, 4096, 14336 = 4 · 3584
//! (q = 3583). A randomized Hadamard spreads every coordinate over all others with equal
//! weight (entries ±1/√n), the incoherence QuIP# and QuaRot rely on; a random orthogonal
//! matrix does so only on average.

use rand::{Rng, SeedableRng};

/// A Hadamard matrix of order `n` (entries ±1, H·Hᵀ = n·I), row-major, if this module
/// can build one.
pub fn hadamard(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return None;
    }
    let mut two = 1usize;
    while n.is_multiple_of(two) {
        let m = n / two;
        let core = if m == 1 { Some(vec![1.0]) } else { paley(m) };
        if let Some(core) = core {
            return Some(kron(&sylvester(two), two, &core, m));
        }
        two *= 2;
    }
    None
}

/// Sylvester's Hadamard matrix of order `n` (a power of two).
fn sylvester(n: usize) -> Vec<f32> {
    let mut h = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = if (i & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
        }
    }
    h
}

/// Paley's construction I: order `m` = q + 1 for a prime q ≡ 3 (mod 4).
fn paley(m: usize) -> Option<Vec<f32>> {
    let q = m.checked_sub(1)?;
    if q < 3 || q % 4 != 3 || !is_prime(q) {
        return None;
    }
    // χ(x): the quadratic character mod q.
    let mut square = vec![false; q];
    for x in 1..q {
        square[x * x % q] = true;
    }
    let chi = |x: usize| -> f32 {
        if x == 0 {
            0.0
        } else if square[x] {
            1.0
        } else {
            -1.0
        }
    };
    // H = I + C, C = [[0, 1ᵀ], [−1, Q]] with Q_ij = χ(j − i) (skew, as q ≡ 3 mod 4).
    let mut h = vec![0f32; m * m];
    for i in 0..m {
        for j in 0..m {
            let c = match (i, j) {
                (0, 0) => 0.0,
                (0, _) => 1.0,
                (_, 0) => -1.0,
                _ => chi((j + q - i) % q),
            };
            h[i * m + j] = c + if i == j { 1.0 } else { 0.0 };
        }
    }
    Some(h)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// The Kronecker product A ⊗ B of square matrices of orders `a` and `b`.
fn kron(am: &[f32], a: usize, bm: &[f32], b: usize) -> Vec<f32> {
    let n = a * b;
    let mut out = vec![0f32; n * n];
    for i in 0..a {
        for j in 0..a {
            let x = am[i * a + j];
            for k in 0..b {
                for l in 0..b {
                    out[(i * b + k) * n + j * b + l] = x * bm[k * b + l];
                }
            }
        }
    }
    out
}

/// A seeded orthogonal matrix of order `n` (row-major, Q·Qᵀ = I): a Hadamard matrix with
/// random column signs, scaled by 1/√n, where one can be built; otherwise a random
/// orthogonal matrix. Returns it and whether it is a Hadamard matrix.
pub fn random_orthogonal(n: usize, seed: u64) -> (Vec<f32>, bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if let Some(mut h) = hadamard(n) {
        let signs: Vec<f32> = (0..n).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
        let scale = 1.0 / (n as f32).sqrt();
        for row in h.chunks_exact_mut(n) {
            for (x, s) in row.iter_mut().zip(&signs) {
                *x *= s * scale;
            }
        }
        return (h, true);
    }
    // Gram–Schmidt (twice, for f64 orthogonality) on Gaussian rows.
    let mut q = vec![0f64; n * n];
    for i in 0..n {
        let mut v: Vec<f64> = (0..n).map(|_| gaussian(&mut rng)).collect();
        for _ in 0..2 {
            for r in 0..i {
                let row = &q[r * n..(r + 1) * n];
                let d: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(row).for_each(|(x, a)| *x -= d * a);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        q[i * n..(i + 1) * n].iter_mut().zip(&v).for_each(|(x, a)| *x = a / norm);
    }
    (q.into_iter().map(|x| x as f32).collect(), false)
}

fn gaussian(rng: &mut impl Rng) -> f64 {
    // Box–Muller; u1 in (0, 1].
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_off_identity(q: &[f32], n: usize, scale: f64) -> f64 {
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let d: f64 = (0..n).map(|k| q[i * n + k] as f64 * q[j * n + k] as f64).sum::<f64>() / scale;
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    #[test]
    fn hadamard_orders_of_the_zoo_widths_are_exact() {
        for n in [1, 2, 4, 12, 20, 24, 72, 80, 576, 640] {
            let h = hadamard(n).unwrap_or_else(|| panic!("order {n}"));
            assert!(h.iter().all(|&x| x == 1.0 || x == -1.0));
            assert_eq!(max_off_identity(&h, n, n as f64), 0.0, "order {n}");
        }
        assert!(hadamard(1536).is_some() && hadamard(14336).is_some() && hadamard(2048).is_some());
        // 6 = 2 · 3: no construction here (none exists for 6 at all).
        assert!(hadamard(6).is_none() && hadamard(0).is_none());
    }

    #[test]
    fn random_orthogonal_is_orthogonal_and_seeded() {
        for n in [12, 30] {
            let (q, had) = random_orthogonal(n, 7);
            assert_eq!(had, n == 12);
            // Rounding of 1/√n in f32, summed over n products: far below 1e-5.
            assert!(max_off_identity(&q, n, 1.0) < 1e-5, "order {n}");
            assert_eq!(q, random_orthogonal(n, 7).0);
            assert_ne!(q, random_orthogonal(n, 8).0);
        }
    }
}
