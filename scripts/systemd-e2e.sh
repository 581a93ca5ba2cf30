#!/usr/bin/env bash
# poolserver under a real systemd, end to end: boots a throwaway systemd (the distribution's, as PID 1 of a
# systemd-nspawn container whose root is this machine's / under a tmpfs overlay), installs the .deb in it as
# a user would, and checks what only a real systemd shows:
#
#   1. socket activation: enabling poolserver.socket starts no server; the first client starts one and is
#      answered;
#   2. `systemctl status poolserver` shows the server's STATUS= text;
#   3. the journal has the lifecycle lines at their priorities (notice for `listening on`, `stopped:`);
#   4. `systemctl restart poolserver` in the middle of `poolserver stress` fails no client;
#   5. after that loaded run the journal still has every lifecycle line of both processes (the access log
#      goes to a file, so the journal's rate limit has nothing to drop);
#   6. `systemctl stop poolserver` alone does not keep it stopped (the socket starts it at the next client),
#      and `systemctl stop poolserver.socket poolserver.service` leaves nothing listening.
#
# `systemctl reload` is checked under load: the same process applies the edited file, no client fails.
#
#   scripts/systemd-e2e.sh [--deb PATH]
#
# Needs root. PATH defaults to the newest target/debian/poolserver_*.deb, built with scripts/package.sh when
# there is none. Exit 0 when every check passed, 1 when one failed; where a container cannot boot here (no
# systemd-nspawn to be had, no cgroup to use, systemd not coming up) it prints "SKIP: REASON" and exits 0.
# Everything written inside the container is gone afterwards; every process it started is killed by PID.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deb=""
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || { echo "systemd-e2e: --deb needs a path" >&2; exit 2; }; deb="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "systemd-e2e: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done

say() { printf '== systemd-e2e: %s\n' "$*"; }
skip() { echo "SKIP: systemd-e2e: $*"; exit 0; }
fail() { echo "FAILED: systemd-e2e: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "needs root to boot a container (run it with sudo)"

if ! command -v systemd-nspawn >/dev/null 2>&1; then
    say "apt-get install systemd-container"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd-container; } \
        >/dev/null 2>&1 || true
    command -v systemd-nspawn >/dev/null 2>&1 || skip "systemd-nspawn is missing and systemd-container cannot be installed"
fi

if [ -z "$deb" ]; then
    deb=$(ls -t "$root"/target/debian/poolserver_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        say "no .deb yet: scripts/package.sh"
        "$root/scripts/package.sh"
        deb=$(ls -t "$root"/target/debian/poolserver_*.deb | head -n 1)
    fi
fi
[ -f "$deb" ] || fail "no package at $deb"
deb=$(realpath "$deb")
say "package $deb"

# --- The container -------------------------------------------------------------------------------------

work=$(mktemp -d /tmp/poolserver-e2e.XXXXXX)
# nspawn puts the container's cgroups under the launcher's own: give it a cgroup of ours, so that whatever
# is left at the end can be found and killed by PID, and the cgroups removed.
group=poolserver-e2e-$$
cgroups=()
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cgroups=("/sys/fs/cgroup/$group")
elif [ -d /sys/fs/cgroup/systemd ]; then
    cgroups=("/sys/fs/cgroup/systemd/$group")
    [ -d /sys/fs/cgroup/unified ] && cgroups+=("/sys/fs/cgroup/unified/$group")
else
    skip "no cgroup hierarchy for systemd under /sys/fs/cgroup"
fi

launcher="" nspawn="" pid1=""

# Runs a command in every namespace of the container, with a clean environment and a time limit.
inside() {
    timeout -k 2 "${LIMIT:-120}" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat nsenter -t "$pid1" -a "$@"
}

teardown() {
    local status=$?
    trap - EXIT
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        # poweroff halts the container; nspawn then exits. SIGTERM to nspawn if it does not, SIGKILL last.
        [ -n "$pid1" ] && LIMIT=10 inside systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.5; done
        for signal in TERM TERM KILL; do
            kill -0 "$nspawn" 2>/dev/null || break
            kill -"$signal" "$nspawn" 2>/dev/null || true
            sleep 2
        done
    fi
    [ -n "$launcher" ] && wait "$launcher" 2>/dev/null || true
    # Anything still in our cgroups was started by this script.
    for dir in "${cgroups[@]}"; do
        [ -d "$dir" ] || continue
        for pid in $(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    for dir in "${cgroups[@]}"; do [ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
    rmdir "$work/root" 2>/dev/null || true
    rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# The host's / is the container's: units enabled here (a database, HAProxy, Prometheus...) would start
# inside. Mask them, and skip the first-boot wizard that an empty /etc in the overlay would start.
kernel_args=(systemd.firstboot=off systemd.mask=console-getty.service)
for unit in /etc/systemd/system/*.wants/*.service /etc/systemd/system/*.wants/*.timer; do
    [ -e "$unit" ] || [ -L "$unit" ] || continue
    kernel_args+=("systemd.mask=$(basename "$unit")")
done

mkdir -p "$work/root"
say "booting a container (systemd $(systemctl --version | awk 'NR == 1 { print $2 }'))"
(
    for dir in "${cgroups[@]}"; do mkdir -p "$dir" && echo "$BASHPID" >"$dir/cgroup.procs"; done
    # Pure cgroup v2 inside: systemd in hybrid mode logs errors here.
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    # nspawn refuses -D / and --ephemeral copies /: bind / (not recursively) in a private mount namespace
    # and boot that under a volatile overlay. --console=pipe with stdin from /dev/null: a passive console
    # writing to a file was seen to block PID 1. --system-call-filter=bpf: without bpf() a unit's
    # IPAddressDeny= is silently not enforced. --register=no --keep-unit: no machined or system bus here.
    exec timeout -k 5 600 unshare -m --propagation private sh -c '
        work=$1; shift
        mount --bind / "$work/root" || exit 1
        exec systemd-nspawn --directory="$work/root" --volatile=overlay --boot --console=pipe \
            --register=no --keep-unit --private-network --system-call-filter=bpf -M "poolserver-e2e-$$" "$@"
    ' nspawn "$work" --bind-ro="$(dirname "$deb"):/deb" "${kernel_args[@]}"
) </dev/null >"$work/nspawn.log" 2>&1 &
launcher=$!

for _ in $(seq 1 150); do
    nspawn=$(pgrep -P "$launcher" -x systemd-nspawn | head -n 1 || true)
    [ -n "$nspawn" ] && pid1=$(pgrep -P "$nspawn" -x systemd | head -n 1 || true)
    [ -n "$pid1" ] && break
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.2
done
[ -n "$pid1" ] || skip "no systemd started in the container: $(tail -n 5 "$work/nspawn.log" | tr '\n' ' ')"
for _ in $(seq 1 100); do inside test -S /run/systemd/private && break; sleep 0.2; done
state=$(LIMIT=90 inside systemctl is-system-running --wait 2>&1 || true)
case "$state" in
    running | degraded) say "container up ($state)" ;;
    *) skip "the container's systemd did not come up (state '$state')" ;;
esac

# --- Install, as a user would ------------------------------------------------------------------------------

say "dpkg -i $(basename "$deb"); systemctl enable --now poolserver.socket"
inside dpkg -i "/deb/$(basename "$deb")" >/dev/null || fail "dpkg -i failed inside the container"
inside systemctl enable --now poolserver.socket >/dev/null 2>&1 || fail "systemctl enable --now poolserver.socket failed"

# --- 1. Socket activation --------------------------------------------------------------------------------

active=$(inside systemctl is-active poolserver.service || true)
[ "$active" = inactive ] || fail "poolserver.service is '$active' before any client came"
reply=$(inside poolserver send --addr 127.0.0.1:8000 hello) || fail "the first client was not answered"
[ "$reply" = "信息已收到" ] || fail "the first client got '$reply'"
active=$(inside systemctl is-active poolserver.service || true)
[ "$active" = active ] || fail "the first client did not start poolserver.service (it is '$active')"
say "ok: socket activation (the first client started the service and got '$reply')"

# --- 2. STATUS= in systemctl status ------------------------------------------------------------------------

status=$(inside systemctl status --no-pager poolserver.service || true)
status_line=$(grep -m 1 'Status: "' <<<"$status" || true)
[ -n "$status_line" ] || fail "systemctl status shows no Status line: $status"
grep -Eq 'Status: "(serving on 127\.0\.0\.1:8000|served [0-9]+)' <<<"$status_line" \
    || fail "unexpected status text: $status_line"
say "ok: systemctl status shows${status_line#*Status:}"

# --- 3 to 5. A restart under load, then the journal --------------------------------------------------------

first_pid=$(inside systemctl show -p MainPID --value poolserver.service)
say "poolserver stress -c 16 -d 8s, with systemctl restart poolserver in the middle"
inside poolserver stress --addr 127.0.0.1:8000 --clients 16 --duration 8s --json >"$work/stress.json" 2>"$work/stress.err" &
stress=$!
# The restart comes once the load is on: the access log has lines of this run.
loaded=false
for _ in $(seq 1 100); do
    lines=$(inside sh -c 'wc -l </var/log/poolserver/access.log' 2>/dev/null || echo 0)
    if [ "${lines:-0}" -gt 200 ]; then loaded=true; break; fi
    sleep 0.1
done
$loaded || { kill "$stress" 2>/dev/null; fail "the load never showed in /var/log/poolserver/access.log"; }
inside systemctl restart poolserver.service || { kill "$stress" 2>/dev/null; fail "systemctl restart failed"; }
second_pid=$(inside systemctl show -p MainPID --value poolserver.service)
wait "$stress" || true
report=$(cat "$work/stress.json")
read -r ok failed <<<"$(python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["ok"], r["failed"])' <<<"$report")" \
    || fail "no stress report: $(cat "$work/stress.err")"
[ "$first_pid" != "$second_pid" ] && [ "$second_pid" != 0 ] || fail "the restart left MainPID $first_pid -> $second_pid"
[ "$failed" -eq 0 ] && [ "$ok" -gt 0 ] || fail "stress across the restart: $ok ok, $failed failed: $report"
say "ok: restart under load (PID $first_pid -> $second_pid), $ok clients served, 0 failed"

# --- Reload under load: the same process applies the edited file, no client fails -------------------------

inside cp /etc/poolserver/poolserver.toml /etc/poolserver/poolserver.toml.orig
inside sh -c 'echo "workers = 3" >>/etc/poolserver/poolserver.toml'
say "poolserver stress -c 16 -d 4s, with systemctl reload poolserver (workers = 3) in the middle"
inside poolserver stress --addr 127.0.0.1:8000 --clients 16 --duration 4s --json >"$work/reload.json" 2>"$work/reload.err" &
stress=$!
before=$(inside sh -c 'wc -l </var/log/poolserver/access.log' 2>/dev/null || echo 0)
loaded=false
for _ in $(seq 1 100); do
    lines=$(inside sh -c 'wc -l </var/log/poolserver/access.log' 2>/dev/null || echo 0)
    if [ "${lines:-0}" -gt $((before + 200)) ]; then loaded=true; break; fi
    sleep 0.1
done
$loaded || { kill "$stress" 2>/dev/null; fail "the load never showed before the reload"; }
inside systemctl reload poolserver.service || { kill "$stress" 2>/dev/null; fail "systemctl reload failed"; }
wait "$stress" || true
read -r ok failed <<<"$(python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["ok"], r["failed"])' <"$work/reload.json")" \
    || fail "no stress report: $(cat "$work/reload.err")"
[ "$failed" -eq 0 ] && [ "$ok" -gt 0 ] || fail "stress across the reload: $ok ok, $failed failed"
reloaded_pid=$(inside systemctl show -p MainPID --value poolserver.service)
[ "$reloaded_pid" = "$second_pid" ] || fail "the reload replaced the process: $second_pid -> $reloaded_pid"
inside journalctl -u poolserver.service -o cat --no-pager | grep -q 'reloaded the configuration: workers [0-9]* → 3' \
    || fail "no 'reloaded the configuration: workers N → 3' line in the journal"
inside sh -c 'echo "reply = \"reloaded\"" >>/etc/poolserver/poolserver.toml'
inside systemctl reload poolserver.service || fail "the second systemctl reload failed"
reply=""
for _ in $(seq 1 50); do
    reply=$(inside poolserver send --addr 127.0.0.1:8000 hello) || fail "no answer after the reload"
    [ "$reply" = reloaded ] && break
    sleep 0.1
done
[ "$reply" = reloaded ] || fail "the reloaded reply never came: '$reply'"
inside mv /etc/poolserver/poolserver.toml.orig /etc/poolserver/poolserver.toml
inside systemctl reload poolserver.service || fail "the last systemctl reload failed"
say "ok: systemctl reload under load: same PID $reloaded_pid, $ok clients served, 0 failed; the new reply applied"

# The journal: (PRIORITY, MESSAGE) of every entry of the service's processes.
inside journalctl -u poolserver.service -o json --no-pager >"$work/journal.json" || fail "journalctl failed"
python3 - "$work/journal.json" <<'PY' || fail "the journal's lifecycle lines are not all there (above)"
import json, sys

entries = []
for line in open(sys.argv[1], encoding="utf-8"):
    e = json.loads(line)
    if e.get("SYSLOG_IDENTIFIER") == "poolserver":
        entries.append((e.get("PRIORITY"), e.get("MESSAGE") if isinstance(e.get("MESSAGE"), str) else ""))
for priority, message in entries:
    print(f"   {priority} {message[:110]}")
def count(prefix, priority):
    return sum(1 for p, m in entries if m.startswith(prefix) and p == priority)
wanted = {"listening on ": 2, "stop requested": 1, "stopping: ": 1, "stopped: served ": 1}
missing = [f"{n} x '{prefix}' at priority 5" for prefix, n in wanted.items() if count(prefix, "5") < n]
served = [m for p, m in entries if m.startswith("stopped: served ")]
if served and served[0].startswith("stopped: served 0,"):
    missing.append("a stop summary of the loaded process (it says it served 0)")
access = [m for p, m in entries if " served: " in m]
if access:
    missing.append(f"no access lines in the journal ({len(access)} found)")
if missing:
    print("missing: " + "; ".join(missing))
    sys.exit(1)
PY
say "ok: the journal has both processes' lifecycle lines at priority 5 (notice) and no access lines"

# --- 6. Stopping ---------------------------------------------------------------------------------------

inside systemctl stop poolserver.service
reply=$(inside poolserver send --addr 127.0.0.1:8000 again) || fail "no answer after stopping the service alone"
active=$(inside systemctl is-active poolserver.service || true)
[ "$active" = active ] || fail "expected the socket to start the service again, it is '$active'"
say "ok: systemctl stop poolserver alone: the next client started it again (the socket still listens)"

inside systemctl stop poolserver.socket poolserver.service
listening=$(inside ss -Htln 'sport = :8000')
[ -z "$listening" ] || fail "still listening after stopping socket and service: $listening"
if inside poolserver send --addr 127.0.0.1:8000 --timeout 2s late >/dev/null 2>&1; then
    fail "a client was answered after stopping socket and service"
fi
active=$(inside systemctl is-active poolserver.service poolserver.socket | tr '\n' ' ' || true)
say "ok: systemctl stop poolserver.socket poolserver.service: nothing listens on 8000 ($active)"

# The loaded process's own summary came at its stop, after all that load: it reached the journal too.
summaries=$(inside journalctl -u poolserver.service -o cat --no-pager | grep '^stopped: served ' || true)
busiest=$(sed -n 's/^stopped: served \([0-9]*\),.*/\1/p' <<<"$summaries" | sort -n | tail -n 1)
[ "${busiest:-0}" -gt 10000 ] || fail "no stop summary of the loaded process in the journal: $summaries"
say "ok: after the loaded run the journal has its stop summary (served $busiest)"

say "all checks passed"
