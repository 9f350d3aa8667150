//! The embedded offline store: one Delta Lake table per dataset under the state directory,
//! readable by DuckDB, Polars, pandas and Spark. Writes replace a time range atomically
//! (`replace_where column >= from`), so a rerun over the same range leaves no duplicate.
//!
//! A table with a time column is partitioned by its UTC day (the `slate_day` column): a write
//! that replaces `time >= from` rewrites the days from `from`'s on (the kept rows of `from`'s
//! own day read back and written with the new ones, so a day is one file however many runs
//! touched it), and a history read from `from` prunes to those days. Files a write replaced are
//! deleted once older than the retention period.

use crate::StoreError;
use arrow::array::{Array, ArrayRef, Date32Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::datafusion::catalog::streaming::StreamingTable;
use deltalake::datafusion::common::JoinType;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::datasource::provider_as_source;
use deltalake::datafusion::execution::{SendableRecordBatchStream, TaskContext};
use deltalake::datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use deltalake::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::datafusion::physical_plan::streaming::PartitionStream;
use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use url::Url;

/// The partition column of a table with a time column: that column's UTC day.
pub const DAY_COLUMN: &str = "slate_day";
const DAY_MICROS: i64 = 86_400_000_000;
/// How long a file a write replaced stays on disk for readers of older versions (Delta's
/// default `delta.deletedFileRetentionDuration`).
pub const DEFAULT_RETENTION_MICROS: i64 = 7 * DAY_MICROS;

/// A table written by one daily run after another is opened several times a run: a checkpoint
/// every 10 commits keeps each open to a checkpoint and at most 9 commit files.
const TABLE_PROPERTIES: [(&str, Option<&str>); 1] = [("delta.checkpointInterval", Some("10"))];

/// Rows per Parquet row group (see [`writer_properties`]).
const ROW_GROUP_ROWS: usize = 1 << 16;

/// Rows of a keyed read (see [`OfflineStore::stream_for_keys`]) as they are read.
pub type KeyedRows = futures::stream::BoxStream<'static, Result<RecordBatch, StoreError>>;

/// Batches of a write as they are produced.
type Batches = futures::stream::BoxStream<'static, Result<RecordBatch, ArrowError>>;

/// The rows of one write, produced while the write consumes them, so that a run's output is
/// never whole in memory.
pub struct WriteRows {
    batches: Batches,
}

impl WriteRows {
    pub fn new(
        batches: impl Iterator<Item = Result<RecordBatch, ArrowError>> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        WriteRows {
            batches: futures::stream::iter(batches).boxed(),
        }
    }

    /// Rows that arrive as a stream (from another task, say). An error in the stream fails
    /// the write before its commit; the end of the stream is the end of the rows.
    pub fn from_stream(
        batches: impl futures::Stream<Item = Result<RecordBatch, ArrowError>> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        WriteRows {
            batches: batches.boxed(),
        }
    }
}

impl WriteRows {
    /// The same rows regrouped by the UTC day of `time` through one file per day under `dir`
    /// (created; the write's own, removed when it ends): written to disk as they arrive, handed
    /// to the write day by day once they end, each day's rows in their order. For rows ordered
    /// otherwise than by time (by entity, say), so that the write holds one day's Parquet file
    /// open at a time instead of one per day of the history.
    pub fn by_day(self, time: &str, dir: PathBuf) -> Self {
        WriteRows {
            batches: crate::buckets::by_day(self.batches, time, dir),
        }
    }

    /// The same rows, each batch passed through `f` as the write takes it (columns added
    /// after a [`Self::by_day`] regrouping, say, that the files on disk need not hold).
    pub fn map(
        self,
        f: impl Fn(RecordBatch) -> Result<RecordBatch, ArrowError> + Send + 'static,
    ) -> Self {
        use futures::StreamExt;
        WriteRows {
            batches: self.batches.map(move |b| b.and_then(&f)).boxed(),
        }
    }
}

impl From<Vec<RecordBatch>> for WriteRows {
    fn from(batches: Vec<RecordBatch>) -> Self {
        WriteRows::new(batches.into_iter().map(Ok))
    }
}

/// A scan of `batches`, read once, as a write's input plan.
fn streamed(
    schema: SchemaRef,
    batches: Batches,
) -> Result<LogicalPlan, deltalake::datafusion::error::DataFusionError> {
    let table = StreamingTable::try_new(
        schema.clone(),
        vec![Arc::new(OnceStream {
            schema,
            batches: Mutex::new(Some(batches)),
        })],
    )?;
    LogicalPlanBuilder::scan("input", provider_as_source(Arc::new(table)), None)?.build()
}

/// A partition stream of batches that can be executed once.
struct OnceStream {
    schema: SchemaRef,
    batches: Mutex<Option<Batches>>,
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("OnceStream").finish_non_exhaustive()
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        use deltalake::datafusion::error::DataFusionError;
        use futures::StreamExt;
        let batches = self.batches.lock().ok().and_then(|mut b| b.take());
        let stream = match batches {
            Some(b) => b.map(|r| r.map_err(DataFusionError::from)).boxed(),
            None => futures::stream::once(async {
                Err(DataFusionError::Internal(
                    "a write's rows were read twice".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// The UTC day (days since 1970-01-01) of a time in microseconds.
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(DAY_MICROS) as i32
}

fn day_lit(day: i32) -> Expr {
    lit(ScalarValue::Date32(Some(day)))
}

/// The rows a write supersedes: `column >= from_micros`. `None` in [`OfflineStore::write`]
/// replaces the whole table.
#[derive(Debug, Clone)]
pub struct ReplaceRange {
    pub column: String,
    pub from_micros: i64,
}

#[derive(Clone, Debug)]
pub struct OfflineStore {
    root: PathBuf,
    retention_micros: i64,
    tables: Arc<Mutex<HashMap<String, DeltaTable>>>,
}

fn ts_lit(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros),
        Some("UTC".into()),
    ))
}

impl OfflineStore {
    pub fn new(root: &Path) -> Self {
        OfflineStore {
            root: root.to_path_buf(),
            retention_micros: DEFAULT_RETENTION_MICROS,
            tables: Arc::default(),
        }
    }

    /// Files a write replaced are deleted once `retention_micros` old (by the wall clock, as
    /// Delta stamps their removal).
    pub fn with_retention(mut self, retention_micros: i64) -> Self {
        self.retention_micros = retention_micros.max(0);
        self
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub fn table_path(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    /// The table's latest version: loaded from its log once, then kept as this store's own
    /// writes leave it (a store lives for one run, whose lock excludes other writers).
    async fn open(&self, table: &str) -> Result<DeltaTable, StoreError> {
        if let Some(t) = self.tables.lock().ok().and_then(|t| t.get(table).cloned()) {
            return Ok(t);
        }
        let path = self.table_path(table);
        let err = |reason: String| StoreError::Offline {
            table: table.into(),
            reason,
        };
        std::fs::create_dir_all(&path).map_err(|e| err(e.to_string()))?;
        let abs = std::fs::canonicalize(&path).map_err(|e| err(e.to_string()))?;
        let url = Url::from_directory_path(&abs)
            .map_err(|_| err(format!("bad path {}", abs.display())))?;
        let t = DeltaTable::try_from_url(url)
            .await
            .map_err(|e| err(e.to_string()))?;
        self.remember(table, &t);
        Ok(t)
    }

    /// Keeps `t` as `table`'s latest version for this store's later opens.
    fn remember(&self, table: &str, t: &DeltaTable) {
        if let Ok(mut tables) = self.tables.lock() {
            tables.insert(table.to_string(), t.clone());
        }
    }

    /// The table's current Delta version (`None` before its first write).
    pub async fn version(&self, table: &str) -> Result<Option<u64>, StoreError> {
        if !self.table_path(table).join("_delta_log").is_dir() {
            return Ok(None);
        }
        Ok(self.open(table).await?.version())
    }

    /// Whether the table has been written at least once.
    pub async fn exists(&self, table: &str) -> Result<bool, StoreError> {
        if !self.table_path(table).join("_delta_log").is_dir() {
            return Ok(false);
        }
        Ok(self.open(table).await?.version().is_some())
    }

    /// Writes `batches`, replacing the rows in `replace` (or the whole table) in one commit.
    /// With `time`, the table is partitioned by that column's UTC day.
    pub async fn write(
        &self,
        table: &str,
        batches: Vec<RecordBatch>,
        replace: Option<&ReplaceRange>,
        time: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_rows(table, WriteRows::from(batches), replace, time)
            .await
    }

    /// [`OfflineStore::write`] of rows produced while the write consumes them: a table with a
    /// `time` column is written from the stream (only the batches in flight are in memory);
    /// one without is collected first.
    pub async fn write_rows(
        &self,
        table: &str,
        rows: WriteRows,
        replace: Option<&ReplaceRange>,
        time: Option<&str>,
    ) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        // Entity states that summarize rows this write may replace go first, so that a crash
        // after the commit cannot leave a stale one.
        let kept_from = replace.filter(|r| Some(r.column.as_str()) == time);
        self.invalidate_state(table, kept_from.map(|r| r.from_micros))?;
        let t = self.open(table).await?;
        let exists = t.version().is_some();
        let partitioned = exists
            && t.snapshot()
                .map_err(|e| err(&e))?
                .metadata()
                .partition_columns()
                .iter()
                .any(|c| c == DAY_COLUMN);
        use futures::{StreamExt, TryStreamExt};
        let Some(time) = time else {
            let batches = rows
                .batches
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| err(&e))?;
            return self.write_plain(t, table, batches, replace).await;
        };
        let day_time = time.to_string();
        let mut batches = rows
            .batches
            .filter(|b| futures::future::ready(b.as_ref().map_or(true, |b| b.num_rows() > 0)))
            .map(move |b| b.and_then(|b| with_day(&b, &day_time)))
            .boxed()
            .peekable();
        // Empty batches are skipped: no first batch means no new rows.
        let first = match std::pin::Pin::new(&mut batches).peek().await {
            Some(Ok(b)) => Some(b.clone()),
            Some(Err(e)) => return Err(err(e)),
            None => None,
        };
        let no_new_rows = first.is_none();
        let mut batches: Batches = batches.boxed();
        let mut kept = Vec::new();
        let mut w;
        match replace {
            Some(r) if exists && partitioned && r.column == time => {
                // Whole days are replaced: the kept rows of `from`'s day are read back, so the
                // commit only removes files (no rewrite scan) and each day stays one file.
                let first_day = day_of(r.from_micros);
                let kept_rows = self
                    .read_where(
                        table,
                        col(DAY_COLUMN)
                            .gt_eq(day_lit(first_day))
                            .and(quoted(time).lt(ts_lit(r.from_micros))),
                    )
                    .await?;
                kept = conform(kept_rows, first.as_ref()).map_err(|e| err(&e))?;
                let kept_count: usize = kept.iter().map(|b| b.num_rows()).sum();
                if kept_count == 0 && no_new_rows {
                    let (t, _) = t
                        .delete()
                        .with_predicate(col(DAY_COLUMN).gt_eq(day_lit(first_day)))
                        .await
                        .map_err(|e| err(&e))?;
                    return self.vacuum(t, table).await;
                }
                // A new row before the replaced range fails the write before its commit.
                let (from, time) = (r.from_micros, time.to_string());
                batches = Box::pin(batches.map(move |b| {
                    let b = b?;
                    match earliest(std::slice::from_ref(&b), &time)? {
                        Some(early) if early < from => {
                            Err(arrow::error::ArrowError::InvalidArgumentError(format!(
                                "a new row's {time} ({}) precedes the replaced range's start ({})",
                                slate_types::format_rfc3339(early),
                                slate_types::format_rfc3339(from)
                            )))
                        }
                        _ => Ok(b),
                    }
                }));
                w = t
                    .write(vec![])
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(col(DAY_COLUMN).gt_eq(day_lit(first_day)));
            }
            _ if no_new_rows && (partitioned || !exists || replace.is_none()) => {
                return self.write_plain(t, table, vec![], replace).await;
            }
            Some(r) if exists && partitioned => {
                w = t
                    .write(vec![])
                    .with_save_mode(SaveMode::Overwrite)
                    .with_replace_where(quoted(&r.column).gt_eq(ts_lit(r.from_micros)));
            }
            Some(r) if exists => {
                // A table of the unpartitioned layout: rewritten once, partitioned.
                let kept_rows = self
                    .read_where(
                        table,
                        quoted(&r.column)
                            .lt(ts_lit(r.from_micros))
                            .or(quoted(&r.column).is_null()),
                    )
                    .await?;
                let kept_rows = kept_rows
                    .iter()
                    .map(|b| with_day(b, time))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(&e))?;
                kept = conform(kept_rows, first.as_ref()).map_err(|e| err(&e))?;
                if kept.is_empty() && no_new_rows {
                    return self.write_plain(t, table, vec![], None).await;
                }
                w = t
                    .write(vec![])
                    .with_save_mode(SaveMode::Overwrite)
                    .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
            }
            _ => {
                w = t.write(vec![]).with_save_mode(SaveMode::Overwrite);
                if exists && !partitioned {
                    w = w.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
                }
            }
        }
        let Some(schema) = first
            .as_ref()
            .map(|b| b.schema())
            .or_else(|| kept.first().map(|b| b.schema()))
        else {
            return Err(err(&"a write with rows but no batch"));
        };
        let input = futures::stream::iter(kept.into_iter().map(Ok)).chain(batches);
        w = w
            .with_input_plan(streamed(schema, input.boxed()).map_err(|e| err(&e))?)
            .with_partition_columns([DAY_COLUMN])
            .with_writer_properties(writer_properties(first.as_ref()));
        if !exists {
            w = w.with_configuration(TABLE_PROPERTIES);
        }
        let t = w.await.map_err(|e| err(&e))?;
        self.vacuum(t, table).await
    }

    /// A write of a table without a time column (or with `time` not given).
    async fn write_plain(
        &self,
        t: DeltaTable,
        table: &str,
        batches: Vec<RecordBatch>,
        replace: Option<&ReplaceRange>,
    ) -> Result<(), StoreError> {
        let err = |e: deltalake::DeltaTableError| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let exists = t.version().is_some();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            let t = match (exists, replace) {
                (true, Some(r)) => {
                    t.delete()
                        .with_predicate(quoted(&r.column).gt_eq(ts_lit(r.from_micros)))
                        .await
                        .map_err(err)?
                        .0
                }
                (true, None) => t.delete().await.map_err(err)?.0,
                (false, _) => return Ok(()),
            };
            return self.vacuum(t, table).await;
        }
        let properties = writer_properties(batches.iter().find(|b| b.num_rows() > 0));
        let mut w = t
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(properties);
        if !exists {
            w = w.with_configuration(TABLE_PROPERTIES);
        }
        if let (true, Some(r)) = (exists, replace) {
            w = w.with_replace_where(quoted(&r.column).gt_eq(ts_lit(r.from_micros)));
        }
        let t = w.await.map_err(err)?;
        self.vacuum(t, table).await
    }

    /// Deletes the files that writes replaced more than the retention period ago.
    async fn vacuum(&self, t: DeltaTable, table: &str) -> Result<(), StoreError> {
        let retention = chrono::TimeDelta::try_milliseconds(self.retention_micros / 1000)
            .unwrap_or(chrono::TimeDelta::MAX);
        self.remember(table, &t);
        let (t, _) = t
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| StoreError::Offline {
                table: table.into(),
                reason: format!("deleting replaced files: {e}"),
            })?;
        self.remember(table, &t);
        Ok(())
    }

    /// The number of data files in the table's current version (0 before its first write).
    pub async fn file_count(&self, table: &str) -> Result<usize, StoreError> {
        if !self.exists(table).await? {
            return Ok(0);
        }
        let t = self.open(table).await?;
        let files = t.get_file_uris().map_err(|e| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        })?;
        Ok(files.count())
    }

    /// Every row of `table` matching `filter`.
    async fn read_where(&self, table: &str, filter: Expr) -> Result<Vec<RecordBatch>, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let ctx = self.session(&[table]).await?;
        let Ok(df) = ctx.table(table).await else {
            return Ok(vec![]);
        };
        df.filter(filter)
            .map_err(|e| err(&e))?
            .collect()
            .await
            .map_err(|e| err(&e))
    }

    /// A DataFusion session with `tables` registered under their names, for reads.
    pub async fn session(&self, tables: &[&str]) -> Result<SessionContext, StoreError> {
        let ctx = SessionContext::new();
        for name in tables {
            let err = |reason: String| StoreError::Offline {
                table: name.to_string(),
                reason,
            };
            let t = self.open(name).await?;
            if t.version().is_none() {
                continue;
            }
            t.update_datafusion_session(&ctx.state())
                .map_err(|e| err(e.to_string()))?;
            let provider = t.table_provider().await.map_err(|e| err(e.to_string()))?;
            ctx.register_table(*name, provider)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(ctx)
    }

    /// Reads `columns` of `table` for rows whose `key` is in `keys` and whose `time` is at or
    /// after `from` (when given).
    pub async fn read_for_keys(
        &self,
        table: &str,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
        time: &str,
        from: Option<i64>,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        use futures::TryStreamExt;
        self.stream_for_keys(table, columns, key, keys, time, from)
            .await?
            .try_collect()
            .await
    }

    /// [`OfflineStore::read_for_keys`] as a stream: the rows come as the table's files are
    /// read, so that a reader holds a batch at a time, not the history of its keys.
    pub async fn stream_for_keys(
        &self,
        table: &str,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
        time: &str,
        from: Option<i64>,
    ) -> Result<KeyedRows, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let ctx = self.session(&[table]).await?;
        let Ok(mut df) = ctx.table(table).await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        if let Some(f) = from {
            let mut cond = quoted(time).gt_eq(ts_lit(f));
            if df.schema().field_with_unqualified_name(DAY_COLUMN).is_ok() {
                cond = col(DAY_COLUMN).gt_eq(day_lit(day_of(f))).and(cond);
            }
            df = df.filter(cond).map_err(|e| err(&e))?;
        }
        self.keyed_stream(table, &ctx, df, columns, key, keys).await
    }

    /// `columns` of every row of `table`, as the table's files are read (no rows when the
    /// table was never written).
    pub async fn stream_all(&self, table: &str, columns: &[&str]) -> Result<KeyedRows, StoreError> {
        use futures::StreamExt;
        let err = {
            let table = table.to_string();
            move |e: &dyn std::fmt::Display| StoreError::Offline {
                table: table.clone(),
                reason: e.to_string(),
            }
        };
        let ctx = self.session(&[table]).await?;
        let Ok(df) = ctx.table(table).await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let stream = df
            .select(columns.iter().map(|c| quoted(c)).collect::<Vec<_>>())
            .map_err(|e| err(&e))?
            .execute_stream()
            .await
            .map_err(|e| err(&e))?;
        Ok(stream.map(move |b| b.map_err(|e| err(&e))).boxed())
    }

    /// `columns` of `df`'s rows whose `key` is among `keys`.
    pub(crate) async fn keyed(
        &self,
        table: &str,
        ctx: &SessionContext,
        df: deltalake::datafusion::dataframe::DataFrame,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        use futures::TryStreamExt;
        self.keyed_stream(table, ctx, df, columns, key, keys)
            .await?
            .try_collect()
            .await
    }

    /// [`OfflineStore::keyed`] as a stream. Few keys join as a table (a hash semi-join, not an
    /// IN list, so that any number of keys plans in constant stack and time); many keys filter
    /// each batch as it is read, so that rows of other keys are never held.
    async fn keyed_stream(
        &self,
        table: &str,
        ctx: &SessionContext,
        df: deltalake::datafusion::dataframe::DataFrame,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
    ) -> Result<KeyedRows, StoreError> {
        use futures::StreamExt;
        let table = table.to_string();
        let err = {
            let table = table.clone();
            move |e: &dyn std::fmt::Display| StoreError::Offline {
                table: table.clone(),
                reason: e.to_string(),
            }
        };
        let projection = columns.iter().map(|c| quoted(c)).collect::<Vec<_>>();
        if keys.len() <= JOINED_KEYS {
            let key_schema = Arc::new(Schema::new(vec![Field::new(
                "slate_key",
                keys.data_type().clone(),
                true,
            )]));
            let key_batch = RecordBatch::try_new(key_schema, vec![keys]).map_err(|e| err(&e))?;
            let keys_df = ctx.read_batch(key_batch).map_err(|e| err(&e))?;
            let stream = df
                .join(keys_df, JoinType::LeftSemi, &[key], &["slate_key"], None)
                .and_then(|d| d.select(projection))
                .map_err(|e| err(&e))?
                .execute_stream()
                .await
                .map_err(|e| err(&e))?;
            return Ok(stream.map(move |b| b.map_err(|e| err(&e))).boxed());
        }
        let stream = df
            .select(projection)
            .map_err(|e| err(&e))?
            .execute_stream()
            .await
            .map_err(|e| err(&e))?;
        let schema = stream.schema();
        let index = schema
            .index_of(key)
            .map_err(|_| err(&format!("the read lacks its key column {key}")))?;
        let set = KeySet::new(&keys, schema.field(index).data_type()).map_err(|e| err(&e))?;
        Ok(stream
            .filter_map(move |batch| {
                let kept = batch.map_err(|e| err(&e)).and_then(|batch| {
                    let mask = set.contains(batch.column(index)).map_err(|e| err(&e))?;
                    arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| err(&e))
                });
                futures::future::ready(match kept {
                    Ok(b) if b.num_rows() == 0 => None,
                    other => Some(other),
                })
            })
            .boxed())
    }

    /// The number of distinct `distinct` tuples among `table`'s rows whose `column` lies in
    /// `[from, to)`; `None` when the table lacks one of the columns.
    pub async fn count_distinct_between(
        &self,
        table: &str,
        distinct: &[&str],
        column: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<Option<usize>, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let ctx = self.session(&[table]).await?;
        let Ok(df) = ctx.table(table).await else {
            return Ok(Some(0));
        };
        let schema = df.schema().clone();
        if distinct
            .iter()
            .chain([&column])
            .any(|c| schema.field_with_unqualified_name(c).is_err())
        {
            return Ok(None);
        }
        let partitioned = schema.field_with_unqualified_name(DAY_COLUMN).is_ok();
        let mut cond = quoted(column).lt(ts_lit(to));
        if partitioned {
            cond = col(DAY_COLUMN).lt_eq(day_lit(day_of(to))).and(cond);
        }
        if let Some(f) = from {
            cond = cond.and(quoted(column).gt_eq(ts_lit(f)));
            if partitioned {
                cond = col(DAY_COLUMN).gt_eq(day_lit(day_of(f))).and(cond);
            }
        }
        let n = df
            .filter(cond)
            .and_then(|d| d.select(distinct.iter().map(|c| quoted(c)).collect::<Vec<_>>()))
            .and_then(|d| d.distinct())
            .map_err(|e| err(&e))?
            .count()
            .await
            .map_err(|e| err(&e))?;
        Ok(Some(n))
    }

    /// Every row of `table` (empty when the table was never written).
    pub async fn read_all(&self, table: &str) -> Result<Vec<RecordBatch>, StoreError> {
        let ctx = self.session(&[table]).await?;
        let Ok(df) = ctx.table(table).await else {
            return Ok(vec![]);
        };
        df.collect().await.map_err(|e| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        })
    }
}

/// Up to this many keys, a keyed read joins them with the table as a table of their own (a
/// scan may skip what their bounds rule out); above, [`KeySet`] filters the rows read.
const JOINED_KEYS: usize = 4096;

/// A set of keys, to keep the rows of a read whose key is in it. Integers of at most 64 signed
/// bits compare as `i64`; any other type (`UInt64` too, whose values may pass `i64::MAX`) in
/// Arrow's row format, after a cast to the type the table stores (a string key read back from
/// Delta Lake is a `Utf8View`; a key the stored type cannot hold matches nothing).
enum KeySet {
    Ints(std::collections::HashSet<i64, foldhash::fast::RandomState>),
    Rows(
        RowConverter,
        std::collections::HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    ),
}

impl KeySet {
    fn new(keys: &ArrayRef, stored: &DataType) -> Result<Self, ArrowError> {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let fits_i64 = |ty: &DataType| {
            use DataType::*;
            matches!(ty, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32)
        };
        if fits_i64(stored) && fits_i64(keys.data_type()) {
            let ints = arrow::compute::cast(keys, &DataType::Int64)?;
            return Ok(KeySet::Ints(
                ints.as_primitive::<Int64Type>().iter().flatten().collect(),
            ));
        }
        let keys = arrow::compute::cast(keys, stored)?;
        let converter = RowConverter::new(vec![SortField::new(stored.clone())])?;
        let rows = converter.convert_columns(std::slice::from_ref(&keys))?;
        let set = (0..keys.len())
            .filter(|&i| keys.is_valid(i))
            .map(|i| Box::<[u8]>::from(rows.row(i).as_ref()))
            .collect();
        Ok(KeySet::Rows(converter, set))
    }

    /// Which of `column`'s values are in the set (a null never is).
    fn contains(&self, column: &ArrayRef) -> Result<arrow::array::BooleanArray, ArrowError> {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        Ok(match self {
            KeySet::Ints(set) => {
                let ints = arrow::compute::cast(column, &DataType::Int64)?;
                ints.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| set.contains(&v))))
                    .collect()
            }
            KeySet::Rows(converter, set) => {
                let rows = converter.convert_columns(std::slice::from_ref(column))?;
                (0..column.len())
                    .map(|i| Some(column.is_valid(i) && set.contains(rows.row(i).as_ref())))
                    .collect()
            }
        })
    }
}

fn quoted(c: &str) -> Expr {
    col(format!("\"{c}\""))
}

/// `batch` with its `time` column's UTC day appended as [`DAY_COLUMN`] (kept when present).
fn with_day(batch: &RecordBatch, time: &str) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().column_with_name(DAY_COLUMN).is_some() {
        return Ok(batch.clone());
    }
    let ts = batch.column_by_name(time).ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("no time column {time} to partition by"))
    })?;
    let ts = arrow::compute::cast(ts, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let ts = ts
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| arrow::error::ArrowError::CastError(format!("{time} is not a time")))?;
    let days: Date32Array = ts.iter().map(|v| v.map(day_of)).collect();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(DAY_COLUMN, DataType::Date32, true));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(days) as ArrayRef);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The earliest non-null `time` among `batches`.
fn earliest(batches: &[RecordBatch], time: &str) -> Result<Option<i64>, arrow::error::ArrowError> {
    let mut min = None;
    for b in batches {
        let Some(c) = b.column_by_name(time) else {
            continue;
        };
        let c = arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        if let Some(ts) = c.as_any().downcast_ref::<TimestampMicrosecondArray>()
            && let Some(m) = arrow::compute::min(ts)
        {
            min = Some(min.map_or(m, |x: i64| x.min(m)));
        }
    }
    Ok(min)
}

/// Rows read back from the table, in the column order and types of the new rows.
fn conform(
    kept: Vec<RecordBatch>,
    like: Option<&RecordBatch>,
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let Some(like) = like else {
        return Ok(kept);
    };
    let schema = like.schema();
    kept.iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = b.column_by_name(f.name()).ok_or_else(|| {
                        arrow::error::ArrowError::SchemaError(format!(
                            "the table lacks column {}",
                            f.name()
                        ))
                    })?;
                    match c.data_type() == f.data_type() {
                        true => Ok(c.clone()),
                        false => arrow::compute::cast(c, f.data_type()),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect()
}

/// Parquet settings for rows like `sample`'s: Snappy compression, as Delta's default, and
/// dictionary encoding only for the columns whose first rows repeat values. A column of mostly
/// distinct values (ids, times, scores) would spend most of its encoding time building a
/// dictionary that Parquet then abandons for plain encoding.
fn writer_properties(sample: Option<&RecordBatch>) -> WriterProperties {
    // Row groups of a bounded size: a write whose rows come in entity order (a streamed
    // backfill) keeps a file open per day, each holding its unfinished row group in memory.
    let mut p = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    if let Some(b) = sample {
        let rows = b.num_rows().min(DICTIONARY_SAMPLE);
        for (field, column) in b.schema().fields().iter().zip(b.columns()) {
            if mostly_distinct(&column.slice(0, rows)) {
                p = p.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
            }
        }
    }
    p.build()
}

/// Rows of a write that decide each column's encoding.
const DICTIONARY_SAMPLE: usize = 1 << 16;

/// Whether more than a tenth of `a`'s values are distinct (false when they cannot be compared).
fn mostly_distinct(a: &ArrayRef) -> bool {
    let Ok(converter) = RowConverter::new(vec![SortField::new(a.data_type().clone())]) else {
        return false;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(a)) else {
        return false;
    };
    let distinct: std::collections::HashSet<&[u8]> = rows.iter().map(|r| r.data()).collect();
    distinct.len() * 10 > a.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    /// Keys match exactly whatever the stored type: unsigned 64-bit keys past `i64::MAX`,
    /// integers of another width, text read back as views; nulls and unknown keys never match.
    #[test]
    fn a_key_set_matches_exactly_across_key_types() {
        use arrow::array::{Int32Array, StringViewArray, UInt64Array};
        let big = u64::MAX - 1;
        let keys: ArrayRef = Arc::new(UInt64Array::from(vec![Some(big), Some(5), None]));
        let set = KeySet::new(&keys, &DataType::UInt64).expect("set");
        let column: ArrayRef = Arc::new(UInt64Array::from(vec![
            Some(big),
            Some(u64::MAX),
            Some(5),
            None,
            Some(big - 1),
        ]));
        let got: Vec<bool> = set
            .contains(&column)
            .expect("contains")
            .values()
            .iter()
            .collect();
        assert_eq!(got, [true, false, true, false, false]);

        let keys: ArrayRef = Arc::new(Int64Array::from(vec![Some(-3), Some(1 << 40), None]));
        let set = KeySet::new(&keys, &DataType::Int32).expect("set");
        let column: ArrayRef = Arc::new(Int32Array::from(vec![Some(-3), Some(0), None]));
        let got: Vec<bool> = set
            .contains(&column)
            .expect("contains")
            .values()
            .iter()
            .collect();
        assert_eq!(got, [true, false, false]);

        let keys: ArrayRef = Arc::new(StringArray::from(vec![Some("u-1"), Some(""), None]));
        let set = KeySet::new(&keys, &DataType::Utf8View).expect("set");
        let column: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("u-1"),
            Some("u-2"),
            Some(""),
            None,
        ]));
        let got: Vec<bool> = set
            .contains(&column)
            .expect("contains")
            .values()
            .iter()
            .collect();
        assert_eq!(got, [true, false, true, false]);
    }

    #[test]
    fn dictionary_encoding_only_for_columns_that_repeat_values() {
        let n = 100_000;
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            (
                "score",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 7.0),
                )),
            ),
            (
                "category",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["food", "travel", "games"][i as usize % 3]),
                )),
            ),
            (
                "count",
                Arc::new(Int64Array::from_iter(
                    (0..n).map(|i| (i % 5 > 0).then_some(i % 40)),
                )),
            ),
        ])
        .unwrap();
        let p = writer_properties(Some(&batch));
        let dict = |c: &str| p.dictionary_enabled(&ColumnPath::from(c));
        assert!(!dict("id") && !dict("score"));
        assert!(dict("category") && dict("count"));
        assert_eq!(p.compression(&ColumnPath::from("id")), Compression::SNAPPY);
        // No rows to look at: Parquet's defaults.
        assert!(writer_properties(None).dictionary_enabled(&ColumnPath::from("id")));
    }
}
