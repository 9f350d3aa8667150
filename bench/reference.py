"""The fraud pipeline's work done with the tools a team would otherwise pick: features with
DuckDB SQL (or Polars), scores with onnxruntime. Run by the benchmarks in its own process so that
its time and peak memory are measured the same way as Slate's.

    python bench/reference.py --engine duckdb|polars [--day-from US] WAREHOUSE MODEL OUT.parquet

Without `--day-from` every transaction is scored (a backfill). With it, only the transactions at
or after that instant (epoch microseconds): their windows read the 31 days before it, and each
user's latest earlier transaction comes from one aggregate over the rest, so time-since-last is
exact for users idle longer than every window (a daily run).

Both engines use the fastest correct formulation we know: integer epoch microseconds, windows
`[now - w, now)` as `RANGE BETWEEN w PRECEDING AND 1 PRECEDING` frames in DuckDB (rows at the
same instant are out) and `rolling(closed="left")` on the integer time in Polars.
"""

import argparse
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

DAY_US = 86_400_000_000
WINDOWS = (1, 10, 30)

DUCKDB_SQL = """
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
"""


def bounds(day_from):
    """(history start, first scored instant): everything for a backfill."""
    if day_from is None:
        return 0, 0
    return day_from - (max(WINDOWS) + 1) * DAY_US, day_from


def duckdb_features(warehouse, day_from=None):
    import duckdb

    hist_from, first = bounds(day_from)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    sql = DUCKDB_SQL.format(warehouse=warehouse, hist_from=hist_from, day_from=first,
                            d1=DAY_US, d10=10 * DAY_US, d30=30 * DAY_US)
    return con.sql(sql).to_arrow_table()


def polars_features(warehouse, day_from=None):
    import polars as pl

    hist_from, first = bounds(day_from)
    src = (
        pl.scan_parquet(f"{warehouse}/ML.TRANSACTIONS/*.parquet")
        .filter(pl.col("category") != "pending")
        .select(pl.col("transaction_id").alias("id"), "user_id", "merchant_id", "amount",
                pl.col("ts").dt.epoch("us").alias("t"), "is_fraud")
    )
    prior = src.filter(pl.col("t") < hist_from).group_by("user_id").agg(pl.col("t").max().alias("prior"))
    hist = src.filter(pl.col("t") >= hist_from).sort("user_id", "t")

    # closed="left": the window of a row at `now` is [now - period, now), so the row itself and
    # rows at the same instant are out.
    def rolling(period, *aggs):
        return hist.rolling(index_column="t", period=f"{period}i", closed="left", group_by="user_id").agg(*aggs)

    cols = [hist.select("id", "user_id", "amount", "t", "is_fraud")]
    cols.append(rolling(1 << 62, pl.col("t").max().alias("last")).select("last"))
    for days in WINDOWS:
        cols.append(rolling(days * DAY_US, pl.len().alias(f"n{days}"), pl.col("merchant_id").n_unique().alias(f"d{days}"))
                    .select(f"n{days}", f"d{days}"))
    out = (
        pl.concat(cols, how="horizontal")
        .filter(pl.col("t") >= first)
        .join(prior, on="user_id", how="left")
        .with_columns((pl.col("t") - pl.coalesce("last", "prior")).alias("since_us"))
    )
    return out.select("id", "amount", "since_us", "n1", "n10", "n30", "d1", "d10", "d30", "is_fraud").collect().to_arrow()


def score(table, model):
    """The model's labels and fraud probabilities for a feature table (the columns above)."""
    since = table.column("since_us").to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    cols = [table.column("amount").to_numpy(zero_copy_only=False).astype(np.float64), since]
    cols += [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ("n1", "n10", "n30", "d1", "d10", "d30")]
    x = np.column_stack(cols).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["duckdb", "polars"], required=True)
    ap.add_argument("--day-from", type=int, help="score only transactions at or after this epoch microsecond")
    ap.add_argument("warehouse")
    ap.add_argument("model")
    ap.add_argument("out")
    a = ap.parse_args()
    t0 = time.perf_counter()
    features = duckdb_features if a.engine == "duckdb" else polars_features
    table = features(a.warehouse, a.day_from)
    t1 = time.perf_counter()
    labels, probs = score(table, a.model)
    t2 = time.perf_counter()
    out = pa.table({"id": table.column("id"), "is_fraud": pa.array(labels.astype(bool)), "fraud_score": pa.array(probs[:, 1].astype(np.float64))})
    pq.write_table(out, a.out)
    t3 = time.perf_counter()
    print(f"features {t1 - t0:.3f}s, scoring {t2 - t1:.3f}s, write {t3 - t2:.3f}s, rows {len(labels)}")


if __name__ == "__main__":
    main()
