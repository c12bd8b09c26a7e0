//! Benchmarks of the out-of-core path on a generated dataset: one full decode pass, and one
//! training epoch end to end.
//!
//! The dataset is written once per process, into a temporary folder, by the same generator as
//! `slope generate`, and removed when `main` returns. Its files are therefore in the page cache
//! when they are timed: the figures measure decoding and the pipeline, not the disk.
//!
//! Under `cargo test --benches` divan runs each benchmark once, unoptimised, as a smoke test;
//! the dataset is then cut to a few thousand rows so that the check stays quick.
//!
//! Run with `cargo bench --bench reader`; `benches/README.md` lists the cases and the figures
//! measured so far.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode};
use slope::generate::{GenerateConfig, generate};
use slope::reader::{BlockStream, Decoding, ReadOptions};
use slope::train::{self, Algorithm, Silent, TrainConfig};
use tempfile::TempDir;

/// The dataset's shape when measuring: 400,000 rows in four shards, each a 65,536-row group and
/// a 34,464-row remainder, so that two decode workers always have units to share. Noise and
/// scales are `slope generate`'s defaults.
const BENCH_ROWS: u64 = 400_000;
const SMOKE_ROWS: u64 = 4_096;
const FEATURES: usize = 32;
const SHARDS: usize = 4;
const ROW_GROUP_ROWS: usize = 65_536;
const SEED: u64 = 0x5107E;

/// Samples per case. One sample is a whole pass over the dataset (tens of milliseconds), so
/// divan's default of a hundred would add little but time; twenty-five keep the median steady
/// on a shared machine and the file's run under half a minute on two cores.
const SAMPLES: u32 = 25;

/// Rows to generate, chosen by `main` from divan's mode.
static ROWS: OnceLock<u64> = OnceLock::new();

/// The generated dataset, made on first use. A static is never dropped, so `main` takes it out
/// and drops it to remove the files.
static DATASET: Mutex<Option<Generated>> = Mutex::new(None);

fn main() {
    // divan measures only when cargo passes `--bench` and not `--test`; otherwise it runs each
    // benchmark once as a test, where the full dataset would only cost time.
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let measuring = has("--bench") && !has("--test");
    ROWS.set(if measuring { BENCH_ROWS } else { SMOKE_ROWS }).expect("ROWS is set once");
    divan::main();
    drop(DATASET.lock().unwrap_or_else(PoisonError::into_inner).take());
}

/// A generated dataset: its folder (removed on drop), the training shards' folder and its size.
struct Generated {
    _dir: TempDir,
    train: String,
    rows: u64,
}

/// The training shards' folder and row count, generating them on the first call.
///
/// Generation happens inside the first benchmark function to need it, before its timed closure,
/// so listing or filtering benchmarks does not pay for it.
fn dataset() -> (String, u64) {
    let mut slot = DATASET.lock().expect("no benchmark panicked while generating");
    let generated = slot.get_or_insert_with(|| {
        let rows = *ROWS.get().expect("main sets ROWS");
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let config = GenerateConfig {
            rows,
            features: FEATURES,
            shards: SHARDS,
            holdout_rows: 1,
            row_group_rows: ROW_GROUP_ROWS,
            noise: 0.1,
            scale_max: 100.0,
            seed: SEED,
        };
        generate(&config, dir.path()).expect("generate the benchmark dataset");
        let train = dir.path().join("train").to_str().expect("a UTF-8 temporary path").to_owned();
        Generated { _dir: dir, train, rows }
    });
    (generated.train.clone(), generated.rows)
}

/// The columns every benchmark reads: every feature, and the generator's target.
fn plan(dataset: &Dataset) -> ColumnPlan {
    let selection = ColumnSelection { target: Some("y".into()), ..ColumnSelection::default() };
    ColumnPlan::resolve(dataset, &selection).expect("resolve the generated columns")
}

/// Bytes of decoded `f32` features and targets for `rows` rows, as `slope scan` reports them.
fn decoded_bytes(rows: u64) -> u64 {
    rows * (FEATURES as u64 + 1) * size_of::<f32>() as u64
}

/// One decode case: how many worker threads, how the shards' bytes are read, and which reader
/// turns row groups into record batches (slope's page path, or the parquet crate's reader).
#[derive(Clone, Copy, Debug)]
struct ReadCase {
    workers: usize,
    io: IoMode,
    decoder: Decoding,
}

impl fmt::Display for ReadCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decoder = match self.decoder {
            Decoding::Pages => "pages",
            Decoding::Arrow => "arrow",
        };
        write!(f, "workers={} io={} decoder={decoder}", self.workers, self.io)
    }
}

const READ_CASES: [ReadCase; 8] = {
    use Decoding::{Arrow, Pages};
    use IoMode::{Mmap, Read};
    [
        ReadCase { workers: 1, io: Mmap, decoder: Pages },
        ReadCase { workers: 1, io: Mmap, decoder: Arrow },
        ReadCase { workers: 1, io: Read, decoder: Pages },
        ReadCase { workers: 1, io: Read, decoder: Arrow },
        ReadCase { workers: 2, io: Mmap, decoder: Pages },
        ReadCase { workers: 2, io: Mmap, decoder: Arrow },
        ReadCase { workers: 2, io: Read, decoder: Pages },
        ReadCase { workers: 2, io: Read, decoder: Arrow },
    ]
};

/// Opens the dataset, resolves the plan and decodes every row group, as `slope scan` does.
/// Returns the rows decoded and the sum of the targets, which makes the pass reach every value.
fn scan(train: &str, io: IoMode, options: &ReadOptions) -> (u64, f64) {
    let dataset = Arc::new(Dataset::open(&[train], io).expect("open the benchmark dataset"));
    let plan = Arc::new(plan(&dataset));
    let units = dataset.units();
    let mut stream =
        BlockStream::start(Arc::clone(&dataset), plan, units, options).expect("start decoding");
    let recycle = stream.recycler();
    let (mut rows, mut checksum) = (0u64, 0.0f64);
    for block in &mut stream {
        let block = block.expect("decode a block");
        rows += block.rows as u64;
        checksum += f64::from(block.y.iter().sum::<f32>());
        recycle.give(block);
    }
    (rows, checksum)
}

/// A full decode pass, from the paths to the last block.
#[divan::bench(args = READ_CASES, sample_count = SAMPLES)]
fn decode_pass(bencher: Bencher, case: ReadCase) {
    let (train, rows) = dataset();
    let options =
        ReadOptions { workers: case.workers, decoder: case.decoder, ..ReadOptions::default() };
    bencher
        .counter(ItemsCount::new(rows))
        .counter(BytesCount::new(decoded_bytes(rows)))
        .bench_local(|| {
            let (decoded, checksum) = scan(&train, case.io, &options);
            // A pass that stopped early would look fast; this makes it fail instead.
            assert_eq!(decoded, rows, "the pass decodes every row");
            checksum
        });
}

/// One training case: the algorithm, and the threads for both decoding and the gradient.
#[derive(Clone, Copy, Debug)]
struct TrainCase {
    algorithm: Algorithm,
    threads: usize,
}

impl fmt::Display for TrainCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} threads={}", self.algorithm, self.threads)
    }
}

const TRAIN_CASES: [TrainCase; 4] = [
    TrainCase { algorithm: Algorithm::Minibatch, threads: 1 },
    TrainCase { algorithm: Algorithm::Minibatch, threads: 2 },
    TrainCase { algorithm: Algorithm::Normal, threads: 1 },
    TrainCase { algorithm: Algorithm::Normal, threads: 2 },
];

/// One epoch of `slope::train::train` with the defaults `slope train` would use, except one
/// epoch, batches of 1024 and the case's threads.
///
/// For `minibatch` this includes the default sampled standardisation pass, the shuffler thread
/// and the rayon gradient; for `normal`, the one pass of normal-equation sums and the solve.
/// The dataset is opened outside the timed closure: `decode_pass` already times opening.
#[divan::bench(args = TRAIN_CASES, sample_count = SAMPLES)]
fn train_epoch(bencher: Bencher, case: TrainCase) {
    let (train, rows) = dataset();
    let dataset = Arc::new(Dataset::open(&[train], IoMode::Mmap).expect("open the dataset"));
    let plan = Arc::new(plan(&dataset));
    let mut config = TrainConfig::new(case.algorithm, plan.d);
    config.epochs = 1;
    config.batch_size = 1024;
    config.threads = case.threads;
    bencher.counter(ItemsCount::new(rows)).bench_local(|| {
        let outcome = train::train(Arc::clone(&dataset), Arc::clone(&plan), &config, &mut Silent)
            .expect("train one epoch");
        assert_eq!(outcome.rows_seen, rows, "the epoch uses every row");
        outcome
    });
}
