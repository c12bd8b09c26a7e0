//! `slope train`: flags and config files, start-up checks, signals, progress and metrics.
//!
//! Every training flag can also come from a TOML file (`--config job.toml`) whose keys are the
//! flag names without dashes in front (`batch-size = 512`). A flag given on the command line wins
//! over the file; boolean flags can only be switched on, by either. `--print-config` prints the
//! effective settings, defaults filled in, as a file that `--config` accepts.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{ArgAction, Args as ClapArgs, ValueEnum};
use serde::{Deserialize, Serialize};
use slope::checkpoint::{CheckpointPolicy, DEFAULT_KEEP};
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode};
use slope::decode::OnInvalid;
use slope::model::Model;
use slope::reduce::LocalReducer;
use slope::schedule::Schedule;
use slope::train::{
    self, Algorithm, EarlyStopping, EpochReport, Observer, RunOptions, Scaling, TrainConfig,
    TrainOutcome, WarmStart,
};

use super::{DecoderArg, InvalidArg, IoArg, check_output_folder, progress};

/// Flags of `slope train`; also the shape of a `--config` file.
#[derive(ClapArgs, Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TrainArgs {
    /// Parquet files, folders or glob patterns to train on.
    #[arg(value_name = "INPUT")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<String>,
    /// The column to predict.
    #[arg(long, value_name = "COL")]
    target: Option<String>,
    /// Feature columns, comma-separated [default: every numeric column but the target].
    #[arg(long, value_delimiter = ',', value_name = "COLS")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    features: Vec<String>,
    /// Columns to leave out of the default feature set, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "COLS")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exclude: Vec<String>,
    /// Optimisation algorithm [default: minibatch].
    #[arg(long, value_enum)]
    algo: Option<Algorithm>,
    /// Rows per update for minibatch [default: 256].
    #[arg(long, value_name = "ROWS")]
    batch_size: Option<usize>,
    /// Most passes over the data [default: 1000 for batch, 10 for sgd and minibatch].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Learning-rate schedule [default: constant 0.1 for batch; inverse-time 5/(t+50) for
    /// minibatch; inverse-time 1/(t+4(d+1)) for sgd]. Giving only --eta implies constant,
    /// only --t0/--t1 inverse-time, only --power-t invscaling.
    #[arg(long, value_enum, value_name = "NAME")]
    schedule: Option<ScheduleArg>,
    /// Step size for constant, or eta0 for invscaling [default: 0.1 constant, 0.01 invscaling].
    #[arg(long)]
    eta: Option<f64>,
    /// t0 of inverse-time, eta(t) = t0 / (t + t1), t the update count.
    #[arg(long)]
    t0: Option<f64>,
    /// t1 of inverse-time, eta(t) = t0 / (t + t1).
    #[arg(long)]
    t1: Option<f64>,
    /// Exponent of invscaling, eta(t) = eta0 / (t+1)^power_t [default: 0.25].
    #[arg(long)]
    power_t: Option<f64>,
    /// Stop tolerance: gradient norm for batch [default 1e-6]; relative change of the epoch's
    /// training loss for sgd and minibatch [default 1e-5]. 0 turns it off.
    #[arg(long)]
    tol: Option<f64>,
    /// Ridge penalty: minimise MSE + l2·‖w‖² (the bias is not penalised) [default: 0].
    #[arg(long)]
    l2: Option<f64>,
    /// Standardise features with a streaming pre-pass over every row; the model still applies
    /// to raw columns. Without it, features are scaled by statistics of the first 65,536 rows.
    #[arg(long, conflicts_with = "raw")]
    standardize: bool,
    /// Train on the features exactly as stored, unscaled (the textbook setting: the step size
    /// must then suit the largest column).
    #[arg(long)]
    raw: bool,
    /// Root seed for row-group order and shuffling [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Shuffle-buffer capacity in rows (memory: ROWS × (features + 1) × 4 bytes)
    /// [default: 131072]. Smaller is faster and mixes rows over a shorter span; 0 keeps only
    /// the shuffled row-group order.
    #[arg(long, value_name = "ROWS")]
    shuffle_buffer: Option<usize>,
    /// Keep file order: no row-group permutation and no shuffle buffer.
    #[arg(long)]
    no_shuffle: bool,
    /// Where to write the model [default: model.json].
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Threads to keep busy: decode workers and gradients; for minibatch and sgd one of them
    /// runs the shuffle [default: the number of cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Read shards through a memory map or with buffered reads [default: mmap].
    #[arg(long, value_enum)]
    io: Option<IoArg>,
    /// Rows holding a null, NaN or infinity in a chosen column: fail, or drop and count them
    /// [default: error].
    #[arg(long, value_enum, value_name = "ACTION")]
    on_invalid: Option<InvalidArg>,
    /// Which Parquet reader decodes row groups: `pages` (plain f32 columns straight from their
    /// pages, everything else by the parquet crate's reader) or `arrow` (the parquet crate's
    /// record-batch reader throughout). Both give the same values and the same model
    /// [default: pages].
    #[arg(long, value_enum, value_name = "READER")]
    decoder: Option<DecoderArg>,
    /// Write checkpoints to this folder: at each epoch end, and as --checkpoint-every and
    /// --checkpoint-interval say.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N updates (at the next batch boundary).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Also checkpoint when this many seconds have passed since the last one.
    #[arg(long, value_name = "SECONDS")]
    checkpoint_interval: Option<f64>,
    /// Checkpoints kept in the folder; older ones are deleted [default: 3].
    #[arg(long, value_name = "N")]
    keep_checkpoints: Option<usize>,
    /// Continue from the newest valid checkpoint in --checkpoint-dir (start afresh if there is
    /// none); the result is bit-for-bit that of an uninterrupted run.
    #[arg(long)]
    resume: bool,
    /// Start from the weights of an earlier model (same features), e.g. to retrain on new shards.
    #[arg(long, value_name = "MODEL")]
    warm_start: Option<PathBuf>,
    /// With --warm-start: measure the scaling statistics anew instead of reusing the model's.
    #[arg(long)]
    recompute_scaling: bool,
    /// Held-out shards for the validation loss (repeat for several paths).
    #[arg(long, value_name = "PATH", action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    validation: Vec<String>,
    /// Hold out this fraction of the training rows for validation, chosen by a hash of each
    /// row's position (the same rows in every epoch and resume).
    #[arg(long, value_name = "F")]
    validation_fraction: Option<f64>,
    /// Stop when the validation loss stops improving, and keep the best epoch's weights
    /// (validation defaults to --validation-fraction 0.1).
    #[arg(long)]
    early_stopping: bool,
    /// Epochs without improvement before early stopping [default: 5].
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// Smallest decrease of the validation loss that counts as improvement [default: 0].
    #[arg(long, value_name = "D")]
    min_delta: Option<f64>,
    /// Write one JSON line per epoch and a final summary line to this file.
    #[arg(long, value_name = "FILE")]
    metrics_out: Option<PathBuf>,
    /// Read settings from a TOML file; flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (a valid --config file) and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ScheduleArg {
    Constant,
    InverseTime,
    Invscaling,
}

impl TrainArgs {
    /// Fills what the command line left unset from `file`.
    fn merged_with(self, file: TrainArgs) -> TrainArgs {
        fn vec(a: Vec<String>, b: Vec<String>) -> Vec<String> {
            if a.is_empty() { b } else { a }
        }
        TrainArgs {
            inputs: vec(self.inputs, file.inputs),
            target: self.target.or(file.target),
            features: vec(self.features, file.features),
            exclude: vec(self.exclude, file.exclude),
            algo: self.algo.or(file.algo),
            batch_size: self.batch_size.or(file.batch_size),
            epochs: self.epochs.or(file.epochs),
            schedule: self.schedule.or(file.schedule),
            eta: self.eta.or(file.eta),
            t0: self.t0.or(file.t0),
            t1: self.t1.or(file.t1),
            power_t: self.power_t.or(file.power_t),
            tol: self.tol.or(file.tol),
            l2: self.l2.or(file.l2),
            standardize: self.standardize || file.standardize,
            raw: self.raw || file.raw,
            seed: self.seed.or(file.seed),
            shuffle_buffer: self.shuffle_buffer.or(file.shuffle_buffer),
            no_shuffle: self.no_shuffle || file.no_shuffle,
            model: self.model.or(file.model),
            threads: self.threads.or(file.threads),
            io: self.io.or(file.io),
            on_invalid: self.on_invalid.or(file.on_invalid),
            decoder: self.decoder.or(file.decoder),
            checkpoint_dir: self.checkpoint_dir.or(file.checkpoint_dir),
            checkpoint_every: self.checkpoint_every.or(file.checkpoint_every),
            checkpoint_interval: self.checkpoint_interval.or(file.checkpoint_interval),
            keep_checkpoints: self.keep_checkpoints.or(file.keep_checkpoints),
            resume: self.resume || file.resume,
            warm_start: self.warm_start.or(file.warm_start),
            recompute_scaling: self.recompute_scaling || file.recompute_scaling,
            validation: vec(self.validation, file.validation),
            validation_fraction: self.validation_fraction.or(file.validation_fraction),
            early_stopping: self.early_stopping || file.early_stopping,
            patience: self.patience.or(file.patience),
            min_delta: self.min_delta.or(file.min_delta),
            metrics_out: self.metrics_out.or(file.metrics_out),
            config: self.config,
            print_config: self.print_config,
        }
    }

    fn io_mode(&self) -> IoMode {
        match self.io {
            Some(IoArg::Read) => IoMode::Read,
            _ => IoMode::Mmap,
        }
    }

    fn schedule(&self, algo: Algorithm, d: usize) -> Schedule {
        let default = algo.default_schedule(d);
        let implied = if self.t0.is_some() || self.t1.is_some() {
            Some(ScheduleArg::InverseTime)
        } else if self.power_t.is_some() {
            Some(ScheduleArg::Invscaling)
        } else if self.eta.is_some() {
            Some(ScheduleArg::Constant)
        } else {
            None
        };
        match self.schedule.or(implied) {
            None => default,
            Some(ScheduleArg::Constant) => Schedule::Constant { eta: self.eta.unwrap_or(0.1) },
            Some(ScheduleArg::InverseTime) => {
                let (t0, t1) = match default {
                    Schedule::InverseTime { t0, t1 } => (t0, t1),
                    _ => (5.0, 50.0),
                };
                Schedule::InverseTime { t0: self.t0.unwrap_or(t0), t1: self.t1.unwrap_or(t1) }
            }
            Some(ScheduleArg::Invscaling) => Schedule::Invscaling {
                eta0: self.eta.unwrap_or(0.01),
                power_t: self.power_t.unwrap_or(0.25),
            },
        }
    }

    /// The checked training configuration for data with `d` features.
    fn config(&self, d: usize) -> Result<TrainConfig> {
        let algo = self.algo.unwrap_or(Algorithm::Minibatch);
        let mut c = TrainConfig::new(algo, d);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.schedule = self.schedule(algo, d);
        c.tol = self.tol.unwrap_or(c.tol);
        c.l2 = self.l2.unwrap_or(c.l2);
        c.scaling = match (self.standardize, self.raw) {
            (true, true) => {
                return Err(usage("--standardize", "one of --standardize and --raw", "both"));
            }
            (true, false) => Scaling::Full,
            (false, true) => Scaling::None,
            (false, false) => Scaling::Sample,
        };
        c.seed = self.seed.unwrap_or(c.seed);
        if let Some(threads) = self.threads {
            c.threads = threads;
        }
        c.shuffle = !self.no_shuffle;
        c.shuffle_buffer = self.shuffle_buffer.unwrap_or(c.shuffle_buffer);
        c.on_invalid = match self.on_invalid {
            Some(InvalidArg::Skip) => OnInvalid::Skip,
            _ => OnInvalid::Error,
        };
        c.decoder = self.decoder.unwrap_or(DecoderArg::Pages).decoding();
        c.validation_fraction = self.validation_fraction.unwrap_or(0.0);
        if self.early_stopping {
            if self.validation.is_empty() && self.validation_fraction.is_none() {
                tracing::info!("early stopping validates on 10% of the training rows");
                c.validation_fraction = 0.1;
            }
            c.early_stopping = Some(EarlyStopping {
                patience: self.patience.unwrap_or(5),
                min_delta: self.min_delta.unwrap_or(0.0),
            });
        }
        c.validate()?;
        Ok(c)
    }

    /// These settings with every default written out, for `--print-config`.
    fn effective(&self, c: &TrainConfig) -> TrainArgs {
        let (schedule, eta, t0, t1, power_t) = match c.schedule {
            Schedule::Constant { eta } => (ScheduleArg::Constant, Some(eta), None, None, None),
            Schedule::InverseTime { t0, t1 } => {
                (ScheduleArg::InverseTime, None, Some(t0), Some(t1), None)
            }
            Schedule::Invscaling { eta0, power_t } => {
                (ScheduleArg::Invscaling, Some(eta0), None, None, Some(power_t))
            }
        };
        TrainArgs {
            algo: Some(c.algorithm),
            batch_size: Some(c.batch_size),
            epochs: Some(c.epochs),
            schedule: Some(schedule),
            eta,
            t0,
            t1,
            power_t,
            tol: Some(c.tol),
            l2: Some(c.l2),
            seed: Some(c.seed),
            shuffle_buffer: Some(c.shuffle_buffer),
            model: Some(self.model.clone().unwrap_or_else(|| "model.json".into())),
            threads: Some(c.threads),
            io: Some(self.io.unwrap_or(IoArg::Mmap)),
            on_invalid: Some(self.on_invalid.unwrap_or(InvalidArg::Error)),
            decoder: Some(self.decoder.unwrap_or(DecoderArg::Pages)),
            validation_fraction: (c.validation_fraction > 0.0).then_some(c.validation_fraction),
            patience: c.early_stopping.map(|e| e.patience),
            min_delta: c.early_stopping.map(|e| e.min_delta),
            ..self.clone()
        }
    }
}

fn usage(name: &'static str, expected: &str, found: &str) -> anyhow::Error {
    slope::Error::InvalidParameter { name, expected: expected.into(), found: found.into() }.into()
}

/// Reads a `--config` file; unknown keys and wrong types are errors naming the line.
fn read_config(path: &Path) -> Result<TrainArgs> {
    let bad = |reason: String| slope::Error::Config { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read ({e})")))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        match line {
            Some(line) => bad(format!("line {line}: {message}")).into(),
            None => bad(message).into(),
        }
    })
}

pub fn run(cli: TrainArgs) -> Result<()> {
    let args = match &cli.config {
        Some(path) => {
            let file = read_config(path)?;
            cli.merged_with(file)
        }
        None => cli,
    };
    if args.inputs.is_empty() {
        return Err(usage("INPUT", "at least one input path (or `inputs` in --config)", "none"));
    }
    let Some(target) = args.target.clone() else {
        return Err(usage("--target", "the column to predict (or `target` in --config)", "none"));
    };
    let model_path = args.model.clone().unwrap_or_else(|| PathBuf::from("model.json"));
    check_output_folder(&model_path)?;
    let io = args.io_mode();
    let dataset = Arc::new(Dataset::open(&args.inputs, io)?);
    let selection = ColumnSelection {
        target: Some(target.clone()),
        features: args.features.clone(),
        exclude: args.exclude.clone(),
        keep: Vec::new(),
    };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection)?);
    let config = args.config(plan.d)?;
    if args.print_config {
        let text = toml::to_string(&args.effective(&config))?;
        print!("{text}");
        return Ok(());
    }

    let (warm_start, parent) = match &args.warm_start {
        Some(path) => {
            let (warm, model) =
                warm_start(path, &plan.feature_names(), &target, args.recompute_scaling)?;
            (Some(warm), Some(model))
        }
        None => (None, None),
    };
    let validation = if args.validation.is_empty() {
        None
    } else {
        Some(Arc::new(Dataset::open(&args.validation, io)?))
    };
    let checkpoints = args.checkpoint_dir.clone().map(|dir| CheckpointPolicy {
        dir,
        every_updates: args.checkpoint_every,
        interval: args.checkpoint_interval.map(Duration::from_secs_f64),
        keep: args.keep_checkpoints.unwrap_or(DEFAULT_KEEP),
    });
    if let Some(every) = args.checkpoint_every
        && every == 0
    {
        return Err(usage("--checkpoint-every", "at least 1", "0"));
    }
    if let Some(secs) = args.checkpoint_interval
        && !(secs.is_finite() && secs > 0.0)
    {
        return Err(usage(
            "--checkpoint-interval",
            "a positive number of seconds",
            &secs.to_string(),
        ));
    }
    let cancel = install_signal_handlers()?;

    let bound = config.memory_bound(&dataset, &plan);
    tracing::info!(
        "training {} on {} shard(s), {} rows, {} features, target '{target}'; threads {}, io {}",
        config.algorithm,
        dataset.shards.len(),
        dataset.rows(),
        plan.d,
        config.threads,
        dataset.io
    );
    tracing::info!(
        "memory bound: {} (shuffle buffer {}, batches {}, decoded blocks {}, row groups being \
         read {}, footers and process {})",
        mib(bound.total()),
        mib(bound.shuffle),
        mib(bound.batches),
        mib(bound.decode),
        mib(bound.io),
        mib(bound.base)
    );

    let started = Instant::now();
    let mut reporter = Reporter::new(config.epochs, args.metrics_out.clone(), started)?;
    let options = RunOptions {
        checkpoints,
        resume: args.resume,
        warm_start,
        validation,
        cancel: Some(cancel),
    };
    let result = train::train_with(
        Arc::clone(&dataset),
        Arc::clone(&plan),
        &config,
        options,
        &mut reporter,
        &mut LocalReducer,
    );
    progress().finish_and_clear();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            reporter.summary_failed(&e)?;
            return Err(e.into());
        }
    };
    if outcome.rows_skipped > 0 {
        tracing::warn!("skipped {} rows holding nulls, NaN or infinities", outcome.rows_skipped);
    }
    let summary = summary_record(&outcome, &model_path, started);
    let model = Model::from_training(
        outcome,
        &config,
        target,
        plan.features.clone(),
        &dataset,
        parent.as_ref(),
    );
    model.save(&model_path)?;
    reporter.write(&summary)?;
    tracing::info!(
        "stopped after {} epoch(s): {}; final training loss {:.6e}; wrote {} in {:.2}s",
        model.epochs_run,
        model.stop_reason,
        model.final_loss,
        model_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads a warm-start model and checks that it fits the data's features.
fn warm_start(
    path: &Path,
    features: &[String],
    target: &str,
    recompute_scaling: bool,
) -> Result<(WarmStart, Model)> {
    let model = Model::load(path)?;
    let bad = |reason: String| slope::Error::Model { path: path.to_path_buf(), reason };
    if model.features != features {
        return Err(bad(format!(
            "the warm-start model's features [{}] differ from the data's [{}]",
            model.features.join(", "),
            features.join(", ")
        ))
        .into());
    }
    if model.target != target {
        return Err(bad(format!(
            "the warm-start model predicts '{}', not '{target}'",
            model.target
        ))
        .into());
    }
    let warm = WarmStart {
        weights: model.weights.clone(),
        bias: model.bias,
        scaling: model.standardization.clone(),
        recompute_scaling,
        lineage: model.lineage_entry(path)?,
    };
    tracing::info!(
        "warm start from {} ({} epochs, {} rows)",
        path.display(),
        model.epochs_run,
        model.data.rows
    );
    Ok((warm, model))
}

/// Raises a flag on SIGINT and SIGTERM, so the trainer can finish its update and checkpoint. A
/// second SIGINT ends the process at once, for a user who does not want to wait.
fn install_signal_handlers() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&flag))?;
    signal_hook::flag::register(SIGINT, Arc::clone(&flag))?;
    signal_hook::flag::register(SIGTERM, Arc::clone(&flag))?;
    Ok(flag)
}

/// Shows training on the progress bar, logs a line per epoch, and writes `--metrics-out`.
struct Reporter {
    epochs: usize,
    metrics: Option<(PathBuf, File)>,
    started: Instant,
}

impl Reporter {
    fn new(epochs: usize, path: Option<PathBuf>, started: Instant) -> Result<Reporter> {
        let metrics = match path {
            Some(path) => {
                check_output_folder(&path)?;
                let file = File::create(&path).map_err(|e| slope::Error::Io {
                    path: path.clone(),
                    action: "create",
                    source: e,
                })?;
                Some((path, file))
            }
            None => None,
        };
        Ok(Reporter { epochs, metrics, started })
    }

    /// Appends one JSON line to the metrics file.
    fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        if let Some((path, file)) = &mut self.metrics {
            let mut line = record.to_string();
            line.push('\n');
            file.write_all(line.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|e| slope::Error::Io { path: path.clone(), action: "write", source: e })?;
        }
        Ok(())
    }

    fn summary_failed(&mut self, e: &slope::Error) -> Result<()> {
        let status = match e.class() {
            slope::ErrorClass::Diverged => "diverged",
            slope::ErrorClass::Interrupted => "interrupted",
            _ => "failed",
        };
        let record = serde_json::json!({
            "type": "summary", "status": status, "error": e.to_string(),
            "elapsed": self.started.elapsed().as_secs_f64(),
        });
        self.write(&record)
    }
}

fn epoch_record(r: &EpochReport, elapsed: f64) -> serde_json::Value {
    serde_json::json!({
        "type": "epoch", "epoch": r.epoch, "updates": r.updates, "rows": r.rows,
        "train_loss": r.loss, "validation_loss": r.validation_loss, "learning_rate": r.eta,
        "gradient_norm": r.gradient_norm, "rows_per_sec": r.rows_per_sec,
        "epoch_secs": r.elapsed_secs, "elapsed": elapsed,
    })
}

fn summary_record(o: &TrainOutcome, model: &Path, started: Instant) -> serde_json::Value {
    serde_json::json!({
        "type": "summary", "status": "ok", "model": model, "epochs_run": o.epochs_run,
        "updates": o.updates, "rows_seen": o.rows_seen, "rows_skipped": o.rows_skipped,
        "final_loss": o.final_loss,
        "validation_loss": o.history.last().and_then(|r| r.validation_loss),
        "best_epoch": o.best_epoch, "stop_reason": o.stop_reason.to_string(),
        "resumed_from": o.resumed_from, "elapsed": started.elapsed().as_secs_f64(),
    })
}

impl Observer for Reporter {
    fn pass_started(&mut self, what: &str, rows: u64) {
        let bar = progress();
        bar.reset();
        bar.set_length(rows);
        bar.set_message(what.to_string());
    }

    fn rows_done(&mut self, rows: u64) {
        progress().inc(rows);
    }

    fn epoch_finished(&mut self, r: &EpochReport) {
        let grad = r.gradient_norm.map(|g| format!(" grad_norm={g:.3e}")).unwrap_or_default();
        let val = r.validation_loss.map(|v| format!(" val_loss={v:.6e}")).unwrap_or_default();
        tracing::info!(
            "epoch {}/{}: loss={:.6e}{val}{grad} eta={:.3e} rows={} rows/s={:.0} elapsed={:.2}s",
            r.epoch,
            self.epochs,
            r.loss,
            r.eta,
            r.rows,
            r.rows_per_sec,
            r.elapsed_secs
        );
        let record = epoch_record(r, self.started.elapsed().as_secs_f64());
        if let Err(e) = self.write(&record) {
            tracing::warn!("{e:#}");
        }
    }

    fn resumed(&mut self, checkpoint: &Path, history: &[EpochReport]) {
        // The metrics file restarts from the checkpoint's history, so that it lists each epoch
        // once however many times the run was interrupted.
        for r in history {
            let record = epoch_record(r, r.elapsed_secs);
            if let Err(e) = self.write(&record) {
                tracing::warn!("{e:#}");
            }
        }
        tracing::debug!("metrics restored from {}", checkpoint.display());
    }

    fn checkpoint_written(&mut self, path: &Path) {
        tracing::debug!("checkpoint {}", path.display());
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
