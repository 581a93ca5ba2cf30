//! Conversations are capped (`max_messages`, `max_conversation`, as nginx's `keepalive_requests` and
//! `keepalive_time`): the reply that reaches a cap is followed by a FIN, never a reset, the connection counts
//! as served, and a reload moves the caps for the messages that follow.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use support::{REPLY, Server, WAIT, connect, write_config};

/// Sends one message and reads exactly one reply of the tutorial's length.
fn ask(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).expect("send a message");
    let mut reply = vec![0; REPLY.len()];
    stream.read_exact(&mut reply).expect("read the reply");
    assert_eq!(reply, REPLY.as_bytes());
}

/// Reads until the server closes; fails on a reset, on bytes, or when no close comes within `WAIT`.
fn expect_clean_close(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("a clean close (a FIN), not a reset or a time-out");
    assert!(rest.is_empty(), "unexpected bytes before the close: {rest:?}");
}

/// Stops the server and returns its summary line.
fn stop(mut server: Server) -> String {
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    server.wait_for("stopped:")
}

#[test]
fn the_reply_to_the_last_message_allowed_is_followed_by_a_fin_and_counted_served() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--max-messages", "3"]);
    let mut client = connect(server.addr);
    for i in 0..3 {
        ask(&mut client, format!("hello {i}").as_bytes());
    }
    expect_clean_close(&mut client);
    let line = server.wait_for("ended after");
    assert!(line.contains("ended after 3 messages (max_messages)"), "{line}");
    let summary = stop(server);
    assert!(
        summary.contains("served 1,") && summary.contains("errors 0 (1 connections, 3 messages)"),
        "{summary}"
    );
}

#[test]
fn a_conversation_ends_at_its_first_reply_once_it_is_max_conversation_old() {
    let limit = Duration::from_secs(1);
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--max-conversation", "1s"]);
    let connected = Instant::now();
    let mut client = connect(server.addr);
    // Young: replies keep the conversation open.
    ask(&mut client, b"early");
    ask(&mut client, b"still early");
    assert!(connected.elapsed() < limit, "the machine is too slow for this test: {:?}", connected.elapsed());
    // The cap is reached by the passing of time itself; the server accepted after `connected`, so once the
    // client's clock says `limit` has passed, the server's does too.
    thread::sleep(limit.saturating_sub(connected.elapsed()) + Duration::from_millis(50));
    ask(&mut client, b"late");
    expect_clean_close(&mut client);
    let line = server.wait_for("ended after");
    assert!(line.contains("(max_conversation 1s, 3 messages)"), "{line}");
    let summary = stop(server);
    assert!(
        summary.contains("served 1,") && summary.contains("errors 0 (1 connections, 3 messages)"),
        "{summary}"
    );
}

#[test]
fn a_reload_moves_the_cap_for_the_messages_that_follow() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "keep_alive = true\nmax_messages = 5\nmax_conversation = \"1h\"\n");
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--config", config.to_str().unwrap()]);
    let mut client = connect(server.addr);
    ask(&mut client, b"one");
    ask(&mut client, b"two");
    std::fs::write(&config, "keep_alive = true\nmax_messages = 3\nmax_conversation = \"2h\"\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_next("reloaded the configuration");
    assert!(line.contains("max_messages 5 → 3, max_conversation 3600s → 7200s"), "{line}");
    // The conversation under way takes the new cap with its next message: the third is its last.
    ask(&mut client, b"three");
    expect_clean_close(&mut client);
    let line = server.wait_for("ended after");
    assert!(line.contains("ended after 3 messages (max_messages)"), "{line}");
    stop(server);
}
