//! Checkpoints: the trainer's exact state at a batch boundary, so that a killed run can resume
//! and end with the same bits as an uninterrupted one.
//!
//! Why resuming is exact: everything after a batch boundary is a function of the state written
//! here and of the data. The shuffler's position is not stored; it is recomputed. A resumed
//! run replays the interrupted epoch's pipeline from the seed (same row-group order, same shuffle
//! buffer draws), and the trainer discards the first `batches_done` batches instead of stepping
//! on them. That costs re-decoding part of one epoch, and buys a checkpoint that stays a few
//! kilobytes whatever the shuffle buffer's size.
//!
//! Protocol of a write, so that a crash at any instant leaves the previous checkpoint intact:
//!
//! 1. serialise to `.checkpoint-NNNNNNNN.json.tmp-PID` in the checkpoint folder;
//! 2. `fsync` the file, rename it to `checkpoint-NNNNNNNN.json`, `fsync` the folder;
//! 3. delete all but the newest `keep` checkpoints.
//!
//! On resume, the newest checkpoint that parses and matches the data is used; a damaged newest
//! one (which the protocol above should never leave) falls back to the one before.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataset::{ColumnPlan, Dataset, FeatureColumn};
use crate::error::{Error, Result};
use crate::stats::Standardization;
use crate::train::{EpochReport, TrainConfig};

/// The value of the `format` key of a checkpoint file.
pub const FORMAT: &str = "slope-checkpoint";
/// The checkpoint format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Checkpoints kept by default.
pub const DEFAULT_KEEP: usize = 3;

/// When and where to write checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    pub dir: PathBuf,
    /// Write after every this many updates (at the next batch boundary).
    pub every_updates: Option<u64>,
    /// Write when this much wall-clock time has passed since the last checkpoint.
    pub interval: Option<Duration>,
    /// Checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl CheckpointPolicy {
    /// Creates the folder and checks that a file can be written there, so that a read-only or
    /// missing disk fails at start-up rather than after hours of training.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(&self.dir, "create the checkpoint folder", e))?;
        let probe = self.dir.join(format!(".write-test-{}", std::process::id()));
        let written = File::create(&probe)
            .and_then(|mut f| f.write_all(b"slope").and_then(|()| f.sync_all()));
        let _ = std::fs::remove_file(&probe);
        written.map_err(|e| Error::io(&self.dir, "write checkpoints to", e))
    }
}

/// What a checkpoint knows about the data, to refuse resuming on data that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub shards: Vec<ShardPrint>,
    /// A hash of the chosen columns' names and types.
    pub schema_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPrint {
    pub path: PathBuf,
    pub bytes: u64,
    pub rows: u64,
}

impl Fingerprint {
    pub fn of(dataset: &Dataset, plan: &ColumnPlan) -> Fingerprint {
        let schema = dataset.shards[0].schema();
        let mut text = String::new();
        for name in plan.feature_names().iter().chain(plan.target.as_ref()) {
            let base = name.split('[').next().unwrap_or(name);
            let dt =
                schema.field_with_name(base).map(|f| f.data_type().to_string()).unwrap_or_default();
            text.push_str(&format!("{name}:{dt};"));
        }
        Fingerprint {
            shards: dataset
                .shards
                .iter()
                .map(|s| ShardPrint { path: s.path.clone(), bytes: s.bytes, rows: s.rows() })
                .collect(),
            schema_hash: format!("{:016x}", fnv1a(text.as_bytes())),
        }
    }

    /// Describes how `now` differs from this fingerprint, or `None` if it does not.
    pub fn difference(&self, now: &Fingerprint) -> Option<String> {
        for old in &self.shards {
            match now.shards.iter().find(|s| s.path == old.path) {
                None => {
                    return Some(format!("shard {} is no longer in the input", old.path.display()));
                }
                Some(s) if s.bytes != old.bytes => {
                    return Some(format!(
                        "shard {} changed size from {} to {} bytes",
                        old.path.display(),
                        old.bytes,
                        s.bytes
                    ));
                }
                Some(s) if s.rows != old.rows => {
                    return Some(format!(
                        "shard {} changed from {} to {} rows",
                        old.path.display(),
                        old.rows,
                        s.rows
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(new) = now.shards.iter().find(|s| !self.shards.iter().any(|o| o.path == s.path))
        {
            return Some(format!("shard {} was added to the input", new.path.display()));
        }
        if self.shards.iter().map(|s| &s.path).ne(now.shards.iter().map(|s| &s.path)) {
            return Some("the shards are listed in a different order".to_string());
        }
        if self.schema_hash != now.schema_hash {
            return Some("the names or types of the chosen columns changed".to_string());
        }
        None
    }
}

/// FNV-1a, a stable 64-bit hash (std's hashers may change between Rust releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The best epoch seen by early stopping, with its weights (in the trainer's units).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub validation_loss: f64,
    pub w: Vec<f64>,
    pub b: f64,
}

/// The trainer's state at a batch boundary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Weights and bias in the trainer's units (standardised when scaling is on).
    pub w: Vec<f64>,
    pub b: f64,
    pub updates: u64,
    pub rows_seen: u64,
    pub rows_skipped: u64,
    /// Completed epochs.
    pub history: Vec<EpochReport>,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of the epoch in progress already applied.
    pub batches_done: u64,
    /// The epoch in progress's rows and loss sum so far, and its last step size.
    pub epoch_rows: u64,
    pub epoch_loss_sum: f64,
    pub epoch_eta: f64,
    /// Consecutive epochs of rising loss (batch divergence rule).
    pub rising: usize,
    /// Early stopping: the best epoch so far and the epochs since it.
    pub best: Option<Best>,
    pub since_best: usize,
    /// Checkpoints written so far in this run's lineage; names the next file.
    pub sequence: u64,
}

/// A checkpoint file's contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub format_version: u32,
    pub created_by: String,
    pub config: TrainConfig,
    pub target: String,
    pub feature_columns: Vec<FeatureColumn>,
    pub data: Fingerprint,
    pub scaling: Option<Standardization>,
    /// The model a warm start began from, for the lineage of the final model.
    pub warm_start: Option<crate::model::LineageEntry>,
    pub progress: Progress,
}

impl Checkpoint {
    /// Writes the checkpoint atomically and prunes old ones; returns its path.
    pub fn save(&self, policy: &CheckpointPolicy) -> Result<PathBuf> {
        let name = format!("checkpoint-{:08}.json", self.progress.sequence);
        let path = policy.dir.join(&name);
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::io(&path, "write checkpoint", std::io::Error::other(e)))?;
        crate::model::write_atomically(&path, &json)?;
        // Make the rename itself durable.
        if let Ok(dir) = File::open(&policy.dir) {
            let _ = dir.sync_all();
        }
        let mut all = list(&policy.dir)?;
        while all.len() > policy.keep.max(1) {
            let oldest = all.remove(0);
            let _ = std::fs::remove_file(oldest);
        }
        Ok(path)
    }

    /// Reads one checkpoint file.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        let bad = |reason: String| Error::Model { path: path.to_path_buf(), reason };
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("not a readable checkpoint ({e})")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad("not a slope checkpoint".to_string()));
        }
        if value.get("format_version").and_then(|v| v.as_u64()) != Some(u64::from(FORMAT_VERSION)) {
            return Err(bad(format!("checkpoint format is not version {FORMAT_VERSION}")));
        }
        serde_json::from_value(value).map_err(|e| bad(format!("not a readable checkpoint ({e})")))
    }

    /// The newest checkpoint in `dir` that can be read, or `None` when there is none.
    pub fn newest(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>> {
        if !dir.exists() {
            return Ok(None);
        }
        for path in list(dir)?.into_iter().rev() {
            match Checkpoint::load(&path) {
                Ok(c) => return Ok(Some((path, c))),
                Err(e) => tracing::warn!("skipping unreadable checkpoint: {e}"),
            }
        }
        Ok(None)
    }

    /// Refuses to resume when the data or a setting that shapes the result changed.
    pub fn check_compatible(
        &self,
        path: &Path,
        config: &TrainConfig,
        data: &Fingerprint,
    ) -> Result<()> {
        let refuse = |what: String| Error::Model {
            path: path.to_path_buf(),
            reason: format!("cannot resume: {what} since this checkpoint was written"),
        };
        if let Some(diff) = self.data.difference(data) {
            return Err(refuse(diff));
        }
        let differing = config.differences(&self.config);
        if !differing.is_empty() {
            return Err(refuse(format!("the settings {} changed", differing.join(", "))));
        }
        Ok(())
    }
}

/// Checkpoint files in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read the checkpoint folder", e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    Ok(files)
}
