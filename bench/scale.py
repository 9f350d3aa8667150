"""Benchmark at scale: the backfill and the daily run of the fraud pipeline, Slate against DuckDB
and Polars (each followed by onnxruntime), on the same generated data, in one run.

For each history length (`--days`, 60 and 360 by default) it generates the example's warehouse
(`fraud-data`), then

- backfill: Slate's first run over the whole history, DuckDB and Polars computing the same
  features for every transaction (the fastest correct formulation of each, `reference.py`), each
  scored by onnxruntime; the three checked equal on every prediction;
- daily run: one more day arrives; Slate's second run scores it (median of `--repeat`, each from
  a copy of the same state), DuckDB and Polars compute that day's features over its 31-day
  history plus each user's latest earlier transaction; checked equal likewise.

Wall time and peak RSS of each, every tool in its own process (`wait4`). The size of the data:
`--rows R` generates about R transactions over each history with `R / 100` users (the issue's
scale: `--rows 20000000`); `--users N` alone keeps the example's activity (about 0.9
transactions per user a day), so every history length has the same daily volume.

    python bench/scale.py --rows 20000000                # 20M rows over 60 and over 360 days
    python bench/scale.py --users 10000 --no-backfill-reference
    python bench/scale.py --rows 20000000 --days 60 --memory-limit 2GB
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys

import polars as pl

from bench import measure

ROOT = pathlib.Path(__file__).resolve().parent.parent
DAY_US = 86_400_000_000
START_US = 1_788_220_800_000_000  # day 0 of the example's generator, 2026-09-01
MODEL = ROOT / "examples" / "fraud" / "models" / "fraud_model.onnx"
# Mean transactions per user and day at activity 1.0 (lognormal(-0.45, 0.8) plus bursts); users
# join over the first 20 days.
PER_DAY = 0.9


def reference(engine, warehouse, out, day_from=None):
    cmd = [sys.executable, ROOT / "bench" / "reference.py", "--engine", engine]
    if day_from is not None:
        cmd += ["--day-from", str(day_from)]
    return measure(cmd + [warehouse, MODEL, out])


def check_equal(slate, other, what):
    """Same transactions, same labels, scores within 1e-5."""
    r = pl.read_parquet(other).sort("id")
    assert slate.height == r.height and (slate["id"] == r["id"]).all(), (what, slate.height, r.height)
    labels = int((slate["is_fraud"] != r["is_fraud"]).sum())
    diff = float((slate["fraud_score"] - r["fraud_score"]).abs().max())
    assert labels == 0 and diff <= 1e-5, (what, labels, diff)


def slate_predictions(state, day_from=None):
    t = pl.read_delta(str(state / "offline" / "run_fraud_model")).select("id", "is_fraud", "fraud_score", "feature_time")
    if day_from is not None:
        t = t.filter(pl.col("feature_time").dt.epoch("us") >= day_from)
    return t.sort("id")


def one_history(a, days, work):
    wh, state, saved = work / f"warehouse-{days}", work / f"state-{days}", work / f"state-{days}.saved"
    for p in (wh, state, saved):
        shutil.rmtree(p, ignore_errors=True)
    users = a.users or a.rows // 100
    activity = a.rows / (users * PER_DAY * (days - 10)) if a.rows else 1.0
    gen = [a.fraud_data, "--out", wh, "--users", str(users), "--merchants", str(a.merchants), "--activity", f"{activity:.6f}"]
    out = measure(gen + ["--from-day", "0", "--to-day", str(days)])[2]
    os.sync()
    rows = int(out.split()[1])
    slate = [a.slate, "--project", ROOT / "examples" / "fraud", "--data-dir", wh, "--state-dir", state]
    if a.memory_limit:
        slate += ["--memory-limit", a.memory_limit]
    slate += ["run", "run_fraud_model"]
    res = {"days": days, "users": users, "rows": rows}

    res["backfill"] = {"slate": measure(slate)}
    if a.backfill_reference:
        preds = slate_predictions(state)
        res["scored"] = preds.height
        for engine in ("duckdb", "polars"):
            res["backfill"][engine] = reference(engine, wh, work / f"{engine}-backfill.parquet")
            check_equal(preds, work / f"{engine}-backfill.parquet", f"{engine} backfill, {days} days")

    day_rows = int(measure(gen + ["--from-day", str(days), "--to-day", str(days + 1)])[2].split()[1])
    res["day_rows"] = day_rows
    shutil.copytree(state, saved)
    os.sync()
    daily = {"slate": [], "duckdb": [], "polars": []}
    for _ in range(a.repeat):
        shutil.rmtree(state)
        shutil.copytree(saved, state)
        # The copy's dirty pages are flushed before the run: otherwise the run's first fsync of
        # the online store pays for writing the benchmark's copy to disk (2 s at 360 days).
        os.sync()
        daily["slate"].append(measure(slate))
    day_from = START_US + days * DAY_US
    preds = slate_predictions(state, day_from)
    res["day_scored"] = preds.height
    for engine in ("duckdb", "polars"):
        for _ in range(a.repeat):
            daily[engine].append(reference(engine, wh, work / f"{engine}-day.parquet", day_from))
        check_equal(preds, work / f"{engine}-day.parquet", f"{engine} day, {days} days")
    res["daily"] = daily
    shutil.rmtree(saved)
    return res


def median_run(runs):
    """(median wall time, the largest peak RSS, the output of the median run)."""
    walls = [r[0] for r in runs]
    m = statistics.median_low(walls)
    return m, max(r[1] for r in runs), runs[walls.index(m)][2]


def report(results, a):
    checked = "every prediction" if a.backfill_reference else "every prediction of the daily runs"
    print(f"onnxruntime and DuckDB use 2 threads; {checked} checked equal across the three tools (labels equal, scores within 1e-5)\n")
    print("| history (days) | users | rows | run | Slate (s) | Slate peak RSS (MiB) | DuckDB + ORT (s) | DuckDB RSS (MiB) | Polars + ORT (s) | Polars RSS (MiB) | DuckDB ÷ Slate | Polars ÷ Slate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        runs = [("daily run, median of %d" % a.repeat, {k: median_run(v) for k, v in r["daily"].items()}, r["day_rows"])]
        if "duckdb" in r["backfill"]:
            runs.insert(0, ("backfill", r["backfill"], r["rows"]))
        else:
            print(f"| {r['days']} | {r['users']} | {r['rows']} | backfill | {r['backfill']['slate'][0]:.2f} | {r['backfill']['slate'][1]:.0f} | | | | | | |")
        for name, m, rows in runs:
            s, d, p = m["slate"], m["duckdb"], m["polars"]
            print(f"| {r['days']} | {r['users']} | {rows} | {name} | {s[0]:.2f} | {s[1]:.0f} | {d[0]:.2f} | {d[1]:.0f} | {p[0]:.2f} | {p[1]:.0f} | {d[0] / s[0]:.2f}x | {p[0] / s[0]:.2f}x |")
    if len(results) == 2:
        r0, r1 = results
        ratio = lambda k: median_run(r1["daily"][k])[0] / median_run(r0["daily"][k])[0]
        print(f"\nDaily run, {r1['days']} days of history ÷ {r0['days']}: Slate {ratio('slate'):.2f}, DuckDB + ORT {ratio('duckdb'):.2f}, Polars + ORT {ratio('polars'):.2f}")
    for r in results:
        print(f"\n--- {r['days']} days: Slate backfill\n{r['backfill']['slate'][2].strip()}")
        print(f"--- {r['days']} days: Slate daily run\n{median_run(r['daily']['slate'])[2].strip()}")
        for engine in ("duckdb", "polars"):
            if engine in r["backfill"]:
                print(f"--- {engine} backfill: {r['backfill'][engine][2].strip()}")
            print(f"--- {engine} day: {median_run(r['daily'][engine])[2].strip()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, help="about this many transactions over each history (users: rows / 100)")
    ap.add_argument("--users", type=int, help="users (default rows / 100; with no --rows, activity 1.0)")
    ap.add_argument("--merchants", type=int, default=5000)
    ap.add_argument("--days", type=int, nargs="+", default=[60, 360])
    ap.add_argument("--repeat", type=int, default=3, help="daily runs of each tool (the median is reported)")
    ap.add_argument("--no-backfill-reference", dest="backfill_reference", action="store_false",
                    help="time only Slate's backfill")
    ap.add_argument("--slate", default=str(ROOT / "target" / "debug" / "slate"))
    ap.add_argument("--memory-limit", help="Slate's memory budget (`slate --memory-limit`, e.g. 2GB); default: Slate's own")
    ap.add_argument("--fraud-data", default=str(ROOT / "target" / "debug" / "fraud-data"))
    ap.add_argument("--json", help="also write the raw measurements here")
    a = ap.parse_args()
    if not a.rows and not a.users:
        ap.error("give --rows or --users")
    work = ROOT / "bench" / "data" / "scale"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for d in a.days:
        results.append(one_history(a, d, work))
        print(f"{d} days done", file=sys.stderr, flush=True)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))
    report(results, a)


if __name__ == "__main__":
    main()
