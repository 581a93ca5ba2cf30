#!/usr/bin/env bash
# What CI checks of the Debian package, as root on a Debian machine: build it (scripts/package.sh), install
# it with dpkg -i, check that the binary runs, that man finds the page and that systemd-analyze verify finds
# nothing wrong with the installed units, then purge it and check that nothing of it is left behind.
#
# Installs what it needs when missing: cargo-deb (cargo install cargo-deb --locked, a few minutes of
# building), man-db, systemd (for systemd-analyze). Refuses to run where poolserver is already installed
# from a package: it would replace and then purge it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== package-check: %s\n' "$*"; }
fail() { echo "package-check: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and purges a package"
if dpkg -s poolserver >/dev/null 2>&1; then
    fail "a poolserver package is installed already; remove it first (dpkg --purge poolserver)"
fi

missing=()
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    step "cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

step "build the package"
scripts/package.sh
deb=$(ls -t target/debian/poolserver_*.deb | head -n 1)
echo "$deb"

# If anything below fails, the package does not stay installed on this machine.
installed=false
cleanup() {
    if $installed; then
        dpkg --purge poolserver >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "dpkg -i $deb"
dpkg -i "$deb"
installed=true
files=$(dpkg -L poolserver)

step "poolserver --version"
version=$(/usr/bin/poolserver --version)
echo "$version"
expected="poolserver $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ "$version" = "$expected" ] || fail "poolserver --version said '$version', expected '$expected'"
[ "$(command -v poolserver)" = /usr/bin/poolserver ] || fail "poolserver on PATH is $(command -v poolserver), not /usr/bin/poolserver"

step "man -w poolserver"
for page in poolserver poolserver-serve poolserver-send poolserver-stress poolserver-stats; do
    where=$(man -w "$page") || fail "man does not find $page"
    echo "$where"
    case "$where" in /usr/share/man/man1/"$page".1.gz) ;; *) fail "man found $page at $where" ;; esac
    # The page renders, and says what the command is.
    man -P cat "$page" 2>/dev/null | grep -q "poolserver" || fail "man $page renders nothing useful"
done

step "completions"
for file in /usr/share/bash-completion/completions/poolserver /usr/share/zsh/vendor-completions/_poolserver \
    /usr/share/fish/vendor_completions.d/poolserver.fish; do
    grep -q -- '--metrics' "$file" || fail "$file does not complete --metrics"
done
bash -n /usr/share/bash-completion/completions/poolserver || fail "the bash completion does not parse"

step "the config is a conffile and valid"
dpkg-query -W -f='${Conffiles}\n' poolserver | grep -q ' /etc/poolserver/poolserver.toml ' \
    || fail "/etc/poolserver/poolserver.toml is not a conffile"
poolserver serve --check --config /etc/poolserver/poolserver.toml >/dev/null \
    || fail "poolserver serve --check rejects the installed config"

step "systemd-analyze verify (installed units)"
out=$(systemd-analyze verify /lib/systemd/system/poolserver.socket /lib/systemd/system/poolserver.service 2>&1) \
    || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify complained: $out"
grep -q '^ExecStart=/usr/bin/poolserver serve ' /lib/systemd/system/poolserver.service \
    || fail "the installed service does not start /usr/bin/poolserver"
echo "no problem found"

step "dpkg --purge poolserver"
dpkg --purge poolserver
installed=false
dpkg -s poolserver >/dev/null 2>&1 && fail "dpkg still knows poolserver after the purge"
left=()
while IFS= read -r path; do
    # Shared directories (/usr, /usr/share/man/man1, ...) stay; a file or a directory of ours must not.
    case "$path" in
        */poolserver* | */_poolserver | /etc/logrotate.d/poolserver) [ -e "$path" ] && left+=("$path") ;;
        *) [ -e "$path" ] && [ ! -d "$path" ] && left+=("$path") ;;
    esac
done <<<"$files"
for path in /usr/bin/poolserver /etc/poolserver /etc/logrotate.d/poolserver /lib/systemd/system/poolserver.socket \
    /lib/systemd/system/poolserver.service /usr/share/doc/poolserver /var/log/poolserver \
    /etc/systemd/system/sockets.target.wants/poolserver.socket; do
    [ -e "$path" ] || [ -L "$path" ] && left+=("$path")
done
[ ${#left[@]} -eq 0 ] || fail "left behind after the purge: ${left[*]}"
echo "nothing left behind"
step "package checks passed"
