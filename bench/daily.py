"""Benchmark: the cost of a daily run as history grows. For each history length (60 and 360 days
by default, the same users and so the same daily volume), generates the warehouse, runs Slate's
first run (the backfill), appends one more day and times the daily run that scores it, three
times from the same state. Next to it, the fastest correct DuckDB formulation of the same day
(integer epoch microseconds, `RANGE BETWEEN w PRECEDING AND 1 PRECEDING` frames over the day and
its 30-day history, the latest earlier transaction of each user from a scan of the rest) scored
by onnxruntime, in its own process. Checks that both give the same label to every transaction
of the day, and prints wall times, peak RSS and the 360-day / 60-day ratio.

    python bench/daily.py [--users 10000] [--days 60 360] [--slate target/debug/slate]
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import time

import polars as pl
import pyarrow.parquet as pq

from bench import measure
from reference import score

ROOT = pathlib.Path(__file__).resolve().parent.parent
DAY_US = 86_400_000_000
START_US = 1_788_220_800_000_000  # day 0 of the example's generator, 2026-09-01


DUCKDB_DAY = """
WITH src AS (
    SELECT transaction_id AS id, user_id, merchant_id, amount, epoch_us(ts) AS t, is_fraud
    FROM read_parquet('{warehouse}/ML.TRANSACTIONS/*.parquet')
    WHERE category <> 'pending'
),
hist AS (SELECT * FROM src WHERE t >= {hist_from}),
prior AS (SELECT user_id, max(t) AS last FROM src WHERE t < {hist_from} GROUP BY user_id),
f AS (
    SELECT
        id, user_id, amount, t, is_fraud,
        max(t) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS last_recent,
        count(*) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d1} PRECEDING AND 1 PRECEDING) AS n1,
        count(*) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d10} PRECEDING AND 1 PRECEDING) AS n10,
        count(*) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d30} PRECEDING AND 1 PRECEDING) AS n30,
        count(DISTINCT merchant_id) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d1} PRECEDING AND 1 PRECEDING) AS d1,
        count(DISTINCT merchant_id) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d10} PRECEDING AND 1 PRECEDING) AS d10,
        count(DISTINCT merchant_id) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {d30} PRECEDING AND 1 PRECEDING) AS d30
    FROM hist
)
SELECT id, amount, f.t - coalesce(last_recent, prior.last) AS since_us, n1, n10, n30, d1, d10, d30, is_fraud
FROM f LEFT JOIN prior USING (user_id)
WHERE f.t >= {day_from}
ORDER BY id
"""


def duckdb_day(warehouse, model, out, day_from):
    """Run in a child process: the day's features in DuckDB, scored by onnxruntime."""
    import duckdb
    import pyarrow as pa

    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    sql = DUCKDB_DAY.format(
        warehouse=warehouse, hist_from=day_from - 31 * DAY_US, day_from=day_from,
        d1=DAY_US, d10=10 * DAY_US, d30=30 * DAY_US,
    )
    table = con.sql(sql).to_arrow_table()
    t1 = time.perf_counter()
    labels, probs = score(table, model)
    t2 = time.perf_counter()
    pq.write_table(pa.table({"id": table.column("id"), "is_fraud": pa.array(labels.astype(bool)),
                             "fraud_score": pa.array(probs[:, 1].astype("float64"))}), out)
    print(f"features {t1 - t0:.3f}s, scoring {t2 - t1:.3f}s, rows {len(labels)}")


def one_history(a, days, work):
    wh, state, saved = work / f"warehouse-{days}", work / f"state-{days}", work / f"state-{days}.saved"
    for p in (wh, state, saved):
        shutil.rmtree(p, ignore_errors=True)
    gen = [a.fraud_data, "--out", wh, "--users", str(a.users), "--merchants", "5000"]
    measure(gen + ["--from-day", "0", "--to-day", str(days)])
    slate = [a.slate, "--project", ROOT / "examples" / "fraud", "--data-dir", wh, "--state-dir", state, "run", "run_fraud_model"]
    backfill = measure(slate)
    measure(gen + ["--from-day", str(days), "--to-day", str(days + 1)])
    shutil.copytree(state, saved)
    runs = []
    for _ in range(3):
        shutil.rmtree(state)
        shutil.copytree(saved, state)
        runs.append(measure(slate))
    model = ROOT / "examples" / "fraud" / "models" / "fraud_model.onnx"
    day_from = START_US + days * DAY_US
    ducks = [measure([sys.executable, __file__, "--duckdb-day", wh, model, work / "duckdb-day.parquet", str(day_from)]) for _ in range(3)]

    # Both score the same transactions of the day with the same labels.
    s = pl.read_delta(str(state / "offline" / "run_fraud_model")).filter(
        pl.col("feature_time").dt.epoch("us") >= day_from).sort("id")
    r = pl.read_parquet(work / "duckdb-day.parquet").sort("id")
    assert s.height == r.height and (s["id"] == r["id"]).all(), (days, s.height, r.height)
    assert (s["is_fraud"] == r["is_fraud"]).all(), days
    diff = float((s["fraud_score"] - r["fraud_score"]).abs().max())
    assert diff <= 1e-5, (days, diff)
    rows = pq.read_metadata(next((wh / "ML.TRANSACTIONS").glob("part-0000.parquet"))).num_rows
    return {"rows": rows, "day_rows": s.height, "backfill": backfill, "runs": runs, "duckdb": ducks}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--duckdb-day":
        duckdb_day(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--days", type=int, nargs="+", default=[60, 360])
    ap.add_argument("--slate", default=str(ROOT / "target" / "debug" / "slate"))
    ap.add_argument("--fraud-data", default=str(ROOT / "target" / "debug" / "fraud-data"))
    a = ap.parse_args()
    work = ROOT / "bench" / "data" / "daily"
    work.mkdir(parents=True, exist_ok=True)
    res = {d: one_history(a, d, work) for d in a.days}
    med = lambda xs: statistics.median(x[0] for x in xs)
    print(f"{a.users} users; labels of every transaction of the day equal (scores within 1e-5)\n")
    print("| history (days) | rows before the day | rows of the day | Slate backfill (s) | Slate daily run (s, median of 3) | daily peak RSS (MiB) | DuckDB + ORT day (s, median of 3) | DuckDB peak RSS (MiB) | DuckDB ÷ Slate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, r in res.items():
        sd, dd = med(r["runs"]), med(r["duckdb"])
        print(f"| {d} | {r['rows']} | {r['day_rows']} | {r['backfill'][0]:.2f} | {sd:.2f} | {max(x[1] for x in r['runs']):.0f} | {dd:.2f} | {max(x[1] for x in r['duckdb']):.0f} | {dd / sd:.2f}x |")
    if len(res) == 2:
        (d0, r0), (d1, r1) = res.items()
        print(f"\nDaily run, {d1} days of history ÷ {d0}: Slate {med(r1['runs']) / med(r0['runs']):.2f}, DuckDB + ORT {med(r1['duckdb']) / med(r0['duckdb']):.2f}")
    for d, r in res.items():
        print(f"\n--- {d} days: Slate daily run\n{r['runs'][0][2].strip()}\n--- DuckDB\n{r['duckdb'][0][2].strip()}")


if __name__ == "__main__":
    main()
