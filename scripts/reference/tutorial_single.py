#!/usr/bin/env python3
"""The tutorial's TCP server, one client at a time: the starting point poolserver grows from.

It is here so that a reader can run the original design and watch its limit: while it waits on one client's
recv(1024), every other client waits too. One idle client is enough to stall everyone, which is what
scripts/bench.sh shows in scenario S4:

    python3 scripts/reference/tutorial_single.py 127.0.0.1:0
    scripts/bench.sh --quick --scenarios S1,S4 --compare "python3 scripts/reference/tutorial_single.py {addr}"

Protocol, as in the tutorial: accept, recv(1024), send "信息已收到" (UTF-8), close. Beyond the tutorial it
takes HOST:PORT from the command line (default 127.0.0.1:8000; port 0 picks a free port), sets SO_REUSEADDR,
prints "listening on ADDR" on stderr once it listens, survives a client that resets the connection, and
exits with 0 on SIGINT or SIGTERM.
"""

import signal
import socket
import sys

REPLY = "信息已收到".encode()


def parse_addr(text):
    """Splits HOST:PORT (or [IPV6]:PORT) into a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        sys.exit(f"tutorial_single.py: '{text}' is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen(host, port, backlog):
    """socket, bind and listen, as the tutorial does, with SO_REUSEADDR so a restart can rebind at once."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    server = socket.socket(family, kind, proto)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(sockaddr)
    server.listen(backlog)
    return server


def format_addr(sockaddr):
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def stop(signum, frame):
    raise SystemExit(0)


def main():
    if len(sys.argv) > 2 or sys.argv[1:] in (["-h"], ["--help"]):
        print("usage: tutorial_single.py [HOST:PORT]   (default 127.0.0.1:8000)", file=sys.stderr)
        sys.exit(2 if len(sys.argv) > 2 else 0)
    host, port = parse_addr(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000")
    # The handler raises SystemExit in the main thread, which breaks out of a blocking accept or recv.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = listen(host, port, 128)
    print(f"listening on {format_addr(server.getsockname())}", file=sys.stderr, flush=True)
    try:
        while True:
            conn, _ = server.accept()
            try:
                conn.recv(1024)  # no timeout, as in the tutorial: a silent client holds the server here
                conn.sendall(REPLY)
            except OSError:
                pass  # the client reset or went away; nothing to reply to, serve the next one
            finally:
                conn.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
