//! Where runs leave their results: the online store (latest value per feature and key, for
//! serving), the offline store (Delta Lake tables, for analysis and training) and the run
//! ledger (watermarks and run records).

mod ledger;
mod offline;
mod online;

pub use ledger::{Ledger, RunRecord, Watermark};
pub use offline::{OfflineStore, ReplaceRange};
pub use online::{OnlineStore, OnlineValue};

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
    #[error("{what} failed: {reason}")]
    Io { what: &'static str, reason: String },
    #[error("offline table {table}: {reason}")]
    Offline { table: String, reason: String },
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
