//! Benchmarks of the in-memory stages: the per-chunk gradient kernel, the fixed-order parallel
//! reductions, and the shuffle buffer.
//!
//! Every input is drawn from one seeded [`Rng`], so two runs time the same arithmetic on the
//! same values and a change in the figures comes from the code, not the data. Nothing here
//! touches a file; `benches/reader.rs` covers the stages that do.
//!
//! Run with `cargo bench --bench kernels`; `benches/README.md` lists the cases and the figures
//! measured so far.

use std::convert::Infallible;
use std::fmt;

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use rayon::ThreadPool;
use slope::kernel;
use slope::reader::DEFAULT_BLOCK_ROWS;
use slope::reduce::{self, CHUNK_ROWS, NormalSums, Scratch};
use slope::rng::Rng;
use slope::shuffle::{Batch, BatchWriter, ShuffleBuffer};

fn main() {
    divan::main();
}

/// The root of every random input; any fixed value would do.
const SEED: u64 = 0x5107E;

/// Rows per block handed to `NormalSums::add_rows`: the reader's default block, which is what
/// the closed-form pass receives.
const NORMAL_ROWS: usize = DEFAULT_BLOCK_ROWS;

/// Rows pushed through the shuffle buffer per iteration: twice its capacity, so that half the
/// rows fill it and half evict a resident row, and the drain then empties it.
const SHUFFLE_ROWS: usize = 524_288;
const SHUFFLE_CAPACITY: usize = 131_072;
const SHUFFLE_BATCH: usize = 1024;

/// Seeded rows in the layout the kernels take: `x` is `rows × d`, row after row.
///
/// The values are standard normal draws. The kernels have no data-dependent branches, so any
/// finite values time the same; drawing them keeps subnormals and NaN out of the measurement.
struct Rows {
    x: Vec<f32>,
    y: Vec<f32>,
    w: Vec<f32>,
}

impl Rows {
    fn new(rows: usize, d: usize) -> Rows {
        let mut rng = Rng::new(SEED);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        Rows { w: draw(d), x: draw(rows * d), y: draw(rows) }
    }

    fn rows(&self) -> usize {
        self.y.len()
    }

    /// Bytes of features and targets read per pass, for a bandwidth figure.
    fn bytes(&self) -> usize {
        (self.x.len() + self.y.len()) * size_of::<f32>()
    }
}

/// Where the chunks of a parallel case run.
#[derive(Clone, Copy, Debug)]
enum Threads {
    /// No pool (`None`): the chunks run on the calling thread. The trainer always passes a
    /// pool, so this case is the floor that shows what the pool costs.
    Inline,
    /// A rayon pool of this many threads, as the trainer passes with `--threads N`. A pool of
    /// one thread still receives each batch large enough to split and the caller waits for it,
    /// so the gap between `inline` and `threads=1` is the fork-join cost alone.
    Pool(usize),
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::Inline => f.write_str("inline"),
            Threads::Pool(n) => write!(f, "threads={n}"),
        }
    }
}

/// The thread settings every parallel benchmark runs under.
const THREADS: [Threads; 3] = [Threads::Inline, Threads::Pool(1), Threads::Pool(2)];

/// The pool for `threads`, built once per case outside the timed region, as the trainer builds
/// its pool once per run: the figures show the cost of a step, not of spawning threads.
fn pool(threads: Threads) -> Option<ThreadPool> {
    let Threads::Pool(n) = threads else { return None };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("bench-grad-{i}"))
        .build()
        .expect("build a rayon pool");
    Some(pool)
}

/// One parallel case: `rows` rows of `d` features summed under `threads`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    rows: usize,
    d: usize,
    threads: Threads,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rows={} d={} {}", self.rows, self.d, self.threads)
    }
}

/// A single-threaded case, named by its feature count.
#[derive(Clone, Copy, Debug)]
struct Features(usize);

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d={}", self.0)
    }
}

/// Every combination of the given sizes, batch size outermost.
fn shapes(rows: &[usize], ds: &[usize]) -> Vec<Shape> {
    let mut out = Vec::new();
    for &rows in rows {
        for &d in ds {
            for threads in THREADS {
                out.push(Shape { rows, d, threads });
            }
        }
    }
    out
}

/// One chunk's gradient sums: the innermost loop of every gradient algorithm.
#[divan::bench(args = [8, 32, 64, 256].map(Features))]
fn chunk_gradient(bencher: Bencher, Features(d): Features) {
    let rows = Rows::new(CHUNK_ROWS, d);
    let mut g = vec![0.0f32; d + 1];
    bencher
        .counter(ItemsCount::new(rows.rows()))
        .counter(BytesCount::new(rows.bytes()))
        .bench_local(|| {
            // The sums accumulate, so they start from zero as a fresh chunk slot does.
            g.fill(0.0);
            kernel::chunk_gradient(black_box(&rows.x), black_box(&rows.y), &rows.w, 0.5, &mut g)
        });
}

/// A mini-batch's gradient: chunks in parallel, then the in-order `f64` sum of the partials.
#[divan::bench(args = shapes(&[256, 1024, 8192], &[32, 64]))]
fn gradient_sums(bencher: Bencher, shape: Shape) {
    let rows = Rows::new(shape.rows, shape.d);
    let pool = pool(shape.threads);
    let mut scratch = Scratch::default();
    let mut out = vec![0.0f64; shape.d + 2];
    bencher
        .counter(ItemsCount::new(rows.rows()))
        .counter(BytesCount::new(rows.bytes()))
        .bench_local(|| {
            let (x, y) = (black_box(&rows.x), black_box(&rows.y));
            reduce::gradient_sums(pool.as_ref(), x, y, &rows.w, 0.5, &mut scratch, &mut out);
        });
}

/// One decoded block's contribution to the normal equations, as the closed form sums it.
#[divan::bench(args = shapes(&[NORMAL_ROWS], &[16, 64]))]
fn normal_add_rows(bencher: Bencher, shape: Shape) {
    let rows = Rows::new(shape.rows, shape.d);
    let pool = pool(shape.threads);
    bencher
        .counter(ItemsCount::new(rows.rows()))
        .counter(BytesCount::new(rows.bytes()))
        .bench_local(|| {
            let mut sums = NormalSums::new(shape.d);
            sums.add_rows(pool.as_ref(), black_box(&rows.x), black_box(&rows.y));
            // Returned so that its drop falls outside the timed region.
            sums
        });
}

/// Rows through the shuffle buffer into mini-batches: fill, evict, then drain, in blocks of the
/// reader's size, as the shuffler thread does over an epoch.
#[divan::bench(args = [16, 64].map(Features))]
fn shuffle_buffer(bencher: Bencher, Features(d): Features) {
    let rows = Rows::new(SHUFFLE_ROWS, d);
    // A drained buffer is empty again, so one buffer serves every iteration, as one serves a
    // whole epoch; allocating it per iteration would time the allocator instead.
    let mut buffer = ShuffleBuffer::new(d, SHUFFLE_CAPACITY, SEED, 0);
    bencher
        .counter(ItemsCount::new(rows.rows()))
        .counter(BytesCount::new(rows.bytes()))
        .bench_local(|| {
            // A full batch goes straight back to the writer, as `BatchRecycler` returns it in a
            // steady state; only the first batch of a pass is allocated, as in the shuffler.
            let emit = |batch: Batch| Ok::<_, Infallible>(black_box(batch));
            let mut writer =
                BatchWriter::new(Batch::with_capacity(SHUFFLE_BATCH, d), SHUFFLE_BATCH, emit);
            let blocks =
                rows.x.chunks(DEFAULT_BLOCK_ROWS * d).zip(rows.y.chunks(DEFAULT_BLOCK_ROWS));
            for (x, y) in blocks {
                let Ok(()) = buffer.push_rows(black_box(x), black_box(y), &mut writer);
            }
            let Ok(()) = buffer.drain(&mut writer);
            let Ok(()) = writer.finish();
        });
}
