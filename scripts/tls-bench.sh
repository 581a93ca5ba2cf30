#!/usr/bin/env bash
# TLS served by poolserver itself against what users do today: the same poolserver in plain TCP behind
# HAProxy terminating TLS (`bind ... ssl crt`, plain to the backend). Paired runs, the two setups
# interleaved in every round (their order alternating), loads from `poolserver stress --tls`, loopback only:
#   H  new TLS connections per second: one-shot exchanges, 32 clients, 5 s (a full handshake each: stress
#      resumes no session)
#   M  TLS messages per second: 64 conversations in lockstep, 200 messages each, 5 s
# and for each, the servers' CPU (utime+stime from /proc, every thread; poolserver, and HAProxy with its
# backend poolserver in the HAProxy setup) per connection (H) or per message (M).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/tls-bench.sh [--bin PATH] [--rounds N] [--duration SECS]

  --bin PATH      poolserver binary (default: cargo build --release, then target/release/poolserver)
  --rounds N      rounds; each runs H and M on both setups (default 3)
  --duration S    seconds per run (default 5)

Needs haproxy and openssl on PATH. Makes a throwaway CA and an ECDSA P-256 certificate for 127.0.0.1 in a
temporary directory. Both poolservers run with --access-log off (so the comparison is of TLS, not of
logging) and the default worker count; HAProxy runs with nbthread 2, mode tcp. Prints each run, then
medians and the native/HAProxy ratio of each round's pair.
USAGE
}

bin=""
rounds=3
duration=5
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "tls-bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for tool in haproxy openssl python3; do
    command -v "$tool" >/dev/null || { echo "tls-bench: $tool is not on PATH" >&2; exit 2; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
    (cd "$root" && nice -n 19 cargo build --release --quiet)
    bin=$root/target/release/poolserver
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The CA, and a certificate it signed for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=tls-bench-ca \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/req.pem" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$work/ext"
openssl x509 -req -in "$work/req.pem" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/ext" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"

clk_tck=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until something accepts connections on the port.
wait_port() {
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "tls-bench: nothing listens on port $1 after 10 s" >&2
    tail -n 5 "$work"/*.log >&2
    exit 1
}

# utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after the name).
ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

# Starts one setup on a fresh port; sets `port` (where clients go) and `measured` (the PIDs whose CPU counts).
start() {
    local setup=$1 keepalive=$2 backend
    port=$(free_port)
    case "$setup" in
        native)
            "$bin" serve --bind "127.0.0.1:$port" --access-log off $keepalive \
                --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" >"$work/native.log" 2>&1 &
            pids+=($!)
            measured=($!)
            ;;
        haproxy)
            backend=$(free_port)
            "$bin" serve --bind "127.0.0.1:$backend" --access-log off $keepalive >"$work/backend.log" 2>&1 &
            pids+=($!)
            measured=($!)
            wait_port "$backend"
            cat >"$work/haproxy.cfg" <<CFG
global
    nbthread 2
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:$port ssl crt $work/combined.pem
    default_backend plain
backend plain
    server poolserver 127.0.0.1:$backend
CFG
            haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
            pids+=($!)
            measured+=($!)
            ;;
    esac
    wait_port "$port"
}

stop() {
    local pid
    for pid in "${measured[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cpu_of() {
    local total=0 pid
    for pid in "${measured[@]}"; do total=$((total + $(ticks "$pid"))); done
    echo "$total"
}

# One run: prints "rate cpu_us_per_unit failed".
run() {
    local setup=$1 scenario=$2 keepalive="" load before after json
    case "$scenario" in
        H) load=(--clients 32) ;;
        M) load=(--clients 64 --messages 200); keepalive=--keep-alive ;;
    esac
    start "$setup" "$keepalive"
    before=$(cpu_of)
    json=$("$bin" stress --addr "127.0.0.1:$port" --tls --ca "$work/ca.pem" --duration "${duration}s" \
        --timeout 5s --json "${load[@]}")
    after=$(cpu_of)
    stop
    python3 - "$scenario" "$((after - before))" "$clk_tck" "$json" <<'PY'
import json, sys
scenario, ticks, tck, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
rate = report["conns_per_sec"] if scenario == "H" else report["messages_per_sec"]
units = report["ok"] if scenario == "H" else report["messages"]
cpu_us = ticks / tck * 1e6 / units if units else float("nan")
print(f"{rate:.0f} {cpu_us:.1f} {report['failed']}")
PY
}

results=$work/results
: >"$results"
echo "round scenario setup rate cpu_us_per_unit failed"
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then order="native haproxy"; else order="haproxy native"; fi
    for scenario in H M; do
        for setup in $order; do
            line=$(run "$setup" "$scenario")
            echo "$round $scenario $setup $line" | tee -a "$results"
        done
    done
done

python3 - "$results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    rnd, scenario, setup, rate, cpu, failed = line.split()
    runs[(int(rnd), scenario, setup)] = (float(rate), float(cpu), int(failed))
rounds = sorted({r for r, _, _ in runs})
names = {"H": "H new TLS connections/s (one-shot, 32 clients); CPU µs per connection",
         "M": "M TLS messages/s (64 lockstep conversations); CPU µs per message"}
print()
for scenario in "HM":
    print(names[scenario])
    for setup in ("native", "haproxy"):
        rates = [runs[(r, scenario, setup)][0] for r in rounds]
        cpus = [runs[(r, scenario, setup)][1] for r in rounds]
        failed = sum(runs[(r, scenario, setup)][2] for r in rounds)
        print(f"  {setup:8} rate median {statistics.median(rates):8.0f} (runs {', '.join(f'{x:.0f}' for x in rates)})"
              f"  CPU median {statistics.median(cpus):7.1f} µs  failed {failed}")
    ratios = [runs[(r, scenario, "native")][0] / runs[(r, scenario, "haproxy")][0] for r in rounds]
    print(f"  native/haproxy rate, paired by round: {', '.join(f'{x:.2f}' for x in ratios)}"
          f" (median {statistics.median(ratios):.2f})")
PY
