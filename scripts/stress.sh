#!/usr/bin/env bash
# Shows poolserver taking many clients at once: runs `poolserver stress` at a ladder of concurrencies, then
# with idle clients held open, and prints one summary table. Loopback only; every run is bounded in time.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/stress.sh [--addr ADDR] [--bin PATH] [--duration DUR] [--ladder "1 8 64 256"] [--idle K] [--quick]

Builds the release binary (unless --bin is given), starts `poolserver serve` on a free loopback port (unless
--addr names a running server), runs `poolserver stress` once per concurrency in the ladder and once more
with K idle connections held open, prints one table, stops the server it started, and exits non-zero if any
run counted an error.

  --addr ADDR      use the server already running at ADDR (loopback addresses only)
  --bin PATH       the poolserver binary to use instead of building target/release/poolserver
  --duration DUR   length of each run (default 5s)
  --ladder LIST    client counts to run, quoted (default "1 8 64 256")
  --idle K         idle connections in the last run (default 64)
  --quick          a few seconds in all: 1s runs, ladder "1 8 64", 16 idle (what CI runs)
  -h, --help       this text
USAGE
}

addr="" bin="" duration="5s" ladder="1 8 64 256" idle=64 idle_duration="3s"
while [ $# -gt 0 ]; do
    case "$1" in
        --addr) addr="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --ladder) ladder="$2"; shift 2 ;;
        --idle) idle="$2"; shift 2 ;;
        --quick) duration="1s" ladder="1 8 64" idle=16 idle_duration="2s"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "stress.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/poolserver"
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$addr" ]; then
    # A silent client is closed one second after it connects, so the idle run sees the server close them.
    "$bin" serve --bind 127.0.0.1:0 --read-timeout 1s 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/server.log" | head -n 1)
        [ -n "$addr" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "stress.sh: the server did not start:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
else
    case "$addr" in
        127.*|localhost:*|\[::1\]:*) ;;
        *) echo "stress.sh: $addr is not a loopback address; this script only loads loopback" >&2; exit 2 ;;
    esac
fi

echo "server $addr, runs of $duration" >&2
run=0
for clients in $ladder; do
    run=$((run + 1))
    "$bin" stress --addr "$addr" --clients "$clients" --duration "$duration" --json >"$work/run$run.json" || true
done
run=$((run + 1))
"$bin" stress --addr "$addr" --clients 8 --duration "$idle_duration" --idle "$idle" --json >"$work/run$run.json" || true

python3 - "$work" "$run" <<'PY'
import json, sys
work, runs = sys.argv[1], int(sys.argv[2])
row = "{:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>12}"
print(row.format("clients", "idle", "conn/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "errors", "idle closed"))
failed = 0
for i in range(1, runs + 1):
    with open(f"{work}/run{i}.json") as f:
        text = f.read()
    try:
        r = json.loads(text)
    except ValueError:
        print(f"run {i}: no report ({text.strip() or 'empty'})")
        failed += 1
        continue
    lat, idle = r["latency_us"], r["idle"]
    failed += r["failed"]
    closed = f"{idle['closed_by_server']}/{idle['held']}" if idle["held"] else "-"
    print(row.format(r["clients"], idle["held"], round(r["conns_per_sec"]), lat["p50"], lat["p99"],
                     lat["p999"], lat["max"], r["failed"], closed))
    for kind, message in r["first_errors"].items():
        print(f"        {kind}: {message}")
sys.exit(1 if failed else 0)
PY
