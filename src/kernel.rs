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
//! it would change results between machines with and without it. (The Gram kernel is the one
//! exception, and only because there it cannot: see `chunk_gram`.)

use crate::schedule::Schedule;

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

/// What per-row stochastic gradient descent advances: the weights, the bias and the number of
/// updates so far.
pub struct SgdState<'a> {
    pub w: &'a mut [f64],
    pub b: &'a mut f64,
    pub updates: &'a mut u64,
}

/// Per-row stochastic gradient descent over the rows of `x` (`rows × d`, `d = w.len()`), in
/// order: for each row, `r = b + w·x − y`, then `w ← w·(1 − 2·eta·l2) − 2·eta·r·x` and
/// `b ← b − 2·eta·r`, with `eta = schedule.eta(updates)` and `updates` counting every row.
/// Returns `Σ r²` and the last `eta`.
///
/// The whole loop is built for AVX2 where the CPU has it (the scalar-by-scalar weight update
/// then runs four doubles at a time); every operation is the same as in the baseline build, so
/// the bits are too.
pub fn sgd_rows(
    x: &[f32],
    y: &[f32],
    s: &mut SgdState,
    schedule: &Schedule,
    l2: f64,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sgd_rows_avx2(x, y, s, schedule, l2) };
    }
    sgd_rows_generic(x, y, s, schedule, l2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sgd_rows_avx2(
    x: &[f32],
    y: &[f32],
    s: &mut SgdState,
    schedule: &Schedule,
    l2: f64,
) -> (f64, f64) {
    sgd_rows_generic(x, y, s, schedule, l2)
}

#[inline(always)]
fn sgd_rows_generic(
    x: &[f32],
    y: &[f32],
    s: &mut SgdState,
    schedule: &Schedule,
    l2: f64,
) -> (f64, f64) {
    let d = s.w.len();
    let mut loss = 0.0;
    let mut eta = 0.0;
    for (row, &target) in x.chunks_exact(d).zip(y) {
        let r = *s.b + dot_f64(s.w, row) - f64::from(target);
        eta = schedule.eta(*s.updates);
        let step = 2.0 * eta * r;
        if l2 > 0.0 {
            let shrink = 1.0 - 2.0 * eta * l2;
            for (wi, &xi) in s.w.iter_mut().zip(row) {
                *wi = *wi * shrink - step * f64::from(xi);
            }
        } else {
            for (wi, &xi) in s.w.iter_mut().zip(row) {
                *wi -= step * f64::from(xi);
            }
        }
        *s.b -= step;
        *s.updates += 1;
        loss += r * r;
    }
    (loss, eta)
}

/// Predicts each row of `x` into `out`, in `f64` so that a model's weights are applied exactly
/// as stored.
pub fn predict_rows(x: &[f32], w: &[f64], b: f64, out: &mut Vec<f64>) {
    let d = w.len();
    out.clear();
    out.extend(x.chunks_exact(d).map(|row| b + dot_f64(w, row)));
}

/// Rows per pass of the Gram kernel. The pass's rows, repacked as `f64` (`GRAM_ROWS × stride`,
/// 40 KB at d = 64), stay in the L1 cache while every tile of the matrix walks over them.
pub const GRAM_ROWS: usize = 64;

/// Row length of the repacked rows: room for a tile of 16 columns that starts at any multiple
/// of 8 below `m`.
fn gram_stride(m: usize) -> usize {
    m.next_multiple_of(8) + 8
}

/// The column tiles of row tile `i0`: they start on the diagonal, so that no tile lies wholly
/// below it.
fn column_tiles(i0: usize, tj: usize, m: usize) -> std::iter::StepBy<std::ops::Range<usize>> {
    (i0..m).step_by(tj)
}

/// Adds the upper triangle of `Zᵀ Z` to `g` (row-major `m × m`, `m = d + 2`), where each row of
/// `Z` is a row of `x` followed by a constant 1 (the bias) and its target `y`. One call thus
/// yields every sum the normal equations need: `XᵀX`, `Xᵀ1`, `Xᵀy`, `n`, `Σy` and `yᵀy`.
///
/// `GRAM_ROWS` rows at a time are repacked into `scratch` as zero-padded `f64` rows, and each
/// tile of the result is accumulated in registers over those rows as a sum of outer products,
/// then added to `g`. (A rank-one update per row would stream the whole `m × m` matrix through
/// the cache for every row.) Products of two `f32` values are exact in `f64`, so only the
/// additions round, and every cell is summed over the rows in row order whatever the tile shape:
/// the AVX-512, AVX2 and baseline builds give the same bits. For the same reason the vector
/// builds may fuse each multiply and add: rounding an exact product plus a sum once is what the
/// separate add does anyway.
pub fn chunk_gram(x: &[f32], y: &[f32], d: usize, scratch: &mut Vec<f64>, g: &mut [f64]) {
    let m = d + 2;
    debug_assert_eq!(g.len(), m * m);
    let stride = gram_stride(m);
    for (xs, ys) in x.chunks(GRAM_ROWS * d).zip(y.chunks(GRAM_ROWS)) {
        let rows = ys.len();
        // Padding columns are written as zeros once and never touched again.
        scratch.resize(rows * stride, 0.0);
        pack(xs, ys, d, &mut scratch[..rows * stride]);
        gram_pass(&scratch[..rows * stride], stride, m, g);
    }
}

/// Writes each row of `x` as `f64`, followed by 1 and its target, into rows of `z`.
#[inline(always)]
fn pack_rows(x: &[f32], y: &[f32], d: usize, z: &mut [f64]) {
    let stride = z.len() / y.len();
    for ((z, row), &t) in z.chunks_exact_mut(stride).zip(x.chunks_exact(d)).zip(y) {
        for (zj, &v) in z[..d].iter_mut().zip(row) {
            *zj = f64::from(v);
        }
        z[d] = 1.0;
        z[d + 1] = f64::from(t);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pack_rows_avx512(x: &[f32], y: &[f32], d: usize, z: &mut [f64]) {
    pack_rows(x, y, d, z)
}

fn pack(x: &[f32], y: &[f32], d: usize, z: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { pack_rows_avx512(x, y, d, z) };
    }
    pack_rows(x, y, d, z)
}

/// One pass of the Gram kernel over repacked rows `z` (rows of `stride` values), with tiles of
/// `TI × TJ` cells, only those that reach the upper triangle. This is the portable build and the
/// reference for the vector builds below, which must sum every cell in the same order.
fn gram_tiles<const TI: usize, const TJ: usize>(z: &[f64], stride: usize, m: usize, g: &mut [f64]) {
    for i0 in (0..m).step_by(TI) {
        for j0 in column_tiles(i0, TJ, m) {
            let mut acc = [[0.0f64; TJ]; TI];
            for zr in z.chunks_exact(stride) {
                for (k, cells) in acc.iter_mut().enumerate() {
                    for (l, cell) in cells.iter_mut().enumerate() {
                        *cell += zr[i0 + k] * zr[j0 + l];
                    }
                }
            }
            add_tile(&acc, (i0, j0), m, m, g);
        }
    }
}

/// Adds the cells of a tile at `(i0, j0)` that lie in the upper triangle of `g` (`m × m`) and
/// in its first `cols` columns.
fn add_tile<const TI: usize, const TJ: usize>(
    acc: &[[f64; TJ]; TI],
    (i0, j0): (usize, usize),
    m: usize,
    cols: usize,
    g: &mut [f64],
) {
    for (i, cells) in (i0..m).zip(acc) {
        for (j, &v) in (j0..cols).zip(cells) {
            if i <= j {
                g[i * m + j] += v;
            }
        }
    }
}

/// Defines a vector build of the Gram pass. The first `main` columns (`m` rounded down to a
/// whole number of vectors) are covered by tiles of `lanes` rows × `2 × lanes` columns, held in
/// `2 × lanes` registers of `lanes` doubles: each row contributes the product of `lanes`
/// broadcast values with two vector loads. Where no more than `lanes` columns are left, the tile
/// is `lanes` wide. The last `m - main` columns (at d = 64, the bias and the target) are summed
/// apart, a broadcast of the column's value times every vector of the row, so that they take no
/// tile of their own. A tile that lies wholly inside the upper triangle is added to `g` a vector
/// at a time; the others are stored and added cell by cell, exactly as the portable build adds
/// them.
macro_rules! gram_pass_simd {
    (
        $(#[$doc:meta])*
        fn $name:ident, feature $feature:literal, $vector:ident of $lanes:literal,
        $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $add:ident, $store:ident
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        fn $name(z: &[f64], stride: usize, m: usize, g: &mut [f64]) {
            use std::arch::x86_64::{$add, $fmadd, $load, $splat, $store, $vector, $zero};
            const TI: usize = $lanes;
            const TJ: usize = 2 * $lanes;
            let main = m - m % TI;
            for i0 in (0..main).step_by(TI) {
                for j0 in column_tiles(i0, TJ, main) {
                    let mut lo: [$vector; TI] = [$zero(); TI];
                    let mut hi: [$vector; TI] = [$zero(); TI];
                    let narrow = main - j0 <= TI;
                    if narrow {
                        for zr in z.chunks_exact(stride) {
                            let a: &[f64; TI] = zr[i0..i0 + TI].try_into().expect("a whole tile");
                            let b: &[f64; TI] = zr[j0..j0 + TI].try_into().expect("a whole tile");
                            // SAFETY: `b` holds `lanes` doubles.
                            let b0 = unsafe { $load(b.as_ptr()) };
                            for k in 0..TI {
                                lo[k] = $fmadd($splat(a[k]), b0, lo[k]);
                            }
                        }
                    } else {
                        for zr in z.chunks_exact(stride) {
                            let a: &[f64; TI] = zr[i0..i0 + TI].try_into().expect("a whole tile");
                            let b: &[f64; TJ] = zr[j0..j0 + TJ].try_into().expect("a whole tile");
                            // SAFETY: `b` holds `2 × lanes` doubles, so both loads are in bounds.
                            let (b0, b1) =
                                unsafe { ($load(b.as_ptr()), $load(b.as_ptr().add(TI))) };
                            for k in 0..TI {
                                let ak = $splat(a[k]);
                                lo[k] = $fmadd(ak, b0, lo[k]);
                                hi[k] = $fmadd(ak, b1, hi[k]);
                            }
                        }
                    }
                    // Every cell of the tile is on or above the diagonal and inside `main`.
                    if j0 + 1 >= i0 + TI && j0 + TJ <= main {
                        for (k, (l, h)) in lo.iter().zip(&hi).enumerate() {
                            let cells = &mut g[(i0 + k) * m + j0..][..TJ];
                            // SAFETY: `cells` holds `2 × lanes` doubles, room for both loads
                            // and both stores.
                            unsafe {
                                let p = cells.as_mut_ptr();
                                $store(p, $add($load(p), *l));
                                $store(p.add(TI), $add($load(p.add(TI)), *h));
                            }
                        }
                        continue;
                    }
                    let mut acc = [[0.0f64; TJ]; TI];
                    for (cells, (l, h)) in acc.iter_mut().zip(lo.iter().zip(&hi)) {
                        // SAFETY: `cells` holds `2 × lanes` doubles, room for both stores.
                        unsafe {
                            $store(cells.as_mut_ptr(), *l);
                            $store(cells.as_mut_ptr().add(TI), *h);
                        }
                    }
                    add_tile(&acc, (i0, j0), m, main, g);
                }
            }
            // The last columns against the first `main` rows: up to `BLOCKS` vectors of the
            // row times a broadcast of the column's value per pass.
            const BLOCKS: usize = 8;
            for t in main..m {
                for b0 in (0..main).step_by(BLOCKS * TI) {
                    let blocks = ((main - b0) / TI).min(BLOCKS);
                    let mut acc: [$vector; BLOCKS] = [$zero(); BLOCKS];
                    if blocks == BLOCKS {
                        // A fixed count, so that the sums stay in registers.
                        for zr in z.chunks_exact(stride) {
                            let zt = $splat(zr[t]);
                            let a: &[f64; BLOCKS * TI] =
                                zr[b0..b0 + BLOCKS * TI].try_into().expect("whole vectors");
                            for k in 0..BLOCKS {
                                // SAFETY: `a` holds `BLOCKS × lanes` doubles.
                                let v = unsafe { $load(a.as_ptr().add(k * TI)) };
                                acc[k] = $fmadd(v, zt, acc[k]);
                            }
                        }
                    } else {
                        for zr in z.chunks_exact(stride) {
                            let zt = $splat(zr[t]);
                            let a = &zr[b0..b0 + blocks * TI];
                            for (k, acc) in acc.iter_mut().enumerate().take(blocks) {
                                // SAFETY: `a` holds `blocks × lanes` doubles.
                                let v = unsafe { $load(a.as_ptr().add(k * TI)) };
                                *acc = $fmadd(v, zt, *acc);
                            }
                        }
                    }
                    let mut cells = [0.0f64; BLOCKS * TI];
                    for (k, v) in acc.iter().enumerate().take(blocks) {
                        // SAFETY: `cells` holds `BLOCKS × lanes` doubles.
                        unsafe { $store(cells.as_mut_ptr().add(k * TI), *v) };
                    }
                    for (i, v) in (b0..b0 + blocks * TI).zip(cells) {
                        g[i * m + t] += v;
                    }
                }
            }
            // The last columns against each other, cell by cell.
            for i in main..m {
                for j in i..m {
                    let mut cell = 0.0;
                    for zr in z.chunks_exact(stride) {
                        cell += zr[i] * zr[j];
                    }
                    g[i * m + j] += cell;
                }
            }
        }
    };
}

gram_pass_simd! {
    /// The AVX-512 build: 8 × 16 cells in 16 registers, enough independent sums to keep both
    /// fused multiply-add units busy.
    fn gram_pass_avx512, feature "avx512f", __m512d of 8,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd,
    _mm512_storeu_pd
}

gram_pass_simd! {
    /// The AVX2 build: 4 × 8 cells in 8 registers, half the register file.
    fn gram_pass_avx2, feature "avx2,fma", __m256d of 4,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_add_pd,
    _mm256_storeu_pd
}

/// One pass of the Gram kernel with the widest build this CPU runs.
fn gram_pass(z: &[f64], stride: usize, m: usize, g: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { gram_pass_avx512(z, stride, m, g) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { gram_pass_avx2(z, stride, m, g) };
        }
    }
    gram_tiles::<4, 8>(z, stride, m, g)
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

    /// The AVX2 build of per-row SGD takes the same steps as the baseline build, bit for bit.
    #[test]
    fn sgd_builds_agree_bit_for_bit() {
        for (d, l2) in [(1, 0.0), (7, 1e-3), (64, 0.0), (67, 1e-4)] {
            let rows = 300;
            let x: Vec<f32> =
                (0..rows * d).map(|i| ((i * 7919) % 211) as f32 / 23.0 - 4.5).collect();
            let y: Vec<f32> = (0..rows).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
            let schedule = Schedule::InverseTime { t0: 1.0, t1: 4.0 * (d as f64 + 1.0) };
            let run = |generic: bool| {
                let (mut w, mut b, mut t) = (vec![0.1; d], -0.2, 5u64);
                let mut state = SgdState { w: &mut w, b: &mut b, updates: &mut t };
                let (loss, eta) = if generic {
                    sgd_rows_generic(&x, &y, &mut state, &schedule, l2)
                } else {
                    sgd_rows(&x, &y, &mut state, &schedule, l2)
                };
                let bits: Vec<u64> =
                    w.iter().chain([&b, &loss, &eta]).map(|v| v.to_bits()).collect();
                (bits, t)
            };
            assert_eq!(run(true), run(false), "d={d}");
            assert_eq!(run(true).1, 5 + rows as u64);
        }
    }

    /// Every build sums each cell over the rows in row order, so the AVX-512, AVX2 and portable
    /// kernels give the same bits as a plain cell-by-cell sum, whichever this CPU dispatches to.
    #[test]
    fn gram_tile_shapes_agree_bit_for_bit() {
        for d in [1, 5, 14, 15, 16, 30, 64, 67] {
            let m = d + 2;
            let stride = gram_stride(m);
            let rows = 2 * GRAM_ROWS + 3;
            let z: Vec<f64> = (0..rows * stride)
                .map(|i| {
                    // Values that widen from `f32`, as the packed rows' values all do.
                    let v = ((i * 7919) % 1009) as f32 / 97.0 - 5.2;
                    if i % stride < m { f64::from(v) } else { 0.0 }
                })
                .collect();
            let reference = {
                let mut g = vec![0.0; m * m];
                gram_tiles::<1, 1>(&z, stride, m, &mut g);
                g
            };
            let run = |pass: &dyn Fn(&mut [f64])| {
                let mut g = vec![0.0; m * m];
                pass(&mut g);
                g
            };
            let mut builds = vec![
                ("portable", run(&|g| gram_tiles::<4, 8>(&z, stride, m, g))),
                ("dispatched", run(&|g| gram_pass(&z, stride, m, g))),
            ];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    builds.push(("avx2", run(&|g| unsafe { gram_pass_avx2(&z, stride, m, g) })));
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    builds
                        .push(("avx512", run(&|g| unsafe { gram_pass_avx512(&z, stride, m, g) })));
                }
            }
            for (k, want) in reference.iter().enumerate() {
                let (i, j) = (k / m, k % m);
                for (name, got) in &builds {
                    assert_eq!(got[k].to_bits(), want.to_bits(), "d={d} ({i}, {j}) {name}");
                }
            }
        }
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
