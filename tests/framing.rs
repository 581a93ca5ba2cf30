//! Messages with edges (`--framing line|length`): several messages in one write are each answered, in
//! order; a message split over writes is answered once; a partial message waits in the room against a
//! deadline counted from its first byte; an over-long message or length prefix ends the conversation with a
//! FIN; a pipelining client cannot hold a worker; a reload applies to new connections only.

mod support;

use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use support::{Server, WAIT, command, connect, finish, spawn, write_config};

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// Reads one length-prefixed reply.
fn read_framed(stream: &mut impl Read) -> Vec<u8> {
    let mut prefix = [0; 4];
    stream.read_exact(&mut prefix).expect("a reply's length prefix");
    let mut reply = vec![0; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut reply).expect("a reply's bytes");
    reply
}

/// Reads until the server closes; fails on a reset.
fn read_to_clean_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("a clean close (FIN), not a reset");
    rest
}

/// The summary line after SIGTERM.
fn stop(mut server: Server) -> String {
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    server.wait_for("stopped:")
}

/// A small deterministic generator: the tests need varied sizes, not good randomness.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
}

#[test]
fn three_lines_in_one_write_get_three_replies_in_order_and_a_split_line_gets_one() {
    let server =
        Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--framing", "line", "--mode", "echo"]);
    let mut client = connect(server.addr);
    client.write_all(b"a\nb\r\nc\n").unwrap();
    let mut replies = BufReader::new(client.try_clone().unwrap());
    for expected in ["a\n", "b\n", "c\n"] {
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        assert_eq!(reply, expected);
    }

    let mut split = connect(server.addr);
    split.write_all(b"hel").unwrap();
    thread::sleep(Duration::from_millis(200));
    split.write_all(b"lo\n").unwrap();
    split.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_clean_close(&mut split), b"hello\n", "one message, one reply");

    drop((client, replies));
    let summary = stop(server);
    assert!(summary.contains("(2 connections, 4 messages)"), "{summary}");
}

#[test]
fn a_thousand_length_prefixed_messages_in_one_write_are_answered_in_order() {
    let max = 1024;
    let server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--framing",
        "length",
        "--mode",
        "echo",
        "--max-request",
        &max.to_string(),
    ]);
    let mut lcg = Lcg(21);
    let messages: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let len = lcg.below(max as u64 + 1) as usize;
            (0..len).map(|j| (i * 7 + j) as u8).collect()
        })
        .collect();
    let all: Vec<u8> = messages.iter().flat_map(|m| framed(m)).collect();
    let mut client = connect(server.addr);
    // Written by another thread while this one reads, so that neither side's buffers fill and stall.
    let mut writer = client.try_clone().unwrap();
    let sending = spawn(move || writer.write_all(&all).map(|()| writer));
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(&read_framed(&mut client), message, "reply {i}");
    }
    let writer = sending.join(WAIT).expect("all sent in one write");
    writer.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_clean_close(&mut client).is_empty());
    let summary = stop(server);
    assert!(summary.contains("1000 messages"), "{summary}");
}

#[test]
fn a_length_prefix_over_max_request_gets_a_fin_is_counted_and_allocates_nothing() {
    let mut server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--framing",
        "length",
        "--max-request",
        "1024",
        "--workers",
        "2",
    ]);
    let addr = server.addr;
    // A prefix of 2^31 followed by a mebibyte: a server that believed the prefix would hold the mebibyte
    // (and more) for each connection.
    let attack = |addr: SocketAddr| {
        let mut client = connect(addr);
        client.write_all(&(1_u32 << 31).to_be_bytes()).unwrap();
        let _ = client.write_all(&vec![b'x'; 1 << 20]);
        let _ = client.shutdown(Shutdown::Write);
        read_to_clean_close(&mut client)
    };
    assert!(attack(addr).is_empty(), "no reply to a refused message");
    let line = server.wait_for("a length prefix of 2147483648 B, over max_request (1024 B); closed");
    assert!(line.contains("WARN"), "{line}");
    let before = rss_kib(server.pid());
    let attackers: Vec<_> = (0..16).map(|_| spawn(move || attack(addr))).collect();
    for attacker in attackers {
        assert!(attacker.join(WAIT).is_empty());
    }
    let after = rss_kib(server.pid());
    assert!(after < before + 4096, "RSS grew from {before} KiB to {after} KiB");
    // The conversation is over, but the server is not: the next client is answered.
    let mut client = connect(addr);
    client.write_all(&framed(b"hello")).unwrap();
    assert_eq!(read_framed(&mut client), "信息已收到".as_bytes());
    drop(client);
    let summary = stop(server);
    assert!(summary.contains("errors 17"), "{summary}");
}

#[test]
fn a_line_longer_than_max_request_ends_the_conversation_with_a_fin() {
    let mut server =
        Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--framing", "line", "--max-request", "8"]);
    let mut client = connect(server.addr);
    // Exactly the limit passes (with its \r\n); one byte more ends the conversation after the replies so far.
    client.write_all(b"12345678\r\n123456789\nnever answered\n").unwrap();
    let rest = read_to_clean_close(&mut client);
    assert_eq!(rest, "信息已收到\n".as_bytes());
    server.wait_for("a line longer than max_request (8 B)");
    drop(client);
    let summary = stop(server);
    assert!(summary.contains("errors 1") && summary.contains("1 messages"), "{summary}");
}

#[test]
fn a_sender_of_one_byte_a_second_cannot_hold_a_line_past_its_deadline() {
    let mut server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--framing",
        "line",
        "--read-timeout",
        "2s",
        "--idle-timeout",
        "3s",
    ]);
    // The first message: read_timeout from the connection.
    let trickle = |mut client: TcpStream| {
        let first_byte = Instant::now();
        loop {
            if client.write_all(b"x").is_err() || closed(&client) {
                return first_byte.elapsed();
            }
            assert!(first_byte.elapsed() < WAIT, "still open after {:?}", first_byte.elapsed());
            thread::sleep(Duration::from_secs(1));
        }
    };
    // Closed at the deadline, give or take the trickle's second and a loaded machine's delays.
    let held = trickle(connect(server.addr));
    assert!(held >= Duration::from_millis(1500) && held < Duration::from_secs(6), "held {held:?}");
    server.wait_for("B of its first message arrived, not its end, within 2s");

    // Between messages: idle_timeout from the next message's first byte, however the bytes trickle in.
    let mut client = connect(server.addr);
    client.write_all(b"first\n").unwrap();
    let mut reply = vec![0; "信息已收到\n".len()];
    client.read_exact(&mut reply).unwrap();
    let held = trickle(client);
    assert!(held >= Duration::from_millis(2500) && held < Duration::from_secs(7), "held {held:?}");
    server.wait_for("B of message 2 arrived, not its end, within 3s (1 messages)");
    let summary = stop(server);
    assert!(summary.contains("timed out 2"), "{summary}");
}

/// Whether the server has closed its side (checked without waiting).
fn closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn ten_thousand_conversations_each_pipelining_ten_lines_are_all_answered_in_order() {
    let server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--framing",
        "line",
        "--mode",
        "echo",
        "--workers",
        "4",
    ]);
    let addr = server.addr;
    // 8 clients, each keeping 125 conversations open at once (1000 in all, within the queue of 1024, so
    // that none is rightly turned away), 1250 conversations each.
    let clients: Vec<_> = (0..8)
        .map(|client| {
            spawn(move || {
                for wave in 0..10 {
                    let mut streams: Vec<(usize, TcpStream)> = (0..125)
                        .map(|i| {
                            let id = client * 1250 + wave * 125 + i;
                            let mut stream = connect(addr);
                            let lines: String = (0..10).map(|m| format!("{id}-{m}\n")).collect();
                            stream.write_all(lines.as_bytes()).unwrap();
                            (id, stream)
                        })
                        .collect();
                    for (id, stream) in &mut streams {
                        stream.shutdown(Shutdown::Write).unwrap();
                        let replies = String::from_utf8(read_to_clean_close(stream)).unwrap();
                        let expected: String = (0..10).map(|m| format!("{id}-{m}\n")).collect();
                        assert_eq!(replies, expected, "conversation {id}");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join(Duration::from_secs(120));
    }
    let summary = stop(server);
    assert!(summary.contains("(10000 connections, 100000 messages)"), "{summary}");
    assert!(summary.contains("served 10000"), "{summary}");
}

#[test]
fn a_pipelining_client_cannot_hold_the_only_worker() {
    // In process, with a handler that takes 2 ms for each message but "quick".
    let mut config = poolserver::Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = 1;
    config.keep_alive = true;
    config.framing = poolserver::Framing::Line;
    let server = poolserver::Server::bind_with(config, |m: &poolserver::Message<'_>| {
        if m.bytes() != b"quick" {
            thread::sleep(Duration::from_millis(2));
        }
        "ok"
    })
    .unwrap();
    let (addr, stop) = (server.local_addr(), server.shutdown_handle());
    let running = spawn(move || server.run().map(|summary| summary.messages));
    // One client pipelines 500 slow messages in one write (a second of work), reading the replies on
    // another thread; they are all in the server's socket before the quick conversation starts.
    let flood = connect(addr);
    let mut reader = flood.try_clone().unwrap();
    let draining = spawn(move || {
        let mut replies = BufReader::new(&mut reader);
        (0..500).filter(|_| replies.read_line(&mut String::new()).is_ok_and(|n| n > 0)).count()
    });
    (&flood).write_all("slow\n".repeat(500).as_bytes()).unwrap();
    // Meanwhile, a lockstep conversation is answered without waiting for the 500: the pipelining one goes
    // back through the queue after each turn of at most 64 messages.
    let mut client = connect(addr);
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        client.write_all(b"quick\n").unwrap();
        let mut reply = [0; 3];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ok\n");
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest < Duration::from_millis(500), "a reply took {slowest:?} beside the pipelining client");
    assert_eq!(draining.join(WAIT), 500, "every pipelined message answered");
    drop((client, flood));
    stop.shutdown();
    assert_eq!(running.join(WAIT).unwrap(), 505);
}

#[test]
fn a_reload_changes_the_framing_of_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = "bind = \"127.0.0.1:0\"\nkeep_alive = true\nmode = \"echo\"\n";
    let config = write_config(dir.path(), &format!("{base}framing = \"line\"\n"));
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut old = connect(server.addr);
    old.write_all(b"one\n").unwrap();
    let mut reply = [0; 4];
    old.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"one\n");

    fs::write(&config, format!("{base}framing = \"length\"\n")).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_next("reloaded the configuration");
    assert!(line.contains("framing line → length"), "{line}");

    let mut new = connect(server.addr);
    new.write_all(&framed(b"two")).unwrap();
    assert_eq!(read_framed(&mut new), b"two");
    old.write_all(b"three\n").unwrap();
    let mut reply = [0; 6];
    old.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"three\n", "an open conversation keeps its framing");
    drop((old, new));
    drop(stop(server));
}

#[test]
fn raw_framing_is_still_one_read_one_message() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--mode", "echo"]);
    let mut client = connect(server.addr);
    client.write_all(b"a\nb\n").unwrap();
    let mut reply = [0; 4];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"a\nb\n", "one read, one reply, no newline added");
    drop(client);
    let summary = stop(server);
    assert!(summary.contains("1 messages"), "{summary}");
}

/// `poolserver send ARGS` with `input` on its standard input.
fn send(args: &[&str], input: &[u8]) -> (bool, String, String) {
    let mut child = support::Guarded(
        command(&[&["send"], args].concat(), &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    child.0.stdin.take().unwrap().write_all(input).unwrap();
    let output = finish(child, WAIT);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

#[test]
fn send_with_framing_sends_a_message_per_line_and_prints_a_reply_per_line() {
    for framing in ["line", "length"] {
        let server =
            Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--framing", framing, "--mode", "echo"]);
        let addr = server.addr.to_string();
        let (ok, stdout, stderr) = send(&["--framing", framing, "--addr", &addr, "-"], b"one\ntwo\r\nthree");
        assert!(ok, "{framing}: {stderr}");
        assert_eq!(stdout, "one\ntwo\nthree\n", "{framing}");
        let summary = stop(server);
        assert!(summary.contains("3 messages"), "{framing}: {summary}");
    }
}

#[test]
fn stress_pipelines_framed_messages_and_checks_every_reply() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--framing", "length"]);
    let addr = server.addr.to_string();
    let args =
        ["stress", "--addr", &addr, "--json", "--framing", "length", "--clients", "2", "--requests", "4"];
    let run = |extra: &[&str]| {
        let output =
            support::output(&mut command(&[&args[..], extra].concat(), &[]), Duration::from_secs(60));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.success(), json)
    };
    let (ok, json) = run(&["--messages", "250", "--pipeline", "16"]);
    assert!(ok, "{json}");
    assert_eq!(
        (json["ok"].as_u64(), json["messages"].as_u64(), json["failed"].as_u64()),
        (Some(4), Some(1000), Some(0))
    );
    assert_eq!(json["pipeline"], 16, "{json}");
    // A reply the stress does not expect is caught in a pipeline too.
    let (ok, json) = run(&["--messages", "250", "--pipeline", "16", "--expect", "something else"]);
    assert!(!ok && json["errors"]["wrong_reply"].as_u64() == Some(4), "{json}");
    drop(stop(server));

    let refused = support::output(
        &mut command(&["stress", "--addr", &addr, "--messages", "9", "--pipeline", "4"], &[]),
        WAIT,
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--pipeline needs --framing line or length"));
}

#[test]
fn lines_that_came_with_a_proxy_header_are_each_answered() {
    let mut server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--framing",
        "line",
        "--mode",
        "echo",
        "--proxy-protocol",
        "--log-each-message",
    ]);
    let mut client = connect(server.addr);
    client.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\none\ntwo\nthr").unwrap();
    client.write_all(b"ee\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_clean_close(&mut client), b"one\ntwo\nthree\n");
    let line = server.wait_for("message 3:");
    assert!(line.contains("192.0.2.7:40000 (via 127.0.0.1:"), "{line}");
}
