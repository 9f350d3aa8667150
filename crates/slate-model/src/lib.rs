//! ONNX models for Slate: load a model file, check its inputs and outputs, and score Arrow
//! columns in batches. Standard-domain operators run on tract; the ai.onnx.ml operators
//! (preprocessing, encoders, linear models, SVMs, tree ensembles) run on Slate's own kernels
//! ([`ml`], [`tree`]), registered in tract's op registry in place of tract's.

mod ml;
mod signature;
pub mod tree;

/// A small deterministic generator (xorshift) for the unit tests' random cases.
#[cfg(test)]
pub(crate) struct Rng(pub(crate) u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub use signature::{Elem, Signature, TensorSpec};

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    LargeStringArray, StringArray, StringViewArray,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load ONNX model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "model {path} uses operator {domain}.{op} (opset {opset}), which Slate does not support"
    )]
    Unsupported {
        path: PathBuf,
        domain: String,
        op: String,
        opset: i64,
    },
    #[error("model {path} takes {expected} input features, but {given} were given")]
    InputCount {
        path: PathBuf,
        expected: usize,
        given: usize,
    },
    #[error("model input column {index} has type {data_type}; {wanted}")]
    InputType {
        index: usize,
        data_type: String,
        wanted: String,
    },
    #[error(
        "model {path}: input column {index} is null in row {row}, and its model input `{input}` is {elem}, which has no missing value; give the feature a default"
    )]
    NullInput {
        path: PathBuf,
        index: usize,
        row: usize,
        input: String,
        elem: String,
    },
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

/// Rows one run of the graph scores at most (larger inputs are scored in slices of this many).
const PREDICT_ROWS: usize = 4_096;

thread_local! {
    /// Set on the threads that score slices in parallel: their operators stay on one thread.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread already scores in parallel with others.
pub(crate) fn serial() -> bool {
    SERIAL.with(|c| c.get())
}

/// What a model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A label (int64) and one score per class: outputs `label` and `scores` of the graph.
    Classifier { label: usize, scores: usize },
    /// One number per row (a regressor, or a classifier's single score).
    Regressor { value: usize },
}

/// The model's answers for a batch: one label and one score per class for each row; for a
/// regressor, no labels and its value as the one score.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub labels: Vec<i64>,
    /// Row-major `[rows, classes]`.
    pub scores: Vec<f32>,
    pub classes: usize,
}

impl Prediction {
    /// The score of the last class (the positive class of a binary classifier) for each row;
    /// a regressor's value.
    pub fn positive_scores(&self) -> Vec<f32> {
        self.scores
            .chunks_exact(self.classes.max(1))
            .map(|r| r[r.len() - 1])
            .collect()
    }
}

/// A loaded ONNX model, ready to score batches.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
    kind: ModelKind,
    sha256: String,
}

fn slate_onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    ml::register(&mut onnx.op_register);
    onnx
}

fn datum(elem: Elem) -> Option<DatumType> {
    Some(match elem {
        Elem::Float => f32::datum_type(),
        Elem::Double => f64::datum_type(),
        Elem::Int64 => i64::datum_type(),
        Elem::Int32 => i32::datum_type(),
        Elem::String => String::datum_type(),
        Elem::Bool => bool::datum_type(),
        Elem::Other(_) => return None,
    })
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
        let onnx = slate_onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(load)?;
        let signature = Signature::of(&proto);
        if let Some((domain, op, opset)) = signature
            .operators
            .iter()
            .find(|(_, op, _)| !onnx.op_register.0.contains_key(op.as_str()))
        {
            return Err(ModelError::Unsupported {
                path: path.into(),
                domain: domain.clone(),
                op: op.clone(),
                opset: *opset,
            });
        }
        let mut model = onnx.model_for_proto_model(&proto).map_err(load)?;
        // Exports declare `[None, F]`: the batch dimension gets a symbol so that one plan
        // serves every batch size; the other dimensions must be fixed.
        let batch = model.symbols.sym("N");
        for (i, spec) in signature.inputs.iter().enumerate() {
            let Some(dt) = datum(spec.elem) else {
                return Err(ModelError::Load {
                    path: path.into(),
                    reason: format!(
                        "input `{}` is of {}, which Slate cannot feed (float, double, int64, int32, string or bool)",
                        spec.name,
                        spec.elem.name()
                    ),
                });
            };
            let dims = spec.dims.clone().unwrap_or_else(|| vec![None, None]);
            let mut shape: Vec<TDim> = Vec::with_capacity(dims.len());
            for (k, d) in dims.iter().enumerate() {
                shape.push(match (k, d) {
                    (0, _) => batch.to_dim(),
                    (_, Some(n)) => n.to_dim(),
                    (_, None) => {
                        return Err(ModelError::Load {
                            path: path.into(),
                            reason: format!(
                                "input `{}` ({}) has a dimension that is not fixed; Slate feeds inputs of shape [N] or [N, width]",
                                spec.name,
                                spec.describe()
                            ),
                        });
                    }
                });
            }
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, shape))
                .map_err(load)?;
        }
        let typed = model.into_typed().map_err(load)?;
        let kind = Self::kind_of(&typed).map_err(|reason| ModelError::Load {
            path: path.into(),
            reason,
        })?;
        let plan = typed
            .into_optimized()
            .map_err(load)?
            .into_runnable()
            .map_err(load)?;
        Ok(OnnxModel {
            path: path.into(),
            plan,
            signature,
            kind,
            sha256,
        })
    }

    /// A classifier has an integer label output and a float scores output; a regressor one
    /// float output.
    fn kind_of(model: &TypedModel) -> Result<ModelKind, String> {
        let facts: Vec<TypedFact> = (0..model.outputs.len())
            .map(|i| model.output_fact(i).cloned())
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))?;
        let float = |f: &TypedFact| f.datum_type.is_float();
        // tract types some integer results (an ArgMax's index cast to int64) as TDim.
        let integer = |f: &TypedFact| {
            matches!(
                f.datum_type,
                DatumType::I64 | DatumType::I32 | DatumType::TDim
            )
        };
        let label = facts.iter().position(integer);
        let scores = facts.iter().position(float);
        let described = || {
            facts
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (label, scores) {
            (Some(label), Some(scores)) => Ok(ModelKind::Classifier { label, scores }),
            (None, Some(value)) if facts.iter().filter(|f| float(f)).count() == 1 => {
                Ok(ModelKind::Regressor { value })
            }
            _ if facts.iter().any(|f| f.datum_type == DatumType::String) => Err(format!(
                "its outputs are {}: class labels that are strings are not supported; train with integer labels",
                described()
            )),
            _ => Err(format!(
                "its outputs are {}: Slate takes a classifier's (label, probabilities) or a regressor's one value",
                described()
            )),
        }
    }

    /// Number of input features (over every model input), when the model fixes it.
    pub fn n_features(&self) -> Option<usize> {
        self.signature.width()
    }

    /// The inputs, outputs and operators the model declares.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Hex SHA-256 of the model file, recorded with every prediction.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the graph on one tensor per declared input, returning every output.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let rows = inputs.first().and_then(|t| t.shape().first().copied());
        let out = self
            .plan
            .run(inputs.into_iter().map(|t| t.into_tvalue()).collect())
            .map_err(|e| ModelError::Run {
                path: self.path.clone(),
                rows: rows.unwrap_or_default(),
                reason: format!("{e:#}"),
            })?;
        Ok(out.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// Scores rows given as Arrow columns: the columns fill the model's inputs in order, each
    /// input taking as many columns as its width (`[N, 8]`: eight). A null number becomes NaN
    /// for a float input unless `defaults` gives a value for that column; a null string, "".
    pub fn predict(
        &self,
        columns: &[ArrayRef],
        defaults: &[Option<f64>],
    ) -> Result<Prediction, ModelError> {
        if let Some(n) = self.n_features()
            && n != columns.len()
        {
            return Err(ModelError::InputCount {
                path: self.path.clone(),
                expected: n,
                given: columns.len(),
            });
        }
        let rows = columns.first().map_or(0, |c| c.len());
        if rows <= PREDICT_ROWS {
            return self.predict_rows(columns, defaults, rows);
        }
        // In slices, so that a network's intermediate tensors stay small (a [1M, 64] layer is
        // 256 MB), on every core; each slice's operators then run on one thread.
        let starts: Vec<usize> = (0..rows).step_by(PREDICT_ROWS).collect();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let per = starts.len().div_ceil(threads.max(1));
        let parts: Vec<Result<Vec<Prediction>, ModelError>> = std::thread::scope(|s| {
            let handles: Vec<_> = starts
                .chunks(per)
                .map(|mine| {
                    s.spawn(move || {
                        SERIAL.with(|c| c.set(true));
                        mine.iter()
                            .map(|&start| {
                                let len = PREDICT_ROWS.min(rows - start);
                                let slice: Vec<ArrayRef> =
                                    columns.iter().map(|c| c.slice(start, len)).collect();
                                self.predict_rows(&slice, defaults, len)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ModelError::Run {
                            path: self.path.clone(),
                            rows,
                            reason: "a scoring thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut all = Prediction {
            labels: Vec::with_capacity(rows),
            scores: vec![],
            classes: 0,
        };
        for part in parts {
            for p in part? {
                all.labels.extend(p.labels);
                all.scores.extend(p.scores);
                all.classes = p.classes;
            }
        }
        Ok(all)
    }

    fn predict_rows(
        &self,
        columns: &[ArrayRef],
        defaults: &[Option<f64>],
        rows: usize,
    ) -> Result<Prediction, ModelError> {
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
        let mut inputs = Vec::with_capacity(self.signature.inputs.len());
        let mut next = 0;
        for spec in &self.signature.inputs {
            let width = spec.width().unwrap_or(columns.len() - next);
            let taken = &columns[next..next + width];
            let shape: Vec<usize> = match spec.dims.as_ref().map(|d| d.len()) {
                Some(1) => vec![rows],
                _ => vec![rows, width],
            };
            let tensor = match spec.elem {
                Elem::String => {
                    let mut data = vec![String::new(); rows * width];
                    for (j, col) in taken.iter().enumerate() {
                        fill_strings(col, next + j, |i, v| data[i * width + j] = v.to_string())?;
                    }
                    owned(&shape, data)
                }
                Elem::Int64 | Elem::Int32 => {
                    let mut data = vec![0i64; rows * width];
                    for (j, col) in taken.iter().enumerate() {
                        let default = defaults.get(next + j).copied().flatten();
                        fill_numbers(col, next + j, |i, v| {
                            data[i * width + j] = match v.or(default) {
                                Some(v) => v as i64,
                                None => {
                                    return Err(ModelError::NullInput {
                                        path: self.path.clone(),
                                        index: next + j,
                                        row: i,
                                        input: spec.name.clone(),
                                        elem: spec.elem.name(),
                                    });
                                }
                            };
                            Ok(())
                        })?;
                    }
                    match spec.elem {
                        Elem::Int32 => owned(&shape, data.iter().map(|v| *v as i32).collect()),
                        _ => owned(&shape, data),
                    }
                }
                Elem::Double => {
                    let mut data = vec![0f64; rows * width];
                    for (j, col) in taken.iter().enumerate() {
                        let default = defaults.get(next + j).copied().flatten();
                        fill_numbers(col, next + j, |i, v| {
                            data[i * width + j] = v.or(default).unwrap_or(f64::NAN);
                            Ok(())
                        })?;
                    }
                    owned(&shape, data)
                }
                Elem::Bool => {
                    let mut data = vec![false; rows * width];
                    for (j, col) in taken.iter().enumerate() {
                        let default = defaults.get(next + j).copied().flatten();
                        fill_numbers(col, next + j, |i, v| {
                            data[i * width + j] = v.or(default).unwrap_or(0.0) != 0.0;
                            Ok(())
                        })?;
                    }
                    owned(&shape, data)
                }
                _ => {
                    let mut data = vec![0f32; rows * width];
                    for (j, col) in taken.iter().enumerate() {
                        let default = defaults.get(next + j).copied().flatten();
                        fill_floats(col, next + j, default, &mut data, width, j)?;
                    }
                    owned(&shape, data)
                }
            }
            .map_err(|e| run(e.to_string()))?;
            inputs.push(tensor.into_tvalue());
            next += width;
        }
        let out = self
            .plan
            .run(inputs.into())
            .map_err(|e| run(format!("{e:#}")))?;
        match self.kind {
            ModelKind::Classifier { label, scores } => {
                let labels: Vec<i64> = plain(&out[label]).map_err(|e| run(format!("{e:#}")))?;
                let scores: Vec<f32> = plain(&out[scores]).map_err(|e| run(format!("{e:#}")))?;
                let classes = scores.len() / rows;
                Ok(Prediction {
                    labels,
                    scores,
                    classes,
                })
            }
            ModelKind::Regressor { value } => {
                let scores: Vec<f32> = plain(&out[value]).map_err(|e| run(format!("{e:#}")))?;
                let classes = scores.len() / rows;
                Ok(Prediction {
                    labels: vec![],
                    scores,
                    classes,
                })
            }
        }
    }
}

/// Each value of a numeric (or boolean) column as f64, `None` for a null.
fn fill_numbers(
    col: &ArrayRef,
    index: usize,
    mut put: impl FnMut(usize, Option<f64>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let any = col.as_any();
    let rows = col.len();
    let value = |i: usize, v: f64| (!col.is_null(i)).then_some(v);
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        (0..rows).try_for_each(|i| put(i, value(i, a.value(i))))
    } else if let Some(a) = any.downcast_ref::<Float32Array>() {
        (0..rows).try_for_each(|i| put(i, value(i, f64::from(a.value(i)))))
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        (0..rows).try_for_each(|i| put(i, value(i, a.value(i) as f64)))
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        (0..rows).try_for_each(|i| put(i, value(i, f64::from(a.value(i)))))
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        (0..rows).try_for_each(|i| put(i, value(i, f64::from(u8::from(a.value(i))))))
    } else {
        Err(ModelError::InputType {
            index,
            data_type: col.data_type().to_string(),
            wanted: "this model input takes numbers".into(),
        })
    }
}

/// A numeric column into f32 slot `j` of rows of `width` (the fast path of every float model).
fn fill_floats(
    col: &ArrayRef,
    index: usize,
    default: Option<f64>,
    data: &mut [f32],
    width: usize,
    j: usize,
) -> Result<(), ModelError> {
    let default = default.map_or(f32::NAN, |d| d as f32);
    let any = col.as_any();
    let nulls = col.logical_nulls();
    fn put(
        data: &mut [f32],
        j: usize,
        width: usize,
        valid: Option<impl Iterator<Item = bool>>,
        default: f32,
        values: impl Iterator<Item = f32>,
    ) {
        let slots = data[j..].iter_mut().step_by(width);
        match valid {
            None => slots.zip(values).for_each(|(d, v)| *d = v),
            Some(valid) => slots
                .zip(values)
                .zip(valid)
                .for_each(|((d, v), valid)| *d = if valid { v } else { default }),
        }
    }
    let n = || nulls.as_ref().map(|n| n.iter());
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        put(
            data,
            j,
            width,
            n(),
            default,
            a.values().iter().map(|v| *v as f32),
        );
    } else if let Some(a) = any.downcast_ref::<Float32Array>() {
        put(data, j, width, n(), default, a.values().iter().copied());
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        put(
            data,
            j,
            width,
            n(),
            default,
            a.values().iter().map(|v| *v as f32),
        );
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        put(
            data,
            j,
            width,
            n(),
            default,
            a.values().iter().map(|v| *v as f32),
        );
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        put(
            data,
            j,
            width,
            n(),
            default,
            a.values().iter().map(|v| f32::from(u8::from(v))),
        );
    } else {
        return Err(ModelError::InputType {
            index,
            data_type: col.data_type().to_string(),
            wanted: "this model input takes numbers".into(),
        });
    }
    Ok(())
}

/// Each value of a string column (null: "").
fn fill_strings(
    col: &ArrayRef,
    index: usize,
    mut put: impl FnMut(usize, &str),
) -> Result<(), ModelError> {
    let any = col.as_any();
    let rows = col.len();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        (0..rows).for_each(|i| put(i, if a.is_null(i) { "" } else { a.value(i) }));
    } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        (0..rows).for_each(|i| put(i, if a.is_null(i) { "" } else { a.value(i) }));
    } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
        (0..rows).for_each(|i| put(i, if a.is_null(i) { "" } else { a.value(i) }));
    } else {
        return Err(ModelError::InputType {
            index,
            data_type: col.data_type().to_string(),
            wanted: "this model input takes strings".into(),
        });
    }
    Ok(())
}

/// A model output as a flat vector of `T`, casting when the model's type differs.
fn plain<T: Datum + Copy>(value: &TValue) -> TractResult<Vec<T>> {
    let cast = value.cast_to::<T>()?;
    Ok(cast.try_as_plain_ram()?.as_slice::<T>()?.to_vec())
}

/// A tensor of `shape` owning `data` (no copy).
fn owned<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<Tensor> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor())
}
