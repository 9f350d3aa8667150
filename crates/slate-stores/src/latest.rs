//! Per-entity state of an offline table: for every entity, its rows before a cutoff that an
//! unbounded `latest` (of any column) or a time since the latest row can still need: the rows
//! at the entity's greatest time, and for each column the rows at the greatest time where that
//! column is not null. With it, a history read for such aggregations stops at the widest window
//! instead of the table's first row, and a dormant entity still has its last row.
//!
//! The state is a Parquet file per (table, key, time) named by its cutoff, written to a
//! `.partial` file and renamed. Rows before the cutoff never change afterwards unless a write
//! replaces a range that starts before it; such a write deletes the state first.

use crate::StoreError;
use crate::offline::{DAY_COLUMN, OfflineStore, day_of};
use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::{ParquetReadOptions, SessionContext};
use deltalake::parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};

const PREFIX: &str = "latest-";

fn ident(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

impl OfflineStore {
    fn state_dir(&self, table: &str, key: &str, time: &str) -> PathBuf {
        self.root()
            .join(".state")
            .join(table)
            .join(format!("{key}@{time}"))
    }

    /// Deletes `table`'s entity states with a cutoff after `from` (every state when `None`),
    /// before a write that may replace rows they summarize.
    pub(crate) fn invalidate_state(
        &self,
        table: &str,
        from: Option<i64>,
    ) -> Result<(), StoreError> {
        let dir = self.root().join(".state").join(table);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            for (cutoff, path) in state_files(&entry.path()) {
                if from.is_none_or(|f| cutoff > f) {
                    std::fs::remove_file(&path).map_err(|e| state_err(table, &e))?;
                }
            }
        }
        Ok(())
    }

    /// Reads `columns` of `table` for the entities in `keys`: their rows with `time` at or
    /// after `from` and, before it, at least the rows an unbounded `latest` or time since the
    /// latest row needs (every earlier row when no entity state serves). Then moves the state's
    /// cutoff to `advance_to` (a day boundary is used), for the next read.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_latest_for_keys(
        &self,
        table: &str,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
        time: &str,
        from: i64,
        advance_to: i64,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        let dir = self.state_dir(table, key, time);
        let state = state_files(&dir)
            .into_iter()
            .filter(|(c, _)| *c <= from)
            .max_by_key(|(c, _)| *c);
        let held = match &state {
            Some((cutoff, path)) => self
                .state_rows(table, path, columns, key, &keys)
                .await?
                .map(|rows| (*cutoff, rows)),
            None => None,
        };
        // Without a state holding every asked column, the read starts at the table's first row.
        let since = held.as_ref().map(|(c, _)| *c);
        let mut out = held.map(|(_, rows)| rows).unwrap_or_default();
        out.extend(
            self.read_for_keys(table, columns, key, keys, time, since)
                .await?,
        );
        let target = i64::from(day_of(advance_to)) * 86_400_000_000;
        let current = state_files(&dir).into_iter().map(|(c, _)| c).max();
        if current.is_none_or(|c| c < target) {
            self.advance(table, key, time, &dir, target).await?;
        }
        Ok(out)
    }

    /// Moves the entity state of `table` (by `key`, `time`) on to `advance_to`'s day, as
    /// [`OfflineStore::read_latest_for_keys`] does after its read: for a caller that had the
    /// rows at hand (a backfill computes from the rows it ingested).
    pub async fn advance_latest_state(
        &self,
        table: &str,
        key: &str,
        time: &str,
        advance_to: i64,
    ) -> Result<(), StoreError> {
        let dir = self.state_dir(table, key, time);
        let target = i64::from(day_of(advance_to)) * 86_400_000_000;
        let current = state_files(&dir).into_iter().map(|(c, _)| c).max();
        if current.is_none_or(|c| c < target) {
            self.advance(table, key, time, &dir, target).await?;
        }
        Ok(())
    }

    /// `columns` of the state file's rows for `keys` (`None` when the file lacks a column).
    async fn state_rows(
        &self,
        table: &str,
        path: &Path,
        columns: &[&str],
        key: &str,
        keys: &ArrayRef,
    ) -> Result<Option<Vec<RecordBatch>>, StoreError> {
        let ctx = SessionContext::new();
        ctx.register_parquet(
            "slate_state",
            path_str(table, path)?,
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| state_err(table, &e))?;
        let df = ctx
            .table("slate_state")
            .await
            .map_err(|e| state_err(table, &e))?;
        if !columns
            .iter()
            .all(|c| df.schema().field_with_unqualified_name(c).is_ok())
        {
            return Ok(None);
        }
        Ok(Some(
            self.keyed(table, &ctx, df, columns, key, keys.clone())
                .await?,
        ))
    }

    /// Writes the state at `target` from the newest earlier state and the table's rows since.
    async fn advance(
        &self,
        table: &str,
        key: &str,
        time: &str,
        dir: &Path,
        target: i64,
    ) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| state_err(table, e);
        let ctx = self.session(&[table]).await?;
        let Ok(t) = ctx.table(table).await else {
            return Ok(());
        };
        let columns: Vec<String> = t
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != DAY_COLUMN)
            .collect();
        let list = columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let previous = state_files(dir)
            .into_iter()
            .filter(|(c, _)| *c <= target)
            .max_by_key(|(c, _)| *c);
        let partitioned = t.schema().field_with_unqualified_name(DAY_COLUMN).is_ok();
        let day = |micros: i64| match partitioned {
            true => format!(" AND {DAY_COLUMN} >= DATE '{}'", date_text(micros)),
            false => String::new(),
        };
        let (k, ts) = (ident(key), ident(time));
        let mut recent = format!(
            "SELECT {list} FROM {} WHERE {k} IS NOT NULL AND {ts} IS NOT NULL AND {ts} < to_timestamp_micros({target}){}",
            ident(table),
            match partitioned {
                true => format!(" AND {DAY_COLUMN} <= DATE '{}'", date_text(target)),
                false => String::new(),
            }
        );
        let mut union = String::new();
        if let Some((cutoff, path)) = &previous {
            ctx.register_parquet(
                "slate_state",
                path_str(table, path)?,
                ParquetReadOptions::default(),
            )
            .await
            .map_err(|e| err(&e))?;
            let old = ctx.table("slate_state").await.map_err(|e| err(&e))?;
            if columns
                .iter()
                .all(|c| old.schema().field_with_unqualified_name(c).is_ok())
            {
                recent.push_str(&format!(
                    " AND {ts} >= to_timestamp_micros({cutoff}){}",
                    day(*cutoff)
                ));
                union = format!(" UNION ALL SELECT {list} FROM slate_state");
            }
        }
        let mut maxes = vec![format!("max({ts}) AS slate_t")];
        let mut keep = vec![format!("u.{ts} = m.slate_t")];
        for (i, c) in columns.iter().enumerate() {
            if c == key || c == time {
                continue;
            }
            let c = ident(c);
            maxes.push(format!(
                "max(CASE WHEN {c} IS NOT NULL THEN {ts} END) AS slate_t{i}"
            ));
            keep.push(format!("(u.{c} IS NOT NULL AND u.{ts} = m.slate_t{i})"));
        }
        // Ordered by every column, so the same rows give the same file.
        let selected = columns
            .iter()
            .map(|c| format!("u.{}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH u AS ({recent}{union}), m AS (SELECT {k} AS slate_k, {} FROM u GROUP BY {k}) \
             SELECT {selected} FROM u JOIN m ON u.{k} = m.slate_k WHERE {} ORDER BY {selected}",
            maxes.join(", "),
            keep.join(" OR "),
        );
        let df = ctx.sql(&sql).await.map_err(|e| err(&e))?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await.map_err(|e| err(&e))?;
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let path = dir.join(format!("{PREFIX}{target}.parquet"));
        let partial = dir.join(format!("{PREFIX}{target}.parquet.partial"));
        let file = std::fs::File::create(&partial).map_err(|e| err(&e))?;
        let mut w =
            ArrowWriter::try_new(file, std::sync::Arc::new(schema), None).map_err(|e| err(&e))?;
        for b in &batches {
            w.write(b).map_err(|e| err(&e))?;
        }
        w.close().map_err(|e| err(&e))?;
        std::fs::rename(&partial, &path).map_err(|e| err(&e))?;
        for (c, p) in state_files(dir) {
            if c != target {
                std::fs::remove_file(p).map_err(|e| err(&e))?;
            }
        }
        Ok(())
    }
}

/// The state files under `dir` with their cutoffs.
fn state_files(dir: &Path) -> Vec<(i64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let cutoff = name
                .strip_prefix(PREFIX)?
                .strip_suffix(".parquet")?
                .parse()
                .ok()?;
            Some((cutoff, e.path()))
        })
        .collect()
}

fn path_str<'a>(table: &str, path: &'a Path) -> Result<&'a str, StoreError> {
    path.to_str()
        .ok_or_else(|| state_err(table, &format!("path {} is not UTF-8", path.display())))
}

fn date_text(micros: i64) -> String {
    slate_types::format_rfc3339(i64::from(day_of(micros)) * 86_400_000_000)[..10].to_string()
}

fn state_err(table: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Offline {
        table: table.into(),
        reason: format!("entity state: {e}"),
    }
}
