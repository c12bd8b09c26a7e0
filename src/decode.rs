//! Decoded row groups: batches of columns turned into row-major `f32` blocks.
//!
//! A reader hands over one column at a time (`Batch`): Arrow arrays from the parquet crate's
//! reader, or a plain `f32` column's bytes as its pages hold them. The trainer wants rows: a
//! mini-batch is a run of rows drawn from anywhere in the shuffle buffer, and the gradient kernel
//! walks a row at a time. So each batch is transposed once, here, on a decode worker, into a
//! [`Block`] whose `x` holds `rows × d` features in row order and whose `y` holds the target.
//! Every Arrow number type is converted to `f32`; a fixed-size list column spreads over `width`
//! adjacent features.
//!
//! Validity is checked here too, so that a null, NaN or infinity is reported with the shard, row
//! group, column and row where it sits, or dropped with its row under `--on-invalid skip`.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_buffer::Buffer;
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

use crate::dataset::ColumnPlan;
use crate::error::{Error, InvalidKind, Result};
use crate::pages::PlainBatch;
use crate::reader::BlockSums;

/// What to do with a row that holds a null, NaN or infinity in a chosen column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Stop with an error that names the shard, row group, column and row.
    #[default]
    Error,
    /// Drop the row and count it.
    Skip,
}

/// Which side of a hashed train/validation split a stream keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Validation,
}

/// A deterministic split of rows by a hash of their position (file name, row group, row), so
/// that the same rows are held out in every epoch, after every resume, and whatever the order
/// in which shards are listed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Split {
    /// Fraction of rows in the validation part.
    pub fraction: f64,
    pub part: Part,
}

impl Split {
    /// Whether row `row` of `row_group` in the file whose name hashes to `file` is kept.
    fn keeps(&self, file: u64, row_group: usize, row: usize) -> bool {
        let h = crate::rng::derive_seed(file, &[row_group as u64, row as u64]);
        let validation = ((h >> 11) as f64 / (1u64 << 53) as f64) < self.fraction;
        validation == (self.part == Part::Validation)
    }
}

/// An affine map applied to every feature as it is decoded: `x' = (x - shift) * scale`.
/// Standardisation uses it, so that workers rather than the trainer pay for it.
#[derive(Clone, Debug)]
pub struct Affine {
    pub shift: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Affine {
    /// Maps every row of `x` (rows of `shift.len()` values), with AVX where the CPU has it:
    /// the same two roundings per value either way.
    fn apply(&self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX, checked just above.
            return unsafe { self.apply_avx(x) };
        }
        self.apply_rows(x)
    }

    #[inline(always)]
    fn apply_rows(&self, x: &mut [f32]) {
        for row in x.chunks_exact_mut(self.shift.len()) {
            for ((v, s), k) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                *v = (*v - s) * k;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn apply_avx(&self, x: &mut [f32]) {
        self.apply_rows(x)
    }
}

/// One batch of rows of a row group, as a reader hands it to the [`Decoder`].
pub(crate) enum Batch {
    /// Arrow arrays, from the parquet crate's reader.
    Arrow(RecordBatch),
    /// Plain `f32` columns as their pages hold them, from the page path; never with kept
    /// columns.
    Plain(PlainBatch),
}

impl Batch {
    pub fn num_rows(&self) -> usize {
        match self {
            Batch::Arrow(batch) => batch.num_rows(),
            Batch::Plain(batch) => batch.rows,
        }
    }
}

/// One chosen column of a [`Batch`].
#[derive(Clone, Copy)]
enum Column<'b> {
    Array(&'b ArrayRef),
    /// Native-endian `f32` bytes in pieces, at any alignment ([`PlainBatch`]).
    Plain(&'b [Buffer]),
}

impl<'b> Column<'b> {
    /// The values as native-endian `f32` bytes in pieces, when the column is plain `f32`
    /// without nulls: an Arrow array's one buffer, or the page path's pieces.
    fn f32_pieces(self) -> Option<&'b [Buffer]> {
        match self {
            Column::Plain(pieces) => Some(pieces),
            Column::Array(array) => {
                (array.data_type() == &DataType::Float32 && array.null_count() == 0).then(|| {
                    std::slice::from_ref(array.as_primitive::<Float32Type>().values().inner())
                })
            }
        }
    }

    /// Writes rows `rows` into the row-major buffer `out`, which holds those rows and no
    /// others, `width` values a row at `offset`.
    fn write(
        self,
        out: &mut [f32],
        stride: usize,
        offset: usize,
        width: usize,
        rows: std::ops::Range<usize>,
    ) {
        match self {
            Column::Array(array) => write_feature(array, out, stride, offset, width, rows),
            Column::Plain(pieces) => {
                debug_assert_eq!(width, 1, "a plain column is one feature");
                write_pieces(pieces, out, stride, offset, rows)
            }
        }
    }
}

/// Rows decoded from part of one row group.
#[derive(Debug, Default)]
pub struct Block {
    /// Position of the row group in the epoch's order.
    pub seq: usize,
    /// Number of rows held.
    pub rows: usize,
    /// Features, `rows × d`, row after row; empty when every row was summed into
    /// [`Block::sums`] as it was decoded, since nothing reads such rows again.
    pub x: Vec<f32>,
    /// Target values, one per row; empty when the plan has no target.
    pub y: Vec<f32>,
    /// Rows dropped for invalid values.
    pub skipped: usize,
    /// The kept columns (`predict --keep`), filtered like the rows.
    pub passthrough: Option<RecordBatch>,
    /// Partial sums over the block's rows, computed by the decode worker when its stream was
    /// given a [`crate::reader::BlockSums`]; empty otherwise.
    pub sums: Vec<f64>,
}

/// Converts record batches of one shard into blocks.
pub(crate) struct Decoder<'a> {
    pub plan: &'a ColumnPlan,
    pub on_invalid: OnInvalid,
    pub transform: Option<&'a Affine>,
    pub split: Option<Split>,
    pub path: &'a Path,
    pub row_group: usize,
    /// Sums to compute over the block's rows into [`Block::sums`].
    pub sums: Option<&'a BlockSums>,
}

impl Decoder<'_> {
    /// Fills `block` from `batch`, whose first row is row `first_row` of the row group.
    pub fn decode(&self, batch: &Batch, first_row: usize, block: &mut Block) -> Result<()> {
        let plan = self.plan;
        let rows = batch.num_rows();
        let d = plan.d;
        block.rows = rows;
        block.skipped = 0;
        block.y.clear();
        let mut bad: Vec<bool> = Vec::new();

        // The page path's columns come in the order of `plan.read_columns()`, and hold no nulls.
        let column = |i: usize, name: &str, width: usize, bad: &mut Vec<bool>| match batch {
            Batch::Arrow(batch) => {
                let array = self.column(batch, name)?;
                self.check_nulls(array, name, first_row, width, bad)?;
                Ok(Column::Array(array))
            }
            Batch::Plain(batch) => Ok(Column::Plain(batch.column(i))),
        };
        let mut arrays = Vec::with_capacity(plan.features.len());
        for (i, col) in plan.features.iter().enumerate() {
            arrays.push(column(i, &col.name, col.width, &mut bad)?);
        }
        let target = match &plan.target {
            Some(name) => {
                let target = column(plan.features.len(), name, 1, &mut bad)?;
                block.y.resize(rows, 0.0);
                Some(target)
            }
            None => None,
        };
        block.sums.clear();
        // The sums are added chunk by chunk as the rows are decoded, while they are in cache,
        // as long as no row can be dropped from the block (no nulls, no split); rows from
        // `summed` on are summed at the end. Either way the chunks start at the same rows.
        let mut fused = self.sums.filter(|_| bad.is_empty() && self.split.is_none());
        let mut summed = 0;
        // While each tile is summed as soon as it is decoded, no row is read again, so every
        // tile is decoded into the block's first tile, which stays in the cache, rather than to
        // its own rows: a block costs no writes to memory. Once a tile cannot be summed so (a
        // value to check), it and the rows after it go to their own rows.
        let mut in_place = fused.is_some() && target.is_some() && TRANSPOSE_ROWS == SUMS_CHUNK_ROWS;
        // Every element in use is overwritten below, so a recycled block keeps its old
        // contents rather than paying to zero them.
        block.x.resize(if in_place { rows.min(TRANSPOSE_ROWS) } else { rows } * d, 0.0);
        // Rows whose target is written.
        let mut y_done = 0;
        // Runs of eight plain `f32` columns at adjacent offsets (the common case) are transposed
        // eight at a time, a 32-byte row segment per store; the rest column by column. Either
        // way a tile of rows at a time, so that the rows being written stay in cache while every
        // column adds its values, instead of each column sweeping the whole block.
        let (groups, rest) = f32_groups(&arrays, plan);
        // Where a tile's values of a column span two pieces, they are joined here (allocated
        // on first use: most blocks need none).
        let mut joined: [Vec<u8>; 8] = Default::default();
        // Whether any feature may be NaN or infinite, swept tile by tile while the tile is in
        // cache; a sweep of the whole block afterwards would read it back from further away.
        let mut x_suspect = false;
        let mut x_checked = rows;
        for start in (0..rows).step_by(TRANSPOSE_ROWS) {
            let range = start..(start + TRANSPOSE_ROWS).min(rows);
            let chunk_end = range.end == rows || range.end.is_multiple_of(SUMS_CHUNK_ROWS);
            let bytes = range.start * size_of::<f32>()..range.end * size_of::<f32>();
            // Where this tile's rows are written.
            let at = if in_place { 0..range.len() * d } else { range.start * d..range.end * d };
            for (columns, offset) in &groups {
                let mut k = 0;
                let cols = joined.each_mut().map(|buf| {
                    let col = tile_bytes(columns[k], bytes.clone(), buf);
                    k += 1;
                    col
                });
                transpose8(cols, &mut block.x[at.clone()], d, *offset);
            }
            for &i in &rest {
                let (col, offset) = (&plan.features[i], plan.offsets[i]);
                arrays[i].write(&mut block.x[at.clone()], d, offset, col.width, range.clone());
            }
            let tile = &mut block.x[at.clone()];
            if !x_suspect && any_non_finite(tile) {
                // This tile and the rest are standardised after the slow check below, which
                // must see their values as stored.
                x_suspect = true;
                x_checked = range.start;
            }
            // Standardised here, while the tile is in cache, rather than by a sweep of the block.
            // The tiles before a suspect one held only finite values.
            if let (Some(affine), false) = (self.transform, x_suspect) {
                affine.apply(tile);
            }
            if let (Some(sums), Some(target), true) = (fused, target, chunk_end) {
                let chunk = summed..range.end;
                target.write(&mut block.y[chunk.clone()], 1, 0, 1, chunk.clone());
                y_done = chunk.end;
                if x_suspect || any_non_finite(&block.y[chunk.clone()]) {
                    // The slow check below decides which rows stay.
                    fused = None;
                } else {
                    // In place, the chunk is this tile.
                    debug_assert!(!in_place || chunk == range);
                    let x = if in_place { at.clone() } else { chunk.start * d..chunk.end * d };
                    sums.add(&block.x[x], &block.y[chunk.clone()], &mut block.sums);
                    summed = chunk.end;
                }
            }
            if in_place && fused.is_none() {
                block.x.resize(rows * d, 0.0);
                block.x.copy_within(at, range.start * d);
                in_place = false;
            }
        }
        if let Some(target) = target {
            target.write(&mut block.y[y_done..rows], 1, 0, 1, y_done..rows);
        }
        if x_suspect || any_non_finite(&block.y[summed..]) {
            self.find_non_finite(block, first_row, x_checked, &mut bad)?;
        }
        if in_place {
            // Every row was summed as it was decoded, so none is left to check, standardise or
            // read.
            debug_assert_eq!((summed, x_checked), (rows, rows));
            block.x.clear();
        } else if let Some(affine) = self.transform {
            // Rows that are then dropped are standardised for nothing, which is harmless.
            affine.apply(&mut block.x[x_checked * d..]);
        }

        block.passthrough = match batch {
            Batch::Arrow(batch) if !plan.keep.is_empty() => {
                let columns: Vec<ArrayRef> = plan
                    .keep
                    .iter()
                    .map(|k| self.column(batch, k).cloned())
                    .collect::<Result<_>>()?;
                let keep = RecordBatch::try_new(keep_schema(batch, &plan.keep), columns)
                    .map_err(|e| self.decode_error(&plan.keep.join(", "), e))?;
                Some(keep)
            }
            // The page path declines plans with kept columns (`PlainPages::open`).
            _ => None,
        };
        let skipped = bad.iter().filter(|&&b| b).count();
        let mut drop = bad;
        if let Some(split) = self.split {
            let file =
                self.path.file_name().map_or(0, |n| crate::checkpoint::fnv1a(n.as_encoded_bytes()));
            drop.resize(rows, false);
            let mut skipped_elsewhere = 0;
            for (r, d) in drop.iter_mut().enumerate() {
                let kept = split.keeps(file, self.row_group, first_row + r);
                if !kept {
                    // A bad row in the other part is that part's to report.
                    skipped_elsewhere += usize::from(*d);
                    *d = true;
                }
            }
            if drop.iter().any(|&d| d) {
                self.drop_rows(block, &drop)?;
            }
            block.skipped = skipped - skipped_elsewhere;
        } else if skipped > 0 {
            self.drop_rows(block, &drop)?;
            block.skipped = skipped;
        }
        if let Some(sums) = self.sums.filter(|_| summed < block.rows) {
            let kept = summed..block.rows;
            sums.add(&block.x[kept.start * d..kept.end * d], &block.y[kept], &mut block.sums);
        }
        Ok(())
    }

    fn column<'b>(&self, batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
        batch.column_by_name(name).ok_or_else(|| Error::MissingColumn {
            path: self.path.to_path_buf(),
            column: name.to_string(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn decode_error(
        &self,
        columns: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Decode {
            path: self.path.to_path_buf(),
            row_group: self.row_group,
            columns: columns.to_string(),
            source: Box::new(e),
        }
    }

    /// Reports, or marks for dropping, rows where `array` (or a list's values) is null.
    fn check_nulls(
        &self,
        array: &ArrayRef,
        name: &str,
        first_row: usize,
        width: usize,
        bad: &mut Vec<bool>,
    ) -> Result<()> {
        let rows = array.len();
        let mut null_rows: Vec<usize> = Vec::new();
        if array.null_count() > 0 {
            null_rows.extend((0..rows).filter(|&r| array.is_null(r)));
        }
        if let DataType::FixedSizeList(..) = array.data_type() {
            let list = array.as_fixed_size_list();
            let values = list.values();
            if values.null_count() > 0 {
                let start = list.value_offset_at(0);
                for r in 0..rows {
                    if (0..width).any(|k| values.is_null(start + r * width + k)) {
                        null_rows.push(r);
                    }
                }
            }
        }
        if null_rows.is_empty() {
            return Ok(());
        }
        match self.on_invalid {
            OnInvalid::Error => {
                let row = first_row + null_rows.iter().min().copied().unwrap_or(0);
                Err(self.invalid(name, InvalidKind::Null, row))
            }
            OnInvalid::Skip => {
                bad.resize(rows, false);
                for r in null_rows {
                    bad[r] = true;
                }
                Ok(())
            }
        }
    }

    /// Reports, or marks for dropping, rows holding NaN or an infinity.
    /// Finds the rows with a NaN or infinite value, once a sweep has seen one: an error naming
    /// the first, or with `--on-invalid skip` every such row marked in `bad`.
    fn find_non_finite(
        &self,
        block: &Block,
        first_row: usize,
        x_from: usize,
        bad: &mut Vec<bool>,
    ) -> Result<()> {
        let d = self.plan.d;
        for r in 0..block.rows {
            if bad.get(r).copied().unwrap_or(false) {
                continue;
            }
            let row = &block.x[r * d..(r + 1) * d];
            let x_found = if r < x_from { None } else { row.iter().position(|v| !v.is_finite()) };
            let found = match x_found {
                Some(i) => Some((self.feature_column_of(i), row[i])),
                None => match block.y.get(r) {
                    Some(v) if !v.is_finite() => {
                        Some((self.plan.target.clone().unwrap_or_default(), *v))
                    }
                    _ => None,
                },
            };
            let Some((column, value)) = found else { continue };
            match self.on_invalid {
                OnInvalid::Error => {
                    let kind =
                        if value.is_nan() { InvalidKind::NaN } else { InvalidKind::Infinite };
                    return Err(self.invalid(&column, kind, first_row + r));
                }
                OnInvalid::Skip => {
                    bad.resize(block.rows, false);
                    bad[r] = true;
                }
            }
        }
        Ok(())
    }

    fn feature_column_of(&self, feature: usize) -> String {
        let plan = self.plan;
        let i = plan.offsets.partition_point(|&o| o <= feature) - 1;
        plan.features[i].name.clone()
    }

    fn invalid(&self, column: &str, kind: InvalidKind, row: usize) -> Error {
        Error::InvalidValue {
            path: self.path.to_path_buf(),
            row_group: self.row_group,
            column: column.to_string(),
            kind,
            row,
        }
    }

    /// Removes the rows marked in `bad`, keeping the others in order.
    fn drop_rows(&self, block: &mut Block, bad: &[bool]) -> Result<()> {
        let d = self.plan.d;
        let mut kept = 0;
        for r in 0..block.rows {
            if bad.get(r).copied().unwrap_or(false) {
                continue;
            }
            if kept != r {
                block.x.copy_within(r * d..(r + 1) * d, kept * d);
                if !block.y.is_empty() {
                    block.y[kept] = block.y[r];
                }
            }
            kept += 1;
        }
        block.rows = kept;
        block.x.truncate(kept * d);
        block.y.truncate(if block.y.is_empty() { 0 } else { kept });
        if let Some(keep) = &block.passthrough {
            let mask = BooleanArray::from(bad.iter().map(|b| !b).collect::<Vec<bool>>());
            let filtered = arrow_select::filter::filter_record_batch(keep, &mask)
                .map_err(|e| self.decode_error(&self.plan.keep.join(", "), e))?;
            block.passthrough = Some(filtered);
        }
        Ok(())
    }
}

fn keep_schema(batch: &RecordBatch, keep: &[String]) -> std::sync::Arc<arrow_schema::Schema> {
    let schema = batch.schema();
    let fields: Vec<_> =
        keep.iter().filter_map(|k| schema.field_with_name(k).ok().cloned()).collect();
    std::sync::Arc::new(arrow_schema::Schema::new(fields))
}

/// Eight adjacent plain `f32` columns: their value pieces, and the row offset of the first.
type Group<'b> = ([&'b [Buffer]; 8], usize);

/// Splits the feature columns into runs of eight adjacent plain `f32` columns, returned as their
/// value pieces and row offset, and the other columns' indices. The pieces are looked up once
/// per block: a downcast per column and tile was 2 % of a `scan`'s CPU.
fn f32_groups<'b>(arrays: &[Column<'b>], plan: &ColumnPlan) -> (Vec<Group<'b>>, Vec<usize>) {
    let plain = |i: usize| {
        let scalar = plan.features[i].width == 1 && !plan.features[i].list;
        arrays[i].f32_pieces().filter(|_| scalar)
    };
    let mut groups = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < arrays.len() {
        let run: Vec<&[Buffer]> = (i..arrays.len().min(i + 8))
            .take_while(|&k| plan.offsets[k] == plan.offsets[i] + (k - i))
            .map_while(plain)
            .collect();
        match <[&[Buffer]; 8]>::try_from(run) {
            Ok(columns) => {
                groups.push((columns, plan.offsets[i]));
                i += 8;
            }
            Err(_) => {
                rest.push(i);
                i += 1;
            }
        }
    }
    (groups, rest)
}

/// Writes eight columns into eight adjacent places of each `stride`-long row of `out`. Each
/// column is native-endian `f32` bytes at any alignment, so that the page path's values are read
/// where they lie.
#[inline]
fn transpose8(cols: [&[u8]; 8], out: &mut [f32], stride: usize, offset: usize) {
    let rows = out.len() / stride;
    assert!(cols.iter().all(|c| c.len() >= rows * size_of::<f32>()) && offset + 8 <= stride);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX, checked just above; the lengths are asserted above.
        return unsafe { transpose8_avx(cols, out, stride, offset) };
    }
    transpose8_rows(cols, out, stride, offset, 0);
}

/// The portable transpose, from row `first` on.
#[inline(always)]
fn transpose8_rows(cols: [&[u8]; 8], out: &mut [f32], stride: usize, offset: usize, first: usize) {
    for (r, dst) in out.chunks_exact_mut(stride).enumerate().skip(first) {
        let row: [f32; 8] = std::array::from_fn(|k| f32_at(cols[k], r));
        dst[offset..offset + 8].copy_from_slice(&row);
    }
}

/// Value `i` of native-endian `f32` bytes.
#[inline(always)]
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let at = i * size_of::<f32>();
    f32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Bytes `bytes` of a column held in `pieces`: a slice of the piece that holds them all, or,
/// where they span pieces, their concatenation in `joined`.
fn tile_bytes<'a>(
    pieces: &'a [Buffer],
    bytes: std::ops::Range<usize>,
    joined: &'a mut Vec<u8>,
) -> &'a [u8] {
    let mut runs = piece_runs(pieces, bytes.clone());
    let first = runs.next().unwrap_or_default();
    if first.len() == bytes.len() {
        return first;
    }
    joined.clear();
    joined.extend_from_slice(first);
    for run in runs {
        joined.extend_from_slice(run);
    }
    joined
}

/// The parts of `pieces` that hold bytes `bytes` of their concatenation, in order.
fn piece_runs(pieces: &[Buffer], bytes: std::ops::Range<usize>) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    pieces.iter().filter_map(move |piece| {
        let (lo, hi) = (start, start + piece.len());
        start = hi;
        let (from, to) = (bytes.start.max(lo), bytes.end.min(hi));
        (from < to).then(|| &piece.as_slice()[from - lo..to - lo])
    })
}

/// Writes rows `rows` of a plain `f32` column held in `pieces` into `offset` of each
/// `stride`-long row of `out`, which holds those rows. A value may be cut between two pieces.
fn write_pieces(
    pieces: &[Buffer],
    out: &mut [f32],
    stride: usize,
    offset: usize,
    rows: std::ops::Range<usize>,
) {
    let mut dst = out[..rows.len() * stride].iter_mut().skip(offset).step_by(stride);
    let mut put = |v: [u8; 4]| {
        if let Some(dst) = dst.next() {
            *dst = f32::from_ne_bytes(v);
        }
    };
    // The bytes of a value cut between pieces.
    let (mut cut, mut held) = ([0u8; 4], 0);
    let bytes = rows.start * size_of::<f32>()..rows.end * size_of::<f32>();
    for mut run in piece_runs(pieces, bytes) {
        if held > 0 {
            let k = (4 - held).min(run.len());
            cut[held..held + k].copy_from_slice(&run[..k]);
            (held, run) = (held + k, &run[k..]);
            if held < 4 {
                continue;
            }
            put(cut);
        }
        let mut values = run.chunks_exact(4);
        for v in &mut values {
            put([v[0], v[1], v[2], v[3]]);
        }
        let rest = values.remainder();
        cut[..rest.len()].copy_from_slice(rest);
        held = rest.len();
    }
}

/// Eight rows at a time in registers: eight column loads, the usual unpack/shuffle/lane-swap
/// network, eight row stores; the portable loop did a scalar load per value. Profiles of
/// `slope scan` put a quarter of the decode time in this loop before.
///
/// # Safety
/// The CPU must support AVX, every column must hold at least `out.len() / stride` values (four
/// bytes each), and `offset + 8 <= stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8_avx(cols: [&[u8]; 8], out: &mut [f32], stride: usize, offset: usize) {
    use std::arch::x86_64::{
        _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };
    let rows = out.len() / stride;
    let whole = rows / 8 * 8;
    for r in (0..whole).step_by(8) {
        // SAFETY: rows r..r + 8 exist in every column, as the caller guarantees, and an
        // unaligned load may read from any address.
        let v: [_; 8] = std::array::from_fn(|k| unsafe {
            _mm256_loadu_ps(cols[k].as_ptr().add(r * size_of::<f32>()).cast::<f32>())
        });
        let t = [
            _mm256_unpacklo_ps(v[0], v[1]),
            _mm256_unpackhi_ps(v[0], v[1]),
            _mm256_unpacklo_ps(v[2], v[3]),
            _mm256_unpackhi_ps(v[2], v[3]),
            _mm256_unpacklo_ps(v[4], v[5]),
            _mm256_unpackhi_ps(v[4], v[5]),
            _mm256_unpacklo_ps(v[6], v[7]),
            _mm256_unpackhi_ps(v[6], v[7]),
        ];
        let q = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let row = [
            _mm256_permute2f128_ps::<0x20>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x20>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x20>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x20>(q[3], q[7]),
            _mm256_permute2f128_ps::<0x31>(q[0], q[4]),
            _mm256_permute2f128_ps::<0x31>(q[1], q[5]),
            _mm256_permute2f128_ps::<0x31>(q[2], q[6]),
            _mm256_permute2f128_ps::<0x31>(q[3], q[7]),
        ];
        for (i, v) in row.into_iter().enumerate() {
            let dst = &mut out[(r + i) * stride + offset..(r + i) * stride + offset + 8];
            // SAFETY: `dst` holds eight floats.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
        }
    }
    transpose8_rows(cols, out, stride, offset, whole);
}

/// Whether any value is NaN or infinite: a branch-free sweep, which vectorises.
fn any_non_finite(v: &[f32]) -> bool {
    v.iter().fold(false, |acc, x| acc | !x.is_finite())
}

/// Rows transposed together. 512 rows of 64 features are 128 KiB, inside L2 cache. Each tile
/// reads a 2 KiB run of every column, long enough for the hardware prefetcher to follow all 64
/// columns at once. The earlier 64-row tiles (16 KiB, inside L1) read 256 bytes a column, and the
/// column loads stalled: against them, 512 rows cut the user CPU of `scan` by 8–15 % and of
/// every training algorithm by 3–5 % (10M rows, 2 threads, alternated runs), with the same bits.
const TRANSPOSE_ROWS: usize = 512;

/// Rows per call of [`BlockSums::add`] while decoding: the kernels' chunk, so that summing as
/// the rows are decoded cuts the block where summing it afterwards would.
const SUMS_CHUNK_ROWS: usize = crate::reduce::CHUNK_ROWS;
const _: () = assert!(SUMS_CHUNK_ROWS.is_multiple_of(TRANSPOSE_ROWS));

/// A number that converts to `f32`, possibly with rounding.
trait ToF32: Copy {
    fn to_f32(self) -> f32;
}

macro_rules! impl_to_f32 {
    ($($t:ty),*) => {$(
        impl ToF32 for $t {
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
impl_to_f32!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

impl ToF32 for half::f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Writes `width` values per row from `values` into `out` at `offset` of each `stride`-long row.
fn scatter<T: ToF32>(values: &[T], out: &mut [f32], stride: usize, offset: usize, width: usize) {
    if width == 1 {
        for (dst, v) in out[offset..].iter_mut().step_by(stride).zip(values) {
            *dst = v.to_f32();
        }
    } else {
        for (dst, src) in out.chunks_exact_mut(stride).zip(values.chunks_exact(width)) {
            for (o, v) in dst[offset..offset + width].iter_mut().zip(src) {
                *o = v.to_f32();
            }
        }
    }
}

/// Writes rows `rows` of a numeric (or fixed-size list of numeric) column into the row-major
/// buffer `out`, which holds those rows. The plan was checked against the schema, so other
/// types cannot reach here.
fn write_feature(
    array: &ArrayRef,
    out: &mut [f32],
    stride: usize,
    offset: usize,
    width: usize,
    rows: std::ops::Range<usize>,
) {
    let (values, start) = match array.data_type() {
        DataType::FixedSizeList(..) => {
            let list = array.as_fixed_size_list();
            (list.values().clone(), list.value_offset_at(0))
        }
        _ => (array.clone(), 0),
    };
    let from = start + rows.start * width;
    let to = start + rows.end * width;
    let out = &mut out[..rows.len() * stride];
    macro_rules! go {
        ($t:ty) => {
            scatter(&values.as_primitive::<$t>().values()[from..to], out, stride, offset, width)
        };
    }
    match values.data_type() {
        DataType::Int8 => go!(Int8Type),
        DataType::Int16 => go!(Int16Type),
        DataType::Int32 => go!(Int32Type),
        DataType::Int64 => go!(Int64Type),
        DataType::UInt8 => go!(UInt8Type),
        DataType::UInt16 => go!(UInt16Type),
        DataType::UInt32 => go!(UInt32Type),
        DataType::UInt64 => go!(UInt64Type),
        DataType::Float16 => go!(Float16Type),
        DataType::Float32 => go!(Float32Type),
        DataType::Float64 => go!(Float64Type),
        other => unreachable!("column plan admitted non-numeric type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_a_deterministic_partition_of_about_the_asked_fraction() {
        let val = Split { fraction: 0.2, part: Part::Validation };
        let train = Split { fraction: 0.2, part: Part::Train };
        let mut held_out = 0;
        for row in 0..10_000 {
            let v = val.keeps(42, 3, row);
            assert_ne!(v, train.keeps(42, 3, row), "every row is in exactly one part");
            assert_eq!(v, val.keeps(42, 3, row), "the same row lands in the same part");
            held_out += usize::from(v);
        }
        assert!((1800..2200).contains(&held_out), "{held_out}");
    }

    /// Nine `f32` feature columns (a transposed group of eight and one more) and a target,
    /// `rows` long, with `value(row, column)` in them.
    fn batch_of(rows: usize, value: impl Fn(usize, usize) -> f32) -> (ColumnPlan, RecordBatch) {
        use arrow_array::Float32Array;
        use arrow_schema::{Field, Schema};
        let names: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
        let schema = Schema::new(
            names.iter().map(|n| Field::new(n, DataType::Float32, false)).collect::<Vec<_>>(),
        );
        let columns: Vec<ArrayRef> = (0..10)
            .map(|c| {
                std::sync::Arc::new(Float32Array::from_iter_values((0..rows).map(|r| value(r, c))))
                    as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(std::sync::Arc::new(schema), columns).unwrap();
        let plan = ColumnPlan {
            features: names[..9]
                .iter()
                .map(|n| crate::dataset::FeatureColumn { name: n.clone(), width: 1, list: false })
                .collect(),
            target: Some(names[9].clone()),
            keep: Vec::new(),
            offsets: (0..9).collect(),
            d: 9,
        };
        (plan, batch)
    }

    /// Standardisation runs tile by tile during the decode, but a tile with a NaN or an infinity
    /// and every tile after it are standardised only after the slow check: the check sees stored
    /// values (a scale of 0 would turn an infinity into a NaN), every kept row is standardised
    /// exactly once, and dropped rows leave the others in order. Values the transform itself
    /// makes infinite are not invalid input.
    #[test]
    fn standardisation_applies_once_to_every_kept_row_around_invalid_values() {
        let rows = 3 * TRANSPOSE_ROWS + 17;
        let raw = |r: usize, c: usize| ((r * 31 + c * 7) % 23) as f32 - 11.0;
        let affine = Affine {
            shift: (0..9).map(|c| c as f32 * 0.5).collect(),
            // Column 5's scale overflows some values to infinity, which is the transform's
            // doing and not an invalid input: the check must not see it either.
            scale: (0..9)
                .map(|c| match c {
                    4 => 0.0,
                    5 => 1e38,
                    _ => 1.0 / (c as f32 + 1.5),
                })
                .collect(),
        };
        // Invalid values put into the input (row, column, value), and what to do with them.
        type Case<'a> = (&'a [(usize, usize, f32)], OnInvalid);
        let cases: [Case; 4] = [
            (&[], OnInvalid::Skip),
            (&[(2 * TRANSPOSE_ROWS + 3, 4, f32::INFINITY), (5, 9, f32::NAN)], OnInvalid::Skip),
            (&[(TRANSPOSE_ROWS, 8, f32::NAN), (rows - 1, 0, f32::NEG_INFINITY)], OnInvalid::Skip),
            (&[(2 * TRANSPOSE_ROWS + 3, 4, f32::INFINITY)], OnInvalid::Error),
        ];
        for (bad, on_invalid) in cases {
            let value = |r: usize, c: usize| {
                bad.iter().find(|&&(br, bc, _)| (br, bc) == (r, c)).map_or(raw(r, c), |b| b.2)
            };
            let (plan, batch) = batch_of(rows, value);
            let decoder = Decoder {
                plan: &plan,
                on_invalid,
                transform: Some(&affine),
                split: None,
                path: Path::new("t.parquet"),
                row_group: 0,
                sums: None,
            };
            let mut block = Block::default();
            let result = decoder.decode(&Batch::Arrow(batch.clone()), 1000, &mut block);
            if on_invalid == OnInvalid::Error {
                let e = result.unwrap_err().to_string();
                assert!(e.contains("an infinity") && e.contains("c4"), "{e}");
                continue;
            }
            result.unwrap();
            let kept: Vec<usize> =
                (0..rows).filter(|r| !bad.iter().any(|&(br, _, _)| br == *r)).collect();
            assert_eq!((block.rows, block.skipped), (kept.len(), bad.len()));
            for (i, &r) in kept.iter().enumerate() {
                for c in 0..9 {
                    let want = (raw(r, c) - affine.shift[c]) * affine.scale[c];
                    assert_eq!(block.x[i * 9 + c].to_bits(), want.to_bits(), "row {r} col {c}");
                }
                assert_eq!(block.y[i], raw(r, 9));
            }
        }
    }

    /// The sums a decode worker adds while decoding see exactly the block's kept rows, once
    /// each and in order, in runs that start at chunk boundaries, whether the block is clean
    /// (summed during the decode), has an invalid feature or target partway (summed up to it,
    /// then the rest after the slow check), has a null (summed after the decode) or is split.
    #[test]
    fn block_sums_see_every_kept_row_once_in_chunk_aligned_runs() {
        let rows = 3 * SUMS_CHUNK_ROWS + 100;
        let raw = |r: usize, c: usize| ((r * 31 + c * 7) % 23) as f32 - 11.0;
        // Each run is logged as NaN, its length, then its rows (features, then target).
        let log = BlockSums::new(|x, y, out| {
            out.extend([f64::NAN, y.len() as f64]);
            for (row, t) in x.chunks_exact(9).zip(y) {
                out.extend(row.iter().chain([t]).map(|&v| f64::from(v)));
            }
        });
        let affine = Affine { shift: vec![1.0; 9], scale: vec![0.5; 9] };
        let nan_x = (SUMS_CHUNK_ROWS + 70, 3, f32::NAN);
        let inf_y = (2 * SUMS_CHUNK_ROWS + 5, 9, f32::INFINITY);
        let split = Split { fraction: 0.3, part: Part::Train };
        // Invalid values put into the input, a split, and whether a target is null.
        type Case<'a> = (&'a [(usize, usize, f32)], Option<Split>, bool);
        let cases: [Case; 5] = [
            (&[], None, false),
            (&[nan_x], None, false),
            (&[inf_y, (rows - 1, 0, f32::NAN)], None, false),
            (&[], None, true),
            (&[nan_x], Some(split), false),
        ];
        for (case, (bad, split, null)) in cases.into_iter().enumerate() {
            use arrow_array::Float32Array;
            let value = |r: usize, c: usize| {
                bad.iter().find(|&&(br, bc, _)| (br, bc) == (r, c)).map_or(raw(r, c), |b| b.2)
            };
            let (plan, mut batch) = batch_of(rows, value);
            if null {
                // A null target in the second chunk.
                let y = Float32Array::from_iter(
                    (0..rows).map(|r| (r != SUMS_CHUNK_ROWS + 1).then(|| raw(r, 9))),
                );
                let mut columns = batch.columns().to_vec();
                columns[9] = std::sync::Arc::new(y);
                let schema = arrow_schema::Schema::new(
                    (0..10)
                        .map(|c| arrow_schema::Field::new(format!("c{c}"), DataType::Float32, true))
                        .collect::<Vec<_>>(),
                );
                batch = RecordBatch::try_new(std::sync::Arc::new(schema), columns).unwrap();
            }
            let decoder = Decoder {
                plan: &plan,
                on_invalid: OnInvalid::Skip,
                transform: Some(&affine),
                split,
                path: Path::new("t.parquet"),
                row_group: 0,
                sums: Some(&log),
            };
            let mut block = Block { sums: vec![7.0], ..Block::default() };
            decoder.decode(&Batch::Arrow(batch.clone()), 0, &mut block).unwrap();
            // The same rows decoded without sums: the rows the runs must have seen.
            let mut reference = Block::default();
            Decoder { sums: None, ..decoder }
                .decode(&Batch::Arrow(batch), 0, &mut reference)
                .unwrap();
            assert_eq!((block.rows, block.skipped), (reference.rows, reference.skipped));
            if case == 0 {
                assert!(block.x.is_empty(), "every row was summed as it was decoded");
            }
            let mut seen = Vec::new();
            let mut at = 0;
            while at < block.sums.len() {
                assert!(block.sums[at].is_nan(), "case {case}: a run starts at {at}");
                let len = block.sums[at + 1] as usize;
                assert!(
                    (seen.len() / 10).is_multiple_of(SUMS_CHUNK_ROWS),
                    "case {case}: unaligned"
                );
                seen.extend_from_slice(&block.sums[at + 2..at + 2 + 10 * len]);
                at += 2 + 10 * len;
            }
            let kept: Vec<f64> = reference
                .x
                .chunks_exact(9)
                .zip(&reference.y)
                .take(reference.rows)
                .flat_map(|(row, t)| row.iter().chain([t]).map(|&v| f64::from(v)))
                .collect();
            assert_eq!(seen, kept, "case {case}");
            assert!(block.rows < rows || bad.is_empty() && !null && split.is_none());
        }
    }

    #[test]
    fn transpose8_places_every_value_whatever_the_row_count_and_alignment() {
        for rows in [0, 1, 7, 8, 9, 63, 64, 65] {
            for (stride, offset) in [(8, 0), (11, 3), (24, 16)] {
                // Column k starts k bytes into its buffer, so most are unaligned.
                let cols: Vec<Vec<u8>> = (0..8)
                    .map(|k| {
                        let values = (0..rows).flat_map(|r| ((r * 8 + k) as f32).to_ne_bytes());
                        std::iter::repeat_n(0xAA, k).chain(values).collect()
                    })
                    .collect();
                let cols: [&[u8]; 8] = std::array::from_fn(|k| &cols[k][k..]);
                let mut out = vec![-1.0f32; rows * stride];
                transpose8(cols, &mut out, stride, offset);
                for r in 0..rows {
                    for c in 0..stride {
                        let want = if (offset..offset + 8).contains(&c) {
                            (r * 8 + c - offset) as f32
                        } else {
                            -1.0
                        };
                        assert_eq!(
                            out[r * stride + c],
                            want,
                            "rows={rows} stride={stride} ({r}, {c})"
                        );
                    }
                }
            }
        }
    }

    /// A column's bytes cut into pieces at `cuts`, each piece in a buffer of its own at an odd
    /// address, as the page path hands them over.
    fn pieces_of(values: &[f32], cuts: &[usize]) -> Vec<Buffer> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| 0 < c && c < bytes.len()));
        bounds.push(bytes.len());
        bounds.dedup();
        bounds
            .windows(2)
            .map(|w| {
                let odd: Vec<u8> =
                    std::iter::once(0).chain(bytes[w[0]..w[1]].iter().copied()).collect();
                Buffer::from(odd).slice(1)
            })
            .collect()
    }

    #[test]
    fn page_pieces_decode_to_the_same_block_as_arrow_arrays() {
        let rows = 2 * TRANSPOSE_ROWS + 37;
        let raw = |r: usize, c: usize| {
            (r as f32 + 0.25) * if c.is_multiple_of(2) { 1.5 } else { -0.5 } + c as f32
        };
        let (plan, batch) = batch_of(rows, raw);
        let affine = Affine { shift: vec![1.0; 9], scale: vec![0.5; 9] };
        let log = BlockSums::new(|x, y, out| {
            out.push(y.len() as f64);
            out.extend(x.iter().chain(y).map(|&v| f64::from(v)));
        });
        // Cuts inside a value, on value boundaries, at a tile's edge and not at all, different
        // in every column.
        let tile = TRANSPOSE_ROWS * 4;
        let cuts = |c: usize| match c % 4 {
            0 => vec![],
            1 => vec![1, 4 * 100 + 2, tile, tile + 3],
            2 => vec![tile - 4, 2 * tile + 1],
            _ => (1..rows * 4).step_by(997 + c).collect(),
        };
        // With sums, the rows are summed as they are decoded and the log holds them; without,
        // the block does.
        let settings = [None, Some(&affine)].into_iter().flat_map(|t| [(t, Some(&log)), (t, None)]);
        for (transform, sums) in settings {
            let decoder = Decoder {
                plan: &plan,
                on_invalid: OnInvalid::Error,
                transform,
                split: None,
                path: Path::new("t.parquet"),
                row_group: 0,
                sums,
            };
            let mut want = Block::default();
            decoder.decode(&Batch::Arrow(batch.clone()), 0, &mut want).unwrap();
            let columns = (0..10)
                .map(|c| {
                    let values: Vec<f32> = (0..rows).map(|r| raw(r, c)).collect();
                    pieces_of(&values, &cuts(c))
                })
                .collect();
            let plain = Batch::Plain(PlainBatch::new(rows, columns));
            let mut got = Block::default();
            decoder.decode(&plain, 0, &mut got).unwrap();
            assert_eq!((got.rows, &got.x, &got.y), (want.rows, &want.x, &want.y));
            let bits = |v: &[f64]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.sums), bits(&want.sums));
            assert_eq!(
                got.sums.len(),
                sums.map_or(0, |_| rows * 10 + rows.div_ceil(TRANSPOSE_ROWS))
            );
        }
    }
}
