//! slope trains linear models by gradient descent on Parquet data larger than memory.
//!
//! The pipeline, stage by stage (see `ARCHITECTURE.md` for the threads and channels):
//!
//! - [`dataset`]: input paths to shards, footers, and the [`dataset::ColumnPlan`] of features
//!   and target;
//! - [`reader`]: decode workers turning row groups into row-major blocks ([`decode`]);
//! - [`shuffle`]: the epoch's row-group order and the bounded shuffle buffer;
//! - [`train`]: the algorithms, with [`kernel`] for the per-chunk arithmetic and [`reduce`] for
//!   the fixed-order parallel sums and the multi-process seam;
//! - [`model`], [`evaluate`]: the model file, metrics and predictions.

pub mod checkpoint;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod kernel;
pub mod model;
pub mod pages;
pub mod reader;
pub mod reduce;
pub mod rng;
pub mod schedule;
pub mod shuffle;
pub mod solve;
pub mod stats;
mod thrift;
pub mod train;

pub use error::{Error, ErrorClass, Result};
