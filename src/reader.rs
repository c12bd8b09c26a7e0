//! The reader stage: decode workers that turn row groups into [`Block`]s, in a given order.
//!
//! A [`BlockStream`] reads a list of row groups (an epoch's order) with `workers` named threads.
//! The protocol:
//!
//! 1. Worker `k` of `K` owns the row groups at positions `k`, `k + K`, `k + 2K`, … of the list,
//!    and has its own bounded channel to the consumer.
//! 2. For each of its row groups the worker opens a projected reader (only the plan's columns),
//!    decodes it a block of at most `block_rows` rows at a time, sends each block, then sends
//!    `Msg::UnitDone`.
//! 3. The consumer reads channel `p mod K` until it sees `UnitDone` for position `p`, then moves
//!    to `p + 1`. Blocks therefore come out in list order, whatever the thread timing, which is
//!    what makes runs reproducible; and while the consumer drains one channel, the other workers
//!    decode ahead into theirs.
//! 4. A worker that fails sends `Msg::Failed` with the typed error and stops; the consumer
//!    returns it. Dropping the stream raises a cancel flag and drops the receivers, so every
//!    worker's next send fails and it exits; the drop then joins them all.
//!
//! Memory: at most `K × (queue + 2)` blocks are alive inside the stream, where a worker's queue
//! holds about [`QUEUE_BYTES`] of blocks.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use arrow_schema::ArrowError;
use crossbeam_channel::{Receiver, Sender, bounded};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::ChunkReader;

use crate::dataset::{ColumnPlan, Dataset, IoMode, Shard, Unit};
use crate::decode::{Affine, Batch, Block, Decoder, OnInvalid, Split};
use crate::error::{Error, Result};
use crate::pages::{PlainPages, Source, Unsupported};

/// Bytes of decoded blocks each worker may queue ahead of the consumer.
///
/// The consumer takes row groups in order, so while it reads one worker's row group the other
/// workers must be able to finish theirs: a queue of a couple of blocks would stall them a few
/// blocks into each row group and serialise the decoding. 32 MiB holds a typical row group
/// (128k rows of 64 `f32` features) and keeps the bound independent of how large the input's
/// row groups are; with larger ones, workers overlap less, and memory stays put.
pub const QUEUE_BYTES: usize = 32 << 20;

/// The fewest blocks a worker may queue, whatever their size.
const MIN_QUEUE_BLOCKS: usize = 2;

/// Default rows per decoded block. 4,096 rows of 64 `f32` features are 1 MiB, half what the
/// earlier 8,192 rows took and the size of a core's L2 cache on the machines measured, so more
/// of a block is still in cache while the worker standardises, checks and sums it. Against
/// 8,192 rows (10M rows, 2 threads, alternated runs) that cut the user CPU of `scan` and of a
/// `batch` epoch by 12 %. Smaller blocks make the parquet crate's reader pay its per-batch
/// overhead more often: at 2,048 rows its scan was slower again.
pub const DEFAULT_BLOCK_ROWS: usize = 4096;

/// How a stream reads.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Decode threads (at most one per row group is useful).
    pub workers: usize,
    pub block_rows: usize,
    pub on_invalid: OnInvalid,
    /// Applied to every feature after validation (standardisation).
    pub transform: Option<Arc<Affine>>,
    /// Keep only the training or only the validation rows of a hashed split.
    pub split: Option<Split>,
    /// Partial sums each worker computes on every block it decodes, before sending it.
    pub sums: Option<BlockSums>,
    /// Which reader turns row groups into record batches.
    pub decoder: Decoding,
}

/// Which reader turns a row group into record batches. Both give the same batches, value for
/// value and row for row; they differ in speed and in what they can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoding {
    /// Plain `f32` columns straight from their pages ([`crate::pages`]) wherever the footer
    /// allows, the parquet crate's record-batch reader for everything else.
    #[default]
    Pages,
    /// The parquet crate's record-batch reader for every row group: the reference that the
    /// page path is tested and measured against.
    Arrow,
}

/// Sums over a block's rows that the decode worker computes into [`Block::sums`]: the per-block
/// part of a full pass (the gradient at fixed weights, the normal-equation sums). The worker
/// adds each chunk of rows as soon as it is decoded, while the rows are still in its cache, and
/// on a machine with as many cores as workers no second set of threads competes with decoding.
/// The consumer adds the blocks' parts in block order, so results stay independent of which
/// worker computed what.
#[derive(Clone)]
pub struct BlockSums(Arc<SumsFn>);

type SumsFn = dyn Fn(&[f32], &[f32], &mut Vec<f64>) + Send + Sync;

impl BlockSums {
    /// `f(x, y, out)` adds the sums of the rows `x` (`rows × d`) with targets `y` to `out`,
    /// which is empty at the start of each block (and stays empty for a block without rows).
    /// The rows of a block arrive in order, in runs that start at multiples of
    /// [`crate::reduce::CHUNK_ROWS`] rows.
    pub fn new(f: impl Fn(&[f32], &[f32], &mut Vec<f64>) + Send + Sync + 'static) -> BlockSums {
        BlockSums(Arc::new(f))
    }

    pub(crate) fn add(&self, x: &[f32], y: &[f32], out: &mut Vec<f64>) {
        (self.0)(x, y, out)
    }
}

impl std::fmt::Debug for BlockSums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockSums")
    }
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            workers: 1,
            block_rows: DEFAULT_BLOCK_ROWS,
            on_invalid: OnInvalid::Error,
            transform: None,
            split: None,
            sums: None,
            decoder: Decoding::Pages,
        }
    }
}

impl ReadOptions {
    fn block_bytes(&self, plan: &ColumnPlan) -> usize {
        self.block_rows * (plan.d + usize::from(plan.target.is_some())) * 4
    }

    /// Blocks each worker may queue (see [`QUEUE_BYTES`]).
    pub fn queue_blocks(&self, plan: &ColumnPlan) -> usize {
        (QUEUE_BYTES / self.block_bytes(plan).max(1)).max(MIN_QUEUE_BLOCKS)
    }

    /// Bytes that blocks inside a stream can hold at once, for the start-up memory bound: each
    /// worker's queue, the block it is filling, and one the consumer holds.
    pub fn bytes_in_flight(&self, plan: &ColumnPlan) -> u64 {
        (self.workers * (self.queue_blocks(plan) + 2) * self.block_bytes(plan)) as u64
    }
}

/// A message from a decode worker.
enum Msg {
    Block(Block),
    UnitDone,
    Failed(Error),
}

/// Spare blocks handed back by the consumer so that workers reuse their buffers.
#[derive(Clone)]
pub struct Pool {
    tx: Sender<Block>,
    rx: Receiver<Block>,
}

impl Pool {
    fn new(capacity: usize) -> Pool {
        let (tx, rx) = bounded(capacity);
        Pool { tx, rx }
    }

    fn take(&self) -> Block {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Hands a consumed block back for reuse.
    pub fn give(&self, block: Block) {
        // A full pool means the workers already have spares; the block is simply freed.
        let _ = self.tx.try_send(block);
    }
}

/// Blocks of a list of row groups, decoded ahead by worker threads, in list order.
pub struct BlockStream {
    receivers: Vec<Receiver<Msg>>,
    handles: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    pool: Pool,
    position: usize,
    len: usize,
    failed: bool,
    counts: Arc<ReadCounts>,
}

/// Rows the decode workers read, by reader, counted as each batch is read.
#[derive(Debug, Default)]
struct ReadCounts {
    pages: AtomicU64,
    parquet: AtomicU64,
}

/// How many rows of a stream each reader decoded (see [`Decoding`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodedRows {
    /// Rows read straight from plain `f32` pages.
    pub pages: u64,
    /// Rows read by the parquet crate's record-batch reader.
    pub parquet: u64,
}

impl BlockStream {
    /// Starts decoding `units` of `dataset` with the columns of `plan`.
    pub fn start(
        dataset: Arc<Dataset>,
        plan: Arc<ColumnPlan>,
        units: Vec<Unit>,
        options: &ReadOptions,
    ) -> Result<BlockStream> {
        let units = Arc::new(units);
        let workers = options.workers.clamp(1, units.len().max(1));
        let cancel = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(ReadCounts::default());
        let queue = options.queue_blocks(&plan);
        let pool = Pool::new(workers * (queue + 2));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for k in 0..workers {
            let (tx, rx) = bounded(queue);
            let worker = Worker {
                dataset: Arc::clone(&dataset),
                plan: Arc::clone(&plan),
                units: Arc::clone(&units),
                options: options.clone(),
                cancel: Arc::clone(&cancel),
                counts: Arc::clone(&counts),
                pool: pool.clone(),
                tx,
                first: k,
                step: workers,
            };
            let handle = std::thread::Builder::new()
                .name(format!("slope-decode-{k}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::io("thread", "spawn a decode thread", e))?;
            receivers.push(rx);
            handles.push(handle);
        }
        Ok(BlockStream {
            receivers,
            handles,
            cancel,
            pool,
            position: 0,
            len: units.len(),
            failed: false,
            counts,
        })
    }

    /// Rows decoded so far by each reader, the blocks queued ahead included.
    pub fn decoded_rows(&self) -> DecodedRows {
        DecodedRows {
            pages: self.counts.pages.load(Ordering::Relaxed),
            parquet: self.counts.parquet.load(Ordering::Relaxed),
        }
    }

    /// The pool that consumed blocks go back to, so that workers reuse their buffers.
    pub fn recycler(&self) -> Pool {
        self.pool.clone()
    }
}

impl Iterator for BlockStream {
    type Item = Result<Block>;

    fn next(&mut self) -> Option<Result<Block>> {
        while !self.failed && self.position < self.len {
            let rx = &self.receivers[self.position % self.receivers.len()];
            match rx.recv() {
                Ok(Msg::Block(block)) => return Some(Ok(block)),
                Ok(Msg::UnitDone) => self.position += 1,
                Ok(Msg::Failed(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.failed = true;
                    return Some(Err(Error::WorkerPanicked { stage: "decode" }));
                }
            }
        }
        None
    }
}

impl Drop for BlockStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            // A worker that panicked already surfaced as a disconnected channel.
            let _ = handle.join();
        }
    }
}

struct Worker {
    dataset: Arc<Dataset>,
    plan: Arc<ColumnPlan>,
    units: Arc<Vec<Unit>>,
    options: ReadOptions,
    cancel: Arc<AtomicBool>,
    counts: Arc<ReadCounts>,
    pool: Pool,
    tx: Sender<Msg>,
    first: usize,
    step: usize,
}

impl Worker {
    fn run(self) {
        for pos in (self.first..self.units.len()).step_by(self.step) {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let unit = self.units[pos];
            let sent = match self.read_unit(pos, unit) {
                Ok(true) => self.tx.send(Msg::UnitDone).is_ok(),
                Ok(false) => false,
                Err(e) => {
                    let _ = self.tx.send(Msg::Failed(e));
                    false
                }
            };
            if !sent {
                return;
            }
        }
    }

    /// Decodes one row group and sends its blocks; `Ok(false)` when the consumer has gone.
    fn read_unit(&self, seq: usize, unit: Unit) -> Result<bool> {
        let shard = &self.dataset.shards[unit.shard];
        let mut reader = open_row_group(
            shard,
            &self.plan,
            unit.row_group,
            self.options.block_rows,
            self.options.decoder,
        )?;
        let decoder = Decoder {
            plan: &self.plan,
            on_invalid: self.options.on_invalid,
            transform: self.options.transform.as_deref(),
            split: self.options.split,
            path: &shard.path,
            row_group: unit.row_group,
            sums: self.options.sums.as_ref(),
        };
        let mut first_row = 0;
        while let Some(batch) = reader.next() {
            let batch = batch.map_err(|e| decode_failure(&reader, e))?;
            let count =
                if reader.reading_pages() { &self.counts.pages } else { &self.counts.parquet };
            count.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let mut block = self.pool.take();
            block.seq = seq;
            decoder.decode(&batch, first_row, &mut block)?;
            first_row += batch.num_rows();
            if self.tx.send(Msg::Block(block)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The record batches of one row group: read from its pages where [`PlainPages`] can, by the
/// parquet crate's reader otherwise, and by that reader from the first row not yet returned when
/// the page path meets a page it does not read.
pub(crate) struct RowGroupBatches<'a> {
    shard: &'a Shard,
    plan: &'a ColumnPlan,
    row_group: usize,
    /// The row group's metadata, parsed again from the footer ([`Shard::row_group_meta`]).
    meta: RowGroupMetaData,
    /// The shard's bytes, for the metadata, the page path and the parquet crate's reader alike.
    bytes: Source,
    batch_rows: usize,
    source: BatchSource,
}

enum BatchSource {
    Pages(PlainPages),
    Arrow(ParquetRecordBatchReader),
    Done,
}

impl RowGroupBatches<'_> {
    /// Whether the batches come from the page path (still, or up to the end of the row group).
    fn reading_pages(&self) -> bool {
        !matches!(self.source, BatchSource::Arrow(_))
    }
}

impl Iterator for RowGroupBatches<'_> {
    type Item = std::result::Result<Batch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match &mut self.source {
                BatchSource::Pages(pages) => match pages.next_batch() {
                    Ok(Some(batch)) => return Some(Ok(Batch::Plain(batch))),
                    Ok(None) => self.source = BatchSource::Done,
                    Err(Unsupported) => {
                        let (shard, plan) = (self.shard, self.plan);
                        let skip = shard.row_group_rows(self.row_group) - pages.rows_left();
                        tracing::debug!(
                            "{} row group {}: pages not plain f32, read by the parquet crate \
                             from row {skip}",
                            shard.path.display(),
                            self.row_group
                        );
                        match open_arrow_row_group(
                            shard,
                            plan,
                            (self.row_group, &self.meta),
                            &self.bytes,
                            self.batch_rows,
                            skip,
                        ) {
                            Ok(reader) => self.source = BatchSource::Arrow(reader),
                            Err(e) => {
                                self.source = BatchSource::Done;
                                return Some(Err(ArrowError::ExternalError(Box::new(e))));
                            }
                        }
                    }
                },
                BatchSource::Arrow(reader) => {
                    return match in_parquet_crate(|| reader.next()) {
                        Ok(next) => next.map(|batch| batch.map(Batch::Arrow)),
                        Err(panic) => {
                            self.source = BatchSource::Done;
                            Some(Err(ArrowError::ParquetError(panic)))
                        }
                    };
                }
                BatchSource::Done => return None,
            }
        }
    }
}

/// Opens a reader of one row group with the plan's columns only.
pub(crate) fn open_row_group<'a>(
    shard: &'a Shard,
    plan: &'a ColumnPlan,
    row_group: usize,
    batch_rows: usize,
    decoder: Decoding,
) -> Result<RowGroupBatches<'a>> {
    let bytes = match shard.io {
        IoMode::Mmap => Source::Mapped(shard.map()?),
        IoMode::Read => {
            let file = File::open(&shard.path).map_err(|e| Error::io(&shard.path, "open", e))?;
            Source::Read(Arc::new(file))
        }
    };
    let meta = shard.row_group_meta(row_group, &bytes)?;
    let pages = match decoder {
        Decoding::Arrow => None,
        Decoding::Pages => PlainPages::open(shard, plan, &meta, batch_rows, &bytes),
    };
    let source = match pages {
        Some(pages) => BatchSource::Pages(pages),
        None => BatchSource::Arrow(open_arrow_row_group(
            shard,
            plan,
            (row_group, &meta),
            &bytes,
            batch_rows,
            0,
        )?),
    };
    Ok(RowGroupBatches { shard, plan, row_group, meta, bytes, batch_rows, source })
}

/// The parquet crate's reader of one row group (its index and metadata) of the shard's `bytes`
/// with the plan's columns only, from row `skip`.
fn open_arrow_row_group(
    shard: &Shard,
    plan: &ColumnPlan,
    (row_group, meta): (usize, &RowGroupMetaData),
    bytes: &Source,
    batch_rows: usize,
    skip: usize,
) -> Result<ParquetRecordBatchReader> {
    let mask = plan.projection(shard);
    let rows = shard.row_group_rows(row_group);
    let selection = (skip > 0).then(|| {
        RowSelection::from(vec![RowSelector::skip(skip), RowSelector::select(rows - skip)])
    });
    let failed = |e: parquet::errors::ParquetError| Error::Decode {
        path: shard.path.clone(),
        row_group,
        columns: describe_columns(plan),
        source: Box::new(e),
    };
    let meta = shard.reader_meta(meta).map_err(failed)?;
    let built = match bytes {
        Source::Mapped(map) => build_reader(map.clone(), meta, mask, batch_rows, selection),
        Source::Read(_) => {
            // The parquet crate's `File` reader seeks a shared handle, so each reader opens its
            // own.
            let file = File::open(&shard.path).map_err(|e| Error::io(&shard.path, "open", e))?;
            build_reader(file, meta, mask, batch_rows, selection)
        }
    };
    built.map_err(failed)
}

/// The parquet crate's reader of the `mask` columns of the one row group in `meta` from
/// `input`, the shard's bytes.
fn build_reader<T: ChunkReader + 'static>(
    input: T,
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    batch_rows: usize,
    selection: Option<RowSelection>,
) -> parquet::errors::Result<ParquetRecordBatchReader> {
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta)
        .with_projection(mask)
        .with_row_groups(vec![0])
        .with_batch_size(batch_rows);
    match selection {
        Some(selection) => builder.with_row_selection(selection).build(),
        None => builder.build(),
    }
}

fn describe_columns(plan: &ColumnPlan) -> String {
    let names: Vec<String> = plan.read_columns().map(|c| format!("'{c}'")).collect();
    format!("columns {}", names.join(", "))
}

/// Builds the error for a row group that failed to decode. Only on this path, each column is
/// decoded on its own to find which one is broken, so the message can name it.
fn decode_failure(batches: &RowGroupBatches, error: arrow_schema::ArrowError) -> Error {
    let (shard, plan, row_group) = (batches.shard, batches.plan, batches.row_group);
    let culprit = plan.read_columns().find(|&name| {
        let single = ColumnPlan::single(name);
        let at = (row_group, &batches.meta);
        match open_arrow_row_group(shard, &single, at, &batches.bytes, DEFAULT_BLOCK_ROWS, 0) {
            Ok(reader) => {
                in_parquet_crate(|| reader.into_iter().any(|b| b.is_err())).unwrap_or(true)
            }
            Err(_) => true,
        }
    });
    let columns = match culprit {
        Some(name) => format!("column '{name}'"),
        None => describe_columns(plan),
    };
    Error::Decode { path: shard.path.clone(), row_group, columns, source: Box::new(error) }
}

thread_local! {
    /// Whether this thread is inside [`in_parquet_crate`].
    static IN_PARQUET_CRATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a call into the parquet crate's reader, and turns a panic in it into an error
/// message. That reader panics on some damaged bytes that its checks miss (arrow-buffer's bit
/// utilities, on a definition-level run longer than its page: found by `tests/pages.rs`'s byte
/// sweep), and a damaged file must fail like any other, naming its shard and row group, rather
/// than as a lost worker.
pub(crate) fn in_parquet_crate<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    IN_PARQUET_CRATE.with(|flag| flag.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_PARQUET_CRATE.with(|flag| flag.set(false));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        format!("the parquet crate's reader panicked: {message}")
    })
}

/// Keeps the panic hook quiet about the panics that `in_parquet_crate` turns into errors, so
/// that a damaged file's only message is its one-line error; every other panic is reported as
/// before. For binaries: the hook is the process's.
pub fn quiet_parquet_crate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_PARQUET_CRATE.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}
