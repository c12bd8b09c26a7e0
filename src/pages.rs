//! The reader's fast path: row groups whose chosen columns all hold plain `f32` values are read
//! page by page, and their batches are the pages' own bytes.
//!
//! The parquet crate's record-batch reader copies every value twice on the way to Arrow: it
//! zeroes a vector for the batch, then copies the values out of the decompressed page into it.
//! On 10M rows × 64 `f32` features those two steps were 18 % of a `slope scan`'s CPU (`perf`:
//! the value copy 11 %, the zeroing 7 %). For a column stored as `PLAIN` floats without nulls,
//! the decompressed page already holds the values, so this path hands the decoder slices of the
//! page (`PlainBatch`) wherever they lie: an optional column's values follow its definition
//! levels at any offset, and the decoder reads them unaligned. A snappy page of incompressible
//! floats is nothing but literals, and in a mapped file those are read where they lie
//! (`PageBytes::Runs`): a batch's values are slices of the map, one per literal they span.
//!
//! The protocol for one row group:
//!
//! 1. `PlainPages::open` checks the footer: every chosen column is a flat `FLOAT` column that
//!    decodes to Arrow `Float32`, with no dictionary page and no nulls counted in its
//!    statistics. Anything else is read by the parquet crate's reader from the start.
//! 2. Batches are cut at the same rows as the parquet crate's reader cuts them (`batch_rows`
//!    from the first row), so a row group gives the same blocks, and the same sums, whichever
//!    path reads it.
//! 3. Each column keeps its current page. A page that is not what step 1 promised (a dictionary
//!    page, another encoding, a null among the definition levels, a page the parquet crate fails
//!    to read, a column chunk that ends early) hands the rest of the row group to the parquet
//!    crate's reader, from the first row not yet returned. That reader then reports any error in
//!    its own words, exactly as if it had read the row group from the start.

use std::sync::Arc;

use std::fs::File;

use arrow_buffer::{Buffer, MutableBuffer};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use crate::dataset::{ColumnPlan, Shard};
use crate::thrift::{Compact, FALSE, I32, STRUCT, TRUE, uleb128};

/// Why a page cannot be read on this path; the rest of the row group goes to the parquet crate.
#[derive(Debug)]
pub(crate) struct Unsupported;

/// The batches of one row group, read from its pages.
pub(crate) struct PlainPages {
    columns: Vec<ColumnPages>,
    batch_rows: usize,
    /// Rows of the row group not yet returned.
    rows_left: usize,
}

/// One batch of a row group's chosen columns as their pages hold them, in the order of
/// [`ColumnPlan::read_columns`]. A column's values are its `rows` little-endian `f32`s (the path
/// runs only on little-endian hosts, where that is native), in one or more pieces (a page, a
/// literal of the mapped file) that lie wherever the pages put them: not necessarily aligned to
/// four bytes, and a value may even be cut between two pieces.
#[derive(Debug)]
pub(crate) struct PlainBatch {
    pub rows: usize,
    /// Every column's pieces, one column after another.
    pieces: Vec<Buffer>,
    /// Where each column's pieces end in `pieces`.
    ends: Vec<usize>,
}

impl PlainBatch {
    /// A batch of `rows` rows whose columns are held in these pieces.
    #[cfg(test)]
    pub fn new(rows: usize, columns: Vec<Vec<Buffer>>) -> PlainBatch {
        let mut batch = PlainBatch { rows, pieces: Vec::new(), ends: Vec::new() };
        for column in columns {
            batch.pieces.extend(column);
            batch.ends.push(batch.pieces.len());
        }
        batch
    }

    /// The pieces of column `i`; together they hold `4 * rows` bytes.
    pub fn column(&self, i: usize) -> &[Buffer] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.pieces[start..self.ends[i]]
    }
}

/// One column chunk's pages and the position in the current one.
struct ColumnPages {
    pages: Pages,
    /// Whether the column is optional, so that its pages start with definition levels.
    optional: bool,
    /// The current page's bytes.
    page: PageBytes,
    /// Byte offset of the next value in `page`.
    at: usize,
    /// Which of the page's literal runs holds `at`, or one before it.
    run: usize,
    /// Values left in `page`.
    left: usize,
}

impl PlainPages {
    /// The reader of `row_group`'s chosen columns, or `None` when the footer says this path
    /// cannot read them (step 1).
    pub fn open(
        shard: &Shard,
        plan: &ColumnPlan,
        meta: &RowGroupMetaData,
        batch_rows: usize,
        source: &Source,
    ) -> Option<PlainPages> {
        // The pages' little-endian floats become Arrow arrays as they are, which is only right
        // on a little-endian machine.
        if !plan.keep.is_empty() || batch_rows == 0 || cfg!(target_endian = "big") {
            return None;
        }
        let leaves = shard.parquet_schema();
        let arrow = shard.schema();
        let rows = usize::try_from(meta.num_rows()).ok()?;
        let mut columns = Vec::new();
        for name in plan.read_columns() {
            if arrow.field_with_name(name).ok()?.data_type() != &DataType::Float32 {
                return None;
            }
            let leaf = (0..leaves.num_columns()).find(|&i| {
                let column = leaves.column(i);
                let parts = column.path().parts();
                parts.len() == 1 && parts[0] == name
            })?;
            let chunk = meta.column(leaf);
            let descr = chunk.column_descr();
            let nulls = chunk.statistics().and_then(|s| s.null_count_opt()).unwrap_or(0);
            let plain = chunk.column_type() == PhysicalType::FLOAT
                && descr.max_rep_level() == 0
                && descr.max_def_level() <= 1
                && chunk.dictionary_page_offset().is_none()
                && nulls == 0;
            if !plain {
                return None;
            }
            let pages = match (source, chunk.compression()) {
                (Source::Mapped(map), Compression::SNAPPY | Compression::UNCOMPRESSED) => {
                    let (start, len) = chunk.byte_range();
                    let range = usize::try_from(start).ok()?..usize::try_from(start + len).ok()?;
                    if range.end > map.len() {
                        return None;
                    }
                    Pages::Mapped(MappedPages {
                        chunk: map.slice(range),
                        at: 0,
                        snappy: chunk.compression() == Compression::SNAPPY,
                        decoder: snap::raw::Decoder::new(),
                    })
                }
                (Source::Mapped(map), _) => Pages::Parquet(Box::new(
                    SerializedPageReader::new(Arc::new(map.clone()), chunk, rows, None).ok()?,
                )),
                (Source::Read(file), _) => Pages::Parquet(Box::new(
                    SerializedPageReader::new(Arc::clone(file), chunk, rows, None).ok()?,
                )),
            };
            columns.push(ColumnPages {
                pages,
                optional: descr.max_def_level() == 1,
                page: PageBytes::default(),
                at: 0,
                run: 0,
                left: 0,
            });
        }
        Some(PlainPages { columns, batch_rows, rows_left: rows })
    }

    /// The next batch, `None` at the end of the row group, or [`Unsupported`] (step 3). After
    /// `Unsupported`, the rows not yet returned are [`PlainPages::rows_left`].
    pub fn next_batch(&mut self) -> Result<Option<PlainBatch>, Unsupported> {
        let n = self.batch_rows.min(self.rows_left);
        if n == 0 {
            return Ok(None);
        }
        let mut batch = PlainBatch {
            rows: n,
            pieces: Vec::with_capacity(self.columns.len() * 2),
            ends: Vec::with_capacity(self.columns.len()),
        };
        for column in &mut self.columns {
            column.take(n, &mut batch.pieces)?;
            batch.ends.push(batch.pieces.len());
        }
        self.rows_left -= n;
        Ok(Some(batch))
    }

    /// Rows of the row group not yet returned.
    pub fn rows_left(&self) -> usize {
        self.rows_left
    }
}

impl ColumnPages {
    /// Appends to `out` the pieces that hold the next `n` values: slices of the pages and of
    /// their literals, as many as the values span. Nothing is copied.
    fn take(&mut self, n: usize, out: &mut Vec<Buffer>) -> Result<(), Unsupported> {
        let mut taken = 0;
        while taken < n {
            if self.left == 0 {
                self.next_page()?;
            }
            let k = self.left.min(n - taken);
            self.page.pieces(self.at, k * size_of::<f32>(), &mut self.run, out);
            self.at += k * size_of::<f32>();
            self.left -= k;
            taken += k;
        }
        Ok(())
    }

    /// Moves to the next data page that holds values, checking that it is one this path reads.
    fn next_page(&mut self) -> Result<(), Unsupported> {
        loop {
            let spent = std::mem::take(&mut self.page);
            let page = match &mut self.pages {
                Pages::Parquet(pages) => parquet_page(pages.as_mut(), self.optional)?,
                Pages::Mapped(pages) => pages.next(self.optional, spent)?,
            };
            if page.bytes.len() != page.offset + page.values * size_of::<f32>() {
                // Fewer bytes than values: some are null after all (or the page is damaged).
                return Err(Unsupported);
            }
            if page.values > 0 {
                (self.page, self.at, self.left) = (page.bytes, page.offset, page.values);
                self.run = 0;
                return Ok(());
            }
        }
    }
}

/// Where a row group's bytes come from.
pub(crate) enum Source {
    /// The whole file, memory-mapped: snappy and uncompressed column chunks are read by
    /// [`MappedPages`], others by the parquet crate's page reader over the map.
    Mapped(Bytes),
    /// A file handle of this worker's own, for the parquet crate's page reader.
    Read(Arc<File>),
}

/// A column chunk's pages, from one of two page readers.
enum Pages {
    /// The parquet crate's page reader, which decompresses each page into a new, zeroed buffer.
    Parquet(Box<dyn PageReader>),
    /// slope's own, for mapped snappy or uncompressed chunks.
    Mapped(MappedPages),
}

/// A data page as this path needs it: its values are `values` `f32`s at byte `offset` of `bytes`.
struct PlainPage {
    bytes: PageBytes,
    offset: usize,
    values: usize,
}

/// A data page's bytes once decompressed.
enum PageBytes {
    /// In one buffer: a decompressed page, or an uncompressed one in the map.
    Whole(Buffer),
    /// A snappy page whose stream holds nothing but literals, left where the literals lie in the
    /// mapped file: the decompressed page is their concatenation. Incompressible data, such as
    /// random floats, compresses to exactly that, so reading the literals in place spares the
    /// copy of the whole page into a buffer (a fifth of a scan's CPU) and the trip through
    /// memory that the values then take before they are read.
    Runs(LiteralRuns),
}

impl Default for PageBytes {
    fn default() -> Self {
        PageBytes::Whole(Buffer::default())
    }
}

/// Where a literal-only snappy stream's literals lie.
struct LiteralRuns {
    /// The compressed page: slices of the map.
    stream: Bytes,
    /// Each literal's range in `stream`, in order.
    runs: Vec<std::ops::Range<usize>>,
    /// Where each literal starts in the decompressed page.
    starts: Vec<usize>,
    /// The decompressed page's length.
    len: usize,
}

impl PageBytes {
    fn len(&self) -> usize {
        match self {
            PageBytes::Whole(buf) => buf.len(),
            PageBytes::Runs(runs) => runs.len,
        }
    }

    /// The page's first bytes, up to the end of the first piece.
    fn head(&self) -> &[u8] {
        match self {
            PageBytes::Whole(buf) => buf,
            PageBytes::Runs(r) => r.runs.first().map_or(&[], |run| &r.stream[run.clone()]),
        }
    }

    /// Appends to `out` the pieces that hold the `len` bytes at offset `at` of the page: one for
    /// a whole page, one per literal spanned otherwise. `run` is where the search for the first
    /// literal starts, and is left at the literal that holds `at`: offsets only grow.
    fn pieces(&self, at: usize, len: usize, run: &mut usize, out: &mut Vec<Buffer>) {
        match self {
            PageBytes::Whole(buf) => out.push(buf.slice_with_length(at, len)),
            PageBytes::Runs(r) => {
                let (mut at, end) = (at, at + len);
                while at < end {
                    let (start, held) = r.locate(at, run);
                    let k = held.min(end - at);
                    out.push(Buffer::from(r.stream.slice(start..start + k)));
                    at += k;
                }
            }
        }
    }
}

impl LiteralRuns {
    /// Parses a raw snappy stream that should decompress to `size` bytes. `None` unless it is a
    /// well-formed stream of literals only, of exactly that length; anything else (a copy, a
    /// damaged length) is left to the decompressor, which decides what is wrong with it.
    fn parse(stream: &Bytes, size: usize) -> Option<LiteralRuns> {
        // The decompressed length leads the stream, as a varint of at most five bytes.
        let (declared, mut at) = uleb128(stream)?;
        if at > 5 || declared != size as u64 {
            return None;
        }
        let (mut runs, mut starts, mut len) = (Vec::new(), Vec::new(), 0usize);
        while at < stream.len() {
            let tag = stream[at];
            at += 1;
            if tag & 0b11 != 0 {
                return None;
            }
            let mut n = usize::from(tag >> 2);
            if n >= 60 {
                // The length minus one follows in 1 to 4 little-endian bytes.
                let bytes = stream.get(at..at + (n - 59))?;
                n = bytes.iter().rev().fold(0, |acc, &b| (acc << 8) | usize::from(b));
                at += bytes.len();
            }
            let end = at.checked_add(n)?.checked_add(1)?;
            if end > stream.len() {
                return None;
            }
            starts.push(len);
            len += end - at;
            runs.push(at..end);
            at = end;
        }
        (len == size).then(|| LiteralRuns { stream: stream.clone(), runs, starts, len })
    }

    /// Where offset `at` of the page lies in `stream`, and how many bytes of its run follow it
    /// there. The search for its run starts at `*run` and leaves it there.
    fn locate(&self, at: usize, run: &mut usize) -> (usize, usize) {
        while *run + 1 < self.runs.len() && self.starts[*run + 1] <= at {
            *run += 1;
        }
        let (range, skip) = (&self.runs[*run], at - self.starts[*run]);
        (range.start + skip, range.len() - skip)
    }
}

/// The next data page from the parquet crate's page reader.
fn parquet_page(pages: &mut dyn PageReader, optional: bool) -> Result<PlainPage, Unsupported> {
    let page = pages.get_next_page().map_err(|_| Unsupported)?.ok_or(Unsupported)?;
    match page {
        Page::DataPage { buf, num_values, encoding, def_level_encoding, .. } => {
            if encoding != Encoding::PLAIN || (optional && def_level_encoding != Encoding::RLE) {
                return Err(Unsupported);
            }
            let values = num_values as usize;
            let offset = if optional { defined_levels_end(&buf, values)? } else { 0 };
            Ok(PlainPage { bytes: PageBytes::Whole(Buffer::from(buf)), offset, values })
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            num_nulls,
            def_levels_byte_len,
            rep_levels_byte_len,
            ..
        } => {
            if encoding != Encoding::PLAIN || num_nulls != 0 {
                return Err(Unsupported);
            }
            let offset = def_levels_byte_len as usize + rep_levels_byte_len as usize;
            let levels = buf.get(..offset).ok_or(Unsupported)?;
            if !v2_levels_defined(
                levels,
                def_levels_byte_len as usize,
                num_values as usize,
                optional,
            ) {
                return Err(Unsupported);
            }
            let bytes = PageBytes::Whole(Buffer::from(buf));
            Ok(PlainPage { bytes, offset, values: num_values as usize })
        }
        Page::DictionaryPage { .. } => Err(Unsupported),
    }
}

/// Where the values of a version-1 data page of an optional column start, after its
/// definition levels (a 4-byte length, then the RLE/bit-packed hybrid), if none is null.
fn defined_levels_end(page: &[u8], values: usize) -> Result<usize, Unsupported> {
    let len = page.get(..4).ok_or(Unsupported)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let levels = page.get(4..4 + len).ok_or(Unsupported)?;
    if !all_defined(levels, values) {
        return Err(Unsupported);
    }
    Ok(4 + len)
}

/// Whether a version-2 data page's `levels` (its repetition levels, then `def_len` bytes of
/// definition levels, neither with a length prefix) say that all `values` are defined: no
/// repetition levels, since the column is flat, and definition levels that [`all_defined`]
/// accepts, or none for a required column. The header's count of no nulls is not taken on
/// trust alone: the parquet crate's reader decodes these levels, and must not be the only one
/// to notice that they are damaged.
fn v2_levels_defined(levels: &[u8], def_len: usize, values: usize, optional: bool) -> bool {
    match levels.len().checked_sub(def_len) {
        Some(0) if optional => all_defined(levels, values),
        Some(0) => def_len == 0,
        _ => false,
    }
}

/// The pages of a memory-mapped snappy or uncompressed column chunk, read without the parquet
/// crate's page reader. That reader decompresses every page into a new buffer that it first
/// zeroes (`perf`: 8 % of a scan's CPU, and as much again in the kernel's zeroing of the fresh
/// pages those buffers land on). This one leaves uncompressed pages and the literals of
/// literal-only snappy pages in the map, and decompresses any other snappy page into the
/// column's previous page buffer whenever no array still holds it, which on this path is every
/// time but the first, since a worker drops each batch before it asks for the next.
struct MappedPages {
    /// The column chunk's bytes: page headers and pages, back to back.
    chunk: Bytes,
    /// Offset of the next page header in `chunk`.
    at: usize,
    snappy: bool,
    decoder: snap::raw::Decoder,
}

impl MappedPages {
    /// The next data page; `spent` is the buffer of the page before, reused if no one holds it.
    fn next(&mut self, optional: bool, spent: PageBytes) -> Result<PlainPage, Unsupported> {
        loop {
            let rest = self.chunk.get(self.at..).filter(|r| !r.is_empty()).ok_or(Unsupported)?;
            let (header, header_len) = PageHeader::parse(rest).ok_or(Unsupported)?;
            let body_start = self.at + header_len;
            let body_len = usize::try_from(header.compressed_size).map_err(|_| Unsupported)?;
            if body_start + body_len > self.chunk.len() {
                return Err(Unsupported);
            }
            let body = self.chunk.slice(body_start..body_start + body_len);
            let size = usize::try_from(header.uncompressed_size).map_err(|_| Unsupported)?;
            self.at = body_start + body_len;
            match header.kind {
                PageKind::Data => {
                    if header.encoding != ENCODING_PLAIN
                        || (optional && header.def_encoding != ENCODING_RLE)
                    {
                        return Err(Unsupported);
                    }
                    let bytes = self.decompress(body, size, self.snappy, spent)?;
                    let values = usize::try_from(header.num_values).map_err(|_| Unsupported)?;
                    // The levels are a few bytes at the start of the page, inside its first
                    // literal; levels that run past it are left to the parquet crate's reader.
                    let offset =
                        if optional { defined_levels_end(bytes.head(), values)? } else { 0 };
                    return Ok(PlainPage { bytes, offset, values });
                }
                PageKind::DataV2 => {
                    // Damaged lengths may overflow an `i32` when added.
                    let levels = header
                        .def_levels_len
                        .checked_add(header.rep_levels_len)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or(Unsupported)?;
                    if header.encoding != ENCODING_PLAIN || header.num_nulls != 0 {
                        return Err(Unsupported);
                    }
                    // The levels are stored uncompressed before the values; once checked, only
                    // the values are kept, from offset 0.
                    let values_size = size.checked_sub(levels).ok_or(Unsupported)?;
                    let values = usize::try_from(header.num_values).map_err(|_| Unsupported)?;
                    let stored_levels = body.get(..levels).ok_or(Unsupported)?;
                    if !v2_levels_defined(
                        stored_levels,
                        header.def_levels_len as usize,
                        values,
                        optional,
                    ) {
                        return Err(Unsupported);
                    }
                    let compressed = self.snappy && header.v2_compressed;
                    let bytes =
                        self.decompress(body.slice(levels..), values_size, compressed, spent)?;
                    return Ok(PlainPage { bytes, offset: 0, values });
                }
                PageKind::Dictionary => return Err(Unsupported),
                // Index pages, and page types this reader does not know, hold no values.
                PageKind::Other => {}
            }
        }
    }

    /// The `size` bytes that `stored` holds: `stored` itself, a slice of the map, when it is not
    /// `compressed`; its literals in place when it is a literal-only snappy stream; else
    /// `spent`'s memory refilled by snappy.
    fn decompress(
        &mut self,
        stored: Bytes,
        size: usize,
        compressed: bool,
        spent: PageBytes,
    ) -> Result<PageBytes, Unsupported> {
        if !compressed {
            if stored.len() != size {
                return Err(Unsupported);
            }
            return Ok(PageBytes::Whole(Buffer::from(stored)));
        }
        if let Some(runs) = LiteralRuns::parse(&stored, size) {
            return Ok(PageBytes::Runs(runs));
        }
        let spent = match spent {
            PageBytes::Whole(buf) => buf,
            PageBytes::Runs(_) => Buffer::default(),
        };
        let mut memory = spent.into_mutable().unwrap_or_else(|_| MutableBuffer::new(size));
        if memory.len() < size {
            // Only memory never written before is zeroed, the first page of each column.
            memory.resize(size, 0);
        }
        let written = self
            .decoder
            .decompress(&stored, &mut memory.as_slice_mut()[..size])
            .map_err(|_| Unsupported)?;
        if written != size {
            return Err(Unsupported);
        }
        Ok(PageBytes::Whole(Buffer::from(memory).slice_with_length(0, size)))
    }
}

const ENCODING_PLAIN: i32 = 0;
const ENCODING_RLE: i32 = 3;

#[derive(Debug, Default, PartialEq, Eq)]
enum PageKind {
    Data,
    DataV2,
    Dictionary,
    #[default]
    Other,
}

/// The fields of a Parquet `PageHeader` that [`MappedPages`] needs (the parquet crate keeps its
/// own reader of them private), read from Thrift's compact protocol; every other field is
/// skipped whatever its type.
#[derive(Debug, Default)]
struct PageHeader {
    kind: PageKind,
    uncompressed_size: i32,
    compressed_size: i32,
    num_values: i32,
    encoding: i32,
    def_encoding: i32,
    rep_encoding: i32,
    num_nulls: i32,
    def_levels_len: i32,
    rep_levels_len: i32,
    v2_compressed: bool,
}

impl PageHeader {
    /// The header at the start of `bytes` and its length, or `None` if it does not parse or
    /// lacks a field that the format requires (the parquet crate rejects such a header too).
    fn parse(bytes: &[u8]) -> Option<(PageHeader, usize)> {
        let mut r = Compact { bytes, at: 0 };
        let mut h = PageHeader { v2_compressed: true, ..PageHeader::default() };
        // Bit `i` set: required field `i` seen, in the header and in its data page header.
        let (mut seen, mut data_seen) = (0u32, 0u32);
        let mut last = 0;
        while let Some((kind, id)) = r.field(&mut last)? {
            match (id, kind) {
                (1, I32) => {
                    h.kind = match r.i32()? {
                        0 => PageKind::Data,
                        2 => PageKind::Dictionary,
                        3 => PageKind::DataV2,
                        _ => PageKind::Other,
                    }
                }
                (2, I32) => h.uncompressed_size = r.i32()?,
                (3, I32) => h.compressed_size = r.i32()?,
                (5, STRUCT) => {
                    let mut last = 0;
                    while let Some((kind, id)) = r.field(&mut last)? {
                        match (id, kind) {
                            (1, I32) => h.num_values = r.i32()?,
                            (2, I32) => h.encoding = r.i32()?,
                            (3, I32) => h.def_encoding = r.i32()?,
                            (4, I32) => h.rep_encoding = r.i32()?,
                            _ => r.skip(kind, 0)?,
                        }
                        data_seen |= required(id, kind, 1..=4);
                    }
                }
                (8, STRUCT) => {
                    let mut last = 0;
                    while let Some((kind, id)) = r.field(&mut last)? {
                        match (id, kind) {
                            (1, I32) => h.num_values = r.i32()?,
                            (2, I32) => h.num_nulls = r.i32()?,
                            (4, I32) => h.encoding = r.i32()?,
                            (5, I32) => h.def_levels_len = r.i32()?,
                            (6, I32) => h.rep_levels_len = r.i32()?,
                            (7, TRUE) => h.v2_compressed = true,
                            (7, FALSE) => h.v2_compressed = false,
                            _ => r.skip(kind, 0)?,
                        }
                        data_seen |= required(id, kind, 1..=6);
                    }
                }
                _ => r.skip(kind, 0)?,
            }
            seen |= required(id, kind, 1..=3);
        }
        let complete = seen == 0b1110
            && match h.kind {
                PageKind::Data => data_seen == 0b1_1110 && known_encoding(h.rep_encoding),
                PageKind::DataV2 => data_seen == 0b111_1110,
                _ => true,
            };
        let sane = h.def_levels_len >= 0 && h.rep_levels_len >= 0;
        (complete && sane).then_some((h, r.at))
    }
}

/// The bit that marks field `id` as seen, if it is one of the `required` `i32` fields.
fn required(id: i16, kind: u8, required: std::ops::RangeInclusive<i16>) -> u32 {
    if kind == I32 && required.contains(&id) { 1 << id } else { 0 }
}

/// Whether `encoding` names one of the format's encodings.
fn known_encoding(encoding: i32) -> bool {
    (0..=9).contains(&encoding)
}

/// Whether `levels`, exactly `n` definition levels in the RLE/bit-packed hybrid with bit width
/// 1, are all 1: no value of the page is null. Levels that say more or fewer than `n` values, or
/// bytes after them, are not trusted: the parquet crate's reader gets the page and its verdict.
fn all_defined(levels: &[u8], n: usize) -> bool {
    let mut seen = 0usize;
    let mut rest = levels;
    while seen < n {
        let Some((header, used)) = uleb128(rest) else { return false };
        rest = &rest[used..];
        let Ok(count) = usize::try_from(header >> 1) else { return false };
        if header & 1 == 0 {
            // A run of `count` copies of one value, stored in one byte.
            let Some((&value, tail)) = rest.split_first() else { return false };
            if count > n - seen || (value != 1 && count > 0) {
                return false;
            }
            rest = tail;
            seen += count;
        } else {
            // `count` groups of eight bit-packed values, one byte each; the last group's bits
            // past `n` are padding.
            let Some(groups) = rest.get(..count) else { return false };
            let wanted = n - seen;
            if count == 0 || count > wanted.div_ceil(8) {
                return false;
            }
            let full = (count * 8).min(wanted) / 8;
            let partial = (count * 8).min(wanted) % 8;
            if groups[..full].iter().any(|&b| b != 0xFF) {
                return false;
            }
            if partial > 0 && groups[full] & ((1u8 << partial) - 1) != (1u8 << partial) - 1 {
                return false;
            }
            rest = &rest[count..];
            seen = (seen + count * 8).min(n);
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_levels_of_every_shape_are_read() {
        // One RLE run of 100 1s (header 200, two LEB128 bytes) covering the page.
        assert!(all_defined(&[0xC8, 0x01, 1], 100));
        assert!(!all_defined(&[0xC8, 0x01, 1], 101));
        // A run of 0s is a null.
        assert!(!all_defined(&[10 << 1, 0], 10));
        // A zero-length run of 0s is not.
        assert!(all_defined(&[0, 0, 10 << 1, 1], 10));
        // Bit-packed: two groups, all set for the 13 values asked, padding bits ignored.
        assert!(all_defined(&[2 << 1 | 1, 0xFF, 0b0001_1111], 13));
        assert!(!all_defined(&[2 << 1 | 1, 0xFF, 0b0001_0111], 13));
        // Levels that end before the page's values do are not trusted, nor levels that run
        // past them or bytes after them.
        assert!(!all_defined(&[5 << 1, 1], 6));
        assert!(!all_defined(&[7 << 1, 1], 6));
        assert!(!all_defined(&[3 << 1 | 1, 0xFF, 0xFF, 0xFF], 13));
        assert!(!all_defined(&[6 << 1, 1, 0], 6));
        assert!(all_defined(&[6 << 1, 1], 6));
        assert!(!all_defined(&[], 1));
        assert!(all_defined(&[], 0));
    }

    /// A Thrift compact `i32` field header and its zigzag varint value.
    fn i32_field(delta: u8, value: i32, out: &mut Vec<u8>) {
        out.push(delta << 4 | I32);
        let mut v = ((value << 1) ^ (value >> 31)) as u32 as u64;
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn version_two_level_lengths_that_overflow_are_not_read() {
        // A version-2 data page header whose two level lengths add up past `i32::MAX`.
        let mut page = Vec::new();
        i32_field(1, 3, &mut page); // type: DATA_PAGE_V2
        i32_field(1, 8, &mut page); // uncompressed size
        i32_field(1, 8, &mut page); // compressed size
        page.push(5 << 4 | STRUCT); // field 8: the data page header
        for value in [2, 0, 2, 0, i32::MAX, i32::MAX] {
            // values, nulls, rows, encoding, definition and repetition level lengths
            i32_field(1, value, &mut page);
        }
        page.extend_from_slice(&[0, 0]);
        let (header, len) = PageHeader::parse(&page).expect("the header parses");
        assert_eq!((header.kind, len), (PageKind::DataV2, page.len()));
        page.extend_from_slice(&[0; 8]);
        let mut pages = MappedPages {
            chunk: Bytes::from(page),
            at: 0,
            snappy: false,
            decoder: snap::raw::Decoder::new(),
        };
        assert!(pages.next(true, PageBytes::default()).is_err());
    }

    /// Bytes that no compressor can shrink, from a seeded generator.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn literal_runs(stream: &[u8], size: usize) -> Option<PageBytes> {
        LiteralRuns::parse(&Bytes::copy_from_slice(stream), size).map(PageBytes::Runs)
    }

    /// The `len` bytes at `at` of `page`, joined from its pieces.
    fn concat(page: &PageBytes, at: usize, len: usize, run: &mut usize) -> Vec<u8> {
        let mut pieces = Vec::new();
        page.pieces(at, len, run, &mut pieces);
        assert!(pieces.iter().all(|p| !p.is_empty()), "no empty pieces");
        pieces.iter().flat_map(|p| p.as_slice().iter().copied()).collect()
    }

    #[test]
    fn literal_only_streams_are_read_in_place_as_the_decompressor_reads_them() {
        // Around the one-byte and multi-byte literal lengths, and past snappy's 64 KiB blocks,
        // which each end a literal.
        for len in [0, 1, 59, 60, 61, 256, 65_536, 65_537, 200_003] {
            let data = noise(len, len as u64);
            let stream = snap::raw::Encoder::new().compress_vec(&data).unwrap();
            let page = literal_runs(&stream, len).unwrap_or_else(|| panic!("{len} bytes"));
            if let PageBytes::Runs(r) = &page {
                assert_eq!(r.runs.len(), len.div_ceil(65_536), "{len} bytes");
            }
            // Walked forward in steps, as a column is.
            for step in [1, 3, 4096, 16_384, 70_000] {
                let (mut at, mut run) = (0, 0);
                while at < len {
                    let k = step.min(len - at);
                    assert_eq!(
                        concat(&page, at, k, &mut run),
                        &data[at..at + k],
                        "{len}: {k} at {at}"
                    );
                    at += k;
                }
            }
        }
        // A stream with a copy in it goes to the decompressor, and so does one of another size.
        let repeats = snap::raw::Encoder::new().compress_vec(&[7; 1000]).unwrap();
        assert!(literal_runs(&repeats, 1000).is_none());
        let stream = snap::raw::Encoder::new().compress_vec(&noise(100, 1)).unwrap();
        assert!(literal_runs(&stream, 99).is_none());
        assert!(literal_runs(&stream, 101).is_none());
    }

    #[test]
    fn damaged_literal_streams_are_refused_or_read_as_the_decompressor_reads_them() {
        let data = noise(300, 2);
        let stream = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        for cut in 0..stream.len() {
            assert!(literal_runs(&stream[..cut], data.len()).is_none(), "cut at {cut}");
        }
        for i in 0..stream.len() {
            for flip in [0x01, 0x02, 0x40, 0x80, 0xFF] {
                let mut damaged = stream.clone();
                damaged[i] ^= flip;
                let Some(page) = literal_runs(&damaged, data.len()) else { continue };
                let read = concat(&page, 0, data.len(), &mut 0);
                let decompressed = snap::raw::Decoder::new().decompress_vec(&damaged).ok();
                assert_eq!(decompressed, Some(read), "byte {i} ^ {flip:#x}");
            }
        }
    }
}
