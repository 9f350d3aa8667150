//! The embedded offline store: one Delta Lake table per dataset under the state directory,
//! readable by DuckDB, Polars, pandas and Spark. Writes replace a time range atomically
//! (`replace_where column >= from`), so a rerun over the same range leaves no duplicate.

use crate::StoreError;
use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::datafusion::common::JoinType;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use deltalake::protocol::SaveMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// The rows a write supersedes: `column >= from_micros`. `None` in [`OfflineStore::write`]
/// replaces the whole table.
#[derive(Debug, Clone)]
pub struct ReplaceRange {
    pub column: String,
    pub from_micros: i64,
}

#[derive(Debug, Clone)]
pub struct OfflineStore {
    root: PathBuf,
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
        }
    }

    pub fn table_path(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    async fn open(&self, table: &str) -> Result<DeltaTable, StoreError> {
        let path = self.table_path(table);
        let err = |reason: String| StoreError::Offline {
            table: table.into(),
            reason,
        };
        std::fs::create_dir_all(&path).map_err(|e| err(e.to_string()))?;
        let abs = std::fs::canonicalize(&path).map_err(|e| err(e.to_string()))?;
        let url = Url::from_directory_path(&abs)
            .map_err(|_| err(format!("bad path {}", abs.display())))?;
        DeltaTable::try_from_url(url)
            .await
            .map_err(|e| err(e.to_string()))
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
    pub async fn write(
        &self,
        table: &str,
        batches: Vec<RecordBatch>,
        replace: Option<&ReplaceRange>,
    ) -> Result<(), StoreError> {
        let err = |e: deltalake::DeltaTableError| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let t = self.open(table).await?;
        let exists = t.version().is_some();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            if let (true, Some(r)) = (exists, replace) {
                t.delete()
                    .with_predicate(col(format!("\"{}\"", r.column)).gt_eq(ts_lit(r.from_micros)))
                    .await
                    .map_err(err)?;
            } else if exists {
                t.delete().await.map_err(err)?;
            }
            return Ok(());
        }
        let mut w = t.write(batches).with_save_mode(SaveMode::Overwrite);
        if let (true, Some(r)) = (exists, replace) {
            w = w.with_replace_where(col(format!("\"{}\"", r.column)).gt_eq(ts_lit(r.from_micros)));
        }
        w.await.map_err(err)?;
        Ok(())
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
        let err = |e: &dyn std::fmt::Display| StoreError::Offline {
            table: table.into(),
            reason: e.to_string(),
        };
        let ctx = self.session(&[table]).await?;
        let Ok(df) = ctx.table(table).await else {
            return Ok(vec![]);
        };
        let quoted = |c: &str| col(format!("\"{c}\""));
        // The touched keys join as a table (a hash semi-join), not as an IN list, so that any
        // number of keys plans in constant stack and time.
        let key_schema = Arc::new(Schema::new(vec![Field::new(
            "slate_key",
            keys.data_type().clone(),
            true,
        )]));
        let key_batch = RecordBatch::try_new(key_schema, vec![keys]).map_err(|e| err(&e))?;
        let keys_df = ctx.read_batch(key_batch).map_err(|e| err(&e))?;
        let mut df = df;
        if let Some(f) = from {
            df = df
                .filter(quoted(time).gt_eq(ts_lit(f)))
                .map_err(|e| err(&e))?;
        }
        let df = df
            .join(keys_df, JoinType::LeftSemi, &[key], &["slate_key"], None)
            .and_then(|d| d.select(columns.iter().map(|c| quoted(c)).collect::<Vec<_>>()))
            .map_err(|e| err(&e))?;
        df.collect().await.map_err(|e| err(&e))
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
        let quoted = |c: &str| col(format!("\"{c}\""));
        let mut cond = quoted(column).lt(ts_lit(to));
        if let Some(f) = from {
            cond = cond.and(quoted(column).gt_eq(ts_lit(f)));
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
