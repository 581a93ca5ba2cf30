//! Start, stop and restart of the real binary: bind failures, graceful drains on SIGTERM and SIGINT for
//! IPv4, IPv6 and wildcard binds, a second signal, the shutdown deadline, and restarting on the same port.

mod support;

use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use support::{MidReply, REPLY, Server, WAIT, exchange, server_mid_reply};

const BIG: usize = 8 << 20;

#[test]
fn binding_a_port_in_use_fails_with_one_line_and_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = support::run_to_exit(&["serve", "--bind", &addr], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot bind {addr}: Address already in use")), "{stderr}");
}

/// A stop signal closes the listener at once, lets the in-flight client finish, and exits 0.
fn drains_on(bind: &str, signal: i32) {
    let MidReply { mut server, reader: in_flight, first, .. } = server_mid_reply(BIG, &["--bind", bind]);
    let addr = server.client_addr();

    server.signal(signal);
    server.wait_for("stopping: closed");
    let refused = TcpStream::connect_timeout(&addr, WAIT).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{bind}: {refused}");

    assert_eq!(first + support::read_rest(in_flight).unwrap(), BIG, "{bind}: in-flight reply cut short");
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{bind}: {:#?}", server.log);
    assert!(server.log.iter().any(|l| l.contains("stopped: served 1,")), "{bind}: {:#?}", server.log);
}

#[test]
fn sigterm_drains_an_ipv4_loopback_server() {
    drains_on("127.0.0.1:0", libc::SIGTERM);
}

#[test]
fn sigint_drains_an_ipv6_loopback_server() {
    drains_on("[::1]:0", libc::SIGINT);
}

#[test]
fn sigterm_drains_an_ipv4_wildcard_server() {
    drains_on("0.0.0.0:0", libc::SIGTERM);
}

#[test]
fn sigint_drains_an_ipv6_wildcard_server() {
    drains_on("[::]:0", libc::SIGINT);
}

#[test]
fn sigint_drains_an_ipv4_loopback_server_and_sigterm_an_ipv6_one() {
    drains_on("127.0.0.1:0", libc::SIGINT);
    drains_on("[::1]:0", libc::SIGTERM);
}

#[test]
fn a_second_signal_exits_at_once_with_a_failure_code() {
    let args = ["--bind", "127.0.0.1:0", "--shutdown-timeout", "1m"];
    let MidReply { mut server, reader: _in_flight, .. } = server_mid_reply(BIG, &args);
    server.signal(libc::SIGTERM);
    server.wait_for("stopping: closed");
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{:#?}", server.log);
    assert!(server.log.iter().any(|l| l.contains("second stop signal")), "{:#?}", server.log);
}

#[test]
fn a_drain_past_the_shutdown_timeout_abandons_connections_and_fails() {
    let args = ["--bind", "127.0.0.1:0", "--shutdown-timeout", "500ms", "--write-timeout", "1m"];
    let MidReply { mut server, reader: _in_flight, .. } = server_mid_reply(BIG, &args);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{:#?}", server.log);
    let warning = server.log.iter().find(|l| l.contains("shutdown timed out")).expect("a warning");
    assert!(warning.contains("[WARN]") && warning.contains("abandoning 1 open connection"), "{warning}");
}

#[test]
fn a_restart_binds_the_same_port_despite_time_wait() {
    let mut first = Server::start(&["--bind", "127.0.0.1:0"]);
    let addr = first.addr;
    // The server closes first, so its side of each of these lingers in TIME_WAIT.
    for _ in 0..20 {
        assert_eq!(exchange(addr, b"hello").unwrap(), REPLY.as_bytes());
    }
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(WAIT).success());

    let second = Server::start(&["--bind", &addr.to_string()]);
    assert_eq!(second.addr, addr);
    assert_eq!(exchange(addr, b"hello").unwrap(), REPLY.as_bytes());
}
