//! Shards, their row groups, and the columns chosen from them.
//!
//! A [`Dataset`] is what the user's input paths name: Parquet files, folders (every `*.parquet`
//! below them, in sorted order) and glob patterns, mixed. Opening it reads every shard's footer
//! once, so that a broken shard is reported before any training starts, and so that decode
//! workers can later open row groups without parsing the footer again.
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
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// One Parquet file of the dataset, with its footer already parsed.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    pub(crate) meta: ArrowReaderMetadata,
    pub(crate) io: IoMode,
}

impl Shard {
    /// Rows in the whole shard.
    pub fn rows(&self) -> u64 {
        self.meta.metadata().file_metadata().num_rows().max(0) as u64
    }

    /// Number of row groups.
    pub fn row_groups(&self) -> usize {
        self.meta.metadata().num_row_groups()
    }

    /// Rows in one row group.
    pub fn row_group_rows(&self, row_group: usize) -> usize {
        self.meta.metadata().row_group(row_group).num_rows().max(0) as usize
    }

    /// Maps the whole file read-only; the mapping lasts as long as the returned bytes.
    pub(crate) fn map(&self) -> Result<Bytes> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, "open", e))?;
        map_file(&file, &self.path)
    }

    /// The Arrow schema the shard decodes to.
    pub fn schema(&self) -> &Arc<Schema> {
        self.meta.schema()
    }
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
        let groups = self.shards.iter().flat_map(|s| s.meta.metadata().row_groups());
        groups.map(|rg| rg.compressed_size().max(0) as u64).max().unwrap_or(0)
    }

    /// The largest row group's uncompressed size in the columns `plan` reads. A worker holds the
    /// current decompressed page of each of those columns, and no page is larger than its column
    /// chunk, so this bounds the pages it holds at once. Writers often store a column chunk as
    /// one page (pyarrow's 1 MiB default page holds a 131,072-row `f32` chunk), and then a
    /// worker holds all of it.
    pub fn max_decoded_row_group_bytes(&self, plan: &ColumnPlan) -> u64 {
        let per_row_group = self.shards.iter().flat_map(|shard| {
            let mask = plan.projection(shard);
            shard.meta.metadata().row_groups().iter().map(move |rg| {
                let chunks = rg.columns().iter().enumerate();
                let chosen = chunks.filter(|(leaf, _)| mask.leaf_included(*leaf));
                chosen.map(|(_, chunk)| chunk.uncompressed_size().max(0) as u64).sum::<u64>()
            })
        });
        per_row_group.max().unwrap_or(0)
    }

    /// Memory held by every shard's parsed footer.
    pub fn metadata_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.meta.metadata().memory_size() as u64).sum()
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
    let meta = match io {
        IoMode::Mmap => ArrowReaderMetadata::load(&map_file(&file, &path)?, options),
        IoMode::Read => ArrowReaderMetadata::load(&file, options),
    };
    let meta = meta.map_err(|source| Error::NotParquet { path: path.clone(), source })?;
    Ok(Shard { path, bytes, meta, io })
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
        ProjectionMask::roots(shard.meta.parquet_schema(), roots)
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
