//! Where runs leave their results: the online store (latest value per feature and key, for
//! serving; redb embedded or Redis), the offline store (Delta Lake tables, for analysis and
//! training) and the run ledger (watermarks and run records; redb embedded or PostgreSQL).

mod buckets;
mod latest;
mod ledger;
mod offline;
mod online;
mod pg_ledger;
mod record;
mod redis;

pub use latest::LatestStateBuilder;
pub use ledger::{Ledger, OutputRecord, RedbLedger, RunRecord, RunStatus, ScanRecord, Watermark};
pub use offline::{DAY_COLUMN, KeyedRows, OfflineStore, ReplaceRange, WriteRows, day_of};
pub use online::{
    OnlineRows, OnlineStore, OnlineValue, OnlineWriter, RedbOnlineStore, class_of, key_order,
};
pub use pg_ledger::{PgLedger, PgRunLock};
pub use redis::{RedisOnlineStore, RedisSettings};

use slate_types::ErrorKind;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {what} at {path}: {reason}")]
    Open {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the {what} at {path} is open in another process (a running `slate serve`?): trigger runs through that service (`POST /v1/runs`), or stop it first"
    )]
    InUse { what: &'static str, path: PathBuf },
    #[error("{what} failed: {reason}")]
    Io { what: &'static str, reason: String },
    #[error("offline table {table}: {reason}")]
    Offline { table: String, reason: String },
    #[error("{what} failed at {target}: {reason}")]
    Postgres {
        what: &'static str,
        target: String,
        reason: String,
    },
    #[error("{what} failed at Redis {target}: {reason}")]
    Redis {
        what: &'static str,
        target: String,
        reason: String,
    },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::External
    }
}

fn io(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io {
        what,
        reason: e.to_string(),
    }
}

/// Memory each redb database may cache its pages in (redb's default is 1 GiB): a fixed part of
/// a process's memory beside a run's budget. Reads past it come from the OS's page cache.
const REDB_CACHE_BYTES: usize = 256 << 20;

/// Opens the redb database at `path`, creating it first under a temporary name and renaming it
/// into place: a process killed while creating it leaves no half-written database behind.
fn open_db(what: &'static str, path: &std::path::Path) -> Result<redb::Database, StoreError> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Open {
        what,
        path: path.into(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    }
    if !path.exists() {
        let tmp = path.with_extension("redb.creating");
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| fail(&e))?;
        }
        drop(redb::Database::create(&tmp).map_err(|e| fail(&e))?);
        std::fs::rename(&tmp, path).map_err(|e| fail(&e))?;
    }
    redb::Database::builder()
        .set_cache_size(REDB_CACHE_BYTES)
        .open(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                what,
                path: path.into(),
            },
            e => fail(&e),
        })
}
