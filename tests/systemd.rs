//! Running under systemd, with the real protocols and no systemd: readiness and stopping over a test-owned
//! NOTIFY_SOCKET, serving on an inherited listening socket, and restarts on that socket that lose nothing.

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::net::UnixDatagram,
    process::Stdio,
};

use serde_json::Value;
use support::{Guarded, REPLY, Server, WAIT, command, connect, exchange, socket_activated};

/// Receives sd_notify datagrams until one contains `needle`; returns it.
fn notification(socket: &UnixDatagram, needle: &str) -> String {
    let mut buf = [0; 4096];
    loop {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no {needle:?} notification: {e}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains(needle) {
            return message;
        }
    }
}

#[test]
fn ready_comes_once_clients_are_served_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let mut server =
        Server::start_with(&["--bind", "127.0.0.1:0"], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);

    let ready = notification(&notify, "READY=1");
    assert!(ready.contains(&format!("STATUS=serving on {}", server.addr)), "{ready}");
    assert_eq!(exchange(server.addr, b"hello").unwrap(), REPLY.as_bytes(), "READY=1 before we could serve");

    server.signal(libc::SIGTERM);
    let stopping = notification(&notify, "STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn serves_on_the_socket_systemd_passes_and_ignores_bind() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = Server::start_command(socket_activated(&listener, &["--bind", "127.0.0.1:1"], &[]));
    assert_eq!(server.addr, addr);
    assert!(server.wait_for("listening on").contains("socket from systemd"));
    assert_eq!(exchange(addr, b"hello").unwrap(), REPLY.as_bytes());
}

#[test]
fn a_client_that_connects_between_two_servers_is_answered_by_the_second() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let mut first = Server::start_command(socket_activated(&listener, &[], &[]));
    assert_eq!(exchange(addr, b"hello").unwrap(), REPLY.as_bytes());
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(WAIT).success(), "{:#?}", first.log);

    // No server runs now; the socket (ours, like systemd's) still completes the handshake and queues it.
    let mut waiting = connect(addr);
    waiting.write_all(b"hello").unwrap();

    let _second = Server::start_command(socket_activated(&listener, &[], &[]));
    let mut reply = Vec::new();
    waiting.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes());
}

#[test]
fn a_stress_run_across_a_restart_loses_no_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut first = Server::start_command(socket_activated(&listener, &[], &[]));

    let mut stress = command(
        &["stress", "--addr", &addr, "--clients", "8", "--duration", "3s", "--timeout", "10s", "--json"],
        &[],
    );
    stress.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let stress = Guarded(stress.spawn().expect("spawn poolserver stress"));
    first.wait_for(" served: ");
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(WAIT).success(), "{:#?}", first.log);
    let mut second = Server::start_command(socket_activated(&listener, &[], &[]));
    second.wait_for(" served: ");

    let out = support::finish(stress, WAIT);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    assert!(out.status.success(), "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
}
