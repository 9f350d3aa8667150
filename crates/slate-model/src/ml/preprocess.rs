//! The preprocessing operators: `Imputer`, `Scaler`, `Normalizer`, `Binarizer`, each elementwise
//! or row-wise as onnxruntime computes it (in f32).

use super::{Kernel, float, float_rows, floats, ints, op, string, tensor};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Imputer", imputer);
    reg.insert("Scaler", scaler);
    reg.insert("Normalizer", normalizer);
    reg.insert("Binarizer", binarizer);
}

/// Per-feature values: one per column, or one for every column.
fn per_feature(values: &[f32], stride: usize, j: usize) -> f32 {
    if values.len() == stride {
        values[j]
    } else {
        values[0]
    }
}

fn same_shape_f32(inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
    Ok(tvec!(f32::fact(inputs[0].shape.iter())))
}

#[derive(Debug)]
struct Imputer {
    floats: Vec<f32>,
    ints: Vec<i64>,
    replaced_float: f32,
    replaced_int: i64,
}

fn imputer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let f = floats(node, "imputed_value_floats")?;
    let i = ints(node, "imputed_value_int64s")?;
    if f.is_empty() == i.is_empty() {
        bail!("Imputer needs exactly one of imputed_value_floats and imputed_value_int64s");
    }
    op(Imputer {
        floats: f,
        ints: i,
        replaced_float: float(node, "replaced_value_float", 0.0)?,
        replaced_int: node
            .get_attr_opt::<i64>("replaced_value_int64")?
            .unwrap_or(0),
    })
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![None]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.iter())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape().to_vec();
        let stride = match shape.as_slice() {
            [_, c, ..] => *c,
            [c] => *c,
            [] => 1,
        }
        .max(1);
        if input.datum_type() == DatumType::I64 {
            if self.ints.is_empty() {
                bail!("Imputer with float values given int64 input");
            }
            let data: Vec<i64> = input
                .to_plain_array_view::<i64>()?
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    if x == self.replaced_int {
                        if self.ints.len() == stride {
                            self.ints[k % stride]
                        } else {
                            self.ints[0]
                        }
                    } else {
                        x
                    }
                })
                .collect();
            return tensor(&shape, data).map(|t| tvec!(t));
        }
        if self.floats.is_empty() {
            bail!("Imputer with int64 values given float input");
        }
        let (_, _, x) = float_rows(input)?;
        let nan = self.replaced_float.is_nan();
        let imputed: Vec<f32> = (0..stride)
            .map(|j| per_feature(&self.floats, stride, j))
            .collect();
        let mut data: Vec<f32> = Vec::with_capacity(x.len());
        for row in x.chunks(stride) {
            data.extend(row.iter().zip(&imputed).map(|(&v, &i)| {
                if (v.is_nan() && nan) || v == self.replaced_float {
                    i
                } else {
                    v
                }
            }));
        }
        tensor(&shape, data).map(|t| tvec!(t))
    }
}

#[derive(Debug)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let scale = floats(node, "scale")?;
    let mut offset = floats(node, "offset")?;
    if scale.is_empty() {
        bail!("Scaler needs scale");
    }
    if offset.is_empty() {
        offset = vec![0.0; scale.len()];
    }
    if offset.len() != scale.len() {
        bail!("Scaler's offset and scale differ in length");
    }
    op(Scaler { offset, scale })
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        same_shape_f32(inputs)
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape().to_vec();
        let stride = match shape.as_slice() {
            [_, c, ..] => *c,
            [c] => *c,
            [] => 1,
        }
        .max(1);
        if self.scale.len() != stride && self.scale.len() != 1 {
            bail!(
                "Scaler has {} values for {stride} features",
                self.scale.len()
            );
        }
        let out: Vec<f32> = if input.datum_type() == DatumType::F64 {
            input
                .to_plain_array_view::<f64>()?
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    let j = k % stride;
                    ((x - f64::from(per_feature(&self.offset, stride, j)))
                        * f64::from(per_feature(&self.scale, stride, j))) as f32
                })
                .collect()
        } else {
            let (_, _, x) = float_rows(input)?;
            let offset: Vec<f32> = (0..stride)
                .map(|j| per_feature(&self.offset, stride, j))
                .collect();
            let scale: Vec<f32> = (0..stride)
                .map(|j| per_feature(&self.scale, stride, j))
                .collect();
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks(stride) {
                out.extend(
                    row.iter()
                        .zip(offset.iter().zip(&scale))
                        .map(|(&v, (&o, &s))| (v - o) * s),
                );
            }
            out
        };
        tensor(&shape, out).map(|t| tvec!(t))
    }
}

#[derive(Debug, Clone, Copy)]
enum Norm {
    Max,
    L1,
    L2,
}

#[derive(Debug)]
struct Normalizer(Norm);

fn normalizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let norm = match string(node, "norm", "MAX")?.as_str() {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => bail!("Normalizer norm `{other}` (MAX, L1 or L2)"),
    };
    op(Normalizer(norm))
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        same_shape_f32(inputs)
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let (n, c, x) = float_rows(&inputs[0])?;
        let mut x = x.into_owned();
        for row in x.chunks_mut(c.max(1)).take(n) {
            match self.0 {
                Norm::Max => {
                    // The greatest value (no absolute value; NaN skipped), as onnxruntime.
                    let mut max = f32::MIN;
                    for &v in row.iter() {
                        if v > max {
                            max = v;
                        }
                    }
                    if max != 0.0 {
                        row.iter_mut().for_each(|v| *v /= max);
                    }
                }
                Norm::L1 => {
                    let mut sum = 0f32;
                    for &v in row.iter() {
                        sum += v.abs();
                    }
                    if sum != 0.0 {
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                }
                Norm::L2 => {
                    let mut sum = 0f32;
                    for &v in row.iter() {
                        sum += v * v;
                    }
                    if sum != 0.0 {
                        row.iter_mut().for_each(|v| {
                            let sign = if *v < 0.0 { -1.0 } else { 1.0 };
                            *v = sign * (*v * *v / sum).sqrt();
                        });
                    }
                }
            }
        }
        tensor(&shape, x).map(|t| tvec!(t))
    }
}

#[derive(Debug)]
struct Binarizer(f32);

fn binarizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    op(Binarizer(float(node, "threshold", 0.0)?))
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        same_shape_f32(inputs)
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let (_, _, x) = float_rows(&inputs[0])?;
        if let Some(k) = x.iter().position(|v| v.is_nan()) {
            // onnxruntime refuses NaN here too.
            bail!("Binarizer input {k} is NaN");
        }
        let out: Vec<f32> = x
            .iter()
            .map(|&v| if v > self.0 { 1.0 } else { 0.0 })
            .collect();
        tensor(&shape, out).map(|t| tvec!(t))
    }
}
