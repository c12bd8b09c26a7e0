//! Training against oracles: the closed form against an independent brute-force solve, every
//! gradient algorithm against the closed form, and determinism across threads and I/O modes.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode};
use slope::generate::{GenerateConfig, Truth, generate};
use slope::train::{Algorithm, Scaling, Silent, TrainConfig, TrainOutcome, train};

/// Ten features: one run of eight transposed together, and two transposed one by one.
const D: usize = 10;

/// Generates a small dataset with several shards and row groups.
fn dataset(dir: &Path, rows: u64, seed: u64) -> Truth {
    let config = GenerateConfig {
        rows,
        features: D,
        shards: 3,
        holdout_rows: 0,
        row_group_rows: 1500,
        noise: 0.1,
        scale_max: 10.0,
        seed,
    };
    generate(&config, dir).unwrap()
}

fn fit(dir: &Path, io: IoMode, configure: impl FnOnce(&mut TrainConfig)) -> TrainOutcome {
    let dataset = Arc::new(Dataset::open(&[dir.join("train").to_str().unwrap()], io).unwrap());
    let selection = ColumnSelection { target: Some("y".into()), ..Default::default() };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection).unwrap());
    let mut config = TrainConfig::new(Algorithm::Normal, plan.d);
    configure(&mut config);
    train(dataset, plan, &config, &mut Silent).unwrap()
}

fn with_algorithm(config: &mut TrainConfig, algorithm: Algorithm) {
    let d = D;
    *config = TrainConfig { threads: config.threads, ..TrainConfig::new(algorithm, d) };
}

/// Reads every row with the parquet crate directly, not through slope's reader.
fn read_all(dir: &Path) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut rows = Vec::new();
    let mut ys = Vec::new();
    let mut paths: Vec<_> =
        std::fs::read_dir(dir.join("train")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let file = std::fs::File::open(path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let cols: Vec<_> = (0..D)
                .map(|j| {
                    batch
                        .column_by_name(&format!("f{j}"))
                        .unwrap()
                        .as_primitive::<Float32Type>()
                        .clone()
                })
                .collect();
            let y = batch.column_by_name("y").unwrap().as_primitive::<Float32Type>();
            for i in 0..batch.num_rows() {
                rows.push(cols.iter().map(|c| f64::from(c.value(i))).collect());
                ys.push(f64::from(y.value(i)));
            }
        }
    }
    (rows, ys)
}

/// Least squares by Gaussian elimination with partial pivoting on [X 1]ᵀ[X 1].
fn brute_force(rows: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let n = D + 1;
    let mut m = vec![vec![0.0; n + 1]; n];
    for (row, &t) in rows.iter().zip(y) {
        let xt: Vec<f64> = row.iter().copied().chain([1.0]).collect();
        for i in 0..n {
            for j in 0..n {
                m[i][j] += xt[i] * xt[j];
            }
            m[i][n] += xt[i] * t;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs())).unwrap();
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (a, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *a -= f * p;
                }
            }
        }
    }
    (0..n).map(|i| m[i][n] / m[i][i]).collect()
}

fn relative_error(got: &TrainOutcome, want: &[f64]) -> f64 {
    let theta: Vec<f64> = got.weights.iter().copied().chain([got.bias]).collect();
    let diff: f64 = theta.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    diff / want.iter().map(|b| b * b).sum::<f64>().sqrt()
}

fn closed_form(outcome: &TrainOutcome) -> Vec<f64> {
    outcome.weights.iter().copied().chain([outcome.bias]).collect()
}

#[test]
fn normal_matches_an_independent_brute_force_solve() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 9000, 1);
    let (rows, y) = read_all(dir.path());
    let want = brute_force(&rows, &y);
    for io in [IoMode::Mmap, IoMode::Read] {
        let got = fit(dir.path(), io, |_| {});
        assert!(relative_error(&got, &want) < 1e-9, "{io}: {:?} vs {want:?}", closed_form(&got));
        assert_eq!(got.rows_seen, 9000);
    }
}

#[test]
fn gradient_algorithms_reach_the_closed_form() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 20_000, 2);
    let reference = closed_form(&fit(dir.path(), IoMode::Mmap, |_| {}));
    let cases = [
        (Algorithm::Batch, Scaling::Full, 1e-3),
        (Algorithm::Batch, Scaling::Sample, 1e-3),
        (Algorithm::Minibatch, Scaling::Full, 1e-3),
        (Algorithm::Minibatch, Scaling::Sample, 1e-3),
        (Algorithm::Sgd, Scaling::Full, 1e-2),
    ];
    for (algorithm, scaling, limit) in cases {
        let got = fit(dir.path(), IoMode::Mmap, |c| {
            with_algorithm(c, algorithm);
            c.scaling = scaling;
            c.epochs = if algorithm == Algorithm::Batch { 1000 } else { 20 };
            c.tol = if algorithm == Algorithm::Batch { 1e-6 } else { 0.0 };
        });
        let err = relative_error(&got, &reference);
        assert!(err < limit, "{algorithm} with {scaling:?}: relative weight error {err}");
    }
}

#[test]
fn raw_batch_descent_with_a_large_step_diverges_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 3000, 3);
    let dataset = Arc::new(
        Dataset::open(&[dir.path().join("train").to_str().unwrap()], IoMode::Mmap).unwrap(),
    );
    let selection = ColumnSelection { target: Some("y".into()), ..Default::default() };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection).unwrap());
    let mut config = TrainConfig::new(Algorithm::Batch, plan.d);
    config.scaling = Scaling::None;
    config.schedule = slope::schedule::Schedule::Constant { eta: 1.0 };
    let err = train(dataset, plan, &config, &mut Silent).unwrap_err();
    assert_eq!(err.class(), slope::ErrorClass::Diverged);
    assert!(err.to_string().contains("lower --eta, or use --standardize"), "{err}");
}

/// Bits of the weights and bias, for exact comparison.
fn bits(o: &TrainOutcome) -> Vec<u64> {
    o.weights.iter().chain([&o.bias]).map(|w| w.to_bits()).collect()
}

#[test]
fn same_seed_gives_identical_bits_for_any_threads_and_io() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 12_000, 4);
    for algorithm in [Algorithm::Minibatch, Algorithm::Sgd, Algorithm::Batch, Algorithm::Normal] {
        let run = |threads: usize, io: IoMode| {
            fit(dir.path(), io, |c| {
                with_algorithm(c, algorithm);
                c.threads = threads;
                c.seed = 9;
                c.epochs = 3;
                // Batches of several chunks, so that the parallel reduction is exercised.
                c.batch_size = 2048;
                c.shuffle_buffer = 4000;
            })
        };
        let reference = bits(&run(1, IoMode::Mmap));
        for (threads, io) in [(2, IoMode::Read), (3, IoMode::Mmap), (4, IoMode::Read)] {
            assert_eq!(bits(&run(threads, io)), reference, "{algorithm}, {threads} threads, {io}");
        }
    }
}

#[test]
fn different_seeds_change_the_batch_order() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 6000, 5);
    let run = |seed: u64| {
        fit(dir.path(), IoMode::Mmap, |c| {
            with_algorithm(c, Algorithm::Minibatch);
            c.seed = seed;
            c.epochs = 1;
        })
    };
    assert_ne!(bits(&run(1)), bits(&run(2)));
    assert_eq!(bits(&run(3)), bits(&run(3)));
}

/// The default scaling's sample is the first whole blocks in file order that reach
/// `SAMPLE_ROWS` kept rows. It is read in streams that cover only the row groups still needed;
/// with half the rows split off, the first such stream falls short and a second continues it.
/// Either way the sample equals that of one stream over every row group.
#[test]
fn the_scaling_sample_is_the_first_rows_in_file_order_however_it_is_read() {
    use slope::decode::{Part, Split};
    use slope::reader::{BlockStream, ReadOptions};
    use slope::stats::{Moments, SAMPLE_ROWS, sample_standardization};

    let dir = tempfile::tempdir().unwrap();
    let config = GenerateConfig {
        rows: 3 * SAMPLE_ROWS,
        features: 3,
        shards: 2,
        holdout_rows: 0,
        row_group_rows: 7000,
        noise: 0.1,
        scale_max: 10.0,
        seed: 5,
    };
    generate(&config, dir.path()).unwrap();
    let dataset = Arc::new(
        Dataset::open(&[dir.path().join("train").to_str().unwrap()], IoMode::Mmap).unwrap(),
    );
    let selection = ColumnSelection { target: Some("y".into()), ..Default::default() };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection).unwrap());
    for split in [None, Some(Split { fraction: 0.5, part: Part::Train })] {
        let options = ReadOptions { workers: 2, split, ..ReadOptions::default() };
        let sample = sample_standardization(&dataset, &plan, &options).unwrap();

        let mut reference = Moments::new(plan.d);
        let stream =
            BlockStream::start(Arc::clone(&dataset), Arc::clone(&plan), dataset.units(), &options)
                .unwrap();
        for block in stream {
            reference.add(&block.unwrap().x);
            if reference.rows >= SAMPLE_ROWS {
                break;
            }
        }
        assert!(reference.rows >= SAMPLE_ROWS);
        assert_eq!((sample.rows, &sample.mean), (reference.rows, &reference.mean), "{split:?}");
    }
}
