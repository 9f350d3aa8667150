//! The tree-ensemble operators ([`TreeEnsemble`]) in tract's ONNX op registry, in place of
//! tract's own: `TreeEnsembleClassifier`, `TreeEnsembleRegressor` and the opset-5
//! `TreeEnsemble` (converted to the older form, set-membership splits becoming chains of
//! equality splits, as onnxruntime converts it).

use super::{Kernel, float_rows, floats, ints, op, rows_dim, strings, tensor, tensor_values};
use crate::tree::{Aggregate, Attributes, TreeEnsemble};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleClassifier", tree_classifier);
    reg.insert("TreeEnsembleRegressor", tree_regressor);
    reg.insert("TreeEnsemble", tree_ensemble);
}

fn no_double_attributes(node: &NodeProto, names: &[&str]) -> TractResult<()> {
    for unsupported in names {
        if node.attribute.iter().any(|a| a.name == *unsupported) {
            bail!(
                "{} attribute {unsupported} (double precision) is not supported yet",
                node.op_type
            );
        }
    }
    Ok(())
}

fn text(node: &NodeProto, name: &str, default: &str) -> TractResult<String> {
    Ok(node
        .get_attr_opt::<String>(name)?
        .unwrap_or_else(|| default.into()))
}

fn tree_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if !strings(node, "classlabels_strings")?.is_empty() {
        bail!(
            "TreeEnsembleClassifier with string class labels is not supported; train with integer labels"
        );
    }
    no_double_attributes(
        node,
        &[
            "nodes_values_as_tensor",
            "class_weights_as_tensor",
            "base_values_as_tensor",
        ],
    )?;
    let attrs = Attributes {
        nodes_treeids: ints(node, "nodes_treeids")?,
        nodes_nodeids: ints(node, "nodes_nodeids")?,
        nodes_featureids: ints(node, "nodes_featureids")?,
        nodes_values: floats(node, "nodes_values")?,
        nodes_modes: strings(node, "nodes_modes")?,
        nodes_truenodeids: ints(node, "nodes_truenodeids")?,
        nodes_falsenodeids: ints(node, "nodes_falsenodeids")?,
        nodes_missing_value_tracks_true: ints(node, "nodes_missing_value_tracks_true")?,
        class_treeids: ints(node, "class_treeids")?,
        class_nodeids: ints(node, "class_nodeids")?,
        class_ids: ints(node, "class_ids")?,
        class_weights: floats(node, "class_weights")?,
        classlabels_int64s: ints(node, "classlabels_int64s")?,
        base_values: floats(node, "base_values")?,
        post_transform: text(node, "post_transform", "NONE")?,
        regression: None,
    };
    let ensemble =
        TreeEnsemble::build(attrs).map_err(|e| format_err!("TreeEnsembleClassifier: {e}"))?;
    op(Trees(ensemble))
}

fn tree_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    no_double_attributes(
        node,
        &[
            "nodes_values_as_tensor",
            "target_weights_as_tensor",
            "base_values_as_tensor",
        ],
    )?;
    let aggregate = text(node, "aggregate_function", "SUM")?;
    let aggregate = Aggregate::parse(&aggregate).ok_or_else(|| {
        format_err!("TreeEnsembleRegressor: unknown aggregate_function `{aggregate}`")
    })?;
    let targets = usize::try_from(node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1))
        .map_err(|_| format_err!("TreeEnsembleRegressor: negative n_targets"))?;
    let attrs = Attributes {
        nodes_treeids: ints(node, "nodes_treeids")?,
        nodes_nodeids: ints(node, "nodes_nodeids")?,
        nodes_featureids: ints(node, "nodes_featureids")?,
        nodes_values: floats(node, "nodes_values")?,
        nodes_modes: strings(node, "nodes_modes")?,
        nodes_truenodeids: ints(node, "nodes_truenodeids")?,
        nodes_falsenodeids: ints(node, "nodes_falsenodeids")?,
        nodes_missing_value_tracks_true: ints(node, "nodes_missing_value_tracks_true")?,
        class_treeids: ints(node, "target_treeids")?,
        class_nodeids: ints(node, "target_nodeids")?,
        class_ids: ints(node, "target_ids")?,
        class_weights: floats(node, "target_weights")?,
        classlabels_int64s: vec![],
        base_values: floats(node, "base_values")?,
        post_transform: text(node, "post_transform", "NONE")?,
        regression: Some((targets, aggregate)),
    };
    let ensemble =
        TreeEnsemble::build(attrs).map_err(|e| format_err!("TreeEnsembleRegressor: {e}"))?;
    op(Trees(ensemble))
}

/// The opset-5 `TreeEnsemble` as the older regressor form: each tree renumbered depth first
/// (true branch first), leaves as target weights, a set-membership split as a chain of
/// equality splits (one per member; the last one's false branch the split's own).
fn tree_ensemble(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let need = |name: &str| -> TractResult<Vec<f32>> {
        tensor_values::<f32>(ctx, node, name)?
            .ok_or_else(|| format_err!("TreeEnsemble needs the attribute {name}"))
    };
    let modes: Vec<i64> = tensor_values::<u8>(ctx, node, "nodes_modes")?
        .ok_or_else(|| format_err!("TreeEnsemble needs the attribute nodes_modes"))?
        .into_iter()
        .map(i64::from)
        .collect();
    let splits = need("nodes_splits")?;
    let leaf_weights = need("leaf_weights")?;
    let members = tensor_values::<f32>(ctx, node, "membership_values")?.unwrap_or_default();
    let features = ints(node, "nodes_featureids")?;
    let true_ids = ints(node, "nodes_truenodeids")?;
    let false_ids = ints(node, "nodes_falsenodeids")?;
    let true_leafs = ints(node, "nodes_trueleafs")?;
    let false_leafs = ints(node, "nodes_falseleafs")?;
    let missing = ints(node, "nodes_missing_value_tracks_true")?;
    let leaf_targets = ints(node, "leaf_targetids")?;
    let roots = ints(node, "tree_roots")?;
    let targets = usize::try_from(node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1))
        .map_err(|_| format_err!("TreeEnsemble: negative n_targets"))?;
    let n = modes.len();
    for (name, len) in [
        ("nodes_splits", splits.len()),
        ("nodes_featureids", features.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
        ("nodes_trueleafs", true_leafs.len()),
        ("nodes_falseleafs", false_leafs.len()),
    ] {
        if len != n {
            bail!("TreeEnsemble: {name} has {len} entries, nodes_modes has {n}");
        }
    }
    if leaf_targets.len() != leaf_weights.len() {
        bail!("TreeEnsemble: leaf_targetids and leaf_weights differ in length");
    }
    if leaf_targets
        .iter()
        .any(|t| usize::try_from(*t).map_or(true, |t| t >= targets))
    {
        bail!("TreeEnsemble: a leaf_targetids entry is outside [0, n_targets)");
    }
    // The member sets, in the order of the BRANCH_MEMBER nodes, NaN-separated.
    let mut sets: Vec<Vec<f32>> = vec![vec![]];
    for v in &members {
        if v.is_nan() {
            sets.push(vec![]);
        } else if let Some(last) = sets.last_mut() {
            last.push(*v);
        }
    }
    let mut set_of = vec![usize::MAX; n];
    let mut next_set = 0;
    for (i, m) in modes.iter().enumerate() {
        if *m == 6 {
            set_of[i] = next_set;
            next_set += 1;
        }
    }
    let mode_name = |m: i64| -> TractResult<&'static str> {
        Ok(match m {
            0 => "BRANCH_LEQ",
            1 => "BRANCH_LT",
            2 => "BRANCH_GTE",
            3 => "BRANCH_GT",
            4 => "BRANCH_EQ",
            5 => "BRANCH_NEQ",
            other => bail!("TreeEnsemble: unknown node mode {other}"),
        })
    };
    let aggregate = match node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => bail!("TreeEnsemble: unknown aggregate_function {other}"),
    };
    let mut a = Attributes {
        regression: Some((targets, aggregate)),
        ..Attributes::default()
    };
    // onnxruntime reads the code as its own order (1 LOGISTIC, 2 SOFTMAX), not the
    // specification's (1 SOFTMAX, 2 LOGISTIC); Slate gives onnxruntime's answers.
    a.post_transform = match node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0) {
        0 => "NONE",
        1 => "LOGISTIC",
        2 => "SOFTMAX",
        3 => "SOFTMAX_ZERO",
        4 => "PROBIT",
        other => bail!("TreeEnsemble: unknown post_transform {other}"),
    }
    .into();
    // What a walk reaches: a node or a leaf, by index.
    enum Step {
        Node(usize),
        Leaf(usize),
    }
    let check = |i: i64, len: usize, what: &str| -> TractResult<usize> {
        usize::try_from(i)
            .ok()
            .filter(|i| *i < len)
            .ok_or_else(|| format_err!("TreeEnsemble: {what} {i} is out of range"))
    };
    for (tree, &root) in roots.iter().enumerate() {
        let tree = tree as i64;
        let mut next_id = 0i64;
        // Depth first, true branch first; each entry: (step, the id given to it).
        let mut stack = vec![(Step::Node(check(root, n, "tree root")?), 0i64)];
        next_id += 1;
        while let Some((step, id)) = stack.pop() {
            // A forest visits each node and leaf once (a member split adds one node per member).
            if a.nodes_nodeids.len() > n + members.len() + leaf_weights.len() {
                bail!("TreeEnsemble: the trees are not trees (a node is reached twice)");
            }
            match step {
                Step::Leaf(l) => {
                    push_node(&mut a, tree, id, "LEAF", 0, 0.0, 0, 0, 0);
                    a.class_treeids.push(tree);
                    a.class_nodeids.push(id);
                    a.class_ids.push(leaf_targets[l]);
                    a.class_weights.push(leaf_weights[l]);
                }
                Step::Node(i) => {
                    let child = |is_leaf: i64, at: i64| -> TractResult<Step> {
                        Ok(if is_leaf != 0 {
                            Step::Leaf(check(at, leaf_weights.len(), "leaf")?)
                        } else {
                            Step::Node(check(at, n, "node")?)
                        })
                    };
                    let t = child(true_leafs[i], true_ids[i])?;
                    let f = child(false_leafs[i], false_ids[i])?;
                    let miss = missing.get(i).copied().unwrap_or(0);
                    let feature = features[i];
                    if modes[i] == 6 {
                        let set = sets.get(set_of[i]).cloned().unwrap_or_default();
                        if set.is_empty() {
                            bail!("TreeEnsemble: a BRANCH_MEMBER node has no member values");
                        }
                        // Equality splits in a chain: the first keeps the node's id.
                        let t_id = next_id;
                        next_id += 1;
                        let mut chain = vec![id];
                        for _ in 1..set.len() {
                            chain.push(next_id);
                            next_id += 1;
                        }
                        let f_id = next_id;
                        next_id += 1;
                        for (k, v) in set.iter().enumerate() {
                            let false_id = chain.get(k + 1).copied().unwrap_or(f_id);
                            push_node(
                                &mut a,
                                tree,
                                chain[k],
                                "BRANCH_EQ",
                                feature,
                                *v,
                                t_id,
                                false_id,
                                miss,
                            );
                        }
                        stack.push((f, f_id));
                        stack.push((t, t_id));
                    } else {
                        let (t_id, f_id) = (next_id, next_id + 1);
                        next_id += 2;
                        push_node(
                            &mut a,
                            tree,
                            id,
                            mode_name(modes[i])?,
                            feature,
                            splits[i],
                            t_id,
                            f_id,
                            miss,
                        );
                        stack.push((f, f_id));
                        stack.push((t, t_id));
                    }
                }
            }
        }
    }
    let ensemble = TreeEnsemble::build(a).map_err(|e| format_err!("TreeEnsemble: {e}"))?;
    op(Trees(ensemble))
}

#[allow(clippy::too_many_arguments)]
fn push_node(
    a: &mut Attributes,
    tree: i64,
    id: i64,
    mode: &str,
    feature: i64,
    value: f32,
    true_id: i64,
    false_id: i64,
    missing: i64,
) {
    a.nodes_treeids.push(tree);
    a.nodes_nodeids.push(id);
    a.nodes_modes.push(mode.into());
    a.nodes_featureids.push(feature);
    a.nodes_values.push(value);
    a.nodes_truenodeids.push(true_id);
    a.nodes_falsenodeids.push(false_id);
    a.nodes_missing_value_tracks_true.push(missing);
}

/// An ensemble as tract sees it: one float input `[N, F]`; a classifier outputs labels `[N]`
/// (i64) and scores `[N, classes]`, a regressor its values `[N, targets]` (f32).
#[derive(Debug)]
struct Trees(TreeEnsemble);

impl Kernel for Trees {
    fn name(&self) -> &'static str {
        match self.0.regression {
            None => "TreeEnsembleClassifier",
            Some(_) => "TreeEnsembleRegressor",
        }
    }

    fn n_outputs(&self) -> usize {
        match self.0.regression {
            None => 2,
            Some(_) => 1,
        }
    }

    fn output_types(&self) -> Vec<Option<DatumType>> {
        match self.0.regression {
            None => vec![Some(DatumType::I64), Some(DatumType::F32)],
            Some(_) => vec![Some(DatumType::F32)],
        }
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = rows_dim(inputs[0]);
        let c = self.0.n_classes().to_dim();
        Ok(match self.0.regression {
            None => tvec!(i64::fact([n.clone()]), f32::fact([n, c])),
            Some(_) => tvec!(f32::fact([n, c])),
        })
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, data) = float_rows(&inputs[0])?;
        if f < self.0.n_features {
            bail!(
                "{} needs {} features, input has {f}",
                self.name(),
                self.0.n_features
            );
        }
        let c = self.0.n_classes();
        let mut labels = vec![0i64; n];
        let mut scores = vec![0f32; n * c];
        self.0.predict_rows(&data, f, &mut labels, &mut scores);
        match self.0.regression {
            None => Ok(tvec!(tensor(&[n], labels)?, tensor(&[n, c], scores)?)),
            Some(_) => Ok(tvec!(tensor(&[n, c], scores)?)),
        }
    }
}
