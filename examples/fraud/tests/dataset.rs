//! Training datasets: the features a dataset computes for the fraud example's transactions
//! equal, value for value, the inputs and predictions stored by the scheduled runs that scored
//! them (no training/serving skew), from a spine file in any row order or from a time range.

use crate::common;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use fraud_example::{Config, START_MICROS, write_warehouse};
use slate_engine::{Engine, EngineConfig, SilentProgress, Spine, plan_query, write_parquet};
use slate_types::FixedClock;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;

fn project() -> slate_project::Project {
    slate_project::load_project(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid project")
}

fn engine(data: &Path, state: &Path, now: i64) -> Engine {
    Engine::new(EngineConfig {
        project: project(),
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(now)),
    })
    .expect("engine")
}

/// Asserts equal column names and values; strings read back from Delta Lake are views, so
/// each stored column is compared in the dataset's type.
fn assert_same(got: &RecordBatch, want: &RecordBatch, what: &str) {
    let names = |b: &RecordBatch| -> Vec<String> {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(got), names(want), "{what}: columns");
    assert_eq!(got.num_rows(), want.num_rows(), "{what}: rows");
    for (i, name) in names(got).iter().enumerate() {
        let w = arrow::compute::cast(want.column(i), got.column(i).data_type()).expect("cast");
        assert_eq!(got.column(i).as_ref(), w.as_ref(), "{what}: column {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_equals_what_the_scheduled_runs_stored() {
    let cfg = Config {
        users: 120,
        merchants: 50,
        seed: 3,
        activity: 1.0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    // Two runs: the second scores an appended day with history from the offline store.
    write_warehouse(&data, &cfg, 0, 20).expect("data");
    engine(&data, &state, START_MICROS + 21 * DAY)
        .run(&plan, &SilentProgress)
        .await
        .expect("run");
    write_warehouse(&data, &cfg, 20, 21).expect("day 20");
    engine(&data, &state, START_MICROS + 22 * DAY)
        .run(&plan, &SilentProgress)
        .await
        .expect("run");
    let e = engine(&data, &state, START_MICROS + 22 * DAY);
    let batches = e.offline().read_all("run_fraud_model").await.expect("read");
    let stored = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    let want = common::without_run_id_by_id(&stored);

    // A spine of (id, ts) only, in reverse id order: every other column is computed.
    let ids = want
        .column_by_name("id")
        .expect("id")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ids")
        .clone();
    let times = want
        .column_by_name("feature_time")
        .expect("feature_time")
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("times")
        .clone();
    let reversed = arrow::compute::kernels::numeric::sub(&Int64Array::new_scalar(i64::MAX), &ids)
        .expect("negate");
    let order = arrow::compute::sort_to_indices(&reversed, None, None).expect("order");
    let spine_ids: ArrayRef = arrow::compute::take(&ids, &order, None).expect("take");
    let spine_ts: ArrayRef = arrow::compute::take(&times, &order, None).expect("take");
    let spine = RecordBatch::try_from_iter([("id", spine_ids), ("ts", spine_ts)]).expect("spine");
    let spine_file = tmp.path().join("spine.parquet");
    let file = std::fs::File::create(&spine_file).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, spine.schema(), None).expect("writer");
    w.write(&spine).expect("write");
    w.close().expect("close");

    let from_file = e
        .dataset(
            &plan,
            Spine::Rows(
                slate_sources::read_file(&spine_file)
                    .await
                    .expect("read spine"),
            ),
            None,
        )
        .await
        .expect("dataset");
    assert_eq!(from_file.batch.num_rows(), want.num_rows());
    assert_same(
        &common::without_run_id_by_id(&from_file.batch),
        &want,
        "the dataset from a spine file",
    );
    let tables: Vec<&str> = from_file.versions.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(tables, ["transaction"]);
    assert!(from_file.versions[0].1 >= 1, "{:?}", from_file.versions);

    // The ingested rows of a time range: the same values for those rows.
    let (from, to) = (START_MICROS + 5 * DAY, START_MICROS + 12 * DAY);
    let ranged = e
        .dataset(
            &plan,
            Spine::Range {
                from: Some(from),
                to: Some(to),
            },
            None,
        )
        .await
        .expect("dataset");
    let in_range: Vec<u32> = (0..times.len())
        .filter(|&i| times.value(i) >= from && times.value(i) < to)
        .map(|i| i as u32)
        .collect();
    assert!(in_range.len() > 100);
    let idx = arrow::array::UInt32Array::from(in_range);
    let want_range = RecordBatch::try_new(
        want.schema(),
        want.columns()
            .iter()
            .map(|c| arrow::compute::take(c, &idx, None).expect("take"))
            .collect(),
    )
    .expect("batch");
    assert_same(
        &common::without_run_id_by_id(&ranged.batch),
        &want_range,
        "the dataset of a time range",
    );

    // Written to Parquet with the versions it read.
    let out = tmp.path().join("train/dataset.parquet");
    write_parquet(&out, &from_file).expect("write");
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&out).expect("open"))
            .expect("reader");
    let meta = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let versions = meta
        .iter()
        .find(|kv| kv.key == "slate.data_versions")
        .and_then(|kv| kv.value.clone())
        .expect("versions recorded");
    assert_eq!(
        versions,
        format!("{{\"transaction\":{}}}", from_file.versions[0].1)
    );
    assert_eq!(
        parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .num_rows() as usize,
        want.num_rows()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spine_without_the_key_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    let e = engine(tmp.path(), &tmp.path().join("state"), START_MICROS);
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![START_MICROS]));
    let spine = RecordBatch::try_from_iter([("ts", ts)]).expect("spine");
    let err = e
        .dataset(&plan, Spine::Rows(vec![spine]), None)
        .await
        .expect_err("no id column");
    assert!(err.to_string().contains("no `id` column"), "{err}");
}
