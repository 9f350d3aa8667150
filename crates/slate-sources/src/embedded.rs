//! The embedded source: local Parquet and CSV files queried with DataFusion.

use crate::{IncrementalBound, Source, SourceError, SourceFuture, quote_ident};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::{Path, PathBuf};

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

    /// DataFusion's message, with the tables this source has when a table was not found.
    fn explain(&self, reason: String) -> String {
        if reason.contains("not found") {
            let tables = if self.tables.is_empty() {
                "none".to_string()
            } else {
                self.tables.join(", ")
            };
            format!("{reason} (tables of this source: {tables})")
        } else {
            reason
        }
    }

    fn error(&self, resolver: &str, reason: String) -> SourceError {
        SourceError::Query {
            resolver: resolver.into(),
            source_name: self.name.clone(),
            reason: self.explain(reason),
        }
    }

    async fn run_dataframe(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<datafusion::dataframe::DataFrame, SourceError> {
        let err = |reason: String| self.error(resolver, reason);
        let sql = sql.trim().trim_end_matches(';');
        let df = match bound {
            None => self.ctx.sql(sql).await.map_err(|e| err(e.to_string()))?,
            Some(b) => {
                let wrapped = format!(
                    "SELECT * FROM ({sql}) AS slate_incremental WHERE {} >= $1",
                    quote_ident(&b.column)
                );
                let value = ScalarValue::TimestampMicrosecond(Some(b.micros), Some("UTC".into()));
                self.ctx
                    .sql(&wrapped)
                    .await
                    .and_then(|df| df.with_param_values(vec![value]))
                    .map_err(|e| err(e.to_string()))?
            }
        };
        Ok(df)
    }

    async fn run_query(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let df = self.run_dataframe(resolver, sql, bound).await?;
        df.collect()
            .await
            .map_err(|e| self.error(resolver, e.to_string()))
    }

    async fn run_stream(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<crate::SourceStream, SourceError> {
        use futures::StreamExt;
        let df = self.run_dataframe(resolver, sql, bound).await?;
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| self.error(resolver, e.to_string()))?;
        let (resolver, source_name) = (resolver.to_string(), self.name.clone());
        Ok(stream
            .map(move |b| {
                b.map_err(|e| SourceError::Query {
                    resolver: resolver.clone(),
                    source_name: source_name.clone(),
                    reason: e.to_string(),
                })
            })
            .boxed())
    }
}

impl EmbeddedSource {
    async fn run_count_distinct(
        &self,
        resolver: &str,
        sql: &str,
        distinct: &[&str],
        column: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<usize, SourceError> {
        let err = |reason: String| self.error(resolver, reason);
        let ts = |m: i64| ScalarValue::TimestampMicrosecond(Some(m), Some("UTC".into()));
        let mut params = vec![ts(to)];
        params.extend(from.map(ts));
        let wrapped =
            crate::count_distinct_sql(sql, distinct, column, from.is_some(), quote_ident, |i| {
                format!("${i}")
            });
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

    async fn run_describe(
        &self,
        resolver: &str,
        sql: &str,
    ) -> Result<Vec<(String, DataType)>, SourceError> {
        let sql = sql.trim().trim_end_matches(';');
        let df = self.ctx.sql(sql).await.map_err(|e| SourceError::Sql {
            resolver: resolver.into(),
            source_name: self.name.clone(),
            reason: self.explain(e.to_string()),
            position: None,
        })?;
        Ok(df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect())
    }
}

impl Source for EmbeddedSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn query<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        bound: Option<&'a IncrementalBound>,
    ) -> SourceFuture<'a, Vec<RecordBatch>> {
        Box::pin(self.run_query(resolver, sql, bound))
    }

    fn query_stream<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        bound: Option<&'a IncrementalBound>,
    ) -> SourceFuture<'a, crate::SourceStream> {
        Box::pin(self.run_stream(resolver, sql, bound))
    }

    fn count_distinct_between<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        distinct: &'a [&'a str],
        column: &'a str,
        from: Option<i64>,
        to: i64,
    ) -> SourceFuture<'a, usize> {
        Box::pin(self.run_count_distinct(resolver, sql, distinct, column, from, to))
    }

    fn describe<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
    ) -> SourceFuture<'a, Vec<(String, DataType)>> {
        Box::pin(self.run_describe(resolver, sql))
    }
}
