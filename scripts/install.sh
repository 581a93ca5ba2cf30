#!/usr/bin/env bash
# Installs poolserver as a systemd service: the release binary, the sample config and the two units. It never
# runs systemctl; it prints the commands that start the service. Running it again is safe: the binary and
# the units are replaced, an existing config file is kept.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/install.sh [--prefix DIR] [--bin PATH] [--dry-run]

Installs, under DIR (default: the root directory):

  DIR/usr/local/bin/poolserver                   the binary (mode 0755)
  DIR/etc/poolserver/poolserver.toml             config/poolserver.toml (mode 0644), only if that file
                                                 does not exist yet: an existing config is kept as it is
  DIR/etc/systemd/system/poolserver.socket       the units (mode 0644), replaced on every run
  DIR/etc/systemd/system/poolserver.service
  DIR/etc/logrotate.d/poolserver                 config/logrotate (mode 0644), replaced on every run: it
                                                 rotates the access log the service writes

then prints the systemctl commands that start the service. It never runs systemctl itself.

  --prefix DIR   install under DIR instead of / (to stage files for a package or an image)
  --bin PATH     install this binary instead of building one with `cargo build --release`
  --dry-run      print what would be done and change nothing (and build nothing)
  -h, --help     this text
USAGE
}

die() {
    echo "install.sh: $*" >&2
    exit 2
}

prefix="" bin="" dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory; see --help"; prefix="$2"; shift 2 ;;
        --bin) [ $# -ge 2 ] || die "--bin needs a path; see --help"; bin="$2"; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'; see --help" ;;
    esac
done

# "/" and "" both mean the root; drop trailing slashes so paths read DIR/etc, not DIR//etc.
while [ "${prefix%/}" != "$prefix" ]; do
    prefix="${prefix%/}"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The service runs as a dynamic user, which must be able to read the config file and its directory whatever
# the umask of the person installing.
umask 022

# Prints an action, then does it (or only prints it with --dry-run).
act() {
    if $dry_run; then
        printf 'would run:'
    else
        printf 'running:'
    fi
    printf ' %q' "$@"
    printf '\n'
    if ! $dry_run; then
        "$@"
    fi
}

if [ -z "$bin" ]; then
    act cargo build --release --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/poolserver"
elif [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
    die "--bin $bin: not an executable file"
fi

act install -D -m 0755 "$bin" "$prefix/usr/local/bin/poolserver"

config="$prefix/etc/poolserver/poolserver.toml"
if [ -e "$config" ]; then
    echo "keeping $config: it exists already and is not overwritten" \
        "(the shipped sample is $root/config/poolserver.toml)"
    if [ -f "$config" ] && [ $((0$(stat -c %a "$config") & 04)) -eq 0 ]; then
        echo "install.sh: warning: other users cannot read $config, and the service runs as a dynamic user;" \
            "run: chmod o+r $config" >&2
    fi
else
    act install -D -m 0644 "$root/config/poolserver.toml" "$config"
fi

for unit in poolserver.socket poolserver.service; do
    act install -D -m 0644 "$root/config/$unit" "$prefix/etc/systemd/system/$unit"
done
act install -D -m 0644 "$root/config/logrotate" "$prefix/etc/logrotate.d/poolserver"

if $dry_run; then
    echo
    echo "dry run: nothing was changed."
fi

cat <<'NEXT'

Next steps (as root):

  systemctl daemon-reload                     # read the new or changed units
  systemctl enable --now poolserver.socket    # listen now and at every boot; a connection starts the server
  systemctl status poolserver                 # state, and the server's STATUS line
  journalctl -u poolserver                    # the server log
  tail -f /var/log/poolserver/access.log      # the access log

After an upgrade, `systemctl restart poolserver` starts the new binary; clients that connect meanwhile
wait on the socket.
NEXT
if [ -n "$prefix" ]; then
    echo "The files are under $prefix; systemd reads them only once they are in place under /."
fi
