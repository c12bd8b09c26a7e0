//! The page path of the reader against the parquet crate's record-batch reader: for every file
//! layout a writer may produce, both give the same blocks, row for row and bit for bit, and the
//! page path reads what it claims to read.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode};
use slope::decode::OnInvalid;
use slope::reader::{BlockStream, DecodedRows, Decoding, ReadOptions};

const ROWS: usize = 1000;
const FEATURES: usize = 9;

/// What a file looks like on disk.
struct Layout {
    nullable: bool,
    /// Features stored as `Int32` rather than `Float32`.
    ints: bool,
    /// Row (0-based) whose first feature is null.
    null_at: Option<usize>,
    props: WriterProperties,
}

/// Small pages (about 50 rows) and row groups (400 rows), so that blocks straddle pages.
fn props() -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(400))
        .set_data_page_row_count_limit(50)
        .set_write_batch_size(50)
}

/// Nine features and a target `y`; values are distinct, some negative, none integral.
fn write(path: &Path, layout: &Layout) {
    let value = |row: usize, col: usize| (row * 31 + col * 7) as f32 * 0.37 - 100.0;
    let feature_type = if layout.ints { DataType::Int32 } else { DataType::Float32 };
    let mut fields: Vec<Field> = (0..FEATURES)
        .map(|c| Field::new(format!("f{c}"), feature_type.clone(), layout.nullable))
        .collect();
    fields.push(Field::new("y", DataType::Float32, layout.nullable));
    let schema = Arc::new(Schema::new(fields));
    let mut columns: Vec<ArrayRef> = (0..FEATURES)
        .map(|c| -> ArrayRef {
            let valid = |r: usize| c != 0 || layout.null_at != Some(r);
            if layout.ints {
                let v: Vec<Option<i32>> =
                    (0..ROWS).map(|r| valid(r).then_some(value(r, c) as i32)).collect();
                Arc::new(Int32Array::from(v))
            } else {
                let v: Vec<Option<f32>> =
                    (0..ROWS).map(|r| valid(r).then_some(value(r, c))).collect();
                Arc::new(Float32Array::from(v))
            }
        })
        .collect();
    columns.push(Arc::new(Float32Array::from((0..ROWS).map(|r| value(r, 99)).collect::<Vec<_>>())));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, Some(layout.props.clone())).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Every block's rows, features and targets (as bits), and the rows each reader decoded.
fn read(
    path: &Path,
    io: IoMode,
    decoder: Decoding,
    workers: usize,
) -> (Vec<Vec<u32>>, DecodedRows) {
    try_read(path, io, decoder, workers).unwrap()
}

/// As [`read`], or the first error the stream reports.
fn try_read(
    path: &Path,
    io: IoMode,
    decoder: Decoding,
    workers: usize,
) -> Result<(Vec<Vec<u32>>, DecodedRows), String> {
    let dataset = Arc::new(Dataset::open(&[path.to_str().unwrap()], io).unwrap());
    let selection = ColumnSelection { target: Some("y".into()), ..Default::default() };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection).unwrap());
    let options = ReadOptions {
        workers,
        block_rows: 64,
        on_invalid: OnInvalid::Skip,
        decoder,
        ..ReadOptions::default()
    };
    let mut stream =
        BlockStream::start(Arc::clone(&dataset), plan, dataset.units(), &options).unwrap();
    let mut blocks = Vec::new();
    for block in &mut stream {
        let block = block.map_err(|e| e.to_string())?;
        let mut bits = vec![block.rows as u32, block.skipped as u32];
        bits.extend(block.x.iter().chain(&block.y).map(|v| v.to_bits()));
        blocks.push(bits);
    }
    let counts = stream.decoded_rows();
    Ok((blocks, counts))
}

/// Reads `layout` through both paths, both I/O modes and one or two workers, demands the same
/// blocks everywhere, and returns what the page path counted.
fn same_blocks(layout: Layout) -> DecodedRows {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    write(&path, &layout);
    let (expected, reference) = read(&path, IoMode::Read, Decoding::Arrow, 1);
    assert_eq!(reference.pages, 0);
    assert!(!expected.is_empty());
    let mut counted = None;
    for io in [IoMode::Mmap, IoMode::Read] {
        for workers in [1, 2] {
            let (blocks, counts) = read(&path, io, Decoding::Pages, workers);
            assert_eq!(blocks, expected, "{io} with {workers} workers");
            assert_eq!(counts.pages + counts.parquet, reference.parquet);
            assert_eq!(*counted.get_or_insert(counts), counts);
        }
    }
    counted.unwrap()
}

fn all_from_pages(counts: DecodedRows) {
    assert_eq!(counts, DecodedRows { pages: ROWS as u64, parquet: 0 });
}

#[test]
fn required_columns_are_read_from_their_pages() {
    all_from_pages(same_blocks(Layout {
        nullable: false,
        ints: false,
        null_at: None,
        props: props().build(),
    }));
}

#[test]
fn optional_columns_without_nulls_are_read_from_their_pages() {
    // Values follow the definition levels at an offset that is rarely a multiple of four.
    all_from_pages(same_blocks(Layout {
        nullable: true,
        ints: false,
        null_at: None,
        props: props().build(),
    }));
}

#[test]
fn uncompressed_and_version_two_pages_are_read_from_their_pages() {
    let uncompressed = props().set_compression(Compression::UNCOMPRESSED).build();
    all_from_pages(same_blocks(Layout {
        nullable: true,
        ints: false,
        null_at: None,
        props: uncompressed,
    }));
    let v2 = props().set_writer_version(WriterVersion::PARQUET_2_0).build();
    all_from_pages(same_blocks(Layout { nullable: true, ints: false, null_at: None, props: v2 }));
    let v2_required = props().set_writer_version(WriterVersion::PARQUET_2_0).build();
    all_from_pages(same_blocks(Layout {
        nullable: false,
        ints: false,
        null_at: None,
        props: v2_required,
    }));
}

#[test]
fn page_headers_with_statistics_are_read_from_their_pages() {
    // Statistics in every page header: a nested struct of binary and integer fields that slope's
    // own header reader must step over to find the next page.
    let with_statistics = props().set_write_page_header_statistics(true).build();
    all_from_pages(same_blocks(Layout {
        nullable: true,
        ints: false,
        null_at: None,
        props: with_statistics,
    }));
}

/// Random floats do not compress: each snappy page is nothing but literals, one per 64 KiB of
/// the page, which the page path reads where they lie in the mapped file. Pages of 20,000 rows
/// (80 KB of values) hold two literals, so that some blocks take their values from both; in an
/// optional column the values start after the definition levels, at an offset of their own.
/// (Here the levels end 8 bytes into the page, so no value is cut between two literals; pieces
/// that cut a value in two are decoded in `decode.rs`'s unit tests.)
#[test]
fn incompressible_pages_are_read_where_their_literals_lie() {
    const ROWS: usize = 45_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.parquet");
    for nullable in [false, true] {
        let mut rng = slope::rng::Rng::new(11);
        let fields: Vec<Field> = (0..FEATURES)
            .map(|c| format!("f{c}"))
            .chain(["y".to_string()])
            .map(|name| Field::new(name, DataType::Float32, nullable))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let columns: Vec<ArrayRef> = (0..=FEATURES)
            .map(|_| -> ArrayRef {
                let values = (0..ROWS).map(|_| (rng.uniform() * 2e6 - 1e6) as f32);
                Arc::new(Float32Array::from(values.collect::<Vec<_>>()))
            })
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        let props = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(30_000))
            .set_data_page_row_count_limit(20_000)
            .set_data_page_size_limit(1 << 20)
            .set_write_batch_size(1_000)
            .build();
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let (expected, reference) = read(&path, IoMode::Read, Decoding::Arrow, 1);
        assert_eq!(reference.parquet, ROWS as u64);
        for workers in [1, 2] {
            let (blocks, counts) = read(&path, IoMode::Mmap, Decoding::Pages, workers);
            assert_eq!(counts, DecodedRows { pages: ROWS as u64, parquet: 0 });
            assert!(blocks == expected, "nullable {nullable}, {workers} workers: blocks differ");
        }
    }
}

#[test]
fn dictionaries_other_types_and_counted_nulls_go_to_the_parquet_crate() {
    let dictionary = props().set_dictionary_enabled(true).build();
    let counts =
        same_blocks(Layout { nullable: false, ints: false, null_at: None, props: dictionary });
    assert_eq!(counts, DecodedRows { pages: 0, parquet: ROWS as u64 });
    let ints =
        same_blocks(Layout { nullable: false, ints: true, null_at: None, props: props().build() });
    assert_eq!(ints, DecodedRows { pages: 0, parquet: ROWS as u64 });
    // The null at row 500 is in the second row group (rows 400..800), whose statistics count it.
    let nulls = same_blocks(Layout {
        nullable: true,
        ints: false,
        null_at: Some(500),
        props: props().build(),
    });
    assert_eq!(nulls, DecodedRows { pages: 600, parquet: 400 });
}

#[test]
fn a_null_that_the_footer_does_not_count_hands_the_rest_of_its_row_group_over() {
    // Without statistics the footer cannot say that row 700 is null. The page path reads the
    // second row group (rows 400..800) up to the block whose pages hold it, and the parquet
    // crate reads that block and the rest of the row group, from a block boundary.
    let props = props().set_statistics_enabled(EnabledStatistics::None).build();
    let counts = same_blocks(Layout { nullable: true, ints: false, null_at: Some(700), props });
    assert_eq!(counts.pages + counts.parquet, ROWS as u64);
    let handed_over = counts.parquet;
    assert!(handed_over > 0 && handed_over < 400, "{counts:?}");
    assert_eq!((400 - handed_over) % 64, 0, "{counts:?}");
    assert!(800 - handed_over <= 700, "{counts:?}");
}

#[test]
fn damaged_pages_give_what_the_parquet_crate_gives_and_never_a_panic() {
    // Bytes of the first column chunk's first pages (headers, levels, values), one at a time,
    // inverted. slope's own page-header reader and snappy decoding see each damaged file first;
    // whatever they accept must be what the parquet crate's reader reads from the same bytes,
    // and whatever they reject is handed to it.
    slope::reader::quiet_parquet_crate_panics();
    let layouts = [
        (false, props().build()),
        (true, props().build()),
        (true, props().set_writer_version(WriterVersion::PARQUET_2_0).build()),
        (false, props().set_write_page_header_statistics(true).build()),
    ];
    for (nullable, props) in layouts {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        write(&path, &Layout { nullable, ints: false, null_at: None, props });
        let clean = std::fs::read(&path).unwrap();
        let (mut agreed, mut failed) = (0, 0);
        // Every byte of the first page's header and levels, then every fifth to past the next
        // page's header.
        for at in (4..64).chain((64..500).step_by(5)) {
            let mut damaged = clean.clone();
            damaged[at] ^= 0xFF;
            std::fs::write(&path, &damaged).unwrap();
            let parquet = try_read(&path, IoMode::Read, Decoding::Arrow, 1);
            for io in [IoMode::Mmap, IoMode::Read] {
                let pages = try_read(&path, io, Decoding::Pages, 1);
                match (&pages, &parquet) {
                    (Ok((a, _)), Ok((b, _))) => {
                        assert!(a == b, "byte {at}, {io}: the two readers read different values");
                        agreed += 1;
                    }
                    (Err(_), Err(_)) => failed += 1,
                    _ => panic!(
                        "byte {at} ({io}, nullable {nullable}): one reader failed, the other did \
                         not: pages {:?}, parquet {:?}",
                        pages.as_ref().map(|(_, counts)| counts),
                        parquet.as_ref().map(|(_, counts)| counts)
                    ),
                }
            }
        }
        // The sweep reached both outcomes: damage that decodes (values) and damage that does not.
        assert!(agreed > 0 && failed > 0, "{agreed} agreed, {failed} failed");
    }
}
