//! ONNX models for Slate: load a model file, check its inputs, and score Arrow columns in
//! batches. Graphs run on tract; ai.onnx.ml tree ensembles run on Slate's own evaluator
//! ([`tree`]), registered in tract's op registry in place of tract's.

mod tract_op;
pub mod tree;

use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load ONNX model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("model {path} takes {expected} input features, but {given} were given")]
    InputCount {
        path: PathBuf,
        expected: usize,
        given: usize,
    },
    #[error("model input column {index} has type {data_type}; models take numeric features")]
    InputType { index: usize, data_type: String },
    #[error("model {path} failed on a batch of {rows} rows: {reason}")]
    Run {
        path: PathBuf,
        rows: usize,
        reason: String,
    },
}

impl ModelError {
    pub fn kind(&self) -> slate_types::ErrorKind {
        match self {
            ModelError::Run { .. } => slate_types::ErrorKind::Internal,
            _ => slate_types::ErrorKind::User,
        }
    }
}

/// The model's answers for a batch: one label and one score per class for each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub labels: Vec<i64>,
    /// Row-major `[rows, classes]`.
    pub scores: Vec<f32>,
    pub classes: usize,
}

impl Prediction {
    /// The score of the last class (the positive class of a binary classifier) for each row.
    pub fn positive_scores(&self) -> Vec<f32> {
        self.scores
            .chunks_exact(self.classes.max(1))
            .map(|r| r[r.len() - 1])
            .collect()
    }
}

/// A loaded ONNX classifier, ready to score batches.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    n_features: Option<usize>,
    sha256: String,
}

fn slate_onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    tract_op::register(&mut onnx.op_register);
    onnx
}

impl OnnxModel {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.into(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let load = |reason: TractError| ModelError::Load {
            path: path.into(),
            reason: format!("{reason:#}"),
        };
        let mut model = slate_onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(load)?;
        // Exports declare `[None, F]`: give the batch dimension a symbol so one plan serves
        // every batch size.
        let n_features = model
            .input_fact(0)
            .ok()
            .and_then(|f| f.shape.dims().last().and_then(|d| d.concretize()))
            .and_then(|d| d.to_i64().ok())
            .and_then(|n| usize::try_from(n).ok());
        if let Some(width) = n_features {
            let batch = model.symbols.sym("N");
            model
                .set_input_fact(
                    0,
                    InferenceFact::dt_shape(f32::datum_type(), [batch.to_dim(), width.to_dim()]),
                )
                .map_err(load)?;
        }
        let typed = model.into_typed().map_err(load)?;
        let plan = typed
            .into_optimized()
            .map_err(load)?
            .into_runnable()
            .map_err(load)?;
        Ok(OnnxModel {
            path: path.into(),
            plan,
            n_features,
            sha256,
        })
    }

    /// Number of input features, when the model declares it.
    pub fn n_features(&self) -> Option<usize> {
        self.n_features
    }

    /// Hex SHA-256 of the model file, recorded with every prediction.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scores rows given as one numeric Arrow column per feature. A null becomes NaN unless
    /// `defaults` gives a value for that column.
    pub fn predict(
        &self,
        columns: &[ArrayRef],
        defaults: &[Option<f64>],
    ) -> Result<Prediction, ModelError> {
        if let Some(n) = self.n_features
            && n != columns.len()
        {
            return Err(ModelError::InputCount {
                path: self.path.clone(),
                expected: n,
                given: columns.len(),
            });
        }
        let rows = columns.first().map_or(0, |c| c.len());
        let f = columns.len();
        let mut data = vec![0f32; rows * f];
        for (j, col) in columns.iter().enumerate() {
            let default = defaults
                .get(j)
                .copied()
                .flatten()
                .map_or(f32::NAN, |d| d as f32);
            let value = |i: usize, v: f32| if col.is_null(i) { default } else { v };
            let any = col.as_any();
            if let Some(a) = any.downcast_ref::<Float64Array>() {
                (0..rows).for_each(|i| data[i * f + j] = value(i, a.value(i) as f32));
            } else if let Some(a) = any.downcast_ref::<Float32Array>() {
                (0..rows).for_each(|i| data[i * f + j] = value(i, a.value(i)));
            } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                (0..rows).for_each(|i| data[i * f + j] = value(i, a.value(i) as f32));
            } else if let Some(a) = any.downcast_ref::<Int32Array>() {
                (0..rows).for_each(|i| data[i * f + j] = value(i, a.value(i) as f32));
            } else {
                return Err(ModelError::InputType {
                    index: j,
                    data_type: col.data_type().to_string(),
                });
            }
        }
        if rows == 0 {
            return Ok(Prediction {
                labels: vec![],
                scores: vec![],
                classes: 0,
            });
        }
        let run = |reason: String| ModelError::Run {
            path: self.path.clone(),
            rows,
            reason,
        };
        let input = Tensor::from_shape(&[rows, f], &data).map_err(|e| run(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| run(format!("{e:#}")))?;
        if out.len() < 2 {
            return Err(run(
                "expected two outputs (label, probabilities); export with zipmap off".into(),
            ));
        }
        let labels: Vec<i64> = plain(&out[0]).map_err(|e| run(format!("{e:#}")))?;
        let scores: Vec<f32> = plain(&out[1]).map_err(|e| run(format!("{e:#}")))?;
        let classes = scores.len() / rows;
        Ok(Prediction {
            labels,
            scores,
            classes,
        })
    }
}

/// A model output as a flat vector of `T`, casting when the model's type differs.
fn plain<T: Datum + Copy>(value: &TValue) -> TractResult<Vec<T>> {
    Ok(value
        .cast_to::<T>()?
        .to_plain_array_view::<T>()?
        .iter()
        .copied()
        .collect())
}
