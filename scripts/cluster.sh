#!/usr/bin/env bash
# A poolserver cluster on one machine: backend hosts as network namespaces on a bridge, HAProxy in front on
# 127.0.0.1, and the operator's moves on it: a rolling restart that loses no client, a host that is cut off
# and comes back. Run as root. Everything it makes is recorded in a state directory, and `down` removes it.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/cluster.sh [--name NAME] COMMAND [OPTIONS]

Runs N poolserver hosts as network namespaces (NAME-h1 .. NAME-hN, 198.18.0.11, .12, ...) joined by a bridge
in a namespace of their own (NAME-lb, 198.18.0.1), and HAProxy in front, on 127.0.0.1. Each host runs two
poolserver processes with --proxy-protocol and --proxy-from 198.18.0.1 (only HAProxy's headers are
believed): port 8001 answers one message per connection (the tutorial's one-shot clients), port 8002 runs
--keep-alive (conversations). They are two HAProxy backends, with one frontend each. Run as root.

commands:
  up       create the hosts, start the backends and HAProxy, wait until every health check passes
             --hosts N          backend hosts, 1 to 50 (default 3)
             --port P           one-shot clients' port on 127.0.0.1 (default 8000)
             --conv-port Q      conversations' port on 127.0.0.1 (default P+1)
             --bin PATH         the poolserver binary (default: build target/release/poolserver)
  status   each backend as HAProxy sees it: state, last check, open and total sessions, PID
  roll     restart every host in turn: drain it in HAProxy, wait for 0 sessions, stop it gracefully (SIGTERM),
           start it again, wait for the health check, put it back into rotation
             --bin PATH         start this binary instead (an upgrade); later commands use it too
             --drain-timeout S  seconds to wait for a drained host's sessions to end (default 30); the
                                conversations still open then are ended by the graceful stop
  fail H   cut host H (a number, or hN) off, then wait until HAProxy has taken it out of both backends
             --how link         its network link goes down; its processes keep running (default)
             --how kill         its poolserver processes are killed (SIGKILL); its link stays up
  heal H   bring host H back (link up, or new processes) and wait until HAProxy has it back in rotation
  down     stop HAProxy and every backend, delete every namespace, remove the state directory

  --name NAME   names this cluster's namespaces and its state directory /run/poolserver-cluster/NAME
                (default poolcluster); several clusters with different names and ports can run at once
  -h, --help    this text

exit codes: 0 done, 1 failed, 2 usage error, 3 this machine cannot run a cluster (not root, a tool missing,
network namespaces not permitted). An 'up' that fails removes what it made, unless CLUSTER_KEEP=1 is set (to
look at it; 'down' removes it then).
USAGE
}

die() {
    echo "cluster.sh: $*" >&2
    exit 2
}

fail() {
    echo "cluster.sh: $*" >&2
    exit 1
}

cannot() {
    echo "cluster.sh: cannot run here: $*" >&2
    exit 3
}

# ---- arguments

name="poolcluster" command="" host_arg="" hosts="" port="" conv_port="" bin="" drain_timeout="" how=""
need_value() {
    [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value; see --help"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --name) need_value "$@"; name="$2"; shift 2 ;;
        --hosts) need_value "$@"; hosts="$2"; shift 2 ;;
        --port) need_value "$@"; port="$2"; shift 2 ;;
        --conv-port) need_value "$@"; conv_port="$2"; shift 2 ;;
        --bin) need_value "$@"; bin="$2"; shift 2 ;;
        --drain-timeout) need_value "$@"; drain_timeout="$2"; shift 2 ;;
        --how) need_value "$@"; how="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1'; see --help" ;;
        *)
            if [ -z "$command" ]; then
                command="$1"
            elif [ -z "$host_arg" ] && { [ "$command" = fail ] || [ "$command" = heal ]; }; then
                host_arg="$1"
            else
                die "unexpected argument '$1'; see --help"
            fi
            shift
            ;;
    esac
done

[ -n "$command" ] || { usage >&2; exit 2; }
case "$command" in
    up|status|roll|fail|heal|down) ;;
    *) die "unknown command '$command'; see --help" ;;
esac

# An option given to a command that does not take it is a mistake worth hearing about.
only_for() {
    local option=$1 value=$2
    shift 2
    [ -z "$value" ] && return
    local allowed
    for allowed in "$@"; do
        [ "$command" = "$allowed" ] && return
    done
    die "$option does not apply to '$command'; see --help"
}
only_for --hosts "$hosts" up
only_for --port "$port" up
only_for --conv-port "$conv_port" up
only_for --bin "$bin" up roll
only_for --drain-timeout "$drain_timeout" roll
only_for --how "$how" fail

is_number() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ ${#1} -le 6 ]
}
[[ "$name" =~ ^[a-z][a-z0-9-]{0,19}$ ]] || die "--name '$name': use 1 to 20 of a-z, 0-9 and -, starting with a letter"
if [ -n "$hosts" ]; then
    is_number "$hosts" && [ "$hosts" -ge 1 ] && [ "$hosts" -le 50 ] || die "--hosts '$hosts': must be 1 to 50"
fi
check_port() {
    [ -z "$2" ] || { is_number "$2" && [ "$2" -ge 1 ] && [ "$2" -le 65535 ]; } || die "$1 '$2': must be 1 to 65535"
}
check_port --port "$port"
check_port --conv-port "$conv_port"
if [ -n "$drain_timeout" ]; then
    is_number "$drain_timeout" || die "--drain-timeout '$drain_timeout': a whole number of seconds"
fi
case "$how" in
    ""|link|kill) ;;
    *) die "--how '$how': link or kill" ;;
esac
if [ "$command" = fail ] || [ "$command" = heal ]; then
    [ -n "$host_arg" ] || die "$command needs a host: a number (1 for NAME-h1) or h1; see --help"
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="/run/poolserver-cluster/$name"
lb_ns="$name-lb"
lb_addr="198.18.0.1"
# The machine's own network namespace, given a name so that HAProxy (running in $lb_ns) can listen in it.
machine_ns="$name-host"
# The two pools every host runs: HAProxy backend name, poolserver port on the host, extra serve options.
pools=(oneshot conversations)
declare -A pool_port=([oneshot]=8001 [conversations]=8002)
declare -A pool_args=([oneshot]="" [conversations]="--keep-alive --log-each-message")

host_ns() { echo "$name-h$1"; }
host_addr() { echo "198.18.0.$((10 + $1))"; }

# ---- time

# Microseconds since the epoch.
now_us() {
    echo "${EPOCHREALTIME/./}"
}

# "1.23 s" for a number of microseconds.
seconds() {
    printf '%d.%02d s' $(($1 / 1000000)) $(($1 % 1000000 / 10000))
}

# ---- processes, tracked by PID and start time so that a reused PID is never mistaken for ours

start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # Field 22, counted after the command name in parentheses (which could contain spaces).
    local fields
    read -r -a fields <<<"${stat##*) }"
    echo "${fields[19]}"
}

# Records PID under a name in the state directory.
track() {
    local started
    started=$(start_time "$2") || fail "process $2 ($1) exited at once; see $state/$1.log"
    echo "$2 $started" >"$state/$1.pid"
}

# The PID recorded under a name, if that process is still the one we started; nothing otherwise.
tracked_pid() {
    local file="$state/$1.pid" pid started
    [ -f "$file" ] || return 0
    read -r pid started <"$file"
    if [ "$(start_time "$pid" || true)" = "$started" ]; then
        echo "$pid"
    fi
}

# Sends SIGNAL to a tracked process (0: none, it has had one) and waits up to SECONDS for it to exit; SIGKILL
# after that if KILL_AFTER is set. Returns 1 if it is still running.
stop_tracked() {
    local what=$1 signal=$2 within=$3 kill_after=${4:-}
    local pid
    pid=$(tracked_pid "$what")
    [ -n "$pid" ] || { rm -f "$state/$what.pid"; return 0; }
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$within"; then
        [ -n "$kill_after" ] || return 1
        echo "cluster.sh: $what (PID $pid) still running after ${within}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || return 1
    fi
    rm -f "$state/$what.pid"
}

wait_gone() {
    local pid=$1 deadline=$(($(now_us) + $2 * 1000000))
    while kill -0 "$pid" 2>/dev/null && [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.02
    done
}

# ---- HAProxy's runtime API

api() {
    printf '%s\n' "$1" | socat -t 2 -T 5 stdio "UNIX-CONNECT:$state/haproxy.sock"
}

# A command that changes something: HAProxy answers nothing when it is done, and says why when it is not.
api_do() {
    local answer
    answer=$(api "$1") || fail "HAProxy's runtime API ($state/haproxy.sock) did not take '$1'"
    [ -z "${answer//[[:space:]]/}" ] || fail "HAProxy refused '$1': $answer"
}

haproxy_running() {
    [ -n "$(tracked_pid haproxy)" ] || fail "HAProxy of cluster '$name' is not running (its log: $state/haproxy.log)"
}

# One field of `show stat` (by its column name) for server SERVER of backend POOL.
stat_field() {
    api "show stat" | awk -F, -v px="$1" -v sv="$2" -v want="$3" '
        NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == px && $2 == sv { print $(col[want]) }'
}

# HAProxy's operational state of a server: 0 stopped, 1 starting, 2 running, 3 stopping.
op_state() {
    api "show servers state $1" | awk -v sv="$2" '
        /^# / { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
        col["srv_name"] && $(col["srv_name"]) == sv { print $(col["srv_op_state"]) }'
}

# Whether HAProxy has POOL/SERVER in service: its last health check passed and it is up (or drained).
checked_up() {
    local pool=${1%/*} server=${1#*/}
    api "show stat" | awk -F, -v px="$pool" -v sv="$server" '
        NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == px && $2 == sv {
            # "* L7OK": the last check passed and the next one is under way.
            check = $(col["check_status"]); sub(/^\* /, "", check)
            found = 1; ok = ($(col["status"]) ~ /^(UP|DRAIN)$/ && check == "L7OK")
        }
        END { exit !(found && ok) }'
}

# Whether HAProxy has taken POOL/SERVER out: operational state 0 (stopped), whatever its admin state.
taken_out() {
    [ "$(op_state "${1%/*}" "${1#*/}")" = 0 ]
}

# Waits until TEST (checked_up or taken_out) holds for every POOL/SERVER listed; returns 1 after SECONDS.
wait_all() {
    local test=$1 within=$2
    shift 2
    local deadline=$(($(now_us) + within * 1000000)) entry
    for entry in "$@"; do
        until "$test" "$entry"; do
            haproxy_running
            [ "$(now_us)" -lt "$deadline" ] || return 1
            sleep 0.02
        done
    done
}

# ---- the cluster's parts

load_state() {
    [ -f "$state/cluster.env" ] || fail "no cluster named '$name' is up (no $state/cluster.env); start one with 'up'"
    # Written by `up` below, root-owned, in /run.
    # shellcheck source=/dev/null
    source "$state/cluster.env"
}

save_state() {
    {
        printf 'hosts=%q\n' "$hosts"
        printf 'port=%q\n' "$port"
        printf 'conv_port=%q\n' "$conv_port"
        printf 'bin=%q\n' "$bin"
    } >"$state/cluster.env"
}

# The namespaces named as this cluster's are, whoever made them.
cluster_namespaces() {
    ip netns list 2>/dev/null | awk -v name="$name" '$1 ~ "^" name "-(lb|host|h[0-9]+)$" { print $1 }'
}

# Host number from "2" or "h2" (or "NAME-h2").
host_number() {
    local h=${1#"$name-"}
    h=${h#h}
    is_number "$h" && [ "$h" -ge 1 ] && [ "$h" -le "$hosts" ] || die "no host '$1' in cluster '$name' (hosts 1 to $hosts)"
    echo "$((10#$h))"
}

# Whether LOG, from byte OFFSET on, has a line that matches the extended regular expression PATTERN. (awk
# reads to the end: stopping early could make tail fail with SIGPIPE, and pipefail report that.)
log_has() {
    tail -c "+$(($2 + 1))" "$1" | PATTERN=$3 awk '$0 ~ ENVIRON["PATTERN"] { found = 1 } END { exit !found }'
}

# Starts one pool's poolserver on host K and waits until it listens. Its log is appended to the pool's log
# file; where it starts is kept, so that later waits read only this process's lines.
start_backend() {
    local k=$1 pool=$2 what="h$1-$2" log="$state/h$1-$2.log"
    local before pid deadline
    touch "$log"
    before=$(stat -c %s "$log")
    # shellcheck disable=SC2086 # pool_args holds whole options, split on purpose
    setsid ip netns exec "$(host_ns "$k")" "$bin" serve --bind "$(host_addr "$k"):${pool_port[$pool]}" \
        --proxy-protocol --proxy-from "$lb_addr" ${pool_args[$pool]} </dev/null >>"$log" 2>&1 &
    pid=$!
    track "$what" "$pid"
    deadline=$(($(now_us) + 15000000))
    until log_has "$log" "$before" 'listening on '; do
        if [ -z "$(tracked_pid "$what")" ] || [ "$(now_us)" -ge "$deadline" ]; then
            tail -n 5 "$log" >&2
            fail "poolserver for $what did not start listening; its log is $log"
        fi
        sleep 0.02
    done
    echo "$before" >"$state/$what.log-offset"
}

# Waits until the newest process of a pool on host K has answered one of HAProxy's health checks: a line
# from the load balancer's own address with no client before it (checks send a PROXY v2 LOCAL header).
wait_checked() {
    local k=$1 pool=$2 log="$state/h$1-$2.log" before deadline
    before=$(cat "$state/h$k-$pool.log-offset")
    deadline=$(($(now_us) + 15000000))
    until log_has "$log" "$before" "[]] ${lb_addr//./[.]}:[0-9]+ (served|message 1):"; do
        [ "$(now_us)" -lt "$deadline" ] || fail "no health check reached h$k's $pool backend within 15 s; see $log"
        sleep 0.02
    done
}

write_haproxy_config() {
    local k pool
    {
        cat <<EOF
# Generated by scripts/cluster.sh for cluster $name; the pattern is config/haproxy.cfg.
global
    log stdout format iso local0 info
    maxconn 4096
    # The runtime API: drain, ready, show stat, show servers state.
    stats socket $state/haproxy.sock mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    # Between hosts on one bridge a connect takes well under a millisecond; a host that does not answer
    # within this is treated as down for this connection, which is then retried elsewhere.
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
    # Up to 3 more tries for a connection that failed; each goes to another server (redispatch 1), so a
    # client sent to a host that just died waits one 'timeout connect' and is served by another.
    retries 3
    option redispatch 1

# HAProxy runs in $lb_ns, so its connections to the hosts and its checks start there, on the hosts'
# bridge (that namespace has no route anywhere else). Its listeners are made in the machine's own network
# namespace, named $machine_ns here, so clients reach them on 127.0.0.1.
frontend oneshot
    bind 127.0.0.1:$port namespace $machine_ns
    default_backend oneshot

frontend conversations
    bind 127.0.0.1:$conv_port namespace $machine_ns
    default_backend conversations
EOF
        for pool in "${pools[@]}"; do
            cat <<EOF

backend $pool
EOF
            if [ "$pool" = conversations ]; then
                cat <<'EOF'
    # Conversations last: send each new one to the host with the fewest open ones.
    balance leastconn
EOF
            else
                cat <<'EOF'
    balance roundrobin
EOF
            fi
            cat <<EOF
    option tcp-check
    tcp-check connect default
    tcp-check send hello
    tcp-check expect binary e4bfa1e681afe5b7b2e694b6e588b0
    # inter/fall/rise: a host that stops answering is out after 2 failed checks (a check every 500 ms, and
    # one that gets no answer fails after 500 ms: at most 2 s), and back after one good check.
    # observe layer4: real traffic counts too: 3 failed connections in a row mark the server down at once,
    # well before the checks when clients are coming (and the checks bring it back when it answers).
    default-server send-proxy-v2 check check-send-proxy inter 500ms fall 2 rise 1 observe layer4 error-limit 3 on-error mark-down
EOF
            for ((k = 1; k <= hosts; k++)); do
                echo "    server h$k $(host_addr "$k"):${pool_port[$pool]}"
            done
        done
    } >"$state/haproxy.cfg"
}

preflight() {
    [ "$(id -u)" -eq 0 ] || cannot "network namespaces need root (run it as root)"
    local tool
    for tool in ip:iproute2 haproxy:haproxy socat:socat setsid:util-linux; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || cannot "'${tool%%:*}' not found (Debian package ${tool#*:})"
    done
    local features
    features=$(haproxy -vv 2>/dev/null || true)
    [[ "$features" == *+NS* ]] || cannot "this haproxy is built without network namespace support (+NS)"
    if [ -z "$bin" ]; then
        cargo build --release --quiet --manifest-path "$root/Cargo.toml"
        bin="$root/target/release/poolserver"
    fi
    [ -f "$bin" ] && [ -x "$bin" ] || die "--bin $bin: not an executable file"
    bin=$(realpath "$bin")
}

cmd_up() {
    hosts=${hosts:-3}
    port=${port:-8000}
    conv_port=${conv_port:-$((port + 1))}
    [ "$port" != "$conv_port" ] || die "--port and --conv-port must differ"
    preflight
    [ ! -e "$state" ] || fail "cluster '$name' is already up (state in $state); 'down' first, or pick another --name"
    local stale
    stale=$(cluster_namespaces)
    [ -z "$stale" ] || fail "namespaces of cluster '$name' exist already (${stale//$'\n'/ }); 'down' removes them"
    mkdir -p "$state"
    chmod 700 "$state"
    save_state
    # Anything that fails from here on leaves nothing behind.
    [ -n "${CLUSTER_KEEP:-}" ] || trap 'echo "cluster.sh: up failed; removing what it made (CLUSTER_KEEP=1 keeps it for a look, then run down)" >&2; cmd_down >/dev/null' EXIT

    ip netns add "$lb_ns" 2>"$state/netns.err" || cannot "cannot create a network namespace: $(cat "$state/netns.err")"
    echo "$lb_ns" >>"$state/namespaces"
    ip -n "$lb_ns" link set lo up
    ip -n "$lb_ns" link add br0 type bridge
    ip -n "$lb_ns" addr add "$lb_addr/24" dev br0
    ip -n "$lb_ns" link set br0 up

    local k ns pool
    for ((k = 1; k <= hosts; k++)); do
        ns=$(host_ns "$k")
        ip netns add "$ns"
        echo "$ns" >>"$state/namespaces"
        ip -n "$ns" link set lo up
        # One cable per host: eth0 in the host, hK on the bridge.
        ip link add eth0 netns "$ns" type veth peer name "h$k" netns "$lb_ns"
        ip -n "$lb_ns" link set "h$k" master br0 up
        ip -n "$ns" addr add "$(host_addr "$k")/24" dev eth0
        ip -n "$ns" link set eth0 up
        for pool in "${pools[@]}"; do
            start_backend "$k" "$pool"
        done
    done

    ip netns attach "$machine_ns" $$
    echo "$machine_ns" >>"$state/namespaces"
    write_haproxy_config
    ip netns exec "$lb_ns" haproxy -c -q -f "$state/haproxy.cfg" || fail "HAProxy refused the generated $state/haproxy.cfg"
    setsid ip netns exec "$lb_ns" haproxy -db -f "$state/haproxy.cfg" </dev/null >>"$state/haproxy.log" 2>&1 &
    track haproxy $!
    local deadline=$(($(now_us) + 15000000))
    until api "show info" >/dev/null 2>&1; do
        if [ -z "$(tracked_pid haproxy)" ] || [ "$(now_us)" -ge "$deadline" ]; then
            tail -n 5 "$state/haproxy.log" >&2
            fail "HAProxy did not start (is 127.0.0.1:$port or :$conv_port taken?); its log is $state/haproxy.log"
        fi
        sleep 0.05
    done
    local all=()
    for pool in "${pools[@]}"; do
        for ((k = 1; k <= hosts; k++)); do
            all+=("$pool/h$k")
        done
    done
    wait_all checked_up 15 "${all[@]}" || fail "not every backend passed its health check within 15 s; see 'status'"
    trap - EXIT

    echo "cluster $name is up: $hosts hosts behind HAProxy"
    echo "  one-shot clients  127.0.0.1:$port  (poolserver send --addr 127.0.0.1:$port)"
    echo "  conversations     127.0.0.1:$conv_port  (backends with --keep-alive)"
    echo "  hosts             $(host_addr 1) .. $(host_addr "$hosts") in namespaces $(host_ns 1) .. $(host_ns "$hosts")"
    echo "  state and logs    $state"
}

cmd_status() {
    load_state
    haproxy_running
    local stats
    stats=$(api "show stat")
    echo "cluster $name: one-shot 127.0.0.1:$port, conversations 127.0.0.1:$conv_port"
    printf '%-5s %-12s %-14s %-6s %-8s %-9s %-8s %-8s %s\n' \
        host address pool state check sessions total pid note
    local k pool line
    for ((k = 1; k <= hosts; k++)); do
        for pool in "${pools[@]}"; do
            line=$(awk -F, -v px="$pool" -v sv="h$k" '
                NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
                $1 == px && $2 == sv {
                    state = $(col["status"]); gsub(/ /, "", state)
                    check = $(col["check_status"]); sub(/^\* /, "", check)
                    print state, (check == "" ? "-" : check), $(col["scur"]), $(col["stot"])
                }' <<<"$stats")
            local note="" pid st check scur stot
            read -r st check scur stot <<<"$line"
            pid=$(tracked_pid "h$k-$pool")
            [ -f "$state/h$k.failed" ] && note="cut off ($(cat "$state/h$k.failed"))"
            printf '%-5s %-12s %-14s %-6s %-8s %-9s %-8s %-8s %s\n' \
                "h$k" "$(host_addr "$k")" "$pool" "${st:-?}" "${check:--}" "${scur:--}" "${stot:--}" "${pid:--}" "$note"
        done
    done
}

# Takes host K out of rotation, waits for its sessions to end, restarts its processes and puts it back.
roll_host() {
    local k=$1 pool t0 t_drained t_stopped t_back sessions
    t0=$(now_us)
    for pool in "${pools[@]}"; do
        api_do "set server $pool/h$k state drain"
    done
    local deadline=$((t0 + drain_timeout * 1000000)) left
    while :; do
        left=0
        for pool in "${pools[@]}"; do
            sessions=$(stat_field "$pool" "h$k" scur) || fail "cannot read h$k's sessions from HAProxy"
            left=$((left + ${sessions:-0}))
        done
        [ "$left" -gt 0 ] || break
        if [ "$(now_us)" -ge "$deadline" ]; then
            echo "cluster.sh: h$k still has $left sessions after ${drain_timeout}s; stopping it anyway (idle conversations are closed)" >&2
            break
        fi
        sleep 0.02
    done
    t_drained=$(now_us)
    for pool in "${pools[@]}"; do
        # The server's own shutdown_timeout (10 s by default) bounds its drain; a little more than that here.
        stop_tracked "h$k-$pool" TERM 12 || fail "h$k's $pool poolserver did not stop within 12 s after SIGTERM"
    done
    t_stopped=$(now_us)
    for pool in "${pools[@]}"; do
        start_backend "$k" "$pool"
    done
    for pool in "${pools[@]}"; do
        wait_checked "$k" "$pool"
    done
    wait_all checked_up 15 "oneshot/h$k" "conversations/h$k" || fail "HAProxy does not report h$k up after its health check"
    for pool in "${pools[@]}"; do
        api_do "set server $pool/h$k state ready"
    done
    t_back=$(now_us)
    echo "h$k: drained in $(seconds $((t_drained - t0))), stopped in $(seconds $((t_stopped - t_drained))),"\
        "back in rotation $(seconds $((t_back - t_stopped))) later; $(seconds $((t_back - t0))) in all"
}

cmd_roll() {
    local new_bin=$bin
    load_state
    drain_timeout=${drain_timeout:-30}
    haproxy_running
    local k
    for ((k = 1; k <= hosts; k++)); do
        [ ! -f "$state/h$k.failed" ] || fail "h$k is cut off ($(cat "$state/h$k.failed")); 'heal $k' first"
    done
    if [ -n "$new_bin" ]; then
        [ -f "$new_bin" ] && [ -x "$new_bin" ] || die "--bin $new_bin: not an executable file"
        bin=$(realpath "$new_bin")
        save_state
    fi
    local t0
    t0=$(now_us)
    for ((k = 1; k <= hosts; k++)); do
        roll_host "$k"
    done
    echo "rolled $hosts hosts in $(seconds $(($(now_us) - t0)))"
}

cmd_fail() {
    load_state
    local k t0 how=${how:-link} pool before=0 sessions
    k=$(host_number "$host_arg")
    haproxy_running
    [ ! -f "$state/h$k.failed" ] || fail "h$k is already cut off ($(cat "$state/h$k.failed"))"
    for pool in "${pools[@]}"; do
        sessions=$(stat_field "$pool" "h$k" scur) || fail "cannot read h$k's sessions from HAProxy"
        before=$((before + ${sessions:-0}))
    done
    t0=$(now_us)
    case "$how" in
        link) ip -n "$(host_ns "$k")" link set eth0 down ;;
        kill)
            for pool in "${pools[@]}"; do
                kill -KILL "$(tracked_pid "h$k-$pool")" 2>/dev/null || true
            done
            ;;
    esac
    echo "$how" >"$state/h$k.failed"
    # From now on HAProxy sends no new client there: the time it takes is what this command reports.
    local -A out=()
    local deadline=$((t0 + 30000000))
    while [ ${#out[@]} -lt ${#pools[@]} ]; do
        for pool in "${pools[@]}"; do
            if [ -z "${out[$pool]:-}" ] && taken_out "$pool/h$k"; then
                out[$pool]=$(($(now_us) - t0))
            fi
        done
        [ "$(now_us)" -lt "$deadline" ] || fail "HAProxy still has h$k in rotation 30 s after the cut"
        sleep 0.01
    done
    if [ "$how" = kill ]; then
        for pool in "${pools[@]}"; do
            stop_tracked "h$k-$pool" KILL 5 || fail "h$k's $pool poolserver survived SIGKILL"
        done
    fi
    local what="its link down"
    [ "$how" = kill ] && what="its processes killed"
    echo "h$k cut off ($what) with $before sessions open on it; HAProxy took it out of" \
        "oneshot after $(seconds "${out[oneshot]}"), of conversations after $(seconds "${out[conversations]}")"
}

cmd_heal() {
    load_state
    local k t0 pool
    k=$(host_number "$host_arg")
    haproxy_running
    [ -f "$state/h$k.failed" ] || fail "h$k is not cut off"
    t0=$(now_us)
    case "$(cat "$state/h$k.failed")" in
        link) ip -n "$(host_ns "$k")" link set eth0 up ;;
        kill)
            for pool in "${pools[@]}"; do
                start_backend "$k" "$pool"
            done
            ;;
    esac
    wait_all checked_up 30 "oneshot/h$k" "conversations/h$k" || fail "HAProxy does not have h$k back 30 s after healing it"
    rm -f "$state/h$k.failed"
    echo "h$k healed; HAProxy had it back in rotation after $(seconds $(($(now_us) - t0)))"
}

cmd_down() {
    local found=false what file ns pid
    if [ -d "$state" ]; then
        found=true
        # HAProxy first, so that no new client arrives and the backends' connections end; then every
        # backend at once, each given its own shutdown_timeout (10 s) to finish, and SIGKILL after that.
        stop_tracked haproxy TERM 5 kill || echo "cluster.sh: could not stop HAProxy" >&2
        for file in "$state"/*.pid; do
            [ -e "$file" ] || continue
            what=$(basename "$file" .pid)
            pid=$(tracked_pid "$what")
            [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
        done
        for file in "$state"/*.pid; do
            [ -e "$file" ] || continue
            what=$(basename "$file" .pid)
            # Signal 0: no second SIGTERM, which would make poolserver give up its drain.
            stop_tracked "$what" 0 12 kill || echo "cluster.sh: could not stop $what" >&2
        done
    fi
    # The recorded namespaces, and any of this cluster's that an interrupted 'up' did not get to record.
    local namespaces
    namespaces=$({
        [ -f "$state/namespaces" ] && cat "$state/namespaces"
        cluster_namespaces
    } | sort -u || true)
    for ns in $namespaces; do
        [ -e "/run/netns/$ns" ] || continue
        found=true
        # Deleting the namespace deletes the veth pairs and the bridge inside it.
        ip netns delete "$ns" 2>/dev/null || echo "cluster.sh: could not delete namespace $ns" >&2
    done
    rm -rf "$state"
    rmdir /run/poolserver-cluster 2>/dev/null || true
    if $found; then
        echo "cluster $name is down: processes stopped, namespaces deleted, $state removed"
    else
        echo "cluster $name was not up: nothing to remove"
    fi
}

case "$command" in
    up) cmd_up ;;
    status) cmd_status ;;
    roll) cmd_roll ;;
    fail) cmd_fail ;;
    heal) cmd_heal ;;
    down) cmd_down ;;
esac
