#!/usr/bin/env python3
"""The tutorial's TCP server with a thread pool: its usual follow-up, and the design poolserver builds on.

It is here so that a reader can compare it with tutorial_single.py and with poolserver: the main thread only
accepts, and a concurrent.futures.ThreadPoolExecutor of N workers serves the connections, so many clients
are served at once. Its limit is the one a plain pool has: a worker waits on its client's recv, so N silent
clients occupy all N workers until the socket timeout (5 s) frees them.

    python3 scripts/reference/tutorial_pool.py 127.0.0.1:0 --workers 8
    scripts/bench.sh --quick --compare "python3 scripts/reference/tutorial_pool.py {addr}"

Protocol, as in the tutorial: accept, recv(1024), send "信息已收到" (UTF-8), close. HOST:PORT defaults to
127.0.0.1:8000 (port 0 picks a free port); "listening on ADDR" is printed on stderr once it listens. On
SIGINT or SIGTERM it stops accepting, lets the connections on a worker finish (each bounded by the timeout),
closes the ones still queued, and exits with 0.
"""

import argparse
import concurrent.futures
import os
import signal
import socket
import sys

REPLY = "信息已收到".encode()

# Bounds each recv and send, so that one idle client holds a worker for at most this long.
CLIENT_TIMEOUT_S = 5.0


def parse_addr(text):
    """Splits HOST:PORT (or [IPV6]:PORT) into a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


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


def serve(conn):
    """One connection, on a worker thread: the tutorial's recv, send and close."""
    try:
        conn.settimeout(CLIENT_TIMEOUT_S)
        conn.recv(1024)
        conn.sendall(REPLY)
    except OSError:
        pass  # timed out, reset or gone: nothing more to do for this client
    finally:
        conn.close()


def close_if_cancelled(conn):
    return lambda future: conn.close() if future.cancelled() else None


def stop(signum, frame):
    raise SystemExit(0)


def main():
    parser = argparse.ArgumentParser(description="The tutorial's server with a thread pool.")
    parser.add_argument("addr", nargs="?", default="127.0.0.1:8000", type=parse_addr,
                        help="HOST:PORT to listen on (default 127.0.0.1:8000; port 0 picks a free port)")
    parser.add_argument("-w", "--workers", type=positive, default=(os.cpu_count() or 1) * 4,
                        help="worker threads (default: 4 per CPU)")
    args = parser.parse_args()

    # The handler raises SystemExit in the main thread, which breaks out of the blocking accept.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = listen(*args.addr, 128)
    print(f"listening on {format_addr(server.getsockname())}", file=sys.stderr, flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.workers)
    try:
        while True:
            conn, _ = server.accept()
            pool.submit(serve, conn).add_done_callback(close_if_cancelled(conn))
    finally:
        server.close()
        pool.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    main()
