#!/usr/bin/env bash
# The project's own benchmark: runs `poolserver stress` scenarios S1-S4 (the shared kit's shapes) against a
# fresh release server per scenario, optionally against a second server command too, and prints one table
# with throughput, latency percentiles, errors, server CPU per connection and peak RSS. Loopback only.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/bench.sh [--bin PATH] [--server-args "ARGS"] [--compare "COMMAND {addr}"]
                        [--scenarios S1,S2,S3,S4] [--rounds N] [--timeout SECS] [--quick]

Starts `poolserver serve --bind 127.0.0.1:0 ARGS` afresh for every scenario (stdout and stderr to a file,
so per-connection logging costs what it costs in production), loads it with `poolserver stress --json`
from the same binary, and prints one table. Exits 1 if poolserver had an error in any scenario, failed to
start, or did not stop cleanly on SIGTERM; errors of the --compare server are shown but not fatal.

  scenario  clients  idle  duration   what it shows
  S1        1        0     3 s        latency of a single client
  S2        32       0     5 s        throughput
  S3        256      0     5 s        many clients at once (the listen backlog matters)
  S4        32       64    5 s        64 connections held open that send nothing

  --bin PATH           poolserver binary to test and to load with (default: cargo build --release, then
                       target/release/poolserver)
  --server-args ARGS   extra arguments for `poolserver serve`, as shell words (default: none, the defaults);
                       e.g. "--access-log off" (no line per connection), or "--access-log off --log-level
                       warn" (without the "listening on" line, the port is found in /proc)
  --compare COMMAND    a second server to run the same scenarios against. {addr} (also {host}, {port}) is
                       replaced by a free loopback port; the command is run with `exec` from the repository
                       root, so it must be one program (its PID is the one measured). Ready once a TCP
                       connect succeeds. Example:
                         --compare "python3 scripts/reference/tutorial_pool.py {addr}"
  --scenarios LIST     comma-separated subset, e.g. S1,S4 (default S1,S2,S3,S4)
  --rounds N           repeat every scenario N times, servers interleaved; conn/s, latencies and CPU per
                       connection are medians over rounds, errors are summed, RSS is the largest (default 1)
  --timeout SECS       client timeout of stress for each connect and read (default 2): bounds how long a
                       stalled server can hold a run past its duration
  --quick              every scenario lasts 1 s instead (a few seconds per server in all)
  -h, --help           this text

Columns: conn/s counts connections with the expected reply; latency is connect to the server's close, for
connections that got any reply; errors counts every failed connection (kinds and first messages are listed
under the table); CPU/conn is the server's utime+stime (/proc/PID/stat, all threads) over the stress run
divided by the connections it was offered (ok + errors), '-' if it served none; RSS is the server's VmHWM
at the end of the scenario.

Limits of this benchmark, read the numbers with them in mind:
  - The load generator runs on the same machine and shares its cores with the server (on 2 cores it takes
    about half the CPU), so conn/s is largely the box's limit and servers bunch together; CPU per
    connection separates them better.
  - CPU time comes in clock ticks (getconf CLK_TCK, usually 100 per second): at 1 s runs and few
    connections, CPU/conn is coarse.
  - There is no warm-up and no pinning; 1 s runs (--quick) are for trying the script, not for numbers.
    For comparisons with reference servers use the shared kit, which interleaves rounds and watches noise.
  - The server is killed and restarted between scenarios, so TIME_WAIT sockets of one run stay in the
    kernel during the next.
USAGE
}

die() {
    echo "bench.sh: $*" >&2
    exit 2
}

bin="" server_args="" compare="" scenarios="S1,S2,S3,S4" rounds=1 client_timeout=2 quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin|--server-args|--compare|--scenarios|--rounds|--timeout)
            [ $# -ge 2 ] || die "$1 needs a value; see --help"
            case "$1" in
                --bin) bin="$2" ;;
                --server-args) server_args="$2" ;;
                --compare) compare="$2" ;;
                --scenarios) scenarios="$2" ;;
                --rounds) rounds="$2" ;;
                --timeout) client_timeout="$2" ;;
            esac
            shift 2
            ;;
        --quick) quick=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; see --help" ;;
    esac
done

[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a whole number of at least 1, not '$rounds'"
[[ "$client_timeout" =~ ^[1-9][0-9]*$ ]] ||
    die "--timeout must be a whole number of seconds, at least 1, not '$client_timeout'"
if [ -n "$compare" ] && [[ "$compare" != *"{addr}"* && "$compare" != *"{port}"* ]]; then
    die "--compare needs {addr} or {port} in the command, so the server listens where it is measured"
fi

# clients, seconds, idle connections of a scenario.
scenario_spec() {
    case "$1" in
        S1) echo "1 3 0" ;;
        S2) echo "32 5 0" ;;
        S3) echo "256 5 0" ;;
        S4) echo "32 5 64" ;;
        *) return 1 ;;
    esac
}
IFS=',' read -r -a chosen <<<"$scenarios"
[ ${#chosen[@]} -gt 0 ] || die "--scenarios is empty"
for name in "${chosen[@]}"; do
    scenario_spec "$name" >/dev/null || die "unknown scenario '$name' in --scenarios; choose from S1,S2,S3,S4"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "$bin" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/poolserver"
fi
[ -x "$bin" ] || die "$bin is not an executable file"
clk_tck=$(getconf CLK_TCK)

work=$(mktemp -d)
server_pid="" stress_pid=""
cleanup() {
    if [ -n "$stress_pid" ]; then
        # TERM, not KILL: `timeout` passes it on to the load generator it started.
        kill -TERM "$stress_pid" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ]; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# utime + stime of a process, all its threads, in clock ticks. The command name in field 2 may hold spaces,
# so the fields are counted after its closing parenthesis: utime and stime are the 12th and 13th there.
cpu_ticks() {
    local stat rest fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    read -r -a fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}

peak_rss_kb() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fail_start() {
    echo "bench.sh: $1 did not start:" >&2
    tail -n 20 "$2" >&2
    exit 1
}

# The IPv4 port a process listens on, from /proc: its socket inodes matched against /proc/net/tcp lines in
# state 0A (LISTEN), whose local address is HEXIP:HEXPORT.
listening_port() {
    local inodes hex
    inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | tr '\n' ' ')
    [ -n "$inodes" ] || return 1
    hex=$(awk -v inodes=" $inodes" \
        '$4 == "0A" && index(inodes, " " $10 " ") { split($2, a, ":"); print a[2]; exit }' /proc/net/tcp)
    [ -n "$hex" ] && echo $((16#$hex))
}

# Starts poolserver on a free port; sets server_pid and server_addr once its "listening on" line is logged.
# Below log level info there is no such line, so the listening socket is also looked up in /proc.
start_poolserver() {
    local log=$1 port
    bash -c 'exec "$1" serve --bind 127.0.0.1:0 '"$server_args" bench.sh "$bin" >"$log" 2>&1 &
    server_pid=$!
    server_addr=""
    for _ in $(seq 100); do
        server_addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$server_addr" ] && return 0
        if port=$(listening_port "$server_pid"); then
            server_addr="127.0.0.1:$port"
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    fail_start "poolserver" "$log"
}

# Starts the --compare command on a free port; sets server_pid and server_addr once a TCP connect succeeds.
start_compare() {
    local log=$1 port cmd
    port=$(free_port)
    server_addr="127.0.0.1:$port"
    cmd=${compare//\{addr\}/$server_addr}
    cmd=${cmd//\{host\}/127.0.0.1}
    cmd=${cmd//\{port\}/$port}
    bash -c 'cd "$1" && exec '"$cmd" bench.sh "$root" >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    fail_start "the --compare server ($cmd)" "$log"
}

# SIGTERM, then SIGKILL if it has not exited within 5 s; sets stop_note to how it ended.
stop_server() {
    local status=0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        stop_note="killed: still running 5 s after SIGTERM"
    else
        stop_note=""
    fi
    wait "$server_pid" 2>/dev/null || status=$?
    if [ -z "$stop_note" ] && [ "$status" -ne 0 ]; then
        stop_note="exited with $status after SIGTERM"
    fi
    server_pid=""
}

# One scenario against one fresh server; appends a line to $work/runs.tsv.
run_one() {
    local server=$1 name=$2 round=$3 clients secs idle log json ticks_before ticks_after ticks hwm bound
    read -r clients secs idle <<<"$(scenario_spec "$name")"
    [ "$quick" -eq 1 ] && secs=1
    log="$work/$server-$name-$round.log"
    json="$work/$server-$name-$round.json"
    if [ "$server" = poolserver ]; then start_poolserver "$log"; else start_compare "$log"; fi
    echo "bench.sh: round $round/$rounds, $name ($clients clients, $idle idle, ${secs} s):" \
        "$server at $server_addr" >&2

    ticks_before=$(cpu_ticks "$server_pid") || ticks_before=""
    # stress bounds every connect and read by --timeout; the outer bound only guards against a hang in the
    # load generator itself (idle connections are opened one after another, each within the timeout). It runs
    # in the background so that a signal to this script is handled at once, not when the run ends.
    bound=$((secs + (idle + 4) * client_timeout + 10))
    timeout --kill-after=5 "$bound" "$bin" stress --addr "$server_addr" --clients "$clients" --idle "$idle" \
        --duration "${secs}s" --timeout "${client_timeout}s" --json >"$json" 2>"$json.err" &
    stress_pid=$!
    wait "$stress_pid" || true
    stress_pid=""
    ticks_after=$(cpu_ticks "$server_pid") || ticks_after=""
    hwm=$(peak_rss_kb "$server_pid") || hwm=""
    if [ -n "$ticks_before" ] && [ -n "$ticks_after" ]; then
        ticks=$((ticks_after - ticks_before))
    else
        ticks=""
    fi
    stop_server
    if [ -z "$ticks" ]; then
        stop_note="the server was gone before the run ended${stop_note:+; $stop_note}"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$name" "$round" "$clients" "$idle" "$secs" \
        "$ticks" "$hwm" "$json" "$stop_note" >>"$work/runs.tsv"
    # A busy run logs tens of megabytes: show its end only if the server ended badly, then drop it.
    if [ -n "$stop_note" ]; then
        echo "bench.sh: $server, $name: $stop_note; the end of its log:" >&2
        tail -n 5 "$log" >&2
    fi
    rm -f "$log"
}

servers=(poolserver)
[ -n "$compare" ] && servers+=(compare)
: >"$work/runs.tsv"
for round in $(seq "$rounds"); do
    for name in "${chosen[@]}"; do
        # Alternate which server goes first, so neither always runs right after the other's TIME_WAITs.
        if [ $((round % 2)) -eq 0 ] && [ ${#servers[@]} -eq 2 ]; then
            order=("${servers[1]}" "${servers[0]}")
        else
            order=("${servers[@]}")
        fi
        for server in "${order[@]}"; do
            run_one "$server" "$name" "$round"
        done
    done
done

python3 - "$work/runs.tsv" "$clk_tck" "$rounds" "$compare" "$server_args" <<'PY'
import json
import statistics
import sys

runs_file, clk_tck, rounds, compare, server_args = sys.argv[1:]
clk_tck, rounds = int(clk_tck), int(rounds)


def latency(us):
    if us < 1000:
        return f"{us} µs"
    if us < 1_000_000:
        return f"{us / 1000:.3g} ms"
    return f"{us / 1_000_000:.3g} s"


groups = {}
for line in open(runs_file, encoding="utf-8"):
    server, name, _round, clients, idle, secs, ticks, hwm, path, note = line.rstrip("\n").split("\t")
    groups.setdefault((server, name), []).append((clients, idle, secs, ticks, hwm, path, note))

header = ["server", "scenario", "clients", "idle", "secs", "conn/s", "p50", "p90", "p99", "p99.9", "max",
          "errors", "idle closed", "CPU µs/conn", "RSS MiB"]
rows, notes, poolserver_failed = [], [], False
for (server, name), runs in groups.items():
    label = "poolserver" if server == "poolserver" else "compare"
    reports, cpu, rss = [], [], []
    errors, kinds, firsts = 0, {}, {}
    idle_held = idle_closed = 0
    for clients, idle, secs, ticks, hwm, path, note in runs:
        if note:
            notes.append(f"{label} {name}: {note}")
            if server == "poolserver":
                poolserver_failed = True
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            try:
                with open(path + ".err", encoding="utf-8") as f:
                    why = f.read().strip().splitlines()[-1:] or ["no output"]
            except OSError:
                why = ["no output"]
            notes.append(f"{label} {name}: stress gave no report ({why[0]})")
            errors += 1
            if server == "poolserver":
                poolserver_failed = True
            continue
        reports.append(report)
        errors += report["failed"]
        for kind, count in report["errors"].items():
            if count:
                kinds[kind] = kinds.get(kind, 0) + count
        for kind, message in report["first_errors"].items():
            firsts.setdefault(kind, message)
        idle_held += report["idle"]["held"]
        idle_closed += report["idle"]["closed_by_server"] + report["idle"]["reset_by_server"]
        offered = report["ok"] + report["failed"]
        if ticks and report["ok"]:
            cpu.append(int(ticks) * 1e6 / clk_tck / offered)
        if hwm:
            rss.append(int(hwm) / 1024)
    if server == "poolserver" and errors:
        poolserver_failed = True
    clients, idle, secs = runs[0][:3]

    def median(values, show):
        return show(statistics.median(values)) if values else "-"

    def percentile(key):
        replied = [r["latency_us"][key] for r in reports if r["latency_us"]["max"]]
        return median(replied, lambda v: latency(round(v)))

    rows.append([label, name, clients, idle, secs,
                 median([r["conns_per_sec"] for r in reports], lambda v: f"{v:,.0f}"),
                 *(percentile(key) for key in ("p50", "p90", "p99", "p999", "max")),
                 f"{errors:,}", f"{idle_closed}/{idle_held}" if idle_held else "-",
                 median(cpu, lambda v: f"{v:.1f}"), f"{max(rss):.1f}" if rss else "-"])
    for kind, count in kinds.items():
        notes.append(f"{label} {name}: {count:,} {kind} (first: {firsts.get(kind, '?')})")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
left = {0, 1}
for row in [header] + rows:
    print("  ".join(str(cell).ljust(w) if i in left else str(cell).rjust(w) for i, (cell, w) in
                    enumerate(zip(row, widths))).rstrip())
print()
print(f"poolserver: serve --bind 127.0.0.1:0 {server_args}".rstrip())
if compare:
    print(f"compare:    {compare}")
summary = "one round" if rounds == 1 else (f"{rounds} rounds; conn/s, latencies and CPU/conn are medians, "
                                            "errors summed, RSS the largest")
print(f"{summary}; CPU in ticks of 1/{clk_tck} s; load generator on the same cores")
for note in notes:
    print(f"  {note}")
sys.exit(1 if poolserver_failed else 0)
PY
