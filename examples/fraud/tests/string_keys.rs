//! The fraud project with string ids (`user_id: str`, `merchant_id: str`, as most warehouses
//! hold them) computes the same features and predictions as with int ids: distinct counts and
//! entity keys are compared exactly, never through a numeric cast.

use crate::common;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use fraud_example::{Config, START_MICROS, to_batch, transactions, users_batch, write_parquet};
use slate_engine::{Engine, EngineConfig, SilentProgress, plan_query};
use slate_types::FixedClock;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;

/// Replaces int columns of `b` by strings `{prefix}{value}`.
fn stringify(b: &RecordBatch, columns: &[(&str, &str)]) -> RecordBatch {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (f, a) in b.schema().fields().iter().zip(b.columns()) {
        match columns.iter().find(|(c, _)| c == f.name()) {
            Some((_, prefix)) => {
                let ints = a.as_primitive::<Int64Type>();
                let s: StringArray = ints
                    .iter()
                    .map(|v| v.map(|v| format!("{prefix}{v}")))
                    .collect();
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                arrays.push(Arc::new(s));
            }
            None => {
                fields.push(f.as_ref().clone());
                arrays.push(a.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch")
}

async fn run_and_read(project_dir: &Path, data: &Path, state: &Path) -> RecordBatch {
    let project = slate_project::load_project(project_dir).expect("valid project");
    let plan = plan_query(&project, "run_fraud_model").expect("plan");
    let engine = Engine::new(EngineConfig {
        project,
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(START_MICROS + 40 * DAY)),
    })
    .expect("engine");
    let summary = engine.run(&plan, &SilentProgress).await.expect("run");
    assert!(summary.rows_scored > 1000, "{summary:?}");
    let store = slate_stores::OfflineStore::new(&state.join("offline"));
    let batches = store.read_all("run_fraud_model").await.expect("read");
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    common::without_run_id_by_id(&b)
}

#[tokio::test(flavor = "multi_thread")]
async fn string_ids_give_the_same_features_and_predictions_as_int_ids() {
    let cfg = Config {
        users: 120,
        merchants: 50,
        seed: 5,
        activity: 1.0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows = transactions(&cfg, 25);
    let txns = to_batch(&rows).expect("batch");

    let int_data = tmp.path().join("int-warehouse");
    write_parquet(&int_data.join("ML.TRANSACTIONS/part-0000.parquet"), &txns).expect("write");
    write_parquet(
        &int_data.join("ML.USERS.parquet"),
        &users_batch(&cfg).expect("users"),
    )
    .expect("write");

    // Ids that no numeric cast can read: a cast would turn every one into null.
    let str_data = tmp.path().join("str-warehouse");
    write_parquet(
        &str_data.join("ML.TRANSACTIONS/part-0000.parquet"),
        &stringify(&txns, &[("user_id", "u-"), ("merchant_id", "m-")]),
    )
    .expect("write");
    write_parquet(
        &str_data.join("ML.USERS.parquet"),
        &stringify(&users_batch(&cfg).expect("users"), &[("user_id", "u-")]),
    )
    .expect("write");
    let str_project = tmp.path().join("str-project");
    common::copy_project(&str_project);
    let models = str_project.join("src/models.yaml");
    let text = std::fs::read_to_string(&models).expect("models.yaml");
    let edited = text
        .replacen(
            "id: {type: int, primary_key: true}\n  name: str",
            "id: {type: str, primary_key: true}\n  name: str",
            1,
        )
        .replace("  user_id: int", "  user_id: str")
        .replace("  merchant_id: int", "  merchant_id: str");
    assert_eq!(
        edited.matches(": str").count(),
        text.matches(": str").count() + 3,
        "{edited}"
    );
    std::fs::write(&models, edited).expect("write models.yaml");

    let with_ints = run_and_read(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &int_data,
        &tmp.path().join("int-state"),
    )
    .await;
    let with_strings = run_and_read(&str_project, &str_data, &tmp.path().join("str-state")).await;
    // The distinct-merchant counts are not trivially zero.
    let d30 = with_ints
        .column_by_name("user__num_distinct_merchants_transacted__30d")
        .expect("column")
        .as_primitive::<Int64Type>();
    assert!(
        d30.iter().flatten().any(|v| v > 3),
        "distinct merchants are counted"
    );
    assert_eq!(with_ints.num_rows(), with_strings.num_rows());
    for f in with_ints.schema().fields() {
        if f.name() == "user_id" {
            // The relation's key itself differs by construction: 17 against "u-17".
            continue;
        }
        let (a, b) = (
            with_ints.column_by_name(f.name()).expect("int column"),
            with_strings.column_by_name(f.name()).expect("str column"),
        );
        assert_eq!(a.as_ref(), b.as_ref(), "column {}", f.name());
    }
}
