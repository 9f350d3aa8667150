"""Scoring speed: Slate's model runtime against onnxruntime on the same models and rows.

Trains, with scikit-learn, gradient-boosted classifiers (300 trees of depth 4 and 500 of depth 8),
a `SimpleImputer -> StandardScaler -> LogisticRegression` pipeline and the same pipeline ending in
an `MLPClassifier` (two hidden layers, 64 and 32), all on 8 features; exports them with skl2onnx
(zipmap off); draws 1M rows (1% of the values missing); and times onnxruntime (1 and 2 threads)
and `slate-model`'s `score` example on 2 cores and on 1 (`taskset -c 0`) (best of three each,
model loaded, input in memory). Checks
that labels agree and scores are within 1e-6.

    bench/.venv/bin/python bench/scoring.py [--rows 1000000]
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/data/scoring"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    subprocess.run(
        ["cargo", "build", "--locked", "-p", "slate-model", "--example", "score"],
        cwd=ROOT,
        check=True,
    )
    score = os.path.join(ROOT, "target/debug/examples/score")
    rng = np.random.default_rng(7)
    f = 8
    xt = rng.normal(size=(6000, f)).astype(np.float32)
    yt = ((xt[:, 0] * xt[:, 1] + np.sin(3 * xt[:, 2]) + xt[:, 3] ** 2 - 1 + rng.normal(scale=0.5, size=6000)) > 0).astype(np.int64)
    rows = rng.normal(size=(args.rows, f)).astype(np.float32)
    rows_path = os.path.join(args.out, "rows.f32")
    print("| model | rows | onnxruntime 1 thread (s) | onnxruntime 2 threads (s) | Slate 1 core (s) | Slate 2 cores (s) | Slate 1 core vs ORT 1 thread | Slate 2 cores vs ORT 2 threads |")
    print("|---|---|---|---|---|---|---|---|")
    rows[rng.random(rows.shape) < 0.01] = np.nan
    rows.tofile(rows_path)

    def pipeline(est):
        return Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler()), ("model", est)])

    models = [
        ("300 trees, depth 4", GradientBoostingClassifier(n_estimators=300, max_depth=4, random_state=0)),
        ("500 trees, depth 8", GradientBoostingClassifier(n_estimators=500, max_depth=8, random_state=0)),
        ("logistic regression pipeline", pipeline(LogisticRegression(max_iter=500))),
        ("MLP pipeline (64, 32)", pipeline(MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0))),
    ]
    for label, model in models:
        model.fit(xt, yt)
        last = model.steps[-1][1] if isinstance(model, Pipeline) else model
        onx = to_onnx(model, xt[:1], options={id(last): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
        path = os.path.join(args.out, "model_" + "".join(c if c.isalnum() else "_" for c in label) + ".onnx")
        with open(path, "wb") as fh:
            fh.write(onx.SerializeToString())
        times = {}
        for threads in (1, 2):
            o = ort.SessionOptions()
            o.intra_op_num_threads = threads
            o.inter_op_num_threads = 1
            s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
            name = s.get_inputs()[0].name
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                labels, probs = s.run(None, {name: rows})
                best = min(best, time.perf_counter() - t)
            times[threads] = best
        out_path = os.path.join(args.out, "slate.out")
        r = json.loads(subprocess.run([score, path, rows_path, str(f), out_path], check=True, capture_output=True, text=True).stdout)
        one = json.loads(subprocess.run(["taskset", "-c", "0", score, path, rows_path, str(f), out_path], check=True, capture_output=True, text=True).stdout)
        raw = open(out_path, "rb").read()
        n = args.rows
        s_labels = np.frombuffer(raw[: 8 * n], dtype="<i8")
        s_scores = np.frombuffer(raw[8 * n :], dtype="<f4").reshape(n, -1)
        assert (s_labels == labels).all(), "labels differ"
        diff = np.abs(s_scores - probs)
        both_nan = np.isnan(s_scores) & np.isnan(probs)
        assert (both_nan | (diff <= 1e-6)).all(), f"scores differ by {np.nanmax(diff)}"
        sl, s1 = r["seconds"], one["seconds"]
        print(f"| {label} | {n:,} | {times[1]:.3f} | {times[2]:.3f} | {s1:.3f} | {sl:.3f} | {times[1] / s1:.2f}x | {times[2] / sl:.2f}x |")


if __name__ == "__main__":
    main()
