#!/usr/bin/env bash
# Builds the Debian package target/debian/poolserver_VERSION_ARCH.deb with cargo-deb: the release binary,
# the man pages and bash/zsh/fish completions (generated from the clap definitions by the binary itself),
# the systemd units (ExecStart pointing at /usr/bin/poolserver, where the package puts the binary), the
# logrotate file and the sample config as a conffile. The list of files is [package.metadata.deb] in
# Cargo.toml; this script makes the generated ones first, in target/deb-assets/. Prints the .deb's path last.
#
# Needs cargo-deb (cargo install cargo-deb --locked) and gzip.
set -euo pipefail

usage() {
    echo "usage: scripts/package.sh [--bin PATH]   (PATH: a release binary instead of cargo build --release)"
}

bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) [ $# -ge 2 ] || { usage >&2; exit 2; }; bin="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "package.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
command -v cargo-deb >/dev/null 2>&1 || { echo "package.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

if [ -z "$bin" ]; then
    cargo build --release --locked
    bin=target/release/poolserver
elif [ "$(realpath "$bin")" != "$(realpath -m target/release/poolserver)" ]; then
    # cargo-deb packages target/release/poolserver: put the given binary there.
    install -D -m 0755 "$bin" target/release/poolserver
fi

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" generate man "$assets/man"
gzip -9 -n "$assets"/man/*.1
"$bin" generate completions bash >"$assets/completions/poolserver.bash"
"$bin" generate completions zsh >"$assets/completions/_poolserver"
"$bin" generate completions fish >"$assets/completions/poolserver.fish"
sed 's|^ExecStart=/usr/local/bin/poolserver |ExecStart=/usr/bin/poolserver |' config/poolserver.service \
    >"$assets/poolserver.service"
grep -q '^ExecStart=/usr/bin/poolserver ' "$assets/poolserver.service" \
    || { echo "package.sh: no ExecStart=/usr/local/bin/poolserver line to rewrite in config/poolserver.service" >&2; exit 1; }

# --no-build: the binary is built above (or given); --no-strip: the release profile has no debug info to
# strip, and a given binary is packaged as it is.
cargo deb --no-build --no-strip --output target/debian/
