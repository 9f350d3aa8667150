//! Data sources. The embedded source queries local Parquet and CSV files with DataFusion, in the
//! Snowflake dialect, so a project written for a warehouse runs unchanged on a laptop.
//! Incremental bounds are bound parameters, never spliced into SQL text.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use slate_types::ErrorKind;
use std::path::{Path, PathBuf};

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
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::MissingDataDir { .. } | SourceError::Spine { .. } => ErrorKind::User,
            SourceError::Register { .. } | SourceError::Query { .. } => ErrorKind::External,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SourceError::MissingDataDir { .. } => Some(
                "create it, fix `path` in slate.yaml, or point SLATE_DATA_DIR / --data-dir at the data",
            ),
            _ => None,
        }
    }
}

/// A lower bound on the incremental column, pushed into the query as `$1`.
#[derive(Debug, Clone)]
pub struct IncrementalBound {
    pub column: String,
    pub micros: i64,
}

/// Local files as warehouse tables: `NAME.parquet`, `NAME.csv` or a directory `NAME/` of
/// Parquet files is the table `NAME` (dots included: `ML.TRANSACTIONS.parquet` is the table
/// `"ML.TRANSACTIONS"`).
pub struct EmbeddedSource {
    name: String,
    ctx: SessionContext,
    tables: Vec<String>,
}

impl std::fmt::Debug for EmbeddedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSource")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .finish()
    }
}

impl EmbeddedSource {
    pub async fn open(name: &str, dir: &Path, dialect: &str) -> Result<Self, SourceError> {
        if !dir.is_dir() {
            return Err(SourceError::MissingDataDir {
                source_name: name.into(),
                path: dir.into(),
            });
        }
        // Filters (the incremental bound above all) are evaluated inside the Parquet scan: the
        // bound's column is decoded first and the other columns only for the rows it keeps, so
        // a run's read of a large table costs about the rows it returns.
        let config = SessionConfig::new()
            .set_str("datafusion.sql_parser.dialect", dialect)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.reorder_filters", true)
            .with_target_partitions(2);
        let ctx = SessionContext::new_with_config(config);
        let mut tables = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| SourceError::Register {
                source_name: name.into(),
                path: dir.into(),
                reason: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default()
                .to_string();
            let reg = |reason: String| SourceError::Register {
                source_name: name.into(),
                path: path.clone(),
                reason,
            };
            let url = path.to_string_lossy().to_string();
            let (table, result) = if path.is_dir() {
                (
                    file.clone(),
                    ctx.register_parquet(
                        TableReference::bare(file.as_str()),
                        format!("{url}/"),
                        ParquetReadOptions::default(),
                    )
                    .await,
                )
            } else if let Some(t) = file.strip_suffix(".parquet") {
                (
                    t.to_string(),
                    ctx.register_parquet(
                        TableReference::bare(t),
                        &url,
                        ParquetReadOptions::default(),
                    )
                    .await,
                )
            } else if let Some(t) = file.strip_suffix(".csv") {
                (
                    t.to_string(),
                    ctx.register_csv(TableReference::bare(t), &url, CsvReadOptions::new())
                        .await,
                )
            } else {
                continue;
            };
            result.map_err(|e| reg(e.to_string()))?;
            tables.push(table);
        }
        Ok(EmbeddedSource {
            name: name.into(),
            ctx,
            tables,
        })
    }

    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Runs a resolver's query, keeping rows with `column >= bound` when a bound is given.
    pub async fn query(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let err = |reason: String| {
            let reason = if reason.contains("not found") {
                let tables = if self.tables.is_empty() {
                    "none".to_string()
                } else {
                    self.tables.join(", ")
                };
                format!("{reason} (tables of this source: {tables})")
            } else {
                reason
            };
            SourceError::Query {
                resolver: resolver.into(),
                source_name: self.name.clone(),
                reason,
            }
        };
        let sql = sql.trim().trim_end_matches(';');
        let df = match bound {
            None => self.ctx.sql(sql).await.map_err(|e| err(e.to_string()))?,
            Some(b) => {
                let wrapped = format!(
                    "SELECT * FROM ({sql}) AS slate_incremental WHERE \"{}\" >= $1",
                    b.column.replace('"', "")
                );
                let value = ScalarValue::TimestampMicrosecond(Some(b.micros), Some("UTC".into()));
                self.ctx
                    .sql(&wrapped)
                    .await
                    .and_then(|df| df.with_param_values(vec![value]))
                    .map_err(|e| err(e.to_string()))?
            }
        };
        df.collect().await.map_err(|e| err(e.to_string()))
    }
}

impl EmbeddedSource {
    /// The number of distinct `distinct` tuples among the resolver's rows whose `column` lies
    /// in `[from, to)` (`from` `None`: unbounded below). Both bounds are bound parameters.
    pub async fn count_distinct_between(
        &self,
        resolver: &str,
        sql: &str,
        distinct: &[&str],
        column: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<usize, SourceError> {
        let err = |reason: String| SourceError::Query {
            resolver: resolver.into(),
            source_name: self.name.clone(),
            reason,
        };
        let q = |c: &str| format!("\"{}\"", c.replace('"', ""));
        let sql = sql.trim().trim_end_matches(';');
        let cols: Vec<String> = distinct.iter().map(|c| q(c)).collect();
        let mut filter = format!("{} < $1", q(column));
        let ts = |m: i64| ScalarValue::TimestampMicrosecond(Some(m), Some("UTC".into()));
        let mut params = vec![ts(to)];
        if let Some(f) = from {
            filter.push_str(&format!(" AND {} >= $2", q(column)));
            params.push(ts(f));
        }
        let wrapped = format!(
            "SELECT count(*) AS n FROM (SELECT DISTINCT {} FROM ({sql}) AS slate_late WHERE {filter}) AS slate_distinct",
            cols.join(", ")
        );
        let batches = self
            .ctx
            .sql(&wrapped)
            .await
            .and_then(|df| df.with_param_values(params))
            .map_err(|e| err(e.to_string()))?
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?;
        let n = batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }
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
