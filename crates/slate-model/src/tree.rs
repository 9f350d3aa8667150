//! The ai.onnx.ml `TreeEnsembleClassifier` operator, evaluated to the ONNX-ML specification and
//! matching onnxruntime's conventions where the specification is silent (the binary case with
//! one column of weights, missing-value routing, the post transforms).

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            _ => return None,
        })
    }
}

/// One node, flattened: branches point at indices in [`TreeEnsemble::nodes`], leaves at a range
/// of [`TreeEnsemble::weights`].
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub mode: Mode,
    pub feature: usize,
    pub threshold: f32,
    pub missing_true: bool,
    pub true_child: usize,
    pub false_child: usize,
    pub weights: (usize, usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    pub nodes: Vec<Node>,
    pub roots: Vec<usize>,
    /// (class index, weight) for every leaf vote.
    pub weights: Vec<(usize, f32)>,
    pub base_values: Vec<f32>,
    pub post_transform: PostTransform,
    pub class_labels: Vec<i64>,
    pub n_features: usize,
    binary_case: bool,
    weights_all_positive: bool,
}

impl Eq for TreeEnsemble {}

/// The operator's attributes, as read from the ONNX node.
#[derive(Debug, Default)]
pub struct Attributes {
    pub nodes_treeids: Vec<i64>,
    pub nodes_nodeids: Vec<i64>,
    pub nodes_featureids: Vec<i64>,
    pub nodes_values: Vec<f32>,
    pub nodes_modes: Vec<String>,
    pub nodes_truenodeids: Vec<i64>,
    pub nodes_falsenodeids: Vec<i64>,
    pub nodes_missing_value_tracks_true: Vec<i64>,
    pub class_treeids: Vec<i64>,
    pub class_nodeids: Vec<i64>,
    pub class_ids: Vec<i64>,
    pub class_weights: Vec<f32>,
    pub classlabels_int64s: Vec<i64>,
    pub base_values: Vec<f32>,
    pub post_transform: String,
}

impl TreeEnsemble {
    pub fn build(a: Attributes) -> Result<Self, String> {
        let n = a.nodes_nodeids.len();
        for (name, len) in [
            ("nodes_treeids", a.nodes_treeids.len()),
            ("nodes_featureids", a.nodes_featureids.len()),
            ("nodes_values", a.nodes_values.len()),
            ("nodes_modes", a.nodes_modes.len()),
            ("nodes_truenodeids", a.nodes_truenodeids.len()),
            ("nodes_falsenodeids", a.nodes_falsenodeids.len()),
        ] {
            if len != n {
                return Err(format!("{name} has {len} entries, nodes_nodeids has {n}"));
            }
        }
        if !a.nodes_missing_value_tracks_true.is_empty()
            && a.nodes_missing_value_tracks_true.len() != n
        {
            return Err("nodes_missing_value_tracks_true does not match the node count".into());
        }
        let m = a.class_ids.len();
        if a.class_treeids.len() != m || a.class_nodeids.len() != m || a.class_weights.len() != m {
            return Err(
                "class_treeids, class_nodeids, class_ids and class_weights differ in length".into(),
            );
        }
        let n_classes = a.classlabels_int64s.len();
        if n_classes < 2 {
            return Err("a classifier needs at least two class labels (classlabels_int64s)".into());
        }
        let post_transform = PostTransform::parse(&a.post_transform)
            .ok_or_else(|| format!("unknown post_transform `{}`", a.post_transform))?;
        if post_transform == PostTransform::Probit {
            return Err("post_transform PROBIT is not supported yet".into());
        }
        let index: HashMap<(i64, i64), usize> = (0..n)
            .map(|i| ((a.nodes_treeids[i], a.nodes_nodeids[i]), i))
            .collect();
        let mut votes: HashMap<(i64, i64), Vec<(usize, f32)>> = HashMap::new();
        for k in 0..m {
            let class = usize::try_from(a.class_ids[k])
                .ok()
                .filter(|c| *c < n_classes)
                .ok_or_else(|| format!("class id {} out of range", a.class_ids[k]))?;
            votes
                .entry((a.class_treeids[k], a.class_nodeids[k]))
                .or_default()
                .push((class, a.class_weights[k]));
        }
        let mut nodes = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(m);
        let mut is_child = vec![false; n];
        let mut n_features = 0;
        for i in 0..n {
            let mode = Mode::parse(&a.nodes_modes[i])
                .ok_or_else(|| format!("unsupported node mode `{}`", a.nodes_modes[i]))?;
            let tree = a.nodes_treeids[i];
            let child = |id: i64| {
                index
                    .get(&(tree, id))
                    .copied()
                    .ok_or_else(|| format!("tree {tree} has no node {id}"))
            };
            let (true_child, false_child, span) = if mode == Mode::Leaf {
                let start = weights.len();
                weights.extend(
                    votes
                        .get(&(tree, a.nodes_nodeids[i]))
                        .cloned()
                        .unwrap_or_default(),
                );
                (0, 0, (start, weights.len()))
            } else {
                let (t, f) = (
                    child(a.nodes_truenodeids[i])?,
                    child(a.nodes_falsenodeids[i])?,
                );
                is_child[t] = true;
                is_child[f] = true;
                n_features = n_features.max(a.nodes_featureids[i] as usize + 1);
                (t, f, (0, 0))
            };
            nodes.push(Node {
                mode,
                feature: usize::try_from(a.nodes_featureids[i])
                    .map_err(|_| "negative feature id".to_string())?,
                threshold: a.nodes_values[i],
                missing_true: a
                    .nodes_missing_value_tracks_true
                    .get(i)
                    .is_some_and(|v| *v != 0),
                true_child,
                false_child,
                weights: span,
            });
        }
        let roots: Vec<usize> = (0..n).filter(|&i| !is_child[i]).collect();
        let classes_voted: std::collections::BTreeSet<usize> =
            weights.iter().map(|w| w.0).collect();
        Ok(TreeEnsemble {
            binary_case: n_classes == 2 && classes_voted.len() == 1,
            weights_all_positive: a.class_weights.iter().all(|w| *w >= 0.0),
            nodes,
            roots,
            weights,
            base_values: a.base_values,
            post_transform,
            class_labels: a.classlabels_int64s,
            n_features,
        })
    }

    pub fn n_classes(&self) -> usize {
        self.class_labels.len()
    }

    fn leaf(&self, root: usize, x: &[f32]) -> &Node {
        let mut node = &self.nodes[root];
        while node.mode != Mode::Leaf {
            let v = x[node.feature];
            let t = node.threshold;
            let go_true = if v.is_nan() {
                node.missing_true || node.mode == Mode::Neq
            } else {
                match node.mode {
                    Mode::Leq => v <= t,
                    Mode::Lt => v < t,
                    Mode::Gte => v >= t,
                    Mode::Gt => v > t,
                    Mode::Eq => v == t,
                    Mode::Neq => v != t,
                    Mode::Leaf => unreachable!("loop exits on leaves"),
                }
            };
            node = &self.nodes[if go_true {
                node.true_child
            } else {
                node.false_child
            }];
        }
        node
    }

    /// Label and class scores for one row of features.
    pub fn predict_row(&self, x: &[f32], scores_out: &mut [f32]) -> i64 {
        let c = self.n_classes();
        let mut score = vec![0f32; c];
        let mut has = vec![false; c];
        for &r in &self.roots {
            let leaf = self.leaf(r, x);
            for &(class, w) in &self.weights[leaf.weights.0..leaf.weights.1] {
                score[class] += w;
                has[class] = true;
            }
        }
        let mut add_second = None;
        let label;
        if c > 2 {
            for (k, b) in self.base_values.iter().enumerate().take(c) {
                score[k] += b;
                has[k] = true;
            }
            let mut best: Option<usize> = None;
            for k in 0..c {
                if has[k] && best.is_none_or(|b| score[k] > score[b]) {
                    best = Some(k);
                }
            }
            label = self.class_labels[best.unwrap_or(0)];
        } else {
            match self.base_values.len() {
                2 if has[1] => {
                    score[1] = self.base_values[1] + score[0];
                    score[0] = -score[1];
                }
                2 => {
                    score[1] += self.base_values[1];
                    score[0] += self.base_values[0];
                }
                1 => score[0] += self.base_values[0],
                0 => add_second = Some(3),
                _ => {}
            }
            let single = self.base_values.len() < 2 && !has[1];
            if single {
                score.truncate(1);
            }
            let pos = if score.len() == 2 && has[1] {
                score[1]
            } else if has[0] {
                score[0]
            } else {
                0.0
            };
            label = if self.binary_case {
                let (positive, code) = if self.weights_all_positive {
                    (pos > 0.5, 0)
                } else {
                    (pos > 0.0, 2)
                };
                add_second = Some(if positive { code } else { code + 1 });
                self.class_labels[usize::from(positive)]
            } else {
                i64::from(pos > 0.0)
            };
        }
        write_scores(&score, self.post_transform, add_second, scores_out);
        label
    }
}

fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - e } else { e }
}

fn write_scores(score: &[f32], t: PostTransform, add_second: Option<u8>, out: &mut [f32]) {
    if score.len() >= 2 {
        match t {
            PostTransform::None => out[..score.len()].copy_from_slice(score),
            PostTransform::Logistic => score
                .iter()
                .zip(out.iter_mut())
                .for_each(|(s, o)| *o = logistic(*s)),
            PostTransform::Probit => out[..score.len()].copy_from_slice(score),
            PostTransform::Softmax | PostTransform::SoftmaxZero => {
                let zero = t == PostTransform::SoftmaxZero;
                let max = score.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for (s, o) in score.iter().zip(out.iter_mut()) {
                    *o = if zero && *s == 0.0 {
                        0.0
                    } else {
                        (s - max).exp()
                    };
                    sum += *o;
                }
                out[..score.len()].iter_mut().for_each(|o| *o /= sum);
            }
        }
        return;
    }
    let s = score[0];
    match (t, add_second) {
        (_, Some(0 | 1)) => (out[0], out[1]) = (1.0 - s, s),
        (PostTransform::Logistic, Some(2 | 3)) => (out[0], out[1]) = (logistic(-s), logistic(s)),
        (_, Some(2 | 3)) => (out[0], out[1]) = (-s, s),
        _ => out[0] = s,
    }
}
