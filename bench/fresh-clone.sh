#!/usr/bin/env bash
# Times the README's two commands as a new user meets them: a fresh clone of this repository's
# HEAD, an empty target directory, an empty cargo registry (downloads included), no Snowflake
# emulator installed, and PostgreSQL, Redis and the emulator stopped first (the tests start
# what they need). Prints one line per command; the README's build figures come from this
# script.
#   bash bench/fresh-clone.sh [WORKDIR]      # WORKDIR defaults to a new temporary directory
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
git clone -q "$root" "$work/slate"
export CARGO_HOME="$work/cargo-home"
# The emulator's virtual environment lives under the cache directory: a new one, empty.
export XDG_CACHE_HOME="$work/cache"
echo "stopping PostgreSQL, Redis and the Snowflake emulator" >&2
if command -v pg_ctlcluster >/dev/null; then
    for v in $(ls /etc/postgresql 2>/dev/null); do
        pg_ctlcluster --skip-systemctl-redirect "$v" main stop 2>/dev/null || true
    done
fi
redis-cli -h 127.0.0.1 -p 6379 shutdown nosave 2>/dev/null || true
pkill -f 'bin/fakesnow' 2>/dev/null || true
sleep 1
cd "$work/slate"
t0=$(date +%s)
./examples/fraud/run.sh > "$work/main.log" 2>&1
t1=$(date +%s)
cargo test --workspace > "$work/test.log" 2>&1
t2=$(date +%s)
echo "main command  ./examples/fraud/run.sh   $(( (t1 - t0) / 60 )) min $(( (t1 - t0) % 60 )) s"
echo "test command  cargo test --workspace    $(( (t2 - t1) / 60 )) min $(( (t2 - t1) % 60 )) s"
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests         %d passed, %d failed\n", p, f }' "$work/test.log"
echo "logs in $work"
