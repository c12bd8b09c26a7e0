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

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::dataset::{ColumnPlan, Dataset, Unit};
use crate::decode::OnInvalid;
use crate::error::{Error, Result};
use crate::reader::{BlockStream, DEFAULT_BLOCK_ROWS, ReadOptions};
use crate::reduce::{self, LocalReducer, NormalSums, Reducer, Scratch};
use crate::schedule::Schedule;
use crate::shuffle::BATCH_QUEUE;
use crate::shuffle::{Batch, BatchStream, ShuffleBuffer, epoch_order};
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
    pub block_rows: usize,
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
            block_rows: DEFAULT_BLOCK_ROWS,
        }
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
        Ok(())
    }

    fn read_options(&self, standardization: Option<&Standardization>) -> ReadOptions {
        ReadOptions {
            workers: self.threads,
            block_rows: self.block_rows,
            on_invalid: self.on_invalid,
            transform: standardization.map(|s| Arc::new(s.affine())),
        }
    }

    /// An upper bound on the memory the pipeline holds, in bytes, whatever the data size.
    pub fn memory_bound(&self, plan: &ColumnPlan) -> MemoryBound {
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
        let batches = ((BATCH_QUEUE + 3) * batch_rows * (d + 1) * 4) as u64;
        let decode = self.read_options(None).bytes_in_flight(plan);
        let normal = match self.algorithm {
            Algorithm::Normal => ((self.threads + 2) * (d + 1) * (d + 1) * 8) as u64,
            _ => 0,
        };
        MemoryBound { shuffle, batches, decode: decode + normal }
    }
}

/// The parts of the pipeline's memory bound.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBound {
    pub shuffle: u64,
    pub batches: u64,
    pub decode: u64,
}

impl MemoryBound {
    pub fn total(&self) -> u64 {
        self.shuffle + self.batches + self.decode
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
    /// Training MSE: for `batch` and `normal`, exact at the epoch's starting weights; for the
    /// stochastic algorithms, the mean of each row's loss just before the update that used it.
    pub loss: f64,
    /// Step size of the last update.
    pub eta: f64,
    /// Gradient norm, for `batch`.
    pub gradient_norm: Option<f64>,
    pub rows_per_sec: f64,
    pub elapsed_secs: f64,
}

/// Hooks through which a caller watches training; every method has a silent default.
pub trait Observer {
    /// A pass over `rows` rows begins (`what` is "epoch 3", "standardize", …).
    fn pass_started(&mut self, _what: &str, _rows: u64) {}
    /// Some rows of the current pass were processed.
    fn rows_done(&mut self, _rows: u64) {}
    /// An epoch ended.
    fn epoch_finished(&mut self, _report: &EpochReport) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

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
    /// Rows dropped under `--on-invalid skip`, all passes together.
    pub rows_skipped: u64,
    pub final_loss: f64,
    pub stop_reason: StopReason,
    pub history: Vec<EpochReport>,
}

/// Trains a linear model on `dataset` with the columns of `plan`, on this process alone.
pub fn train(
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    config: &TrainConfig,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    train_with_reducer(dataset, plan, config, observer, &mut LocalReducer)
}

/// Trains with `reducer` combining this process's sums with its peers'.
pub fn train_with_reducer(
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    config: &TrainConfig,
    observer: &mut dyn Observer,
    reducer: &mut dyn Reducer,
) -> Result<TrainOutcome> {
    config.validate()?;
    if plan.target.is_none() {
        return Err(Error::param("--target", "a target column", "none"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(|i| format!("slope-grad-{i}"))
        .build()
        .map_err(|e| {
            Error::io("thread pool", "create the gradient thread pool", std::io::Error::other(e))
        })?;

    let read = config.read_options(None);
    let standardization = match config.scaling {
        Scaling::Full => {
            observer.pass_started("standardize", dataset.rows());
            Some(stats::standardization(&dataset, &plan, &read)?)
        }
        // The closed form is exact in any units; a sample buys it nothing.
        Scaling::Sample if config.algorithm == Algorithm::Normal => None,
        Scaling::Sample => Some(stats::sample_standardization(&dataset, &plan, &read)?),
        Scaling::None => None,
    };
    if let Some(s) = &standardization {
        tracing::debug!("features scaled with statistics of {} rows ({:?})", s.rows, s.source);
    }
    let mut trainer = Trainer {
        units: dataset.units(),
        dataset,
        plan,
        config,
        read: config.read_options(standardization.as_ref()),
        pool,
        reducer,
        observer,
        state: State::new(),
    };
    let stop_reason = match config.algorithm {
        Algorithm::Normal => trainer.solve_closed_form()?,
        Algorithm::Batch => trainer.run_epochs(Trainer::batch_epoch)?,
        Algorithm::Minibatch | Algorithm::Sgd => trainer.run_epochs(Trainer::stochastic_epoch)?,
    };
    let state = trainer.state;
    let (weights, bias) = to_raw_units(&state.w, state.b, standardization.as_ref());
    Ok(TrainOutcome {
        weights,
        bias,
        standardization,
        epochs_run: state.history.len(),
        updates: state.updates,
        rows_seen: state.rows_seen,
        rows_skipped: state.rows_skipped,
        final_loss: state.history.last().map_or(f64::NAN, |r| r.loss),
        stop_reason,
        history: state.history,
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

/// The weights and counters that training advances.
struct State {
    w: Vec<f64>,
    b: f64,
    updates: u64,
    rows_seen: u64,
    rows_skipped: u64,
    history: Vec<EpochReport>,
}

impl State {
    fn new() -> State {
        State {
            w: Vec::new(),
            b: 0.0,
            updates: 0,
            rows_seen: 0,
            rows_skipped: 0,
            history: Vec::new(),
        }
    }

    /// Fails if the weights stopped being finite.
    fn check_finite(&self, epoch: usize) -> Result<()> {
        if self.b.is_finite() && self.w.iter().all(|w| w.is_finite()) {
            Ok(())
        } else {
            Err(Error::Diverged {
                epoch,
                update: self.updates,
                what: "the weights overflowed".into(),
            })
        }
    }
}

/// What an epoch function reports back to the epoch loop.
struct EpochSums {
    rows: u64,
    loss_sum: f64,
    eta: f64,
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
    state: State,
}

impl Trainer<'_> {
    /// Runs epochs until the cap, the tolerance, or divergence.
    fn run_epochs(
        &mut self,
        epoch_fn: fn(&mut Self, usize) -> Result<EpochSums>,
    ) -> Result<StopReason> {
        let config = self.config;
        self.state.w = vec![0.0; self.plan.d];
        let mut rising = 0;
        for epoch in 1..=config.epochs {
            // Start-up of the epoch: announce it, then stream it.
            let started = Instant::now();
            self.observer
                .pass_started(&format!("epoch {epoch}/{}", config.epochs), self.dataset.rows());
            let sums = epoch_fn(self, epoch)?;
            if sums.rows == 0 {
                return Err(Error::NoRows { purpose: "train on" });
            }

            // Epoch boundary: record what happened, then decide whether to go on.
            let loss = sums.loss_sum / sums.rows as f64;
            let elapsed = started.elapsed().as_secs_f64();
            let report = EpochReport {
                epoch,
                updates: self.state.updates,
                rows: sums.rows,
                loss,
                eta: sums.eta,
                gradient_norm: sums.gradient_norm,
                rows_per_sec: sums.rows as f64 / elapsed.max(1e-9),
                elapsed_secs: elapsed,
            };
            self.observer.epoch_finished(&report);
            let previous = self.state.history.last().map(|r| r.loss);
            let first = self.state.history.first().map_or(loss, |r| r.loss);
            self.state.history.push(report);

            if !loss.is_finite() || loss > 1e8 * first.max(f64::MIN_POSITIVE) {
                let what = format!("training loss {loss:.3e}");
                return Err(Error::Diverged { epoch, update: self.state.updates, what });
            }
            self.state.check_finite(epoch)?;
            if let Some(norm) = sums.gradient_norm {
                if norm <= config.tol {
                    return Ok(StopReason::GradientTolerance { norm, tol: config.tol });
                }
                // Gradient descent with a stable step never raises the loss of a convex
                // quadratic, so a loss that keeps rising is a step that is too large. Rises
                // below one part in 10⁴ are rounding noise near the optimum, not divergence.
                rising =
                    if previous.is_some_and(|p| loss > p * (1.0 + 1e-4)) { rising + 1 } else { 0 };
                if rising >= 3 {
                    let what = format!("training loss rose for 3 epochs in a row, to {loss:.3e}");
                    return Err(Error::Diverged { epoch, update: self.state.updates, what });
                }
            } else if let Some(prev) = previous {
                let change = (prev - loss).abs() / prev.abs().max(f64::MIN_POSITIVE);
                if change < config.tol {
                    return Ok(StopReason::LossTolerance { change, tol: config.tol });
                }
            }
        }
        Ok(StopReason::EpochLimit { epochs: config.epochs })
    }

    /// Full-batch gradient descent: the exact gradient over every row, then one step.
    fn batch_epoch(&mut self, _epoch: usize) -> Result<EpochSums> {
        let d = self.plan.d;
        let w32: Vec<f32> = self.state.w.iter().map(|&w| w as f32).collect();
        let b32 = self.state.b as f32;
        let mut total = vec![0.0f64; d + 3];
        let mut part = vec![0.0f64; d + 2];
        let mut scratch = Scratch::default();
        let mut stream = self.stream(self.units.clone())?;
        let recycle = stream.recycler();
        for block in &mut stream {
            let block = block?;
            reduce::gradient_sums(
                Some(&self.pool),
                &block.x,
                &block.y,
                &w32,
                b32,
                &mut scratch,
                &mut part,
            );
            for (t, p) in total.iter_mut().zip(&part) {
                *t += p;
            }
            total[d + 2] += block.rows as f64;
            self.state.rows_skipped += block.skipped as u64;
            self.observer.rows_done((block.rows + block.skipped) as u64);
            recycle.give(block);
        }
        drop(stream);
        self.reducer.all_reduce_sum(&mut total)?;

        let n = total[d + 2];
        let eta = self.config.schedule.eta(self.state.updates);
        let mut norm2 = 0.0;
        if n > 0.0 {
            let l2 = self.config.l2;
            for (j, w) in self.state.w.iter_mut().enumerate() {
                let g = 2.0 * total[j] / n + 2.0 * l2 * *w;
                norm2 += g * g;
                total[j] = g;
            }
            let gb = 2.0 * total[d] / n;
            norm2 += gb * gb;
            let norm = norm2.sqrt();
            // At the tolerance the current weights are the answer: no further step.
            if norm > self.config.tol {
                for (w, g) in self.state.w.iter_mut().zip(&total) {
                    *w -= eta * g;
                }
                self.state.b -= eta * gb;
                self.state.updates += 1;
            }
        }
        let penalty = self.penalty();
        self.state.rows_seen += n as u64;
        Ok(EpochSums {
            rows: n as u64,
            loss_sum: total[d + 1] + penalty * n,
            eta,
            gradient_norm: Some(norm2.sqrt()),
        })
    }

    /// One shuffled pass of mini-batch (or per-row) stochastic gradient descent.
    fn stochastic_epoch(&mut self, epoch: usize) -> Result<EpochSums> {
        let config = self.config;
        let order = epoch_order(&self.units, config.seed, epoch as u64, config.shuffle);
        let blocks = self.stream(order)?;
        let per_row = config.algorithm == Algorithm::Sgd;
        let batch_rows = if per_row { SGD_TRANSFER_ROWS } else { config.batch_size };
        let mut batches = BatchStream::start(
            blocks,
            self.plan.d,
            if config.shuffle { config.shuffle_buffer } else { 0 },
            batch_rows,
            config.seed,
            epoch as u64,
        )?;
        let recycle = batches.recycler();

        let mut sums = EpochSums { rows: 0, loss_sum: 0.0, eta: 0.0, gradient_norm: None };
        let mut step = StepScratch::new(self.plan.d);
        for batch in &mut batches {
            let batch = batch?;
            if per_row {
                self.sgd_rows(&batch, &mut sums);
            } else {
                self.minibatch_step(&batch, &mut step, &mut sums)?;
            }
            sums.rows += batch.rows as u64;
            self.observer.rows_done(batch.rows as u64);
            if !sums.loss_sum.is_finite() {
                self.state.check_finite(epoch)?;
                let what = "the training loss overflowed".to_string();
                return Err(Error::Diverged { epoch, update: self.state.updates, what });
            }
            recycle.give(batch);
        }
        self.state.rows_skipped += batches.skipped();
        self.observer.rows_done(batches.skipped());
        sums.loss_sum += self.penalty() * sums.rows as f64;
        self.state.rows_seen += sums.rows;
        Ok(sums)
    }

    /// One mini-batch update: `w ← w − eta·((2/n) Xᵀr + 2·l2·w)`, `b ← b − eta·(2/n) Σ r`.
    fn minibatch_step(
        &mut self,
        batch: &Batch,
        s: &mut StepScratch,
        sums: &mut EpochSums,
    ) -> Result<()> {
        let d = self.plan.d;
        for (w32, w) in s.w32.iter_mut().zip(&self.state.w) {
            *w32 = *w as f32;
        }
        let b32 = self.state.b as f32;
        let (grad, rows) = s.sums.split_at_mut(d + 2);
        reduce::gradient_sums(
            Some(&self.pool),
            &batch.x,
            &batch.y,
            &s.w32,
            b32,
            &mut s.scratch,
            grad,
        );
        rows[0] = batch.rows as f64;
        self.reducer.all_reduce_sum(&mut s.sums)?;

        let n = s.sums[d + 2];
        let eta = self.config.schedule.eta(self.state.updates);
        let l2 = self.config.l2;
        let scale = 2.0 / n;
        for (w, g) in self.state.w.iter_mut().zip(&s.sums[..d]) {
            *w -= eta * (scale * g + 2.0 * l2 * *w);
        }
        self.state.b -= eta * scale * s.sums[d];
        self.state.updates += 1;
        sums.loss_sum += s.sums[d + 1];
        sums.eta = eta;
        Ok(())
    }

    /// Per-row stochastic gradient descent over the rows of `batch`, in order.
    fn sgd_rows(&mut self, batch: &Batch, sums: &mut EpochSums) {
        let d = self.plan.d;
        let schedule = self.config.schedule;
        let l2 = self.config.l2;
        let state = &mut self.state;
        let mut loss = 0.0;
        let mut eta = 0.0;
        for (row, &y) in batch.x.chunks_exact(d).zip(&batch.y) {
            let pred: f64 =
                state.b + state.w.iter().zip(row).map(|(w, &x)| w * f64::from(x)).sum::<f64>();
            let r = pred - f64::from(y);
            eta = schedule.eta(state.updates);
            let step = 2.0 * eta * r;
            if l2 > 0.0 {
                let shrink = 1.0 - 2.0 * eta * l2;
                for (w, &x) in state.w.iter_mut().zip(row) {
                    *w = *w * shrink - step * f64::from(x);
                }
            } else {
                for (w, &x) in state.w.iter_mut().zip(row) {
                    *w -= step * f64::from(x);
                }
            }
            state.b -= step;
            state.updates += 1;
            loss += r * r;
        }
        sums.loss_sum += loss;
        sums.eta = eta;
    }

    /// The closed form: one pass of `XᵀX`, `Xᵀy`, then a Cholesky solve.
    fn solve_closed_form(&mut self) -> Result<StopReason> {
        let d = self.plan.d;
        let started = Instant::now();
        self.observer.pass_started("normal equations", self.dataset.rows());
        let mut sums = NormalSums::new(d);
        let mut stream = self.stream(self.units.clone())?;
        let recycle = stream.recycler();
        for block in &mut stream {
            let block = block?;
            sums.add_rows(Some(&self.pool), &block.x, &block.y);
            self.state.rows_skipped += block.skipped as u64;
            self.observer.rows_done((block.rows + block.skipped) as u64);
            recycle.give(block);
        }
        drop(stream);
        let mut buf = sums.to_buffer();
        self.reducer.all_reduce_sum(&mut buf)?;
        let sums = NormalSums::from_buffer(d, &buf);
        if sums.rows == 0 {
            return Err(Error::NoRows { purpose: "train on" });
        }
        let theta = solve_normal(&sums, self.config.l2)?;
        self.state.w = theta[..d].to_vec();
        self.state.b = theta[d];
        self.state.rows_seen = sums.rows;
        let loss = sums.mse(&theta) + self.penalty();
        let elapsed = started.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: 1,
            updates: 0,
            rows: sums.rows,
            loss,
            eta: 0.0,
            gradient_norm: None,
            rows_per_sec: sums.rows as f64 / elapsed.max(1e-9),
            elapsed_secs: elapsed,
        };
        self.observer.epoch_finished(&report);
        self.state.history.push(report);
        Ok(StopReason::Solved)
    }

    /// The ridge term `l2 · ‖w‖²` of the objective at the current weights.
    fn penalty(&self) -> f64 {
        self.config.l2 * self.state.w.iter().map(|w| w * w).sum::<f64>()
    }

    fn stream(&self, units: Vec<Unit>) -> Result<BlockStream> {
        BlockStream::start(Arc::clone(&self.dataset), Arc::clone(&self.plan), units, &self.read)
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
