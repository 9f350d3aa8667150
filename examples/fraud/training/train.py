"""Train the fraud example's model and record onnxruntime's outputs as a test fixture.

    python -m venv .venv && .venv/bin/pip install -r examples/fraud/training/requirements.txt
    cargo run -p fraud-example --bin fraud-data      # the warehouse, if absent
    .venv/bin/python examples/fraud/training/train.py

Writes examples/fraud/models/fraud_model.onnx (a HistGradientBoostingClassifier exported by
skl2onnx: float32 input of 8 features, ai.onnx.ml TreeEnsembleClassifier, zipmap off) and
examples/fraud/tests/fixtures/onnxruntime_outputs.json.
"""

import json
import pathlib

import duckdb
import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

HERE = pathlib.Path(__file__).resolve().parent
PROJECT = HERE.parent
WAREHOUSE = PROJECT / "data" / "warehouse"
DAY_US = 86_400 * 1_000_000
START_US = 1_788_220_800 * 1_000_000  # 2026-09-01T00:00:00Z, first generated day

# The seed's four-row input to test_batch_prediction: amount, time since last (s; NaN = none),
# transactions in 1d/10d/30d, distinct merchants in 1d/10d/30d.
SEED_ROWS = [
    [25.5, 86_400.0, 1, 5, 20, 1, 4, 9],
    [980.0, 45.0, 6, 9, 22, 6, 7, 10],
    [12.0, float("nan"), 0, 0, 0, 0, 0, 0],
    [3_400.0, 600.0, 3, 3, 3, 3, 3, 3],
]


def features():
    sql = (HERE / "features.sql").read_text().replace("{warehouse}", str(WAREHOUSE))
    cols = duckdb.sql(sql).fetchnumpy()
    since = cols["since_us"]
    since = np.where(np.ma.getmaskarray(since), np.nan, np.ma.filled(since.astype(np.float64), np.nan) / 1e6)
    x = np.column_stack(
        [cols["amount"], since] + [cols[c].astype(np.float64) for c in ("n1", "n10", "n30", "d1", "d10", "d30")]
    ).astype(np.float32)
    return cols["id"], x, cols["is_fraud"].astype(np.int64), cols["ts_us"]


def main():
    ids, x, y, ts = features()
    train = ts < START_US + 45 * DAY_US
    model = HistGradientBoostingClassifier(max_iter=120, learning_rate=0.1, max_leaf_nodes=31, random_state=0)
    model.fit(x[train], y[train])
    p = model.predict_proba(x[~train])[:, 1]
    print(f"rows {len(y)}, fraud rate {y.mean():.4f}, null time-since {np.isnan(x[:, 1]).mean():.4f}")
    print(f"holdout ROC AUC {roc_auc_score(y[~train], p):.4f}, average precision {average_precision_score(y[~train], p):.4f}")

    onx = to_onnx(
        model,
        x[:1],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    out = PROJECT / "models" / "fraud_model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onx.SerializeToString())

    # Fixture: the seed's rows, then 300 holdout rows: the first 100 with no previous
    # transaction (NaN input), 100 fraud, 100 at random.
    rng = np.random.default_rng(7)
    test_idx = np.flatnonzero(~train)
    nan_rows = test_idx[np.isnan(x[test_idx, 1])][:100]
    if len(nan_rows) < 100:
        nan_rows = np.flatnonzero(np.isnan(x[:, 1]))[:100]
    fraud_rows = test_idx[y[test_idx] == 1][:100]
    random_rows = rng.choice(test_idx, 100, replace=False)
    rows = np.vstack([np.array(SEED_ROWS, dtype=np.float32), x[np.concatenate([nan_rows, fraud_rows, random_rows])]])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    labels, probs = sess.run(None, {name: rows})
    fixture = {
        "model_sha256": __import__("hashlib").sha256(out.read_bytes()).hexdigest(),
        "onnxruntime": ort.__version__,
        "inputs": [[None if np.isnan(v) else float(v) for v in r] for r in rows],
        "labels": [int(v) for v in labels],
        "probabilities": [[float(v) for v in r] for r in probs],
    }
    path = PROJECT / "tests" / "fixtures" / "onnxruntime_outputs.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out} and {path}: {len(rows)} rows, {int(labels.sum())} predicted fraud")


if __name__ == "__main__":
    main()
