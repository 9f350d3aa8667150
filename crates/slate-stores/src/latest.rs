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
use arrow::array::{Array, ArrayRef};
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
        use futures::TryStreamExt;
        let out = self
            .stream_latest_for_keys(table, columns, key, keys, time, from)
            .await?
            .try_collect()
            .await?;
        self.advance_latest_state(table, key, time, advance_to)
            .await?;
        Ok(out)
    }

    /// The read of [`OfflineStore::read_latest_for_keys`] as a stream (the entity state's rows,
    /// then the table's as they are read), without moving the state on: a reader that consumes
    /// the rows later moves it with [`OfflineStore::advance_latest_state`] once it has.
    pub async fn stream_latest_for_keys(
        &self,
        table: &str,
        columns: &[&str],
        key: &str,
        keys: ArrayRef,
        time: &str,
        from: i64,
    ) -> Result<crate::KeyedRows, StoreError> {
        use futures::StreamExt;
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
        let held = held.map(|(_, rows)| rows).unwrap_or_default();
        let rest = self
            .stream_for_keys(table, columns, key, keys, time, since)
            .await?;
        Ok(futures::stream::iter(held.into_iter().map(Ok))
            .chain(rest)
            .boxed())
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

/// A row of a pushed batch: the batch's number and the row's position in it.
type RowRef = (u64, u32);

/// The greatest time seen and the rows at it.
type Best = (Option<i64>, Vec<RowRef>);

/// A pushed batch kept while the current entity may still choose its rows, and the rows of
/// finished entities chosen from it.
struct Held {
    no: u64,
    batch: RecordBatch,
    chosen: Vec<u32>,
}

/// The entity state of a table at a cutoff, built from the table's rows as a write streams
/// them instead of by reading the table back: the rows must arrive ordered by the key, and by
/// time within a key (the order of a streamed backfill's output). It keeps the current entity's
/// candidate rows only, and writes the chosen rows as the batches that hold them are passed.
/// The state is the one [`OfflineStore::advance_latest_state`] writes: for every entity, its
/// rows before the cutoff at its greatest time, and for each other column the rows at the
/// greatest time where that column is set.
pub struct LatestStateBuilder {
    table: String,
    dir: PathBuf,
    target: i64,
    key: String,
    time: String,
    /// Keys in a comparable form (made for the key column's type at the first batch).
    converter: Option<arrow::row::RowConverter>,
    last_key: Option<arrow::row::OwnedRow>,
    last_time: i64,
    /// The current entity's greatest time and rows at it.
    at_max: Best,
    /// Per other column: its greatest time where set, and the rows set at that time.
    per_column: Vec<(usize, Best)>,
    held: std::collections::VecDeque<Held>,
    next: u64,
    writer: Option<ArrowWriter<std::fs::File>>,
    schema: Option<arrow::datatypes::SchemaRef>,
}

impl OfflineStore {
    /// A builder of `table`'s entity state (by `key`, `time`) at `advance_to`'s day, fed with
    /// the rows a write of the whole table streams (see [`LatestStateBuilder`]).
    pub fn latest_state_builder(
        &self,
        table: &str,
        key: &str,
        time: &str,
        advance_to: i64,
    ) -> LatestStateBuilder {
        LatestStateBuilder {
            table: table.into(),
            dir: self.state_dir(table, key, time),
            target: i64::from(day_of(advance_to)) * 86_400_000_000,
            key: key.into(),
            time: time.into(),
            converter: None,
            last_key: None,
            last_time: i64::MIN,
            at_max: (None, Vec::new()),
            per_column: Vec::new(),
            held: std::collections::VecDeque::new(),
            next: 0,
            writer: None,
            schema: None,
        }
    }
}

impl LatestStateBuilder {
    /// The cutoff (a day boundary) the state is built at.
    pub fn cutoff(&self) -> i64 {
        self.target
    }

    /// Takes the next rows of the table (its columns; a day column is left out).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        let table = self.table.clone();
        let err = |e: &dyn std::fmt::Display| state_err(&table, e);
        let batch = match batch.schema().index_of(DAY_COLUMN) {
            Ok(i) => {
                let mut b = batch.clone();
                b.remove_column(i);
                b
            }
            Err(_) => batch.clone(),
        };
        let schema = self.schema.get_or_insert_with(|| batch.schema()).clone();
        if batch.schema() != schema {
            return Err(err(&"rows with different columns"));
        }
        let (k, t) = (
            schema.index_of(&self.key).map_err(|e| err(&e))?,
            schema.index_of(&self.time).map_err(|e| err(&e))?,
        );
        if self.per_column.is_empty() {
            self.per_column = (0..schema.fields().len())
                .filter(|&c| c != k && c != t)
                .map(|c| (c, (None, Vec::new())))
                .collect();
        }
        let converter = match &mut self.converter {
            Some(c) => c,
            None => self.converter.insert(
                arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
                    batch.column(k).data_type().clone(),
                )])
                .map_err(|e| err(&e))?,
            ),
        };
        let keys = converter
            .convert_columns(&[batch.column(k).clone()])
            .map_err(|e| err(&e))?;
        let times = arrow::compute::cast(
            batch.column(t),
            &arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        )
        .map_err(|e| err(&e))?;
        let times = times
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .ok_or_else(|| err(&format!("{} is not a time", self.time)))?;
        let key_column = batch.column(k).clone();
        let no = self.next;
        self.next += 1;
        self.held.push_back(Held {
            no,
            batch: batch.clone(),
            chosen: Vec::new(),
        });
        for i in 0..batch.num_rows() {
            if key_column.is_null(i) || times.is_null(i) {
                continue;
            }
            let (key, time) = (keys.row(i), times.value(i));
            match &self.last_key {
                Some(last) if last.row() == key => {
                    if time < self.last_time {
                        return Err(err(&"rows not ordered by time within a key"));
                    }
                }
                Some(last) if last.row() > key => {
                    return Err(err(&"rows not ordered by key"));
                }
                _ => {
                    self.end_entity();
                    self.last_key = Some(key.owned());
                }
            }
            self.last_time = time;
            if time >= self.target {
                continue;
            }
            let at = (no, i as u32);
            keep(&mut self.at_max, time, at);
            for (c, best) in &mut self.per_column {
                if batch.column(*c).is_valid(i) {
                    keep(best, time, at);
                }
            }
        }
        self.flush(false)
    }

    /// Moves the current entity's chosen rows to their batches.
    fn end_entity(&mut self) {
        let mut rows: Vec<RowRef> = std::mem::take(&mut self.at_max.1);
        self.at_max.0 = None;
        for (_, (best, r)) in &mut self.per_column {
            rows.append(r);
            *best = None;
        }
        rows.sort_unstable();
        rows.dedup();
        let first = self.held.front().map_or(0, |h| h.no);
        for (no, i) in rows {
            if let Some(h) = self.held.get_mut((no - first) as usize) {
                h.chosen.push(i);
            }
        }
    }

    /// Writes the chosen rows of the batches no candidate of the current entity is in (all of
    /// them when `all`).
    fn flush(&mut self, all: bool) -> Result<(), StoreError> {
        let table = self.table.clone();
        let err = |e: &dyn std::fmt::Display| state_err(&table, e);
        let oldest = match all {
            true => u64::MAX,
            false => self
                .at_max
                .1
                .iter()
                .chain(self.per_column.iter().flat_map(|(_, (_, r))| r.iter()))
                .map(|(no, _)| *no)
                .min()
                .unwrap_or(u64::MAX),
        };
        while self.held.front().is_some_and(|h| h.no < oldest) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            if h.chosen.is_empty() {
                continue;
            }
            let rows = arrow::compute::take_record_batch(
                &h.batch,
                &arrow::array::UInt32Array::from(h.chosen),
            )
            .map_err(|e| err(&e))?;
            self.writer()?.write(&rows).map_err(|e| err(&e))?;
        }
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut ArrowWriter<std::fs::File>, StoreError> {
        let table = self.table.clone();
        let err = |e: &dyn std::fmt::Display| state_err(&table, e);
        if self.writer.is_none() {
            let schema = self
                .schema
                .clone()
                .ok_or_else(|| err(&"a state without rows"))?;
            std::fs::create_dir_all(&self.dir).map_err(|e| err(&e))?;
            let partial = self.partial();
            let file = std::fs::File::create(&partial).map_err(|e| err(&e))?;
            self.writer = Some(ArrowWriter::try_new(file, schema, None).map_err(|e| err(&e))?);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| err(&"the state file is not open"))
    }

    fn partial(&self) -> PathBuf {
        self.dir
            .join(format!("{PREFIX}{}.parquet.partial", self.target))
    }

    /// Writes the state once the table's last rows were pushed; it replaces older states. A
    /// builder that saw no batch writes nothing.
    pub fn finish(mut self) -> Result<(), StoreError> {
        if self.schema.is_none() {
            return Ok(());
        }
        self.end_entity();
        self.flush(true)?;
        let table = self.table.clone();
        let err = |e: &dyn std::fmt::Display| state_err(&table, e);
        self.writer()?;
        if let Some(w) = self.writer.take() {
            w.close().map_err(|e| err(&e))?;
        }
        let path = self.dir.join(format!("{PREFIX}{}.parquet", self.target));
        std::fs::rename(self.partial(), &path).map_err(|e| err(&e))?;
        for (c, p) in state_files(&self.dir) {
            if c != self.target {
                std::fs::remove_file(p).map_err(|e| err(&e))?;
            }
        }
        Ok(())
    }
}

impl Drop for LatestStateBuilder {
    /// A builder dropped unfinished (its run failed, or its cutoff moved) leaves no file.
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(self.partial());
        }
    }
}

/// Keeps `at` among the rows at the greatest time seen.
fn keep(best: &mut Best, time: i64, at: RowRef) {
    match best.0 {
        Some(b) if b > time => {}
        Some(b) if b == time => best.1.push(at),
        _ => {
            best.0 = Some(time);
            best.1.clear();
            best.1.push(at);
        }
    }
}
