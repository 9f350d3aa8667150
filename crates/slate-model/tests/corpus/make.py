"""Builds the model conformance corpus that `crates/slate-model/tests/corpus.rs` checks.

Trains the models a fraud team commonly exports (scikit-learn estimators and pipelines, XGBoost,
LightGBM; classifiers, binary and multiclass, and regressors) on generated data, exports each to
ONNX, and stores onnxruntime's outputs (one thread) on 1,000 test rows that include NaN, +-inf,
zeros, signed zeros, denormals and extremes. CI checks every model without Python.

    python -m venv .venv && .venv/bin/pip install -r crates/slate-model/tests/corpus/requirements.txt
    .venv/bin/python crates/slate-model/tests/corpus/make.py

Files, in this directory: `inputs.json` (the test rows, shared by every model), and per model
`<name>.onnx` and `<name>.json` (which input tensor takes which columns, onnxruntime's outputs).
Floats are written as strings, numpy's shortest round-trip form of the float32 value ("NaN",
"inf" and "-inf" included), so that they parse to the same bits.
"""

import json
import math
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    Binarizer,
    Normalizer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)
from sklearn.svm import SVC, SVR, LinearSVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

def _int_flags(make):
    """skl2onnx 1.20 passes HistGradientBoosting's missing-value directions as numpy booleans,
    which onnx 1.23 refuses in an integer list: give it integers."""

    def wrapped(key, value, *args, **kwargs):
        if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (bool, np.bool_, int, np.integer)) for v in value
        ) and any(isinstance(v, (bool, np.bool_)) for v in value):
            value = [int(v) for v in value]
        return make(key, value, *args, **kwargs)

    return wrapped


helper.make_attribute = _int_flags(helper.make_attribute)

HERE = os.path.dirname(os.path.abspath(__file__))
F = 8
CATEGORIES = ["grocery", "travel", "online", "fuel", "dining", "atm"]
ML_OPSET = 3
OPSET = 17
# onnxmltools 1.16 converts up to opset 15.
ML_TOOLS_OPSET = 15


def data(rng, n, nan_share):
    """Features shaped like the fraud example's (amounts, counts, seconds), targets from them."""
    x = np.empty((n, F), dtype=np.float32)
    x[:, 0] = rng.lognormal(3.5, 1.2, n)  # amount
    x[:, 1] = rng.exponential(40_000.0, n)  # seconds since the last transaction
    for j in range(2, F):
        x[:, j] = rng.poisson(2 + 4 * j, n)  # counts over windows
    cat = rng.choice(CATEGORIES, n)
    risk = (
        0.8 * np.log1p(x[:, 0])
        - 0.00002 * x[:, 1]
        + 0.15 * x[:, 2]
        - 0.05 * x[:, 5]
        + np.where(cat == "online", 1.5, 0.0)
        + np.where(cat == "atm", 0.7, 0.0)
    )
    risk = risk + rng.normal(0, 0.8, n)
    y2 = (risk > np.quantile(risk, 0.85)).astype(np.int64)
    y3 = np.digitize(risk, np.quantile(risk, [0.5, 0.85])).astype(np.int64)
    yr = (risk * 10.0).astype(np.float32)
    if nan_share > 0:
        x[rng.random((n, F)) < nan_share] = np.nan
    return x, cat, y2, y3, yr


def test_rows(rng):
    """1,000 rows: ordinary ones, then every kind of edge value."""
    x, cat, _, _, _ = data(rng, 1000, 0.04)
    specials = [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        1e30,
        -1e30,
        3.4e38,
        -3.4e38,
        1e-40,
        -1e-40,
        1e-7,
        -1.0,
        0.5,
    ]
    for i in range(800, 1000):
        k = rng.integers(1, 4)
        for j in rng.choice(F, size=k, replace=False):
            x[i, j] = np.float32(specials[rng.integers(len(specials))])
    x[990, :] = np.nan
    x[991, :] = 0.0
    x[992, :] = np.inf
    x[993, :] = -np.inf
    x[994, :] = 1e30
    cat = cat.astype(object)
    for i in range(950, 1000, 7):
        cat[i] = ["", "unknown", "GROCERY", "zzz"][i % 4]
    return x, cat


def f32(v):
    v = float(np.float32(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(np.float32(v))


def encode(a):
    a = np.asarray(a)
    if a.dtype.kind in "OUS":
        return {"type": "string", "shape": list(a.shape), "data": [str(v) for v in a.ravel()]}
    if a.dtype.kind in "iu":
        return {"type": "int64", "shape": list(a.shape), "data": [int(v) for v in a.ravel()]}
    if a.dtype.kind == "b":
        return {"type": "bool", "shape": list(a.shape), "data": [bool(v) for v in a.ravel()]}
    return {"type": "float", "shape": list(a.shape), "data": [f32(v) for v in a.ravel()]}


def numeric_types():
    return [("input", FloatTensorType([None, F]))]


def mixed_types():
    return [("num", FloatTensorType([None, F])), ("cat", StringTensorType([None, 1]))]


def export(name, model, types, feeds, x_test, cat_test, options=None, ml_opset=ML_OPSET):
    opts = options if options is not None else {id(model): {"zipmap": False}}
    onx = to_onnx(
        model,
        initial_types=types,
        options=opts,
        target_opset={"": OPSET, "ai.onnx.ml": ml_opset},
    )
    save(name, onx, feeds, x_test, cat_test)


def save(name, onx, feeds, x_test, cat_test):
    """Runs `onx` on the test rows with onnxruntime (one thread) and writes model and outputs."""
    path = os.path.join(HERE, f"{name}.onnx")
    onnx.save_model(onx, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    columns = {"num": x_test, "cat": cat_test.reshape(-1, 1)}
    run_feeds = {}
    for inp in sess.get_inputs():
        src = feeds[inp.name]
        a = columns[src]
        if inp.type == "tensor(string)":
            a = np.asarray(a, dtype=object)
        run_feeds[inp.name] = a
    outs = sess.run(None, run_feeds)
    record = {
        "model": f"{name}.onnx",
        "feeds": feeds,
        "outputs": [
            dict(name=o.name, **encode(v)) for o, v in zip(sess.get_outputs(), outs)
        ],
    }
    with open(os.path.join(HERE, f"{name}.json"), "w") as f:
        json.dump(record, f, separators=(",", ":"))
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in onx.graph.node})
    print(f"{name}: {', '.join(o for _, o in ops)}", file=sys.stderr)


def tree_ensemble_v5(name, regressor_onnx, x_test, cat_test):
    """The opset-5 `TreeEnsemble` form of a TreeEnsembleRegressor export, with its first tree's
    root turned into a set-membership split (BRANCH_MEMBER) on feature 2."""
    g = regressor_onnx.graph
    node = next(n for n in g.node if n.op_type == "TreeEnsembleRegressor")
    a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
    tree_ids = list(a["nodes_treeids"])
    node_ids = list(a["nodes_nodeids"])
    modes = [m.decode() if isinstance(m, bytes) else m for m in a["nodes_modes"]]
    index = {(t, i): k for k, (t, i) in enumerate(zip(tree_ids, node_ids))}
    leaf_of = {}
    leaf_targets, leaf_weights = [], []
    for t, i, target, w in zip(
        a["target_treeids"], a["target_nodeids"], a["target_ids"], a["target_weights"]
    ):
        leaf_of[(t, i)] = len(leaf_targets)
        leaf_targets.append(target)
        leaf_weights.append(w)
    # Interior nodes renumbered densely; children are either interior indices or leaf indices.
    interior = [k for k, m in enumerate(modes) if m != "LEAF"]
    position = {k: p for p, k in enumerate(interior)}
    mode_code = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
    n_modes, n_feat, n_split, t_ids, t_leaf, f_ids, f_leaf, missing = [], [], [], [], [], [], [], []
    mtt = list(a.get("nodes_missing_value_tracks_true", [0] * len(modes)))
    roots = []
    for p, k in enumerate(interior):
        t = tree_ids[k]
        if node_ids[k] == 0:
            roots.append(p)
        n_modes.append(mode_code[modes[k]])
        n_feat.append(a["nodes_featureids"][k])
        n_split.append(a["nodes_values"][k])
        for child, ids, leafs in (
            (a["nodes_truenodeids"][k], t_ids, t_leaf),
            (a["nodes_falsenodeids"][k], f_ids, f_leaf),
        ):
            c = index[(t, child)]
            if modes[c] == "LEAF":
                ids.append(leaf_of[(t, child)])
                leafs.append(1)
            else:
                ids.append(position[c])
                leafs.append(0)
        missing.append(mtt[k])
    # A set-membership split at the first tree's root: true when feature 2 is one of these counts.
    r = roots[0]
    n_modes[r] = 6
    n_feat[r] = 2
    n_split[r] = 0.0
    # membership_values: the members of each BRANCH_MEMBER node in node order, NaN-separated.
    members = [4.0, 5.0, 9.0]
    n_out = a.get("n_targets", 1)
    agg = a.get("aggregate_function", b"SUM")
    agg = agg.decode() if isinstance(agg, bytes) else agg
    post = a.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else post
    agg_code = {"AVERAGE": 0, "SUM": 1, "MIN": 2, "MAX": 3}[agg]
    post_code = {"NONE": 0, "SOFTMAX": 1, "LOGISTIC": 2, "SOFTMAX_ZERO": 3, "PROBIT": 4}[post]
    te = helper.make_node(
        "TreeEnsemble",
        inputs=[node.input[0]],
        outputs=[node.output[0]],
        domain="ai.onnx.ml",
        n_targets=n_out,
        aggregate_function=agg_code,
        post_transform=post_code,
        tree_roots=roots,
        nodes_modes=numpy_helper.from_array(np.array(n_modes, dtype=np.uint8)),
        nodes_featureids=n_feat,
        nodes_splits=numpy_helper.from_array(np.array(n_split, dtype=np.float32)),
        nodes_truenodeids=t_ids,
        nodes_trueleafs=t_leaf,
        nodes_falsenodeids=f_ids,
        nodes_falseleafs=f_leaf,
        nodes_missing_value_tracks_true=missing,
        membership_values=numpy_helper.from_array(np.array(members, dtype=np.float32)),
        leaf_targetids=leaf_targets,
        leaf_weights=numpy_helper.from_array(np.array(leaf_weights, dtype=np.float32)),
    )
    base = a.get("base_values")
    nodes = [te]
    out = node.output[0]
    if base:
        te.output[0] = out + "_raw"
        bias = numpy_helper.from_array(np.array(base, dtype=np.float32), name="base_values")
        g.initializer.append(bias)
        nodes.append(helper.make_node("Add", [out + "_raw", "base_values"], [out]))
    others = [n for n in g.node if n is not node]
    del g.node[:]
    g.node.extend(nodes + others)
    ops = [o for o in regressor_onnx.opset_import if o.domain == "ai.onnx.ml"]
    for o in ops:
        o.version = 5
    save(name, regressor_onnx, {"input": "num"}, x_test, cat_test)


def main():
    rng = np.random.default_rng(20261205)
    x, cat, y2, y3, yr = data(rng, 6000, 0.0)
    xn, catn, y2n, y3n, yrn = data(rng, 6000, 0.05)
    x_test, cat_test = test_rows(rng)
    with open(os.path.join(HERE, "inputs.json"), "w") as f:
        json.dump(
            {"num": encode(x_test), "cat": encode(cat_test.astype(str).reshape(-1, 1))},
            f,
            separators=(",", ":"),
        )
    num = {"input": "num"}

    def imputed(est):
        return Pipeline(
            [("impute", SimpleImputer()), ("scale", StandardScaler()), ("model", est)]
        )

    for suffix, y, yn in (("binary", y2, y2n), ("multiclass", y3, y3n)):
        estimators = {
            "decision_tree": DecisionTreeClassifier(max_depth=6, random_state=0),
            "random_forest": RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
            "extra_trees": ExtraTreesClassifier(n_estimators=15, max_depth=6, random_state=0),
            "gradient_boosting": GradientBoostingClassifier(
                n_estimators=25, max_depth=3, random_state=0
            ),
        }
        for name, est in estimators.items():
            est.fit(x, y)
            export(f"{name}_{suffix}", est, numeric_types(), num, x_test, cat_test)
        hgb = HistGradientBoostingClassifier(max_iter=25, max_depth=5, random_state=0)
        hgb.fit(xn, yn)
        export(f"hist_gradient_boosting_{suffix}", hgb, numeric_types(), num, x_test, cat_test)
        pipelines = {
            "logistic_regression": LogisticRegression(max_iter=500),
            "mlp": MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=0),
            "svc": SVC(probability=True, random_state=0),
        }
        for name, est in pipelines.items():
            pipe = imputed(est)
            fit_rows = 1500 if name == "svc" else len(xn)
            pipe.fit(xn[:fit_rows], yn[:fit_rows])
            export(
                f"{name}_{suffix}",
                pipe,
                numeric_types(),
                num,
                x_test,
                cat_test,
                options={id(est): {"zipmap": False}},
            )
        # skl2onnx 1.20 fails on LinearSVC at the end of a pipeline: exported alone.
        svm = LinearSVC(random_state=0).fit(x / np.float32(1000.0), y)
        export(f"linear_svc_{suffix}", svm, numeric_types(), num, x_test, cat_test, options={})
        pipe = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median")),
                ("normalize", Normalizer(norm="l2")),
                ("model", LogisticRegression(max_iter=500)),
            ]
        )
        pipe.fit(xn, yn)
        export(f"normalizer_logistic_{suffix}", pipe, numeric_types(), num, x_test, cat_test,
               options={id(pipe.steps[-1][1]): {"zipmap": False}})
        pipe = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value=-1.0)),
                ("binarize", Binarizer(threshold=5.0)),
                ("model", LogisticRegression(max_iter=500)),
            ]
        )
        pipe.fit(xn, yn)
        export(f"binarizer_logistic_{suffix}", pipe, numeric_types(), num, x_test, cat_test,
               options={id(pipe.steps[-1][1]): {"zipmap": False}})

    # Regressors.
    regressors = {
        "decision_tree_regressor": DecisionTreeRegressor(max_depth=6, random_state=0),
        "random_forest_regressor": RandomForestRegressor(n_estimators=15, max_depth=6, random_state=0),
        "gradient_boosting_regressor": GradientBoostingRegressor(
            n_estimators=25, max_depth=3, random_state=0
        ),
    }
    for name, est in regressors.items():
        est.fit(x, yr)
        export(name, est, numeric_types(), num, x_test, cat_test, options={})
    hgbr = HistGradientBoostingRegressor(max_iter=25, max_depth=5, random_state=0)
    hgbr.fit(xn, yrn)
    export("hist_gradient_boosting_regressor", hgbr, numeric_types(), num, x_test, cat_test, options={})
    for name, est in {
        "linear_regression": LinearRegression(),
        "ridge": Ridge(alpha=2.0),
        "svr": SVR(),
        "mlp_regressor": MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
    }.items():
        pipe = imputed(est)
        fit_rows = 1500 if name == "svr" else len(xn)
        pipe.fit(xn[:fit_rows], yrn[:fit_rows])
        export(name, pipe, numeric_types(), num, x_test, cat_test, options={})

    # The opset-5 TreeEnsemble, with a set-membership split.
    gbr = GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0).fit(x, yr)
    onx = to_onnx(gbr, initial_types=numeric_types(), target_opset={"": OPSET, "ai.onnx.ml": 3})
    tree_ensemble_v5("tree_ensemble_v5_regressor", onx, x_test, cat_test)

    # XGBoost and LightGBM, through onnxmltools.
    import lightgbm
    import xgboost
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

    for suffix, y, yn in (("binary", y2, y2n), ("multiclass", y3, y3n)):
        xgb = xgboost.XGBClassifier(n_estimators=25, max_depth=4, random_state=0)
        xgb.fit(xn, yn)
        onx = convert_xgboost(xgb, initial_types=[("input", MlFloat([None, F]))], target_opset=ML_TOOLS_OPSET)
        save(f"xgboost_{suffix}", strip_zipmap(onx), num, x_test, cat_test)
        lgb = lightgbm.LGBMClassifier(n_estimators=60, num_leaves=15, random_state=0, verbose=-1)
        lgb.fit(xn, yn)
        onx = convert_lightgbm(
            lgb, initial_types=[("input", MlFloat([None, F]))], target_opset=ML_TOOLS_OPSET, zipmap=False
        )
        save(f"lightgbm_{suffix}", onx, num, x_test, cat_test)
    xgbr = xgboost.XGBRegressor(n_estimators=25, max_depth=4, random_state=0).fit(xn, yrn)
    onx = convert_xgboost(xgbr, initial_types=[("input", MlFloat([None, F]))], target_opset=ML_TOOLS_OPSET)
    save("xgboost_regressor", onx, num, x_test, cat_test)
    lgbr = lightgbm.LGBMRegressor(n_estimators=60, num_leaves=15, random_state=0, verbose=-1)
    lgbr.fit(xn, yrn)
    onx = convert_lightgbm(lgbr, initial_types=[("input", MlFloat([None, F]))], target_opset=ML_TOOLS_OPSET)
    save("lightgbm_regressor", onx, num, x_test, cat_test)

    # String inputs: a category one-hot encoded or ordinal-encoded beside the numeric features.
    mixed = {"num": "num", "cat": "cat"}
    cat2 = catn.reshape(-1, 1)
    import pandas as pd  # noqa: F401  (skl2onnx's ColumnTransformer converter needs it)

    def frame(xv, cv):
        d = {f"f{j}": xv[:, j] for j in range(F)}
        d["cat"] = cv
        return pd.DataFrame(d)

    numeric_cols = [f"f{j}" for j in range(F)]
    for name, enc, est in (
        (
            "onehot_logistic",
            OneHotEncoder(handle_unknown="ignore"),
            LogisticRegression(max_iter=500),
        ),
        (
            "ordinal_random_forest",
            OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
            RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0),
        ),
    ):
        pre = ColumnTransformer(
            [
                ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric_cols),
                ("cat", enc, ["cat"]),
            ]
        )
        pipe = Pipeline([("pre", pre), ("model", est)])
        pipe.fit(frame(xn, catn), y2n)
        onx = to_onnx(
            pipe,
            initial_types=[(c, FloatTensorType([None, 1])) for c in numeric_cols]
            + [("cat", StringTensorType([None, 1]))],
            options={id(est): {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
        # One float input of width 8 instead of eight of width 1: what a feature engine feeds.
        onx = merge_numeric_inputs(onx, numeric_cols)
        save(name, onx, mixed, x_test, cat_test)

    # Operators no converter above emits, in a graph written by hand: CategoryMapper and
    # FeatureVectorizer feeding a linear regressor (ONNX-ML types bind FeatureVectorizer's inputs
    # to one type, so the codes are cast to float first).
    hand_made(x_test, cat_test)
    # A classifier that still ends in ZipMap: Slate refuses it, naming the converter option.
    lr = LogisticRegression(max_iter=500).fit(x / np.float32(1000.0), y2)
    onx = to_onnx(lr, initial_types=numeric_types(), target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    onnx.save_model(onx, os.path.join(HERE, "refused_zipmap.onnx"))
    # An operator of a domain nobody implements: Slate names it with its domain and opset.
    t = onnx.TensorProto
    graph = helper.make_graph(
        [helper.make_node("FraudMagic", ["input"], ["score"], domain="com.example")],
        "unsupported",
        [helper.make_tensor_value_info("input", t.FLOAT, [None, F])],
        [helper.make_tensor_value_info("score", t.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 2)],
    )
    onnx.save_model(model, os.path.join(HERE, "refused_unsupported.onnx"))
    print("done", file=sys.stderr)


def hand_made(x_test, cat_test):
    t = onnx.TensorProto
    nodes = [
        helper.make_node(
            "CategoryMapper",
            ["cat"],
            ["cat_code"],
            domain="ai.onnx.ml",
            cats_strings=CATEGORIES,
            cats_int64s=[3, 1, 4, 1, 5, 9],
            default_int64=-7,
        ),
        helper.make_node("Cast", ["cat_code"], ["cat_float"], to=t.FLOAT),
        helper.make_node(
            "FeatureVectorizer",
            ["num", "cat_float"],
            ["features"],
            domain="ai.onnx.ml",
            inputdimensions=[F, 1],
        ),
        helper.make_node(
            "LinearRegressor",
            ["features"],
            ["variable"],
            domain="ai.onnx.ml",
            coefficients=[0.01, -0.0001, 0.3, 0.2, -0.1, 0.05, 0.0, 1.5, 0.75],
            intercepts=[2.5],
            targets=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "hand_made",
        [
            helper.make_tensor_value_info("num", t.FLOAT, [None, F]),
            helper.make_tensor_value_info("cat", t.STRING, [None, 1]),
        ],
        [helper.make_tensor_value_info("variable", t.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    save("category_mapper_feature_vectorizer", model, {"num": "num", "cat": "cat"}, x_test, cat_test)


def strip_zipmap(onx):
    """Drops a trailing ZipMap, keeping the probabilities tensor as the output."""
    g = onx.graph
    zipmaps = [n for n in g.node if n.op_type == "ZipMap"]
    if not zipmaps:
        return onx
    for z in zipmaps:
        out = z.output[0]
        for o in g.output:
            if o.name == out:
                o.CopyFrom(
                    helper.make_tensor_value_info(z.input[0], onnx.TensorProto.FLOAT, [None, None])
                )
        g.node.remove(z)
    return onx


def merge_numeric_inputs(onx, cols):
    """Replaces the per-column float inputs by one `num` input [N, len(cols)] and Split."""
    g = onx.graph
    keep = [i for i in g.input if i.name not in cols]
    del g.input[:]
    g.input.extend(
        [helper.make_tensor_value_info("num", onnx.TensorProto.FLOAT, [None, len(cols)])] + keep
    )
    split = numpy_helper.from_array(np.ones(len(cols), dtype=np.int64), name="num_split")
    g.initializer.append(split)
    node = helper.make_node("Split", ["num", "num_split"], list(cols), axis=1)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend([node] + nodes)
    return onx


if __name__ == "__main__":
    main()
