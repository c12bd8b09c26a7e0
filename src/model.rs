//! The model file: a linear model in the units of the raw columns, plus everything needed to
//! trust it later (what it was trained on, how, and why training stopped).
//!
//! The file is JSON, written atomically: to a temporary file in the same folder, flushed to
//! disk, then renamed over the destination, so a reader sees the old model or the new one and
//! never half of one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, FeatureColumn};
use crate::error::{Error, Result};
use crate::stats::Standardization;
use crate::train::{EpochReport, StopReason, TrainConfig, TrainOutcome};

/// The value of the `format` key.
pub const FORMAT: &str = "slope-linear-model";
/// The model format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A trained linear model: `prediction = bias + Σ weights[i]·x[i]` on raw feature values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub format_version: u32,
    /// The slope version that wrote the file.
    pub created_by: String,
    pub target: String,
    /// Feature names, in weight order (`emb[0]` … for a fixed-size list column `emb`).
    pub features: Vec<String>,
    /// The source columns of the features, for reading new data.
    pub feature_columns: Vec<FeatureColumn>,
    pub weights: Vec<f64>,
    pub bias: f64,
    /// Means and standard deviations measured under `--standardize`, for the record: `weights`
    /// and `bias` already include them.
    pub standardization: Option<Standardization>,
    pub training: TrainConfig,
    pub epochs_run: usize,
    pub updates: u64,
    pub rows_seen: u64,
    pub rows_skipped: u64,
    pub final_loss: f64,
    /// Why training stopped, in words.
    pub stop_reason: String,
    pub stop: StopReason,
    /// The last epoch's report.
    pub last_epoch: Option<EpochReport>,
    /// Under early stopping, the epoch whose weights these are.
    pub best_epoch: Option<usize>,
    pub data: DataSummary,
    /// The models this one descends from by warm starts, the nearest first.
    #[serde(default)]
    pub lineage: Vec<LineageEntry>,
}

/// One ancestor of a model: the model file a warm start began from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineageEntry {
    pub model: PathBuf,
    /// FNV-1a hash of the model file's bytes, to tell copies apart from edits.
    pub digest: String,
    pub created_by: String,
    /// The data that model was trained on.
    pub data: DataSummary,
    pub epochs_run: usize,
    pub final_loss: f64,
}

/// Ancestors kept in a model's lineage; older ones are dropped.
const LINEAGE_DEPTH: usize = 16;

/// What the model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub rows: u64,
    pub shards: Vec<ShardSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub rows: u64,
}

impl DataSummary {
    pub fn of(dataset: &Dataset) -> DataSummary {
        DataSummary {
            rows: dataset.rows(),
            shards: dataset
                .shards
                .iter()
                .map(|s| ShardSummary { path: s.path.clone(), bytes: s.bytes, rows: s.rows() })
                .collect(),
        }
    }
}

impl Model {
    /// Assembles the model file's contents from a finished training run.
    pub fn from_training(
        outcome: TrainOutcome,
        config: &TrainConfig,
        target: String,
        feature_columns: Vec<FeatureColumn>,
        dataset: &Dataset,
        parent: Option<&Model>,
    ) -> Model {
        let mut lineage = Vec::new();
        if let (Some(entry), Some(parent)) = (&outcome.warm_start, parent) {
            lineage.push(entry.clone());
            lineage.extend(parent.lineage.iter().take(LINEAGE_DEPTH - 1).cloned());
        }
        let features = feature_columns.iter().flat_map(FeatureColumn::feature_names).collect();
        Model {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            created_by: format!("slope {}", env!("CARGO_PKG_VERSION")),
            target,
            features,
            feature_columns,
            weights: outcome.weights,
            bias: outcome.bias,
            standardization: outcome.standardization,
            training: config.clone(),
            epochs_run: outcome.epochs_run,
            updates: outcome.updates,
            rows_seen: outcome.rows_seen,
            rows_skipped: outcome.rows_skipped,
            final_loss: outcome.final_loss,
            stop_reason: outcome.stop_reason.to_string(),
            stop: outcome.stop_reason,
            last_epoch: outcome.history.last().cloned(),
            best_epoch: outcome.best_epoch,
            data: DataSummary::of(dataset),
            lineage,
        }
    }

    /// The lineage entry that names this model, read from `path`, as a warm start's parent.
    pub fn lineage_entry(&self, path: &Path) -> Result<LineageEntry> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        Ok(LineageEntry {
            model: path.to_path_buf(),
            digest: format!("{:016x}", crate::checkpoint::fnv1a(&bytes)),
            created_by: self.created_by.clone(),
            data: self.data.clone(),
            epochs_run: self.epochs_run,
            final_loss: self.final_loss,
        })
    }

    /// Reads and checks a model file.
    pub fn load(path: &Path) -> Result<Model> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        // Check the format before the full shape, so that a file from another version says so
        // rather than failing on whichever key changed.
        let header: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| Error::ModelJson { path: path.to_path_buf(), source })?;
        let bad = |reason: String| Error::Model { path: path.to_path_buf(), reason };
        if header.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("not a slope model file (expected \"format\": \"{FORMAT}\")")));
        }
        match header.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            found => {
                let found = found.map_or("none".to_string(), |v| v.to_string());
                return Err(bad(format!(
                    "model format version {found} is not supported (this slope reads version \
                     {FORMAT_VERSION})"
                )));
            }
        }
        let model: Model = serde_json::from_value(header)
            .map_err(|source| Error::ModelJson { path: path.to_path_buf(), source })?;
        let width: usize = model.feature_columns.iter().map(|c| c.width).sum();
        if model.weights.len() != model.features.len() || width != model.features.len() {
            return Err(bad(format!(
                "{} weights for {} features",
                model.weights.len(),
                model.features.len()
            )));
        }
        if !model.bias.is_finite() || model.weights.iter().any(|w| !w.is_finite()) {
            return Err(bad("the model has non-finite weights".to_string()));
        }
        Ok(model)
    }

    /// Writes the model atomically: temporary file, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|source| Error::ModelJson { path: path.to_path_buf(), source })?;
        write_atomically(path, &json)
    }
}

/// Writes `bytes` to `path` so that `path` holds either its old contents or all of `bytes`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temporary(path, |tmp| {
        let mut file = File::create(tmp).map_err(|e| Error::io(path, "write", e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, "write", e))
    })
}

/// Writes `path` through a hidden temporary sibling: `write` fills (and syncs) the temporary
/// file; on success it is renamed into place, on failure removed. Readers of `path` see the old
/// file or the whole new one, and a failed write leaves nothing behind.
pub fn write_via_temporary<T>(path: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = temporary_path(path);
    let result = write(&tmp).and_then(|value| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "write (rename into place)", e))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A hidden sibling of `path` for atomic writes.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or("out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomically(&path, b"old").unwrap();
        let failed: Result<()> = write_via_temporary(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::NoRows { input: "test".into(), purpose: "write" })
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out.json"]);
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
