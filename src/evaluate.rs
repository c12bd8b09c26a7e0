//! Applying a model to new data: metrics against a target (`evaluate`) and streamed predictions
//! written to Parquet (`predict`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::dataset::{ColumnPlan, Dataset};
use crate::error::{Error, Result};
use crate::kernel::predict_rows;
use crate::model::{Model, write_via_temporary};
use crate::reader::{BlockStream, ReadOptions};

/// Regression metrics of a model on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub rows: u64,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    /// Coefficient of determination, `1 − SS_res / SS_tot` (NaN for a constant target).
    pub r2: f64,
    /// Rows dropped under `--on-invalid skip`.
    pub skipped: u64,
}

/// Streams `dataset` and measures `model` against its target column.
pub fn evaluate(dataset: Arc<Dataset>, model: &Model, options: &ReadOptions) -> Result<Metrics> {
    let plan = Arc::new(ColumnPlan::for_model(
        &dataset,
        model.feature_columns.clone(),
        Some(model.target.clone()),
        Vec::new(),
    )?);
    let mut stream = BlockStream::start(Arc::clone(&dataset), plan, dataset.units(), options)?;
    let mut pred = Vec::new();
    let (mut n, mut sse, mut sae, mut skipped) = (0u64, 0.0f64, 0.0f64, 0u64);
    // Running mean and sum of squared deviations of the target (Chan's update per block).
    let (mut y_mean, mut y_m2) = (0.0f64, 0.0f64);
    let recycle = stream.recycler();
    for block in &mut stream {
        let block = block?;
        skipped += block.skipped as u64;
        predict_rows(&block.x, &model.weights, model.bias, &mut pred);
        let mut block_sum = 0.0;
        for (p, &y) in pred.iter().zip(&block.y) {
            let e = p - f64::from(y);
            sse += e * e;
            sae += e.abs();
            block_sum += f64::from(y);
        }
        let nb = block.rows as f64;
        if nb > 0.0 {
            let block_mean = block_sum / nb;
            let block_m2: f64 = block.y.iter().map(|&y| (f64::from(y) - block_mean).powi(2)).sum();
            let na = n as f64;
            let delta = block_mean - y_mean;
            y_mean += delta * nb / (na + nb);
            y_m2 += block_m2 + delta * delta * na * nb / (na + nb);
            n += block.rows as u64;
        }
        recycle.give(block);
    }
    if n == 0 {
        return Err(Error::NoRows { input: dataset.describe(), purpose: "evaluate" });
    }
    let mse = sse / n as f64;
    Ok(Metrics {
        rows: n,
        mse,
        rmse: mse.sqrt(),
        mae: sae / n as f64,
        r2: if y_m2 > 0.0 { 1.0 - sse / y_m2 } else { f64::NAN },
        skipped,
    })
}

/// What `predict` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct PredictSummary {
    pub rows: u64,
    pub skipped: u64,
}

/// Streams `dataset`, predicts every row, and writes `out` (Parquet) with the `keep` columns
/// followed by a `prediction` column. The file appears only once it is complete.
pub fn predict(
    dataset: Arc<Dataset>,
    model: &Model,
    keep: Vec<String>,
    out: &Path,
    options: &ReadOptions,
) -> Result<PredictSummary> {
    if keep.iter().any(|k| k == "prediction") {
        return Err(Error::param("--keep", "columns other than 'prediction'", "prediction"));
    }
    let plan =
        Arc::new(ColumnPlan::for_model(&dataset, model.feature_columns.clone(), None, keep)?);
    let first_schema = dataset.shards[0].schema();
    let mut fields: Vec<Field> =
        plan.keep.iter().filter_map(|k| first_schema.field_with_name(k).ok().cloned()).collect();
    fields.push(Field::new("prediction", DataType::Float64, false));
    let schema = Arc::new(Schema::new(fields));

    write_via_temporary(out, |tmp| write_predictions(&dataset, &plan, model, &schema, tmp, options))
}

fn write_predictions(
    dataset: &Arc<Dataset>,
    plan: &Arc<ColumnPlan>,
    model: &Model,
    schema: &Arc<Schema>,
    tmp: &Path,
    options: &ReadOptions,
) -> Result<PredictSummary> {
    let file = File::create(tmp).map_err(|e| Error::io(tmp, "create", e))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let write_err = |source| Error::Write { path: tmp.to_path_buf(), source };
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(schema), Some(props)).map_err(write_err)?;
    let mut stream =
        BlockStream::start(Arc::clone(dataset), Arc::clone(plan), dataset.units(), options)?;
    let mut pred = Vec::new();
    let (mut rows, mut skipped) = (0u64, 0u64);
    let recycle = stream.recycler();
    for block in &mut stream {
        let block = block?;
        skipped += block.skipped as u64;
        rows += block.rows as u64;
        predict_rows(&block.x, &model.weights, model.bias, &mut pred);
        let mut columns: Vec<ArrayRef> =
            block.passthrough.as_ref().map_or_else(Vec::new, |b| b.columns().to_vec());
        columns.push(Arc::new(Float64Array::from(std::mem::take(&mut pred))));
        let batch = RecordBatch::try_new(Arc::clone(schema), columns)
            .map_err(|e| write_err(parquet::errors::ParquetError::External(Box::new(e))))?;
        writer.write(&batch).map_err(write_err)?;
        recycle.give(block);
    }
    let file = writer.into_inner().map_err(write_err)?;
    file.sync_all().map_err(|e| Error::io(tmp, "write", e))?;
    Ok(PredictSummary { rows, skipped })
}
