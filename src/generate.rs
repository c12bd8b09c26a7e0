//! Synthetic regression data with a known answer, for demos, tests and benchmarks.
//!
//! The model follows the peer benchmark's generator (`shared/bench/gen_data.py`) in shape, so
//! that figures are comparable, though not its bits: for features `j = 0..d`,
//!
//! - `z_j ~ N(0, 1)` and `x_j = s_j · (z_j + μ_j)`, stored as `f32` column `f{j}`, with scales
//!   `s_j` log-uniform in `[1, scale_max]` (so plain gradient descent needs `--standardize`)
//!   and offsets `μ_j` uniform in `[-1, 1]`;
//! - `y = Σ w_j x_j + b + ε`, with `w_j = g_j / s_j`, `g_j ~ N(0, 1)`, `b = 0.5` and
//!   `ε ~ N(0, noise²)`, computed in `f64` from the stored `f32` features.
//!
//! `truth.json` records `w` and `b`. Every shard draws from its own stream derived from the seed,
//! so the output does not depend on the thread count.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{write_atomically, write_via_temporary};
use crate::rng::Rng;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Training rows, all shards together.
    pub rows: u64,
    pub features: usize,
    pub shards: usize,
    pub holdout_rows: u64,
    pub row_group_rows: usize,
    pub noise: f64,
    pub scale_max: f64,
    pub seed: u64,
}

/// The true model behind generated data (`truth.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Truth {
    pub features: Vec<String>,
    pub target: String,
    pub weights: Vec<f64>,
    pub bias: f64,
    pub noise_sigma: f64,
    pub scales: Vec<f64>,
    pub offsets: Vec<f64>,
    pub rows: u64,
    pub holdout_rows: u64,
    pub seed: u64,
}

const PARAMS: u64 = 10;
const SHARD: u64 = 11;
const HOLDOUT: u64 = 12;

impl GenerateConfig {
    fn validate(&self) -> Result<()> {
        if self.features == 0 {
            return Err(Error::param("--features", "at least 1", 0));
        }
        if self.shards == 0 || self.shards as u64 > self.rows.max(1) {
            return Err(Error::param(
                "--shards",
                format!("1 to {} (the row count)", self.rows),
                self.shards,
            ));
        }
        if self.row_group_rows == 0 {
            return Err(Error::param("--row-group-rows", "at least 1", 0));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(Error::param("--noise", "a number >= 0", self.noise));
        }
        if !(self.scale_max.is_finite() && self.scale_max >= 1.0) {
            return Err(Error::param("--scale-max", "a number >= 1", self.scale_max));
        }
        Ok(())
    }

    /// Draws the true model.
    pub fn truth(&self) -> Truth {
        let d = self.features;
        let mut rng = Rng::derived(self.seed, &[PARAMS]);
        let scales: Vec<f64> = (0..d)
            .map(|j| {
                let u = rng.uniform();
                // The first column has scale 1 and the last scale_max, so every dataset spans
                // the full range.
                let u = match j {
                    0 => 0.0,
                    _ if j == d - 1 => 1.0,
                    _ => u,
                };
                self.scale_max.powf(u)
            })
            .collect();
        let offsets: Vec<f64> = (0..d).map(|_| 2.0 * rng.uniform() - 1.0).collect();
        let weights: Vec<f64> = scales.iter().map(|s| rng.normal() / s).collect();
        Truth {
            features: (0..d).map(|j| format!("f{j}")).collect(),
            target: "y".to_string(),
            weights,
            bias: 0.5,
            noise_sigma: self.noise,
            scales,
            offsets,
            rows: self.rows,
            holdout_rows: self.holdout_rows,
            seed: self.seed,
        }
    }
}

/// Writes `out/train/part-NNNNN.parquet`, `out/holdout.parquet` and `out/truth.json`.
pub fn generate(config: &GenerateConfig, out: &Path) -> Result<Truth> {
    config.validate()?;
    let truth = config.truth();
    let train = out.join("train");
    std::fs::create_dir_all(&train).map_err(|e| Error::io(&train, "create folder", e))?;
    let base = config.rows / config.shards as u64;
    let extra = config.rows % config.shards as u64;
    (0..config.shards).into_par_iter().try_for_each(|k| {
        let rows = base + u64::from((k as u64) < extra);
        let path = train.join(format!("part-{k:05}.parquet"));
        let rng = Rng::derived(config.seed, &[SHARD, k as u64]);
        write_shard(&path, &truth, rows, config.row_group_rows, rng, false)
    })?;
    if config.holdout_rows > 0 {
        let rng = Rng::derived(config.seed, &[HOLDOUT]);
        let path = out.join("holdout.parquet");
        write_shard(&path, &truth, config.holdout_rows, config.row_group_rows, rng, true)?;
    }
    let json = serde_json::to_vec_pretty(&truth).expect("truth serialises");
    write_atomically(&out.join("truth.json"), &json)?;
    Ok(truth)
}

/// Writes one shard of `rows` rows, a row group at a time; with `ids`, a leading `id` column.
fn write_shard(
    path: &Path,
    truth: &Truth,
    rows: u64,
    group: usize,
    rng: Rng,
    ids: bool,
) -> Result<()> {
    write_via_temporary(path, |tmp| fill_shard(tmp, path, truth, rows, group, rng, ids))
}

/// Writes the rows of one shard into `tmp`, which becomes `path` once complete.
fn fill_shard(
    tmp: &Path,
    path: &Path,
    truth: &Truth,
    rows: u64,
    group: usize,
    mut rng: Rng,
    ids: bool,
) -> Result<()> {
    let d = truth.weights.len();
    let mut fields: Vec<Field> = Vec::new();
    if ids {
        fields.push(Field::new("id", DataType::Int64, false));
    }
    fields.extend(truth.features.iter().map(|f| Field::new(f, DataType::Float32, false)));
    fields.push(Field::new(&truth.target, DataType::Float32, false));
    let schema = Arc::new(Schema::new(fields));
    // Dictionary encoding makes random floats larger and slower to decode: off.
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(group))
        .build();
    let write_err = |source| Error::Write { path: path.to_path_buf(), source };
    let file = File::create(tmp).map_err(|e| Error::io(path, "create", e))?;
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(write_err)?;
    let mut done = 0u64;
    let mut columns: Vec<Vec<f32>> = vec![Vec::new(); d];
    let mut y = Vec::new();
    while done < rows {
        let n = (rows - done).min(group as u64) as usize;
        for c in &mut columns {
            c.clear();
        }
        y.clear();
        for _ in 0..n {
            let mut target = truth.bias + truth.noise_sigma * rng.normal();
            for (j, col) in columns.iter_mut().enumerate() {
                let x = (truth.scales[j] * (rng.normal() + truth.offsets[j])) as f32;
                target += truth.weights[j] * f64::from(x);
                col.push(x);
            }
            y.push(target as f32);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(d + 2);
        if ids {
            arrays.push(Arc::new(Int64Array::from_iter_values(
                done as i64..(done + n as u64) as i64,
            )));
        }
        arrays.extend(columns.iter().map(|c| Arc::new(Float32Array::from(c.clone())) as ArrayRef));
        arrays.push(Arc::new(Float32Array::from(y.clone())));
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
            .map_err(|e| write_err(parquet::errors::ParquetError::External(Box::new(e))))?;
        writer.write(&batch).map_err(write_err)?;
        writer.flush().map_err(write_err)?;
        done += n as u64;
    }
    let file = writer.into_inner().map_err(write_err)?;
    file.sync_all().map_err(|e| Error::io(path, "write", e))
}
