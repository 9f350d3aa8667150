"""Ingest speed from PostgreSQL: Slate's PostgreSQL source against psycopg + pyarrow and
connectorx, on the same table, in one run; then Slate's writes to the Redis online store against
redis-benchmark on the same server.

It generates the fraud example's warehouse (`fraud-data`, about `--rows` transactions), loads
"ML.TRANSACTIONS" into a PostgreSQL database of its own (`--database`, recreated), and then
reads the example's resolver query (`get_transactions_offline`: every non-pending transaction)
into Arrow with each tool, each in its own process, single connection:

- Slate: `slate --env postgres preview get_transactions_offline` (the example's `postgres`
  environment; binary results decoded into Arrow batches as they stream in);
- psycopg 3 with a binary server-side cursor, rows fetched in chunks and turned into pyarrow
  arrays per chunk;
- connectorx `read_sql(..., return_type="arrow")` (binary COPY, one partition).

Wall time and peak RSS of each (`wait4`), rows/s, and the ratio to Slate. Every tool must return
the same number of rows.

Online writes: the example's whole run in its `postgres` environment (PostgreSQL source, Redis
online store, database 15 of the Redis server, emptied before and after), its write stage's
online seconds turned into upserts/s (rows times features served), next to `redis-benchmark`
pipelining plain `HSET`s of the same shape (`-P 512`). Slate's upsert is a Lua script that reads
the stored feature time before it writes, so it does more per key than an `HSET`.

    python bench/ingest.py --rows 5000000 --slate target/debug/slate
"""

import argparse
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from bench import measure

ROOT = pathlib.Path(__file__).resolve().parent.parent
SQL_FILE = ROOT / "examples" / "fraud" / "src" / "resolvers" / "sql" / "get_transactions_offline.chalk.sql"

PSYCOPG = r'''
import sys, psycopg, pyarrow as pa
url, sql = sys.argv[1], sys.argv[2]
with psycopg.connect(url) as conn:
    with conn.cursor(name="slate_bench", binary=True) as cur:
        cur.itersize = 100_000
        cur.execute(sql)
        names = None
        batches = []
        while True:
            rows = cur.fetchmany(100_000)
            if not rows:
                break
            names = names or [d.name for d in cur.description]
            cols = list(zip(*rows))
            batches.append(pa.record_batch([pa.array(c) for c in cols], names=names))
table = pa.Table.from_batches(batches)
print(table.num_rows)
'''

CONNECTORX = r'''
import sys, connectorx as cx
url, sql = sys.argv[1], sys.argv[2]
table = cx.read_sql(url, sql, return_type="arrow")
print(table.num_rows)
'''


def resolver_sql():
    lines = SQL_FILE.read_text().splitlines()
    return "\n".join(l for l in lines if not l.startswith("--")).strip()


def load(url, warehouse):
    """"ML.TRANSACTIONS" from the generated Parquet files, through COPY ... (FORMAT csv)."""
    table = ds.dataset(warehouse / "ML.TRANSACTIONS", format="parquet").to_table()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS "ML.TRANSACTIONS"')
        conn.execute(
            'CREATE TABLE "ML.TRANSACTIONS" (transaction_id bigint, user_id bigint, merchant_id bigint,'
            " amount double precision, ts timestamptz, category text, is_fraud boolean)"
        )
        with conn.cursor() as cur:
            with cur.copy('COPY "ML.TRANSACTIONS" FROM STDIN (FORMAT csv)') as copy:
                for batch in table.to_batches(max_chunksize=500_000):
                    buf = io.BytesIO()
                    pacsv.write_csv(pa.Table.from_batches([batch]), buf, pacsv.WriteOptions(include_header=False))
                    copy.write(buf.getvalue())
        conn.execute('VACUUM ANALYZE "ML.TRANSACTIONS"')
    return table.num_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--slate", default=str(ROOT / "target" / "release" / "slate"))
    ap.add_argument("--fraud-data", default=None, help="the generator binary (next to --slate by default)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", default="5432")
    ap.add_argument("--user", default=os.environ.get("USER", "root"))
    ap.add_argument("--database", default="slate_bench_ingest")
    ap.add_argument("--work", default=str(ROOT / "bench" / "data" / "ingest"))
    a = ap.parse_args()

    slate = pathlib.Path(a.slate)
    gen = pathlib.Path(a.fraud_data) if a.fraud_data else slate.parent / "fraud-data"
    work = pathlib.Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    warehouse = work / "warehouse"
    # The example's activity gives about 0.9 transactions per user a day over 60 days.
    users = max(1, a.rows // 100)
    subprocess.run([gen, "--out", warehouse, "--users", str(users), "--merchants", str(max(10, users // 10)),
                    "--activity", f"{a.rows / (users * 0.9 * 50):.6f}"], check=True, capture_output=True)

    admin = f"postgresql://{a.user}@{a.host}:{a.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {a.database} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {a.database}")
    url = f"postgresql://{a.user}@{a.host}:{a.port}/{a.database}"
    loaded = load(url, warehouse)
    sql = resolver_sql()
    print(f'{loaded} rows in "ML.TRANSACTIONS"; query: {" ".join(sql.split())}\n')

    env = dict(os.environ, FRAUD_WAREHOUSE_URL=url, FRAUD_REDIS_URL="redis://127.0.0.1:6379/0")
    results = {}
    os.environ.update(env)
    wall, rss, out = measure([slate, "--project", ROOT / "examples" / "fraud", "--env", "postgres",
                              "preview", "get_transactions_offline"])
    rows = int(out.split()[0])
    results["Slate (PostgreSQL source)"] = (wall, rss, rows)
    for name, script in (("psycopg 3 + pyarrow", PSYCOPG), ("connectorx", CONNECTORX)):
        wall, rss, out = measure([sys.executable, "-c", script, url, sql])
        results[name] = (wall, rss, int(out.split()[0]))
    counts = {r[2] for r in results.values()}
    assert len(counts) == 1, results

    base = results["Slate (PostgreSQL source)"]
    print("| reader | wall time (s) | rows/s | peak RSS (MiB) | time vs Slate | memory vs Slate |")
    print("|---|---|---|---|---|---|")
    for name, (wall, rss, n) in results.items():
        print(f"| {name} | {wall:.2f} | {n / wall:,.0f} | {rss:,.0f} | {wall / base[0]:.2f}x | {rss / base[1]:.2f}x |")

    # Online writes to Redis, database 15.
    redis_db = "15"
    flush = ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "-n", redis_db, "FLUSHDB"]
    subprocess.run(flush, check=True, capture_output=True)
    os.environ["FRAUD_REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
    wall, rss, out = measure([slate, "--project", ROOT / "examples" / "fraud", "--env", "postgres",
                              "--state-dir", work / "state", "run", "run_fraud_model"])
    m = re.search(r"^write\s+(\d+) rows \(online ([\d.]+)s", out, re.M)
    features = len(re.findall(r"^\s+output\s", out, re.M))
    assert m and features, out
    rows, seconds = int(m[1]), float(m[2])
    upserts = rows * features
    bench = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", "6379", "--dbnum", redis_db, "-q",
                            "-n", str(upserts), "-P", "512", "-r", str(rows),
                            "HSET", "slate-bench:__rand_int__", "t", "1788220800000000", "v", "0.0123"],
                           check=True, capture_output=True, text=True).stdout
    per_s = float(re.findall(r"([\d.]+) requests per second", bench)[-1])
    subprocess.run(flush, check=True, capture_output=True)
    print(f"\nOnline writes to Redis: {rows} rows x {features} features = {upserts} upserts\n")
    print("| writer | seconds | upserts/s | vs Slate |")
    print("|---|---|---|---|")
    print(f"| Slate online write stage (Lua compare-and-set, 512 keys per call, 32 calls per round trip) | {seconds:.2f} | {upserts / seconds:,.0f} | 1.00x |")
    print(f"| redis-benchmark HSET, pipeline 512 | {upserts / per_s:.2f} | {per_s:,.0f} | {per_s / (upserts / seconds):.2f}x |")

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {a.database} WITH (FORCE)")


if __name__ == "__main__":
    main()
