//! The shuffler: an epoch's row-group order, and a bounded shuffle buffer that turns the stream
//! of decoded blocks into randomised mini-batches.
//!
//! A global permutation of all rows would need either every row in memory or a random read per
//! row, and Parquet offers neither cheaply. slope shuffles at two levels instead, as tf.data and
//! WebDataset do:
//!
//! 1. Each epoch visits the row groups (the units) in an order drawn from the seed and the epoch
//!    number ([`epoch_order`]).
//! 2. Rows of those units stream into a [`ShuffleBuffer`] of fixed capacity. Once it is full,
//!    each arriving row evicts a uniformly chosen resident row into the current mini-batch and
//!    takes its slot.
//! 3. At the end of the epoch the buffer drains in random order.
//!
//! Every row enters the buffer once and leaves it once, so each epoch uses every row exactly
//! once. A row can leave the buffer long after it entered, which mixes rows across row groups
//! and shards; the larger the buffer, the closer the result to a full shuffle.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::dataset::Unit;
use crate::decode::Block;
use crate::error::{Error, Result};
use crate::reader::BlockStream;
use crate::rng::Rng;

/// Batches the shuffler may queue ahead of the trainer. Four hide the jitter of a slow row group
/// without holding much memory (each batch is `batch_size × d` floats).
pub const BATCH_QUEUE: usize = 4;

/// Stream identifiers for seed derivation, so that no two uses of the root seed collide.
pub(crate) mod streams {
    pub const UNIT_ORDER: u64 = 1;
    pub const SHUFFLE_BUFFER: u64 = 2;
}

/// The order in which an epoch visits the row groups: file order when `shuffle` is off,
/// otherwise a permutation drawn from `seed` and `epoch` alone.
pub fn epoch_order(units: &[Unit], seed: u64, epoch: u64, shuffle: bool) -> Vec<Unit> {
    let mut order = units.to_vec();
    if shuffle {
        Rng::derived(seed, &[streams::UNIT_ORDER, epoch]).shuffle(&mut order);
    }
    order
}

/// A mini-batch: `rows` rows of `d` features and their targets, row after row.
///
/// The buffers keep the length of the largest batch they held; [`Batch::x`] and [`Batch::y`]
/// give the rows in use. Rows are written in place, never appended, so filling a batch neither
/// zeroes memory nor checks capacity per row.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    data: Vec<f32>,
    targets: Vec<f32>,
    pub rows: usize,
}

impl Batch {
    /// An empty batch with room for `rows` rows of `d` features.
    pub fn with_capacity(rows: usize, d: usize) -> Batch {
        Batch { data: vec![0.0; rows * d], targets: vec![0.0; rows], rows: 0 }
    }

    /// The features of the rows in use, `rows × d`, row after row.
    pub fn x(&self) -> &[f32] {
        let d = self.data.len().checked_div(self.targets.len()).unwrap_or(0);
        &self.data[..self.rows * d]
    }

    /// The targets of the rows in use.
    pub fn y(&self) -> &[f32] {
        &self.targets[..self.rows]
    }

    #[inline]
    fn push(&mut self, x: &[f32], y: f32) {
        let d = x.len();
        let i = self.rows;
        if self.targets.len() <= i {
            // Only a batch larger than any before it grows.
            self.targets.resize(i + 1, 0.0);
            self.data.resize((i + 1) * d, 0.0);
        }
        copy_row(&mut self.data[i * d..(i + 1) * d], x);
        self.targets[i] = y;
        self.rows += 1;
    }

    fn clear(&mut self) {
        self.rows = 0;
    }
}

/// Collects rows into batches of `size` and hands each full batch to `emit`, which returns an
/// empty batch to fill next (from a pool, so that no batch is allocated per step).
pub struct BatchWriter<F> {
    batch: Batch,
    size: usize,
    emit: F,
}

impl<E, F: FnMut(Batch) -> Result<Batch, E>> BatchWriter<F> {
    /// A writer of batches of `size` rows (a size of 0 is taken as 1), filling `batch` first.
    pub fn new(batch: Batch, size: usize, emit: F) -> Self {
        BatchWriter { batch, size: size.max(1), emit }
    }

    #[inline]
    fn push(&mut self, x: &[f32], y: f32) -> Result<(), E> {
        self.batch.push(x, y);
        if self.batch.rows == self.size {
            let full = std::mem::take(&mut self.batch);
            self.batch = (self.emit)(full)?;
            self.batch.clear();
        }
        Ok(())
    }

    /// The rows left to fill in the current batch, as its features (`rows × d`) and targets, so
    /// that a caller can write a run of rows with no check per row; [`BatchWriter::commit`]
    /// then counts them.
    #[inline]
    fn room(&mut self, d: usize) -> (&mut [f32], &mut [f32]) {
        let batch = &mut self.batch;
        if batch.targets.len() < self.size || batch.data.len() < self.size * d {
            batch.targets.resize(self.size, 0.0);
            batch.data.resize(self.size * d, 0.0);
        }
        let start = batch.rows;
        (&mut batch.data[start * d..self.size * d], &mut batch.targets[start..self.size])
    }

    /// Counts `rows` rows written through [`BatchWriter::room`], emitting the batch if full.
    #[inline]
    fn commit(&mut self, rows: usize) -> Result<(), E> {
        self.batch.rows += rows;
        debug_assert!(self.batch.rows <= self.size);
        if self.batch.rows == self.size {
            let full = std::mem::take(&mut self.batch);
            self.batch = (self.emit)(full)?;
            self.batch.clear();
        }
        Ok(())
    }

    /// The batch being filled, for a writer that is rebuilt around it later.
    fn into_batch(self) -> Batch {
        self.batch
    }

    /// Emits the last, partial batch, if any.
    pub fn finish(mut self) -> Result<(), E> {
        if self.batch.rows > 0 {
            let last = std::mem::take(&mut self.batch);
            (self.emit)(last)?;
        }
        Ok(())
    }
}

/// A fixed-capacity reservoir of rows from which mini-batch rows are drawn at random.
///
/// A slot holds a row's `d` features followed by its target, so that one eviction touches one
/// contiguous run of memory, and one prefetch covers it.
pub struct ShuffleBuffer {
    d: usize,
    capacity: usize,
    slots: SlotMemory,
    len: usize,
    rng: Rng,
    /// Slots drawn ahead of use, so that their rows can be prefetched: a ring whose entry
    /// `drawn % LOOKAHEAD` is the next to use, filled on the first eviction.
    ahead: [usize; LOOKAHEAD],
    drawn: usize,
    primed: bool,
}

/// Slots drawn ahead. A buffer larger than the CPU caches makes each eviction a cache miss per
/// row; drawing the slots this far ahead and prefetching them overlaps those misses with the
/// copying of the rows before. The draws are consumed in the order they are made, so results
/// are as deterministic as without it.
const LOOKAHEAD: usize = 16;

/// Asks the CPU to start loading `row` into cache.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: prefetching is a hint that never faults, and SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Zeroed `f32`s in an anonymous mapping that the kernel is asked to back with huge pages.
///
/// The default buffer (131,072 rows of 64 features) spans 34 MB, more than a CPU's TLB reaches
/// with 4 KiB pages, so every random eviction also walked the page table: profiles put most of
/// the shuffler's time on that. With 2 MiB pages the same buffer needs 17 TLB entries. Where the
/// advice is refused (transparent huge pages off), the mapping works as ordinary memory; where
/// the mapping itself fails, the slots live on the heap like any other allocation.
enum SlotMemory {
    Mapped(memmap2::MmapMut),
    Heap(Vec<f32>),
}

impl SlotMemory {
    fn zeroed(floats: usize) -> SlotMemory {
        let bytes = floats * size_of::<f32>();
        if bytes == 0 {
            return SlotMemory::Heap(Vec::new());
        }
        match memmap2::MmapMut::map_anon(bytes) {
            Ok(map) => {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                SlotMemory::Mapped(map)
            }
            _ => SlotMemory::Heap(vec![0.0; floats]),
        }
    }

    fn floats(&self) -> &[f32] {
        match self {
            // SAFETY: the mapping is page-aligned, zero-filled, a whole number of f32s long,
            // and every bit pattern is a valid f32; the borrow of `self` bounds the slice.
            SlotMemory::Mapped(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast(), map.len() / size_of::<f32>())
            },
            SlotMemory::Heap(v) => v,
        }
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        match self {
            // SAFETY: as in `floats`, and the mutable borrow of `self` makes it exclusive.
            SlotMemory::Mapped(map) => unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_mut_ptr().cast(),
                    map.len() / size_of::<f32>(),
                )
            },
            SlotMemory::Heap(v) => v,
        }
    }
}

impl ShuffleBuffer {
    /// A buffer of `capacity` rows of `d` features (capacity 0 passes rows straight through).
    pub fn new(d: usize, capacity: usize, seed: u64, epoch: u64) -> ShuffleBuffer {
        ShuffleBuffer {
            d,
            capacity,
            slots: SlotMemory::zeroed(capacity * (d + 1)),
            len: 0,
            rng: Rng::derived(seed, &[streams::SHUFFLE_BUFFER, epoch]),
            ahead: [0; LOOKAHEAD],
            drawn: 0,
            primed: false,
        }
    }

    /// Draws a slot to evict and prefetches its row.
    #[inline(always)]
    fn draw_slot(&mut self) -> usize {
        let stride = self.d + 1;
        let j = self.rng.below(self.capacity as u64) as usize;
        prefetch(&self.slots.floats()[j * stride..(j + 1) * stride]);
        j
    }

    /// The next slot to evict, keeping `LOOKAHEAD` slots drawn and prefetched ahead of it. Each
    /// slot is drawn `LOOKAHEAD` calls before its use, always in the same order.
    #[inline(always)]
    fn next_slot(&mut self) -> usize {
        if !self.primed {
            for k in 0..LOOKAHEAD {
                self.ahead[k] = self.draw_slot();
            }
            self.primed = true;
        }
        let at = self.drawn % LOOKAHEAD;
        let j = self.ahead[at];
        self.ahead[at] = self.draw_slot();
        self.drawn += 1;
        j
    }

    /// Whether no row is left in the buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer holds, for the start-up memory bound.
    pub fn bytes(d: usize, capacity: usize) -> u64 {
        (capacity * (d + 1) * 4) as u64
    }

    /// Feeds `rows` rows (`x` is `rows × d`), evicting rows into `out` once the buffer is full.
    pub fn push_rows<E, F>(
        &mut self,
        x: &[f32],
        y: &[f32],
        out: &mut BatchWriter<F>,
    ) -> Result<(), E>
    where
        F: FnMut(Batch) -> Result<Batch, E>,
    {
        let d = self.d;
        let stride = d + 1;
        let rows = y.len();
        let mut at = 0;
        if self.capacity == 0 {
            for (row, &target) in x.chunks_exact(d).zip(y) {
                out.push(row, target)?;
            }
            return Ok(());
        }
        while at < rows && self.len < self.capacity {
            let i = self.len;
            let slot = &mut self.slots.floats_mut()[i * stride..(i + 1) * stride];
            copy_row(&mut slot[..d], &x[at * d..(at + 1) * d]);
            slot[d] = y[at];
            self.len += 1;
            at += 1;
        }
        // The buffer is full: each row evicts one, written straight into the batch a run of
        // rows at a time.
        while at < rows {
            let (bx, by) = out.room(d);
            let run = by.len().min(rows - at);
            let incoming = x[at * d..(at + run) * d].chunks_exact(d).zip(&y[at..at + run]);
            let outgoing = bx.chunks_exact_mut(d).zip(by.iter_mut());
            for ((row, &target), (dst, dst_target)) in incoming.zip(outgoing) {
                let j = self.next_slot();
                let slot = &mut self.slots.floats_mut()[j * stride..(j + 1) * stride];
                copy_row(dst, &slot[..d]);
                *dst_target = slot[d];
                copy_row(&mut slot[..d], row);
                slot[d] = target;
            }
            at += run;
            out.commit(run)?;
        }
        Ok(())
    }

    /// Empties the buffer into `out` in random order.
    pub fn drain<E, F>(&mut self, out: &mut BatchWriter<F>) -> Result<(), E>
    where
        F: FnMut(Batch) -> Result<Batch, E>,
    {
        self.drain_up_to(usize::MAX, out)
    }

    /// Moves up to `rows` rows, drawn at random, from the buffer into `out`; draining in pieces
    /// gives the same rows in the same order as draining at once.
    pub fn drain_up_to<E, F>(&mut self, rows: usize, out: &mut BatchWriter<F>) -> Result<(), E>
    where
        F: FnMut(Batch) -> Result<Batch, E>,
    {
        let d = self.d;
        let stride = d + 1;
        let stop = self.len.saturating_sub(rows);
        while self.len > stop {
            let j = self.rng.below(self.len as u64) as usize;
            let last = self.len - 1;
            let slots = self.slots.floats_mut();
            out.push(&slots[j * stride..j * stride + d], slots[j * stride + d])?;
            slots.copy_within(last * stride..(last + 1) * stride, j * stride);
            self.len = last;
        }
        Ok(())
    }
}

/// Copies one row. Rows are short (a few hundred bytes), where a call to `memcpy` per row costs
/// more than the copy; 32-byte pieces compile to inline vector moves.
#[inline]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (a, b) in (&mut d8).zip(&mut s8) {
        let piece: [f32; 8] = std::array::from_fn(|k| b[k]);
        a.copy_from_slice(&piece);
    }
    for (a, b) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *a = *b;
    }
}

/// Where the shuffle buffer's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShuffleOn {
    /// Its own thread, `slope-shuffle`, which fills batches while the trainer computes: with
    /// cores to spare, shuffling then overlaps training.
    OwnThread,
    /// The consumer's thread, a batch's worth of rows at a time, when it asks for a batch. On a
    /// machine with as few cores as decode workers, a separate shuffler only competes with them
    /// for the same cores, and every batch costs a hand-off between threads; here the batch is
    /// still in the cache when the trainer reads it.
    Caller,
}

impl ShuffleOn {
    /// The choice for a trainer with `threads` threads: the shuffler gets its own thread once
    /// there is a core for it beside two decode workers and the trainer.
    pub fn for_threads(threads: usize) -> ShuffleOn {
        if threads >= 4 { ShuffleOn::OwnThread } else { ShuffleOn::Caller }
    }

    /// Decode workers for a shuffled epoch with a budget of `threads`: the shuffle keeps one
    /// thread busy throughout (the trainer's below four threads, its own from four), so the
    /// workers take the rest of the budget, and at least one.
    ///
    /// Counting the shuffle in the budget keeps the busy threads at the cores the user gave.
    /// With as many workers as threads, on two cores the workers time-sliced the shuffle, which
    /// is the epoch's critical path (10M rows × 64, 2 cores, alternated runs: minibatch 0.74 →
    /// 0.67 s, sgd 0.89 → 0.84 s, peak RSS 178 → 105 MiB). Where a row costs more to decode
    /// than to shuffle, the one worker is the bottleneck instead, and on two cores it is a
    /// wash (the parquet crate's reader: 1.07 against 1.12 s); `--threads 3` then gives two.
    pub fn decode_workers(threads: usize) -> usize {
        threads.saturating_sub(1).max(1)
    }
}

/// One epoch's mini-batches from a stream of blocks, as an iterator.
///
/// On its own thread ([`ShuffleOn::OwnThread`]):
/// 1. The thread pulls blocks from the decode workers in the epoch's row-group order and pushes
///    their rows through a [`ShuffleBuffer`].
/// 2. Each full batch goes to the consumer over a channel bounded at [`BATCH_QUEUE`]; the
///    consumer hands batches it is done with back through [`BatchStream::recycler`], and the
///    thread refills those rather than allocating.
/// 3. At the end the thread drains the buffer, sends the partial last batch, then `End`; on an
///    error it sends the error. If the consumer drops the stream, the thread's next send fails
///    and it winds down, dropping the block stream, which stops and joins the decode workers;
///    the drop joins the thread.
///
/// On the caller's thread ([`ShuffleOn::Caller`]) the same buffer, with the same random draws,
/// takes a batch's worth of rows from the current block whenever no full batch is waiting, so
/// both give the same batches.
pub struct BatchStream {
    source: Source,
    spare: Sender<Batch>,
    skipped: u64,
    done: bool,
}

enum Source {
    Thread { rx: Option<Receiver<Msg>>, handle: Option<JoinHandle<()>> },
    Caller(Box<InlineShuffler>),
}

/// Where a consumer returns batches for reuse.
#[derive(Clone)]
pub struct BatchRecycler(Sender<Batch>);

impl BatchRecycler {
    pub fn give(&self, batch: Batch) {
        // A full pool means the shuffler has spares; the batch is simply freed.
        let _ = self.0.try_send(batch);
    }
}

/// A spare batch from the pool, or a new one.
fn fresh_batch(spares: &Receiver<Batch>, rows: usize, d: usize) -> Batch {
    spares.try_recv().unwrap_or_else(|_| Batch::with_capacity(rows, d))
}

impl BatchStream {
    /// Starts the shuffler over `blocks` with a buffer of `capacity` rows (0: keep order),
    /// emitting batches of `batch_rows` rows of `d` features.
    pub fn start(
        blocks: BlockStream,
        d: usize,
        capacity: usize,
        batch_rows: usize,
        seed: u64,
        epoch: u64,
        on: ShuffleOn,
    ) -> Result<BatchStream> {
        let (spare, spares) = bounded::<Batch>(BATCH_QUEUE + 2);
        let buffer = ShuffleBuffer::new(d, capacity, seed, epoch);
        let source = match on {
            ShuffleOn::OwnThread => spawn_shuffler(blocks, buffer, spares, d, batch_rows)?,
            ShuffleOn::Caller => Source::Caller(Box::new(InlineShuffler {
                recycle: blocks.recycler(),
                blocks,
                buffer,
                spares,
                filling: None,
                ready: std::collections::VecDeque::new(),
                block: None,
                batch_rows,
                d,
                skipped: 0,
                draining: false,
                ended: false,
            })),
        };
        Ok(BatchStream { source, spare, skipped: 0, done: false })
    }

    /// Where consumed batches go back for reuse.
    pub fn recycler(&self) -> BatchRecycler {
        BatchRecycler(self.spare.clone())
    }

    /// Rows dropped as invalid in this epoch (complete once the stream has ended).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

fn spawn_shuffler(
    mut blocks: BlockStream,
    mut buffer: ShuffleBuffer,
    spares: Receiver<Batch>,
    d: usize,
    batch_rows: usize,
) -> Result<Source> {
    let (tx, rx) = bounded(BATCH_QUEUE);
    let handle = std::thread::Builder::new()
        .name("slope-shuffle".into())
        .spawn(move || {
            let emit = |batch: Batch| match tx.send(Msg::Batch(batch)) {
                Ok(()) => Ok(fresh_batch(&spares, batch_rows, d)),
                Err(_) => Err(None),
            };
            let mut writer =
                BatchWriter::new(fresh_batch(&spares, batch_rows, d), batch_rows, emit);
            let mut skipped = 0u64;
            let recycle = blocks.recycler();
            let run = (|| -> Result<(), Option<Error>> {
                for block in &mut blocks {
                    let block = block.map_err(Some)?;
                    skipped += block.skipped as u64;
                    buffer.push_rows(&block.x, &block.y, &mut writer)?;
                    recycle.give(block);
                }
                buffer.drain(&mut writer)?;
                writer.finish()
            })();
            let last = match run {
                Ok(()) => Msg::End { skipped },
                Err(Some(e)) => Msg::Failed(e),
                Err(None) => return,
            };
            let _ = tx.send(last);
        })
        .map_err(|e| Error::io("thread", "spawn the shuffle thread", e))?;
    Ok(Source::Thread { rx: Some(rx), handle: Some(handle) })
}

/// The shuffler run by the consumer's own thread, one block per call when no batch is ready.
struct InlineShuffler {
    blocks: BlockStream,
    recycle: crate::reader::Pool,
    buffer: ShuffleBuffer,
    spares: Receiver<Batch>,
    /// The batch being filled, carried from one block to the next.
    filling: Option<Batch>,
    /// Full batches not yet handed out (at most one).
    ready: std::collections::VecDeque<Batch>,
    /// The block being fed to the buffer, and how many of its rows have been.
    block: Option<(Block, usize)>,
    batch_rows: usize,
    d: usize,
    skipped: u64,
    /// The blocks are all read; the buffer is draining, a batch at a time.
    draining: bool,
    ended: bool,
}

impl InlineShuffler {
    fn next(&mut self) -> Option<Result<Batch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Some(Ok(batch));
            }
            if self.ended {
                return None;
            }
            let (rows, d) = (self.batch_rows, self.d);
            let spares = &self.spares;
            let batch = self.filling.take().unwrap_or_else(|| fresh_batch(spares, rows, d));
            let ready = &mut self.ready;
            let emit = |full: Batch| {
                ready.push_back(full);
                Ok::<_, std::convert::Infallible>(fresh_batch(spares, rows, d))
            };
            let mut writer = BatchWriter::new(batch, rows, emit);
            if self.draining {
                // One batch's worth at a time, so that the drain never holds the whole buffer
                // again as batches.
                let Ok(()) = self.buffer.drain_up_to(rows, &mut writer);
                if self.buffer.is_empty() {
                    let Ok(()) = writer.finish();
                    self.ended = true;
                } else {
                    self.filling = Some(writer.into_batch());
                }
                continue;
            }
            // A block is fed a batch's worth of rows at a time, so that each batch reaches the
            // trainer while it is still in this core's cache, and the one or two batches in
            // use stay there; the rows and their order are the same as feeding whole blocks.
            if let Some((block, fed)) = &mut self.block {
                let end = block.rows.min(*fed + rows);
                let (x, y) = (&block.x[*fed * d..end * d], &block.y[*fed..end]);
                let Ok(()) = self.buffer.push_rows(x, y, &mut writer);
                *fed = end;
                self.filling = Some(writer.into_batch());
                if end == block.rows
                    && let Some((block, _)) = self.block.take()
                {
                    self.recycle.give(block);
                }
                continue;
            }
            match self.blocks.next() {
                Some(Ok(block)) => {
                    self.skipped += block.skipped as u64;
                    self.block = Some((block, 0));
                    self.filling = Some(writer.into_batch());
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {
                    self.draining = true;
                    self.filling = Some(writer.into_batch());
                }
            }
        }
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        let rx = match &mut self.source {
            Source::Caller(inline) => {
                let next = inline.next();
                match &next {
                    None => {
                        self.skipped = inline.skipped;
                        self.done = true;
                    }
                    Some(Err(_)) => self.done = true,
                    Some(Ok(_)) => {}
                }
                return next;
            }
            Source::Thread { rx, .. } => rx.as_ref()?,
        };
        match rx.recv() {
            Ok(Msg::Batch(batch)) => return Some(Ok(batch)),
            Ok(Msg::End { skipped }) => self.skipped = skipped,
            Ok(Msg::Failed(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            Err(_) => {
                self.done = true;
                return Some(Err(Error::WorkerPanicked { stage: "shuffle" }));
            }
        }
        self.done = true;
        None
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        if let Source::Thread { rx, handle } = &mut self.source {
            *rx = None;
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
    }
}

/// A message from the shuffler thread to the trainer.
enum Msg {
    Batch(Batch),
    /// The epoch's rows are all sent; `skipped` rows were dropped as invalid.
    End {
        skipped: u64,
    },
    Failed(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs rows 0..n (feature = row id) through a buffer and returns the emitted ids in order.
    fn shuffled(n: usize, capacity: usize, batch: usize, seed: u64) -> Vec<Vec<f32>> {
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut batches = Vec::new();
        let mut writer = BatchWriter::new(Batch::default(), batch, |b: Batch| {
            batches.push(b.x().to_vec());
            Ok::<_, ()>(Batch::default())
        });
        let mut buffer = ShuffleBuffer::new(1, capacity, seed, 0);
        for chunk in x.chunks(7) {
            buffer.push_rows(chunk, chunk, &mut writer).unwrap();
        }
        buffer.drain(&mut writer).unwrap();
        writer.finish().unwrap();
        batches
    }

    /// The reservoir written out row by row, with no lookahead and no runs: eviction `n` takes
    /// the slot of the `n`-th draw, and the drain's draws follow the `LOOKAHEAD` drawn ahead
    /// of the last eviction.
    fn reference(n: usize, capacity: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::derived(seed, &[streams::SHUFFLE_BUFFER, 0]);
        let mut draws = std::collections::VecDeque::new();
        let mut slots = Vec::new();
        let mut out = Vec::new();
        for row in (0..n).map(|i| i as f32) {
            if slots.len() < capacity {
                slots.push(row);
                continue;
            }
            while draws.len() <= LOOKAHEAD {
                draws.push_back(rng.below(capacity as u64) as usize);
            }
            let j = draws.pop_front().unwrap();
            out.push(slots[j]);
            slots[j] = row;
        }
        while !slots.is_empty() {
            let j = rng.below(slots.len() as u64) as usize;
            out.push(slots.swap_remove(j));
        }
        out
    }

    #[test]
    fn evictions_follow_the_seeded_draws_in_order() {
        // Batches of 10 and blocks of 7 make runs that end inside a block and inside a batch.
        for (n, capacity) in [(500, 64), (64, 64), (40, 64), (65, 64), (300, 1)] {
            let got: Vec<f32> = shuffled(n, capacity, 10, 5).concat();
            assert_eq!(got, reference(n, capacity, 5), "{n} rows, capacity {capacity}");
        }
    }

    #[test]
    fn batches_have_the_requested_size_except_the_last() {
        let batches = shuffled(100, 16, 32, 1);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [32, 32, 32, 4]);
    }

    #[test]
    fn a_batch_size_of_zero_is_one() {
        let mut sizes = Vec::new();
        let mut writer = BatchWriter::new(Batch::default(), 0, |b: Batch| {
            sizes.push(b.rows);
            Ok::<_, ()>(Batch::default())
        });
        let mut buffer = ShuffleBuffer::new(2, 3, 1, 0);
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        buffer.push_rows(&x, &x[..10], &mut writer).unwrap();
        buffer.drain(&mut writer).unwrap();
        writer.finish().unwrap();
        assert_eq!(sizes, [1; 10]);
    }

    #[test]
    fn zero_capacity_keeps_order() {
        let rows: Vec<f32> = shuffled(50, 0, 8, 1).concat();
        assert_eq!(rows, (0..50).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn the_shuffle_takes_one_thread_of_the_budget() {
        let workers: Vec<usize> = (1..=5).map(ShuffleOn::decode_workers).collect();
        // One thread cannot be split: a one-thread run keeps its worker beside the trainer.
        assert_eq!(workers, [1, 1, 2, 3, 4]);
    }

    #[test]
    fn different_seeds_give_different_orders() {
        assert_ne!(shuffled(200, 64, 10, 1), shuffled(200, 64, 10, 2));
        assert_eq!(shuffled(200, 64, 10, 3), shuffled(200, 64, 10, 3));
    }
}
