//! Writes the small Parquet files under `fixtures/` that `tests/cli.rs` runs the `slope` binary
//! on.
//!
//! Run it from the repository root as `cargo run --example make_fixtures -- fixtures`. The output
//! depends on nothing but the constants below: every random value comes from a `slope::rng::Rng`
//! derived from [`SEED`] and a stream number (one per training shard, one for the holdout, one
//! for the broken files, drawn in a fixed order), and the writer's settings are fixed.
//! Rerunning it therefore rewrites the same bytes, as long as the parquet crate's version (which
//! each footer records) is the same.
//!
//! Every file shares one schema, the shape of a realistic feature table:
//!
//! | column | type                                | role                                  |
//! |--------|-------------------------------------|---------------------------------------|
//! | `id`   | Int64                               | a row key, excluded with `--exclude`  |
//! | `a`    | Float32                             | feature                               |
//! | `b`    | Float64                             | feature                               |
//! | `c`    | Int32                               | feature                               |
//! | `emb`  | FixedSizeList<Float32, non-null; 3> | three features, `emb[0]` … `emb[2]`   |
//! | `name` | Utf8                                | text, never a feature                 |
//! | `y`    | Float64                             | target: [`BIAS`] + Σ [`WEIGHTS`]·x + noise |
//!
//! Each file under `broken/` holds exactly one defect. The defects are made here, by writing a
//! bad value or damaging a good file, rather than by hand, so that the position of each (row
//! group, row, column) is stated once in this file and can be checked by the tests. The damaged
//! files are read back before the program ends, so a parquet release that started to tolerate
//! the damage would be noticed here rather than as a puzzling test failure.

use std::error::Error;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
use slope::rng::Rng;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The root seed of every stream in [`stream`].
const SEED: u64 = 0x5107_E000;

/// True weights of `a`, `b`, `c`, `emb[0]`, `emb[1]`, `emb[2]`, in that order.
const WEIGHTS: [f64; 6] = [1.5, -2.0, 0.25, 1.0, -0.5, 0.75];
const BIAS: f64 = 0.5;
/// Standard deviation of the noise added to the target. It is small so that every algorithm
/// lands close to the closed form, yet not zero, so that the closed form has a residual to fit.
const NOISE: f64 = 0.01;

/// Rows per row group of the training shards and of the holdout file. Two row groups per file
/// make row-group shuffling and multi-worker decoding happen even on data this small.
const TRAIN_GROUP_ROWS: usize = 300;
const HOLDOUT_GROUP_ROWS: usize = 100;
/// The holdout's first id, far above the training ids, so that `predict --keep id` output can
/// never be mistaken for training rows.
const HOLDOUT_FIRST_ID: i64 = 1_000_000;
/// Rows per row group of the broken files, which need only enough rows to place a defect.
const BROKEN_GROUP_ROWS: usize = 40;

/// Where the defects of the value fixtures sit: (row group, row within the row group).
const NULL_AT: (usize, usize) = (1, 17);
const NAN_AT: (usize, usize) = (0, 5);
const INFINITY_AT: (usize, usize) = (1, 30);
/// The value of `a` throughout `constant.parquet`.
const CONSTANT_A: f32 = 2.5;
/// How many bytes of a good file `truncated.parquet` keeps: the start of the first row group,
/// with no footer.
const TRUNCATED_BYTES: usize = 300;

/// Stream numbers below [`SEED`]. The good files each have their own, so that changing one
/// leaves the others' rows as they were.
mod stream {
    pub const TRAIN: u64 = 0;
    pub const HOLDOUT: u64 = 1;
    pub const BROKEN: u64 = 2;
}

fn main() -> Result<()> {
    let Some(out) = std::env::args_os().nth(1) else {
        return Err("usage: cargo run --example make_fixtures -- OUTPUT_FOLDER".into());
    };
    let out = Path::new(&out);
    write_train(&out.join("train"))?;
    let mut rng = Rng::derived(SEED, &[stream::HOLDOUT]);
    let holdout = draw_groups(&mut rng, HOLDOUT_FIRST_ID, 2, HOLDOUT_GROUP_ROWS);
    write_parquet(&out.join("holdout.parquet"), &schema(DataType::Int32), &holdout)?;
    write_broken(&out.join("broken"))?;
    Ok(())
}

/// Writes `part-0.parquet` and `part-1.parquet`, two row groups each, with ids running on from
/// one shard to the next as if one table had been split.
fn write_train(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for shard in 0..2u64 {
        let mut rng = Rng::derived(SEED, &[stream::TRAIN, shard]);
        let first_id = (shard as usize * 2 * TRAIN_GROUP_ROWS) as i64;
        let groups = draw_groups(&mut rng, first_id, 2, TRAIN_GROUP_ROWS);
        write_parquet(
            &dir.join(format!("part-{shard}.parquet")),
            &schema(DataType::Int32),
            &groups,
        )?;
    }
    Ok(())
}

/// Writes every file under `broken/`, each with one defect.
fn write_broken(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("mismatch"))?;
    let full = schema(DataType::Int32);
    let mut rng = Rng::derived(SEED, &[stream::BROKEN]);
    let mut good = || draw_groups(&mut rng, 0, 2, BROKEN_GROUP_ROWS);

    // Files that are not Parquet at all, or not all of one.
    fs::write(dir.join("not_parquet.parquet"), "id,a,b,c,y\n1,0.5,1.5,2,3.0\n")?;
    fs::write(dir.join("empty.parquet"), b"")?;
    let whole = parquet_bytes(&full, &good())?;
    fs::write(dir.join("truncated.parquet"), &whole[..TRUNCATED_BYTES])?;
    write_parquet(&dir.join("zero_rows.parquet"), &full, &[])?;

    // Files whose schema does not fit the training flags.
    write_batches(&dir.join("missing_target.parquet"), &good(), |rows| {
        without_column(&rows.batch(&full)?, "y")
    })?;
    write_parquet(&dir.join("mismatch/part-0.parquet"), &full, &good())?;
    write_parquet(&dir.join("mismatch/part-1.parquet"), &schema(DataType::Float64), &good())?;

    // Files with one bad value in a chosen column.
    let mut groups = good();
    groups[NULL_AT.0].b[NULL_AT.1] = None;
    write_parquet(&dir.join("nulls.parquet"), &full, &groups)?;
    let mut groups = good();
    groups[NAN_AT.0].a[NAN_AT.1] = f32::NAN;
    write_parquet(&dir.join("nan.parquet"), &full, &groups)?;
    let mut groups = good();
    groups[INFINITY_AT.0].y[INFINITY_AT.1] = f64::INFINITY;
    write_parquet(&dir.join("infinite.parquet"), &full, &groups)?;
    let mut groups = good();
    for rows in &mut groups {
        rows.a.fill(CONSTANT_A);
        rows.relabel();
    }
    write_parquet(&dir.join("constant.parquet"), &full, &groups)?;

    write_corrupt_page(&dir.join("corrupt_page.parquet"), &full, &good())?;
    write_damaged_levels(&dir.join("damaged_levels.parquet"), &full, &good())
}

/// One row group's values, column by column, before they become Arrow arrays. Keeping them in
/// plain vectors lets a broken fixture change one value before the batch is built.
struct Rows {
    id: Vec<i64>,
    a: Vec<f32>,
    b: Vec<Option<f64>>,
    c: Vec<i32>,
    /// Three values per row.
    emb: Vec<f32>,
    name: Vec<String>,
    /// The noise each row's target was drawn with, kept so that [`Rows::relabel`] can recompute
    /// the target after a feature changes without drawing again.
    noise: Vec<f64>,
    y: Vec<f64>,
}

impl Rows {
    /// Draws `n` rows with ids from `first_id`. The features' spreads lie within a factor of
    /// three of each other, so that gradient descent on raw columns is reasonably conditioned.
    fn draw(rng: &mut Rng, first_id: i64, n: usize) -> Rows {
        let mut rows = Rows {
            id: (first_id..first_id + n as i64).collect(),
            a: (0..n).map(|_| (1.0 + 2.0 * rng.normal()) as f32).collect(),
            b: (0..n).map(|_| Some(-1.0 + 1.5 * rng.normal())).collect(),
            c: (0..n).map(|_| rng.below(9) as i32 - 4).collect(),
            emb: (0..3 * n).map(|_| rng.normal() as f32).collect(),
            name: (0..n).map(|_| format!("item-{}", rng.below(5))).collect(),
            noise: (0..n).map(|_| NOISE * rng.normal()).collect(),
            y: Vec::new(),
        };
        rows.relabel();
        rows
    }

    /// Sets `y` to the true linear function of the features (as stored, after rounding to the
    /// column types) plus each row's noise.
    fn relabel(&mut self) {
        self.y = (0..self.id.len())
            .map(|r| {
                let x = [
                    f64::from(self.a[r]),
                    self.b[r].unwrap_or(0.0),
                    f64::from(self.c[r]),
                    f64::from(self.emb[3 * r]),
                    f64::from(self.emb[3 * r + 1]),
                    f64::from(self.emb[3 * r + 2]),
                ];
                BIAS + WEIGHTS.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + self.noise[r]
            })
            .collect();
    }

    /// Builds the record batch for `schema`, whose `c` may be Int32 or Float64.
    fn batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let c: ArrayRef = match schema.field_with_name("c")?.data_type() {
            DataType::Float64 => {
                Arc::new(self.c.iter().map(|&c| f64::from(c)).collect::<Float64Array>())
            }
            _ => Arc::new(Int32Array::from(self.c.clone())),
        };
        let emb = FixedSizeListArray::try_new(
            emb_item(),
            3,
            Arc::new(Float32Array::from(self.emb.clone())),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.id.clone())),
            Arc::new(Float32Array::from(self.a.clone())),
            Arc::new(Float64Array::from(self.b.clone())),
            c,
            Arc::new(emb),
            Arc::new(StringArray::from(self.name.clone())),
            Arc::new(Float64Array::from(self.y.clone())),
        ];
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// Draws `groups` row groups of `n` rows, with consecutive ids from `first_id`.
fn draw_groups(rng: &mut Rng, first_id: i64, groups: usize, n: usize) -> Vec<Rows> {
    (0..groups).map(|g| Rows::draw(rng, first_id + (g * n) as i64, n)).collect()
}

/// The fixtures' schema, with `c` of type `c_type`. Top-level columns are nullable, as most
/// writers (pyarrow, Spark) leave them; the embedding's items are not, which is how embeddings
/// exported from a model usually arrive.
fn schema(c_type: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("a", DataType::Float32, true),
        Field::new("b", DataType::Float64, true),
        Field::new("c", c_type, true),
        Field::new("emb", DataType::FixedSizeList(emb_item(), 3), true),
        Field::new("name", DataType::Utf8, true),
        Field::new("y", DataType::Float64, true),
    ]))
}

fn emb_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

/// `batch` without the column `name`.
fn without_column(batch: &RecordBatch, name: &str) -> Result<RecordBatch> {
    let drop = batch.schema().index_of(name)?;
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|&i| i != drop).collect();
    Ok(batch.project(&keep)?)
}

/// Settings for every file: one row group per written batch, and dictionary encoding only for
/// the text column, because dictionaries make random floats larger, not smaller.
fn writer_properties(group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("name"), true)
        .set_max_row_group_row_count(Some(group_rows))
        .build()
}

/// Writes `groups` to `path` under `schema`, one row group each.
fn write_parquet(path: &Path, schema: &SchemaRef, groups: &[Rows]) -> Result<()> {
    fs::write(path, parquet_bytes(schema, groups)?)?;
    Ok(())
}

/// Encodes `groups` under `schema` as a whole Parquet file in memory.
fn parquet_bytes(schema: &SchemaRef, groups: &[Rows]) -> Result<Vec<u8>> {
    let batches = groups.iter().map(|rows| rows.batch(schema)).collect::<Result<Vec<_>>>()?;
    encode(schema, &batches)
}

/// Writes `groups` to `path`, each turned into a record batch by `build`, which may change the
/// schema; a file with no groups cannot be written this way.
fn write_batches(
    path: &Path,
    groups: &[Rows],
    build: impl Fn(&Rows) -> Result<RecordBatch>,
) -> Result<()> {
    let batches = groups.iter().map(build).collect::<Result<Vec<_>>>()?;
    let schema = batches.first().ok_or("no row groups to write")?.schema();
    fs::write(path, encode(&schema, &batches)?)?;
    Ok(())
}

/// Encodes `batches` as a whole Parquet file in memory, one row group per batch.
fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let group_rows = batches.iter().map(RecordBatch::num_rows).max().unwrap_or(1);
    let mut writer =
        ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(writer_properties(group_rows)))?;
    for batch in batches {
        writer.write(batch)?;
        // Flushing ends the row group here, whatever the size limit would have done.
        writer.flush()?;
    }
    Ok(writer.into_inner()?)
}

/// The row group and column whose first page `corrupt_page.parquet` damages.
const CORRUPT_ROW_GROUP: usize = 1;
const CORRUPT_COLUMN: &str = "b";
/// Bytes overwritten at the start of that page, which is where its header sits.
const CORRUPT_BYTES: usize = 16;

/// Writes a good file, then overwrites the header of one page in the middle of it with `0xFF`
/// bytes. The footer stays intact, so the file opens and its schema reads; only decoding that
/// row group fails. The header is the target rather than the values because garbage values
/// would often still decode (as odd but valid floats), while a garbage header cannot.
fn write_corrupt_page(path: &Path, schema: &SchemaRef, groups: &[Rows]) -> Result<()> {
    let mut bytes = parquet_bytes(schema, groups)?;
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes.clone()))?;
    let group = reader.metadata().row_group(CORRUPT_ROW_GROUP);
    let chunk = group
        .columns()
        .iter()
        .find(|c| c.column_path().string() == CORRUPT_COLUMN)
        .ok_or("the corrupted column is not in the file")?;
    let start = usize::try_from(chunk.data_page_offset())?;
    bytes[start..start + CORRUPT_BYTES].fill(0xFF);
    fs::write(path, &bytes)?;
    check_only_group_fails(path, CORRUPT_ROW_GROUP)
}

/// The row group and column whose definition levels `damaged_levels.parquet` damages.
const DAMAGED_LEVELS_ROW_GROUP: usize = 1;
const DAMAGED_LEVELS_COLUMN: &str = "b";
/// The start of that page's definition levels as written: a 4-byte length of 2, then one RLE
/// run (header `40 << 1`) of the value 1, for the 40 rows of the row group.
const LEVELS: [u8; 6] = [2, 0, 0, 0, (BROKEN_GROUP_ROWS as u8) << 1, 1];
/// The run header it is replaced with: 40 bit-packed groups (320 levels) in a 2-byte block.
const DAMAGED_RUN: u8 = ((BROKEN_GROUP_ROWS as u8) << 1) | 1;

/// Writes a good file, then rewrites the definition-level run of one page so that it claims more
/// levels than the page holds. The page is snappy-compressed, but its first bytes are a literal
/// in the compressed stream, so the levels can be found and changed in place without breaking
/// it. The parquet crate's reader panics on this page (in arrow-buffer's bit utilities) rather
/// than returning an error; slope must still report it as one line naming the row group.
fn write_damaged_levels(path: &Path, schema: &SchemaRef, groups: &[Rows]) -> Result<()> {
    let mut bytes = parquet_bytes(schema, groups)?;
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes.clone()))?;
    let chunk = reader
        .metadata()
        .row_group(DAMAGED_LEVELS_ROW_GROUP)
        .columns()
        .iter()
        .find(|c| c.column_path().string() == DAMAGED_LEVELS_COLUMN)
        .ok_or("the damaged column is not in the file")?
        .clone();
    let start = usize::try_from(chunk.data_page_offset())?;
    let near = &bytes[start..(start + 64).min(bytes.len())];
    let at = start
        + near
            .windows(LEVELS.len())
            .position(|w| w == LEVELS)
            .ok_or("the definition levels are not where a literal would hold them")?;
    bytes[at + 4] = DAMAGED_RUN;
    fs::write(path, &bytes)?;
    // Read back: row group 0 decodes, and row group 1 makes the parquet crate panic.
    let decodes = |group: usize| {
        let bytes = bytes::Bytes::from(bytes.clone());
        std::panic::catch_unwind(move || -> Result<bool> {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
                .with_row_groups(vec![group])
                .build()?;
            Ok(reader.into_iter().all(|batch| batch.is_ok()))
        })
    };
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (good, bad) = (decodes(0), decodes(DAMAGED_LEVELS_ROW_GROUP));
    std::panic::set_hook(quiet);
    match (good, bad) {
        (Ok(Ok(true)), Err(_)) => Ok(()),
        (good, bad) => Err(format!(
            "{}: row group 0 decodes: {good:?}; row group 1 panics: {}",
            path.display(),
            bad.is_err()
        )
        .into()),
    }
}

/// Checks that of `path`'s row groups, exactly `bad` fails to decode.
fn check_only_group_fails(path: &Path, bad: usize) -> Result<()> {
    let groups = SerializedFileReader::new(fs::File::open(path)?)?.metadata().num_row_groups();
    for g in 0..groups {
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path)?)?
            .with_row_groups(vec![g])
            .build()?;
        let failed = reader.into_iter().any(|batch| batch.is_err());
        if failed != (g == bad) {
            return Err(format!("{}: row group {g} decodes: {}", path.display(), !failed).into());
        }
    }
    Ok(())
}
