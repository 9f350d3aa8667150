//! The ai.onnx.ml tree ensembles (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`, and the
//! opset-5 `TreeEnsemble` once converted), evaluated to the ONNX-ML specification and matching
//! onnxruntime's conventions where the specification is silent (the binary case with one column
//! of weights, missing-value routing, the post transforms) and its arithmetic: every tree's
//! leaf added in f32, in the order the trees are listed.

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

/// How a regressor combines its trees' leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            _ => return None,
        })
    }
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
    /// A regressor's targets and aggregation (`None`: a classifier).
    pub regression: Option<(usize, Aggregate)>,
    pub n_features: usize,
    binary_case: bool,
    weights_all_positive: bool,
    /// The nodes again, compact (20 bytes) for evaluation.
    compact: Vec<Compact>,
    /// The comparison every branch uses, when they all use one.
    uniform: Option<Mode>,
    /// Per node, the range of a leaf's votes in `weights`.
    spans: Vec<(u32, u32)>,
    /// Per root, the depth of every leaf when the tree has all its leaves at one depth: a walk
    /// then takes that many steps, with no test for the end.
    even_depths: Vec<Option<u32>>,
    /// The branches by feature and threshold, when every branch is an order comparison and
    /// every tree has at most 64 leaves (see [`Quick`]).
    quick: Option<Quick>,
}

/// The ensemble as QuickScorer evaluates it (Lucchese et al., SIGIR 2015): each tree's leaves
/// numbered left to right, where a branch's left child is the one its smaller values take; a
/// row's leaf in a tree is the leftmost one that no branch the row passes to the right rules
/// out. Each branch is a mask of the leaves it rules out (its left subtree's), and the branches
/// of each feature are sorted by threshold, so that a row's right-going branches of a feature
/// are a prefix of its list: scoring a row is a scan of those prefixes, ANDing masks into one
/// 64-bit word per tree, with no walk from node to node.
#[derive(Debug, Clone, PartialEq)]
struct Quick {
    /// Per feature, its branches' range in `branches` (`n_features + 1` offsets).
    offsets: Vec<u32>,
    /// By feature, then threshold, then strict comparisons before others.
    branches: Vec<QuickBranch>,
    /// Per feature, its range in `missing` (`n_features + 1` offsets).
    missing_offsets: Vec<u32>,
    /// Per feature, the (tree, mask) of the branches that send a missing value right.
    missing: Vec<(u32, u64)>,
    /// Per tree (in `roots` order), the start of its leaves in `leaves`.
    leaf_starts: Vec<u32>,
    /// The leaves' node indices, tree after tree, left to right.
    leaves: Vec<u32>,
    /// Whether branches compare strictly (`v < t` goes left), not (`v <= t`), or both occur.
    strictness: Strictness,
    /// When small enough ([`PREFIX_BYTES`]): per feature, its distinct (threshold, strict)
    /// pairs in the branches' order (`cut_offsets` gives each feature's range, `n_features + 1`
    /// offsets), and per count `k` of them (0 to all), one word per tree: the AND of the masks
    /// of the branches with the first `k` pairs. A row then finds its prefix of each feature's
    /// cuts by binary search and ANDs one row of words, whatever the prefix's length. Row
    /// `(f, k)` is row `cut_offsets[f] + f + k`.
    prefix: Option<Prefix>,
}

#[derive(Debug, Clone, PartialEq)]
struct Prefix {
    cut_offsets: Vec<u32>,
    /// (threshold, [`STRICT`] or 0).
    cuts: Vec<(f32, u32)>,
    table: Vec<u64>,
}

/// The largest table of prefix masks kept (beyond it, a row's branches are scanned).
const PREFIX_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
struct QuickBranch {
    threshold: f32,
    /// The tree's position in `roots`, with [`STRICT`] set for a strict comparison.
    tree: u32,
    /// The leaves the branch rules out for a row it sends right, as zeros.
    mask: u64,
}

const STRICT: u32 = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strictness {
    None,
    All,
    Mixed,
}

impl Quick {
    /// The layout of `nodes` (reached from `roots`), or `None` when an equality comparison, a
    /// tree of more than 64 leaves, a missing threshold or a node reached twice rules it out.
    fn build(nodes: &[Node], roots: &[usize], n_features: usize) -> Option<Quick> {
        // Per feature, (threshold, strict, tree, mask) of its branches.
        let mut by_feature: Vec<Vec<(f32, bool, u32, u64)>> = vec![vec![]; n_features];
        let mut missing: Vec<Vec<(u32, u64)>> = vec![vec![]; n_features];
        let mut leaf_starts = Vec::with_capacity(roots.len());
        let mut leaves: Vec<u32> = vec![];
        let mut seen = vec![false; nodes.len()];
        for (tree, &root) in roots.iter().enumerate() {
            let tree = u32::try_from(tree).ok().filter(|t| *t < STRICT)?;
            leaf_starts.push(u32::try_from(leaves.len()).ok()?);
            let first = leaves.len();
            // Depth first, left child first; a branch's left subtree's leaves are those numbered
            // while it is open. (node, left child done)
            let mut stack: Vec<(usize, Option<usize>)> = vec![(root, None)];
            while let Some((i, opened)) = stack.pop() {
                let node = &nodes[i];
                // (left child, right child, strict, a missing value goes right)
                let (left, right, strict, missing_right) = match node.mode {
                    Mode::Leaf => {
                        if std::mem::replace(&mut seen[i], true) {
                            return None;
                        }
                        leaves.push(u32::try_from(i).ok()?);
                        if leaves.len() - first > 64 {
                            return None;
                        }
                        continue;
                    }
                    Mode::Leq => (node.true_child, node.false_child, false, !node.missing_true),
                    Mode::Lt => (node.true_child, node.false_child, true, !node.missing_true),
                    Mode::Gte => (node.false_child, node.true_child, true, node.missing_true),
                    Mode::Gt => (node.false_child, node.true_child, false, node.missing_true),
                    Mode::Eq | Mode::Neq => return None,
                };
                match opened {
                    None => {
                        if std::mem::replace(&mut seen[i], true) || node.threshold.is_nan() {
                            return None;
                        }
                        stack.push((i, Some(leaves.len() - first)));
                        stack.push((left, None));
                    }
                    Some(lo) => {
                        let hi = leaves.len() - first;
                        let span = if hi - lo == 64 {
                            u64::MAX
                        } else {
                            ((1u64 << (hi - lo)) - 1) << lo
                        };
                        let mask = !span;
                        // -0 and 0 compare alike: one of them, so that the sort keeps ties.
                        let threshold = if node.threshold == 0.0 {
                            0.0
                        } else {
                            node.threshold
                        };
                        by_feature[node.feature].push((threshold, strict, tree, mask));
                        if missing_right {
                            missing[node.feature].push((tree, mask));
                        }
                        stack.push((right, None));
                    }
                }
            }
        }
        let mut offsets = vec![0u32];
        let mut branches = vec![];
        let (mut strict, mut loose) = (false, false);
        for mut list in by_feature {
            // Ascending thresholds, strict first among equal ones: the branches a value sends
            // right (t < v, or t == v when strict) are a prefix.
            list.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            for (threshold, s, tree, mask) in list {
                (strict, loose) = (strict | s, loose | !s);
                branches.push(QuickBranch {
                    threshold,
                    tree: tree | if s { STRICT } else { 0 },
                    mask,
                });
            }
            offsets.push(u32::try_from(branches.len()).ok()?);
        }
        let trees = roots.len();
        let mut cut_offsets = vec![0u32];
        let mut cuts: Vec<(f32, u32)> = vec![];
        for f in 0..offsets.len() - 1 {
            for b in &branches[offsets[f] as usize..offsets[f + 1] as usize] {
                let cut = (b.threshold, b.tree & STRICT);
                if cuts.len() == cut_offsets[f] as usize || cuts.last() != Some(&cut) {
                    cuts.push(cut);
                }
            }
            cut_offsets.push(u32::try_from(cuts.len()).ok()?);
        }
        let rows = cuts.len() + offsets.len() - 1;
        let prefix = (rows.saturating_mul(trees).saturating_mul(8) <= PREFIX_BYTES).then(|| {
            let mut table = Vec::with_capacity(rows * trees);
            for f in 0..offsets.len() - 1 {
                let mut words = vec![u64::MAX; trees];
                table.extend_from_slice(&words);
                let list = &branches[offsets[f] as usize..offsets[f + 1] as usize];
                for (i, b) in list.iter().enumerate() {
                    words[(b.tree & !STRICT) as usize] &= b.mask;
                    // A row per cut: after the last branch of equal threshold and strictness.
                    let next = list.get(i + 1).map(|n| (n.threshold, n.tree & STRICT));
                    if next != Some((b.threshold, b.tree & STRICT)) {
                        table.extend_from_slice(&words);
                    }
                }
            }
            Prefix {
                cut_offsets,
                cuts,
                table,
            }
        });
        let mut missing_offsets = vec![0u32];
        let mut missing_flat = vec![];
        for list in missing {
            missing_flat.extend(list);
            missing_offsets.push(u32::try_from(missing_flat.len()).ok()?);
        }
        Some(Quick {
            offsets,
            branches,
            missing_offsets,
            missing: missing_flat,
            leaf_starts,
            leaves,
            strictness: match (strict, loose) {
                (true, true) => Strictness::Mixed,
                (true, false) => Strictness::All,
                _ => Strictness::None,
            },
            prefix,
        })
    }
}

impl Eq for TreeEnsemble {}

/// A node as evaluation reads it: a branch's children by outcome (`[false, true]`), each with
/// [`LEAF_CHILD`] set when it is a leaf; a leaf points at itself both ways, flagged (its votes are
/// in `spans`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Compact {
    feature: u32,
    threshold: f32,
    next: [u32; 2],
    missing_true: bool,
    mode: Mode,
}

/// Set in a child index when the child is a leaf (and in a leaf's own self-pointers), so that a
/// walk knows a row has ended without reading the child.
const LEAF_CHILD: u32 = 1 << 31;

/// Rows evaluated together: each tree is walked for a block of rows before the next tree, so
/// the tree stays in cache.
const BLOCK: usize = 128;

/// Rows below which one thread scores everything.
const PARALLEL_ROWS: usize = 16_384;

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
    /// A regressor: its `n_targets` and `aggregate_function` (the `class_*` lists then hold
    /// the `target_*` ones).
    pub regression: Option<(usize, Aggregate)>,
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
        let n_classes = match a.regression {
            Some((targets, _)) => {
                if targets == 0 {
                    return Err("n_targets must be at least 1".into());
                }
                if !a.base_values.is_empty() && a.base_values.len() != targets {
                    return Err(format!(
                        "base_values has {} values for {targets} targets",
                        a.base_values.len()
                    ));
                }
                targets
            }
            None => a.classlabels_int64s.len(),
        };
        if a.regression.is_none() && n_classes < 2 {
            return Err("a classifier needs at least two class labels (classlabels_int64s)".into());
        }
        let post_transform = PostTransform::parse(&a.post_transform)
            .ok_or_else(|| format!("unknown post_transform `{}`", a.post_transform))?;
        if post_transform == PostTransform::Probit && a.regression.is_none() {
            return Err("a classifier's post_transform PROBIT is not supported yet".into());
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
                let leaf = votes
                    .get(&(tree, a.nodes_nodeids[i]))
                    .cloned()
                    .unwrap_or_default();
                match a.regression {
                    // One target: onnxruntime takes a leaf's first weight, or the node's value
                    // when it has none.
                    Some((1, _)) => weights.push(
                        leaf.first()
                            .map_or((0, a.nodes_values[i]), |&(_, w)| (0, w)),
                    ),
                    _ => weights.extend(leaf),
                }
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
        let small = |v: usize| match u32::try_from(v) {
            Ok(v) if v < LEAF_CHILD => Ok(v),
            _ => Err("too many nodes".to_string()),
        };
        let child = |v: usize| -> Result<u32, String> {
            let leaf = nodes[v].mode == Mode::Leaf;
            Ok(small(v)? | if leaf { LEAF_CHILD } else { 0 })
        };
        let mut compact = Vec::with_capacity(n);
        let mut spans = Vec::with_capacity(n);
        for (i, node) in nodes.iter().enumerate() {
            spans.push((small(node.weights.0)?, small(node.weights.1)?));
            compact.push(if node.mode == Mode::Leaf {
                Compact {
                    feature: 0,
                    threshold: 0.0,
                    next: [small(i)? | LEAF_CHILD; 2],
                    missing_true: false,
                    mode: Mode::Leaf,
                }
            } else {
                Compact {
                    feature: small(node.feature)?,
                    threshold: node.threshold,
                    next: [child(node.false_child)?, child(node.true_child)?],
                    missing_true: node.missing_true,
                    mode: node.mode,
                }
            });
        }
        let branch_modes: std::collections::BTreeSet<u8> = nodes
            .iter()
            .filter(|n| n.mode != Mode::Leaf)
            .map(|n| n.mode as u8)
            .collect();
        // Each tree walked once to its leaves: a cycle (a malformed model) is an error, since
        // evaluation walks until every row is at a leaf.
        let mut even_depths = Vec::with_capacity(roots.len());
        for &root in &roots {
            let mut stack = vec![(root, 0usize)];
            let (mut shallowest, mut deepest) = (usize::MAX, 0);
            while let Some((i, d)) = stack.pop() {
                if d > n {
                    return Err(format!("the tree at node {i} has a cycle"));
                }
                if nodes[i].mode == Mode::Leaf {
                    (shallowest, deepest) = (shallowest.min(d), deepest.max(d));
                } else {
                    stack.push((nodes[i].true_child, d + 1));
                    stack.push((nodes[i].false_child, d + 1));
                }
            }
            even_depths.push((shallowest == deepest).then_some(deepest as u32));
        }
        let uniform = match branch_modes.len() {
            1 => nodes.iter().find(|n| n.mode != Mode::Leaf).map(|n| n.mode),
            _ => None,
        };
        let classes_voted: std::collections::BTreeSet<usize> =
            weights.iter().map(|w| w.0).collect();
        let quick = Quick::build(&nodes, &roots, n_features);
        Ok(TreeEnsemble {
            binary_case: n_classes == 2 && classes_voted.len() == 1,
            weights_all_positive: a.class_weights.iter().all(|w| *w >= 0.0),
            nodes,
            roots,
            weights,
            base_values: a.base_values,
            post_transform,
            class_labels: a.classlabels_int64s,
            regression: a.regression,
            n_features,
            compact,
            uniform,
            quick,
            spans,
            even_depths,
        })
    }

    /// Scores per row: the classes of a classifier, the targets of a regressor.
    pub fn n_classes(&self) -> usize {
        match self.regression {
            Some((targets, _)) => targets,
            None => self.class_labels.len(),
        }
    }

    /// Adds `w` to a running score under the ensemble's aggregation.
    #[inline(always)]
    fn add(&self, acc: &mut f32, has: &mut bool, w: f32) {
        match self.regression {
            Some((_, Aggregate::Min)) => *acc = if *has { acc.min(w) } else { w },
            Some((_, Aggregate::Max)) => *acc = if *has { acc.max(w) } else { w },
            _ => *acc += w,
        }
        *has = true;
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

    /// Label and class scores for one row of features, node by node: the reference that
    /// [`TreeEnsemble::predict_rows`] is tested against.
    pub fn predict_row(&self, x: &[f32], scores_out: &mut [f32]) -> i64 {
        let c = self.n_classes();
        let mut score = vec![0f32; c];
        let mut has = vec![false; c];
        for &r in &self.roots {
            let leaf = self.leaf(r, x);
            for &(class, w) in &self.weights[leaf.weights.0..leaf.weights.1] {
                self.add(&mut score[class], &mut has[class], w);
            }
        }
        self.finish(&mut score, &mut has, scores_out)
    }

    /// Labels and class scores of the rows of `data` (`f` features each, row after row), into
    /// `labels` and `scores` (`n_classes` per row). Trees in a compact layout, walked for a
    /// block of rows at a time without branching on the outcome, on every core for large
    /// inputs; the same sums in the same order as [`TreeEnsemble::predict_row`], so the same
    /// bits.
    pub fn predict_rows(&self, data: &[f32], f: usize, labels: &mut [i64], scores: &mut [f32]) {
        let c = self.n_classes();
        let n = labels.len();
        if f == 0 {
            for (l, sc) in labels.iter_mut().zip(scores.chunks_mut(c)) {
                *l = self.predict_row(&[], sc);
            }
            return;
        }
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        if n < PARALLEL_ROWS || threads < 2 || crate::serial() {
            self.predict_serial(data, f, labels, scores);
            return;
        }
        let per = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
        std::thread::scope(|s| {
            for ((d, l), sc) in data
                .chunks(per * f)
                .zip(labels.chunks_mut(per))
                .zip(scores.chunks_mut(per * c))
            {
                s.spawn(move || self.predict_serial(d, f, l, sc));
            }
        });
    }

    fn predict_serial(&self, data: &[f32], f: usize, labels: &mut [i64], scores: &mut [f32]) {
        if let Some(q) = &self.quick {
            match q.strictness {
                Strictness::None => self.quick_rows(q, data, f, labels, scores, |t, v, _| t < v),
                Strictness::All => self.quick_rows(q, data, f, labels, scores, |t, v, _| t <= v),
                Strictness::Mixed => self.quick_rows(q, data, f, labels, scores, |t, v, tree| {
                    t < v || (t == v && tree & STRICT != 0)
                }),
            }
            return;
        }
        match self.uniform {
            Some(Mode::Leq) => self.blocks(data, f, labels, scores, |v, t| v <= t),
            Some(Mode::Lt) => self.blocks(data, f, labels, scores, |v, t| v < t),
            Some(Mode::Gte) => self.blocks(data, f, labels, scores, |v, t| v >= t),
            Some(Mode::Gt) => self.blocks(data, f, labels, scores, |v, t| v > t),
            // Mixed or equality comparisons: `blocks` decides each branch by its own mode.
            _ => self.blocks(data, f, labels, scores, |_, _| false),
        }
    }

    fn blocks(
        &self,
        data: &[f32],
        f: usize,
        labels: &mut [i64],
        scores: &mut [f32],
        cmp: impl Fn(f32, f32) -> bool + Copy,
    ) {
        let c = self.n_classes();
        let general = self.uniform.is_none()
            || matches!(self.uniform, Some(Mode::Eq | Mode::Neq | Mode::Leaf));
        let mut acc = vec![0f32; BLOCK * c];
        let mut has = vec![false; BLOCK * c];
        let mut at = [0u32; BLOCK];
        // The child (flagged when a leaf) a row at node `at` with features `x` goes to.
        let step = |at: u32, x: &[f32]| -> u32 {
            let node = &self.compact[at as usize];
            let v = x[node.feature as usize];
            let go = if general {
                general_outcome(node, v)
            } else {
                cmp(v, node.threshold) | (v.is_nan() & node.missing_true)
            };
            node.next[usize::from(go)]
        };
        for ((rows, l), sc) in data
            .chunks(BLOCK * f)
            .zip(labels.chunks_mut(BLOCK))
            .zip(scores.chunks_mut(BLOCK * c))
        {
            let m = l.len();
            acc[..m * c].fill(0.0);
            has[..m * c].fill(false);
            for (&root, &even) in self.roots.iter().zip(&self.even_depths) {
                at[..m].fill(root as u32);
                // Level by level: the rows' walks are independent, so they overlap in the CPU.
                if let Some(depth) = even {
                    // Every row reaches a leaf at the same step.
                    for _ in 0..depth {
                        for (i, x) in rows.chunks_exact(f).enumerate() {
                            at[i] = step(at[i], x) & !LEAF_CHILD;
                        }
                    }
                }
                // Otherwise a row at its leaf stays there (a leaf is its own child), and the walk
                // ends with the level where every row of the block has reached one.
                let mut live = even.is_none() && self.compact[root].mode != Mode::Leaf;
                while live {
                    let mut branches = 0u32;
                    for (i, x) in rows.chunks_exact(f).enumerate() {
                        let next = step(at[i], x);
                        at[i] = next & !LEAF_CHILD;
                        branches |= !next & LEAF_CHILD;
                    }
                    live = branches != 0;
                }
                for i in 0..m {
                    let (a, b) = self.spans[at[i] as usize];
                    for &(class, w) in &self.weights[a as usize..b as usize] {
                        self.add(&mut acc[i * c + class], &mut has[i * c + class], w);
                    }
                }
            }
            for (i, label) in l.iter_mut().enumerate() {
                let r = i * c..(i + 1) * c;
                *label = self.finish(&mut acc[r.clone()], &mut has[r.clone()], &mut sc[r]);
            }
        }
    }

    /// [`Self::blocks`] by QuickScorer's scan, a block of rows at a time: each row's leaves
    /// first, then the leaves' votes tree by tree across the block, so that the rows' sums
    /// (each in tree order) overlap in the CPU. `right(threshold, value, tree)` tells whether a
    /// (non-missing) value goes right at a branch.
    fn quick_rows(
        &self,
        q: &Quick,
        data: &[f32],
        f: usize,
        labels: &mut [i64],
        scores: &mut [f32],
        right: impl Fn(f32, f32, u32) -> bool + Copy,
    ) {
        let c = self.n_classes();
        let t = self.roots.len();
        let mut words = vec![u64::MAX; QUICK_BLOCK * t];
        let mut acc = vec![0f32; QUICK_BLOCK * c];
        let mut has = vec![false; QUICK_BLOCK * c];
        for ((rows, l), sc) in data
            .chunks(QUICK_BLOCK * f)
            .zip(labels.chunks_mut(QUICK_BLOCK))
            .zip(scores.chunks_mut(QUICK_BLOCK * c))
        {
            let m = l.len();
            words[..m * t].fill(u64::MAX);
            for (x, w) in rows.chunks_exact(f).zip(words.chunks_exact_mut(t)) {
                quick_leaves(q, x, w, right);
            }
            acc[..m * c].fill(0.0);
            has[..m * c].fill(false);
            for (tree, &start) in q.leaf_starts.iter().enumerate() {
                for i in 0..m {
                    let word = words[i * t + tree];
                    let leaf = q.leaves[start as usize + word.trailing_zeros() as usize];
                    let (a, b) = self.spans[leaf as usize];
                    for &(class, w) in &self.weights[a as usize..b as usize] {
                        self.add(&mut acc[i * c + class], &mut has[i * c + class], w);
                    }
                }
            }
            for (i, label) in l.iter_mut().enumerate() {
                let r = i * c..(i + 1) * c;
                *label = self.finish(&mut acc[r.clone()], &mut has[r.clone()], &mut sc[r]);
            }
        }
    }

    /// The label and post-transformed scores of one row's summed votes.
    fn finish(&self, score: &mut [f32], has: &mut [bool], scores_out: &mut [f32]) -> i64 {
        if let Some((targets, aggregate)) = self.regression {
            self.finish_regression(targets, aggregate, score, has, scores_out);
            return 0;
        }
        let c = self.n_classes();
        let mut len = score.len();
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
                len = 1;
            }
            let pos = if len == 2 && has[1] {
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
        write_scores(&score[..len], self.post_transform, add_second, scores_out);
        label
    }
}

impl TreeEnsemble {
    /// A regressor's values: the aggregate plus the base value; with one target only PROBIT
    /// transforms it, with several a target no leaf reached is 0 (onnxruntime's rules).
    fn finish_regression(
        &self,
        targets: usize,
        aggregate: Aggregate,
        score: &mut [f32],
        has: &mut [bool],
        out: &mut [f32],
    ) {
        let trees = self.roots.len() as f32;
        for k in 0..targets {
            let base = self.base_values.get(k).copied().unwrap_or(0.0);
            let v = score[k];
            out[k] = match (targets, aggregate, has[k]) {
                (1, Aggregate::Average, _) => v / trees + base,
                (1, Aggregate::Min | Aggregate::Max, false) => base,
                (1, _, _) => v + base,
                (_, _, false) => 0.0,
                (_, Aggregate::Average, true) => v / trees + base,
                (_, _, true) => v + base,
            };
        }
        let out = &mut out[..targets];
        match (targets, self.post_transform) {
            (1, PostTransform::Probit) => out[0] = probit(out[0]),
            (1, _) | (_, PostTransform::None) => {}
            (_, PostTransform::Probit) => out.iter_mut().for_each(|v| *v = probit(*v)),
            (_, PostTransform::Logistic) => out.iter_mut().for_each(|v| *v = logistic(*v)),
            (_, t) => {
                let zero = t == PostTransform::SoftmaxZero;
                let max = out.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0f32;
                for v in out.iter_mut() {
                    if zero && v.abs() <= 1e-7 {
                        *v = 0.0;
                    } else {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                }
                out.iter_mut().for_each(|v| *v /= sum);
            }
        }
    }
}

/// Rows QuickScorer takes together.
const QUICK_BLOCK: usize = 32;

/// One row's leaf words (`words`, one per tree, all ones on entry) under QuickScorer's layout.
#[inline(always)]
fn quick_leaves(q: &Quick, x: &[f32], words: &mut [u64], right: impl Fn(f32, f32, u32) -> bool) {
    let features = q.offsets.len() - 1;
    for (feature, &v) in x.iter().enumerate().take(features) {
        if v.is_nan() {
            let (a, b) = (q.missing_offsets[feature], q.missing_offsets[feature + 1]);
            for &(tree, mask) in &q.missing[a as usize..b as usize] {
                words[tree as usize] &= mask;
            }
            continue;
        }
        match &q.prefix {
            Some(p) => {
                let (a, b) = (
                    p.cut_offsets[feature] as usize,
                    p.cut_offsets[feature + 1] as usize,
                );
                let k = p.cuts[a..b].partition_point(|&(t, strict)| right(t, v, strict));
                if k > 0 {
                    let row = (a + feature + k) * words.len();
                    for (w, m) in words.iter_mut().zip(&p.table[row..]) {
                        *w &= m;
                    }
                }
            }
            None => {
                let (a, b) = (q.offsets[feature] as usize, q.offsets[feature + 1] as usize);
                for branch in &q.branches[a..b] {
                    if !right(branch.threshold, v, branch.tree) {
                        break;
                    }
                    words[(branch.tree & !STRICT) as usize] &= branch.mask;
                }
            }
        }
    }
}

/// A branch's outcome under any comparison (missing values follow `missing_true`, and are
/// unequal to every threshold).
#[inline(always)]
fn general_outcome(node: &Compact, v: f32) -> bool {
    let t = node.threshold;
    if v.is_nan() {
        return node.missing_true || node.mode == Mode::Neq;
    }
    match node.mode {
        Mode::Leq => v <= t,
        Mode::Lt => v < t,
        Mode::Gte => v >= t,
        Mode::Gt => v > t,
        Mode::Eq => v == t,
        Mode::Neq => v != t,
        Mode::Leaf => false,
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

/// onnxruntime's inverse error function (Winitzki's approximation, a = 0.147), in f32.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    sgn * (-v + (v * v - v2).sqrt()).sqrt()
}

/// The PROBIT post transform: the normal quantile of `v`, as onnxruntime approximates it.
pub(crate) fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

/// onnxruntime's vectorized logistic (MLAS: a rational approximation on [-18, 18]), which the
/// linear and SVM classifiers apply to rows of several scores.
pub(crate) fn mlas_logistic(v: f32) -> f32 {
    // MLAS's coefficients (as decimals of the f32 values).
    #[allow(clippy::excessive_precision)]
    const A: [f32; 5] = [
        4.370_310_125_798_01e-11,
        1.156_273_244_599_42e-7,
        6.085_748_646_001_43e-5,
        8.513_771_333_047_01e-3,
        2.482_879_470_615_29e-1,
    ];
    #[allow(clippy::excessive_precision)]
    const B: [f32; 6] = [
        6.102_473_897_556_81e-13,
        5.761_021_369_934_27e-9,
        6.291_067_850_170_40e-6,
        1.701_988_173_740_94e-3,
        1.168_176_569_044_53e-1,
        9.931_519_210_231_80e-1,
    ];
    // NaN stays NaN (clamp and the arithmetic carry it; the final comparison keeps it).
    let x = v.clamp(-18.0, 18.0);
    let x2 = x * x;
    let mut p = crate::ml::fma(x2, A[0], A[1]);
    p = crate::ml::fma(p, x2, A[2]);
    p = crate::ml::fma(p, x2, A[3]);
    p = crate::ml::fma(p, x2, A[4]);
    p *= x;
    let mut q = crate::ml::fma(x2, B[0], B[1]);
    q = crate::ml::fma(q, x2, B[2]);
    q = crate::ml::fma(q, x2, B[3]);
    q = crate::ml::fma(q, x2, B[4]);
    q = crate::ml::fma(q, x2, B[5]);
    let r = p / q + 0.5;
    if r < 0.0 { 0.0 } else { r }
}

/// The post transform of a row of several scores, as onnxruntime's linear and SVM operators
/// apply it (`batched_update_scores_inplace`).
pub(crate) fn transform_scores(row: &mut [f32], t: PostTransform) {
    match t {
        PostTransform::None => {}
        PostTransform::Probit => row.iter_mut().for_each(|v| *v = probit(*v)),
        PostTransform::Logistic => row.iter_mut().for_each(|v| *v = mlas_logistic(*v)),
        PostTransform::Softmax | PostTransform::SoftmaxZero => {
            let zero = t == PostTransform::SoftmaxZero;
            let mut max = f32::MIN;
            for &v in row.iter() {
                if v > max {
                    max = v;
                }
            }
            let mut sum = 0f32;
            for v in row.iter_mut() {
                if zero && v.abs() <= 1e-7 {
                    *v *= (-max).exp();
                } else {
                    *v = (*v - max).exp();
                    sum += *v;
                }
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::Rng;

    /// Values on a small grid, so that rows often equal thresholds; NaN now and then.
    fn value(r: &mut Rng) -> f32 {
        match r.below(14) {
            0 => f32::NAN,
            12 => -0.0,
            13 => [f32::INFINITY, f32::NEG_INFINITY][r.below(2) as usize],
            k => (k as f32 - 6.0) * 0.5,
        }
    }

    /// A random subtree of at most `depth` levels, leaves anywhere (ids in preorder).
    #[allow(clippy::too_many_arguments)]
    fn grow(
        a: &mut Attributes,
        r: &mut Rng,
        tree: i64,
        depth: u32,
        next_id: &mut i64,
        mode: &dyn Fn(&mut Rng) -> &'static str,
        features: i64,
        n_classes: usize,
        one_class: bool,
        full: bool,
    ) -> i64 {
        let id = *next_id;
        *next_id += 1;
        let i = a.nodes_nodeids.len();
        a.nodes_treeids.push(tree);
        a.nodes_nodeids.push(id);
        a.nodes_missing_value_tracks_true.push(r.below(2) as i64);
        if depth == 0 || (!full && r.below(4) == 0) {
            a.nodes_modes.push("LEAF".into());
            a.nodes_featureids.push(0);
            a.nodes_values.push(0.0);
            a.nodes_truenodeids.push(0);
            a.nodes_falsenodeids.push(0);
            for class in 0..n_classes {
                if (one_class && class == 0) || (!one_class && r.below(3) > 0) {
                    a.class_treeids.push(tree);
                    a.class_nodeids.push(id);
                    a.class_ids.push(class as i64);
                    a.class_weights.push((r.below(200) as f32 - 80.0) / 97.0);
                }
            }
            return id;
        }
        a.nodes_modes.push(mode(r).into());
        a.nodes_featureids.push(r.below(features as u64) as i64);
        let threshold = (r.below(9) as f32 - 4.0) * 0.5;
        a.nodes_values.push(match r.below(2) {
            0 if threshold == 0.0 => -0.0,
            _ => threshold,
        });
        a.nodes_truenodeids.push(0);
        a.nodes_falsenodeids.push(0);
        let t = grow(
            a,
            r,
            tree,
            depth - 1,
            next_id,
            mode,
            features,
            n_classes,
            one_class,
            full,
        );
        let f = grow(
            a,
            r,
            tree,
            depth - 1,
            next_id,
            mode,
            features,
            n_classes,
            one_class,
            full,
        );
        a.nodes_truenodeids[i] = t;
        a.nodes_falsenodeids[i] = f;
        id
    }

    /// A random ensemble of unbalanced trees, or of trees with every leaf at one depth.
    fn ensemble(r: &mut Rng) -> TreeEnsemble {
        let modes = [
            "BRANCH_LEQ",
            "BRANCH_LT",
            "BRANCH_GTE",
            "BRANCH_GT",
            "BRANCH_EQ",
            "BRANCH_NEQ",
        ];
        // One comparison for every branch, any of them, or any but the equalities.
        let variety = r.below(3);
        let mode0 = modes[r.below(6) as usize];
        let n_classes = 2 + r.below(2) as usize;
        let one_class = n_classes == 2 && r.below(2) == 0;
        let features = 1 + r.below(6) as i64;
        let full = r.below(3) == 0;
        let mut a = Attributes {
            classlabels_int64s: (0..n_classes as i64).map(|c| c * 10).collect(),
            post_transform: ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"][r.below(4) as usize]
                .into(),
            ..Attributes::default()
        };
        a.base_values = (0..[0, 1, 2, n_classes][r.below(4) as usize])
            .map(|_| value(r).max(-1.0))
            .collect();
        for tree in 0..1 + r.below(20) as i64 {
            // Up to 128 leaves: QuickScorer's layout takes trees of 64 at most.
            let depth = 1 + r.below(7) as u32;
            let mut next_id = 0;
            grow(
                &mut a,
                r,
                tree,
                depth,
                &mut next_id,
                &|r: &mut Rng| match variety {
                    0 => mode0,
                    1 => modes[r.below(6) as usize],
                    _ => modes[r.below(4) as usize],
                },
                features,
                n_classes,
                one_class,
                full,
            );
        }
        TreeEnsemble::build(a).expect("valid ensemble")
    }

    #[test]
    fn blocked_parallel_scoring_equals_the_row_by_row_reference_bit_for_bit() {
        let mut r = Rng(0x5eed_1234_abcd_ef01);
        let mut quick = 0;
        for case in 0..400 {
            let mut e = ensemble(&mut r);
            quick += usize::from(e.quick.is_some());
            // Every other ensemble QuickScorer scores by scanning, not by its prefix table.
            if case % 2 == 1
                && let Some(q) = &mut e.quick
            {
                assert!(q.prefix.is_some());
                q.prefix = None;
            }
            let f = e.n_features + r.below(2) as usize;
            let n = [1, 5, 127, 128, 129, 300, 20_000][r.below(7) as usize];
            let data: Vec<f32> = (0..n * f).map(|_| value(&mut r)).collect();
            let c = e.n_classes();
            let mut labels = vec![0i64; n];
            let mut scores = vec![0f32; n * c];
            e.predict_rows(&data, f, &mut labels, &mut scores);
            for i in 0..n {
                let mut want = vec![0f32; c];
                let label = e.predict_row(&data[i * f..(i + 1) * f], &mut want);
                assert_eq!(labels[i], label, "case {case}, row {i}");
                let got: Vec<u32> = scores[i * c..(i + 1) * c]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "case {case}, row {i}");
            }
        }
        // Both evaluations are exercised.
        assert!(
            (100..300).contains(&quick),
            "{quick} of 400 ensembles scored by QuickScorer"
        );
    }
}
