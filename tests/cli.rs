//! End-to-end tests: the built `slope` binary, run on the files under `fixtures/` as a user would
//! run it, judged by its exit code, its output and the files it leaves behind.
//!
//! The fixtures and the generator that writes them are described in `fixtures/README.md`. Every
//! command runs from the repository root with fixture paths relative to it, so that error
//! messages name files the same way on every machine and can be compared exactly; the one part
//! of a message that does vary, a temporary folder, is replaced by `$TMP` before comparing.
//! Every command also runs under a timeout, so that a pipeline that deadlocks fails its test
//! instead of stalling the whole suite.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use assert_cmd::Command;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use tempfile::TempDir;

/// The longest any one command may run. The fixtures take milliseconds; a minute leaves room
/// for a loaded machine and a debug build while still failing a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

const TRAIN: &str = "fixtures/train";
const HOLDOUT: &str = "fixtures/holdout.parquet";
const HOLDOUT_ROWS: u64 = 200;
/// The holdout's first `id`, from the generator.
const HOLDOUT_FIRST_ID: i64 = 1_000_000;

/// The weights and bias the fixtures were generated with, by feature name.
const TRUE_WEIGHTS: [(&str, f64); 6] =
    [("a", 1.5), ("b", -2.0), ("c", 0.25), ("emb[0]", 1.0), ("emb[1]", -0.5), ("emb[2]", 0.75)];
const TRUE_BIAS: f64 = 0.5;

/// Exit codes, as `slope --help` documents them.
const EXIT_OTHER: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_DATA: i32 = 3;
const EXIT_DIVERGED: i32 = 4;

/// The binary, run from the repository root. `RUST_LOG` is removed because it overrides the
/// log level and could add lines to stderr that the tests do not expect.
fn slope() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slope"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("RUST_LOG").timeout(TIMEOUT);
    cmd
}

/// What one finished run printed and returned.
struct Outcome {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The one `slope: error:` line, with `tmp` written as `$TMP`. The binary prints the error
    /// last, after any log lines, so the line must also end stderr.
    fn error_line(&self, tmp: &Path) -> String {
        let errors: Vec<&str> =
            self.stderr.lines().filter(|l| l.starts_with("slope: error:")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{:?}: expected one error line in stderr:\n{}",
            self.args,
            self.stderr
        );
        assert_eq!(
            self.stderr.lines().last(),
            Some(errors[0]),
            "{:?}: the error is not last",
            self.args
        );
        errors[0].replace(&tmp.display().to_string(), "$TMP")
    }
}

/// Runs `slope` with `args`; fails the test if it panicked or was killed (by the timeout).
fn run(args: &[&str]) -> Outcome {
    let output = slope().args(args).output().expect("the slope binary starts");
    let outcome = Outcome {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    };
    assert!(
        output.status.code().is_some(),
        "{args:?} was killed by a signal, perhaps after the {TIMEOUT:?} timeout:\n{}",
        outcome.stderr
    );
    // The panic hook's report; a panic in the parquet crate that slope turned into an error
    // says "panicked:" in the error line, and only there.
    assert!(!outcome.stderr.contains("panicked at"), "{args:?} panicked:\n{}", outcome.stderr);
    outcome
}

/// Runs `slope` with `args`, fails the test unless it succeeds, and returns stdout.
fn run_ok(args: &[&str]) -> String {
    let outcome = run(args);
    assert_eq!(outcome.code, 0, "{args:?} failed:\n{}", outcome.stderr);
    outcome.stdout
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Trains on `inputs` with `flags` (after `--target y --exclude id`), writing `dir/file`, and
/// returns the model file's path and contents.
fn train(dir: &Path, file: &str, inputs: &str, flags: &[&str]) -> (PathBuf, Value) {
    let model = dir.join(file);
    let mut args = vec!["train", inputs, "--target", "y", "--exclude", "id"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--model", path_arg(&model)]);
    run_ok(&args);
    let json = std::fs::read_to_string(&model).expect("train wrote the model");
    (model, serde_json::from_str(&json).expect("the model is JSON"))
}

fn number(json: &Value, key: &str) -> f64 {
    json[key].as_f64().unwrap_or_else(|| panic!("'{key}' is not a number in {json}"))
}

/// The algorithms with the flags that make each converge on the fixtures. `--batch-size 32`
/// gives minibatch enough updates on 1,200 rows. Batch stops on `--tol 1e-4` because below
/// about that gradient norm its loss flickers in the last bits of `f32` precision, which the
/// trainer's "loss rose for 3 epochs" check mistakes for divergence.
const ALGORITHMS: [(&str, &[&str]); 4] = [
    ("normal", &["--algo", "normal"]),
    ("batch", &["--algo", "batch", "--standardize", "--tol", "1e-4"]),
    ("minibatch", &["--algo", "minibatch", "--standardize", "--batch-size", "32"]),
    ("sgd", &["--algo", "sgd", "--standardize"]),
];

#[test]
fn every_algorithm_fits_the_training_shards_as_well_as_the_closed_form() {
    let tmp = TempDir::new().unwrap();
    let mut mse = HashMap::new();
    for (algo, flags) in ALGORITHMS {
        let (model, json) = train(tmp.path(), &format!("{algo}.json"), TRAIN, flags);
        check_model_file(&json, algo);
        let metrics = run_ok(&["evaluate", path_arg(&model), HOLDOUT, "--json"]);
        let metrics: Value = serde_json::from_str(&metrics).expect("evaluate --json prints JSON");
        for key in ["rows", "mse", "rmse", "mae", "r2"] {
            assert!(metrics.get(key).is_some(), "{algo}: no '{key}' in {metrics}");
        }
        assert_eq!(metrics["rows"].as_u64(), Some(HOLDOUT_ROWS), "{algo}: {metrics}");
        let m = number(&metrics, "mse");
        assert!((number(&metrics, "rmse") - m.sqrt()).abs() < 1e-12, "{algo}: {metrics}");
        assert!(number(&metrics, "r2") > 0.999, "{algo}: {metrics}");
        mse.insert(algo, m);
    }
    // The noise has variance 1e-4, which bounds how well any model can do on the holdout.
    let best = mse["normal"];
    assert!((0.5e-4..2e-4).contains(&best), "normal's holdout MSE is {best}");
    for (algo, m) in &mse {
        assert!(
            (m - best).abs() <= 0.03 * best,
            "{algo}'s holdout MSE {m} is not within 3% of {best}"
        );
    }
}

/// Checks the keys, features and weights of a model trained with `algo` on the training shards.
fn check_model_file(json: &Value, algo: &str) {
    for key in
        ["features", "weights", "bias", "target", "format_version", "training", "stop_reason"]
    {
        assert!(json.get(key).is_some(), "{algo}: no '{key}' in the model file");
    }
    // `id` is excluded by flag and `name` by type; the embedding spreads over three features.
    let names: Vec<&str> = TRUE_WEIGHTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(json["features"], serde_json::json!(names), "{algo}");
    assert_eq!(json["target"], "y");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["training"]["algorithm"], algo);
    assert!(json["stop_reason"].as_str().is_some_and(|s| !s.is_empty()), "{algo}");
    let weights = json["weights"].as_array().expect("weights is an array");
    for ((name, truth), w) in TRUE_WEIGHTS.iter().zip(weights) {
        let w = w.as_f64().unwrap();
        assert!((w - truth).abs() < 0.01, "{algo}: weight of {name} is {w}, expected {truth}");
    }
    let bias = number(json, "bias");
    assert!((bias - TRUE_BIAS).abs() < 0.01, "{algo}: bias is {bias}, expected {TRUE_BIAS}");
}

#[test]
fn predict_writes_kept_columns_then_predictions_that_match_the_model_file() {
    let tmp = TempDir::new().unwrap();
    let (model, json) = train(tmp.path(), "model.json", TRAIN, &["--algo", "normal"]);
    let out = tmp.path().join("predictions.parquet");
    run_ok(&["predict", path_arg(&model), HOLDOUT, "--keep", "id", "--out", path_arg(&out)]);

    let batches = read_parquet(&out);
    let schema = batches[0].schema();
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(columns, ["id", "prediction"]);
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b["id"].as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let predictions: Vec<f64> = batches
        .iter()
        .flat_map(|b| b["prediction"].as_primitive::<Float64Type>().values().to_vec())
        .collect();
    assert_eq!(predictions.len() as u64, HOLDOUT_ROWS);
    let expected_ids: Vec<i64> = (HOLDOUT_FIRST_ID..).take(HOLDOUT_ROWS as usize).collect();
    assert_eq!(ids, expected_ids, "predictions come out in input order");

    let features = holdout_features();
    let bias = number(&json, "bias");
    for (row, &got) in predictions.iter().enumerate() {
        let mut want = bias;
        for (name, w) in
            json["features"].as_array().unwrap().iter().zip(json["weights"].as_array().unwrap())
        {
            want += w.as_f64().unwrap() * features[name.as_str().unwrap()][row];
        }
        assert!((got - want).abs() <= 1e-9 * (1.0 + want.abs()), "row {row}: {got} != {want}");
    }
}

#[test]
fn evaluate_matches_metrics_computed_row_by_row_whatever_the_threads_and_reader() {
    // Two shards of 2,500 rows: each block has several 512-row chunks, whose moments the decode
    // workers merge, and the blocks are merged after.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let generate = ["generate", "--rows", "5000", "--features", "4", "--shards", "2", "--out"];
    run_ok(&[&generate[..], &[path_arg(&data)]].concat());
    let train = data.join("train");
    let model = dir.path().join("model.json");
    // One epoch of sgd leaves errors far from zero, so that MAE and R² are not trivial.
    let fit = ["train", path_arg(&train), "--target", "y", "--algo", "sgd", "--epochs", "1"];
    run_ok(&[&fit[..], &["--model", path_arg(&model)]].concat());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let weights: Vec<f64> =
        json["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
    let bias = number(&json, "bias");

    let (mut errors, mut targets) = (Vec::new(), Vec::new());
    let mut shards: Vec<PathBuf> =
        std::fs::read_dir(&train).unwrap().map(|e| e.unwrap().path()).collect();
    shards.sort();
    for batch in shards.iter().flat_map(|shard| read_parquet(shard)) {
        let y = batch["y"].as_primitive::<Float32Type>();
        for r in 0..batch.num_rows() {
            let mut prediction = bias;
            for (j, w) in weights.iter().enumerate() {
                prediction += w * f64::from(
                    batch[format!("f{j}").as_str()].as_primitive::<Float32Type>().value(r),
                );
            }
            errors.push(prediction - f64::from(y.value(r)));
            targets.push(f64::from(y.value(r)));
        }
    }
    let n = errors.len() as f64;
    let mse = errors.iter().map(|e| e * e).sum::<f64>() / n;
    let mae = errors.iter().map(|e| e.abs()).sum::<f64>() / n;
    let mean = targets.iter().sum::<f64>() / n;
    let r2 = 1.0 - mse * n / targets.iter().map(|t| (t - mean).powi(2)).sum::<f64>();

    let evaluate = |extra: &[&str]| -> Value {
        let args =
            [&["evaluate", path_arg(&model), path_arg(&train), "--json"][..], extra].concat();
        serde_json::from_str(&run_ok(&args)).expect("evaluate --json prints JSON")
    };
    let metrics = evaluate(&["--threads", "1"]);
    assert_eq!(metrics["rows"].as_u64(), Some(5000));
    for (key, want) in [("mse", mse), ("mae", mae), ("r2", r2)] {
        let got = number(&metrics, key);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{key}: {got} against {want}");
    }
    assert!(mae > 1e-3 && r2 < 0.999_999, "the check needs errors of some size: {metrics}");
    for extra in [&["--threads", "2"][..], &["--decoder", "arrow"], &["--io", "read"]] {
        assert_eq!(evaluate(extra), metrics, "{extra:?}");
    }
}

/// Reads every record batch of a Parquet file.
fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    reader.collect::<Result<_, _>>().unwrap()
}

/// The holdout's feature values by feature name, each rounded to `f32` first as slope decodes
/// them, so that predictions can be recomputed from a model file's names and weights.
fn holdout_features() -> HashMap<String, Vec<f64>> {
    let mut features: HashMap<String, Vec<f64>> = HashMap::new();
    let mut push = |name: &str, value: f32| {
        features.entry(name.to_string()).or_default().push(f64::from(value))
    };
    for batch in read_parquet(&Path::new(env!("CARGO_MANIFEST_DIR")).join(HOLDOUT)) {
        let a = batch["a"].as_primitive::<Float32Type>();
        let b = batch["b"].as_primitive::<Float64Type>();
        let c = batch["c"].as_primitive::<Int32Type>();
        let emb = batch["emb"].as_fixed_size_list();
        for r in 0..batch.num_rows() {
            push("a", a.value(r));
            push("b", b.value(r) as f32);
            push("c", c.value(r) as f32);
            let values = emb.value(r);
            for (k, v) in values.as_primitive::<Float32Type>().values().iter().enumerate() {
                push(&format!("emb[{k}]"), *v);
            }
        }
    }
    features
}

#[test]
fn inspect_lists_each_shard_and_the_total() {
    let stdout = run_ok(&["inspect", TRAIN]);
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["rows", "row", "groups", "bytes", "path"], "{stdout}");
    for shard in ["fixtures/train/part-0.parquet", "fixtures/train/part-1.parquet"] {
        let row = lines
            .iter()
            .find(|l| l.last() == Some(&shard))
            .unwrap_or_else(|| panic!("{shard} not listed:\n{stdout}"));
        assert_eq!(row[..2], ["600", "2"], "{stdout}");
    }
    let total = lines.iter().find(|l| l.contains(&"total")).expect("a total line");
    assert_eq!(total[..2], ["1200", "4"], "{stdout}");
    assert!(
        stdout.contains("name                     Utf8  (not numeric: not a feature)"),
        "{stdout}"
    );

    let json: Value = serde_json::from_str(&run_ok(&["inspect", "--json", TRAIN]))
        .expect("inspect --json prints JSON");
    assert_eq!(json["rows"], 1200);
    assert_eq!(json["shards"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["shards"][0]["row_groups"], 2);
    let name = json["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "name")
        .expect("column name");
    assert_eq!(name["numeric"], false);
}

#[test]
fn scan_decodes_every_row_and_counts_skipped_ones() {
    let stdout = run_ok(&["scan", TRAIN, "--target", "y", "--exclude", "id"]);
    assert!(stdout.starts_with("scanned 1200 rows × 7 columns in "), "{stdout}");
    let json = run_ok(&["scan", "--json", TRAIN, "--target", "y", "--exclude", "id"]);
    let json: Value = serde_json::from_str(&json).expect("scan --json prints JSON");
    assert_eq!((json["rows"].as_u64(), json["features"].as_u64()), (Some(1200), Some(6)));

    let nulls = "fixtures/broken/nulls.parquet";
    let json = run_ok(&["scan", "--json", nulls, "--target", "y", "--on-invalid", "skip"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!((json["rows"].as_u64(), json["skipped"].as_u64()), (Some(79), Some(1)));
}

#[test]
fn scan_says_which_reader_decoded_the_rows() {
    // The fixtures mix integers, doubles and lists: the parquet crate's reader reads them.
    let stdout = run_ok(&["scan", TRAIN, "--target", "y", "--exclude", "id"]);
    assert!(stdout.trim_end().ends_with("all by the parquet crate's reader)"), "{stdout}");
    // Generated shards hold plain floats, read from their pages unless told otherwise.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let generate = ["generate", "--rows", "3000", "--features", "4", "--shards", "2", "--out"];
    run_ok(&[&generate[..], &[path_arg(&data)]].concat());
    let train = data.join("train");
    let scan = ["scan", path_arg(&train), "--target", "y"];
    let stdout = run_ok(&scan);
    assert!(stdout.trim_end().ends_with("all from plain pages)"), "{stdout}");
    let counts = |extra: &[&str]| {
        let json: Value = serde_json::from_str(&run_ok(&[&scan[..], &["--json"], extra].concat()))
            .expect("scan --json prints JSON");
        (json["rows_from_pages"].as_u64(), json["rows_from_parquet_reader"].as_u64())
    };
    assert_eq!(counts(&[]), (Some(3000), Some(0)));
    assert_eq!(counts(&["--decoder", "arrow"]), (Some(0), Some(3000)));
    // Training gives the same model through either reader.
    let model = |decoder: &str| {
        let path = dir.path().join(format!("{decoder}.json"));
        let flags = ["--target", "y", "--epochs", "2", "--decoder", decoder, "--model"];
        run_ok(&[&["train", path_arg(&train)][..], &flags, &[path_arg(&path)]].concat());
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        (json["weights"].clone(), json["bias"].clone())
    };
    let (pages, arrow) = (model("pages"), model("arrow"));
    assert!(pages.0.as_array().is_some_and(|w| w.len() == 4), "{pages:?}");
    assert_eq!(pages, arrow);
}

/// A run that must fail: the command, and the exact error line it must print.
struct Failure {
    input: &'static str,
    /// Flags after `--target y --exclude id`.
    flags: &'static [&'static str],
    code: i32,
    error: &'static str,
    /// Parts of the error a user needs to find the defect: file, row group, column. The exact
    /// line already contains them; listing them apart keeps a careless update of `error` from
    /// dropping them unnoticed.
    context: &'static [&'static str],
}

const FAILURES: &[Failure] = &[
    Failure {
        input: "fixtures/broken/truncated.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/truncated.parquet: not a readable Parquet file: \
                Parquet error: Invalid Parquet file. Corrupt footer",
        context: &["fixtures/broken/truncated.parquet"],
    },
    Failure {
        input: "fixtures/broken/not_parquet.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/not_parquet.parquet: not a readable Parquet file: \
                Parquet error: Invalid Parquet file. Corrupt footer",
        context: &["fixtures/broken/not_parquet.parquet"],
    },
    Failure {
        input: "fixtures/broken/empty.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/empty.parquet: not a readable Parquet file: EOF: \
                Parquet file too small. Size is 0 but need 8",
        context: &["fixtures/broken/empty.parquet"],
    },
    Failure {
        input: "fixtures/broken/zero_rows.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/zero_rows.parquet: no rows to train on",
        context: &["fixtures/broken/zero_rows.parquet"],
    },
    Failure {
        input: "fixtures/broken/missing_target.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/missing_target.parquet: no column named 'y' \
                (columns: id, a, b, c, emb, name)",
        context: &["fixtures/broken/missing_target.parquet", "'y'"],
    },
    Failure {
        input: "fixtures/broken/nulls.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/nulls.parquet: row group 1: column 'b' has a null \
                in row 17 of the row group (use --on-invalid skip to drop such rows)",
        context: &["fixtures/broken/nulls.parquet", "row group 1", "column 'b'", "row 17"],
    },
    Failure {
        input: "fixtures/broken/nan.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/nan.parquet: row group 0: column 'a' has a NaN in \
                row 5 of the row group (use --on-invalid skip to drop such rows)",
        context: &["fixtures/broken/nan.parquet", "row group 0", "column 'a'", "row 5"],
    },
    Failure {
        input: "fixtures/broken/infinite.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/infinite.parquet: row group 1: column 'y' has an \
                infinity in row 30 of the row group (use --on-invalid skip to drop such rows)",
        context: &["fixtures/broken/infinite.parquet", "row group 1", "column 'y'", "row 30"],
    },
    Failure {
        input: "fixtures/broken/mismatch",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/mismatch/part-1.parquet: column 'c' is Float64, but \
                it is Int32 in fixtures/broken/mismatch/part-0.parquet",
        context: &[
            "fixtures/broken/mismatch/part-0.parquet",
            "fixtures/broken/mismatch/part-1.parquet",
            "column 'c'",
        ],
    },
    Failure {
        input: "fixtures/broken/constant.parquet",
        flags: &["--standardize"],
        code: EXIT_DATA,
        error: "slope: error: feature 'a' is constant (every value is 2.5): drop it with --exclude",
        context: &["feature 'a'"],
    },
    Failure {
        input: "fixtures/broken/constant.parquet",
        flags: &["--algo", "normal"],
        code: EXIT_DATA,
        error: "slope: error: the normal equations are singular (pivot 7 of 7 vanished): add \
                --l2 regularisation, or drop constant or duplicated columns with --exclude",
        context: &[],
    },
    Failure {
        input: "fixtures/broken/corrupt_page.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/corrupt_page.parquet: row group 1: cannot decode \
                column 'b': Parquet argument error: Parquet error: Unexpected struct field type 15",
        context: &["fixtures/broken/corrupt_page.parquet", "row group 1", "column 'b'"],
    },
    Failure {
        input: "fixtures/broken/damaged_levels.parquet",
        flags: &[],
        code: EXIT_DATA,
        error: "slope: error: fixtures/broken/damaged_levels.parquet: row group 1: cannot decode \
                column 'b': Parquet argument error: the parquet crate's reader panicked: offset + \
                len out of bounds",
        context: &["fixtures/broken/damaged_levels.parquet", "row group 1", "column 'b'"],
    },
    Failure {
        input: TRAIN,
        flags: &["--raw", "--algo", "batch", "--eta", "1e3"],
        code: EXIT_DIVERGED,
        error: "slope: error: training diverged at epoch 2, update 2 (training loss 3.803e9): \
                lower --eta, or use --standardize",
        context: &[],
    },
];

/// The ways a dataset can be read. A defect must be reported the same way through each: with
/// one decode thread or several, from a memory map or from buffered reads.
const READ_PATHS: [[&str; 4]; 4] = [
    ["--io", "mmap", "--threads", "1"],
    ["--io", "mmap", "--threads", "3"],
    ["--io", "read", "--threads", "1"],
    ["--io", "read", "--threads", "3"],
];

#[test]
fn broken_inputs_fail_with_an_exact_message_and_write_no_model() {
    for case in FAILURES {
        for read in READ_PATHS {
            let tmp = TempDir::new().unwrap();
            let model = tmp.path().join("model.json");
            let mut args = vec!["train", case.input, "--target", "y", "--exclude", "id"];
            args.extend_from_slice(case.flags);
            args.extend_from_slice(&read);
            args.extend_from_slice(&["--model", path_arg(&model)]);
            let outcome = run(&args);
            assert_eq!(outcome.code, case.code, "{args:?}:\n{}", outcome.stderr);
            let line = outcome.error_line(tmp.path());
            assert_eq!(line, case.error, "{args:?}");
            for part in case.context {
                assert!(line.contains(part), "{args:?}: the error does not name {part}");
            }
            // Not even the temporary file that the model is written through may be left.
            let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
            assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
        }
    }
}

#[test]
fn predict_on_broken_input_fails_like_train_and_writes_nothing() {
    let tmp = TempDir::new().unwrap();
    let (model, _) = train(tmp.path(), "model.json", TRAIN, &["--algo", "normal"]);
    let out = tmp.path().join("predictions.parquet");
    // Predicting reads the features only, so the defects in other columns go unnoticed.
    for input in [
        "fixtures/broken/nulls.parquet",
        "fixtures/broken/nan.parquet",
        "fixtures/broken/corrupt_page.parquet",
        "fixtures/broken/damaged_levels.parquet",
        "fixtures/broken/mismatch",
    ] {
        let case = FAILURES.iter().find(|f| f.input == input).unwrap();
        let outcome = run(&["predict", path_arg(&model), input, "--out", path_arg(&out)]);
        assert_eq!(outcome.code, case.code, "{input}:\n{}", outcome.stderr);
        assert_eq!(outcome.error_line(tmp.path()), case.error);
        let left: Vec<_> =
            std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["model.json"], "{input}: predict left files behind");
    }
}

#[test]
fn skipping_invalid_rows_trains_and_counts_them() {
    let tmp = TempDir::new().unwrap();
    for input in ["fixtures/broken/nulls.parquet", "fixtures/broken/nan.parquet"] {
        let flags = ["--algo", "normal", "--on-invalid", "skip"];
        let (_, json) = train(tmp.path(), "normal.json", input, &flags);
        assert_eq!(json["rows_skipped"], 1, "{input}");
        assert_eq!(json["rows_seen"], 79, "{input}");
        // A gradient algorithm passes over the data once per epoch, and counts the skipped rows
        // on every pass, as it counts the rows it saw.
        let flags = ["--algo", "sgd", "--on-invalid", "skip", "--epochs", "3", "--tol", "0"];
        let (_, json) = train(tmp.path(), "sgd.json", input, &flags);
        assert_eq!(
            (json["epochs_run"].as_u64(), json["rows_skipped"].as_u64()),
            // Each epoch meets the same bad row; it is counted once.
            (Some(3), Some(1))
        );
    }
}

#[test]
fn usage_errors_exit_with_code_2_and_output_errors_with_code_1() {
    let tmp = TempDir::new().unwrap();
    let model = tmp.path().join("model.json");
    let outcome = run(&["train", TRAIN, "--model", path_arg(&model)]);
    assert_eq!(outcome.code, EXIT_USAGE, "{}", outcome.stderr);
    assert_eq!(
        outcome.error_line(tmp.path()),
        "slope: error: invalid --target: expected the column to predict (or `target` in \
         --config), found none"
    );

    let outcome =
        run(&["train", TRAIN, "--target", "y", "--threads", "0", "--model", path_arg(&model)]);
    assert_eq!(outcome.code, EXIT_USAGE, "{}", outcome.stderr);
    assert_eq!(
        outcome.error_line(tmp.path()),
        "slope: error: invalid --threads: expected 1 to 1024, found 0"
    );

    let nested = tmp.path().join("missing/model.json");
    let outcome = run(&["train", TRAIN, "--target", "y", "--model", path_arg(&nested)]);
    assert_eq!(outcome.code, EXIT_OTHER, "{}", outcome.stderr);
    assert_eq!(
        outcome.error_line(tmp.path()),
        "slope: error: $TMP/missing/model.json: the output folder $TMP/missing does not exist"
    );
    assert!(!model.exists());
}

#[test]
fn each_subcommand_help_lists_its_flags() {
    let flags: [(&str, &[&str]); 6] = [
        (
            "train",
            &[
                "--target",
                "--features",
                "--exclude",
                "--algo",
                "--batch-size",
                "--epochs",
                "--schedule",
                "--eta",
                "--tol",
                "--l2",
                "--standardize",
                "--raw",
                "--seed",
                "--model",
                "--threads",
                "--io",
                "--on-invalid",
                "--decoder",
            ],
        ),
        ("evaluate", &["--json", "--threads", "--io", "--on-invalid", "--decoder"]),
        ("predict", &["--out", "--keep", "--threads", "--io", "--on-invalid", "--decoder"]),
        ("inspect", &["--json"]),
        (
            "scan",
            &["--target", "--features", "--exclude", "--json", "--threads", "--io", "--decoder"],
        ),
        ("generate", &["--rows", "--features", "--shards", "--noise", "--seed", "--out"]),
    ];
    for (command, flags) in flags {
        let help = run_ok(&[command, "--help"]);
        for flag in flags {
            assert!(
                help.contains(flag),
                "`slope {command} --help` does not mention {flag}:\n{help}"
            );
        }
    }
    let help = run_ok(&["--help"]);
    assert!(help.contains("Exit codes: 0 success"), "{help}");
}

/// Every fixture must be named in this file, so that none is kept without a test that reads it.
#[test]
fn every_fixture_is_used() {
    let source = include_str!("cli.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut files = Vec::new();
    list_files(&root, &mut files);
    let unused: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"))
        .filter(|f| f != "README.md" && !source.contains(&format!("fixtures/{f}")))
        .collect();
    assert!(files.len() > 10, "found only {} fixtures under {}", files.len(), root.display());
    assert!(unused.is_empty(), "fixtures no test names: {unused:?}");
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            list_files(&path, out);
        } else {
            out.push(path);
        }
    }
}
