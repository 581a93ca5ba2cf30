//! Beyond one process: two processes sharing a port with `--reuse-port`, and two `--proxy-protocol`
//! processes behind the real HAProxy with the shipped config/haproxy.cfg.

mod support;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Guarded, REPLY, Server, WAIT, command, exchange, exchange_from};

/// Runs `poolserver stress ARGS --json` in the background, killed by its PID if the test ends first.
fn stress(addr: &str, args: &[&str]) -> Guarded {
    let mut full = vec!["stress", "--addr", addr, "--json", "--timeout", "5s"];
    full.extend_from_slice(args);
    let mut cmd = command(&full, &[]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Guarded(cmd.spawn().expect("spawn poolserver stress"))
}

/// The JSON report of a stress run, once it has ended within its own bounds.
fn report(stress: Guarded) -> Value {
    let out = support::finish(stress, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The summary line of a server that has exited.
fn summary(server: &Server) -> String {
    server
        .log
        .iter()
        .find(|l| l.contains("stopped: served"))
        .cloned()
        .unwrap_or_else(|| server.log.join("\n"))
}

#[test]
fn two_processes_serve_one_port_with_reuse_port() {
    let mut first = Server::start(&["--bind", "127.0.0.1:0", "--reuse-port"]);
    let addr = first.addr.to_string();
    let mut second = Server::start(&["--bind", &addr, "--reuse-port"]);
    assert_eq!(second.addr, first.addr);

    let both = report(stress(&addr, &["--clients", "16", "--requests", "4000"]));
    assert_eq!((both["ok"].as_u64(), both["failed"].as_u64()), (Some(4000), Some(0)), "{both}");
    first.wait_for(" served: ");
    second.wait_for(" served: ");

    // Stop one while the load runs: everything it had accepted is still served, and the other carries on.
    let running = stress(&addr, &["--clients", "8", "--duration", "3s"]);
    first.wait_for_next(" served: ");
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(WAIT).success(), "{}", summary(&first));
    assert!(summary(&first).contains("hung up 0, idle closed 0, errors 0"), "{}", summary(&first));
    second.wait_for_next(" served: ");
    let after = report(running);
    assert!(after["ok"].as_u64().unwrap() > 0, "{after}");
    assert_eq!(exchange(first.addr, b"hello").unwrap(), REPLY.as_bytes(), "the survivor serves the port");
}

#[test]
fn without_reuse_port_a_second_process_cannot_bind() {
    let first = Server::start(&["--bind", "127.0.0.1:0"]);
    let (status, stderr) =
        support::run_to_exit(&["serve", "--bind", &first.addr.to_string(), "--reuse-port"], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn haproxy_with_send_proxy_v2_balances_two_backends_that_log_the_real_client() {
    if !support::have_tool("haproxy", "Debian package haproxy; .ci/run installs it") {
        return;
    }
    let mut one = Server::start(&["--bind", "127.0.0.1:0", "--proxy-protocol", "--proxy-from", "127.0.0.1"]);
    let mut two = Server::start(&["--bind", "127.0.0.1:0", "--proxy-protocol", "--proxy-from", "127.0.0.1"]);
    let front = free_loopback_port();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/haproxy.cfg")).unwrap();
    let config = shipped
        .replace("127.0.0.1:8000", &front.to_string())
        .replace("127.0.0.1:8001", &one.addr.to_string())
        .replace("127.0.0.1:8002", &two.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let _haproxy = Guarded(
        Command::new("haproxy")
            .args(["-db", "-f", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Ready when a request goes through and both backends have passed a health check.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&front, WAIT).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not listen on {front}");
        thread::sleep(Duration::from_millis(20));
    }
    one.wait_for(" served: ");
    two.wait_for(" served: ");

    // The backend logs the client's own address and port, not HAProxy's.
    let client = exchange_from("127.0.0.2:0", front);
    let needle = format!("] {client} (via 127.0.0.1:");
    let deadline = Instant::now() + WAIT;
    while !one.log.iter().chain(&two.log).any(|l| l.contains(&needle)) {
        assert!(Instant::now() < deadline, "no backend logged {needle:?}");
        one.wait_for_next(" served: ");
        two.wait_for_next(" served: ");
    }

    let balanced = report(stress(&front.to_string(), &["--clients", "8", "--requests", "2000"]));
    assert_eq!((balanced["ok"].as_u64(), balanced["failed"].as_u64()), (Some(2000), Some(0)), "{balanced}");
    assert!(one.wait_for_next(" served: ").contains("(via 127.0.0.1:"));
    assert!(two.wait_for_next(" served: ").contains("(via 127.0.0.1:"));

    // One backend stops mid-run: its health check fails, HAProxy redispatches, clients keep being served.
    let running = stress(&front.to_string(), &["--clients", "8", "--duration", "3s"]);
    one.wait_for_next(" served: ");
    one.signal(libc::SIGTERM);
    assert!(one.wait_exit(WAIT).success(), "{}", summary(&one));
    two.wait_for_next(" served: ");
    let across = report(running);
    assert_eq!(across["failed"], 0, "{across}");
    assert!(across["ok"].as_u64().unwrap() > 0, "{across}");
}
