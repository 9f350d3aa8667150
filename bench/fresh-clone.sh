#!/usr/bin/env bash
# Times the README's two commands as a new user meets them: a fresh clone of this repository's
# HEAD, an empty target directory and an empty cargo registry (downloads included). Prints one
# line per command; the README's build figures come from this script.
#   bash bench/fresh-clone.sh [WORKDIR]      # WORKDIR defaults to a new temporary directory
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
git clone -q "$root" "$work/slate"
export CARGO_HOME="$work/cargo-home"
cd "$work/slate"
t0=$(date +%s)
./examples/fraud/run.sh > "$work/main.log" 2>&1
t1=$(date +%s)
cargo test --workspace > "$work/test.log" 2>&1
t2=$(date +%s)
echo "main command  ./examples/fraud/run.sh   $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s"
echo "test command  cargo test --workspace    $(( (t2 - t1) / 60 )) min $(( (t2 - t1) % 60 )) s"
echo "logs in $work"
