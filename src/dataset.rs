//! Shards, their row groups, and the columns chosen from them.
//!
//! A [`Dataset`] is what the user's input paths name: Parquet files, folders (every `*.parquet`
//! below them, in sorted order) and glob patterns, mixed. Opening it parses every shard's footer
//! once, so that a broken shard is reported before any training starts.
//!
//! A parsed footer holds about 30 KB per row group of 65 columns, which grows with the data: a
//! terabyte of such row groups would hold a gigabyte of footers. So a [`Shard`] keeps only what
//! is the same for all its row groups (the schema, the key-value metadata) and, per row group,
//! its size and where its `RowGroup` struct lies in the file; a decode worker parses that one
//! struct again when it opens the row group (`Shard::row_group_meta`), a few microseconds
//! against the milliseconds of decoding it.
//!
//! A [`ColumnPlan`] says which columns become features and which is the target. It is resolved
//! against the first shard and then checked against every other one: shards must agree on the
//! type of each chosen column, though they may order their columns differently.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FileMetaData, ParquetMetaData, ParquetMetaDataOptions, ParquetMetaDataReader, RowGroupMetaData,
};
use parquet::schema::types::SchemaDescriptor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pages::Source;
use crate::thrift::{Compact, LIST, STRUCT, write_varint};

/// How shard bytes reach the decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// Memory-map each shard; pages are decoded straight from the page cache.
    ///
    /// A shard is mapped only while a worker decodes one of its row groups, and unmapped after,
    /// so the process never shows more of the data as resident than the row groups in flight,
    /// however large the shards are.
    ///
    /// # Safety of the mapping
    ///
    /// A mapped file that another process truncates while slope reads it makes the kernel
    /// deliver SIGBUS, which ends the process. Shards are input data that nothing should be
    /// rewriting during a run; where that cannot be promised, use [`IoMode::Read`].
    #[default]
    Mmap,
    /// Read row groups with ordinary buffered reads, one file handle per worker.
    Read,
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoMode::Mmap => "mmap",
            IoMode::Read => "read",
        })
    }
}

/// One Parquet file of the dataset, with what its footer says about it.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    pub(crate) io: IoMode,
    /// The footer without its row groups.
    file: FileMetaData,
    schema: Arc<Schema>,
    row_groups: Vec<RowGroupEntry>,
    /// Each leaf column's largest uncompressed column chunk, over the row groups.
    largest_chunks: Vec<u64>,
    /// The whole parsed footer, kept only where its row groups could not be found in its bytes
    /// (never so far: the parquet crate would not have parsed it either).
    parsed: Option<Arc<ParquetMetaData>>,
    /// Memory the shard's footer takes as kept here.
    footer_bytes: u64,
}

/// What a [`Shard`] keeps of one row group's metadata.
#[derive(Clone, Debug)]
struct RowGroupEntry {
    rows: usize,
    compressed: u64,
    /// The ordinal the parquet crate gave it, which a lone row group parsed again lacks.
    ordinal: Option<i32>,
    /// Where its Thrift `RowGroup` struct lies in the file.
    thrift: std::ops::Range<u64>,
}

impl Shard {
    /// Rows in the whole shard.
    pub fn rows(&self) -> u64 {
        self.file.num_rows().max(0) as u64
    }

    /// Number of row groups.
    pub fn row_groups(&self) -> usize {
        self.row_groups.len()
    }

    /// Rows in one row group.
    pub fn row_group_rows(&self, row_group: usize) -> usize {
        self.row_groups[row_group].rows
    }

    /// Maps the whole file read-only; the mapping lasts as long as the returned bytes.
    pub(crate) fn map(&self) -> Result<Bytes> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, "open", e))?;
        map_file(&file, &self.path)
    }

    /// The Arrow schema the shard decodes to.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The Parquet schema: the leaf columns.
    pub(crate) fn parquet_schema(&self) -> &SchemaDescriptor {
        self.file.schema_descr()
    }

    /// Row group `row_group`'s metadata, parsed again from the footer's bytes in `source`, the
    /// shard's mapped file or a handle to it. It is what the whole footer's parse gave for that
    /// row group.
    pub(crate) fn row_group_meta(
        &self,
        row_group: usize,
        source: &Source,
    ) -> Result<RowGroupMetaData> {
        if let Some(parsed) = &self.parsed {
            return Ok(parsed.row_group(row_group).clone());
        }
        let entry = &self.row_groups[row_group];
        let failed = |source: ParquetError| Error::Decode {
            path: self.path.clone(),
            row_group,
            columns: "its metadata in the footer".to_string(),
            source: Box::new(source),
        };
        let bytes = read_range(source, entry.thrift.clone())
            .map_err(|e| failed(ParquetError::External(Box::new(e))))?;
        // Bytes that changed since the shard was opened reach the parquet crate's parser here.
        let meta = crate::reader::in_parquet_crate(|| parse_row_group(&self.file, &bytes))
            .map_err(|panic| failed(ParquetError::General(panic)))?
            .map_err(failed)?;
        if meta.num_rows() != entry.rows as i64 {
            let changed = format!("{} rows, where the footer said {}", meta.num_rows(), entry.rows);
            return Err(failed(ParquetError::General(changed)));
        }
        match entry.ordinal {
            Some(ordinal) if meta.ordinal() != Some(ordinal) => {
                meta.into_builder().set_ordinal(ordinal).build().map_err(failed)
            }
            _ => Ok(meta),
        }
    }

    /// The parquet crate's reader metadata of one row group, as [`Shard::row_group_meta`] gives
    /// it: the row group is its only one, at index 0.
    pub(crate) fn reader_meta(
        &self,
        row_group: &RowGroupMetaData,
    ) -> parquet::errors::Result<ArrowReaderMetadata> {
        let meta = ParquetMetaData::new(self.file.clone(), vec![row_group.clone()]);
        ArrowReaderMetadata::try_new(Arc::new(meta), ArrowReaderOptions::new())
    }
}

/// Bytes `range` of a shard: a slice of the map, or read through the handle.
fn read_range(source: &Source, range: std::ops::Range<u64>) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let len = usize::try_from(range.end - range.start).map_err(std::io::Error::other)?;
    match source {
        Source::Mapped(map) => {
            let start = usize::try_from(range.start).map_err(std::io::Error::other)?;
            match start.checked_add(len) {
                Some(end) if end <= map.len() => Ok(map.slice(start..end)),
                _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
        Source::Read(file) => {
            let mut file: &File = file;
            let mut bytes = vec![0; len];
            file.seek(SeekFrom::Start(range.start))?;
            file.read_exact(&mut bytes)?;
            Ok(Bytes::from(bytes))
        }
    }
}

/// Parses one Thrift `RowGroup` struct, `bytes`, of a file whose footer is `file`: as the one
/// row group of a `FileMetaData` that holds nothing else (the schema is `file`'s, not parsed
/// again).
fn parse_row_group(file: &FileMetaData, bytes: &[u8]) -> parquet::errors::Result<RowGroupMetaData> {
    let zigzag = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
    let mut footer = Vec::with_capacity(bytes.len() + 24);
    // Field 1, an i32 (type 5), then field 3 (delta 2), an i64 (type 6).
    footer.push(0x15);
    write_varint(zigzag(i64::from(file.version())), &mut footer);
    footer.push(0x26);
    write_varint(zigzag(file.num_rows()), &mut footer);
    // Field 4 (delta 1), a list (type 9) of one struct (type 12), then the struct's end.
    footer.extend_from_slice(&[0x19, 0x1C]);
    footer.extend_from_slice(bytes);
    footer.push(0);
    let options = ParquetMetaDataOptions::new().with_schema(file.schema_descr_ptr());
    let meta = ParquetMetaDataReader::decode_metadata_with_options(&footer, Some(&options))?;
    let mut row_groups = meta.into_builder().take_row_groups();
    match (row_groups.pop(), row_groups.is_empty()) {
        (Some(row_group), true) => Ok(row_group),
        _ => Err(ParquetError::General("not one row group".into())),
    }
}

/// Where each row group's `RowGroup` struct lies in `footer`, a Thrift `FileMetaData`; `None`
/// where the bytes are not laid out as the format says.
fn row_group_ranges(footer: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut r = Compact { bytes: footer, at: 0 };
    let mut last = 0;
    let mut ranges = None;
    while let Some((kind, id)) = r.field(&mut last)? {
        if (id, kind) != (4, LIST) {
            r.skip(kind, 0)?;
            continue;
        }
        let head = r.byte()?;
        if head & 0x0F != STRUCT {
            return None;
        }
        let n = match head >> 4 {
            15 => usize::try_from(r.varint()?).ok()?,
            n => usize::from(n),
        };
        // Every struct takes at least its end byte.
        let mut found = Vec::with_capacity(n.min(footer.len()));
        for _ in 0..n {
            let start = r.at;
            r.skip(STRUCT, 1)?;
            found.push(start..r.at);
        }
        ranges = Some(found);
    }
    ranges
}

/// A row group, the unit of reading and of shuffling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    pub shard: usize,
    pub row_group: usize,
    pub rows: usize,
}

/// The shards named by the user's inputs.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub shards: Vec<Shard>,
    pub io: IoMode,
}

impl Dataset {
    /// Resolves `inputs` (files, folders, globs) and reads every shard's footer.
    pub fn open<S: AsRef<str>>(inputs: &[S], io: IoMode) -> Result<Dataset> {
        let paths = resolve_inputs(inputs)?;
        let shards = paths.into_iter().map(|p| open_shard(p, io)).collect::<Result<Vec<_>>>()?;
        Ok(Dataset { shards, io })
    }

    /// Every row group of every shard, in file order.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            for rg in 0..shard.row_groups() {
                units.push(Unit { shard: s, row_group: rg, rows: shard.row_group_rows(rg) });
            }
        }
        units
    }

    /// Total rows across shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(Shard::rows).sum()
    }

    /// The largest row group's compressed size: what a worker holds of the file (mapped or read)
    /// while it decodes one.
    pub fn max_row_group_bytes(&self) -> u64 {
        let groups = self.shards.iter().flat_map(|s| &s.row_groups);
        groups.map(|rg| rg.compressed).max().unwrap_or(0)
    }

    /// A bound on a row group's uncompressed size in the columns `plan` reads: the sum, over
    /// those columns, of each one's largest chunk. A worker holds the current decompressed page
    /// of each of those columns, and no page is larger than its column chunk, so this bounds the
    /// pages it holds at once. Writers often store a column chunk as one page (pyarrow's 1 MiB
    /// default page holds a 131,072-row `f32` chunk), and then a worker holds all of it.
    pub fn max_decoded_row_group_bytes(&self, plan: &ColumnPlan) -> u64 {
        let per_shard = self.shards.iter().map(|shard| {
            let mask = plan.projection(shard);
            let chunks = shard.largest_chunks.iter().enumerate();
            chunks.filter(|(leaf, _)| mask.leaf_included(*leaf)).map(|(_, &bytes)| bytes).sum()
        });
        per_shard.max().unwrap_or(0)
    }

    /// Memory held by what every shard keeps of its footer.
    pub fn metadata_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.footer_bytes).sum()
    }

    /// Names the input in messages: the shard, or the first shard and how many others.
    pub fn describe(&self) -> String {
        let first = self.shards[0].path.display();
        match self.shards.len() {
            1 => first.to_string(),
            2 => format!("{first} and 1 other shard"),
            n => format!("{first} and {} other shards", n - 1),
        }
    }

    /// Total bytes across shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }
}

/// Turns the user's inputs into a sorted-per-input, de-duplicated list of files.
pub fn resolve_inputs<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let path = Path::new(input);
        let found = if path.is_dir() {
            let mut files = Vec::new();
            collect_parquet(path, &mut files)?;
            files.sort();
            files
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else if input.contains(['*', '?', '[']) {
            expand_glob(input)?
        } else {
            // Ask the file system again for its own account of what is wrong.
            let source = std::fs::metadata(path).err().unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a file or folder")
            });
            return Err(Error::io(path, "open", source));
        };
        if found.is_empty() {
            return Err(Error::NoInput { pattern: input.to_string() });
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::NoInput { pattern: "(no input paths given)".to_string() });
    }
    Ok(out)
}

fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern)
        .map_err(|e| Error::param("glob pattern", e.msg.to_string(), pattern))?;
    let mut files = Vec::new();
    for entry in paths {
        let entry = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            Error::io(path, "read", e.into())
        })?;
        if entry.is_dir() {
            collect_parquet(&entry, &mut files)?;
        } else {
            files.push(entry);
        }
    }
    files.sort();
    Ok(files)
}

/// Collects `*.parquet` files below `dir`, recursing into sub-folders (partitioned datasets keep
/// shards in `key=value/` folders). Hidden files and folders are skipped, as Spark and pyarrow do.
fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read folder", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "read folder", e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(path);
        }
    }
    Ok(())
}

fn open_shard(path: PathBuf, io: IoMode) -> Result<Shard> {
    let file = File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
    let bytes = file.metadata().map_err(|e| Error::io(&path, "read", e))?.len();
    let options = ArrowReaderOptions::new();
    let (meta, source) = match io {
        IoMode::Mmap => {
            let map = map_file(&file, &path)?;
            (ArrowReaderMetadata::load(&map, options), Source::Mapped(map))
        }
        IoMode::Read => (ArrowReaderMetadata::load(&file, options), Source::Read(Arc::new(file))),
    };
    let meta = meta.map_err(|source| Error::NotParquet { path: path.clone(), source })?;
    let parsed = meta.metadata();
    let schema = Arc::clone(meta.schema());
    // The parquet crate has just read the footer: its length precedes the final magic.
    let read = |range| read_range(&source, range).map_err(|e| Error::io(&path, "read", e));
    let tail = read(bytes - 8..bytes - 4)?;
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    // A file that changed since the parquet crate read it may no longer hold its footer.
    let footer_start = (bytes - 8).checked_sub(footer_len).ok_or_else(|| {
        Error::io(&path, "read", std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    })?;
    let footer = read(footer_start..bytes - 8)?;
    let mut largest_chunks = vec![0u64; parsed.file_metadata().schema_descr().num_columns()];
    for rg in parsed.row_groups() {
        for (largest, chunk) in largest_chunks.iter_mut().zip(rg.columns()) {
            *largest = (*largest).max(chunk.uncompressed_size().max(0) as u64);
        }
    }
    let ranges = row_group_ranges(&footer).filter(|r| r.len() == parsed.num_row_groups());
    let row_groups: Vec<RowGroupEntry> = parsed
        .row_groups()
        .iter()
        .enumerate()
        .map(|(i, rg)| RowGroupEntry {
            rows: rg.num_rows().max(0) as usize,
            compressed: rg.compressed_size().max(0) as u64,
            ordinal: rg.ordinal(),
            thrift: ranges
                .as_ref()
                .map_or(0..0, |r| footer_start + r[i].start as u64..footer_start + r[i].end as u64),
        })
        .collect();
    let mut shard = Shard {
        path,
        bytes,
        io,
        file: parsed.file_metadata().clone(),
        schema,
        row_groups,
        largest_chunks,
        parsed: None,
        footer_bytes: 0,
    };
    // One row group parsed again must be what the whole footer's parse gave; else (never seen)
    // the shard keeps the whole parse.
    let indexed = ranges.is_some()
        && parsed.row_groups().first().is_none_or(|first| {
            shard.row_group_meta(0, &source).is_ok_and(|again| &again == first)
        });
    if !indexed {
        tracing::debug!("{}: footer kept whole", shard.path.display());
        shard.parsed = Some(Arc::clone(parsed));
    }
    let kept = ParquetMetaData::new(shard.file.clone(), Vec::new()).memory_size();
    let parsed_bytes = shard.parsed.as_ref().map_or(0, |p| p.memory_size());
    shard.footer_bytes = (kept
        + parsed_bytes
        + size_of_val(shard.row_groups.as_slice())
        + size_of_val(shard.largest_chunks.as_slice())) as u64;
    Ok(shard)
}

fn map_file(file: &File, path: &Path) -> Result<Bytes> {
    // SAFETY: the mapping is read-only and private to this process. If another process
    // truncates the file while it is mapped, reads past the new end raise SIGBUS; that risk is
    // documented on `IoMode::Mmap`, and `--io read` avoids it.
    let mmap = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, "map", e))?;
    Ok(Bytes::from_owner(mmap))
}

/// A column that feeds features: a scalar number, or a fixed-size list of numbers (an
/// embedding) that counts as `width` features named `name[0]` … `name[width-1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureColumn {
    pub name: String,
    /// 1 for a scalar column, the list size for a fixed-size list.
    pub width: usize,
    /// Whether the column is a fixed-size list (a list of size 1 is still named `name[0]`).
    #[serde(default)]
    pub list: bool,
}

impl FeatureColumn {
    /// The feature names this column contributes.
    pub fn feature_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.width)
            .map(move |k| if self.list { format!("{}[{k}]", self.name) } else { self.name.clone() })
    }
}

/// Which columns to read and how to lay them out in a row.
#[derive(Clone, Debug)]
pub struct ColumnPlan {
    pub features: Vec<FeatureColumn>,
    /// The target column, absent when only predicting.
    pub target: Option<String>,
    /// Extra columns carried through unchanged (`predict --keep`).
    pub keep: Vec<String>,
    /// Offset of each feature column in a row.
    pub(crate) offsets: Vec<usize>,
    /// Features per row.
    pub d: usize,
}

/// How the user chose features.
#[derive(Clone, Debug, Default)]
pub struct ColumnSelection {
    pub target: Option<String>,
    /// Explicit feature columns; empty means every numeric column but the target and excluded.
    pub features: Vec<String>,
    pub exclude: Vec<String>,
    pub keep: Vec<String>,
}

impl ColumnPlan {
    /// Resolves `selection` against the dataset's first shard and checks every other shard.
    pub fn resolve(dataset: &Dataset, selection: &ColumnSelection) -> Result<ColumnPlan> {
        let first = &dataset.shards[0];
        let schema = first.schema();
        let mut features = Vec::new();
        if selection.features.is_empty() {
            for field in schema.fields() {
                let name = field.name();
                let skip = Some(name) == selection.target.as_ref()
                    || selection.exclude.contains(name)
                    || selection.keep.contains(name);
                if !skip && let Some(col) = feature_column(field) {
                    features.push(col);
                }
            }
            for name in &selection.exclude {
                find_field(first, name)?;
            }
        } else {
            for name in &selection.features {
                if Some(name) == selection.target.as_ref() {
                    return Err(Error::param("--features", "columns other than the target", name));
                }
                let field = find_field(first, name)?;
                let col = feature_column(field).ok_or_else(|| not_numeric(first, field))?;
                features.push(col);
            }
        }
        if let Some(target) = &selection.target {
            let field = find_field(first, target)?;
            if !is_number(field.data_type()) {
                return Err(not_numeric(first, field));
            }
        }
        for name in &selection.keep {
            find_field(first, name)?;
        }
        let plan = ColumnPlan::new(features, selection.target.clone(), selection.keep.clone());
        if plan.d == 0 {
            return Err(Error::param(
                "features",
                "at least one numeric feature column",
                format!("none in {}", first.path.display()),
            ));
        }
        for shard in &dataset.shards[1..] {
            plan.check_shard(first, shard)?;
        }
        Ok(plan)
    }

    /// Builds a plan from known feature columns (a model's), checking every shard has them.
    pub fn for_model(
        dataset: &Dataset,
        features: Vec<FeatureColumn>,
        target: Option<String>,
        keep: Vec<String>,
    ) -> Result<ColumnPlan> {
        let plan = ColumnPlan::new(features, target, keep);
        let first = &dataset.shards[0];
        for col in &plan.features {
            let field = find_field(first, &col.name)?;
            match feature_column(field) {
                Some(found) if found.width == col.width && found.list == col.list => {}
                _ => {
                    return Err(Error::SchemaMismatch {
                        first: PathBuf::from("the model"),
                        other: first.path.clone(),
                        column: col.name.clone(),
                        expected: describe_feature(col),
                        found: field.data_type().to_string(),
                    });
                }
            }
        }
        if let Some(target) = &plan.target {
            let field = find_field(first, target)?;
            if !is_number(field.data_type()) {
                return Err(not_numeric(first, field));
            }
        }
        for name in &plan.keep {
            find_field(first, name)?;
        }
        for shard in &dataset.shards[1..] {
            plan.check_shard(first, shard)?;
        }
        Ok(plan)
    }

    fn new(features: Vec<FeatureColumn>, target: Option<String>, keep: Vec<String>) -> ColumnPlan {
        let mut offsets = Vec::with_capacity(features.len());
        let mut d = 0;
        for f in &features {
            offsets.push(d);
            d += f.width;
        }
        ColumnPlan { features, target, keep, offsets, d }
    }

    /// A plan that reads one column alone, used to find which column of a row group is broken.
    pub(crate) fn single(name: &str) -> ColumnPlan {
        ColumnPlan::new(Vec::new(), Some(name.to_string()), Vec::new())
    }

    /// Every feature's name, in row order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features.iter().flat_map(FeatureColumn::feature_names).collect()
    }

    /// Names of every column read: features, then the target, then kept columns.
    pub(crate) fn read_columns(&self) -> impl Iterator<Item = &str> {
        let features = self.features.iter().map(|f| f.name.as_str());
        features.chain(self.target.as_deref()).chain(self.keep.iter().map(String::as_str))
    }

    /// The projection that decodes only the plan's columns from `shard`.
    pub(crate) fn projection(&self, shard: &Shard) -> ProjectionMask {
        let schema = shard.schema();
        let roots: Vec<usize> =
            self.read_columns().filter_map(|name| schema.index_of(name).ok()).collect();
        ProjectionMask::roots(shard.parquet_schema(), roots)
    }

    fn check_shard(&self, first: &Shard, shard: &Shard) -> Result<()> {
        for name in self.read_columns() {
            let expected = find_field(first, name)?.data_type();
            let field = find_field(shard, name)?;
            if field.data_type() != expected {
                return Err(Error::SchemaMismatch {
                    first: first.path.clone(),
                    other: shard.path.clone(),
                    column: name.to_string(),
                    expected: expected.to_string(),
                    found: field.data_type().to_string(),
                });
            }
        }
        Ok(())
    }
}

fn describe_feature(col: &FeatureColumn) -> String {
    if col.list {
        format!("a fixed-size list of {} numbers", col.width)
    } else {
        "a number".to_string()
    }
}

fn find_field<'a>(shard: &'a Shard, name: &str) -> Result<&'a Field> {
    let schema = shard.schema();
    schema.field_with_name(name).map_err(|_| Error::MissingColumn {
        path: shard.path.clone(),
        column: name.to_string(),
        available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
    })
}

fn not_numeric(shard: &Shard, field: &Field) -> Error {
    Error::NotNumeric {
        path: shard.path.clone(),
        column: field.name().clone(),
        found: field.data_type().clone(),
    }
}

/// Whether slope can convert values of this type to `f32`.
pub fn is_number(dt: &DataType) -> bool {
    use DataType::*;
    matches!(
        dt,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float16
            | Float32
            | Float64
    )
}

/// Whether a field can provide features: a number, or a fixed-size list of numbers.
pub fn is_feature_field(field: &Field) -> bool {
    feature_column(field).is_some()
}

/// The feature column a field provides, if it is numeric.
fn feature_column(field: &Field) -> Option<FeatureColumn> {
    match field.data_type() {
        dt if is_number(dt) => {
            Some(FeatureColumn { name: field.name().clone(), width: 1, list: false })
        }
        DataType::FixedSizeList(child, size) if is_number(child.data_type()) && *size > 0 => {
            Some(FeatureColumn { name: field.name().clone(), width: *size as usize, list: true })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float32Array, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    /// A file of `rows` rows of three `f32` columns (one of them optional, with nulls), in row
    /// groups of at most `group` rows.
    fn write(path: &Path, rows: usize, group: usize, statistics: EnabledStatistics) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float32, false),
            Field::new("b", DataType::Float32, true),
            Field::new("y", DataType::Float32, false),
        ]));
        let column = |f: fn(usize) -> Option<f32>| -> ArrayRef {
            Arc::new(Float32Array::from((0..rows).map(f).collect::<Vec<_>>()))
        };
        let columns = vec![
            column(|r| Some(r as f32)),
            column(|r| (r % 7 != 3).then_some(r as f32 * 0.5)),
            column(|r| Some(-(r as f32))),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_statistics_enabled(statistics)
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "origin".into(),
                "slope's tests".to_string(),
            )]))
            .build();
        let mut writer =
            ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn source_of(shard: &Shard) -> Source {
        match shard.io {
            IoMode::Mmap => Source::Mapped(shard.map().unwrap()),
            IoMode::Read => Source::Read(Arc::new(File::open(&shard.path).unwrap())),
        }
    }

    #[test]
    fn row_groups_parsed_again_are_what_the_whole_footer_gave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        // One row group; three; and twenty, whose list header takes a second byte.
        for (rows, group) in [(50, 100), (250, 100), (400, 20)] {
            for statistics in [EnabledStatistics::None, EnabledStatistics::Page] {
                write(&path, rows, group, statistics);
                let whole = ArrowReaderMetadata::load(
                    &File::open(&path).unwrap(),
                    ArrowReaderOptions::new(),
                )
                .unwrap();
                let whole = whole.metadata();
                for io in [IoMode::Mmap, IoMode::Read] {
                    let shard = open_shard(path.clone(), io).unwrap();
                    assert!(shard.parsed.is_none(), "{rows} rows: footer indexed");
                    assert_eq!(shard.row_groups(), rows.div_ceil(group));
                    assert_eq!(shard.rows(), rows as u64);
                    let source = source_of(&shard);
                    for rg in 0..shard.row_groups() {
                        let again = shard.row_group_meta(rg, &source).unwrap();
                        assert_eq!(&again, whole.row_group(rg), "{rows} rows, row group {rg}");
                        let reader = shard.reader_meta(&again).unwrap();
                        assert_eq!(reader.schema(), shard.schema());
                        assert_eq!(reader.metadata().file_metadata(), whole.file_metadata());
                    }
                }
            }
        }
    }

    #[test]
    fn a_shard_keeps_a_few_bytes_per_row_group_of_its_footer() {
        let dir = tempfile::tempdir().unwrap();
        let (few, many) = (dir.path().join("few.parquet"), dir.path().join("many.parquet"));
        write(&few, 2_000, 1_000, EnabledStatistics::Page);
        write(&many, 2_000, 10, EnabledStatistics::Page);
        let (few, many) =
            (open_shard(few, IoMode::Mmap).unwrap(), open_shard(many, IoMode::Mmap).unwrap());
        let parsed = |s: &Shard| {
            ArrowReaderMetadata::load(&s.map().unwrap(), ArrowReaderOptions::new())
                .unwrap()
                .metadata()
                .memory_size() as u64
        };
        let per_group = |a: u64, b: u64| (b - a) / (many.row_groups() - few.row_groups()) as u64;
        let kept = per_group(few.footer_bytes, many.footer_bytes);
        let whole = per_group(parsed(&few), parsed(&many));
        // Three columns take about 1.5 KB a row group parsed, and a few dozen bytes here.
        assert!(kept <= 64, "{kept} bytes kept per row group");
        assert!(kept * 10 < whole, "{kept} bytes kept per row group, {whole} parsed");
    }

    #[test]
    fn a_shard_rewritten_after_it_was_opened_fails_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        for io in [IoMode::Mmap, IoMode::Read] {
            write(&path, 300, 100, EnabledStatistics::Page);
            let shard = open_shard(path.clone(), io).unwrap();
            // Fewer, larger row groups, and a shorter file.
            write(&path, 120, 60, EnabledStatistics::None);
            let source = source_of(&shard);
            for rg in 0..shard.row_groups() {
                if let Err(e) = shard.row_group_meta(rg, &source) {
                    let message = e.to_string();
                    assert!(
                        message.contains("t.parquet") && message.contains("row group"),
                        "{message}"
                    );
                }
            }
            let last = shard.row_groups() - 1;
            assert!(shard.row_group_meta(last, &source).is_err(), "{io}: row group {last}");
        }
    }
}
