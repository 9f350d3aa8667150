#!/usr/bin/env bash
# Runs the fraud example end to end on embedded defaults: builds Slate, generates the example's
# warehouse when it is absent, validates the project and runs the scheduled query once. It builds
# with the same profile as `cargo test`, so the test command afterwards reuses every dependency.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --locked -p slate-cli -p fraud-example
data="${SLATE_DATA_DIR:-examples/fraud/data/warehouse}"
if [ ! -d "$data/ML.TRANSACTIONS" ]; then
  target/debug/fraud-data --out "$data"
fi
target/debug/slate --project examples/fraud --data-dir "$data" apply
target/debug/slate --project examples/fraud --data-dir "$data" run run_fraud_model
