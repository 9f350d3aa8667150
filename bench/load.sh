#!/usr/bin/env bash
# The online API under load: `slate serve` on loopback answering POST /v1/query/online at fixed
# request rates (open loop, latency from each request's scheduled send time), next to Redis GET
# at the same rates and redis-benchmark GET, then the API again while a run writes the online
# store, then the API of a `slate serve` whose online store is Redis (the example's `redis`
# environment, database 14 of that server, emptied first) at the same rates. Needs redis-server on 127.0.0.1:6379 (REDIS=host:port to change) and the bench venv
# (bench/run.sh makes it) for reading ids. Prints a Markdown table; bench/RESULTS.md holds one.
#
#   bash bench/load.sh                 # rates 1000 5000 10000 20000, 10 s each, 64 connections
#   RATES="1000 2000" SECONDS_EACH=5 bash bench/load.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rates="${RATES:-1000 5000 10000 20000}"
secs="${SECONDS_EACH:-10}"
conns="${CONNECTIONS:-64}"
redis="${REDIS:-127.0.0.1:6379}"
users="${USERS:-5000}"
listen=127.0.0.1:18080
work=bench/data/load
slate=target/debug/slate

cargo build --locked -p slate-cli -p fraud-example
cargo build --release --manifest-path bench/load/Cargo.toml
load=bench/load/target/release/slate-load
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/requirements.txt
fi

rm -rf "$work"
mkdir -p "$work"
target/debug/fraud-data --out "$work/warehouse" --users "$users" --merchants 1000 --to-day 55 >/dev/null
run=(--project examples/fraud --data-dir "$work/warehouse" --state-dir "$work/state")
"$slate" "${run[@]}" run run_fraud_model >/dev/null 2>&1
bench/.venv/bin/python - "$work" <<'EOF'
import duckdb, sys
work = sys.argv[1]
ids = duckdb.sql(f"select distinct id from read_parquet('{work}/state/offline/run_fraud_model/**/*.parquet') order by hash(id) limit 100000").fetchall()
open(f"{work}/keys.txt", "w").write("".join(f"{i[0]}\n" for i in ids))
EOF
nkeys=$(wc -l <"$work/keys.txt")

"$slate" "${run[@]}" serve --listen "$listen" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://$listen/healthz" >/dev/null && break
  sleep 0.1
done
"$load" http "$listen" 1000 2 "$conns" "$work/keys.txt" transaction.is_fraud >/dev/null # warm-up

declare -a rows
row() { # label json
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); print("| {} | {:.0f} | {:.0f} | {:.3f} | {:.3f} | {:.3f} | {:.2f} | {} |".format(sys.argv[1], r["rate"], r["achieved_rps"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["max_ms"], r["errors"]))' "$1" "$2"
}
for r in $rates; do
  rows+=("$(row "Slate POST /v1/query/online" "$("$load" http "$listen" "$r" "$secs" "$conns" "$work/keys.txt" transaction.is_fraud)")")
done
"$load" redis-fill "$redis" "$work/keys.txt" slate-bench: >/dev/null
for r in $rates; do
  rows+=("$(row "Redis GET (same generator)" "$("$load" redis "$redis" "$r" "$secs" "$conns" "$work/keys.txt" slate-bench:)")")
done

# While a run writes: five more days arrive and a run is triggered, under load at the middle rate.
mid=$(echo $rates | awk '{print $(int((NF+1)/2))}')
target/debug/fraud-data --out "$work/warehouse" --users "$users" --merchants 1000 --from-day 55 --to-day 60 >/dev/null
curl -sf -X POST "http://$listen/v1/runs" -d '{"query":"run_fraud_model"}' >/dev/null
rows+=("$(row "Slate, during a run" "$("$load" http "$listen" "$mid" "$secs" "$conns" "$work/keys.txt" transaction.is_fraud)")")
for _ in $(seq 600); do
  s=$(curl -sf "http://$listen/v1/runs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][-1]["status"])')
  [ "$s" = succeeded ] || [ "$s" = failed ] && break
  sleep 0.5
done
runinfo=$(curl -sf "http://$listen/v1/runs" | python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][-1]; print("{}, {} rows scored, {:.1f} s".format(r["status"], r["rows_scored"], r["duration_seconds"]))')
kill -TERM $pid
wait $pid || true
trap - EXIT

# The same project served from Redis: its `redis` environment (embedded warehouse, Redis
# online store in database 14).
redis_db=14
redis-cli -h "${redis%:*}" -p "${redis#*:}" -n "$redis_db" FLUSHDB >/dev/null
export FRAUD_REDIS_URL="redis://$redis/$redis_db"
rrun=(--project examples/fraud --env redis --data-dir "$work/warehouse" --state-dir "$work/state-redis")
"$slate" "${rrun[@]}" run run_fraud_model >/dev/null 2>&1
rlisten=127.0.0.1:18081
"$slate" "${rrun[@]}" serve --listen "$rlisten" >"$work/serve-redis.log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://$rlisten/healthz" >/dev/null && break
  sleep 0.1
done
"$load" http "$rlisten" 1000 2 "$conns" "$work/keys.txt" transaction.is_fraud >/dev/null # warm-up
for r in $rates; do
  rows+=("$(row "Slate POST /v1/query/online, Redis store" "$("$load" http "$rlisten" "$r" "$secs" "$conns" "$work/keys.txt" transaction.is_fraud)")")
done
kill -TERM $rpid
wait $rpid || true
trap - EXIT
redis-cli -h "${redis%:*}" -p "${redis#*:}" -n "$redis_db" FLUSHDB >/dev/null

rb=$(redis-benchmark -h "${redis%:*}" -p "${redis#*:}" -t set,get -n 200000 -r "$nkeys" -c "$conns" --csv 2>/dev/null | grep '"GET"' || true)

echo
echo "$nkeys keys, $conns connections, ${secs} s per rate, $(nproc) cores shared by server and load generator"
echo
echo "| target | asked req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "run during the load: $runinfo"
echo "redis-benchmark GET (closed loop, as fast as it goes): $rb"
