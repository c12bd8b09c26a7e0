//! Flag definitions and the code behind each subcommand (`train` has its own module).

mod train_cmd;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use slope::dataset::{ColumnPlan, ColumnSelection, Dataset, IoMode, is_feature_field};
use slope::decode::OnInvalid;
use slope::evaluate::{self, Metrics};
use slope::generate::{self, GenerateConfig};
use slope::model::Model;
use slope::reader::{BlockStream, DEFAULT_BLOCK_ROWS, Decoding, ReadOptions};
use slope::train;

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 output or internal error, 2 usage error (flags, config file), 3 bad \
input data or model file, 4 training diverged, 5 interrupted by SIGINT/SIGTERM.
Inputs may be Parquet files, folders (every *.parquet below them, sorted) or glob patterns.";

/// Train linear models by gradient descent on Parquet data larger than memory.
#[derive(Parser, Debug)]
#[command(name = "slope", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(ClapArgs, Debug)]
struct LogArgs {
    /// Print only errors: no progress bar and no per-epoch lines.
    #[arg(long, short, global = true, display_order = 900)]
    quiet: bool,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL", display_order = 901)]
    log_level: String,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, display_order = 902)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a linear model on Parquet shards and write it as JSON.
    Train(Box<train_cmd::TrainArgs>),
    /// Measure a model on labelled data: MSE, RMSE, MAE, R² and rows.
    Evaluate(EvaluateArgs),
    /// Write a model's predictions for new data to a Parquet file.
    Predict(PredictArgs),
    /// Show shards, rows, row groups and the schema of a dataset.
    Inspect(InspectArgs),
    /// Decode the chosen columns of every shard and report the speed: the floor for one epoch.
    Scan(ScanArgs),
    /// Write a synthetic regression dataset with known true weights.
    Generate(GenerateArgs),
}

/// How input shards are read.
#[derive(ClapArgs, Debug, Clone)]
struct ReadArgs {
    /// Threads for decoding and gradients [default: the number of cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Read shards through a memory map or with buffered reads.
    #[arg(long, value_enum, default_value_t = IoArg::Mmap)]
    io: IoArg,
    /// Rows holding a null, NaN or infinity in a chosen column: fail, or drop and count them.
    #[arg(long, value_enum, default_value_t = InvalidArg::Error, value_name = "ACTION")]
    on_invalid: InvalidArg,
    /// Which Parquet reader decodes row groups: `pages` reads plain f32 columns straight from
    /// their pages and hands everything else to the parquet crate's reader; `arrow` uses the
    /// parquet crate's record-batch reader throughout. Both give the same values.
    #[arg(long, value_enum, default_value_t = DecoderArg::Pages, value_name = "READER")]
    decoder: DecoderArg,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecoderArg {
    Pages,
    Arrow,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum IoArg {
    Mmap,
    Read,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InvalidArg {
    Error,
    Skip,
}

impl ReadArgs {
    fn io(&self) -> IoMode {
        match self.io {
            IoArg::Mmap => IoMode::Mmap,
            IoArg::Read => IoMode::Read,
        }
    }

    fn on_invalid(&self) -> OnInvalid {
        match self.on_invalid {
            InvalidArg::Error => OnInvalid::Error,
            InvalidArg::Skip => OnInvalid::Skip,
        }
    }

    fn threads(&self) -> Result<usize> {
        match self.threads {
            Some(n) if n == 0 || n > 1024 => Err(slope::Error::InvalidParameter {
                name: "--threads",
                expected: "1 to 1024".into(),
                found: n.to_string(),
            }
            .into()),
            Some(n) => Ok(n),
            None => Ok(train::default_threads()),
        }
    }

    fn options(&self) -> Result<ReadOptions> {
        Ok(ReadOptions {
            workers: self.threads()?,
            block_rows: DEFAULT_BLOCK_ROWS,
            on_invalid: self.on_invalid(),
            transform: None,
            split: None,
            sums: None,
            decoder: self.decoder.decoding(),
        })
    }
}

impl DecoderArg {
    fn decoding(self) -> Decoding {
        match self {
            DecoderArg::Pages => Decoding::Pages,
            DecoderArg::Arrow => Decoding::Arrow,
        }
    }
}

#[derive(ClapArgs, Debug)]
struct EvaluateArgs {
    /// A model file written by `slope train`.
    model: PathBuf,
    /// Labelled Parquet files, folders or glob patterns.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Print one JSON object (rows, mse, rmse, mae, r2) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(ClapArgs, Debug)]
struct PredictArgs {
    /// A model file written by `slope train`.
    model: PathBuf,
    /// Parquet files, folders or glob patterns to predict.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Output Parquet file, with a `prediction` column.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Input columns to copy into the output before `prediction`, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "COLS")]
    keep: Vec<String>,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(ClapArgs, Debug)]
struct InspectArgs {
    /// Parquet files, folders or glob patterns.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(ClapArgs, Debug)]
struct ScanArgs {
    /// Parquet files, folders or glob patterns.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    /// The target column (decoded like in training).
    #[arg(long, value_name = "COL")]
    target: String,
    /// Feature columns [default: every numeric column but the target].
    #[arg(long, value_delimiter = ',', value_name = "COLS")]
    features: Vec<String>,
    /// Columns to leave out of the default feature set.
    #[arg(long, value_delimiter = ',', value_name = "COLS")]
    exclude: Vec<String>,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(ClapArgs, Debug)]
struct GenerateArgs {
    /// Training rows, all shards together.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Feature columns f0, f1, …
    #[arg(long, default_value_t = 32)]
    features: usize,
    /// Training shards (files).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Rows in holdout.parquet [default: a tenth of --rows, at most 1,000,000].
    #[arg(long)]
    holdout_rows: Option<u64>,
    /// Rows per row group.
    #[arg(long, default_value_t = 131_072)]
    row_group_rows: usize,
    /// Standard deviation of the target noise.
    #[arg(long, default_value_t = 0.1)]
    noise: f64,
    /// Largest feature scale; scales are log-uniform in [1, scale-max].
    #[arg(long, default_value_t = 100.0)]
    scale_max: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: train/part-*.parquet, holdout.parquet, truth.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The progress bar shared by the observer and the log writer (hidden off a terminal).
static PROGRESS: OnceLock<ProgressBar> = OnceLock::new();

pub(crate) fn progress() -> &'static ProgressBar {
    PROGRESS.get_or_init(ProgressBar::hidden)
}

/// Removes the progress bar from the terminal, before an error is printed.
pub fn clear_progress() {
    if let Some(bar) = PROGRESS.get() {
        bar.finish_and_clear();
    }
}

/// Writes log lines above the progress bar rather than through it.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        progress().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logging(log: &LogArgs) {
    let interactive = std::io::stderr().is_terminal() && !log.quiet;
    let bar = if interactive {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:30}] {percent:>3}% {per_sec} eta {eta}")
                .expect("the progress template is valid")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let _ = PROGRESS.set(bar);

    let level = if log.quiet { "error" } else { log.log_level.as_str() };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("slope={level},{level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match log.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if interactive => builder.without_time().init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn run(args: Args) -> Result<()> {
    init_logging(&args.log);
    match args.command {
        Command::Train(a) => train_cmd::run(*a),
        Command::Evaluate(a) => evaluate_cmd(a),
        Command::Predict(a) => predict_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Scan(a) => scan_cmd(a),
        Command::Generate(a) => generate_cmd(a),
    }
}

/// Fails before a long run if the folder the output goes to does not exist.
pub(crate) fn check_output_folder(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        anyhow::bail!("{}: the output folder {} does not exist", path.display(), parent.display());
    }
    Ok(())
}

fn evaluate_cmd(a: EvaluateArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    let dataset = Arc::new(Dataset::open(&a.inputs, a.read.io())?);
    let m = evaluate::evaluate(dataset, &model, &a.read.options()?)?;
    if m.skipped > 0 {
        tracing::warn!("skipped {} rows holding nulls, NaN or infinities", m.skipped);
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let Metrics { rows, mse, rmse, mae, r2, skipped } = m;
        let json = serde_json::json!({
            "rows": rows, "mse": mse, "rmse": rmse, "mae": mae, "r2": r2, "skipped": skipped
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "rows  {}", m.rows)?;
        writeln!(out, "mse   {:.6e}", m.mse)?;
        writeln!(out, "rmse  {:.6e}", m.rmse)?;
        writeln!(out, "mae   {:.6e}", m.mae)?;
        writeln!(out, "r2    {:.6}", m.r2)?;
    }
    Ok(())
}

fn predict_cmd(a: PredictArgs) -> Result<()> {
    check_output_folder(&a.out)?;
    let model = Model::load(&a.model)?;
    let dataset = Arc::new(Dataset::open(&a.inputs, a.read.io())?);
    let summary = evaluate::predict(dataset, &model, a.keep, &a.out, &a.read.options()?)?;
    if summary.skipped > 0 {
        tracing::warn!("skipped {} rows holding nulls, NaN or infinities", summary.skipped);
    }
    tracing::info!("wrote {} predictions to {}", summary.rows, a.out.display());
    Ok(())
}

fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let dataset = Dataset::open(&a.inputs, IoMode::Read)?;
    let schema = dataset.shards[0].schema();
    let mut out = std::io::stdout().lock();
    if a.json {
        let shards: Vec<_> = dataset
            .shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "path": s.path, "rows": s.rows(), "row_groups": s.row_groups(), "bytes": s.bytes
                })
            })
            .collect();
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string(), "numeric": numeric(f)}))
            .collect();
        let json = serde_json::json!({
            "shards": shards, "rows": dataset.rows(), "bytes": dataset.bytes(), "columns": columns
        });
        writeln!(out, "{json}")?;
        return Ok(());
    }
    writeln!(out, "{:>12} {:>10} {:>12}  path", "rows", "row groups", "bytes")?;
    for s in &dataset.shards {
        writeln!(
            out,
            "{:>12} {:>10} {:>12}  {}",
            s.rows(),
            s.row_groups(),
            s.bytes,
            s.path.display()
        )?;
    }
    let groups: usize = dataset.shards.iter().map(|s| s.row_groups()).sum();
    writeln!(
        out,
        "{:>12} {:>10} {:>12}  total ({} shard{})",
        dataset.rows(),
        groups,
        dataset.bytes(),
        dataset.shards.len(),
        if dataset.shards.len() == 1 { "" } else { "s" }
    )?;
    writeln!(out, "\nschema of {}:", dataset.shards[0].path.display())?;
    for f in schema.fields() {
        let note = if numeric(f) { "" } else { "  (not numeric: not a feature)" };
        writeln!(out, "  {:<24} {}{note}", f.name(), f.data_type())?;
    }
    Ok(())
}

fn numeric(f: &arrow_schema::Field) -> bool {
    is_feature_field(f)
}

fn scan_cmd(a: ScanArgs) -> Result<()> {
    let dataset = Arc::new(Dataset::open(&a.inputs, a.read.io())?);
    let selection = ColumnSelection {
        target: Some(a.target.clone()),
        features: a.features.clone(),
        exclude: a.exclude.clone(),
        keep: Vec::new(),
    };
    let plan = Arc::new(ColumnPlan::resolve(&dataset, &selection)?);
    let options = a.read.options()?;
    let started = Instant::now();
    let bar = progress();
    bar.set_length(dataset.rows());
    bar.set_message("scan");
    let mut stream =
        BlockStream::start(Arc::clone(&dataset), Arc::clone(&plan), dataset.units(), &options)?;
    let recycle = stream.recycler();
    let (mut rows, mut skipped, mut checksum) = (0u64, 0u64, 0.0f64);
    for block in &mut stream {
        let block = block?;
        rows += block.rows as u64;
        skipped += block.skipped as u64;
        // Touch the decoded values so that the measurement includes reaching them.
        checksum += f64::from(block.y.iter().sum::<f32>());
        bar.inc((block.rows + block.skipped) as u64);
        recycle.give(block);
    }
    let decoded = stream.decoded_rows();
    drop(stream);
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = rows * (plan.d as u64 + 1) * 4;
    let rate = rows as f64 / secs;
    let gbs = bytes as f64 / secs / 1e9;
    let mut out = std::io::stdout().lock();
    if a.json {
        let json = serde_json::json!({
            "rows": rows, "skipped": skipped, "features": plan.d, "seconds": secs,
            "rows_per_sec": rate, "decoded_gb_per_sec": gbs, "threads": options.workers,
            "io": dataset.io.to_string(), "file_bytes": dataset.bytes(), "checksum": checksum,
            "rows_from_pages": decoded.pages, "rows_from_parquet_reader": decoded.parquet,
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(
            out,
            "scanned {rows} rows × {} columns in {secs:.3}s: {rate:.0} rows/s, {gbs:.2} GB/s decoded \
             (threads {}, io {}, {})",
            plan.d + 1,
            options.workers,
            dataset.io,
            describe_decoded(decoded)
        )?;
    }
    Ok(())
}

/// Which reader decoded the rows, for `scan`'s summary.
fn describe_decoded(decoded: slope::reader::DecodedRows) -> String {
    match (decoded.pages, decoded.parquet) {
        (_, 0) => "all from plain pages".to_string(),
        (0, _) => "all by the parquet crate's reader".to_string(),
        (pages, parquet) => {
            format!("{pages} rows from plain pages, {parquet} by the parquet crate's reader")
        }
    }
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let config = GenerateConfig {
        rows: a.rows,
        features: a.features,
        shards: a.shards,
        holdout_rows: a.holdout_rows.unwrap_or((a.rows / 10).clamp(1, 1_000_000)),
        row_group_rows: a.row_group_rows,
        noise: a.noise,
        scale_max: a.scale_max,
        seed: a.seed,
    };
    let started = Instant::now();
    generate::generate(&config, &a.out)
        .with_context(|| format!("generating into {}", a.out.display()))?;
    tracing::info!(
        "wrote {} training rows in {} shard(s), {} holdout rows and truth.json under {} in {:.1?}",
        config.rows,
        config.shards,
        config.holdout_rows,
        a.out.display(),
        Duration::from_secs_f64(started.elapsed().as_secs_f64())
    );
    Ok(())
}
