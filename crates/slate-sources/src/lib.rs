//! Data sources: one [`Source`] trait, implemented by the embedded source (local Parquet and
//! CSV files queried with DataFusion in the Snowflake dialect, so a project written for a
//! warehouse runs unchanged on a laptop), by PostgreSQL and by Snowflake. [`open`] maps a
//! source's config to its implementation. Incremental bounds are bound parameters, never
//! spliced into SQL text.

mod embedded;
mod pg_decode;
mod postgres;
mod snowflake;

pub use embedded::EmbeddedSource;
pub use postgres::{PostgresSource, client_config as postgres_client_config};
pub use snowflake::{SnowflakeSource, key_pair_jwt, public_key_fingerprint};

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::prelude::SessionContext;
use slate_project::SourceConfig;
use slate_types::ErrorKind;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("data directory {path} of source `{source_name}` does not exist")]
    MissingDataDir { source_name: String, path: PathBuf },
    #[error("source `{source_name}`: cannot register {path}: {reason}")]
    Register {
        source_name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot read the spine {path}: {reason}")]
    Spine { path: PathBuf, reason: String },
    #[error("resolver `{resolver}` failed on source `{source_name}`: {reason}")]
    Query {
        resolver: String,
        source_name: String,
        reason: String,
    },
    /// The query itself is wrong (a missing table or column, a syntax error); `position` is the
    /// 1-based character in the resolver's SQL where the source located it.
    #[error("resolver `{resolver}` is rejected by source `{source_name}`: {reason}")]
    Sql {
        resolver: String,
        source_name: String,
        reason: String,
        position: Option<usize>,
    },
    #[error(
        "source `{source_name}`: column `{column}` of resolver `{resolver}` has type {type_name}, which Slate cannot read"
    )]
    UnsupportedType {
        source_name: String,
        resolver: String,
        column: String,
        type_name: String,
    },
    #[error("source `{source_name}`: {reason}")]
    Config { source_name: String, reason: String },
    #[error(
        "resolver `{resolver}` took longer than its timeout of {seconds}s on source `{source_name}`; the query was abandoned"
    )]
    Timeout {
        resolver: String,
        source_name: String,
        seconds: i64,
    },
    #[error("source `{source_name}`: cannot connect to {target}: {reason}")]
    Connect {
        source_name: String,
        target: String,
        reason: String,
    },
    #[error(
        "resolver `{resolver}` failed on source `{source_name}` after {}: {reason}",
        attempts_text(*.attempts)
    )]
    Unavailable {
        resolver: String,
        source_name: String,
        attempts: u32,
        reason: String,
    },
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::MissingDataDir { .. }
            | SourceError::Spine { .. }
            | SourceError::Sql { .. }
            | SourceError::UnsupportedType { .. }
            | SourceError::Config { .. } => ErrorKind::User,
            SourceError::Register { .. }
            | SourceError::Query { .. }
            | SourceError::Connect { .. }
            | SourceError::Unavailable { .. }
            | SourceError::Timeout { .. } => ErrorKind::External,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SourceError::MissingDataDir { .. } => Some(
                "create it, fix `path` in slate.yaml, or point SLATE_DATA_DIR / --data-dir at the data",
            ),
            SourceError::UnsupportedType { .. } => Some(
                "cast the column in the resolver's SQL to a type Slate reads (bigint, double precision, text, boolean, timestamptz)",
            ),
            SourceError::Connect { .. } | SourceError::Unavailable { .. } => Some(
                "check that the server is up and reachable, and the connection settings of this environment in slate.yaml",
            ),
            SourceError::Timeout { .. } => Some(
                "raise `timeout` in the resolver's header, or make the query cheaper (an index on the incremental column)",
            ),
            _ => None,
        }
    }
}

fn attempts_text(n: u32) -> String {
    match n {
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

/// A lower bound on the incremental column, pushed into the query as `$1`.
#[derive(Debug, Clone)]
pub struct IncrementalBound {
    pub column: String,
    pub micros: i64,
}

/// What [`Source`] methods return: boxed so that sources are interchangeable at run time.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SourceError>> + Send + 'a>>;

/// A resolver's rows as they arrive.
pub type SourceStream = futures::stream::BoxStream<'static, Result<RecordBatch, SourceError>>;

/// Where a resolver's SQL runs. Every implementation applies the incremental bound as a bound
/// parameter and returns the rows as Arrow batches; the engine casts each column to the type of
/// the feature it resolves.
pub trait Source: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;

    /// The resolver's rows, only those with `bound.column >= bound.micros` when a bound is given.
    fn query<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        bound: Option<&'a IncrementalBound>,
    ) -> SourceFuture<'a, Vec<RecordBatch>>;

    /// [`Source::query`]'s rows as a stream, read while they are consumed where the source can
    /// (the embedded source); other sources read them first and hand them out one by one.
    fn query_stream<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        bound: Option<&'a IncrementalBound>,
    ) -> SourceFuture<'a, SourceStream> {
        use futures::StreamExt;
        Box::pin(async move {
            let batches = self.query(resolver, sql, bound).await?;
            Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed())
        })
    }

    /// The number of distinct `distinct` tuples among the resolver's rows whose `column` lies
    /// in `[from, to)` (`from` `None`: unbounded below). Both bounds are bound parameters.
    fn count_distinct_between<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        distinct: &'a [&'a str],
        column: &'a str,
        from: Option<i64>,
        to: i64,
    ) -> SourceFuture<'a, usize>;

    /// The columns the resolver's query returns, with their Arrow types, without running it:
    /// what `slate apply` checks against the features the resolver resolves.
    fn describe<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
    ) -> SourceFuture<'a, Vec<(String, DataType)>>;
}

/// Opens the source `name` of an environment. `root` is the project directory (relative
/// embedded paths start there); `data_dir` replaces every embedded source's directory.
pub async fn open(
    name: &str,
    config: &SourceConfig,
    root: &Path,
    data_dir: Option<&Path>,
) -> Result<Box<dyn Source>, SourceError> {
    Ok(match config {
        SourceConfig::Embedded { path, dialect, .. } => {
            let dir = data_dir.map_or_else(|| root.join(path), Path::to_path_buf);
            Box::new(EmbeddedSource::open(name, &dir, dialect).await?)
        }
        SourceConfig::Postgres(c) => Box::new(PostgresSource::open(name, c).await?),
        SourceConfig::Snowflake(c) => Box::new(SnowflakeSource::open(name, c, root)?),
    })
}

/// The value of environment variable `var`, which `key` of source `source` names.
pub(crate) fn env_var(source: &str, key: &str, var: &str) -> Result<String, SourceError> {
    std::env::var(var).map_err(|_| SourceError::Config {
        source_name: source.into(),
        reason: format!(
            "`{key}` names the environment variable `{var}`, which is not set (or not UTF-8)"
        ),
    })
}

/// The resolver's SQL without surrounding blanks and a final `;`, and how many characters were
/// dropped before it.
pub(crate) fn body(sql: &str) -> (&str, usize) {
    let trimmed = sql.trim_start();
    let lead = sql.chars().count() - trimmed.chars().count();
    (trimmed.trim_end().trim_end_matches(';'), lead)
}

/// An identifier of a resolver's output column in a wrapping query: the name in lower case
/// (what an unquoted alias becomes in PostgreSQL and DataFusion, and how the project reads a
/// resolver's columns), quoted so that a reserved word (`order`, `user`) stays a column.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.to_lowercase().replace('"', "\"\""))
}

/// The query that counts distinct tuples in a range, shared by the SQL sources: parameter 1 is
/// the upper bound, 2 the lower one when there is one. `quote` names a resolver column in the
/// source's SQL; `ts` turns a parameter into the source's timestamp expression.
pub(crate) fn count_distinct_sql(
    sql: &str,
    distinct: &[&str],
    column: &str,
    lower: bool,
    quote: impl Fn(&str) -> String,
    ts: impl Fn(usize) -> String,
) -> String {
    let sql = sql.trim().trim_end_matches(';');
    let cols: Vec<String> = distinct.iter().map(|c| quote(c)).collect();
    let col = quote(column);
    let mut filter = format!("{col} < {}", ts(1));
    if lower {
        filter.push_str(&format!(" AND {col} >= {}", ts(2)));
    }
    format!(
        "SELECT count(*) AS n FROM (SELECT DISTINCT {} FROM ({sql}) AS slate_late WHERE {filter}) AS slate_distinct",
        cols.join(", ")
    )
}

/// Every row of one Parquet or CSV file (a dataset's spine), by its extension.
pub async fn read_file(path: &Path) -> Result<Vec<RecordBatch>, SourceError> {
    let err = |reason: String| SourceError::Spine {
        path: path.into(),
        reason,
    };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let ctx = SessionContext::new();
    let url = path.to_string_lossy().to_string();
    let df = match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => ctx
            .read_parquet(url, ParquetReadOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?,
        Some("csv") => ctx
            .read_csv(url, CsvReadOptions::new())
            .await
            .map_err(|e| err(e.to_string()))?,
        _ => return Err(err("a spine is a .parquet or .csv file".into())),
    };
    df.collect().await.map_err(|e| err(e.to_string()))
}
