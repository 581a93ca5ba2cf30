#!/usr/bin/env bash
# Measures what a stop costs clients: starts `poolserver serve` on a free loopback port, loads it with
# `poolserver stress`, stops it with SIGTERM or SIGINT (in turn) a few hundred milliseconds in, and counts the
# clients that got a reset (with --keep-alive, conversations of 100 messages each). Repeats N times and prints the totals and how long each stop took to close its
# listener. Exits non-zero if any client was reset. Every run is bounded in time.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/stops.sh [--bin PATH] [--stops N] [--clients C] [--keep-alive]

  --bin PATH     the poolserver binary to use instead of building target/release/poolserver
  --stops N      how many stops (default 30)
  --clients C    stress clients during each stop (default 64)
  --keep-alive   the server holds conversations and each client sends 100 messages a connection
  -h, --help     this text
USAGE
}

bin="" stops=30 clients=64 serve_mode=() stress_mode=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --stops) stops="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        --keep-alive) serve_mode=(--keep-alive); stress_mode=(--messages 100); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "stops.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/poolserver"
fi

work=$(mktemp -d)
server_pid="" stress_pid=""
cleanup() {
    for pid in $server_pid $stress_pid; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

for i in $(seq 1 "$stops"); do
    "$bin" serve --bind 127.0.0.1:0 --access-log off "${serve_mode[@]}" 2>"$work/server$i.log" &
    server_pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/server$i.log" | head -n 1)
        [ -n "$addr" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "stops.sh: the server did not start:" >&2
        cat "$work/server$i.log" >&2
        exit 1
    fi
    "$bin" stress --addr "$addr" --clients "$clients" --duration 2500ms "${stress_mode[@]}" --json >"$work/run$i.json" &
    stress_pid=$!
    # Load shaping, not synchronisation: each stop comes at a different moment of the run.
    sleep "0.$((RANDOM % 7 + 3))"
    if (( i % 2 )); then kill -TERM "$server_pid"; else kill -INT "$server_pid"; fi
    wait "$server_pid" || echo "stop $i: the server exited with $?" >&2
    server_pid=""
    wait "$stress_pid" || true
    stress_pid=""
done

python3 - "$work" "$stops" <<'PY'
import datetime, json, sys
work, stops = sys.argv[1], int(sys.argv[2])
resets = refused = ok = 0
closing = []
for i in range(1, stops + 1):
    with open(f"{work}/run{i}.json") as f:
        r = json.load(f)
    resets += r["errors"]["reset"]
    refused += r["errors"]["refused"]
    ok += r["ok"]
    if r["errors"]["reset"]:
        print(f"stop {i}: {r['errors']['reset']} reset ({r['first_errors']['reset']})")
    times = {}
    with open(f"{work}/server{i}.log") as f:
        for line in f:
            for key in ("stop requested", "stopping:"):
                if key in line:
                    times[key] = datetime.datetime.fromisoformat(line.split()[0].rstrip("Z"))
    if len(times) == 2:
        closing.append((times["stopping:"] - times["stop requested"]).total_seconds() * 1000)
closing.sort()
print(f"{stops} stops under {json.load(open(f'{work}/run1.json'))['clients']} clients: {resets} reset, "
      f"{refused} refused after the stop, {ok} served")
if closing:
    print(f"listener closed after the stop request: median {closing[len(closing) // 2]:.1f} ms, "
          f"max {closing[-1]:.1f} ms")
sys.exit(1 if resets else 0)
PY
