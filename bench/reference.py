"""The fraud pipeline's work done with the tools a team would otherwise pick: features with
DuckDB SQL (or Polars), scores with onnxruntime. Run by bench.py in its own process so that its
time and peak memory are measured the same way as Slate's.

    python bench/reference.py --engine duckdb|polars WAREHOUSE MODEL OUT.parquet
"""

import argparse
import pathlib
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
FEATURES_SQL = ROOT / "examples" / "fraud" / "training" / "features.sql"


def duckdb_features(warehouse):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    sql = FEATURES_SQL.read_text().replace("{warehouse}", str(warehouse))
    return con.sql(sql).to_arrow_table()


def polars_features(warehouse):
    import polars as pl

    t = (
        pl.scan_parquet(f"{warehouse}/ML.TRANSACTIONS/*.parquet")
        .filter(pl.col("category") != "pending")
        .select(pl.col("transaction_id").alias("id"), "user_id", "merchant_id", "amount", "ts", "is_fraud")
        .sort("user_id", "ts")
    )
    # closed="left": the window of a row at `now` is [now - period, now), so the row itself and
    # rows at the same instant are out.
    def rolling(period, *aggs):
        return t.rolling(index_column="ts", period=period, closed="left", group_by="user_id").agg(*aggs)

    cols = [t.select("id", "amount", "is_fraud", pl.col("ts").dt.epoch("us").alias("ts_us"))]
    cols.append(rolling("100000d", pl.col("ts").max().alias("last")).select(
        (pl.col("ts").dt.epoch("us") - pl.col("last").dt.epoch("us")).alias("since_us")))
    for days in (1, 10, 30):
        cols.append(rolling(f"{days}d", pl.len().alias(f"n{days}"), pl.col("merchant_id").n_unique().alias(f"d{days}"))
                    .select(f"n{days}", f"d{days}"))
    out = pl.concat(cols, how="horizontal").sort("id")
    return out.select("id", "amount", "since_us", "n1", "n10", "n30", "d1", "d10", "d30", "is_fraud", "ts_us").collect().to_arrow()


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
    ap.add_argument("warehouse")
    ap.add_argument("model")
    ap.add_argument("out")
    a = ap.parse_args()
    t0 = time.perf_counter()
    table = duckdb_features(a.warehouse) if a.engine == "duckdb" else polars_features(a.warehouse)
    t1 = time.perf_counter()
    labels, probs = score(table, a.model)
    t2 = time.perf_counter()
    out = pa.table({"id": table.column("id"), "is_fraud": pa.array(labels.astype(bool)), "fraud_score": pa.array(probs[:, 1].astype(np.float64))})
    pq.write_table(out, a.out)
    print(f"features {t1 - t0:.3f}s, scoring {t2 - t1:.3f}s, rows {len(labels)}")


if __name__ == "__main__":
    main()
