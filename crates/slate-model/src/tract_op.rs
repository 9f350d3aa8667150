//! Plugs [`TreeEnsemble`] into tract's ONNX op registry in place of tract's own
//! `TreeEnsembleClassifier`, so the rest of a graph (casts, reshapes, linear parts) still runs
//! on tract.

use crate::tree::{Attributes, TreeEnsemble};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(crate) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleClassifier", tree_classifier);
}

fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    Ok(node.get_attr_opt_vec::<i64>(name)?.unwrap_or_default())
}

fn floats(node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    Ok(node.get_attr_opt_vec::<f32>(name)?.unwrap_or_default())
}

fn tree_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node
        .get_attr_opt_vec::<String>("classlabels_strings")?
        .is_some_and(|v| !v.is_empty())
    {
        bail!(
            "TreeEnsembleClassifier with string class labels is not supported yet; export integer labels"
        );
    }
    for unsupported in [
        "nodes_values_as_tensor",
        "class_weights_as_tensor",
        "base_values_as_tensor",
    ] {
        if node.attribute.iter().any(|a| a.name == unsupported) {
            bail!(
                "TreeEnsembleClassifier attribute {unsupported} (double precision) is not supported yet"
            );
        }
    }
    let attrs = Attributes {
        nodes_treeids: ints(node, "nodes_treeids")?,
        nodes_nodeids: ints(node, "nodes_nodeids")?,
        nodes_featureids: ints(node, "nodes_featureids")?,
        nodes_values: floats(node, "nodes_values")?,
        nodes_modes: node
            .get_attr_opt_vec::<String>("nodes_modes")?
            .unwrap_or_default(),
        nodes_truenodeids: ints(node, "nodes_truenodeids")?,
        nodes_falsenodeids: ints(node, "nodes_falsenodeids")?,
        nodes_missing_value_tracks_true: ints(node, "nodes_missing_value_tracks_true")?,
        class_treeids: ints(node, "class_treeids")?,
        class_nodeids: ints(node, "class_nodeids")?,
        class_ids: ints(node, "class_ids")?,
        class_weights: floats(node, "class_weights")?,
        classlabels_int64s: ints(node, "classlabels_int64s")?,
        base_values: floats(node, "base_values")?,
        post_transform: node
            .get_attr_opt::<String>("post_transform")?
            .unwrap_or_else(|| "NONE".into()),
    };
    let ensemble =
        TreeEnsemble::build(attrs).map_err(|e| format_err!("TreeEnsembleClassifier: {e}"))?;
    Ok((expand(TreeClassifier(ensemble)), vec![]))
}

/// The operator as tract sees it: one float input `[N, F]`, outputs labels `[N]` (i64) and
/// scores `[N, classes]` (f32).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeClassifier(TreeEnsemble);

impl Expansion for TreeClassifier {
    fn name(&self) -> StaticName {
        "SlateTreeEnsembleClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, DatumType::I64)?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.0.n_classes().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, TreeClassifierOp(self.0.clone()), inputs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeClassifierOp(TreeEnsemble);

impl Op for TreeClassifierOp {
    fn name(&self) -> StaticName {
        "SlateTreeEnsembleClassifier".into()
    }

    op_as_typed_op!();
}

impl EvalOp for TreeClassifierOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let view = input.to_plain_array_view::<f32>()?;
        let shape = view.shape();
        let (n, f) = match shape {
            [n, f] => (*n, *f),
            [f] => (1, *f),
            _ => bail!("TreeEnsembleClassifier expects a [N, F] input, got {shape:?}"),
        };
        if f < self.0.n_features {
            bail!(
                "TreeEnsembleClassifier needs {} features, input has {f}",
                self.0.n_features
            );
        }
        let c = self.0.n_classes();
        let data: Vec<f32> = view.iter().copied().collect();
        let mut labels = vec![0i64; n];
        let mut scores = vec![0f32; n * c];
        self.0.predict_rows(&data, f, &mut labels, &mut scores);
        let labels = Tensor::from_shape(&[n], &labels)?;
        let scores = Tensor::from_shape(&[n, c], &scores)?;
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }
}

impl TypedOp for TreeClassifierOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(
            i64::fact([n.clone()]),
            f32::fact([n, self.0.n_classes().to_dim()])
        ))
    }

    as_op!();
}
