"""Benchmark: Slate's fraud pipeline against DuckDB + onnxruntime and Polars + onnxruntime on
the same generated data, in one run. Prints wall time and peak memory of each (each in its own
process, measured by wait4), the ratios, and checks that all three agree on every prediction.

    bash bench/run.sh            # builds, installs the reference tools in bench/.venv, runs this
"""

import argparse
import glob
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Runs a command in a fresh, small process and prints its wall time and peak RSS: a child forked
# straight from the benchmark would inherit the benchmark's own resident memory in its peak (Linux
# carries the pre-exec high-water mark into ru_maxrss).
LAUNCH = """
import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"{time.perf_counter() - t} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
"""


def measure(cmd):
    """(wall time in s, peak RSS in MiB, output) of `cmd`, which must succeed."""
    p = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, cmd)], capture_output=True, text=True)
    *err, last = p.stderr.rstrip("\n").split("\n")
    wall, rss, code = last.split()
    if int(code) != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{p.stdout}\n" + "\n".join(err))
    return float(wall), int(rss) / 1024, p.stdout + "\n".join(err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warehouse", default=str(ROOT / "bench" / "data" / "warehouse"))
    ap.add_argument("--slate", default=str(ROOT / "target" / "release" / "slate"), help="the slate binary to measure")
    a = ap.parse_args()
    work = ROOT / "bench" / "data"
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    slate = pathlib.Path(a.slate)
    model = ROOT / "examples" / "fraud" / "models" / "fraud_model.onnx"
    rows = pq.ParquetFile(glob.glob(f"{a.warehouse}/ML.TRANSACTIONS/*.parquet")[0]).metadata.num_rows

    results = {}
    results["slate"] = measure([slate, "--project", ROOT / "examples" / "fraud", "--data-dir", a.warehouse, "--state-dir", state, "run", "run_fraud_model"])
    for engine in ("duckdb", "polars"):
        out = work / f"{engine}.parquet"
        results[engine] = measure([sys.executable, ROOT / "bench" / "reference.py", "--engine", engine, a.warehouse, model, out])

    # The three must agree on every prediction.
    s = pl.read_delta(str(state / "offline" / "run_fraud_model")).to_arrow().sort_by("id")
    for engine in ("duckdb", "polars"):
        r = pq.read_table(work / f"{engine}.parquet").sort_by("id")
        assert s.num_rows == r.num_rows, (engine, s.num_rows, r.num_rows)
        assert (s.column("id").to_numpy() == r.column("id").to_numpy()).all()
        mism = int((s.column("is_fraud").to_numpy(zero_copy_only=False) != r.column("is_fraud").to_numpy(zero_copy_only=False)).sum())
        diff = float(np.abs(s.column("fraud_score").to_numpy() - r.column("fraud_score").to_numpy()).max())
        assert mism == 0 and diff <= 1e-5, (engine, mism, diff)

    print(f"{rows} source transactions, {s.num_rows} scored; all three agree on every label (scores within 1e-5)\n")
    print(f"| pipeline | wall time (s) | peak RSS (MiB) | time vs Slate | memory vs Slate |")
    print(f"|---|---|---|---|---|")
    sw, sm, _ = results["slate"]
    for name, label in (("slate", "Slate (`slate run`)"), ("duckdb", "DuckDB SQL + onnxruntime"), ("polars", "Polars + onnxruntime")):
        w, m, _ = results[name]
        print(f"| {label} | {w:.2f} | {m:.0f} | {w / sw:.2f}x | {m / sm:.2f}x |")
    print()
    for name, (_, _, out) in results.items():
        print(f"--- {name}\n{out.strip()}")


if __name__ == "__main__":
    main()
