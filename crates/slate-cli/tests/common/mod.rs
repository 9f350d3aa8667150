//! What the command-line tests share: the fraud project and a comparable view of its stores.
#![allow(dead_code)]

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, sort_to_indices, take};
use arrow::datatypes::Int64Type;
use slate_stores::{OfflineStore, OnlineStore, RedbOnlineStore};
use std::path::Path;

pub fn project() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud")
}

/// The predictions table without run ids, sorted by transaction id, and the online values.
pub async fn stores(state: &Path) -> (RecordBatch, Vec<Option<(i64, String)>>) {
    let batches = OfflineStore::new(&state.join("offline"))
        .read_all("run_fraud_model")
        .await
        .expect("read");
    let b = concat_batches(&batches[0].schema(), &batches).expect("concat");
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| b.schema().field(i).name() != "run_id")
        .collect();
    let b = b.project(&keep).expect("project");
    let order = sort_to_indices(b.column_by_name("id").expect("id"), None, None).expect("sort");
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c, &order, None).expect("take"))
        .collect();
    let b = RecordBatch::try_new(b.schema(), cols).expect("batch");
    let online = RedbOnlineStore::open(&state.join("online.redb")).expect("online");
    let ids = b
        .column_by_name("id")
        .expect("id")
        .as_primitive::<Int64Type>()
        .clone();
    let values = (0..ids.len())
        .map(|i| {
            online
                .get("transaction.is_fraud", &ids.value(i).to_string())
                .expect("get")
                .map(|v| (v.feature_time, v.json))
        })
        .collect();
    (b, values)
}
