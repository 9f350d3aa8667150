//! Models as teams export them, in real runs (the backfill, streamed, then a daily run over the
//! frame path): a scikit-learn pipeline with two inputs (eight numbers and the transaction's
//! category as a string, one-hot encoded) writes the fraud label and score, and a
//! gradient-boosted regressor writes a float feature; both equal the model run directly on the
//! stored inputs, built here into the model's own input tensors.

use crate::common;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use fraud_example::{Config, START_MICROS, write_warehouse};
use slate_engine::{Engine, EngineConfig, SilentProgress, plan_query, validate_models};
use slate_types::FixedClock;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

const DAY: i64 = 86_400_000_000;

const NUMBERS: [&str; 8] = [
    "amount",
    "user__time_since_last_transaction",
    "user__num_transactions__1d",
    "user__num_transactions__10d",
    "user__num_transactions__30d",
    "user__num_distinct_merchants_transacted__1d",
    "user__num_distinct_merchants_transacted__10d",
    "user__num_distinct_merchants_transacted__30d",
];

fn corpus(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/slate-model/tests/corpus")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_input_pipeline_and_a_regressor_score_every_row_as_run_directly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    common::copy_project(&dir);
    std::fs::copy(
        corpus("onehot_logistic.onnx"),
        dir.join("models/pipeline.onnx"),
    )
    .expect("copy model");
    std::fs::copy(
        corpus("gradient_boosting_regressor.onnx"),
        dir.join("models/risk.onnx"),
    )
    .expect("copy model");
    let resolver = dir.join("src/resolvers/fraud_model.yaml");
    let text = std::fs::read_to_string(&resolver).expect("read");
    let text = text
        .replace("models/fraud_model.onnx", "models/pipeline.onnx")
        .replace(
            "  - Transaction.user.num_distinct_merchants_transacted[\"30d\"]\n",
            "  - Transaction.user.num_distinct_merchants_transacted[\"30d\"]\n  - Transaction.category\n",
        );
    std::fs::write(&resolver, text).expect("write");
    std::fs::write(
        dir.join("src/resolvers/risk.yaml"),
        r#"name: risk
kind: onnx
model: models/risk.onnx
inputs:
  - Transaction.id
  - Transaction.amount
  - Transaction.user.time_since_last_transaction
  - Transaction.user.num_transactions["1d"]
  - Transaction.user.num_transactions["10d"]
  - Transaction.user.num_transactions["30d"]
  - Transaction.user.num_distinct_merchants_transacted["1d"]
  - Transaction.user.num_distinct_merchants_transacted["10d"]
  - Transaction.user.num_distinct_merchants_transacted["30d"]
output: Transaction.risk
"#,
    )
    .expect("write resolver");
    let models = dir.join("src/models.yaml");
    let text = std::fs::read_to_string(&models).expect("read");
    std::fs::write(
        &models,
        text.replace(
            "  fraud_score: float\n",
            "  fraud_score: float\n  risk: float\n",
        ),
    )
    .expect("write");
    let queries = dir.join("src/queries.yaml");
    let text = std::fs::read_to_string(&queries).expect("read");
    std::fs::write(
        &queries,
        text.replace(
            "output: [Transaction.is_fraud]",
            "output: [Transaction.is_fraud, Transaction.risk]",
        ),
    )
    .expect("write");

    let project = slate_project::load_project(&dir).expect("valid project");
    let problems = validate_models(&project);
    assert!(problems.is_empty(), "{problems:?}");
    let plan = plan_query(&project, "run_fraud_model").expect("plan");
    let cfg = Config {
        users: 80,
        merchants: 30,
        seed: 5,
        activity: 1.0,
    };
    let data = tmp.path().join("warehouse");
    write_warehouse(&data, &cfg, 0, 15).expect("data");
    let engine = Engine::new(EngineConfig {
        project: project.clone(),
        env: "default".into(),
        data_dir: Some(data.clone()),
        state_dir: Some(tmp.path().join("state")),
        clock: Arc::new(FixedClock(START_MICROS + 20 * DAY)),
    })
    .expect("engine");
    engine.run(&plan, &SilentProgress).await.expect("backfill");
    // A day more, through a daily run.
    write_warehouse(&data, &cfg, 15, 16).expect("a day more");
    let daily = Engine::new(EngineConfig {
        project: project.clone(),
        env: "default".into(),
        data_dir: Some(data.clone()),
        state_dir: Some(tmp.path().join("state")),
        clock: Arc::new(FixedClock(START_MICROS + 21 * DAY)),
    })
    .expect("engine");
    let summary = daily.run(&plan, &SilentProgress).await.expect("daily run");
    assert!(summary.rows_scored > 0, "the daily run scored the new day");
    let batches = engine
        .offline()
        .read_all("run_fraud_model")
        .await
        .expect("read");
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    let n = b.num_rows();
    assert!(n > 200, "{n} rows");

    // The model inputs as tensors, built here: numbers as f32 (null: NaN), the category.
    let mut numbers = vec![0f32; n * 8];
    for (j, c) in NUMBERS.iter().enumerate() {
        let a = arrow::compute::cast(
            b.column_by_name(c).unwrap_or_else(|| panic!("{c} stored")),
            &arrow::datatypes::DataType::Float64,
        )
        .expect("cast");
        let a = a.as_primitive::<Float64Type>();
        for i in 0..n {
            numbers[i * 8 + j] = if a.is_null(i) {
                f32::NAN
            } else {
                a.value(i) as f32
            };
        }
    }
    let category = b.column_by_name("category").expect("category stored");
    let category = arrow::compute::cast(category, &arrow::datatypes::DataType::Utf8).expect("cast");
    let category = category.as_string::<i32>();
    let categories: Vec<String> = (0..n).map(|i| category.value(i).to_string()).collect();
    assert!(
        categories.iter().any(|c| c != &categories[0]),
        "several categories"
    );
    let num = Tensor::from_shape(&[n, 8], &numbers).expect("tensor");
    let cat = tract_ndarray::ArrayD::from_shape_vec(vec![n, 1], categories)
        .expect("tensor")
        .into_tensor();

    let pipeline = slate_model::OnnxModel::load(&dir.join("models/pipeline.onnx")).expect("load");
    let out = pipeline.run(vec![num.clone(), cat]).expect("pipeline runs");
    let labels = out[0].cast_to::<i64>().expect("labels");
    let labels = labels.to_plain_array_view::<i64>().expect("view");
    let probabilities = out[1].to_plain_array_view::<f32>().expect("view");
    let flags = b.column_by_name("is_fraud").expect("label").as_boolean();
    let scores = b
        .column_by_name("fraud_score")
        .expect("score")
        .as_primitive::<Float64Type>();
    let mut positives = 0;
    for i in 0..n {
        assert_eq!(flags.value(i), labels[i] != 0, "row {i}");
        assert_eq!(scores.value(i), f64::from(probabilities[[i, 1]]), "row {i}");
        positives += usize::from(flags.value(i));
    }
    assert!(positives < n, "not every row is flagged");

    let regressor = slate_model::OnnxModel::load(&dir.join("models/risk.onnx")).expect("load");
    let out = regressor.run(vec![num]).expect("regressor runs");
    let values = out[0].to_plain_array_view::<f32>().expect("view");
    let risk = b
        .column_by_name("risk")
        .expect("risk")
        .as_primitive::<Float64Type>();
    assert_eq!(risk.null_count(), 0);
    for i in 0..n {
        assert_eq!(risk.value(i), f64::from(values[[i, 0]]), "row {i}");
    }
    assert!(
        (1..n).any(|i| risk.value(i) != risk.value(0)),
        "the regressor's values vary"
    );
}
