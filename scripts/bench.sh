#!/usr/bin/env bash
# The project's own benchmark: runs `poolserver stress` scenarios against a fresh release server per run,
# optionally against a second server command too. One-shot connections S1-S4 and conversations K1-K4 (the
# shared kit's shapes) make one table with throughput, latency percentiles, errors, server CPU per connection
# or message and peak RSS; --curves sweeps clients and held conversations and draws the points with gnuplot.
# Loopback only.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/bench.sh [--bin PATH] [--server-args "ARGS"] [--compare "COMMAND {addr}"]
                        [--compare-keepalive-args "ARGS"] [--timeout SECS] [--quick]
                        [--scenarios S1,S2,S3,S4,K1,K2,K3,K4] [--rounds N]
       scripts/bench.sh --curves [--chart PATH] [the options of the first line]

Starts `poolserver serve --bind 127.0.0.1:0 ARGS` afresh for every run (stdout and stderr to a file, so
per-connection logging costs what it costs in production), loads it with `poolserver stress --json` from
the same binary, and prints one table. Exits 1 if poolserver had an error in any run, failed to start, or
did not stop cleanly on SIGTERM; errors of the --compare server are shown but not fatal.

  scenario  clients        duration  what it shows
  S1        1              3 s       latency of a single client
  S2        32             5 s       throughput
  S3        256            5 s       many clients at once (the listen backlog matters)
  S4        32 + 64 idle   5 s       64 connections held open that send nothing
  K1        1              3 s       one conversation in lockstep: latency per message
  K2        64             5 s       64 conversations in lockstep, flat out: messages/s
  K3        10,000 held    10 s      10,000 conversations held all run, each sending 1 message/s (over 8
                                     client threads); the 10 s include stress's connect phase (1-2 s)
  K4        32             5 s       conversations of 100 messages, then reconnect: conversations + churn

K runs start poolserver with POOLSERVER_KEEP_ALIVE=true in its environment, and K3 also with
POOLSERVER_READ_TIMEOUT=60s: a held conversation sends its first message up to 1 s after the last of its
thread's 1,250 connects, later than the default 5 s when the box is busy, and would be closed before it
spoke. A flag in --server-args still wins over both. K1 and K2 reconnect after 200 messages (the kit holds
one connection all run): stress finishes a conversation it has begun, so a longer one would run past the
duration. K3 and --curves need 11,024 open files in every process; the script raises its soft limit
(`ulimit -Sn`) up to the hard one and stops with an error if the hard limit is lower.

  --bin PATH           poolserver binary to test and to load with (default: cargo build --release, then
                       target/release/poolserver)
  --server-args ARGS   extra arguments for `poolserver serve`, as shell words (default: none, the defaults);
                       e.g. "--access-log off" (no line per connection or message)
  --compare COMMAND    a second server to run the same scenarios against. {addr} (also {host}, {port}) is
                       replaced by a free loopback port, {keepalive} by --compare-keepalive-args in K runs
                       and by nothing in S runs; the command is run with `exec` from the repository root, so
                       it must be one program (its PID is the one measured). Ready once a TCP connect
                       succeeds. Examples:
                         --compare "python3 scripts/reference/tutorial_pool.py {addr}"
                         --compare "/tmp/bench/peers/limit_epoll/limit_epoll {addr}" \
                             --compare-keepalive-args --keepalive
  --compare-keepalive-args ARGS
                       the --compare server's own switch for conversations: put at {keepalive}, or
                       appended to the command when it has no {keepalive}, in K runs and held curve points.
                       Without it the command runs unchanged there (a one-shot server then fails K runs)
  --scenarios LIST     comma-separated subset, e.g. S1,K1 (default S1,S2,S3,S4)
  --rounds N           repeat every scenario N times, servers interleaved; rates, latencies and CPU are
                       medians over rounds, errors are summed, RSS is the largest (default 1)
  --timeout SECS       client timeout of stress for each connect, read and write (default 2): bounds how long
                       a stalled server can hold a run past its duration
  --quick              every scenario lasts 1 s instead (K3 4 s, as connecting takes 1-2 s of it), every
                       --curves point 1 s instead of 3 s: for trying the script, not for numbers
  --curves             instead of the scenarios: the sweep that shows whether cost grows flat, one short run
                       per point, each against a fresh server:
                         one-shot connections from C = 1, 8, 64, 256, 1024 client threads for 3 s:
                           conn/s and p99 latency per connection;
                         8 clients in lockstep conversations (100 messages, then reconnect) for 3 s, while
                         H = 0, 1,000 or 10,000 other conversations are held open, each sending 1 message/s
                         (a second stress, --held H, connected before the 8 start): all messages answered per
                         second (the 8 clients' plus the held ones') and the p99 of each group's messages.
                       Takes about a minute per server. Prints the points, writes them as TSV next to the
                       chart (PATH with .tsv for .svg) and draws the chart with gnuplot (Debian package
                       gnuplot-nox); without gnuplot the points are still written and the script says so.
  --chart PATH         with --curves: where the SVG goes (default docs/bench-curves.svg in the repository)
  -h, --help           this text

Columns: conn/s counts connections (in K runs, conversations) that got every reply right; msg/s counts
messages answered right (K runs only); latency is connect to the server's close per connection in S runs,
send to the whole reply per message in K runs; errors counts every failed connection or conversation (kinds
and first messages are listed under the table); CPU/conn (S runs) and CPU/msg (K runs) are the server's
utime+stime (/proc/PID/stat, all threads) over the stress run divided by the connections or messages it was
offered (answered + failed), '-' if it answered none; RSS is the server's VmHWM at the end of the run.

Limits of this benchmark, read the numbers with them in mind:
  - The load generator runs on the same machine and shares its cores with the server (on 2 cores it takes
    about half the CPU), so rates are largely the box's limit and servers bunch together; CPU per
    connection or message separates them better.
  - CPU time comes in clock ticks (getconf CLK_TCK, usually 100 per second): at 1 s runs and few
    connections, CPU/conn is coarse. K3's CPU/msg includes the 10,000 accepts and closes.
  - There is no warm-up and no pinning; 1 s runs (--quick) are for trying the script, not for numbers.
    For comparisons with reference servers use the shared kit, which interleaves rounds and watches noise.
  - The server is killed and restarted between runs, so TIME_WAIT sockets of one run stay in the kernel
    during the next.
USAGE
}

die() {
    echo "bench.sh: $*" >&2
    exit 2
}

bin="" server_args="" compare="" compare_keepalive="" scenarios="" rounds="" client_timeout=2 quick=0
curves=0 chart=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin|--server-args|--compare|--compare-keepalive-args|--scenarios|--rounds|--timeout|--chart)
            [ $# -ge 2 ] || die "$1 needs a value; see --help"
            case "$1" in
                --bin) bin="$2" ;;
                --server-args) server_args="$2" ;;
                --compare) compare="$2" ;;
                --compare-keepalive-args) compare_keepalive="$2" ;;
                --scenarios) scenarios="$2" ;;
                --rounds) rounds="$2" ;;
                --timeout) client_timeout="$2" ;;
                --chart) chart="$2" ;;
            esac
            shift 2
            ;;
        --quick) quick=1; shift ;;
        --curves) curves=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; see --help" ;;
    esac
done

if [ "$curves" -eq 1 ]; then
    [ -z "$scenarios" ] || die "--curves runs its own sweep instead of --scenarios; give one or the other"
    [ -z "$rounds" ] || die "--curves runs every point once; --rounds is for the scenario table"
else
    [ -z "$chart" ] || die "--chart is where --curves draws its chart; add --curves"
fi
scenarios=${scenarios:-S1,S2,S3,S4}
rounds=${rounds:-1}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a whole number of at least 1, not '$rounds'"
[[ "$client_timeout" =~ ^[1-9][0-9]*$ ]] ||
    die "--timeout must be a whole number of seconds, at least 1, not '$client_timeout'"
if [ -n "$compare" ] && [[ "$compare" != *"{addr}"* && "$compare" != *"{port}"* ]]; then
    die "--compare needs {addr} or {port} in the command, so the server listens where it is measured"
fi
[ -z "$compare_keepalive" ] || [ -n "$compare" ] || die "--compare-keepalive-args needs --compare"

# kind (S one-shot, K conversations), clients (threads of stress), seconds, idle connections, messages per
# conversation, held conversations.
scenario_spec() {
    case "$1" in
        S1) echo "S 1 3 0 1 0" ;;
        S2) echo "S 32 5 0 1 0" ;;
        S3) echo "S 256 5 0 1 0" ;;
        S4) echo "S 32 5 64 1 0" ;;
        K1) echo "K 1 3 0 200 0" ;;
        K2) echo "K 64 5 0 200 0" ;;
        K3) echo "K 8 10 0 1 10000" ;;
        K4) echo "K 32 5 0 100 0" ;;
        *) return 1 ;;
    esac
}
IFS=',' read -r -a chosen <<<"$scenarios"
[ ${#chosen[@]} -gt 0 ] || die "--scenarios is empty"
needs_conversations=0 most_held=0
for name in "${chosen[@]}"; do
    spec=$(scenario_spec "$name") ||
        die "unknown scenario '$name' in --scenarios; choose from S1,S2,S3,S4,K1,K2,K3,K4"
    read -r kind _ _ _ _ held <<<"$spec"
    if [ "$curves" -eq 0 ]; then
        [ "$kind" = K ] && needs_conversations=1
        [ "$held" -gt "$most_held" ] && most_held=$held
    fi
done

# The sweep of --curves: client threads of the one-shot points, held conversations of the others, and the
# fixed active load that runs alongside the held ones.
curve_clients=(1 8 64 256 1024)
curve_held=(0 1000 10000)
active_clients=8 active_messages=100 held_threads=8
point_secs=3
[ "$quick" -eq 1 ] && point_secs=1
held_secs=$((point_secs + 5))
if [ "$curves" -eq 1 ]; then
    needs_conversations=1
    most_held=${curve_held[-1]}
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$curves" -eq 1 ]; then
    if [ -z "$chart" ]; then
        chart=$root/docs/bench-curves.svg
        mkdir -p "$root/docs"
    fi
    [[ "$chart" == *.svg ]] || die "--chart must name an .svg file, not '$chart'"
    [ -d "$(dirname "$chart")" ] || die "--chart: the folder $(dirname "$chart") does not exist"
    points_file=${chart%.svg}.tsv
    if ! command -v gnuplot >/dev/null 2>&1; then
        echo "bench.sh: gnuplot is not installed (Debian: apt-get install gnuplot-nox): the points will be" \
            "written to $points_file, but no chart drawn" >&2
    fi
fi

if [ -n "$compare" ] && [ "$needs_conversations" -eq 1 ] && [ -z "$compare_keepalive" ]; then
    echo "bench.sh: note: no --compare-keepalive-args, so the --compare command runs unchanged for" \
        "conversations; a server that closes after one reply fails those runs" >&2
fi

# Every held conversation is one descriptor in stress and one in the server; 1,024 more for everything else.
if [ "$most_held" -gt 0 ]; then
    need=$((most_held + 1024))
    soft=$(ulimit -S -n) hard=$(ulimit -H -n)
    if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
        if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
            die "$most_held held conversations$([ "$curves" -eq 1 ] && echo ' (the last points of --curves)')" \
                "need $need open files in the server and in stress, but the" \
                "hard limit here is $hard (ulimit -Hn): raise it (as root, ulimit -Hn $need, or LimitNOFILE=" \
                "in a unit)$([ "$curves" -eq 1 ] || echo ' or leave K3 out')"
        fi
        ulimit -S -n "$need" || die "cannot raise the open-file soft limit from $soft to $need"
        echo "bench.sh: raised the open-file soft limit from $soft to $need for the held conversations" >&2
    fi
fi

if [ -z "$bin" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/poolserver"
fi
[ -x "$bin" ] || die "$bin is not an executable file"
clk_tck=$(getconf CLK_TCK)

# A short name for the --compare server in the chart: its program, or the script an interpreter runs.
compare_label=""
if [ -n "$compare" ]; then
    read -r -a words <<<"$compare"
    compare_label=$(basename "${words[0]}")
    case "$compare_label" in
        python*|bash|sh|env|exec) [ ${#words[@]} -gt 1 ] && compare_label=$(basename "${words[1]}" .py) ;;
    esac
fi

work=$(mktemp -d)
server_pid="" stress_pid="" held_pid=""
cleanup() {
    local pid
    # TERM, not KILL: `timeout` passes it on to the load generator it started.
    for pid in "$stress_pid" "$held_pid"; do
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
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

# Open descriptors of a process (an unmatched glob, a process that is gone, counts as 1).
open_fds() {
    local fds=("/proc/$1/fd/"*)
    echo "${#fds[@]}"
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
# Below log level info there is no such line, so the listening socket is also looked up in /proc. For
# conversations (kind K) keep-alive is switched on through the environment, so that --server-args, whose
# flags come first, can still say otherwise; `held` also allows 60 s for a first message.
start_poolserver() {
    local log=$1 kind=$2 held=$3 port
    local env=()
    if [ "$kind" = K ]; then
        env+=(POOLSERVER_KEEP_ALIVE=true)
        [ "$held" -gt 0 ] && env+=(POOLSERVER_READ_TIMEOUT=60s)
    fi
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash, as the server's path
    env "${env[@]}" bash -c 'exec "$1" serve --bind 127.0.0.1:0 '"$server_args" bench.sh "$bin" >"$log" 2>&1 &
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

# Starts the --compare command on a free port, with its keep-alive switch for conversations (kind K); sets
# server_pid and server_addr once a TCP connect succeeds.
start_compare() {
    local log=$1 kind=$2 port cmd switch=""
    port=$(free_port)
    server_addr="127.0.0.1:$port"
    [ "$kind" = K ] && switch=$compare_keepalive
    cmd=$compare
    if [[ "$cmd" == *"{keepalive}"* ]]; then
        cmd=${cmd//\{keepalive\}/"$switch"}
    elif [ -n "$switch" ]; then
        cmd="$cmd $switch"
    fi
    cmd=${cmd//\{addr\}/"$server_addr"}
    cmd=${cmd//\{host\}/127.0.0.1}
    cmd=${cmd//\{port\}/"$port"}
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

start_server() {
    if [ "$1" = poolserver ]; then start_poolserver "$2" "$3" "$4"; else start_compare "$2" "$3"; fi
}

# Stops SERVER (poolserver or compare): SIGTERM, then SIGKILL if it has not exited within 5 s; sets stop_note
# to how it ended.
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
    # poolserver exits 0 on SIGTERM; a --compare server without a handler is ended by the signal (128 + 15).
    if [ "$1" = compare ] && [ "$status" -eq 143 ]; then
        status=0
    fi
    if [ -z "$stop_note" ] && [ "$status" -ne 0 ]; then
        stop_note="exited with $status after SIGTERM"
    fi
    server_pid=""
}

# Starts `poolserver stress --json` in the background, its report to JSON_FILE and stderr next to it, bounded
# by BOUND seconds; sets last_pid. stress bounds every connect and read by --timeout itself; the outer bound
# only guards against a hang in the load generator. In the background, so that a signal to this script is
# handled at once, not when the run ends.
start_stress() {
    local json_file=$1 bound=$2
    shift 2
    timeout --kill-after=5 "$bound" "$bin" stress --addr "$server_addr" --timeout "${client_timeout}s" --json \
        "$@" >"$json_file" 2>"$json_file.err" &
    last_pid=$!
}

# What remains after a run: the server's CPU ticks since TICKS_BEFORE and its peak RSS (sets ticks, hwm),
# then the server stopped (sets stop_note); a log is shown only if the server ended badly, then dropped.
finish_run() {
    local server=$1 what=$2 ticks_before=$3 log=$4 ticks_after
    ticks_after=$(cpu_ticks "$server_pid") || ticks_after=""
    hwm=$(peak_rss_kb "$server_pid") || hwm=""
    if [ -n "$ticks_before" ] && [ -n "$ticks_after" ]; then
        ticks=$((ticks_after - ticks_before))
    else
        ticks=""
    fi
    stop_server "$server"
    if [ -z "$ticks" ]; then
        stop_note="the server was gone before the run ended${stop_note:+; $stop_note}"
    fi
    if [ -n "$stop_note" ]; then
        echo "bench.sh: $server, $what: $stop_note; the end of its log:" >&2
        tail -n 5 "$log" >&2
    fi
    rm -f "$log"
}

# One scenario against one fresh server; appends a line to $work/runs.tsv.
run_one() {
    local server=$1 name=$2 round=$3 kind clients secs idle messages held log json ticks_before bound
    local args=()
    read -r kind clients secs idle messages held <<<"$(scenario_spec "$name")"
    if [ "$quick" -eq 1 ]; then
        secs=1
        [ "$held" -gt 0 ] && secs=4
    fi
    log="$work/$server-$name-$round.log"
    json="$work/$server-$name-$round.json"
    start_server "$server" "$log" "$kind" "$held"
    echo "bench.sh: round $round/$rounds, $name (${secs} s): $server at $server_addr" >&2

    args=(--clients "$clients" --duration "${secs}s")
    [ "$idle" -gt 0 ] && args+=(--idle "$idle")
    [ "$messages" -gt 1 ] && args+=(--messages "$messages")
    [ "$held" -gt 0 ] && args+=(--held "$held" --interval 1s)
    # Idle connections are opened one after another, each within the timeout; a conversation that has begun
    # runs to its end; held conversations connect and close one after another in each thread.
    bound=$((secs + (idle + 4) * client_timeout + 10))
    [ "$kind" = K ] && bound=$((secs + 60))
    ticks_before=$(cpu_ticks "$server_pid") || ticks_before=""
    start_stress "$json" "$bound" "${args[@]}"
    stress_pid=$last_pid
    wait "$stress_pid" || true
    stress_pid=""
    finish_run "$server" "$name" "$ticks_before" "$log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$name" "$round" "$kind" "$clients" \
        "$idle" "$secs" "$held" "$ticks" "$hwm" "$json" "$stop_note" >>"$work/runs.tsv"
}

# One point of --curves against one fresh server; appends a line to $work/points.tsv. Series "oneshot": X
# client threads of one-shot connections. Series "held": X conversations held (a second stress, started
# first, given 5 s beyond the point to connect them) while the fixed active load runs.
run_point() {
    local server=$1 series=$2 x=$3 log json held_json="" kind=S held=0 ticks_before ticks_after_active=""
    local note="" waited
    log="$work/$server-$series-$x.log"
    json="$work/$server-$series-$x.json"
    if [ "$series" = held ]; then
        kind=K held=$x
    fi
    start_server "$server" "$log" "$kind" "$held"
    echo "bench.sh: curves, $series $x (${point_secs} s): $server at $server_addr" >&2

    if [ "$held" -gt 0 ]; then
        held_json="$work/$server-$series-$x-held.json"
        start_stress "$held_json" $((held_secs + 60)) --held "$held" --interval 1s \
            --clients "$held_threads" --duration "${held_secs}s"
        held_pid=$last_pid
        # Connected once the server holds a descriptor for each: bounded by 20 s and by stress giving up.
        waited=0
        while [ "$(open_fds "$server_pid")" -lt "$held" ]; do
            if ! kill -0 "$held_pid" 2>/dev/null || [ "$waited" -ge 200 ]; then
                note="only $(open_fds "$server_pid") descriptors open in the server after $((waited / 10)) s"
                note+=" of connecting $held conversations"
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    fi

    ticks_before=$(cpu_ticks "$server_pid") || ticks_before=""
    if [ "$series" = oneshot ]; then
        start_stress "$json" $((point_secs + 4 * client_timeout + 10)) --clients "$x" --duration "${point_secs}s"
    else
        start_stress "$json" $((point_secs + 60)) --clients "$active_clients" --messages "$active_messages" \
            --duration "${point_secs}s"
    fi
    stress_pid=$last_pid
    wait "$stress_pid" || true
    stress_pid=""
    if [ -n "$held_pid" ]; then
        if ! kill -0 "$held_pid" 2>/dev/null; then
            note+="${note:+; }the held conversations' run ended before the active clients' did"
        fi
        # Its CPU after the active run is not counted, but its report covers the whole of it.
        ticks_after_active=$(cpu_ticks "$server_pid") || ticks_after_active=""
        wait "$held_pid" || true
        held_pid=""
    fi
    finish_run "$server" "$series $x" "$ticks_before" "$log"
    if [ "$held" -gt 0 ] && [ -n "$ticks" ]; then
        if [ -n "$ticks_after_active" ]; then
            ticks=$((ticks_after_active - ticks_before))
        else
            ticks=""
        fi
    fi
    [ -n "$note" ] && echo "bench.sh: $server, $series $x: $note" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$series" "$x" "$ticks" "$hwm" "$json" \
        "$held_json" "$stop_note" "$note" >>"$work/points.tsv"
}

servers=(poolserver)
[ -n "$compare" ] && servers+=(compare)

if [ "$curves" -eq 1 ]; then
    : >"$work/points.tsv"
    points=()
    for x in "${curve_clients[@]}"; do points+=("oneshot $x"); done
    for x in "${curve_held[@]}"; do points+=("held $x"); done
    for point in "${points[@]}"; do
        read -r series x <<<"$point"
        for server in "${servers[@]}"; do
            run_point "$server" "$series" "$x"
        done
    done
    status=0
    python3 - "$work/points.tsv" "$points_file" "$clk_tck" "$point_secs" "$held_secs" "$compare" \
        "$compare_label" "$server_args" "$active_clients" "$active_messages" <<'PY' || status=$?
import json
import sys

(points_file, out_file, clk_tck, secs, held_secs, compare, compare_label, server_args, active_clients,
 active_messages) = sys.argv[1:]
clk_tck, held_secs = int(clk_tck), int(held_secs)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except (OSError, ValueError):
        try:
            with open(path + ".err", encoding="utf-8") as f:
                why = f.read().strip().splitlines()[-1:] or ["no output"]
        except OSError:
            why = ["no output"]
        return None, why[0]


def num(value, digits=0):
    return "-" if value is None else f"{value:.{digits}f}"


columns = ["server", "series", "x", "conns_per_sec", "msgs_per_sec", "active_msgs_per_sec", "held_msgs_per_sec",
           "p50_us", "p99_us", "held_p99_us", "errors", "held_errors", "cpu_us_per_op", "rss_mib", "note"]
rows, notes, poolserver_failed = [], [], False
for line in open(points_file, encoding="utf-8"):
    server, series, x, ticks, hwm, path, held_path, stop_note, note = line.rstrip("\n").split("\t")
    label = "poolserver" if server == "poolserver" else compare_label
    problems = [n for n in (stop_note, note) if n]
    report, why = load(path)
    held, held_why = load(held_path) if held_path else (None, None)
    if report is None:
        problems.append(f"stress gave no report ({why})")
    if held_path and held is None:
        problems.append(f"the held conversations' stress gave no report ({held_why})")
    row = dict(server=label, series=series, x=int(x), conns_per_sec=None, msgs_per_sec=None,
               active_msgs_per_sec=None, held_msgs_per_sec=None, p50_us=None, p99_us=None, held_p99_us=None,
               errors=None, held_errors=None, cpu_us_per_op=None,
               rss_mib=int(hwm) / 1024 if hwm else None)
    if report is not None:
        lat = report["latency_us"]
        row.update(errors=report["failed"], p50_us=lat["p50"] if lat["max"] else None,
                   p99_us=lat["p99"] if lat["max"] else None)
        if series == "oneshot":
            row["conns_per_sec"] = report["conns_per_sec"]
            offered = report["ok"] + report["failed"]
        else:
            # Held conversations send from their thread's start to the deadline, so over the duration asked
            # for; the report's elapsed time also counts the closes at the end.
            held_rate = held["messages"] / held_secs if held else 0.0
            row.update(active_msgs_per_sec=report["messages_per_sec"], held_msgs_per_sec=held_rate if held else None,
                       msgs_per_sec=report["messages_per_sec"] + held_rate)
            offered = report["messages"] + report["failed"] + held_rate * report["elapsed_s"]
        if ticks and offered:
            row["cpu_us_per_op"] = int(ticks) * 1e6 / clk_tck / offered
        for kind, count in report["errors"].items():
            if count:
                problems.append(f"{count:,} {kind} (first: {report['first_errors'].get(kind, '?')})")
    if held is not None:
        row.update(held_errors=held["failed"], held_p99_us=held["latency_us"]["p99"] if held["latency_us"]["max"]
                   else None)
        for kind, count in held["errors"].items():
            if count:
                problems.append(f"held: {count:,} {kind} (first: {held['first_errors'].get(kind, '?')})")
    if problems and server == "poolserver":
        poolserver_failed = True
    row["note"] = "; ".join(problems)
    for problem in problems:
        notes.append(f"{label} {series} {x}: {problem}")
    rows.append(row)

rows.sort(key=lambda r: (r["server"] != "poolserver", r["series"] != "oneshot", r["x"]))
with open(out_file, "w", encoding="utf-8") as out:
    out.write("\t".join(columns) + "\n")
    for r in rows:
        cells = [r["server"], r["series"], str(r["x"]), num(r["conns_per_sec"]), num(r["msgs_per_sec"]),
                 num(r["active_msgs_per_sec"]), num(r["held_msgs_per_sec"]), num(r["p50_us"]), num(r["p99_us"]),
                 num(r["held_p99_us"]), num(r["errors"]), num(r["held_errors"]), num(r["cpu_us_per_op"], 1),
                 num(r["rss_mib"], 1), r["note"] or "-"]
        out.write("\t".join(cells) + "\n")


def ms(us):
    return "-" if us is None else f"{us / 1000:.3g} ms"


def rate(v):
    return "-" if v is None else f"{v:,.0f}"


header = ["server", "point", "conn/s", "msg/s all", "msg/s active", "p99", "p99 held", "errors", "CPU µs/op",
          "RSS MiB"]
table = [header]
for r in rows:
    point = f"{r['x']} clients" if r["series"] == "oneshot" else f"{r['x']:,} held"
    errors = "-" if r["errors"] is None else f"{r['errors'] + (r['held_errors'] or 0):,}"
    table.append([r["server"], point, rate(r["conns_per_sec"]), rate(r["msgs_per_sec"]),
                  rate(r["active_msgs_per_sec"]), ms(r["p99_us"]), ms(r["held_p99_us"]), errors,
                  num(r["cpu_us_per_op"], 1), num(r["rss_mib"], 1)])
widths = [max(len(row[i]) for row in table) for i in range(len(header))]
for row in table:
    print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                    enumerate(zip(row, widths))).rstrip())
print()
print(f"poolserver: serve --bind 127.0.0.1:0 {server_args}".rstrip())
if compare:
    print(f"compare:    {compare} ({compare_label})")
print(f"{secs} s per point, one run each. One-shot: conn/s and p99 per connection from N client threads. Held: "
      f"{active_clients} clients in lockstep conversations of {active_messages} messages while N others are held "
      "open sending 1 message/s; msg/s all = the active clients' + the held ones', p99 per message of each; "
      "CPU µs/op per connection or per message of the active run")
for note in notes:
    print(f"  {note}")
print(f"points: {out_file}")
sys.exit(1 if poolserver_failed else 0)
PY
    if command -v gnuplot >/dev/null 2>&1; then
        title="poolserver stress on loopback, $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' \
            /proc/cpuinfo)), load generator on the same cores, $(date +%Y-%m-%d)"
        [ "$quick" -eq 1 ] && title+=", --quick"
        gnuplot -c "$root/scripts/bench-curves.gp" "$points_file" "$chart" "$compare_label" "$title"
        echo "bench.sh: chart: $chart" >&2
    else
        echo "bench.sh: gnuplot is not installed (Debian: apt-get install gnuplot-nox): no chart drawn;" \
            "the points are in $points_file" >&2
    fi
    exit "$status"
fi

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
    server, name, _round, kind, clients, idle, secs, held, ticks, hwm, path, note = line.rstrip("\n").split("\t")
    groups.setdefault((server, name), []).append((kind, clients, idle, secs, held, ticks, hwm, path, note))

header = ["server", "scenario", "clients", "idle", "secs", "conn/s", "msg/s", "p50", "p90", "p99", "p99.9", "max",
          "errors", "idle closed", "CPU µs/conn", "CPU µs/msg", "RSS MiB"]
rows, notes, poolserver_failed, any_k = [], [], False, False
for (server, name), runs in groups.items():
    label = "poolserver" if server == "poolserver" else "compare"
    reports, cpu, rss = [], [], []
    errors, kinds, firsts = 0, {}, {}
    idle_held = idle_closed = 0
    for kind, clients, idle, secs, held, ticks, hwm, path, note in runs:
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
        for error_kind, count in report["errors"].items():
            if count:
                kinds[error_kind] = kinds.get(error_kind, 0) + count
        for error_kind, message in report["first_errors"].items():
            firsts.setdefault(error_kind, message)
        idle_held += report["idle"]["held"]
        idle_closed += report["idle"]["closed_by_server"] + report["idle"]["reset_by_server"]
        answered = report["ok"] if kind == "S" else report["messages"]
        if ticks and answered:
            cpu.append(int(ticks) * 1e6 / clk_tck / (answered + report["failed"]))
        if hwm:
            rss.append(int(hwm) / 1024)
    if server == "poolserver" and errors:
        poolserver_failed = True
    kind, clients, idle, secs, held = runs[0][:5]
    any_k = any_k or kind == "K"

    def median(values, show):
        return show(statistics.median(values)) if values else "-"

    def percentile(key):
        replied = [r["latency_us"][key] for r in reports if r["latency_us"]["max"]]
        return median(replied, lambda v: latency(round(v)))

    def rate(key):
        return median([r[key] for r in reports], lambda v: f"{v:,.0f}")

    rows.append([label, name, f"{int(held):,} held" if int(held) else clients, idle, secs,
                 "-" if int(held) else rate("conns_per_sec"), rate("messages_per_sec") if kind == "K" else "-",
                 *(percentile(key) for key in ("p50", "p90", "p99", "p999", "max")),
                 f"{errors:,}", f"{idle_closed}/{idle_held}" if idle_held else "-",
                 median(cpu, lambda v: f"{v:.1f}") if kind == "S" else "-",
                 median(cpu, lambda v: f"{v:.1f}") if kind == "K" else "-",
                 f"{max(rss):.1f}" if rss else "-"])
    for error_kind, count in kinds.items():
        notes.append(f"{label} {name}: {count:,} {error_kind} (first: {firsts.get(error_kind, '?')})")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
left = {0, 1}
for row in [header] + rows:
    print("  ".join(str(cell).ljust(w) if i in left else str(cell).rjust(w) for i, (cell, w) in
                    enumerate(zip(row, widths))).rstrip())
print()
print(f"poolserver: serve --bind 127.0.0.1:0 {server_args}".rstrip())
if compare:
    print(f"compare:    {compare}")
summary = "one round" if rounds == 1 else (f"{rounds} rounds; rates, latencies and CPU are medians, "
                                            "errors summed, RSS the largest")
print(f"{summary}; CPU in ticks of 1/{clk_tck} s; load generator on the same cores")
if any_k:
    print("K runs: latency per message, conn/s = conversations closed cleanly per second; poolserver with "
          "POOLSERVER_KEEP_ALIVE=true (K3 also POOLSERVER_READ_TIMEOUT=60s)")
for note in notes:
    print(f"  {note}")
sys.exit(1 if poolserver_failed else 0)
PY
