//! The run ledger: per (scheduled query, resolver) watermarks and one record per committed run,
//! in an embedded redb database. A run's watermark moves in the same transaction that records
//! the run, after everything else the run writes.

use crate::{StoreError, io};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const WATERMARKS: TableDefinition<(&str, &str), i64> = TableDefinition::new("watermarks");
const RUNS: TableDefinition<&str, &str> = TableDefinition::new("runs");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub query: String,
    pub resolver: String,
    pub micros: i64,
}

/// What a committed run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub query: String,
    pub tick_micros: i64,
    pub rows_ingested: usize,
    pub rows_scored: usize,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
}

#[derive(Debug)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Ledger {
            db: crate::open_db("run ledger", path)?,
        })
    }

    pub fn watermark(&self, query: &str, resolver: &str) -> Result<Option<i64>, StoreError> {
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

    pub fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
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

    /// Sets (`Some`) or drops (`None`) a watermark by hand.
    pub fn set_watermark(
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

    /// Records a finished run and moves the watermarks, atomically.
    pub fn commit_run(
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

    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| io("ledger read")(&e))?;
        let t = match tx.open_table(RUNS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(io("ledger read")(&e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| io("ledger read")(&e))? {
            let (_, v) = item.map_err(|e| io("ledger read")(&e))?;
            out.push(serde_json::from_str(v.value()).map_err(|e| io("ledger decode")(&e))?);
        }
        Ok(out)
    }
}
