//! Parallel gradient sums in a fixed order, and the seam where a multi-process all-reduce goes.
//!
//! A mini-batch is cut into chunks of [`CHUNK_ROWS`] rows. Rayon workers compute each chunk's
//! partial sums into that chunk's own slot; the slots are then added in chunk order, in `f64`.
//! The chunk size is a constant, not a function of the thread count, so the same batch gives
//! the same bits with one thread or sixteen. Batches of fewer than [`PARALLEL_MIN_CHUNKS`] chunks
//! skip the thread pool entirely: that computes the same sums, only without the fork-join cost.
//!
//! [`Reducer`] is the step after the local sum. On one machine it does nothing; a run across
//! processes (MPI) implements it as an all-reduce of the summed buffer, and the trainer does not
//! change.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel;

/// Rows per chunk: small enough that `f32` chunk sums stay accurate and a chunk's rows stay in
/// L1/L2 cache, large enough that a rayon task is worth its scheduling.
pub const CHUNK_ROWS: usize = 512;

/// Batches of fewer chunks run on the calling thread. Forking a small batch out to the pool
/// costs more than it saves, and steals cores from the decode workers, which are the pipeline's
/// bottleneck; the sums are the same either way.
pub const PARALLEL_MIN_CHUNKS: usize = 8;

/// Combines per-process sums into global sums.
pub trait Reducer: Send {
    /// Replaces `buf` by the element-wise sum of every process's `buf`.
    fn all_reduce_sum(&mut self, buf: &mut [f64]) -> Result<()>;
}

/// The reducer for a single process: the local sum is already the global one.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalReducer;

impl Reducer for LocalReducer {
    fn all_reduce_sum(&mut self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Reusable scratch space for [`gradient_sums`].
#[derive(Debug, Default)]
pub struct Scratch {
    partials: Vec<f32>,
}

/// Computes `[Σ r x (d values), Σ r, Σ r²]` over `rows` rows into `out` (length `d + 2`).
///
/// With a pool, chunks run in parallel; the result is identical either way.
pub fn gradient_sums(
    pool: Option<&rayon::ThreadPool>,
    x: &[f32],
    y: &[f32],
    w: &[f32],
    b: f32,
    scratch: &mut Scratch,
    out: &mut [f64],
) {
    out.fill(0.0);
    let chunks = y.len().div_ceil(CHUNK_ROWS);
    let Some(pool) = pool.filter(|_| chunks >= PARALLEL_MIN_CHUNKS) else {
        return add_gradient_sums(x, y, w, b, out);
    };
    let d = w.len();
    let width = d + 2;
    scratch.partials.clear();
    scratch.partials.resize(chunks * width, 0.0);
    pool.install(|| {
        scratch
            .partials
            .par_chunks_mut(width)
            .zip(x.par_chunks(CHUNK_ROWS * d).zip(y.par_chunks(CHUNK_ROWS)))
            .for_each(|(slot, (xc, yc))| {
                let (g, loss) = slot.split_at_mut(d + 1);
                loss[0] = kernel::chunk_gradient(xc, yc, w, b, g);
            })
    });
    for slot in scratch.partials.chunks_exact(width) {
        for (o, p) in out.iter_mut().zip(slot) {
            *o += f64::from(*p);
        }
    }
}

/// Adds one chunk's Gram matrix `g` (`m × m`, `m = d + 2`, from [`kernel::chunk_gram`]) to the
/// normal-equation sums.
fn add_gram(d: usize, g: &[f64], a: &mut [f64], c: &mut [f64], yy: &mut f64) {
    let n = d + 1;
    let m = d + 2;
    for i in 0..n {
        for j in i..n {
            a[i * n + j] += g[i * m + j];
        }
        c[i] += g[i * m + d + 1];
    }
    *yy += g[(d + 1) * m + d + 1];
}

/// Adds `[Σ r x (d values), Σ r, Σ r²]` over the rows of `x` and `y` to `out` (length `d + 2`),
/// chunk by chunk on this thread, each chunk's `f32` sums added in `f64` in chunk order: what
/// [`gradient_sums`] computes, added to `out` rather than written.
pub fn add_gradient_sums(x: &[f32], y: &[f32], w: &[f32], b: f32, out: &mut [f64]) {
    let d = w.len();
    let mut partial = vec![0.0f32; d + 2];
    for (xc, yc) in x.chunks(CHUNK_ROWS * d).zip(y.chunks(CHUNK_ROWS)) {
        partial.fill(0.0);
        let (g, loss) = partial.split_at_mut(d + 1);
        loss[0] = kernel::chunk_gradient(xc, yc, w, b, g);
        for (o, p) in out.iter_mut().zip(&partial) {
            *o += f64::from(*p);
        }
    }
}

thread_local! {
    /// A chunk's Gram matrix and its rows repacked as `f64`, kept by each decode worker for the
    /// next chunk. Allocating and zeroing both for every 512 rows made `memset` 2.9 % of a
    /// `normal` pass's profile.
    static GRAM_SCRATCH: std::cell::RefCell<(Vec<f64>, Vec<f64>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Sums of the normal equations over a run of rows: `a = Σ x̃ x̃ᵀ` (upper triangle) and
/// `c = Σ x̃ y`, with `x̃ = [x, 1]`.
#[derive(Debug, Clone)]
pub struct NormalSums {
    pub d: usize,
    pub a: Vec<f64>,
    pub c: Vec<f64>,
    pub yy: f64,
    pub rows: u64,
}

impl NormalSums {
    pub fn new(d: usize) -> NormalSums {
        NormalSums { d, a: vec![0.0; (d + 1) * (d + 1)], c: vec![0.0; d + 1], yy: 0.0, rows: 0 }
    }

    /// Adds the rows of `x` and `y`, chunk by chunk, in parallel when a pool is given; chunk sums
    /// are added in chunk order, so the result does not depend on the thread count.
    pub fn add_rows(&mut self, pool: Option<&rayon::ThreadPool>, x: &[f32], y: &[f32]) {
        let d = self.d;
        let m = d + 2;
        let one = |(xc, yc): (&[f32], &[f32])| {
            let mut g = vec![0.0; m * m];
            kernel::chunk_gram(
                xc,
                yc,
                d,
                &mut Vec::with_capacity(kernel::GRAM_ROWS * (m + 16)),
                &mut g,
            );
            g
        };
        let parts: Vec<Vec<f64>> = match pool {
            Some(pool) if y.len() > CHUNK_ROWS => pool.install(|| {
                x.par_chunks(CHUNK_ROWS * d).zip(y.par_chunks(CHUNK_ROWS)).map(one).collect()
            }),
            _ => x.chunks(CHUNK_ROWS * d).zip(y.chunks(CHUNK_ROWS)).map(one).collect(),
        };
        for g in &parts {
            add_gram(d, g, &mut self.a, &mut self.c, &mut self.yy);
        }
        self.rows += y.len() as u64;
    }

    /// Adds the rows of `x` and `y` to sums packed as by [`NormalSums::to_buffer`], chunk by
    /// chunk on this thread: the same sums, in the same order, as [`NormalSums::add_rows`].
    pub fn add_rows_to_buffer(d: usize, x: &[f32], y: &[f32], buf: &mut [f64]) {
        let n = d + 1;
        let m = d + 2;
        let (a, rest) = buf.split_at_mut(n * n);
        let (c, rest) = rest.split_at_mut(n);
        let [yy, rows] = rest else { panic!("a normal-equations buffer for d = {d}") };
        GRAM_SCRATCH.with_borrow_mut(|(g, scratch)| {
            g.resize(m * m, 0.0);
            for (xc, yc) in x.chunks(CHUNK_ROWS * d).zip(y.chunks(CHUNK_ROWS)) {
                g.fill(0.0);
                kernel::chunk_gram(xc, yc, d, scratch, g);
                add_gram(d, g, a, c, yy);
            }
        });
        *rows += y.len() as f64;
    }

    /// Packs the sums into one buffer for a [`Reducer`], and back.
    pub fn to_buffer(&self) -> Vec<f64> {
        let mut buf = Vec::with_capacity(self.a.len() + self.c.len() + 2);
        buf.extend_from_slice(&self.a);
        buf.extend_from_slice(&self.c);
        buf.push(self.yy);
        buf.push(self.rows as f64);
        buf
    }

    pub fn from_buffer(d: usize, buf: &[f64]) -> NormalSums {
        let n = (d + 1) * (d + 1);
        NormalSums {
            d,
            a: buf[..n].to_vec(),
            c: buf[n..n + d + 1].to_vec(),
            yy: buf[n + d + 1],
            rows: buf[n + d + 2] as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data(rows: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = crate::rng::Rng::new(seed);
        let x = (0..rows * d).map(|_| rng.normal() as f32).collect();
        let y = (0..rows).map(|_| rng.normal() as f32).collect();
        (x, y)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The parallel reduction equals the sequential sum, bit for bit, for any thread count.
        #[test]
        fn parallel_sum_equals_sequential(rows in 1usize..3000, d in 1usize..40, threads in 1usize..5, seed: u64) {
            let (x, y) = data(rows, d, seed);
            let w: Vec<f32> = (0..d).map(|j| j as f32 * 0.01).collect();
            let mut sequential = vec![0.0; d + 2];
            gradient_sums(None, &x, &y, &w, 0.5, &mut Scratch::default(), &mut sequential);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut parallel = vec![0.0; d + 2];
            gradient_sums(Some(&pool), &x, &y, &w, 0.5, &mut Scratch::default(), &mut parallel);
            prop_assert_eq!(&sequential, &parallel);

            // And it is the sum it claims to be, up to f32 chunk rounding.
            let mut g = vec![0.0f32; d + 1];
            let mut reference = vec![0.0f64; d + 2];
            for (xc, yc) in x.chunks(d).zip(&y) {
                g.fill(0.0);
                reference[d + 1] += f64::from(kernel::chunk_gradient(xc, std::slice::from_ref(yc), &w, 0.5, &mut g));
                for (r, v) in reference.iter_mut().zip(&g) {
                    *r += f64::from(*v);
                }
            }
            for (a, b) in parallel.iter().zip(&reference) {
                prop_assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{} vs {}", a, b);
            }

            let mut ns = NormalSums::new(d);
            ns.add_rows(None, &x, &y);
            let mut np = NormalSums::new(d);
            np.add_rows(Some(&pool), &x, &y);
            prop_assert_eq!(ns.to_buffer(), np.to_buffer());
        }

        /// Summing a block in runs that start at chunk boundaries, as a decode worker does while
        /// it decodes, gives the bits of summing the block at once.
        #[test]
        fn sums_added_run_by_run_equal_the_whole(rows in 0usize..3000, d in 1usize..40, cut in 0usize..6, seed: u64) {
            let (x, y) = data(rows, d, seed);
            let w: Vec<f32> = (0..d).map(|j| j as f32 * 0.01 - 0.1).collect();
            let cut = (cut * CHUNK_ROWS).min(rows);
            let mut whole = vec![0.0; d + 2];
            gradient_sums(None, &x, &y, &w, 0.5, &mut Scratch::default(), &mut whole);
            let mut runs = vec![0.0; d + 2];
            add_gradient_sums(&x[..cut * d], &y[..cut], &w, 0.5, &mut runs);
            add_gradient_sums(&x[cut * d..], &y[cut..], &w, 0.5, &mut runs);
            prop_assert_eq!(whole, runs);

            let mut ns = NormalSums::new(d);
            ns.add_rows(None, &x, &y);
            let mut buf = NormalSums::new(d).to_buffer();
            NormalSums::add_rows_to_buffer(d, &x[..cut * d], &y[..cut], &mut buf);
            NormalSums::add_rows_to_buffer(d, &x[cut * d..], &y[cut..], &mut buf);
            prop_assert_eq!(ns.to_buffer(), buf);
        }
    }
}
