#!/usr/bin/env bash
# Replication cost, one session: durable increments/s of a primary alone (ack local, no replicas)
# against the same primary with two replicas in ack modes local, quorum and all. Every node and the
# load generator share this machine's cores, so read the ratios, not the absolute numbers.
#
#   bench/scripts/replication.sh [SECONDS] [extra tally-bench flags...]
#
# Builds release binaries, runs each configuration ROUNDS times (default 3, env ROUNDS) in turn,
# and prints the median ops/s per configuration and its ratio to the unreplicated primary.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
shift || true
EXTRA=("$@")
ROUNDS=${ROUNDS:-3}
cargo build --release -p tally-net -p tally-bench >/dev/null
TALLYD=./target/release/tallyd
BENCH=./target/release/tally-bench
OUT=$(mktemp -d /tmp/tally-repl-bench.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Three blocks of consecutive free ports (main + 2 shard ports each), below the ephemeral range.
base=$((20000 + RANDOM % 20000))
P=127.0.0.1:$base R1=127.0.0.1:$((base + 10)) R2=127.0.0.1:$((base + 20))

wait_ready() { # log file
    for _ in $(seq 1 300); do grep -q "tallyd ready" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "node did not start: $1" >&2; cat "$1" >&2; exit 1
}

start() { # name listen extra...
    local name=$1 listen=$2; shift 2
    rm -rf "$OUT/$name"
    "$TALLYD" --listen "$listen" --data-dir "$OUT/$name" --shards 2 --log-level warn "$@" >"$OUT/$name.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$OUT/$name.log"
}

stop_all() { cleanup; PIDS=(); sleep 0.5; }

run() { # configuration mode
    local config=$1 mode=$2
    if [ "$config" = alone ]; then
        start p "$P"
    else
        start p "$P" --replica "$R1" --replica "$R2" --ack-mode "$mode"
        start r1 "$R1" --replica-of "$P" --replica "$R2"
        start r2 "$R2" --replica-of "$P" --replica "$R1"
        # Wait until the primary takes writes (a replica confirmed its epoch on every shard).
        for _ in $(seq 1 100); do ./target/release/tally --addr "$P" incr warmup:probe >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    "$BENCH" --addr "$P" --duration "${SECS}s" --json --no-progress "${EXTRA[@]}" >"$OUT/$config-$mode-$round.json"
    stop_all
}

for round in $(seq 1 "$ROUNDS"); do
    run alone local
    run replicated local
    run replicated quorum
    run replicated all
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def median(config, mode):
    return statistics.median(json.load(open(f"{out}/{config}-{mode}-{r}.json"))["ops_per_sec"] for r in range(1, rounds + 1))
base = median("alone", "local")
print(f"{'configuration':40} {'median ops/s':>14} {'ratio':>7}")
for config, mode, label in [("alone", "local", "primary alone, ack local"),
                            ("replicated", "local", "primary + 2 replicas, ack local"),
                            ("replicated", "quorum", "primary + 2 replicas, ack quorum"),
                            ("replicated", "all", "primary + 2 replicas, ack all")]:
    m = median(config, mode)
    print(f"{label:40} {m:14,.0f} {m / base:7.2f}")
print(f"(median of {rounds} rounds; results in {out})")
PY
