//! The run ledger: per (scheduled query, resolver) watermarks, one record per committed run and
//! one per failed run of the service. A run's watermark moves in the same transaction that
//! records the run, after everything else the run writes. [`RedbLedger`] keeps it in an
//! embedded redb database; [`crate::PgLedger`] in PostgreSQL, shared by several services.

use crate::{StoreError, io};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const WATERMARKS: TableDefinition<(&str, &str), i64> = TableDefinition::new("watermarks");
const RUNS: TableDefinition<&str, &str> = TableDefinition::new("runs");
/// Failed runs, keyed by run id and start time: a tick that failed and then succeeded keeps both.
const FAILURES: TableDefinition<(&str, i64), &str> = TableDefinition::new("failed_runs");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub query: String,
    pub resolver: String,
    pub micros: i64,
}

/// How a recorded run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

/// What a run did: its identity, outcome, rows, watermarks and stage timings. Records written
/// by earlier versions lack the later fields; they read back as their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub query: String,
    pub tick_micros: i64,
    #[serde(default)]
    pub status: RunStatus,
    /// `schedule` (a cron tick) or `on_demand` (the CLI or the API).
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub started_micros: i64,
    #[serde(default)]
    pub finished_micros: i64,
    pub rows_ingested: usize,
    pub rows_scored: usize,
    /// Rows of the root resolver that arrived too late to be read (see [`ScanRecord::late_rows`]).
    #[serde(default)]
    pub late_rows: Option<usize>,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    #[serde(default)]
    pub scans: Vec<ScanRecord>,
    #[serde(default)]
    pub outputs: Vec<OutputRecord>,
    /// Stage name and seconds, in order.
    #[serde(default)]
    pub stages: Vec<(String, f64)>,
    #[serde(default)]
    pub error: Option<String>,
}

/// One resolver read by a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    pub resolver: String,
    pub rows: usize,
    /// The lower bound the run read from (`None`: every row).
    pub bound_micros: Option<i64>,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    /// Rows the source now holds between the previous run's bound and this run's bound that
    /// the offline store lacks: they arrived after the range was read and are now below the
    /// lookback, so no run will read them. `None` when not counted (a first run, a full scan).
    pub late_rows: Option<usize>,
}

/// One output feature of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub feature: String,
    pub rows: usize,
    pub nulls: usize,
}

/// Where runs are recorded and watermarks kept. Every method is one transaction.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// The watermark of `resolver` in `query`'s runs.
    fn watermark(&self, query: &str, resolver: &str) -> Result<Option<i64>, StoreError>;

    /// Every watermark.
    fn watermarks(&self) -> Result<Vec<Watermark>, StoreError>;

    /// Sets (`Some`) or drops (`None`) a watermark by hand.
    fn set_watermark(
        &self,
        query: &str,
        resolver: &str,
        micros: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Records a finished run and moves the watermarks (`(resolver, micros)` of the run's
    /// query), atomically. A run recorded again under the same id replaces the first record.
    fn commit_run(
        &self,
        record: &RunRecord,
        watermarks: &[(String, i64)],
    ) -> Result<(), StoreError>;

    /// Records a run that failed; watermarks do not move.
    fn record_failure(&self, record: &RunRecord) -> Result<(), StoreError>;

    /// Every recorded run, committed and failed, in start order (then tick, then id).
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// The committed runs only, in start order.
    fn committed_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = self.runs()?;
        runs.retain(|r| r.status == RunStatus::Succeeded);
        Ok(runs)
    }

    /// The committed run of `query` that started last.
    fn last_committed(&self, query: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self
            .committed_runs()?
            .into_iter()
            .rfind(|r| r.query == query))
    }

    /// The latest tick of `query` that a committed run recorded.
    fn last_tick(&self, query: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .committed_runs()?
            .into_iter()
            .filter(|r| r.query == query)
            .map(|r| r.tick_micros)
            .max())
    }

    /// Whether a run with this id committed.
    fn is_committed(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.committed_runs()?.iter().any(|r| r.run_id == run_id))
    }
}

/// Records in start order, then tick, then id (the order [`Ledger::runs`] returns).
pub(crate) fn sort_runs(runs: &mut [RunRecord]) {
    runs.sort_by(|a, b| {
        (a.started_micros, a.tick_micros, &a.run_id).cmp(&(
            b.started_micros,
            b.tick_micros,
            &b.run_id,
        ))
    });
}

/// The ledger in a redb file of the state directory (`ledger.redb`).
#[derive(Debug)]
pub struct RedbLedger {
    db: Database,
}

impl RedbLedger {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(RedbLedger {
            db: crate::open_db("run ledger", path)?,
        })
    }
}

impl Ledger for RedbLedger {
    fn watermark(&self, query: &str, resolver: &str) -> Result<Option<i64>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("ledger read")(&e))?;
        match tx.open_table(WATERMARKS) {
            Ok(t) => Ok(t
                .get((query, resolver))
                .map_err(|e| io("ledger read")(&e))?
                .map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(io("ledger read")(&e)),
        }
    }

    fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("ledger read")(&e))?;
        let t = match tx.open_table(WATERMARKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(io("ledger read")(&e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| io("ledger read")(&e))? {
            let (k, v) = item.map_err(|e| io("ledger read")(&e))?;
            let (q, r) = k.value();
            out.push(Watermark {
                query: q.into(),
                resolver: r.into(),
                micros: v.value(),
            });
        }
        Ok(out)
    }

    fn set_watermark(
        &self,
        query: &str,
        resolver: &str,
        micros: Option<i64>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| io("ledger write")(&e))?;
        {
            let mut t = tx
                .open_table(WATERMARKS)
                .map_err(|e| io("ledger write")(&e))?;
            match micros {
                Some(m) => t.insert((query, resolver), m).map(|_| ()),
                None => t.remove((query, resolver)).map(|_| ()),
            }
            .map_err(|e| io("ledger write")(&e))?;
        }
        tx.commit().map_err(|e| io("ledger commit")(&e))
    }

    fn commit_run(
        &self,
        record: &RunRecord,
        watermarks: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| io("ledger encode")(&e))?;
        let tx = self.db.begin_write().map_err(|e| io("ledger write")(&e))?;
        {
            let mut w = tx
                .open_table(WATERMARKS)
                .map_err(|e| io("ledger write")(&e))?;
            for (resolver, m) in watermarks {
                w.insert((record.query.as_str(), resolver.as_str()), *m)
                    .map_err(|e| io("ledger write")(&e))?;
            }
            let mut r = tx.open_table(RUNS).map_err(|e| io("ledger write")(&e))?;
            r.insert(record.run_id.as_str(), json.as_str())
                .map_err(|e| io("ledger write")(&e))?;
        }
        tx.commit().map_err(|e| io("ledger commit")(&e))
    }

    fn record_failure(&self, record: &RunRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| io("ledger encode")(&e))?;
        let tx = self.db.begin_write().map_err(|e| io("ledger write")(&e))?;
        {
            let mut f = tx
                .open_table(FAILURES)
                .map_err(|e| io("ledger write")(&e))?;
            f.insert(
                (record.run_id.as_str(), record.started_micros),
                json.as_str(),
            )
            .map_err(|e| io("ledger write")(&e))?;
        }
        tx.commit().map_err(|e| io("ledger commit")(&e))
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("ledger read")(&e))?;
        let mut out: Vec<RunRecord> = Vec::new();
        let decode = |v: &str| -> Result<RunRecord, StoreError> {
            serde_json::from_str(v).map_err(|e| io("ledger decode")(&e))
        };
        match tx.open_table(RUNS) {
            Ok(t) => {
                for item in t.iter().map_err(|e| io("ledger read")(&e))? {
                    let (_, v) = item.map_err(|e| io("ledger read")(&e))?;
                    out.push(decode(v.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io("ledger read")(&e)),
        }
        match tx.open_table(FAILURES) {
            Ok(t) => {
                for item in t.iter().map_err(|e| io("ledger read")(&e))? {
                    let (_, v) = item.map_err(|e| io("ledger read")(&e))?;
                    out.push(decode(v.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io("ledger read")(&e)),
        }
        sort_runs(&mut out);
        Ok(out)
    }
}
