#!/usr/bin/env bash
# Builds Slate (the profile the README's two commands use), installs the reference tools
# (bench/requirements.txt) in bench/.venv, generates about 1M transactions (USERS=22500 by
# default) and runs bench.py.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --locked -p slate-cli -p fraud-example
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/requirements.txt
fi
data=bench/data/warehouse
if [ ! -d "$data/ML.TRANSACTIONS" ]; then
  target/debug/fraud-data --out "$data" --users "${USERS:-22500}" --merchants 5000
fi
bench/.venv/bin/python bench/bench.py --warehouse "$data"
