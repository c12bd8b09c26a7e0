//! The shuffler, through the real pipeline (Parquet shards, decode workers, shuffle thread or
//! the caller's thread): every row exactly once per epoch, whatever the layout of shards and row
//! groups, and the same batches wherever the shuffler runs.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode};
use slope::reader::{BlockStream, ReadOptions};
use slope::shuffle::{BatchStream, ShuffleOn, epoch_order};

/// Writes shards whose row groups have the given sizes; column `id` numbers the rows globally
/// and `y` repeats it.
fn write_layout(dir: &Path, layout: &[Vec<usize>]) -> usize {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Float32, false),
        Field::new("y", DataType::Float32, false),
    ]));
    let mut next = 0usize;
    for (s, groups) in layout.iter().enumerate() {
        let file = std::fs::File::create(dir.join(format!("part-{s}.parquet"))).unwrap();
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(1 << 20)).build();
        let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).unwrap();
        for &rows in groups {
            let ids: Vec<f32> = (next..next + rows).map(|i| i as f32).collect();
            next += rows;
            let col: ArrayRef = Arc::new(Float32Array::from(ids));
            writer
                .write(&RecordBatch::try_new(Arc::clone(&schema), vec![col.clone(), col]).unwrap())
                .unwrap();
            writer.flush().unwrap();
        }
        writer.close().unwrap();
    }
    next
}

/// The ids of one epoch, in the order the trainer would see them, batch by batch.
fn epoch_batches(
    dir: &Path,
    seed: u64,
    epoch: u64,
    buffer: usize,
    batch: usize,
    workers: usize,
    on: ShuffleOn,
) -> Vec<Vec<f32>> {
    let dataset = Arc::new(Dataset::open(&[dir.to_str().unwrap()], IoMode::Mmap).unwrap());
    let selection = ColumnSelection { target: Some("y".into()), ..Default::default() };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection).unwrap());
    let order = epoch_order(&dataset.units(), seed, epoch, true);
    let options = ReadOptions { workers, block_rows: 64, ..ReadOptions::default() };
    let blocks = BlockStream::start(Arc::clone(&dataset), plan, order, &options).unwrap();
    let stream = BatchStream::start(blocks, 1, buffer, batch, seed, epoch, on).unwrap();
    let mut batches = Vec::new();
    for b in stream {
        let b = b.unwrap();
        assert!(b.rows <= batch);
        assert_eq!(b.x(), b.y(), "features and target of a row travel together");
        batches.push(b.x().to_vec());
    }
    batches
}

/// The ids of one epoch in order, after checking that the shuffler gives the same batches on
/// its own thread and on the caller's.
fn epoch_ids(
    dir: &Path,
    seed: u64,
    epoch: u64,
    buffer: usize,
    batch: usize,
    workers: usize,
) -> Vec<f32> {
    let own = epoch_batches(dir, seed, epoch, buffer, batch, workers, ShuffleOn::OwnThread);
    let caller = epoch_batches(dir, seed, epoch, buffer, batch, workers, ShuffleOn::Caller);
    assert_eq!(own, caller, "the same batches wherever the shuffler runs");
    own.concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn every_row_exactly_once_per_epoch(
        layout in prop::collection::vec(prop::collection::vec(1usize..400, 1..4), 1..4),
        buffer in 0usize..500,
        batch in 1usize..100,
        workers in 1usize..4,
        seed: u64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let n = write_layout(dir.path(), &layout);
        for epoch in 0..2 {
            let mut ids = epoch_ids(dir.path(), seed, epoch, buffer, batch, workers);
            prop_assert_eq!(ids.len(), n);
            ids.sort_by(f32::total_cmp);
            let expected: Vec<f32> = (0..n).map(|i| i as f32).collect();
            prop_assert_eq!(ids, expected);
        }
    }
}

#[test]
fn the_order_depends_on_seed_and_epoch_but_not_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), &[vec![300, 200], vec![250], vec![100, 100, 100]]);
    let base = epoch_ids(dir.path(), 1, 0, 256, 32, 1);
    assert_eq!(base, epoch_ids(dir.path(), 1, 0, 256, 32, 3));
    assert_ne!(base, epoch_ids(dir.path(), 2, 0, 256, 32, 1));
    assert_ne!(base, epoch_ids(dir.path(), 1, 1, 256, 32, 1));
    // A shuffled epoch is not file order.
    let sorted: Vec<f32> = (0..base.len()).map(|i| i as f32).collect();
    assert_ne!(base, sorted);
}
