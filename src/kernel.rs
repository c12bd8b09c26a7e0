//! The arithmetic of one chunk of rows: least-squares gradient sums and normal-equation sums.
//!
//! For rows `x_i` with targets `y_i`, weights `w` and bias `b`, the residual is
//! `r_i = w·x_i + b − y_i`, and the MSE gradient is `(2/n) Σ r_i x_i` for the weights and
//! `(2/n) Σ r_i` for the bias. The kernels here return the raw sums; scaling belongs to the
//! trainer.
//!
//! A chunk is small (see `reduce::CHUNK_ROWS`), so its sums are kept in `f32`, which vectorises
//! twice as wide; the chunk sums are then added in `f64`. Over ten million rows that keeps the
//! relative error near 1e-7, where one long `f32` sum drifts to 1e-4.
//!
//! Dot products use eight independent accumulators: a single running sum forms a dependency
//! chain that the compiler may not reorder (float addition is not associative), which keeps it
//! scalar. The summation order is written out explicitly, so the AVX2 build of a kernel and the
//! baseline build compute the same bits; fused multiply-add is deliberately not used, because
//! it would change results between machines with and without it.

/// Lanes of independent accumulators in the dot product.
const LANES: usize = 8;

#[inline(always)]
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut wc = w.chunks_exact(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (wl, xl) in (&mut wc).zip(&mut xc) {
        for k in 0..LANES {
            acc[k] += wl[k] * xl[k];
        }
    }
    let mut tail = 0.0f32;
    for (a, b) in wc.remainder().iter().zip(xc.remainder()) {
        tail += a * b;
    }
    let s4 = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

#[inline(always)]
fn gradient_generic(x: &[f32], y: &[f32], w: &[f32], b: f32, g: &mut [f32]) -> f32 {
    let d = w.len();
    let (gw, gb) = g.split_at_mut(d);
    let mut bias_sum = 0.0f32;
    let mut loss = 0.0f32;
    for (row, &target) in x.chunks_exact(d).zip(y) {
        let r = dot(w, row) + b - target;
        for (gi, xi) in gw.iter_mut().zip(row) {
            *gi += r * xi;
        }
        bias_sum += r;
        loss += r * r;
    }
    gb[0] += bias_sum;
    loss
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gradient_avx2(x: &[f32], y: &[f32], w: &[f32], b: f32, g: &mut [f32]) -> f32 {
    gradient_generic(x, y, w, b, g)
}

/// Adds `Σ r_i x_i` to `g[..d]` and `Σ r_i` to `g[d]` for the rows of `x` (`rows × d`, with
/// `d = w.len()`), and returns `Σ r_i²`.
pub fn chunk_gradient(x: &[f32], y: &[f32], w: &[f32], b: f32, g: &mut [f32]) -> f32 {
    debug_assert_eq!(g.len(), w.len() + 1);
    debug_assert_eq!(x.len(), y.len() * w.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { gradient_avx2(x, y, w, b, g) };
    }
    gradient_generic(x, y, w, b, g)
}

/// Returns `Σ r_i²` for the rows of `x`, without the gradient (for evaluation).
pub fn chunk_loss(x: &[f32], y: &[f32], w: &[f32], b: f32) -> f32 {
    let d = w.len();
    x.chunks_exact(d).zip(y).map(|(row, &t)| (dot(w, row) + b - t).powi(2)).sum()
}

/// `Σ w_j x_j` in `f64`, with four independent accumulators so that the additions pipeline
/// rather than wait on each other; the order is fixed, so the result is too.
#[inline]
pub fn dot_f64(w: &[f64], x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut wc = w.chunks_exact(4);
    let mut xc = x.chunks_exact(4);
    for (wl, xl) in (&mut wc).zip(&mut xc) {
        for k in 0..4 {
            acc[k] += wl[k] * f64::from(xl[k]);
        }
    }
    let tail: f64 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * f64::from(*b)).sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// Predicts each row of `x` into `out`, in `f64` so that a model's weights are applied exactly
/// as stored.
pub fn predict_rows(x: &[f32], w: &[f64], b: f64, out: &mut Vec<f64>) {
    let d = w.len();
    out.clear();
    out.extend(x.chunks_exact(d).map(|row| b + dot_f64(w, row)));
}

/// Columns per side of a register tile of the Gram kernel.
pub const TILE: usize = 4;

/// Rows per pass of the Gram kernel: the repacked rows (`GRAM_ROWS × m` doubles) stay in L1/L2
/// cache while every tile of the matrix walks over them.
pub const GRAM_ROWS: usize = 128;

/// Adds the upper triangle of `Zᵀ Z` to `g` (row-major `m × m`, `m = d + 2`), where each row of
/// `Z` is a row of `x` followed by a constant 1 (the bias) and its target `y`. One call thus
/// yields every sum the normal equations need: `XᵀX`, `Xᵀ1`, `Xᵀy`, `n`, `Σy` and `yᵀy`.
///
/// The rows are repacked as `f64` panels of four columns (`panel[r] = [z_r,4p … z_r,4p+3]`,
/// zero-padded), and each 4 × 4 tile of the result is accumulated in registers over all the rows
/// as a sum of outer products of two panel rows, before it is added to `g`. A rank-one update
/// per row would instead stream the whole `m × m` matrix through the cache for every row.
/// Products of two `f32` values are exact in `f64`, so only the additions round.
pub fn chunk_gram(x: &[f32], y: &[f32], d: usize, panels: &mut Vec<[f64; TILE]>, g: &mut [f64]) {
    let m = d + 2;
    debug_assert_eq!(g.len(), m * m);
    let np = m.div_ceil(TILE);
    for (xs, ys) in x.chunks(GRAM_ROWS * d).zip(y.chunks(GRAM_ROWS)) {
        let rows = ys.len();
        panels.clear();
        panels.resize(np * rows, [0.0; TILE]);
        // One row of Z at a time, zero-padded to whole panels, then dealt out four values per
        // panel.
        let mut z = vec![0.0f64; np * TILE];
        for (i, (row, &t)) in xs.chunks_exact(d).zip(ys).enumerate() {
            for (zj, &v) in z.iter_mut().zip(row) {
                *zj = f64::from(v);
            }
            z[d] = 1.0;
            z[d + 1] = f64::from(t);
            for (p, four) in z.chunks_exact(TILE).enumerate() {
                panels[p * rows + i] = [four[0], four[1], four[2], four[3]];
            }
        }
        gram_tiles(panels, rows, m, g);
    }
}

#[inline(always)]
fn gram_tiles_generic(panels: &[[f64; TILE]], rows: usize, m: usize, g: &mut [f64]) {
    let np = m.div_ceil(TILE);
    for pi in 0..np {
        let left = &panels[pi * rows..(pi + 1) * rows];
        for pj in pi..np {
            let right = &panels[pj * rows..(pj + 1) * rows];
            let mut acc = [[0.0f64; TILE]; TILE];
            for (a, b) in left.iter().zip(right) {
                for (row, &ak) in acc.iter_mut().zip(a) {
                    for (cell, &bl) in row.iter_mut().zip(b) {
                        *cell += ak * bl;
                    }
                }
            }
            for (k, row) in acc.iter().enumerate() {
                for (l, &v) in row.iter().enumerate() {
                    let (i, j) = (pi * TILE + k, pj * TILE + l);
                    if i <= j && j < m {
                        g[i * m + j] += v;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gram_tiles_avx2(panels: &[[f64; TILE]], rows: usize, m: usize, g: &mut [f64]) {
    gram_tiles_generic(panels, rows, m, g)
}

fn gram_tiles(panels: &[[f64; TILE]], rows: usize, m: usize, g: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { gram_tiles_avx2(panels, rows, m, g) };
    }
    gram_tiles_generic(panels, rows, m, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_the_definition() {
        let d = 11;
        let rows = 37;
        let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let y: Vec<f32> = (0..rows).map(|i| (i % 5) as f32 - 2.0).collect();
        let w: Vec<f32> = (0..d).map(|j| j as f32 / 10.0 - 0.5).collect();
        let b = 0.25f32;
        let mut g = vec![0.0f32; d + 1];
        let loss = chunk_gradient(&x, &y, &w, b, &mut g);

        let mut expect = vec![0.0f64; d + 1];
        let mut expect_loss = 0.0f64;
        for i in 0..rows {
            let row = &x[i * d..(i + 1) * d];
            let r: f64 =
                row.iter().zip(&w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>()
                    + f64::from(b)
                    - f64::from(y[i]);
            for j in 0..d {
                expect[j] += r * f64::from(row[j]);
            }
            expect[d] += r;
            expect_loss += r * r;
        }
        for (got, want) in g.iter().zip(&expect) {
            assert!((f64::from(*got) - want).abs() < 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
        }
        assert!((f64::from(loss) - expect_loss).abs() < 1e-4 * expect_loss);
        assert!((f64::from(chunk_loss(&x, &y, &w, b)) - expect_loss).abs() < 1e-4 * expect_loss);
    }

    #[test]
    fn gram_matches_the_definition() {
        let d = 3;
        let x = [1.0f32, 2.0, 3.0, -1.0, 0.5, 2.0];
        let y = [1.0f32, -2.0];
        let m = d + 2;
        let mut g = vec![0.0; m * m];
        chunk_gram(&x, &y, d, &mut Vec::new(), &mut g);
        // Upper triangle of [x, 1, y]ᵀ[x, 1, y].
        let rows: Vec<Vec<f64>> = x
            .chunks(d)
            .zip(&y)
            .map(|(r, &t)| r.iter().map(|&v| f64::from(v)).chain([1.0, f64::from(t)]).collect())
            .collect();
        for i in 0..m {
            for j in 0..m {
                let want: f64 = if i <= j { rows.iter().map(|r| r[i] * r[j]).sum() } else { 0.0 };
                assert_eq!(g[i * m + j], want, "({i}, {j})");
            }
        }
    }
}
