//! The library's one error type.
//!
//! Every variant carries the context a user needs to act on it: the file, the row group and the
//! column where the input was wrong, or the parameter and its valid range. Messages are lower
//! case without a trailing full stop; the underlying cause, when there is one, is kept as the
//! error's `source()` rather than pasted into the message, so that the binary can print the whole
//! chain on one line.

use std::path::PathBuf;

use arrow_schema::DataType;

/// A specialised result for slope's library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to point at the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be opened, read, mapped or written.
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// An input path, folder or glob pattern named no Parquet file.
    #[error("{pattern}: no Parquet files found")]
    NoInput { pattern: String },

    /// The footer or schema of a shard could not be read: the file is not Parquet, or is
    /// truncated.
    #[error("{}: not a readable Parquet file", path.display())]
    NotParquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A row group's pages could not be decoded.
    #[error("{}: row group {row_group}: cannot decode {columns}", path.display())]
    Decode {
        path: PathBuf,
        row_group: usize,
        columns: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A column named on the command line, or by a model, is not in a shard.
    #[error("{}: no column named '{column}' (columns: {available})", path.display())]
    MissingColumn { path: PathBuf, column: String, available: String },

    /// A chosen column has a type slope cannot train on.
    #[error(
        "{}: column '{column}' has type {found}, expected a number or a fixed-size list of numbers",
        path.display()
    )]
    NotNumeric { path: PathBuf, column: String, found: DataType },

    /// Two shards disagree on a chosen column.
    #[error(
        "{}: column '{column}' is {found}, but it is {expected} in {}",
        other.display(),
        first.display()
    )]
    SchemaMismatch {
        first: PathBuf,
        other: PathBuf,
        column: String,
        expected: String,
        found: String,
    },

    /// A null, NaN or infinity in a chosen column, under `--on-invalid error`.
    #[error(
        "{}: row group {row_group}: column '{column}' has {kind} in row {row} of the row group \
         (use --on-invalid skip to drop such rows)",
        path.display()
    )]
    InvalidValue { path: PathBuf, row_group: usize, column: String, kind: InvalidKind, row: usize },

    /// The input holds no usable row.
    #[error("{input}: no rows to {purpose}")]
    NoRows { input: String, purpose: &'static str },

    /// A signal asked the run to stop; the state was checkpointed if a folder was given.
    #[error("interrupted: {}", match checkpoint {
        Some(path) => format!("checkpoint written to {} (run again with --resume to continue)", path.display()),
        None => "no checkpoint written (use --checkpoint-dir to keep progress)".to_string(),
    })]
    Interrupted { checkpoint: Option<PathBuf> },

    /// A configuration file is unreadable or has unknown keys or wrong types.
    #[error("{}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    /// A feature has zero variance, so it cannot be standardised.
    #[error("feature '{feature}' is constant (every value is {value}): drop it with --exclude")]
    ConstantFeature { feature: String, value: f64 },

    /// The normal equations have no unique solution.
    #[error(
        "the normal equations are singular (pivot {pivot} of {order} vanished): add --l2 \
         regularisation, or drop constant or duplicated columns with --exclude"
    )]
    Singular { pivot: usize, order: usize },

    /// The loss or the weights stopped being finite, or grew without bound.
    #[error(
        "training diverged at epoch {epoch}, update {update} ({what}): lower --eta, or use \
         --standardize"
    )]
    Diverged { epoch: usize, update: u64, what: String },

    /// A parameter is outside its valid range.
    #[error("invalid {name}: expected {expected}, found {found}")]
    InvalidParameter { name: &'static str, expected: String, found: String },

    /// A model file is malformed, of another format version, or does not fit the data.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },

    /// A model file is not valid JSON of the expected shape.
    #[error("{}: not a slope model file", path.display())]
    ModelJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// Writing a Parquet file failed.
    #[error("{}: cannot write Parquet", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A worker thread panicked; this is a bug in slope.
    #[error("internal error: the {stage} thread panicked")]
    WorkerPanicked { stage: &'static str },
}

/// Which kind of invalid value was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidKind {
    Null,
    NaN,
    Infinite,
}

impl std::fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidKind::Null => "a null",
            InvalidKind::NaN => "a NaN",
            InvalidKind::Infinite => "an infinity",
        })
    }
}

/// The broad class of an error, which decides the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The command line or a parameter was wrong.
    Usage,
    /// The input data or a model file was wrong or unreadable.
    Data,
    /// Training diverged.
    Diverged,
    /// A signal stopped the run.
    Interrupted,
    /// Anything else: output could not be written, a bug.
    Other,
}

impl Error {
    /// Classifies the error for the exit code and for callers that retry.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidParameter { .. } | Error::Config { .. } => ErrorClass::Usage,
            Error::Interrupted { .. } => ErrorClass::Interrupted,
            Error::Diverged { .. } => ErrorClass::Diverged,
            Error::Write { .. } | Error::WorkerPanicked { .. } => ErrorClass::Other,
            Error::Io { action, .. }
                if action.starts_with("write") || action.starts_with("create") =>
            {
                ErrorClass::Other
            }
            _ => ErrorClass::Data,
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Error {
        Error::Io { path: path.into(), action, source }
    }

    pub(crate) fn param(
        name: &'static str,
        expected: impl Into<String>,
        found: impl ToString,
    ) -> Error {
        Error::InvalidParameter { name, expected: expected.into(), found: found.to_string() }
    }
}
