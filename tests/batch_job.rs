//! Unattended runs: kill-and-resume bit for bit, signals, refusal to resume on changed data,
//! warm starts, early stopping, config files, and failing disks under the checkpoint folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const EXIT_OTHER: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_DATA: i32 = 3;
const EXIT_INTERRUPTED: i32 = 5;

fn slope() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slope"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// Runs slope to completion (at most two minutes) and returns the exit code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    run_watched(args, |_| {})
}

/// As [`run`], calling `watch` with the process id every few milliseconds while it runs.
fn run_watched(args: &[&str], mut watch: impl FnMut(u32)) -> (i32, String) {
    let mut child = slope()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the slope binary starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        watch(child.id());
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ok(args: &[&str]) {
    let (code, stderr) = run(args);
    assert_eq!(code, 0, "{args:?}:\n{stderr}");
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The weights and bias as JSON text: equal text means equal bits (shortest round-trip floats).
fn weights(model: &Path) -> String {
    let m = read_json(model);
    format!("{} {}", m["weights"], m["bias"])
}

fn generate(dir: &Path, rows: u64, features: usize, shards: usize, extra: &[&str]) {
    let rows = rows.to_string();
    let features = features.to_string();
    let shards = shards.to_string();
    let mut args = vec!["-q", "generate", "--rows", &rows, "--features", &features];
    args.extend(["--shards", &shards, "--row-group-rows", "5000", "--out", s(dir)]);
    args.extend(extra);
    ok(&args);
}

/// A small deterministic sequence of "random" delays.
fn delays(seed: u64, n: usize, max: Duration) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let frac = ((x >> 33) % 1000) as f64 / 1000.0;
            max.mul_f64(0.05 + 0.9 * frac)
        })
        .collect()
}

/// Trains with `args` uninterrupted, then again killed with SIGKILL at several moments and
/// resumed each time; the final weights must be the same bits.
fn kill_and_resume(algo_args: &[&str], seed: u64) {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    generate(&data, 120_000, 8, 4, &[]);
    let train = data.join("train");
    let reference = tmp.path().join("reference.json");
    let mut base = vec!["-q", "train", s(&train), "--target", "y", "--seed", "3"];
    base.extend(algo_args);

    let started = Instant::now();
    let mut args = base.clone();
    args.extend(["--model", s(&reference)]);
    ok(&args);
    let duration = started.elapsed();

    let model = tmp.path().join("resumed.json");
    let checkpoints = tmp.path().join("checkpoints");
    let mut args = base.clone();
    args.extend(["--model", s(&model), "--checkpoint-dir", s(&checkpoints), "--resume"]);
    let mut interrupted = 0;
    // Delays up to half the uninterrupted run: each resumed run has less left to do.
    for delay in delays(seed, 5, duration / 2) {
        let _ = std::fs::remove_file(&model);
        let mut child =
            slope().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            interrupted += 1;
            assert!(!model.exists(), "a killed run left a model behind");
        }
        child.wait().unwrap();
    }
    assert!(interrupted >= 2, "only {interrupted} kills landed mid-run; the run is too short");
    ok(&args);
    assert_eq!(weights(&model), weights(&reference), "{algo_args:?}");
    let m = read_json(&model);
    let r = read_json(&reference);
    assert_eq!(m["updates"], r["updates"]);
    assert_eq!(m["rows_seen"], r["rows_seen"]);
    assert_eq!(m["final_loss"], r["final_loss"]);
}

#[test]
fn minibatch_killed_and_resumed_matches_an_uninterrupted_run() {
    kill_and_resume(
        &["--algo", "minibatch", "--batch-size", "32", "--epochs", "3", "--checkpoint-every", "97"],
        1,
    );
}

#[test]
fn sgd_killed_and_resumed_matches_an_uninterrupted_run() {
    kill_and_resume(&["--algo", "sgd", "--epochs", "3", "--checkpoint-interval", "0.05"], 2);
}

#[test]
fn batch_killed_and_resumed_matches_an_uninterrupted_run() {
    kill_and_resume(&["--algo", "batch", "--epochs", "60", "--tol", "0", "--standardize"], 3);
}

#[test]
fn sigterm_checkpoints_exits_5_and_resumes_exactly() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    generate(&data, 120_000, 8, 4, &[]);
    let train = data.join("train");
    let reference = tmp.path().join("reference.json");
    let base = ["train", s(&train), "--target", "y", "--batch-size", "16", "--epochs", "3"];
    let mut args = base.to_vec();
    args.extend(["-q", "--model", s(&reference)]);
    ok(&args);

    let model = tmp.path().join("model.json");
    let checkpoints = tmp.path().join("ck");
    let mut args = base.to_vec();
    args.extend([
        "--model",
        s(&model),
        "--checkpoint-dir",
        s(&checkpoints),
        "--checkpoint-every",
        "500",
    ]);
    let child = slope().args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Signal once training is under way: the first checkpoint has appeared.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&checkpoints).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    let line = last_line(&stderr);
    assert!(line.starts_with("slope: error: interrupted: checkpoint written to "), "{line}");
    assert!(line.ends_with("(run again with --resume to continue)"), "{line}");
    assert!(!model.exists());

    args.push("--resume");
    args.push("-q");
    ok(&args);
    assert_eq!(weights(&model), weights(&reference));
}

#[test]
fn resume_refuses_changed_data_and_changed_settings() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    generate(&data, 20_000, 4, 2, &[]);
    let train = data.join("train");
    let model = tmp.path().join("model.json");
    let ck = tmp.path().join("ck");
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = ["-q", "train", s(&train), "--target", "y", "--epochs", "2"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(["--model", s(&model), "--checkpoint-dir", s(&ck)].map(String::from));
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let argv = args(&[]);
    ok(&argv.iter().map(String::as_str).collect::<Vec<_>>());

    let argv = args(&["--resume", "--batch-size", "64"]);
    let (code, stderr) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, EXIT_DATA, "{stderr}");
    let line = last_line(&stderr);
    assert!(line.contains("checkpoint-00000001.json: cannot resume: the settings batch-size changed since this checkpoint was written"), "{line}");

    // A new shard arrives.
    std::fs::copy(train.join("part-00000.parquet"), train.join("part-00002.parquet")).unwrap();
    let argv = args(&["--resume"]);
    let (code, stderr) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, EXIT_DATA, "{stderr}");
    let line = last_line(&stderr);
    let added = train.join("part-00002.parquet");
    let expected = format!(
        "cannot resume: shard {} was added to the input since this checkpoint was written",
        added.display()
    );
    assert!(line.ends_with(&expected), "{line}");

    // An existing shard is rewritten with other contents.
    std::fs::remove_file(&added).unwrap();
    std::fs::copy(data.join("holdout.parquet"), train.join("part-00001.parquet")).unwrap();
    let (code, stderr) = run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, EXIT_DATA, "{stderr}");
    let shard = train.join("part-00001.parquet");
    assert!(last_line(&stderr).contains(&format!("shard {} changed", shard.display())), "{stderr}");
}

#[test]
fn warm_start_continues_from_the_old_weights_and_records_lineage() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    generate(&data, 60_000, 6, 6, &[]);
    let train = data.join("train");
    let old = tmp.path().join("old.json");
    let first_batch = format!("{}/part-0000[0-2].parquet", train.display());
    let new_batch = format!("{}/part-0000[3-5].parquet", train.display());
    ok(&["-q", "train", &first_batch, "--target", "y", "--epochs", "3", "--model", s(&old)]);

    let warm = tmp.path().join("warm.json");
    let cold = tmp.path().join("cold.json");
    let warm_metrics = tmp.path().join("warm.jsonl");
    let cold_metrics = tmp.path().join("cold.jsonl");
    let common = ["-q", "train", &new_batch, "--target", "y", "--epochs", "1"];
    let mut args = common.to_vec();
    args.extend(["--model", s(&warm), "--warm-start", s(&old), "--metrics-out", s(&warm_metrics)]);
    ok(&args);
    let mut args = common.to_vec();
    args.extend(["--model", s(&cold), "--metrics-out", s(&cold_metrics)]);
    ok(&args);

    let first_loss = |p: &Path| -> f64 {
        let text = std::fs::read_to_string(p).unwrap();
        let record: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        record["train_loss"].as_f64().unwrap()
    };
    let (w, c) = (first_loss(&warm_metrics), first_loss(&cold_metrics));
    assert!(w < c / 10.0, "warm first-epoch loss {w} should be far below cold {c}");

    let model = read_json(&warm);
    assert_eq!(model["lineage"][0]["model"], s(&old));
    assert_eq!(model["lineage"][0]["data"]["shards"].as_array().unwrap().len(), 3);
    assert!(model["lineage"][0]["digest"].as_str().unwrap().len() == 16);

    // A model with other features does not fit.
    let mut args = common.to_vec();
    args.extend(["--model", s(&cold), "--warm-start", s(&old), "--exclude", "f0"]);
    let (code, stderr) = run(&args);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    let line = last_line(&stderr);
    assert!(line.contains("the warm-start model's features [f0, f1, f2, f3, f4, f5] differ from the data's [f1, f2, f3, f4, f5]"), "{line}");
}

#[test]
fn early_stopping_keeps_the_best_epoch_on_data_built_to_overfit() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    // Barely more rows than features and loud noise: the fit chases the noise.
    generate(&data, 150, 100, 1, &["--noise", "3", "--scale-max", "1"]);
    let train = data.join("train");
    let model = tmp.path().join("model.json");
    let metrics = tmp.path().join("m.jsonl");
    let base = [
        "-q",
        "train",
        s(&train),
        "--target",
        "y",
        "--batch-size",
        "8",
        "--eta",
        "0.01",
        "--epochs",
        "300",
        "--validation-fraction",
        "0.3",
        "--seed",
        "4",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--early-stopping",
        "--patience",
        "5",
        "--model",
        s(&model),
        "--metrics-out",
        s(&metrics),
    ]);
    ok(&args);
    let m = read_json(&model);
    assert_eq!(m["stop"]["reason"], "early-stopping", "{}", m["stop_reason"]);
    let best = m["best_epoch"].as_u64().unwrap();
    let run_epochs = m["epochs_run"].as_u64().unwrap();
    assert_eq!(run_epochs, best + 5);

    let records: Vec<Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["type"] == "epoch")
        .collect();
    let val = |r: &Value| r["validation_loss"].as_f64().unwrap();
    let min = records.iter().map(val).fold(f64::INFINITY, f64::min);
    assert_eq!(val(&records[best as usize - 1]), min);
    // It really overfits: training loss kept falling after the best epoch.
    let train_loss = |r: &Value| r["train_loss"].as_f64().unwrap();
    assert!(train_loss(records.last().unwrap()) < train_loss(&records[best as usize - 1]));

    // The written weights are the best epoch's: a run stopped there gives the same bits.
    let at_best = tmp.path().join("at_best.json");
    let best_text = best.to_string();
    let mut args = base.to_vec();
    args.extend(["--model", s(&at_best)]);
    let pos = args.iter().position(|a| *a == "300").unwrap();
    args[pos] = &best_text;
    ok(&args);
    assert_eq!(weights(&model), weights(&at_best));
}

#[test]
fn config_files_set_flags_and_reject_unknown_keys_and_wrong_types() {
    let tmp = TempDir::new().unwrap();
    let config = tmp.path().join("job.toml");
    let model = tmp.path().join("model.json");
    std::fs::write(
        &config,
        format!(
            "inputs = [\"fixtures/train\"]\ntarget = \"y\"\nexclude = [\"id\"]\nalgo = \"sgd\"\n\
             epochs = 4\nmodel = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let in_root = |args: &[&str]| {
        let out = slope().current_dir(root).args(args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, _, stderr) = in_root(&["-q", "train", "--config", s(&config), "--epochs", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let m = read_json(&model);
    assert_eq!(m["training"]["algorithm"], "sgd");
    assert_eq!(m["epochs_run"], 2, "the command line overrides the file");

    // --print-config writes a file that reproduces the run.
    let (code, printed, stderr) = in_root(&["train", "--config", s(&config), "--print-config"]);
    assert_eq!(code, 0, "{stderr}");
    let reprinted = tmp.path().join("effective.toml");
    std::fs::write(&reprinted, &printed).unwrap();
    assert!(printed.contains("schedule = \"inverse-time\""), "{printed}");
    let before = weights(&model);
    std::fs::remove_file(&model).unwrap();
    let (code, _, stderr) = in_root(&["-q", "train", "--config", s(&reprinted), "--epochs", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(weights(&model), before);

    std::fs::write(&config, "target = \"y\"\nepochz = 3\n").unwrap();
    let (code, _, stderr) = in_root(&["train", "fixtures/train", "--config", s(&config)]);
    assert_eq!(code, EXIT_USAGE, "{stderr}");
    let line = last_line(&stderr);
    assert!(
        line.starts_with(&format!(
            "slope: error: {}: line 2: unknown field `epochz`, expected one of",
            config.display()
        )),
        "{line}"
    );

    std::fs::write(&config, "target = \"y\"\nepochs = \"ten\"\n").unwrap();
    let (code, _, stderr) = in_root(&["train", "fixtures/train", "--config", s(&config)]);
    assert_eq!(code, EXIT_USAGE, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}: line 2: invalid type: string \"ten\", expected usize",
            config.display()
        )
    );
}

/// Runs slope with `dir` replaced by a tiny private tmpfs (a user and mount namespace, so no
/// privileges are needed), prepared by `setup` (shell), and returns its exit code and stderr.
fn with_tiny_disk(dir: &Path, mount_options: &str, setup: &str, slope_args: &str) -> (i32, String) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k none {d} && {setup} && mount -o remount,{mount_options} {d} && \
         exec {bin} {slope_args}",
        d = dir.display(),
        bin = env!("CARGO_BIN_EXE_slope"),
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("unshare (util-linux) runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_full_or_read_only_checkpoint_disk_fails_at_start_up_and_writes_nothing() {
    let tmp = TempDir::new().unwrap();
    let disk = tmp.path().join("disk");
    let model = tmp.path().join("model.json");
    let args = format!(
        "train fixtures/train --target y --exclude id --model {} --checkpoint-dir {}/ck",
        model.display(),
        disk.display()
    );

    let fill = format!(
        "mkdir {d}/ck && (dd if=/dev/zero of={d}/fill bs=1k count=100 2>/dev/null; true)",
        d = disk.display()
    );
    let (code, stderr) = with_tiny_disk(&disk, "rw", &fill, &args);
    assert_eq!(code, EXIT_OTHER, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}/ck: cannot write checkpoints to: No space left on device (os error 28)",
            disk.display()
        )
    );
    assert!(!model.exists());

    let (code, stderr) =
        with_tiny_disk(&disk, "ro", &format!("mkdir {}/ck", disk.display()), &args);
    assert_eq!(code, EXIT_OTHER, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}/ck: cannot write checkpoints to: Read-only file system (os error 30)",
            disk.display()
        )
    );
    assert!(!model.exists());
}

#[test]
fn a_model_of_another_format_version_or_other_features_is_refused() {
    let tmp = TempDir::new().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = tmp.path().join("model.json");
    let fixtures = root.join("fixtures/train");
    ok(&[
        "-q",
        "train",
        s(&fixtures),
        "--target",
        "y",
        "--exclude",
        "id",
        "--algo",
        "normal",
        "--model",
        s(&model),
    ]);
    let mut m = read_json(&model);
    m["format_version"] = Value::from(99);
    let future = tmp.path().join("future.json");
    std::fs::write(&future, m.to_string()).unwrap();
    let holdout = root.join("fixtures/holdout.parquet");
    let (code, stderr) = run(&["evaluate", s(&future), s(&holdout)]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}: model format version 99 is not supported (this slope reads version 1)",
            future.display()
        )
    );

    let data = tmp.path().join("data");
    generate(&data, 1000, 3, 1, &[]);
    let (code, stderr) = run(&["evaluate", s(&model), s(&data.join("holdout.parquet"))]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    let line = last_line(&stderr);
    assert!(
        line.contains("holdout.parquet: no column named 'a' (columns: id, f0, f1, f2, y)"),
        "{line}"
    );
}

#[test]
fn held_out_shards_give_a_validation_loss_each_epoch() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    generate(&data, 20_000, 4, 2, &[]);
    let model = tmp.path().join("model.json");
    let metrics = tmp.path().join("m.jsonl");
    let holdout = data.join("holdout.parquet");
    ok(&[
        "-q",
        "train",
        s(&data.join("train")),
        "--target",
        "y",
        "--epochs",
        "3",
        "--validation",
        s(&holdout),
        "--model",
        s(&model),
        "--metrics-out",
        s(&metrics),
    ]);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 4, "three epochs and a summary:\n{text}");
    for r in &records[..3] {
        let v = r["validation_loss"].as_f64().unwrap();
        // The generator's noise has variance 0.01: a fitted model's holdout MSE is near it.
        assert!(v > 0.005 && v < 0.05, "{r}");
    }
    assert_eq!(records[3]["type"], "summary");
    assert_eq!(records[3]["status"], "ok");

    // Validation on shards without the model's columns is refused up front.
    let (code, stderr) = run(&[
        "train",
        s(&data.join("train")),
        "--target",
        "y",
        "--validation",
        "fixtures/holdout.parquet",
        "--model",
        s(&model),
    ]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    assert!(
        last_line(&stderr).contains("fixtures/holdout.parquet: no column named 'f0'"),
        "{stderr}"
    );
}

#[test]
fn inputs_that_do_not_exist_are_named() {
    let tmp = TempDir::new().unwrap();
    let model = tmp.path().join("model.json");
    let missing = tmp.path().join("no-such-folder");
    let (code, stderr) = run(&["train", s(&missing), "--target", "y", "--model", s(&model)]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}: cannot open: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let pattern = format!("{}/*.parquet", tmp.path().display());
    let (code, stderr) = run(&["train", &pattern, "--target", "y", "--model", s(&model)]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    assert_eq!(last_line(&stderr), format!("slope: error: {pattern}: no Parquet files found"));
    // A folder given where a model file is expected.
    let (code, stderr) = run(&["evaluate", s(tmp.path()), "fixtures/holdout.parquet"]);
    assert_eq!(code, EXIT_DATA, "{stderr}");
    assert_eq!(
        last_line(&stderr),
        format!(
            "slope: error: {}: cannot read: Is a directory (os error 21)",
            tmp.path().display()
        )
    );
    assert!(!model.exists());
}

#[test]
fn json_logs_are_one_object_per_line_and_errors_stay_plain() {
    let tmp = TempDir::new().unwrap();
    let model = tmp.path().join("model.json");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let train = root.join("fixtures/train");
    let (code, stderr) = run(&[
        "train",
        s(&train),
        "--target",
        "y",
        "--exclude",
        "id",
        "--epochs",
        "2",
        "--log-format",
        "json",
        "--model",
        s(&model),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Value> = stderr.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let messages: Vec<&str> =
        lines.iter().map(|l| l["fields"]["message"].as_str().unwrap()).collect();
    assert!(messages.iter().any(|m| m.starts_with("epoch 2/2: loss=")), "{messages:?}");
    assert!(lines.iter().all(|l| l["level"] == "INFO"), "{stderr}");

    // RUST_LOG wins over --log-level: warnings only, so no epoch lines.
    let out = slope()
        .args(["train", s(&train), "--target", "y", "--exclude", "id", "--model", s(&model)])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// A file of one row group, 2²² rows × 8 features and a target, whose column chunks are each a
/// single 16 MiB page. The values repeat with short periods, so snappy shrinks the file to a few
/// MiB while a reader still holds every column's whole page at once.
fn write_one_page_per_chunk(path: &Path) {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    const ROWS: usize = 1 << 22;
    let names: Vec<String> = (0..8).map(|k| format!("f{k}")).chain(["y".to_string()]).collect();
    let fields: Vec<Field> =
        names.iter().map(|n| Field::new(n, DataType::Float32, false)).collect();
    let schema = Arc::new(Schema::new(fields));
    let feature = |k: usize, i: usize| ((i * (2 * k + 3)) % 29) as f32 / 29.0;
    let mut columns: Vec<ArrayRef> = (0..8)
        .map(|k| Arc::new(Float32Array::from_iter_values((0..ROWS).map(|i| feature(k, i)))) as _)
        .collect();
    let target =
        (0..ROWS).map(|i| 0.5 + (0..8).map(|k| 0.1 * (k + 1) as f32 * feature(k, i)).sum::<f32>());
    columns.push(Arc::new(Float32Array::from_iter_values(target)));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROWS))
        .set_data_page_size_limit(64 << 20)
        .set_data_page_row_count_limit(ROWS)
        .set_write_batch_size(ROWS)
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), Some(props))
            .unwrap();
    writer.write(&RecordBatch::try_new(schema, columns).unwrap()).unwrap();
    writer.close().unwrap();
}

/// `train` prints an upper bound on the memory it will hold. Where each column chunk is one
/// page, a decode worker holds the whole decompressed row group; a bound that counted only the
/// compressed bytes was 100 MiB short here. Peak RSS is sampled from `/proc` while the run goes,
/// so what the test sees is at most the true peak.
#[cfg(target_os = "linux")]
#[test]
fn peak_memory_stays_under_the_printed_bound_when_each_column_chunk_is_one_page() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("one-page-per-chunk.parquet");
    write_one_page_per_chunk(&file);
    let model = dir.path().join("model.json");
    let args = ["train", s(&file), "--target", "y", "--algo", "batch", "--epochs", "1"];
    let args = [&args[..], &["--threads", "1", "--model", s(&model)]].concat();
    let mut peak_kib = 0u64;
    let (code, stderr) = run_watched(&args, |pid| {
        // VmHWM is the high-water mark, so a sample taken late still counts an early peak.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let seen = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok());
        peak_kib = peak_kib.max(seen.unwrap_or(0));
    });
    assert_eq!(code, 0, "{stderr}");
    let bound_mib: f64 = stderr
        .split("memory bound: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no memory bound in:\n{stderr}"));
    let peak_mib = peak_kib as f64 / 1024.0;
    // The run must have been seen at its work: the pages alone are 144 MiB.
    assert!(peak_mib > 144.0, "sampled peak {peak_mib:.1} MiB");
    assert!(
        peak_mib <= bound_mib + 0.05,
        "peak {peak_mib:.1} MiB over the printed bound:\n{stderr}"
    );
}
