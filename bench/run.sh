#!/usr/bin/env bash
# Builds Slate in release mode (the deployment build; the README's two commands use the quicker
# to compile dev profile, whose writes are slower at this scale: see RESULTS.md), installs the
# reference tools (bench/requirements.txt) in bench/.venv, generates about 1M transactions
# (USERS=22500 by default) and runs bench.py. `bench.py --slate target/debug/slate` measures the
# dev-profile binary instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --locked -p slate-cli -p fraud-example
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/requirements.txt
fi
data=bench/data/warehouse
if [ ! -d "$data/ML.TRANSACTIONS" ]; then
  target/release/fraud-data --out "$data" --users "${USERS:-22500}" --merchants 5000
fi
bench/.venv/bin/python bench/bench.py --warehouse "$data"
