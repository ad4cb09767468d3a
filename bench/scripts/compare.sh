#!/usr/bin/env bash
# Side-by-side benchmark of tallyd and Redis on this machine with identical tally-bench workloads.
# Not part of CI: it takes a few minutes and wants the machine to itself.
#
#   bench/scripts/compare.sh [SECONDS]      # measured seconds per run (default 10)
#
# It installs redis-server if missing (Debian package), builds tallyd and tally-bench in release,
# starts tallyd on a temporary data dir and Redis with appendonly yes / appendfsync always on a
# temporary dir (switched to everysec and no for context with CONFIG SET), runs each scenario
# against both, writes every run's JSON to $OUT (default /tmp/tally-compare-<time>), and prints one
# table with each Tally/Redis ratio. Every server it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS="${1:-10}"
OUT="${OUT:-/tmp/tally-compare-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

if ! command -v redis-server >/dev/null; then
    apt-get update && apt-get install -y redis-server
fi
# TALLYD=path/to/tallyd measures that build instead of building the working tree's.
if [ -z "${TALLYD:-}" ]; then
    cargo build --release -p tally-net -p tally-bench
    TALLYD=./target/release/tallyd
else
    cargo build --release -p tally-bench
fi
BENCH=./target/release/tally-bench

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# tallyd prints `tallyd ready listen=ADDR ...` on stdout once it serves.
mkdir -p "$OUT/tally-data"
"$TALLYD" --listen 127.0.0.1:0 --data-dir "$OUT/tally-data" >"$OUT/tallyd.out" 2>"$OUT/tallyd.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^tallyd ready' "$OUT/tallyd.out" && break; sleep 0.1; done
TALLY_ADDR=$(sed -n 's/^tallyd ready listen=\([^ ]*\).*/\1/p' "$OUT/tallyd.out")
[ -n "$TALLY_ADDR" ] || { cat "$OUT/tallyd.err"; exit 1; }

REDIS_PORT=$(free_port)
mkdir -p "$OUT/redis-data"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$OUT/redis-data" --appendonly yes \
    --appendfsync always --save '' --daemonize no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_ADDR="127.0.0.1:$REDIS_PORT"

run() { # name target extra-args...
    local name=$1 target=$2; shift 2
    local addr=$TALLY_ADDR; [ "$target" = redis ] && addr=$REDIS_ADDR
    echo "== $name (load $(cut -d' ' -f1 /proc/loadavg)): $BENCH --target $target --addr $addr $*" >&2
    "$BENCH" --target "$target" --addr "$addr" --duration "${SECS}s" --json "$@" >"$OUT/$name.json"
}

COMMON=(--connections 50 --names 1000000 --dist uniform)
run tally-d16 tally "${COMMON[@]}" --pipeline 16
run redis-always-d16 redis "${COMMON[@]}" --pipeline 16
run tally-d128 tally "${COMMON[@]}" --pipeline 128
run redis-always-d128 redis "${COMMON[@]}" --pipeline 128
run tally-d16-forwarded tally "${COMMON[@]}" --pipeline 16 --shard-aware false
run tally-d16-batch64 tally "${COMMON[@]}" --pipeline 16 --batch 64
run tally-hot tally --connections 50 --pipeline 16 --dist hot
run redis-always-hot redis --connections 50 --pipeline 16 --dist hot
run tally-mix90 tally "${COMMON[@]}" --pipeline 16 --mix incr=90,get=10
run redis-always-mix90 redis "${COMMON[@]}" --pipeline 16 --mix incr=90,get=10
run tally-reads tally "${COMMON[@]}" --pipeline 16 --mix incr=10,get=90
run redis-always-reads redis "${COMMON[@]}" --pipeline 16 --mix incr=10,get=90
run tally-strict tally --connections 50 --pipeline 16 --mix add=100 --strict-names 1
# Beside the equal-work rows: Tally's batching (64 ops per frame) on the two one-counter targets.
run tally-hot-batch64 tally --connections 50 --pipeline 16 --dist hot --batch 64
run tally-strict-batch64 tally --connections 50 --pipeline 16 --mix add=100 --strict-names 1 --batch 64
run redis-always-strict redis --connections 50 --pipeline 16 --mix add=100 --strict-names 1

# Open loop at half of each server's own closed-loop peak at depth 16.
half() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['ops_per_sec']/2))" "$1"; }
run tally-open-half tally "${COMMON[@]}" --pipeline 16 --rate "$(half "$OUT/tally-d16.json")"
run redis-always-open-half redis "${COMMON[@]}" --pipeline 16 --rate "$(half "$OUT/redis-always-d16.json")"

for fsync in everysec no; do
    redis-cli -p "$REDIS_PORT" config set appendfsync "$fsync" >/dev/null
    run "redis-$fsync-d16" redis "${COMMON[@]}" --pipeline 16
done

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None
rows = [
    ("durable incr, 50 conns, uniform 1M, depth 16", "tally-d16", "redis-always-d16", "ops_per_sec", None),
    ("durable incr, depth 128", "tally-d128", "redis-always-d128", "ops_per_sec", None),
    ("one hot counter, depth 16", "tally-hot", "redis-always-hot", "ops_per_sec", None),
    ("strict bounded decrements, one counter", "tally-strict", "redis-always-strict", "ops_per_sec", None),
    ("open loop at half peak: p50 µs", "tally-open-half", "redis-always-open-half", "latency_us", "p50"),
    ("open loop at half peak: p99 µs", "tally-open-half", "redis-always-open-half", "latency_us", "p99"),
    ("open loop at half peak: p999 µs", "tally-open-half", "redis-always-open-half", "latency_us", "p999"),
    ("90% reads: read p99 µs", "tally-reads", "redis-always-reads", "get", "p99"),
    ("90% reads: ops/s", "tally-reads", "redis-always-reads", "ops_per_sec", None),
    ("10% reads: ops/s", "tally-mix90", "redis-always-mix90", "ops_per_sec", None),
]
def value(run, key, sub):
    if run is None:
        return None
    if key == "get":
        return run["ops_by_type"]["get"]["latency_us"][sub]
    return run[key][sub] if sub else run[key]
print(f"{'scenario':<44} {'tally':>12} {'redis always':>13} {'ratio':>7}")
for label, t, r, key, sub in rows:
    tv, rv = value(load(t), key, sub), value(load(r), key, sub)
    ratio = f"{tv / rv:.2f}" if tv and rv else "-"
    print(f"{label:<44} {tv if tv is not None else '-':>12} {rv if rv is not None else '-':>13} {ratio:>7}")
print()
for name in ["tally-d16-forwarded", "tally-d16-batch64", "tally-hot-batch64", "tally-strict-batch64",
             "redis-everysec-d16", "redis-no-d16"]:
    run = load(name)
    if run:
        print(f"{name:<44} {run['ops_per_sec']:>12} ops/s  p99 {run['latency_us']['p99']} µs")
m = load("tally-d16")["machine"]
print(f"\nmachine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}; runs in {out}")
PY
