//! The per-connection protocol against the real binary on loopback: reply, echo, limits, idle and busy
//! clients, closing without reset, and what reaches the log.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use support::{MidReply, REPLY, Server, WAIT, connect, exchange};

#[test]
fn the_tutorials_client_gets_the_tutorials_reply() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    // socket + connect, send, recv, close: the tutorial's five client steps.
    let mut client = connect(server.addr);
    client.write_all("你好".as_bytes()).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), REPLY);
}

#[test]
fn three_hundred_concurrent_clients_are_all_answered() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let addr = server.addr;
    let start = Arc::new(Barrier::new(300));
    let clients: Vec<_> = (0..300)
        .map(|i| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                exchange(addr, format!("client {i}").as_bytes())
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let reply = client.join().unwrap().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(reply, REPLY.as_bytes(), "client {i}");
    }
}

#[test]
fn echo_returns_non_utf8_bytes_unchanged() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--mode", "echo"]);
    let request = b"\xff\xfe\x00binary\x80\n";
    assert_eq!(exchange(server.addr, request).unwrap(), request);
}

#[test]
fn one_read_of_at_most_max_request_bytes() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--mode", "echo", "--max-request", "10"]);
    let reply = exchange(server.addr, &[b'a'; 100]).unwrap();
    assert_eq!(reply, [b'a'; 10]);
}

#[test]
fn a_client_that_sent_a_mebibyte_gets_the_whole_reply_and_no_reset() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    for _ in 0..3 {
        let mut client = connect(server.addr);
        client.write_all(&vec![b'x'; 1 << 20]).expect("the server keeps reading until we are done");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).expect("reply then EOF, never ECONNRESET");
        assert_eq!(reply, REPLY.as_bytes());
    }
}

#[test]
fn a_reply_of_several_mebibytes_is_written_completely() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::big_reply_config(dir.path(), 6 << 20);
    let server = Server::start(&["--bind", "127.0.0.1:0", "--config", config.to_str().unwrap()]);
    let reply = exchange(server.addr, b"hello").unwrap();
    assert_eq!(reply.len(), 6 << 20);
    assert!(reply.iter().all(|&b| b == b'x'));
}

#[test]
fn idle_clients_neither_block_two_workers_nor_outstay_the_read_timeout() {
    let read_timeout = Duration::from_secs(4);
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--workers", "2", "--read-timeout", "4s"]);
    let idle: Vec<(TcpStream, Instant)> = (0..40).map(|_| (connect(server.addr), Instant::now())).collect();

    // Ordinary clients keep coming for as long as the idle ones are open on the server. TCP_DEFER_ACCEPT
    // hands a silent client over only about a second after it connected, so clients in the first second
    // alone would prove nothing. Were the idle clients holding the two workers, an ordinary client would
    // wait for their read_timeout, up to three seconds, well past its own patience of two.
    let patience = Duration::from_secs(2);
    let until = idle[0].1 + read_timeout - Duration::from_millis(500);
    let mut answered = 0;
    while Instant::now() < until {
        let mut client = connect(server.addr);
        client.set_read_timeout(Some(patience)).unwrap();
        client.write_all(b"hello").unwrap();
        let mut reply = Vec::new();
        client
            .read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("ordinary client {answered} was held up: {e}"));
        assert_eq!(reply, REPLY.as_bytes());
        answered += 1;
        // Paces the clients, so the loop does not load the machine; nothing waits on it.
        thread::sleep(Duration::from_millis(100));
    }
    assert!(answered > 0, "no ordinary client was tried");

    // Each idle client is closed read_timeout after it connected: not before (a little earlier is allowed,
    // as the server's clock starts after ours), and not long after, however loaded the machine is.
    for (i, (mut stream, connected)) in idle.into_iter().enumerate() {
        let mut byte = [0; 1];
        let n = stream.read(&mut byte).unwrap_or_else(|e| panic!("idle client {i}: {e}"));
        let after = connected.elapsed();
        assert_eq!(n, 0, "idle client {i} got data");
        assert!(
            after >= read_timeout - Duration::from_millis(300),
            "idle client {i} closed early, {after:?} after connecting; read_timeout is {read_timeout:?}"
        );
        assert!(
            after < read_timeout + Duration::from_secs(2),
            "idle client {i} outstayed read_timeout ({read_timeout:?}): closed {after:?} after connecting"
        );
    }
    server.wait_for("timed out: no message within 4s");
}

#[test]
fn client_bytes_never_reach_the_log_raw() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0"]);
    let forged = b"hi\n2026-01-01T00:00:00Z [ERROR] forged line\r\x1b[2J\xff\"";
    assert_eq!(exchange(server.addr, forged).unwrap(), REPLY.as_bytes());
    let line = server.wait_for(" served: ");
    assert!(
        line.ends_with(r#"request "hi\n2026-01-01T00:00:00Z [ERROR] forged line\r\u{1b}[2J\xff\"""#),
        "{line}"
    );
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
    for line in &server.log {
        assert!(!line.starts_with("2026-01-01T00:00:00Z"), "forged line in the log: {line}");
        assert!(!line.contains(['\r', '\u{1b}', '\u{fffd}']), "raw control byte in the log: {line:?}");
    }
}

#[test]
fn a_reply_not_written_within_write_timeout_is_cut_with_a_reset() {
    const BIG: usize = 8 << 20;
    let args = ["--bind", "127.0.0.1:0", "--write-timeout", "1s"];
    // The reader has the first bytes and reads no more: the rest of the reply cannot be written.
    let MidReply { mut server, reader, first, .. } = support::server_mid_reply(BIG, &args);
    let line = server.wait_for(" timed out: wrote ");
    assert!(line.contains(&format!(" of {BIG} reply bytes in 1s; reset")), "{line}");
    // A reply cut short must not look complete: the client sees a reset, not an end of file.
    match support::read_rest(reader) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(rest) => panic!("the cut reply ended like a whole one, after {} of {BIG} bytes", first + rest),
    }
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
    assert!(
        server.log.iter().any(|l| l.contains("stopped: served 0, busy 0, timed out 1")),
        "{:#?}",
        server.log
    );
}

#[test]
fn a_client_that_keeps_sending_after_its_reply_is_closed_at_the_leftover_limit() {
    // With a read_timeout of a minute, only the leftover limit (4 MiB for a max_request of 1024) can end
    // the draining of what the client sends after its reply.
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--read-timeout", "1m"]);
    let mut client = connect(server.addr);
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let error = loop {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "the server took 64 MiB after its reply without closing");
    };
    assert!(
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "after {sent} bytes: {error}"
    );
    server.wait_for("sent more than 4194304 B after its reply; closed");
}
