//! The encoders: `OneHotEncoder`, `LabelEncoder` (opsets 1 to 4), `CategoryMapper` and
//! `FeatureVectorizer`, with string and number inputs, as onnxruntime evaluates them.

use super::tensor_attr;
use super::{Kernel, float_rows, floats, int, ints, op, rows_dim, string, strings, tensor};
use std::collections::HashMap;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("OneHotEncoder", one_hot);
    reg.insert("LabelEncoder", label_encoder);
    reg.insert("CategoryMapper", category_mapper);
    reg.insert("FeatureVectorizer", feature_vectorizer);
}

/// The version of the ai.onnx.ml opset the model imports.
fn ml_opset(ctx: &ParsingContext) -> i64 {
    ctx.model
        .opset_import
        .iter()
        .find(|o| o.domain == "ai.onnx.ml")
        .map_or(1, |o| o.version)
}

/// A float as a map key: -0.0 and 0.0 alike.
fn float_key(v: f32) -> u32 {
    if v == 0.0 { 0 } else { v.to_bits() }
}

/// An input tensor's values, by kind.
enum Values {
    Str(Vec<String>),
    I64(Vec<i64>),
    F32(Vec<f32>),
}

impl Values {
    fn of(t: &TValue) -> TractResult<Values> {
        Ok(match t.datum_type() {
            DatumType::String => {
                Values::Str(t.to_plain_array_view::<String>()?.iter().cloned().collect())
            }
            DatumType::I64 | DatumType::I32 | DatumType::I16 | DatumType::I8 | DatumType::U8 => {
                Values::I64(
                    t.cast_to::<i64>()?
                        .to_plain_array_view::<i64>()?
                        .iter()
                        .copied()
                        .collect(),
                )
            }
            _ => Values::F32(
                t.cast_to::<f32>()?
                    .to_plain_array_view::<f32>()?
                    .iter()
                    .copied()
                    .collect(),
            ),
        })
    }
}

#[derive(Debug)]
struct OneHot {
    strings: HashMap<String, usize>,
    ints: HashMap<i64, usize>,
    k: usize,
    zeros: bool,
}

fn one_hot(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let s = strings(node, "cats_strings")?;
    let i = ints(node, "cats_int64s")?;
    if s.is_empty() == i.is_empty() {
        bail!("OneHotEncoder needs exactly one of cats_strings and cats_int64s");
    }
    // A repeated category keeps its last position.
    let k = s.len().max(i.len());
    op(OneHot {
        strings: s.into_iter().enumerate().map(|(p, v)| (v, p)).collect(),
        ints: i.into_iter().enumerate().map(|(p, v)| (v, p)).collect(),
        k,
        zeros: int(node, "zeros", 1)? != 0,
    })
}

impl Kernel for OneHot {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.push(self.k.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut shape = inputs[0].shape().to_vec();
        let positions: Vec<Option<usize>> = match Values::of(&inputs[0])? {
            Values::Str(v) => v.iter().map(|s| self.strings.get(s).copied()).collect(),
            Values::I64(v) => v.iter().map(|x| self.ints.get(x).copied()).collect(),
            // Numbers are truncated toward zero; NaN and huge values match nothing.
            Values::F32(v) => v
                .iter()
                .map(|x| {
                    let t = x.trunc();
                    if t.is_finite() && t.abs() < 9.2e18 {
                        self.ints.get(&(t as i64)).copied()
                    } else {
                        None
                    }
                })
                .collect(),
        };
        let mut out = vec![0f32; positions.len() * self.k];
        for (i, p) in positions.iter().enumerate() {
            match p {
                Some(p) => out[i * self.k + p] = 1.0,
                None if self.zeros => {}
                None => bail!("OneHotEncoder: an unknown category, and zeros = 0"),
            }
        }
        shape.push(self.k);
        tensor(&shape, out).map(|t| tvec!(t))
    }
}

/// What a label encoder maps to.
#[derive(Debug, Clone)]
enum Out {
    Str(Vec<String>, String),
    I64(Vec<i64>, i64),
    F32(Vec<f32>, f32),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Str(v, _) => v.len(),
            Out::I64(v, _) => v.len(),
            Out::F32(v, _) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Out::Str(..) => DatumType::String,
            Out::I64(..) => DatumType::I64,
            Out::F32(..) => DatumType::F32,
        }
    }

    /// The values at `positions` (`None`: the default), shaped `shape`.
    fn gather(&self, positions: &[Option<usize>], shape: &[usize]) -> TractResult<TValue> {
        match self {
            Out::Str(v, d) => {
                let data: Vec<String> = positions
                    .iter()
                    .map(|p| p.map_or(d, |p| &v[p]).clone())
                    .collect();
                Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?
                    .into_tensor()
                    .into_tvalue())
            }
            Out::I64(v, d) => tensor(
                shape,
                positions.iter().map(|p| p.map_or(*d, |p| v[p])).collect(),
            ),
            Out::F32(v, d) => tensor(
                shape,
                positions.iter().map(|p| p.map_or(*d, |p| v[p])).collect(),
            ),
        }
    }
}

/// Keys to positions.
#[derive(Debug)]
enum Keys {
    Str(HashMap<String, usize>),
    I64(HashMap<i64, usize>),
    /// Float keys; the position of a NaN key when NaN matches it (opset 4).
    F32(HashMap<u32, usize>, Option<usize>),
}

#[derive(Debug)]
struct LabelEncoder {
    keys: Keys,
    values: Out,
}

fn label_encoder(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let version = ml_opset(ctx);
    let default_string = string(node, "default_string", "_Unused")?;
    let default_int = int(node, "default_int64", -1)?;
    let default_float = node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0);
    if version < 2 {
        // Opset 1: classes_strings, string to index or index to string.
        let classes = strings(node, "classes_strings")?;
        let mut map = HashMap::new();
        for (p, c) in classes.iter().enumerate() {
            map.insert(c.clone(), p);
        }
        return op(LabelEncoderV1 {
            classes,
            map,
            default_string,
            default_int,
        });
    }
    let key_strings = strings(node, "keys_strings")?;
    let key_ints = ints(node, "keys_int64s")?;
    let key_floats = floats(node, "keys_floats")?;
    let key_tensor = match tensor_attr(ctx, node, "keys_tensor")? {
        Some(t) => Some(Values::of(&t.into_tvalue())?),
        None => None,
    };
    let mut keys_given = [
        !key_strings.is_empty(),
        !key_ints.is_empty(),
        !key_floats.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    keys_given += usize::from(key_tensor.is_some());
    if keys_given != 1 {
        bail!(
            "LabelEncoder needs exactly one of keys_strings, keys_int64s, keys_floats, keys_tensor"
        );
    }
    let nan_matches = version >= 4;
    // The first of repeated keys wins.
    let keys = match key_tensor {
        Some(Values::Str(v)) => Keys::Str(first(v.into_iter())),
        Some(Values::I64(v)) => Keys::I64(first(v.into_iter())),
        Some(Values::F32(v)) => float_keys(&v, nan_matches),
        None if !key_strings.is_empty() => Keys::Str(first(key_strings.into_iter())),
        None if !key_ints.is_empty() => Keys::I64(first(key_ints.into_iter())),
        None => float_keys(&key_floats, nan_matches),
    };
    let value_strings = strings(node, "values_strings")?;
    let value_ints = ints(node, "values_int64s")?;
    let value_floats = floats(node, "values_floats")?;
    let value_tensor = tensor_attr(ctx, node, "values_tensor")?;
    let default_tensor = tensor_attr(ctx, node, "default_tensor")?;
    let values = if let Some(t) = value_tensor {
        match Values::of(&t.into_tvalue())? {
            Values::Str(v) => {
                let d = match &default_tensor {
                    Some(d) => d
                        .to_plain_array_view::<String>()?
                        .iter()
                        .next()
                        .cloned()
                        .unwrap_or(default_string),
                    None => default_string,
                };
                Out::Str(v, d)
            }
            Values::I64(v) => {
                let d = match &default_tensor {
                    Some(d) => d
                        .cast_to::<i64>()?
                        .to_plain_array_view::<i64>()?
                        .iter()
                        .next()
                        .copied()
                        .unwrap_or(default_int),
                    None => default_int,
                };
                Out::I64(v, d)
            }
            Values::F32(v) => {
                let d = match &default_tensor {
                    Some(d) => d
                        .cast_to::<f32>()?
                        .to_plain_array_view::<f32>()?
                        .iter()
                        .next()
                        .copied()
                        .unwrap_or(default_float),
                    None => default_float,
                };
                Out::F32(v, d)
            }
        }
    } else if !value_strings.is_empty() {
        Out::Str(value_strings, default_string)
    } else if !value_ints.is_empty() {
        Out::I64(value_ints, default_int)
    } else if !value_floats.is_empty() {
        Out::F32(value_floats, default_float)
    } else {
        bail!(
            "LabelEncoder needs values (values_strings, values_int64s, values_floats or values_tensor)"
        );
    };
    let n_keys = match &keys {
        Keys::Str(m) => m.values().max().map_or(0, |m| m + 1),
        Keys::I64(m) => m.values().max().map_or(0, |m| m + 1),
        Keys::F32(m, nan) => m.values().chain(nan.iter()).max().map_or(0, |m| m + 1),
    };
    if n_keys > values.len() {
        bail!("LabelEncoder has more keys than values");
    }
    op(LabelEncoder { keys, values })
}

/// Positions of values, the first of repeated ones kept.
fn first<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, usize> {
    let mut map = HashMap::new();
    for (p, k) in keys.enumerate() {
        map.entry(k).or_insert(p);
    }
    map
}

fn float_keys(keys: &[f32], nan_matches: bool) -> Keys {
    let mut map = HashMap::new();
    let mut nan = None;
    for (p, k) in keys.iter().enumerate() {
        if k.is_nan() {
            if nan_matches && nan.is_none() {
                nan = Some(p);
            }
        } else {
            map.entry(float_key(*k)).or_insert(p);
        }
    }
    Keys::F32(map, nan)
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(self.values.datum_type())]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.values.datum_type().fact(inputs[0].shape.iter())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let positions: Vec<Option<usize>> = match (&self.keys, Values::of(&inputs[0])?) {
            (Keys::Str(m), Values::Str(v)) => v.iter().map(|s| m.get(s).copied()).collect(),
            (Keys::I64(m), Values::I64(v)) => v.iter().map(|x| m.get(x).copied()).collect(),
            (Keys::F32(m, nan), Values::F32(v)) => v
                .iter()
                .map(|x| match x.is_nan() {
                    true => *nan,
                    false => m.get(&float_key(*x)).copied(),
                })
                .collect(),
            _ => bail!("LabelEncoder's input type differs from its keys'"),
        };
        self.values.gather(&positions, &shape).map(|t| tvec!(t))
    }
}

#[derive(Debug)]
struct LabelEncoderV1 {
    classes: Vec<String>,
    map: HashMap<String, usize>,
    default_string: String,
    default_int: i64,
}

impl Kernel for LabelEncoderV1 {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![None]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = match inputs[0].datum_type {
            DatumType::String => DatumType::I64,
            _ => DatumType::String,
        };
        Ok(tvec!(dt.fact(inputs[0].shape.iter())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        match Values::of(&inputs[0])? {
            Values::Str(v) => {
                let out: Vec<i64> = v
                    .iter()
                    .map(|s| self.map.get(s).map_or(self.default_int, |p| *p as i64))
                    .collect();
                tensor(&shape, out).map(|t| tvec!(t))
            }
            Values::I64(v) => {
                let out: Vec<String> = v
                    .iter()
                    .map(|i| {
                        usize::try_from(*i)
                            .ok()
                            .and_then(|i| self.classes.get(i))
                            .unwrap_or(&self.default_string)
                            .clone()
                    })
                    .collect();
                Ok(tvec!(
                    tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), out)?
                        .into_tensor()
                        .into_tvalue()
                ))
            }
            Values::F32(_) => bail!("LabelEncoder (opset 1) takes strings or int64"),
        }
    }
}

#[derive(Debug)]
struct CategoryMapper {
    to_int: HashMap<String, i64>,
    to_string: HashMap<i64, String>,
    default_int: i64,
    default_string: String,
}

fn category_mapper(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let s = strings(node, "cats_strings")?;
    let i = ints(node, "cats_int64s")?;
    if s.len() != i.len() {
        bail!("CategoryMapper's cats_strings and cats_int64s differ in length");
    }
    // Repeated entries: the last one wins.
    op(CategoryMapper {
        to_int: s.iter().cloned().zip(i.iter().copied()).collect(),
        to_string: i.into_iter().zip(s).collect(),
        default_int: int(node, "default_int64", -1)?,
        default_string: string(node, "default_string", "_Unused")?,
    })
}

impl Kernel for CategoryMapper {
    fn name(&self) -> &'static str {
        "CategoryMapper"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![None]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = match inputs[0].datum_type {
            DatumType::String => DatumType::I64,
            _ => DatumType::String,
        };
        Ok(tvec!(dt.fact(inputs[0].shape.iter())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        match Values::of(&inputs[0])? {
            Values::Str(v) => tensor(
                &shape,
                v.iter()
                    .map(|s| self.to_int.get(s).copied().unwrap_or(self.default_int))
                    .collect(),
            )
            .map(|t| tvec!(t)),
            Values::I64(v) => {
                let out: Vec<String> = v
                    .iter()
                    .map(|i| {
                        self.to_string
                            .get(i)
                            .unwrap_or(&self.default_string)
                            .clone()
                    })
                    .collect();
                Ok(tvec!(
                    tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), out)?
                        .into_tensor()
                        .into_tvalue()
                ))
            }
            Values::F32(_) => bail!("CategoryMapper takes strings or int64"),
        }
    }
}

#[derive(Debug)]
struct FeatureVectorizer(Vec<usize>);

fn feature_vectorizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let dims = ints(node, "inputdimensions")?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format_err!("negative inputdimensions")))
        .collect::<TractResult<Vec<_>>>()?;
    op(FeatureVectorizer(dims))
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        vec![Some(DatumType::F32)]
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        if inputs.len() != self.0.len() {
            bail!(
                "FeatureVectorizer has {} inputs for {} inputdimensions",
                inputs.len(),
                self.0.len()
            );
        }
        let total: usize = self.0.iter().sum();
        Ok(tvec!(f32::fact([rows_dim(inputs[0]), total.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let total: usize = self.0.iter().sum();
        let mut n = None;
        let mut parts = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let (rows, width, data) = float_rows(input)?;
            if *n.get_or_insert(rows) != rows {
                bail!("all inputs to FeatureVectorizer must have the same batch size");
            }
            parts.push((width, data));
        }
        let n = n.unwrap_or(0);
        let mut out = vec![0f32; n * total];
        for i in 0..n {
            let mut at = i * total;
            for ((width, data), &dim) in parts.iter().zip(&self.0) {
                // Wider inputs are cut to `dim`; narrower ones leave zeros.
                let take = dim.min(*width);
                out[at..at + take].copy_from_slice(&data[i * width..i * width + take]);
                at += dim;
            }
        }
        tensor(&[n, total], out).map(|t| tvec!(t))
    }
}
