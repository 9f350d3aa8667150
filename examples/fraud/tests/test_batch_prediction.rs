//! The seed's `test_batch_prediction`: the `run_fraud_model` resolver scores rows exactly as
//! onnxruntime does (labels equal, probabilities within 1e-6), on the seed's four-row input and
//! on 300 recorded rows, a third of them with a missing `time_since_last_transaction`.

use arrow_array::{ArrayRef, Float64Array};
use slate_model::OnnxModel;
use std::path::Path;
use std::sync::Arc;

struct Fixture {
    inputs: Vec<Vec<Option<f64>>>,
    labels: Vec<i64>,
    probabilities: Vec<Vec<f64>>,
    sha256: String,
}

fn fixture() -> Fixture {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnxruntime_outputs.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let rows = |k: &str| v[k].as_array().expect("array").clone();
    Fixture {
        inputs: rows("inputs")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64())
                    .collect()
            })
            .collect(),
        labels: rows("labels")
            .iter()
            .map(|x| x.as_i64().expect("label"))
            .collect(),
        probabilities: rows("probabilities")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("p"))
                    .collect()
            })
            .collect(),
        sha256: v["model_sha256"].as_str().expect("sha").to_string(),
    }
}

fn resolver() -> (slate_project::ModelResolver, OnnxModel) {
    let project = slate_project::load_project(Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("the example project is valid");
    let r = project
        .model_resolvers
        .iter()
        .find(|m| m.name == "run_fraud_model")
        .expect("resolver")
        .clone();
    let model = OnnxModel::load(&r.model_path).expect("model loads");
    (r, model)
}

fn columns(rows: &[Vec<Option<f64>>]) -> Vec<ArrayRef> {
    (0..rows[0].len())
        .map(|j| {
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r[j]).collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect()
}

fn assert_matches(rows: std::ops::Range<usize>) {
    let f = fixture();
    let (r, model) = resolver();
    assert_eq!(
        model.sha256(),
        f.sha256,
        "the fixture was recorded for another model file"
    );
    assert_eq!(model.n_features(), Some(r.model_inputs().len()));
    let inputs = &f.inputs[rows.clone()];
    let p = model
        .predict(&columns(inputs), &r.defaults)
        .expect("predict");
    assert_eq!(
        p.labels,
        f.labels[rows.clone()],
        "labels differ from onnxruntime"
    );
    for (i, row) in p.scores.chunks_exact(p.classes).enumerate() {
        for (c, got) in row.iter().enumerate() {
            let want = f.probabilities[rows.start + i][c];
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6,
                "row {i} class {c}: {got} vs onnxruntime {want}"
            );
        }
    }
}

#[test]
fn test_batch_prediction() {
    // The seed's four rows: amount, time since last, 1d/10d/30d counts and distinct merchants.
    assert_matches(0..4);
}

#[test]
fn matches_onnxruntime_on_recorded_rows_including_missing_values() {
    let f = fixture();
    let nan_rows = f.inputs.iter().filter(|r| r[1].is_none()).count();
    assert!(
        nan_rows >= 100,
        "the fixture must hold rows with a null time since last transaction"
    );
    assert_matches(0..f.inputs.len());
}
