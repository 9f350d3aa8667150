//! The ai.onnx.ml operators, evaluated by Slate to the ONNX-ML specification with onnxruntime's
//! arithmetic (the reference every model is checked against), and plugged into tract's op
//! registry in place of tract's own, so the standard-domain parts of a graph still run on tract.
//!
//! A few standard-domain operators are Slate's too ([`standard`]): where tract's answer differs
//! from onnxruntime's, or where tract's general implementation costs a model's time.
//!
//! Each operator is a [`Kernel`]: its output facts from its input facts, and its evaluation.
//! [`Ml`] adapts any kernel to tract (inference rules, typed op, evaluation).

mod encode;
mod linear;
mod preprocess;
mod standard;
mod svm;
mod trees;

use std::borrow::Cow;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(crate) fn register(reg: &mut OnnxOpRegister) {
    trees::register(reg);
    linear::register(reg);
    preprocess::register(reg);
    encode::register(reg);
    svm::register(reg);
    standard::register(reg);
    reg.insert("ZipMap", zipmap);
}

/// One ai.onnx.ml operator.
pub(crate) trait Kernel: std::fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn n_outputs(&self) -> usize {
        1
    }
    /// The output types known from the attributes alone (for tract's inference).
    fn output_types(&self) -> Vec<Option<DatumType>>;
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A kernel as tract's inference and typed graphs see it.
#[derive(Debug, Clone)]
pub(crate) struct Ml(Arc<dyn Kernel>);

impl PartialEq for Ml {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Ml {}

pub(crate) fn op(kernel: impl Kernel) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Ml(Arc::new(kernel))), vec![]))
}

impl Expansion for Ml {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.n_outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        _inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, self.0.n_outputs())?;
        for (o, t) in outputs.iter().zip(self.0.output_types()) {
            if let Some(t) = t {
                s.equals(&o.datum_type, t)?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MlOp(self.0.clone()), inputs)
    }
}

#[derive(Debug, Clone)]
struct MlOp(Arc<dyn Kernel>);

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MlOp {}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        format!("Slate{}", self.0.name()).into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0
            .eval(inputs)
            .with_context(|| format!("evaluating {}", self.0.name()))
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}

/// ZipMap turns probabilities into a sequence of maps, which neither Slate nor tract has.
fn zipmap(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    bail!(
        "the model ends in ZipMap (probabilities as a sequence of maps); export the probabilities as a tensor: skl2onnx `options={{id(model): {{'zipmap': False}}}}`, onnxmltools `zipmap=False`"
    )
}

/// `a * b + c` rounded once, as a fused multiply-add: the product of two f32 is exact in f64, so
/// only the sum rounds (to f64, then f32; the two roundings differ from one only when the f64 sum
/// falls exactly halfway between two f32, which is vanishingly rare). `f32::mul_add` is a library
/// call on CPUs the build does not assume FMA for, tens of times slower.
#[inline(always)]
pub(crate) fn fma(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

// Attribute helpers.

pub(crate) fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    Ok(node.get_attr_opt_vec::<i64>(name)?.unwrap_or_default())
}

pub(crate) fn floats(node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    Ok(node.get_attr_opt_vec::<f32>(name)?.unwrap_or_default())
}

pub(crate) fn strings(node: &NodeProto, name: &str) -> TractResult<Vec<String>> {
    Ok(node.get_attr_opt_vec::<String>(name)?.unwrap_or_default())
}

pub(crate) fn string(node: &NodeProto, name: &str, default: &str) -> TractResult<String> {
    Ok(node
        .get_attr_opt::<String>(name)?
        .unwrap_or_else(|| default.to_string()))
}

pub(crate) fn int(node: &NodeProto, name: &str, default: i64) -> TractResult<i64> {
    Ok(node.get_attr_opt::<i64>(name)?.unwrap_or(default))
}

pub(crate) fn float(node: &NodeProto, name: &str, default: f32) -> TractResult<f32> {
    Ok(node.get_attr_opt::<f32>(name)?.unwrap_or(default))
}

/// A tensor attribute (`*_as_tensor`, the opset-5 tree attributes), if present.
pub(crate) fn tensor_attr(
    ctx: &ParsingContext,
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<Tensor>> {
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
        None => Ok(None),
        Some(p) => Ok(Some(ctx.load_tensor(p)?)),
    }
}

/// A tensor attribute's values as `T`, if present.
pub(crate) fn tensor_values<T: Datum + Copy>(
    ctx: &ParsingContext,
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<Vec<T>>> {
    match tensor_attr(ctx, node, name)? {
        None => Ok(None),
        Some(t) => Ok(Some(
            t.cast_to::<T>()?
                .to_plain_array_view::<T>()?
                .iter()
                .copied()
                .collect(),
        )),
    }
}

// Tensor helpers.

/// A numeric input as rows of `width` f32 values: `[N, C]` gives (N, C); `[C]` one row. An f32
/// tensor is read in place; others are cast.
pub(crate) fn float_rows(t: &TValue) -> TractResult<(usize, usize, Cow<'_, [f32]>)> {
    let (n, c) = rows_of(t.shape());
    if t.datum_type() == DatumType::F32
        && let Ok(s) = t.try_as_plain_ram().and_then(|p| p.as_slice::<f32>())
    {
        return Ok((n, c, Cow::Borrowed(s)));
    }
    let cast = t.cast_to::<f32>()?;
    let data = cast.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok((n, c, Cow::Owned(data)))
}

/// (rows, columns) of a 1- or 2-D shape, as the ML operators read their `X`.
pub(crate) fn rows_of(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [c] => (1, *c),
        [n, rest @ ..] => (*n, rest.iter().product()),
    }
}

/// The row count of a fact, as a dimension: `[N, C]` → N, `[C]` → 1.
pub(crate) fn rows_dim(fact: &TypedFact) -> TDim {
    match fact.rank() {
        0 | 1 => 1.to_dim(),
        _ => fact.shape[0].clone(),
    }
}

pub(crate) fn tensor<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, data)?
        .into_tensor()
        .into_tvalue())
}
