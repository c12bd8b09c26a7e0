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
use crate::kernel::{dot_f64, predict_rows};
use crate::model::{Model, write_via_temporary};
use crate::reader::{BlockStream, BlockSums, ReadOptions};

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

/// What the metrics are computed from, over a run of rows: the count, `Σ e²` and `Σ |e|` of the
/// errors `e = prediction − target`, and the target's mean and sum of squared deviations from
/// it. Runs are merged with Chan's update, so that no run's deviations are taken from another
/// run's mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Moments {
    rows: f64,
    sse: f64,
    sae: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    const LEN: usize = 5;

    /// The moments of rows `x` (`rows × d`) with targets `y`, predicted with `w` and `b`
    /// exactly as `predict` does.
    fn of_rows(x: &[f32], y: &[f32], w: &[f64], b: f64) -> Moments {
        let d = w.len();
        let (mut sse, mut sae, mut sum) = (0.0, 0.0, 0.0);
        for (i, &t) in y.iter().enumerate() {
            let p = if d == 0 { b } else { b + dot_f64(w, &x[i * d..(i + 1) * d]) };
            let e = p - f64::from(t);
            sse += e * e;
            sae += e.abs();
            sum += f64::from(t);
        }
        let rows = y.len() as f64;
        let mean = if y.is_empty() { 0.0 } else { sum / rows };
        let m2 = y.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
        Moments { rows, sse, sae, mean, m2 }
    }

    fn merge(&mut self, other: &Moments) {
        let rows = self.rows + other.rows;
        if other.rows == 0.0 {
            return;
        }
        let delta = other.mean - self.mean;
        self.mean += delta * other.rows / rows;
        self.m2 += other.m2 + delta * delta * self.rows * other.rows / rows;
        self.sse += other.sse;
        self.sae += other.sae;
        self.rows = rows;
    }

    /// A block's moments as its decode worker left them in `Block::sums` (empty: no rows).
    fn from_sums(sums: &[f64]) -> Moments {
        match *sums {
            [rows, sse, sae, mean, m2] => Moments { rows, sse, sae, mean, m2 },
            _ => Moments::default(),
        }
    }

    fn write(&self, out: &mut [f64]) {
        out.copy_from_slice(&[self.rows, self.sse, self.sae, self.mean, self.m2]);
    }
}

/// Streams `dataset` and measures `model` against its target column. The decode workers compute
/// each block's moments as they decode it (`reader::BlockSums`); blocks are merged in order, so
/// the metrics do not depend on the thread count.
pub fn evaluate(dataset: Arc<Dataset>, model: &Model, options: &ReadOptions) -> Result<Metrics> {
    let plan = Arc::new(ColumnPlan::for_model(
        &dataset,
        model.feature_columns.clone(),
        Some(model.target.clone()),
        Vec::new(),
    )?);
    let (w, b): (Arc<[f64]>, f64) = (model.weights.as_slice().into(), model.bias);
    let sums = BlockSums::new(move |x, y, out| {
        if out.len() != Moments::LEN {
            out.clear();
            out.resize(Moments::LEN, 0.0);
        }
        let mut block = Moments::from_sums(out);
        block.merge(&Moments::of_rows(x, y, &w, b));
        block.write(out);
    });
    let options = ReadOptions { sums: Some(sums), ..options.clone() };
    let mut stream = BlockStream::start(Arc::clone(&dataset), plan, dataset.units(), &options)?;
    let mut total = Moments::default();
    let mut skipped = 0u64;
    let recycle = stream.recycler();
    for block in &mut stream {
        let block = block?;
        skipped += block.skipped as u64;
        total.merge(&Moments::from_sums(&block.sums));
        recycle.give(block);
    }
    if total.rows == 0.0 {
        return Err(Error::NoRows { input: dataset.describe(), purpose: "evaluate" });
    }
    let mse = total.sse / total.rows;
    Ok(Metrics {
        rows: total.rows as u64,
        mse,
        rmse: mse.sqrt(),
        mae: total.sae / total.rows,
        r2: if total.m2 > 0.0 { 1.0 - total.sse / total.m2 } else { f64::NAN },
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
