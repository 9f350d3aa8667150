//! Every model of the conformance corpus (`tests/corpus/`, built by `tests/corpus/make.py`)
//! gives onnxruntime's outputs on its 1,000 test rows: labels and other integers exactly,
//! floats within 1e-6 (relative to the value beyond 1), NaN where onnxruntime gives NaN.

use arrow_array::{ArrayRef, Float32Array, StringArray};
use serde_json::Value;
use slate_model::{ModelKind, OnnxModel};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| {
            x.as_str()
                .expect("float as string")
                .parse::<f32>()
                .expect("float")
        })
        .collect()
}

fn tensor(v: &Value) -> Tensor {
    let s = shape(v);
    match v["type"].as_str() {
        Some("float") => Tensor::from_shape(&s, &floats(v)).expect("float tensor"),
        Some("string") => {
            let data: Vec<String> = v["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_str().expect("string").to_string())
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(s.as_slice(), data)
                .expect("string tensor")
                .into_tensor()
        }
        other => panic!("input type {other:?}"),
    }
}

/// Differences between an output and onnxruntime's, as text (empty when they agree).
fn compare(model: &str, expected: &Value, got: &Tensor) -> Vec<String> {
    let name = expected["name"].as_str().unwrap_or_default();
    let want_shape = shape(expected);
    let count: usize = want_shape.iter().product();
    if got.len() != count {
        return vec![format!(
            "{model} output {name}: {} values (shape {:?}), onnxruntime gives {count} (shape {want_shape:?})",
            got.len(),
            got.shape()
        )];
    }
    let mut bad = Vec::new();
    match expected["type"].as_str() {
        Some("float") => {
            let want = floats(expected);
            let have: Vec<f32> = got
                .cast_to::<f32>()
                .expect("float output")
                .to_plain_array_view::<f32>()
                .expect("view")
                .iter()
                .copied()
                .collect();
            let mut worst = (0f32, 0usize);
            let mut n = 0;
            for (i, (w, h)) in want.iter().zip(&have).enumerate() {
                let ok = (w.is_nan() && h.is_nan())
                    || w == h
                    || (w - h).abs() <= 1e-6 * w.abs().max(1.0);
                if !ok {
                    n += 1;
                    let d = if w.is_finite() && h.is_finite() {
                        (w - h).abs() / w.abs().max(1.0)
                    } else {
                        f32::INFINITY
                    };
                    if n == 1 || d > worst.0 {
                        worst = (d, i);
                    }
                }
            }
            if n > 0 {
                bad.push(format!(
                    "{model} output {name}: {n} of {count} floats differ; worst at {}: {} vs onnxruntime {} ",
                    worst.1, have[worst.1], want[worst.1]
                ));
            }
        }
        Some("int64") => {
            let want: Vec<i64> = expected["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_i64().expect("int"))
                .collect();
            let have: Vec<i64> = got
                .cast_to::<i64>()
                .expect("int output")
                .to_plain_array_view::<i64>()
                .expect("view")
                .iter()
                .copied()
                .collect();
            let diffs: Vec<usize> = (0..count).filter(|&i| want[i] != have[i]).collect();
            if let Some(&i) = diffs.first() {
                bad.push(format!(
                    "{model} output {name}: {} of {count} integers differ; first at {i}: {} vs onnxruntime {}",
                    diffs.len(),
                    have[i],
                    want[i]
                ));
            }
        }
        other => bad.push(format!("{model} output {name}: unexpected type {other:?}")),
    }
    bad
}

#[test]
fn every_corpus_model_gives_onnxruntime_s_outputs() {
    let inputs = read(&dir().join("inputs.json"));
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name().is_some_and(|n| n != "inputs.json")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "corpus has {} models", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let spec = read(case);
        let name = spec["model"].as_str().expect("model");
        let model = match OnnxModel::load(&dir().join(name)) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let feeds: Vec<Tensor> = model
            .signature()
            .inputs
            .iter()
            .map(|i| tensor(&inputs[spec["feeds"][&i.name].as_str().expect("feed")]))
            .collect();
        let outputs = match model.run(feeds) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let expected = spec["outputs"].as_array().expect("outputs");
        if outputs.len() != expected.len() {
            failures.push(format!(
                "{name}: {} outputs, onnxruntime gives {}",
                outputs.len(),
                expected.len()
            ));
            continue;
        }
        for (want, have) in expected.iter().zip(&outputs) {
            failures.extend(compare(name, want, have));
        }
        // The path runs take: Arrow columns into `predict`, the outputs by the model's kind.
        let mut columns: Vec<ArrayRef> = Vec::new();
        for i in &model.signature().inputs {
            let feed = &inputs[spec["feeds"][&i.name].as_str().expect("feed")];
            let [rows, width] = shape(feed)[..] else {
                panic!("a 2-D input")
            };
            for j in 0..width {
                columns.push(match feed["type"].as_str() {
                    Some("string") => Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|r| feed["data"][r * width + j].as_str().expect("string")),
                    )),
                    _ => {
                        let v = floats(feed);
                        Arc::new(Float32Array::from_iter_values(
                            (0..rows).map(|r| v[r * width + j]),
                        ))
                    }
                });
            }
        }
        let p = match model.predict(&columns, &vec![None; columns.len()]) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name} (predict): {e}"));
                continue;
            }
        };
        let rows = columns[0].len();
        match model.kind() {
            ModelKind::Classifier { label, scores } => {
                let labels = Tensor::from_shape(&[rows], &p.labels).expect("labels");
                failures.extend(compare(name, &expected[label], &labels));
                let s = Tensor::from_shape(&[rows, p.classes], &p.scores).expect("scores");
                failures.extend(compare(name, &expected[scores], &s));
            }
            ModelKind::Regressor { value } => {
                if expected.iter().any(|o| o["type"] == "int64") {
                    failures.push(format!("{name}: a classifier taken for a regressor"));
                }
                let s = Tensor::from_shape(&[rows, p.classes], &p.scores).expect("values");
                failures.extend(compare(name, &expected[value], &s));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus models differ from onnxruntime:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_model_ending_in_zipmap_is_refused_with_the_option_that_turns_it_off() {
    let err = OnnxModel::load(&dir().join("refused_zipmap.onnx"))
        .expect_err("ZipMap is refused")
        .to_string();
    assert!(
        err.contains("ZipMap") && err.contains("'zipmap': False"),
        "{err}"
    );
}
