//! Helpers shared by the example's integration tests.

use arrow::array::RecordBatch;
use std::path::Path;

#[allow(dead_code)]
/// A prediction table without its `run_id` column and its day partition column, rows in `id`
/// order: what two runs over the same data must agree on byte for byte.
pub fn without_run_id_by_id(b: &RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| !["run_id", "slate_day"].contains(&b.schema().field(i).name().as_str()))
        .collect();
    let b = b.project(&keep).expect("project");
    let order = arrow::compute::sort_to_indices(b.column_by_name("id").expect("id"), None, None)
        .expect("sort");
    RecordBatch::try_new(
        b.schema(),
        b.columns()
            .iter()
            .map(|c| arrow::compute::take(c, &order, None).expect("take"))
            .collect(),
    )
    .expect("batch")
}

/// Copies the example project (not its data or state) to `to`, for tests that edit it.
#[allow(dead_code)]
pub fn copy_project(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in [
        "slate.yaml",
        "src/models.yaml",
        "src/queries.yaml",
        "src/resolvers/fraud_model.yaml",
        "src/resolvers/sql/get_transactions_offline.chalk.sql",
        "src/resolvers/sql/get_users_offline.chalk.sql",
        "models/fraud_model.onnx",
    ] {
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from.join(rel), dst).expect("copy");
    }
}

/// The predictions of `run_fraud_model` in the offline store of `state`, in the form of
/// [`without_run_id_by_id`].
#[allow(dead_code)]
pub async fn predictions(state: &Path) -> RecordBatch {
    let b = slate_stores::OfflineStore::new(&state.join("offline"))
        .read_all("run_fraud_model")
        .await
        .expect("read predictions");
    without_run_id_by_id(&arrow::compute::concat_batches(&b[0].schema(), &b).expect("concat"))
}

/// Deletes the Redis keys under `prefix` (what a test's environment wrote).
#[allow(dead_code)]
pub fn delete_redis_keys(prefix: &str) {
    let client = redis::Client::open(slate_testkit::redis().url.as_str()).expect("redis client");
    let mut c = client.get_connection().expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut c)
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut c).expect("del");
    }
}

/// The engine of `project` in environment `env`, with its state in `state`, embedded data in
/// `data` (the `default` environment only), at a fixed time 40 days into the example's data.
#[allow(dead_code)]
pub fn engine_at_day_40(
    project: slate_project::Project,
    env: &str,
    data: &Path,
    state: &Path,
) -> slate_engine::Engine {
    slate_engine::Engine::new(slate_engine::EngineConfig {
        project,
        env: env.into(),
        data_dir: (env == "default").then(|| data.into()),
        state_dir: Some(state.into()),
        clock: std::sync::Arc::new(slate_types::FixedClock(
            fraud_example::START_MICROS + 40 * 86_400_000_000,
        )),
    })
    .expect("engine")
}
