//! Conversations with `--keep-alive`: the tutorial's multitasking client, thousands of open conversations on
//! two workers, the idle timeout, and a stop that ends idle conversations at once.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use support::{REPLY, Server, WAIT, connect, metrics_addr, wait_until_waiting};

/// Sends one message and reads exactly one reply of the tutorial's length.
fn ask(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("send a message");
    let mut reply = vec![0; REPLY.len()];
    stream.read_exact(&mut reply).expect("read the reply");
    reply
}

/// Reads until the server closes; fails on anything but a clean EOF.
fn expect_clean_close(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("a clean close, not a reset");
    assert!(rest.is_empty(), "unexpected bytes before the close: {rest:?}");
}

#[test]
fn the_tutorials_multitasking_client_gets_ten_replies_on_one_connection() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive"]);
    let mut client = connect(server.addr);
    for i in 0..10 {
        assert_eq!(ask(&mut client, format!("hello {i}").as_bytes()), REPLY.as_bytes(), "message {i}");
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    expect_clean_close(&mut client);
    let line = server.wait_for("ended the conversation");
    assert!(line.contains("after 10 messages"), "{line}");
    // One access line for the whole conversation: the log grows with connections, not with messages.
    let per_message: Vec<_> = server.log.iter().filter(|l| l.contains(" message ")).collect();
    assert!(per_message.is_empty(), "{per_message:?}");
}

#[test]
fn with_log_each_message_every_message_has_its_access_line_before_the_conversations() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--log-each-message"]);
    let mut client = connect(server.addr);
    for i in 0..3 {
        assert_eq!(ask(&mut client, format!("hello {i}").as_bytes()), REPLY.as_bytes(), "message {i}");
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    expect_clean_close(&mut client);
    server.wait_for("ended the conversation after 3 messages");
    let numbers: Vec<_> = server
        .log
        .iter()
        .filter_map(|l| l.split(" message ").nth(1)?.split(':').next().map(str::to_owned))
        .collect();
    assert_eq!(numbers, ["1", "2", "3"], "{:?}", server.log);
}

#[test]
fn without_keep_alive_one_message_is_answered_and_the_connection_closed() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let mut client = connect(server.addr);
    assert_eq!(ask(&mut client, b"hello"), REPLY.as_bytes());
    expect_clean_close(&mut client);
}

#[test]
fn two_thousand_open_conversations_are_all_answered_by_two_workers() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--workers", "2"]);
    let mut conversations: Vec<TcpStream> = (0..2000).map(|_| connect(server.addr)).collect();
    // Every conversation stays open while the others talk: two rounds, each conversation one message, sent
    // 250 at a time (a burst larger than the queue, 1024, would rightly get busy replies).
    for round in 0..2 {
        for (batch, streams) in conversations.chunks_mut(250).enumerate() {
            for stream in streams.iter_mut() {
                stream.write_all(b"hello").expect("send");
            }
            for (i, stream) in streams.iter_mut().enumerate() {
                let mut reply = vec![0; REPLY.len()];
                let which = format!("round {round}, conversation {}", batch * 250 + i);
                stream.read_exact(&mut reply).unwrap_or_else(|e| panic!("{which}: {e}"));
                assert_eq!(reply, REPLY.as_bytes(), "{which}");
            }
        }
    }
    drop(conversations);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    let summary = server.wait_for("stopped:");
    assert!(summary.contains("busy 0") && summary.contains("4000 messages"), "{summary}");
}

#[test]
fn a_silent_conversation_is_closed_quietly_after_the_idle_timeout_and_not_before() {
    let idle = Duration::from_secs(2);
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--idle-timeout", "2s"]);
    let mut client = connect(server.addr);
    assert_eq!(ask(&mut client, b"hello"), REPLY.as_bytes());
    let replied = Instant::now();

    // Still open well inside the idle timeout...
    client.set_read_timeout(Some(idle / 2)).unwrap();
    let mut byte = [0; 1];
    let early = client.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "closed before the idle timeout: {early:?}"
    );
    // ...and the conversation goes on: a message resets the clock.
    assert_eq!(ask(&mut client, b"still here"), REPLY.as_bytes());
    let replied_again = Instant::now();
    assert!(replied_again > replied);

    // Then closed with a FIN (not a reset) once it has been silent for the idle timeout.
    client.set_read_timeout(Some(WAIT)).unwrap();
    expect_clean_close(&mut client);
    let silent = replied_again.elapsed();
    assert!(silent >= idle - Duration::from_millis(300), "closed after {silent:?} of silence");
    assert!(silent < idle + Duration::from_secs(3), "closed only after {silent:?} of silence");
    server.wait_for("without a message");
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
    let summary = server.wait_for("stopped:");
    assert!(summary.contains("idle closed 1, errors 0"), "{summary}");
}

#[test]
fn a_stop_ends_idle_conversations_at_once_and_exits_0() {
    let mut server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--idle-timeout",
        "60s",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);
    let mut conversations: Vec<TcpStream> = (0..50).map(|_| connect(server.addr)).collect();
    for stream in &mut conversations {
        assert_eq!(ask(stream, b"hello"), REPLY.as_bytes());
    }
    // One still on a worker when the stop begins would end after its reply, counted served.
    wait_until_waiting(metrics, 50);
    let stopped = Instant::now();
    server.signal(libc::SIGTERM);
    for stream in &mut conversations {
        expect_clean_close(stream);
    }
    assert!(server.wait_exit(WAIT).success());
    // Nowhere near the 60 s idle timeout: the drain does not wait for idle conversations.
    assert!(stopped.elapsed() < Duration::from_secs(10), "the stop took {:?}", stopped.elapsed());
    let summary = server.wait_for("stopped:");
    assert!(summary.contains("idle closed 50"), "{summary}");
}

#[test]
fn conversations_and_one_shot_clients_share_the_server() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--mode", "echo"]);
    let mut conversation = connect(server.addr);
    conversation.write_all(b"first").unwrap();
    let mut reply = [0; 5];
    conversation.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"first");
    // The tutorial's single-client client closes its side after sending: it gets its reply and EOF.
    let mut one_shot = connect(server.addr);
    one_shot.write_all(b"once").unwrap();
    one_shot.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    one_shot.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"once");
    conversation.write_all(b"second").unwrap();
    let mut reply = [0; 6];
    conversation.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"second");
}
