//! Two models in one query, the second scoring the first's output: the plan orders them, each
//! keeps its own file hash, and the second model's label and score equal a direct prediction
//! over the stored inputs (the first model's score among them).

use crate::common;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::Float64Type;
use fraud_example::{Config, START_MICROS, write_warehouse};
use slate_engine::{Engine, EngineConfig, Node, SilentProgress, plan_query};
use slate_types::FixedClock;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_scores_another_models_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    common::copy_project(&dir);
    let models = dir.join("src/models.yaml");
    let text = std::fs::read_to_string(&models).expect("read");
    std::fs::write(
        &models,
        text.replace(
            "  fraud_score: float\n",
            "  fraud_score: float\n  second_flag: bool\n  second_score: float\n",
        ),
    )
    .expect("write");
    std::fs::write(
        dir.join("src/resolvers/second_opinion.yaml"),
        r#"name: second_opinion
kind: onnx
model: models/fraud_model.onnx
inputs:
  - Transaction.id
  - Transaction.fraud_score
  - Transaction.user.time_since_last_transaction
  - Transaction.user.num_transactions["1d"]
  - Transaction.user.num_transactions["10d"]
  - Transaction.user.num_transactions["30d"]
  - Transaction.user.num_distinct_merchants_transacted["1d"]
  - Transaction.user.num_distinct_merchants_transacted["10d"]
  - Transaction.amount
output: Transaction.second_flag
score_output: Transaction.second_score
"#,
    )
    .expect("write resolver");
    let queries = dir.join("src/queries.yaml");
    let text = std::fs::read_to_string(&queries).expect("read");
    std::fs::write(
        &queries,
        text.replace(
            "output: [Transaction.is_fraud]",
            "output: [Transaction.second_flag, Transaction.is_fraud]",
        ),
    )
    .expect("write");

    let project = slate_project::load_project(&dir).expect("valid project");
    let plan = plan_query(&project, "run_fraud_model").expect("plan");
    let order: Vec<&str> = plan
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Model { resolver, .. } => Some(resolver.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["run_fraud_model", "second_opinion"]);

    let cfg = Config {
        users: 100,
        merchants: 40,
        seed: 21,
        activity: 1.0,
    };
    let data = tmp.path().join("warehouse");
    let state = tmp.path().join("state");
    write_warehouse(&data, &cfg, 0, 20).expect("data");
    let engine = Engine::new(EngineConfig {
        project: project.clone(),
        env: "default".into(),
        data_dir: Some(data),
        state_dir: Some(state.clone()),
        clock: Arc::new(FixedClock(START_MICROS + 30 * DAY)),
    })
    .expect("engine");
    let summary = engine.run(&plan, &SilentProgress).await.expect("run");
    let outputs: Vec<&str> = summary.outputs.iter().map(|o| o.feature.as_str()).collect();
    assert_eq!(
        outputs,
        [
            "Transaction.second_flag",
            "Transaction.is_fraud",
            "Transaction.fraud_score",
            "Transaction.second_score"
        ]
    );
    let batches = engine
        .offline()
        .read_all("run_fraud_model")
        .await
        .expect("read");
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    for c in [
        "model_sha256__run_fraud_model",
        "model_sha256__second_opinion",
    ] {
        assert!(b.column_by_name(c).is_some(), "{c} is stored");
    }
    // The second model over the stored columns, directly.
    let columns = [
        "fraud_score",
        "user__time_since_last_transaction",
        "user__num_transactions__1d",
        "user__num_transactions__10d",
        "user__num_transactions__30d",
        "user__num_distinct_merchants_transacted__1d",
        "user__num_distinct_merchants_transacted__10d",
        "amount",
    ];
    let inputs: Vec<ArrayRef> = columns
        .iter()
        .map(|c| b.column_by_name(c).expect("input").clone())
        .collect();
    let model = slate_model::OnnxModel::load(&dir.join("models/fraud_model.onnx")).expect("model");
    let direct = model.predict(&inputs, &[None; 8]).expect("predict");
    let flags = b
        .column_by_name("second_flag")
        .expect("flag")
        .as_boolean()
        .clone();
    let scores = b
        .column_by_name("second_score")
        .expect("score")
        .as_primitive::<Float64Type>()
        .clone();
    let positive = direct.positive_scores();
    assert_eq!(flags.len(), b.num_rows());
    assert!(b.num_rows() > 300, "{} rows", b.num_rows());
    for (i, (label, score)) in direct.labels.iter().zip(&positive).enumerate() {
        assert_eq!(flags.value(i), *label != 0, "row {i}");
        assert_eq!(scores.value(i), f64::from(*score), "row {i}");
    }
    assert!(flags.null_count() == 0);
}
