//! Feature statistics for `--standardize`: one streaming pass of per-feature means and standard
//! deviations.
//!
//! Each block's mean and sum of squared deviations are computed in two passes over the block
//! (which is in memory), then merged into the running totals with Chan's pairwise update. This
//! stays accurate for columns whose mean is large beside their spread, where the textbook
//! `Σx² − n·mean²` loses every digit. Blocks are merged in file order, so the result does not
//! depend on thread timing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataset::{ColumnPlan, Dataset};
use crate::decode::Affine;
use crate::error::{Error, Result};
use crate::reader::{BlockStream, ReadOptions};

/// Per-feature mean and (population) standard deviation, in the units of the raw columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Rows the statistics were measured on.
    pub rows: u64,
    /// `full` (a pass over every row, `--standardize`) or `sample` (the first rows in file
    /// order, the default conditioning).
    pub source: ScalingSource,
}

/// Where standardisation statistics came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingSource {
    Full,
    Sample,
}

/// Rows read, in file order, for the default sample-based conditioning.
pub const SAMPLE_ROWS: u64 = 65_536;

impl Standardization {
    /// The affine map the decoders apply: `x' = (x − mean) / std`.
    pub fn affine(&self) -> Affine {
        Affine {
            shift: self.mean.iter().map(|&m| m as f32).collect(),
            scale: self.std.iter().map(|&s| (1.0 / s) as f32).collect(),
        }
    }
}

/// Running moments of every feature.
#[derive(Clone, Debug)]
pub struct Moments {
    pub rows: u64,
    pub mean: Vec<f64>,
    m2: Vec<f64>,
    block_mean: Vec<f64>,
    block_m2: Vec<f64>,
}

impl Moments {
    pub fn new(d: usize) -> Moments {
        Moments {
            rows: 0,
            mean: vec![0.0; d],
            m2: vec![0.0; d],
            block_mean: vec![0.0; d],
            block_m2: vec![0.0; d],
        }
    }

    /// Adds `rows × d` row-major features.
    pub fn add(&mut self, x: &[f32]) {
        let d = self.mean.len();
        let n = (x.len() / d) as u64;
        if n == 0 {
            return;
        }
        self.block_mean.fill(0.0);
        for row in x.chunks_exact(d) {
            for (m, &v) in self.block_mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        let nb = n as f64;
        self.block_mean.iter_mut().for_each(|m| *m /= nb);
        self.block_m2.fill(0.0);
        for row in x.chunks_exact(d) {
            for ((s, &v), m) in self.block_m2.iter_mut().zip(row).zip(&self.block_mean) {
                let dev = f64::from(v) - m;
                *s += dev * dev;
            }
        }
        let na = self.rows as f64;
        let total = na + nb;
        for j in 0..d {
            let delta = self.block_mean[j] - self.mean[j];
            self.mean[j] += delta * nb / total;
            self.m2[j] += self.block_m2[j] + delta * delta * na * nb / total;
        }
        self.rows += n;
    }

    /// Population standard deviations.
    pub fn std(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        self.m2.iter().map(|m2| (m2 / n).sqrt()).collect()
    }
}

/// Streams `dataset` once and returns each feature's mean and standard deviation.
///
/// A feature whose spread is zero, or too small beside its mean to survive `f32` rounding, is an
/// error naming it: standardising it would divide by zero.
pub fn standardization(
    dataset: &Arc<Dataset>,
    plan: &Arc<ColumnPlan>,
    options: &ReadOptions,
) -> Result<Standardization> {
    let mut stream =
        BlockStream::start(Arc::clone(dataset), Arc::clone(plan), dataset.units(), options)?;
    let mut moments = Moments::new(plan.d);
    let recycle = stream.recycler();
    for block in &mut stream {
        let block = block?;
        moments.add(&block.x);
        recycle.give(block);
    }
    if moments.rows == 0 {
        return Err(Error::NoRows { input: dataset.describe(), purpose: "standardise" });
    }
    let std = moments.std();
    let names = plan.feature_names();
    for ((s, m), name) in std.iter().zip(&moments.mean).zip(&names) {
        if s.is_nan() || *s <= 1e-6 * m.abs() || *s == 0.0 {
            return Err(Error::ConstantFeature { feature: name.clone(), value: *m });
        }
    }
    Ok(Standardization { mean: moments.mean, std, rows: moments.rows, source: ScalingSource::Full })
}

/// Estimates each feature's mean and spread from the first [`SAMPLE_ROWS`] rows in file order.
///
/// This is the default conditioning when neither `--standardize` nor `--raw` is given: gradient
/// steps are taken on features brought to a similar scale, as Vowpal Wabbit's normalised
/// updates do, so that one step size suits columns measured in units and in thousands. It costs
/// one row group's read instead of a full pass. A feature that does not vary within the sample is
/// left unscaled rather than rejected; the sample says nothing certain about it.
pub fn sample_standardization(
    dataset: &Arc<Dataset>,
    plan: &Arc<ColumnPlan>,
    options: &ReadOptions,
) -> Result<Standardization> {
    // A stream over every row group would have its workers decode row groups ahead that the
    // sample never reads (on the 1M-row benchmark set, an eighth of an epoch). So each stream
    // covers only the row groups that the rows still wanted need, and another follows if rows
    // were dropped on the way: the same whole blocks, in the same order, either way.
    let units = dataset.units();
    let mut moments = Moments::new(plan.d);
    let mut next = 0;
    while moments.rows < SAMPLE_ROWS && next < units.len() {
        let mut end = next;
        let mut rows = moments.rows;
        while end < units.len() && rows < SAMPLE_ROWS {
            rows += units[end].rows as u64;
            end += 1;
        }
        let stream = BlockStream::start(
            Arc::clone(dataset),
            Arc::clone(plan),
            units[next..end].to_vec(),
            options,
        )?;
        for block in stream {
            moments.add(&block?.x);
            if moments.rows >= SAMPLE_ROWS {
                break;
            }
        }
        next = end;
    }
    if moments.rows == 0 {
        return Err(Error::NoRows { input: dataset.describe(), purpose: "train on" });
    }
    let std = moments
        .std()
        .into_iter()
        .zip(&moments.mean)
        .map(|(s, m)| if s > 1e-6 * m.abs() && s > 0.0 { s } else { 1.0 })
        .collect();
    Ok(Standardization {
        mean: moments.mean,
        std,
        rows: moments.rows,
        source: ScalingSource::Sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_moments_match_a_direct_computation() {
        let x: Vec<f32> = (0..1000).map(|i| 1.0e4 + (i % 17) as f32 * 0.5).collect();
        let mut moments = Moments::new(2);
        for chunk in x.chunks(2 * 37) {
            moments.add(chunk);
        }
        for j in 0..2 {
            let col: Vec<f64> = x.iter().skip(j).step_by(2).map(|&v| f64::from(v)).collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
            assert!((moments.mean[j] - mean).abs() < 1e-9);
            assert!((moments.std()[j] - var.sqrt()).abs() < 1e-9);
        }
    }
}
