//! The trainer: gradient descent in its textbook forms, and the closed form as the reference.
//!
//! All four algorithms minimise the mean squared error `L(w, b) = (1/n) Σ (w·x_i + b − y_i)²`,
//! plus `l2 · ‖w‖²` when ridge regularisation is asked for (the bias is never penalised):
//!
//! - `batch`: one exact gradient per pass over the data, then one step;
//! - `minibatch`: a step per shuffled mini-batch of `batch_size` rows;
//! - `sgd`: a step per row, rows in shuffled order;
//! - `normal`: no steps at all: `XᵀX` and `Xᵀy` summed in one pass and solved by Cholesky.
//!
//! Under `--standardize` a pre-pass measures every feature's mean and spread, the decoders hand
//! the trainer standardised features, and the weights are mapped back to the units of the raw
//! columns at the end, so a model is always `bias + Σ weights[i]·x[i]` on raw data.
//!
//! Only the trainer (the calling thread) mutates the weights. It reads batches from the
//! shuffler's channel, computes the gradient on its own rayon pool, and passes the summed
//! gradient through a [`Reducer`] before stepping, which is where a multi-process run joins.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Best, Checkpoint, CheckpointPolicy, Fingerprint, Progress};
use crate::dataset::{ColumnPlan, Dataset, Unit};
use crate::decode::{OnInvalid, Part, Split};
use crate::error::{Error, Result};
use crate::kernel;
use crate::model::LineageEntry;
use crate::reader::{BlockStream, BlockSums, DEFAULT_BLOCK_ROWS, Decoding, ReadOptions};
use crate::reduce::{self, LocalReducer, NormalSums, Reducer, Scratch};
use crate::schedule::Schedule;
use crate::shuffle::BATCH_QUEUE;
use crate::shuffle::{Batch, BatchStream, ShuffleBuffer, ShuffleOn, epoch_order};
use crate::solve::solve_normal;
use crate::stats::{self, Standardization};

/// Rows per message from the shuffler to a per-row (`sgd`) trainer: the trainer still steps once
/// per row, but the channel is crossed once per thousand rows, not once per row.
const SGD_TRANSFER_ROWS: usize = 1024;

/// Default shuffle-buffer capacity in rows.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 131_072;

/// How the weights are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Full-batch gradient descent: one exact gradient per pass.
    Batch,
    /// Stochastic gradient descent: one row per update.
    Sgd,
    /// Mini-batch gradient descent: `--batch-size` rows per update.
    Minibatch,
    /// The closed form: normal equations solved by Cholesky, in one pass.
    Normal,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Batch => "batch",
            Algorithm::Sgd => "sgd",
            Algorithm::Minibatch => "minibatch",
            Algorithm::Normal => "normal",
        })
    }
}

impl Algorithm {
    /// The schedule used when the user names none: tuned for standardised features, where the
    /// loss's curvature is about 1 in every direction.
    ///
    /// - `batch`: a constant 0.1, well inside the stable range (below 1 for curvature 1).
    /// - `minibatch`: the textbook's `5 / (t + 50)`.
    /// - `sgd`: `1 / (t + 4(d + 1))`; a single row has squared norm about `d + 1` once
    ///   standardised, so the first steps move a quarter of the way to fitting one row, and
    ///   the `1/t` tail then averages the noise away.
    pub fn default_schedule(self, d: usize) -> Schedule {
        match self {
            Algorithm::Batch | Algorithm::Normal => Schedule::Constant { eta: 0.1 },
            Algorithm::Minibatch => Schedule::InverseTime { t0: 5.0, t1: 50.0 },
            Algorithm::Sgd => Schedule::InverseTime { t0: 1.0, t1: 4.0 * (d as f64 + 1.0) },
        }
    }

    /// The epoch cap used when the user names none.
    pub fn default_epochs(self) -> usize {
        match self {
            Algorithm::Batch => 1000,
            Algorithm::Normal => 1,
            Algorithm::Sgd | Algorithm::Minibatch => 10,
        }
    }

    /// The stopping tolerance used when the user names none: the gradient norm for `batch`, the
    /// relative epoch-to-epoch change of the training loss for the stochastic algorithms.
    pub fn default_tol(self) -> f64 {
        match self {
            Algorithm::Batch => 1e-6,
            _ => 1e-5,
        }
    }
}

/// How features are scaled before the gradient sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `--standardize`: exact means and deviations from a pre-pass over every row.
    Full,
    /// The default: means and deviations estimated from the first rows in file order.
    Sample,
    /// `--raw`: the features as stored, the textbook setting.
    None,
}

/// A checked training configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub algorithm: Algorithm,
    pub batch_size: usize,
    pub epochs: usize,
    pub schedule: Schedule,
    /// Stop tolerance; 0 disables it.
    pub tol: f64,
    /// Ridge penalty `l2 · ‖w‖²` (0 for plain least squares), on the weights of the features
    /// as the trainer sees them (standardised, unless `scaling` is `none`).
    pub l2: f64,
    pub scaling: Scaling,
    pub seed: u64,
    pub threads: usize,
    pub shuffle: bool,
    pub shuffle_buffer: usize,
    pub on_invalid: OnInvalid,
    /// Which reader decodes row groups. Both give the same values, so the result does not
    /// depend on it (like `threads`); kept for a resumed run all the same.
    #[serde(default)]
    pub decoder: Decoding,
    pub block_rows: usize,
    /// Hold out this fraction of the training rows for validation (0 for none), chosen by a
    /// hash of each row's position: the same rows in every epoch and after every resume.
    #[serde(default)]
    pub validation_fraction: f64,
    /// Stop when the validation loss stops improving, and keep the best epoch's weights.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
}

/// When early stopping gives up on an epoch that did not improve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without improvement tolerated before stopping.
    pub patience: usize,
    /// An improvement smaller than this does not count.
    pub min_delta: f64,
}

impl TrainConfig {
    /// The defaults for `algorithm` on data with `d` features.
    pub fn new(algorithm: Algorithm, d: usize) -> TrainConfig {
        TrainConfig {
            algorithm,
            batch_size: 256,
            epochs: algorithm.default_epochs(),
            schedule: algorithm.default_schedule(d),
            tol: algorithm.default_tol(),
            l2: 0.0,
            scaling: Scaling::Sample,
            seed: 0,
            threads: default_threads(),
            shuffle: true,
            shuffle_buffer: DEFAULT_SHUFFLE_BUFFER,
            on_invalid: OnInvalid::Error,
            decoder: Decoding::default(),
            block_rows: DEFAULT_BLOCK_ROWS,
            validation_fraction: 0.0,
            early_stopping: None,
        }
    }

    /// Names of the settings that differ from `other` and shape the result. `threads` (which
    /// never changes the bits) and `epochs` (which may be raised to train on) are left out.
    pub fn differences(&self, other: &TrainConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("algo", self.algorithm == other.algorithm);
        check("batch-size", self.batch_size == other.batch_size);
        check("schedule", self.schedule == other.schedule);
        check("tol", self.tol.to_bits() == other.tol.to_bits());
        check("l2", self.l2.to_bits() == other.l2.to_bits());
        check("scaling", self.scaling == other.scaling);
        check("seed", self.seed == other.seed);
        check("shuffle", self.shuffle == other.shuffle);
        check("shuffle-buffer", self.shuffle_buffer == other.shuffle_buffer);
        check("on-invalid", self.on_invalid == other.on_invalid);
        check(
            "validation-fraction",
            self.validation_fraction.to_bits() == other.validation_fraction.to_bits(),
        );
        check("early-stopping", self.early_stopping == other.early_stopping);
        out
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        if self.batch_size == 0 {
            return Err(Error::param("--batch-size", "at least 1", 0));
        }
        if self.epochs == 0 {
            return Err(Error::param("--epochs", "at least 1", 0));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::param("--tol", "a number >= 0", self.tol));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(Error::param("--l2", "a number >= 0", self.l2));
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err(Error::param("--threads", "1 to 1024", self.threads));
        }
        if self.block_rows == 0 {
            return Err(Error::param("block rows", "at least 1", 0));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Error::param(
                "--validation-fraction",
                "a number in [0, 1)",
                self.validation_fraction,
            ));
        }
        if let Some(es) = self.early_stopping {
            if es.patience == 0 {
                return Err(Error::param("--patience", "at least 1", 0));
            }
            if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
                return Err(Error::param("--min-delta", "a number >= 0", es.min_delta));
            }
        }
        Ok(())
    }

    fn read_options(&self, standardization: Option<&Standardization>, part: Part) -> ReadOptions {
        let split = (self.validation_fraction > 0.0)
            .then_some(Split { fraction: self.validation_fraction, part });
        ReadOptions {
            workers: self.threads,
            block_rows: self.block_rows,
            on_invalid: self.on_invalid,
            transform: standardization.map(|s| Arc::new(s.affine())),
            split,
            sums: None,
            decoder: self.decoder,
        }
    }

    /// An upper bound on the memory a training run holds, in bytes. It depends on the
    /// configuration, the feature count and the largest row group, never on the number of rows.
    pub fn memory_bound(&self, dataset: &Dataset, plan: &ColumnPlan) -> MemoryBound {
        let d = plan.d;
        let shuffle = match self.algorithm {
            Algorithm::Minibatch | Algorithm::Sgd if self.shuffle => {
                ShuffleBuffer::bytes(d, self.shuffle_buffer)
            }
            _ => 0,
        };
        let batch_rows = match self.algorithm {
            Algorithm::Minibatch => self.batch_size,
            Algorithm::Sgd => SGD_TRANSFER_ROWS,
            _ => 0,
        };
        // The shuffler's queue, the batches around it, and (when it runs on the trainer's
        // thread) the batches cut from one block at a time.
        let batch_count = BATCH_QUEUE + 3 + self.block_rows.div_ceil(batch_rows.max(1));
        let batches = (batch_count * batch_rows * (d + 1) * 4) as u64;
        let read = self.read_options(None, Part::Train);
        let blocks = read.bytes_in_flight(plan);
        // For the normal equations each worker keeps one (d+2)² partial per chunk of the block
        // it sums, and every block in flight carries its (d+2)² sums.
        let normal = match self.algorithm {
            Algorithm::Normal => {
                let per_worker =
                    self.block_rows.div_ceil(reduce::CHUNK_ROWS) + read.queue_blocks(plan) + 2;
                (self.threads * per_worker * (d + 2) * (d + 2) * 8) as u64
            }
            _ => 0,
        };
        // Each worker holds the row group it decodes (mapped or read), the current decompressed
        // page of each chosen column, and Arrow's arrays of one batch, at most 8 bytes a value.
        let workers = self.threads as u64;
        let pages = dataset.max_decoded_row_group_bytes(plan);
        let arrays = (self.block_rows * (d + 1) * 8) as u64;
        let io = workers * (dataset.max_row_group_bytes() + pages + arrays);
        let base = dataset.metadata_bytes() + PROCESS_BYTES;
        MemoryBound { shuffle, batches, decode: blocks + normal, io, base }
    }
}

/// Memory of the process itself, whatever it reads: code, allocator arenas, thread stacks.
const PROCESS_BYTES: u64 = 24 << 20;

/// The parts of the pipeline's memory bound.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBound {
    /// The shuffle buffer.
    pub shuffle: u64,
    /// Mini-batches in flight.
    pub batches: u64,
    /// Decoded blocks in flight (and the normal equations' partial sums).
    pub decode: u64,
    /// Row groups being decoded: file pages, decompressed pages and Arrow arrays.
    pub io: u64,
    /// Footers of every shard and the process itself.
    pub base: u64,
}

impl MemoryBound {
    pub fn total(&self) -> u64 {
        self.shuffle + self.batches + self.decode + self.io + self.base
    }
}

/// Adds `part` to `total`, element by element.
fn add_to(total: &mut [f64], part: &[f64]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

/// The number of cores, the default for `--threads`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why training stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum StopReason {
    /// The closed form needs exactly one pass.
    Solved,
    /// `--epochs` passes were run.
    EpochLimit { epochs: usize },
    /// The gradient norm fell below `--tol` (batch).
    GradientTolerance { norm: f64, tol: f64 },
    /// The training loss changed by less than `--tol`, relatively, between epochs.
    LossTolerance { change: f64, tol: f64 },
    /// The validation loss did not improve for `patience` epochs.
    EarlyStopping { best_epoch: usize, patience: usize },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Solved => write!(f, "solved in closed form"),
            StopReason::EpochLimit { epochs } => write!(f, "reached the limit of {epochs} epochs"),
            StopReason::GradientTolerance { norm, tol } => {
                write!(f, "gradient norm {norm:.3e} fell below --tol {tol:e}")
            }
            StopReason::LossTolerance { change, tol } => {
                write!(f, "training loss changed by {change:.3e} (relative), below --tol {tol:e}")
            }
            StopReason::EarlyStopping { best_epoch, patience } => write!(
                f,
                "validation loss did not improve for {patience} epochs; kept epoch {best_epoch}"
            ),
        }
    }
}

/// What one epoch did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Updates so far, all epochs together.
    pub updates: u64,
    /// Rows used in this epoch.
    pub rows: u64,
    /// Training MSE (plus the ridge term): for `batch` and `normal`, exact at the epoch's
    /// starting weights; for the stochastic algorithms, the mean of each row's loss just
    /// before the update that used it.
    pub loss: f64,
    /// MSE on the validation rows at the epoch's final weights.
    #[serde(default)]
    pub validation_loss: Option<f64>,
    /// Step size of the last update.
    pub eta: f64,
    /// Gradient norm, for `batch`.
    pub gradient_norm: Option<f64>,
    pub rows_per_sec: f64,
    pub elapsed_secs: f64,
}

/// Hooks through which a caller watches training; every method has a silent default.
pub trait Observer {
    /// A pass over `rows` rows begins (`what` is "epoch 3/10", "standardize", …).
    fn pass_started(&mut self, _what: &str, _rows: u64) {}
    /// Some rows of the current pass were processed.
    fn rows_done(&mut self, _rows: u64) {}
    /// An epoch ended.
    fn epoch_finished(&mut self, _report: &EpochReport) {}
    /// Training resumes from `checkpoint`, after the epochs of `history`.
    fn resumed(&mut self, _checkpoint: &Path, _history: &[EpochReport]) {}
    /// A checkpoint was written.
    fn checkpoint_written(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// A model to start from rather than zero weights.
#[derive(Clone, Debug)]
pub struct WarmStart {
    /// Weights and bias in the units of the raw columns, in the plan's feature order.
    pub weights: Vec<f64>,
    pub bias: f64,
    /// The earlier model's scaling statistics, reused unless `recompute_scaling` is set.
    pub scaling: Option<Standardization>,
    pub recompute_scaling: bool,
    /// Where it came from, for the new model's lineage.
    pub lineage: LineageEntry,
}

/// Inputs of a run that are not part of its reproducible configuration.
#[derive(Default)]
pub struct RunOptions {
    pub checkpoints: Option<CheckpointPolicy>,
    /// Continue from the newest valid checkpoint in the checkpoint folder, if there is one.
    pub resume: bool,
    pub warm_start: Option<WarmStart>,
    /// Held-out shards for the validation loss (`--validation`).
    pub validation: Option<Arc<Dataset>>,
    /// Raised by a signal handler: finish the current update, checkpoint, stop.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The result of training, with weights in the units of the raw columns.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub standardization: Option<Standardization>,
    pub epochs_run: usize,
    pub updates: u64,
    /// Rows used, all epochs together.
    pub rows_seen: u64,
    /// Rows dropped under `--on-invalid skip` (distinct rows: each epoch meets the same ones).
    pub rows_skipped: u64,
    pub final_loss: f64,
    pub stop_reason: StopReason,
    pub history: Vec<EpochReport>,
    /// The epoch whose weights these are, under early stopping.
    pub best_epoch: Option<usize>,
    /// The checkpoint the run resumed from.
    pub resumed_from: Option<PathBuf>,
    /// The model a warm start began from.
    pub warm_start: Option<LineageEntry>,
}

/// Trains a linear model on `dataset` with the columns of `plan`, on this process alone.
pub fn train(
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    config: &TrainConfig,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    train_with(dataset, plan, config, RunOptions::default(), observer, &mut LocalReducer)
}

/// Trains with checkpoints, resume, warm start, validation and cancellation as `options` say,
/// and with `reducer` combining this process's sums with its peers'.
pub fn train_with(
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    config: &TrainConfig,
    options: RunOptions,
    observer: &mut dyn Observer,
    reducer: &mut dyn Reducer,
) -> Result<TrainOutcome> {
    config.validate()?;
    let Some(target) = plan.target.clone() else {
        return Err(Error::param("--target", "a target column", "none"));
    };
    if options.validation.is_some() && config.validation_fraction > 0.0 {
        return Err(Error::param(
            "validation",
            "either --validation or --validation-fraction",
            "both",
        ));
    }
    if config.early_stopping.is_some()
        && options.validation.is_none()
        && config.validation_fraction == 0.0
    {
        return Err(Error::param(
            "--early-stopping",
            "validation rows (--validation or --validation-fraction)",
            "none",
        ));
    }
    if let Some(policy) = &options.checkpoints {
        policy.prepare()?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(|i| format!("slope-grad-{i}"))
        .build()
        .map_err(|e| Error::io("thread pool", "create", std::io::Error::other(e)))?;
    let fingerprint = Fingerprint::of(&dataset, &plan);

    // Start-up: resume from a checkpoint, or start fresh (optionally from an earlier model).
    let resumed = match (&options.checkpoints, options.resume) {
        (Some(policy), true) => Checkpoint::newest(&policy.dir)?,
        (None, true) => {
            return Err(Error::param("--resume", "a --checkpoint-dir to resume from", "none"));
        }
        _ => None,
    };
    let (scaling, progress, warm_lineage, resumed_from) = match resumed {
        Some((path, checkpoint)) => {
            checkpoint.check_compatible(&path, config, &fingerprint)?;
            if checkpoint.target != target || checkpoint.feature_columns != plan.features {
                return Err(Error::Model {
                    path,
                    reason: "cannot resume: the target or feature columns changed".into(),
                });
            }
            tracing::info!(
                "resuming from {} (epoch {}, {} updates)",
                path.display(),
                checkpoint.progress.epoch,
                checkpoint.progress.updates
            );
            observer.resumed(&path, &checkpoint.progress.history);
            (checkpoint.scaling, checkpoint.progress, checkpoint.warm_start, Some(path))
        }
        None => {
            if options.resume {
                tracing::info!("no checkpoint to resume from: starting from the beginning");
            }
            let scaling = initial_scaling(&dataset, &plan, config, &options, observer)?;
            let mut progress = Progress { epoch: 1, ..Progress::default() };
            match &options.warm_start {
                Some(warm) => {
                    let (w, b) = to_training_units(&warm.weights, warm.bias, scaling.as_ref());
                    progress.w = w;
                    progress.b = b;
                }
                None => progress.w = vec![0.0; plan.d],
            }
            let lineage = options.warm_start.as_ref().map(|w| w.lineage.clone());
            (scaling, progress, lineage, None)
        }
    };
    if let Some(s) = &scaling {
        tracing::debug!("features scaled with statistics of {} rows ({:?})", s.rows, s.source);
    }

    let validation = match &options.validation {
        Some(v) => {
            let vplan =
                ColumnPlan::for_model(v, plan.features.clone(), Some(target.clone()), Vec::new())?;
            let mut read = config.read_options(scaling.as_ref(), Part::Train);
            read.split = None;
            Some((Arc::clone(v), Arc::new(vplan), read))
        }
        None if config.validation_fraction > 0.0 => Some((
            Arc::clone(&dataset),
            Arc::clone(&plan),
            config.read_options(scaling.as_ref(), Part::Validation),
        )),
        None => None,
    };

    let mut trainer = Trainer {
        units: dataset.units(),
        read: config.read_options(scaling.as_ref(), Part::Train),
        dataset,
        plan,
        config,
        pool,
        reducer,
        observer,
        p: progress,
        validation,
        checkpoints: options.checkpoints,
        cancel: options.cancel,
        last_checkpoint: (0, Instant::now()),
        target,
        fingerprint,
        scaling: scaling.clone(),
        warm_lineage: warm_lineage.clone(),
    };
    trainer.last_checkpoint.0 = trainer.p.updates;
    let stop_reason = match config.algorithm {
        Algorithm::Normal => trainer.solve_closed_form()?,
        Algorithm::Batch => trainer.run_epochs(Trainer::batch_epoch)?,
        Algorithm::Minibatch | Algorithm::Sgd => trainer.run_epochs(Trainer::stochastic_epoch)?,
    };

    let p = trainer.p;
    let best_epoch = p.best.as_ref().map(|b| b.epoch);
    let (w, b) = match &p.best {
        Some(best) => (&best.w, best.b),
        None => (&p.w, p.b),
    };
    let (weights, bias) = to_raw_units(w, b, scaling.as_ref());
    Ok(TrainOutcome {
        weights,
        bias,
        standardization: scaling,
        epochs_run: p.history.len(),
        updates: p.updates,
        rows_seen: p.rows_seen,
        rows_skipped: p.rows_skipped,
        final_loss: p.history.last().map_or(f64::NAN, |r| r.loss),
        stop_reason,
        history: p.history,
        best_epoch,
        resumed_from,
        warm_start: warm_lineage,
    })
}

/// The scaling statistics a fresh run trains with.
fn initial_scaling(
    dataset: &Arc<Dataset>,
    plan: &Arc<ColumnPlan>,
    config: &TrainConfig,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Option<Standardization>> {
    if let Some(warm) = &options.warm_start
        && !warm.recompute_scaling
        && warm.scaling.is_some()
    {
        tracing::info!("reusing the warm-start model's scaling statistics");
        return Ok(warm.scaling.clone());
    }
    // Statistics describe every row, validation rows included, as in the model file.
    let read = config.read_options(None, Part::Train);
    let read = ReadOptions { split: None, ..read };
    Ok(match config.scaling {
        Scaling::Full => {
            observer.pass_started("standardize", dataset.rows());
            Some(stats::standardization(dataset, plan, &read)?)
        }
        // The closed form is exact in any units; a sample buys it nothing.
        Scaling::Sample if config.algorithm == Algorithm::Normal => None,
        Scaling::Sample => Some(stats::sample_standardization(dataset, plan, &read)?),
        Scaling::None => None,
    })
}

/// Maps weights learned on standardised features back to the raw columns:
/// `w·(x − m)/s + b = (w/s)·x + (b − Σ w·m/s)`.
fn to_raw_units(w: &[f64], b: f64, s: Option<&Standardization>) -> (Vec<f64>, f64) {
    match s {
        None => (w.to_vec(), b),
        Some(s) => {
            let raw: Vec<f64> = w.iter().zip(&s.std).map(|(w, s)| w / s).collect();
            let shift: f64 = raw.iter().zip(&s.mean).map(|(w, m)| w * m).sum();
            (raw, b - shift)
        }
    }
}

/// The inverse of [`to_raw_units`]: `w_s = w·s`, `b_s = b + Σ w·m`.
fn to_training_units(w: &[f64], b: f64, s: Option<&Standardization>) -> (Vec<f64>, f64) {
    match s {
        None => (w.to_vec(), b),
        Some(s) => {
            let shift: f64 = w.iter().zip(&s.mean).map(|(w, m)| w * m).sum();
            (w.iter().zip(&s.std).map(|(w, s)| w * s).collect(), b + shift)
        }
    }
}

/// What an epoch function adds up besides what it stores in the progress.
struct EpochSums {
    gradient_norm: Option<f64>,
}

struct Trainer<'a> {
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    units: Vec<Unit>,
    config: &'a TrainConfig,
    read: ReadOptions,
    pool: rayon::ThreadPool,
    reducer: &'a mut dyn Reducer,
    observer: &'a mut dyn Observer,
    /// Everything a checkpoint must restore.
    p: Progress,
    validation: Option<(Arc<Dataset>, Arc<ColumnPlan>, ReadOptions)>,
    checkpoints: Option<CheckpointPolicy>,
    cancel: Option<Arc<AtomicBool>>,
    /// Updates and time at the last checkpoint.
    last_checkpoint: (u64, Instant),
    target: String,
    fingerprint: Fingerprint,
    scaling: Option<Standardization>,
    warm_lineage: Option<LineageEntry>,
}

impl Trainer<'_> {
    /// Runs epochs until the cap, a stopping rule, divergence or cancellation.
    fn run_epochs(
        &mut self,
        epoch_fn: fn(&mut Self, usize) -> Result<EpochSums>,
    ) -> Result<StopReason> {
        let config = self.config;
        loop {
            let epoch = self.p.epoch;
            if epoch > config.epochs {
                return Ok(StopReason::EpochLimit { epochs: config.epochs });
            }
            // Start of the epoch: announce it, then stream it (resuming mid-way if the
            // progress says so).
            let started = Instant::now();
            let what = format!("epoch {epoch}/{}", config.epochs);
            self.observer.pass_started(&what, self.dataset.rows());
            let sums = epoch_fn(self, epoch)?;
            if self.p.epoch_rows == 0 {
                return Err(Error::NoRows { input: self.dataset.describe(), purpose: "train on" });
            }

            // Epoch boundary: record what happened, then decide whether to go on.
            let loss = self.p.epoch_loss_sum / self.p.epoch_rows as f64;
            let validation_loss = self.validation_loss()?;
            let elapsed = started.elapsed().as_secs_f64();
            let report = EpochReport {
                epoch,
                updates: self.p.updates,
                rows: self.p.epoch_rows,
                loss,
                validation_loss,
                eta: self.p.epoch_eta,
                gradient_norm: sums.gradient_norm,
                rows_per_sec: self.p.epoch_rows as f64 / elapsed.max(1e-9),
                elapsed_secs: elapsed,
            };
            self.observer.epoch_finished(&report);
            let previous = self.p.history.last().map(|r| r.loss);
            let first = self.p.history.first().map_or(loss, |r| r.loss);
            self.p.history.push(report);
            if let Some(stop) = self.decide(epoch, loss, previous, first, &sums, validation_loss)? {
                return Ok(stop);
            }

            // The next epoch starts from a clean slate; checkpoint that state.
            self.p.epoch += 1;
            self.p.batches_done = 0;
            self.p.epoch_rows = 0;
            self.p.epoch_loss_sum = 0.0;
            self.p.epoch_eta = 0.0;
            if self.p.epoch <= config.epochs {
                self.write_checkpoint()?;
            }
        }
    }

    /// The stopping and divergence rules, applied at the end of an epoch.
    fn decide(
        &mut self,
        epoch: usize,
        loss: f64,
        previous: Option<f64>,
        first: f64,
        sums: &EpochSums,
        validation_loss: Option<f64>,
    ) -> Result<Option<StopReason>> {
        let config = self.config;
        let updates = self.p.updates;
        if !loss.is_finite() || loss > 1e8 * first.max(f64::MIN_POSITIVE) {
            let what = format!("training loss {loss:.3e}");
            return Err(Error::Diverged { epoch, update: updates, what });
        }
        self.check_finite(epoch)?;
        if let (Some(es), Some(v)) = (config.early_stopping, validation_loss) {
            let improved =
                self.p.best.as_ref().is_none_or(|b| v < b.validation_loss - es.min_delta);
            if improved {
                let (w, b) = (self.p.w.clone(), self.p.b);
                self.p.best = Some(Best { epoch, validation_loss: v, w, b });
                self.p.since_best = 0;
            } else {
                self.p.since_best += 1;
                if self.p.since_best >= es.patience {
                    let best_epoch = self.p.best.as_ref().map_or(epoch, |b| b.epoch);
                    return Ok(Some(StopReason::EarlyStopping {
                        best_epoch,
                        patience: es.patience,
                    }));
                }
            }
        }
        if let Some(norm) = sums.gradient_norm {
            if norm <= config.tol {
                return Ok(Some(StopReason::GradientTolerance { norm, tol: config.tol }));
            }
            // Gradient descent with a stable step never raises the loss of a convex quadratic,
            // so a loss that keeps rising is a step that is too large. Rises below one part in
            // 10⁴ are rounding noise near the optimum, not divergence.
            let rose = previous.is_some_and(|p| loss > p * (1.0 + 1e-4));
            self.p.rising = if rose { self.p.rising + 1 } else { 0 };
            if self.p.rising >= 3 {
                let what = format!("training loss rose for 3 epochs in a row, to {loss:.3e}");
                return Err(Error::Diverged { epoch, update: updates, what });
            }
        } else if let Some(prev) = previous {
            let change = (prev - loss).abs() / prev.abs().max(f64::MIN_POSITIVE);
            if change < config.tol {
                return Ok(Some(StopReason::LossTolerance { change, tol: config.tol }));
            }
        }
        Ok(None)
    }

    /// Fails if the weights stopped being finite.
    fn check_finite(&self, epoch: usize) -> Result<()> {
        if self.p.b.is_finite() && self.p.w.iter().all(|w| w.is_finite()) {
            Ok(())
        } else {
            let what = "the weights overflowed".into();
            Err(Error::Diverged { epoch, update: self.p.updates, what })
        }
    }

    /// Full-batch gradient descent: the exact gradient over every row, then one step.
    ///
    /// The pass is not checkpointed mid-way (its only update comes at the end); a cancelled
    /// pass is abandoned and the checkpoint records the state at its start.
    fn batch_epoch(&mut self, _epoch: usize) -> Result<EpochSums> {
        let d = self.plan.d;
        let (dataset, plan, read) =
            (Arc::clone(&self.dataset), Arc::clone(&self.plan), self.read.clone());
        let (mut total, skipped) =
            self.pass_sums(&dataset, &plan, self.units.clone(), &read, true)?;
        self.reducer.all_reduce_sum(&mut total)?;

        let n = total[d + 2];
        let eta = self.config.schedule.eta(self.p.updates);
        let penalty = self.penalty();
        let mut norm2 = 0.0;
        if n > 0.0 {
            let l2 = self.config.l2;
            for (j, w) in self.p.w.iter().enumerate() {
                let g = 2.0 * total[j] / n + 2.0 * l2 * w;
                norm2 += g * g;
                total[j] = g;
            }
            let gb = 2.0 * total[d] / n;
            norm2 += gb * gb;
            // At the tolerance the current weights are the answer: no further step.
            if norm2.sqrt() > self.config.tol {
                for (w, g) in self.p.w.iter_mut().zip(&total) {
                    *w -= eta * g;
                }
                self.p.b -= eta * gb;
                self.p.updates += 1;
            }
        }
        self.p.rows_skipped = skipped;
        self.p.rows_seen += n as u64;
        self.p.epoch_rows = n as u64;
        self.p.epoch_loss_sum = total[d + 1] + penalty * n;
        self.p.epoch_eta = eta;
        Ok(EpochSums { gradient_norm: Some(norm2.sqrt()) })
    }

    /// One shuffled pass of mini-batch (or per-row) stochastic gradient descent.
    ///
    /// When resuming mid-epoch, the epoch's batches are regenerated from the seed and the first
    /// `batches_done` are discarded, so the rest are exactly those of the interrupted run.
    fn stochastic_epoch(&mut self, epoch: usize) -> Result<EpochSums> {
        let config = self.config;
        let order = epoch_order(&self.units, config.seed, epoch as u64, config.shuffle);
        let read =
            ReadOptions { workers: ShuffleOn::decode_workers(config.threads), ..self.read.clone() };
        let blocks = self.stream(order, &read)?;
        let per_row = config.algorithm == Algorithm::Sgd;
        let batch_rows = if per_row { SGD_TRANSFER_ROWS } else { config.batch_size };
        let capacity = if config.shuffle { config.shuffle_buffer } else { 0 };
        let mut batches = BatchStream::start(
            blocks,
            self.plan.d,
            capacity,
            batch_rows,
            config.seed,
            epoch as u64,
            ShuffleOn::for_threads(config.threads),
        )?;
        let recycle = batches.recycler();
        let replay = self.p.batches_done;
        let mut index = 0u64;
        let mut step = StepScratch::new(self.plan.d);
        for batch in &mut batches {
            let batch = batch?;
            index += 1;
            self.observer.rows_done(batch.rows as u64);
            if index <= replay {
                recycle.give(batch);
                continue;
            }
            if per_row {
                self.sgd_rows(&batch);
            } else {
                self.minibatch_step(&batch, &mut step)?;
            }
            self.p.epoch_rows += batch.rows as u64;
            self.p.rows_seen += batch.rows as u64;
            self.p.batches_done += 1;
            recycle.give(batch);
            if !self.p.epoch_loss_sum.is_finite() {
                self.check_finite(epoch)?;
                let what = "the training loss overflowed".to_string();
                return Err(Error::Diverged { epoch, update: self.p.updates, what });
            }
            self.between_batches()?;
        }
        // Every epoch meets the same invalid rows: count them once.
        self.p.rows_skipped = batches.skipped();
        self.observer.rows_done(batches.skipped());
        self.p.epoch_loss_sum += self.penalty() * self.p.epoch_rows as f64;
        Ok(EpochSums { gradient_norm: None })
    }

    /// One mini-batch update: `w ← w − eta·((2/n) Xᵀr + 2·l2·w)`, `b ← b − eta·(2/n) Σ r`.
    fn minibatch_step(&mut self, batch: &Batch, s: &mut StepScratch) -> Result<()> {
        let d = self.plan.d;
        for (w32, w) in s.w32.iter_mut().zip(&self.p.w) {
            *w32 = *w as f32;
        }
        let b32 = self.p.b as f32;
        let (grad, rows) = s.sums.split_at_mut(d + 2);
        reduce::gradient_sums(self.pool(), batch.x(), batch.y(), &s.w32, b32, &mut s.scratch, grad);
        rows[0] = batch.rows as f64;
        self.reducer.all_reduce_sum(&mut s.sums)?;

        let n = s.sums[d + 2];
        let eta = self.config.schedule.eta(self.p.updates);
        let l2 = self.config.l2;
        let scale = 2.0 / n;
        for (w, g) in self.p.w.iter_mut().zip(&s.sums[..d]) {
            *w -= eta * (scale * g + 2.0 * l2 * *w);
        }
        self.p.b -= eta * scale * s.sums[d];
        self.p.updates += 1;
        self.p.epoch_loss_sum += s.sums[d + 1];
        self.p.epoch_eta = eta;
        Ok(())
    }

    /// Per-row stochastic gradient descent over the rows of `batch`, in order.
    fn sgd_rows(&mut self, batch: &Batch) {
        let p = &mut self.p;
        let mut state = kernel::SgdState { w: &mut p.w, b: &mut p.b, updates: &mut p.updates };
        let (loss, eta) = kernel::sgd_rows(
            batch.x(),
            batch.y(),
            &mut state,
            &self.config.schedule,
            self.config.l2,
        );
        p.epoch_loss_sum += loss;
        p.epoch_eta = eta;
    }

    /// The closed form: one pass of `XᵀX`, `Xᵀy`, then a Cholesky solve. Not checkpointed: its
    /// one pass has no intermediate state worth keeping beside the data.
    fn solve_closed_form(&mut self) -> Result<StopReason> {
        let d = self.plan.d;
        let started = Instant::now();
        self.observer.pass_started("normal equations", self.dataset.rows());
        // Each decode worker sums the blocks it decodes; the blocks' sums are added in order.
        let block_sums = BlockSums::new(move |x, y, out| {
            if out.is_empty() {
                *out = NormalSums::new(d).to_buffer();
            }
            NormalSums::add_rows_to_buffer(d, x, y, out);
        });
        let read = ReadOptions { sums: Some(block_sums), ..self.read.clone() };
        let mut total = NormalSums::new(d).to_buffer();
        let mut stream = self.stream(self.units.clone(), &read)?;
        let recycle = stream.recycler();
        for block in &mut stream {
            let block = block?;
            add_to(&mut total, &block.sums);
            self.p.rows_skipped += block.skipped as u64;
            self.observer.rows_done((block.rows + block.skipped) as u64);
            recycle.give(block);
            if self.cancelled() {
                return Err(Error::Interrupted { checkpoint: None });
            }
        }
        drop(stream);
        self.reducer.all_reduce_sum(&mut total)?;
        let sums = NormalSums::from_buffer(d, &total);
        if sums.rows == 0 {
            return Err(Error::NoRows { input: self.dataset.describe(), purpose: "train on" });
        }
        let theta = solve_normal(&sums, self.config.l2)?;
        self.p.w = theta[..d].to_vec();
        self.p.b = theta[d];
        self.p.rows_seen = sums.rows;
        let loss = sums.mse(&theta) + self.penalty();
        let validation_loss = self.validation_loss()?;
        let elapsed = started.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: 1,
            updates: 0,
            rows: sums.rows,
            loss,
            validation_loss,
            eta: 0.0,
            gradient_norm: None,
            rows_per_sec: sums.rows as f64 / elapsed.max(1e-9),
            elapsed_secs: elapsed,
        };
        self.observer.epoch_finished(&report);
        self.p.history.push(report);
        Ok(StopReason::Solved)
    }

    /// MSE of the current weights on the validation rows, if there are any.
    fn validation_loss(&mut self) -> Result<Option<f64>> {
        let Some((dataset, plan, read)) = self.validation.clone() else { return Ok(None) };
        let (total, _) = self.pass_sums(&dataset, &plan, dataset.units(), &read, false)?;
        let d = self.plan.d;
        let mut sums = [total[d + 1], total[d + 2]];
        self.reducer.all_reduce_sum(&mut sums)?;
        if sums[1] == 0.0 {
            return Err(Error::NoRows { input: dataset.describe(), purpose: "validate on" });
        }
        Ok(Some(sums[0] / sums[1]))
    }

    /// Sums `[Σ r x (d values), Σ r, Σ r², rows]` over every block of `units` at the current
    /// weights, blocks in order, and counts the rows skipped as invalid. The decode workers
    /// compute each block's sums; a training pass (`training`) reports progress and honours
    /// cancellation between blocks.
    fn pass_sums(
        &mut self,
        dataset: &Arc<Dataset>,
        plan: &Arc<ColumnPlan>,
        units: Vec<Unit>,
        read: &ReadOptions,
        training: bool,
    ) -> Result<(Vec<f64>, u64)> {
        let d = self.plan.d;
        let w32: Arc<[f32]> = self.p.w.iter().map(|&w| w as f32).collect();
        let b32 = self.p.b as f32;
        let block_sums = BlockSums::new(move |x, y, out| {
            out.resize(d + 2, 0.0);
            reduce::add_gradient_sums(x, y, &w32, b32, out);
        });
        let read = ReadOptions { sums: Some(block_sums), ..read.clone() };
        let mut stream = BlockStream::start(Arc::clone(dataset), Arc::clone(plan), units, &read)?;
        let mut total = vec![0.0f64; d + 3];
        let mut skipped = 0u64;
        let recycle = stream.recycler();
        for block in &mut stream {
            let block = block?;
            add_to(&mut total[..d + 2], &block.sums);
            total[d + 2] += block.rows as f64;
            skipped += block.skipped as u64;
            let seen = (block.rows + block.skipped) as u64;
            recycle.give(block);
            if training {
                self.observer.rows_done(seen);
                if self.cancelled() {
                    drop(stream);
                    return Err(self.interrupt()?);
                }
            }
        }
        Ok((total, skipped))
    }

    /// The ridge term `l2 · ‖w‖²` of the objective at the current weights.
    fn penalty(&self) -> f64 {
        self.config.l2 * self.p.w.iter().map(|w| w * w).sum::<f64>()
    }

    fn stream(&self, units: Vec<Unit>, read: &ReadOptions) -> Result<BlockStream> {
        BlockStream::start(Arc::clone(&self.dataset), Arc::clone(&self.plan), units, read)
    }

    /// The gradient pool, when there is more than one thread to share the work: a one-thread
    /// pool only adds hand-offs. The sums are the same either way.
    fn pool(&self) -> Option<&rayon::ThreadPool> {
        (self.config.threads > 1).then_some(&self.pool)
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Between two batches: honour a cancellation, and write a checkpoint when one is due.
    fn between_batches(&mut self) -> Result<()> {
        if self.cancelled() {
            return Err(self.interrupt()?);
        }
        let Some(policy) = &self.checkpoints else { return Ok(()) };
        let by_count =
            policy.every_updates.is_some_and(|n| self.p.updates >= self.last_checkpoint.0 + n);
        let by_time = policy.interval.is_some_and(|t| self.last_checkpoint.1.elapsed() >= t);
        if by_count || by_time {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// Writes a checkpoint (if a folder was given) and returns the error that ends the run.
    fn interrupt(&mut self) -> Result<Error> {
        let checkpoint = self.write_checkpoint()?;
        Ok(Error::Interrupted { checkpoint })
    }

    /// Writes the current state as a checkpoint, if checkpoints are on.
    fn write_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(policy) = &self.checkpoints else { return Ok(None) };
        self.p.sequence += 1;
        let checkpoint = Checkpoint {
            format: checkpoint::FORMAT.to_string(),
            format_version: checkpoint::FORMAT_VERSION,
            created_by: format!("slope {}", env!("CARGO_PKG_VERSION")),
            config: self.config.clone(),
            target: self.target.clone(),
            feature_columns: self.plan.features.clone(),
            data: self.fingerprint.clone(),
            scaling: self.scaling.clone(),
            warm_start: self.warm_lineage.clone(),
            progress: self.p.clone(),
        };
        let path = checkpoint.save(policy)?;
        self.last_checkpoint = (self.p.updates, Instant::now());
        tracing::debug!("checkpoint written to {}", path.display());
        self.observer.checkpoint_written(&path);
        Ok(Some(path))
    }
}

/// Buffers a mini-batch step reuses.
struct StepScratch {
    w32: Vec<f32>,
    sums: Vec<f64>,
    scratch: Scratch,
}

impl StepScratch {
    fn new(d: usize) -> StepScratch {
        StepScratch { w32: vec![0.0; d], sums: vec![0.0; d + 3], scratch: Scratch::default() }
    }
}
