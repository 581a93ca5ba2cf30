//! The limits and the stop of issue 11 against the real binary: the cap on open connections (clients wait in
//! the listen backlog, whole), the cap per client address (the peer, or the PROXY header's source), the fd
//! limit raised at startup, and a stop that resets no client the kernel had answered, not even one it still
//! held half-open.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{BIN, Guarded, REPLY, Server, WAIT, clean_env, command, connect, have_tool};

/// The busy reply.
const BUSY: &str = "服务器繁忙";

/// A conversation with a `--keep-alive` server that has had one reply and stays open, waiting in the room.
fn conversation(addr: SocketAddr, header: &str) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(format!("{header}hello").as_bytes()).unwrap();
    let mut reply = vec![0; REPLY.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes());
    stream
}

/// Sends one message on a new connection and reads until the server closes; a reset fails the test.
fn one_message(addr: SocketAddr, header: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(format!("{header}hello").as_bytes()).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap_or_else(|e| panic!("no clean close: {e}"));
    String::from_utf8(reply).unwrap()
}

/// The sockets the kernel holds for local `port`, from /proc/net/tcp: (state, rx_queue) per socket. For a
/// listener (state 0A) rx_queue is its accept queue: connections completed and not accepted yet.
fn sockets_on(port: u16) -> Vec<(String, usize)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
            let rx_queue = usize::from_str_radix(fields[4].rsplit(':').next()?, 16).ok()?;
            (local_port == port).then(|| (fields[3].to_owned(), rx_queue))
        })
        .collect()
}

/// Waits (bounded) until `check` holds for the sockets on `port`.
fn wait_for_sockets(port: u16, what: &str, check: impl Fn(&[(String, usize)]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sockets = sockets_on(port);
        if check(&sockets) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}: {sockets:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn accept_queue(sockets: &[(String, usize)]) -> Option<usize> {
    sockets.iter().find(|(state, _)| state == "0A").map(|(_, queued)| *queued)
}

/// CPU time (user and system) the process has used so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Whether something (data, an EOF or an error) has arrived on `stream`, looked at without waiting.
fn anything_arrived(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0; 1];
    let arrived = !matches!((&*stream).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    arrived
}

#[test]
fn at_max_connections_a_client_waits_in_the_backlog_until_one_closes() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--max-connections", "2"]);
    assert!(server.wait_for("listening on").contains("max connections 2,"));
    let (addr, port) = (server.addr, server.addr.port());
    let first = conversation(addr, "");
    let _second = conversation(addr, "");
    server.wait_for("2 connections open (max_connections): accepting again when one closes");
    let at_cap = Instant::now();
    let cpu_at_cap = cpu_time(server.pid());

    let mut third = connect(addr);
    third.write_all(b"hello").unwrap();
    // Completed by the kernel and left in its accept queue: not accepted, so not half-served.
    wait_for_sockets(port, "the third client queued", |sockets| accept_queue(sockets) == Some(1));
    assert!(!anything_arrived(&third), "the third client got an answer at the cap");

    // A second warning a second later: the loop waited at the cap all along, without spinning.
    server.wait_for_next("(max_connections)");
    let cpu = cpu_time(server.pid()) - cpu_at_cap;
    assert!(at_cap.elapsed() >= Duration::from_millis(900), "warned twice within a second");
    assert!(cpu < Duration::from_millis(250), "the server used {cpu:?} of CPU at the cap: spinning");
    assert!(!anything_arrived(&third), "the third client got an answer at the cap");

    drop(first);
    let mut reply = vec![0; REPLY.len()];
    third.read_exact(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes(), "the reply, not the busy one");
    assert_eq!(accept_queue(&sockets_on(port)), Some(0));
}

#[test]
fn past_max_per_client_a_connection_gets_the_busy_reply_without_a_reset() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--max-per-client", "2"]);
    assert!(server.wait_for("listening on").contains("max per client 2,"));
    let addr = server.addr;
    let first = conversation(addr, "");
    let _second = conversation(addr, "");
    assert_eq!(one_message(addr, ""), BUSY);
    server.wait_for("turned away with the busy reply: 2 connections from 127.0.0.1 already open");

    // Another address of the loopback network is another client.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
    other.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut other: TcpStream = other.into();
    other.set_read_timeout(Some(WAIT)).unwrap();
    other.write_all(b"hello").unwrap();
    let mut reply = vec![0; REPLY.len()];
    other.read_exact(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes());

    // A place comes back when its connection closes.
    drop(first);
    server.wait_for("ended the conversation");
    let _third = conversation(addr, "");
}

#[test]
fn with_the_proxy_protocol_the_client_is_the_header_source() {
    let args = ["--bind", "127.0.0.1:0", "--keep-alive", "--proxy-protocol", "--max-per-client", "1"];
    let mut server = Server::start(&args);
    let addr = server.addr;
    let header = |source: &str| format!("PROXY TCP4 {source} 127.0.0.1 40000 8000\r\n");
    let _held = conversation(addr, &header("192.0.2.7"));
    // From the same peer (the balancer), another client is served; the same client is not.
    let _other = conversation(addr, &header("192.0.2.8"));
    assert_eq!(one_message(addr, &header("192.0.2.7")), BUSY);
    server.wait_for("192.0.2.7:40000 (via 127.0.0.1:");
    server.wait_for("1 connections from 192.0.2.7 already open (max_per_client 1)");
}

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_one_and_sets_the_default_cap() {
    if !have_tool("prlimit", "Debian package util-linux") {
        return;
    }
    let under = |nofile: &str, args: &[&str]| {
        let mut cmd = Command::new("prlimit");
        clean_env(&mut cmd, &[]);
        cmd.args([&format!("--nofile={nofile}"), BIN, "serve", "--bind", "127.0.0.1:0"]).args(args);
        Server::start_command(cmd)
    };
    let mut raised = under("256:4096", &[]);
    raised.wait_for("raised the soft fd limit from 256 to 4096 (the hard limit)");
    let line = raised.wait_for("listening on");
    assert!(line.contains("max connections 4032, fd limit 4096)"), "{line}");

    let mut small = under("64:64", &[]);
    let line = small.wait_for("listening on");
    assert!(line.contains("max connections 32, fd limit 64)"), "{line}");
    assert!(!small.log.iter().any(|l| l.contains("raised")), "{:#?}", small.log);

    let mut over = under("64:64", &["--max-connections", "100"]);
    over.wait_for("max_connections 100 is above the fd limit 64");
}

#[test]
fn a_client_the_kernel_still_holds_half_open_at_the_stop_is_served() {
    // TCP_DEFER_ACCEPT holds a client that has sent nothing half-open until the kernel retransmits its
    // SYN-ACK, a second after the SYN: a stop that begins well within that second finds it half-open.
    for _ in 0..3 {
        let mut server = Server::start(&["--bind", "127.0.0.1:0"]);
        let addr = server.addr;
        let mut silent = connect(addr);
        let connected = Instant::now();
        server.signal(libc::SIGTERM);
        server.wait_for("stop requested");
        if connected.elapsed() > Duration::from_millis(700) {
            continue; // too slow a machine to be sure the kernel still held it: again
        }
        server.wait_for("stopping: closed");
        let refused = TcpStream::connect_timeout(&addr, WAIT).expect_err("the listener is closed");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

        // Taken in before the close: its message is answered, not reset.
        silent.write_all(b"hello").unwrap();
        let mut reply = Vec::new();
        silent.read_to_end(&mut reply).unwrap_or_else(|e| panic!("{e}: {:#?}", server.log));
        assert_eq!(reply, REPLY.as_bytes());
        assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
        return;
    }
    panic!("three times the stop began more than 700 ms after the connect");
}

/// Stops under `poolserver stress --clients 64`, SIGTERM and SIGINT in turn, each after a different number
/// of served clients; before the fix about one stop in three reset a client.
const STOPS: usize = 10;

#[test]
fn stops_under_load_reset_no_client() {
    for stop in 0..STOPS {
        let mut server = Server::start(&["--bind", "127.0.0.1:0", "--workers", "2"]);
        let addr = server.addr.to_string();
        let mut stress =
            command(&["stress", "--addr", &addr, "--clients", "64", "--duration", "1s", "--json"], &[]);
        stress.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let stress = Guarded(stress.spawn().expect("spawn poolserver stress"));
        for _ in 0..(10 + 15 * stop) {
            server.wait_for_next(" served: ");
        }
        server.signal(if stop % 2 == 0 { libc::SIGTERM } else { libc::SIGINT });
        let status = server.wait_exit(WAIT);
        let last = &server.log[server.log.len().saturating_sub(5)..];
        assert!(status.success(), "stop {stop}: {last:#?}");

        let out = support::finish(stress, WAIT);
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
        assert_eq!(report["errors"]["reset"], 0, "stop {stop}: {report}");
        assert_eq!(report["errors"]["wrong_reply"], 0, "stop {stop}: {report}");
        assert!(report["ok"].as_u64().unwrap() > 0, "stop {stop}: {report}");
        assert!(
            report["errors"]["refused"].as_u64().unwrap() > 0,
            "stop {stop}, no client after it: {report}"
        );
    }
}
