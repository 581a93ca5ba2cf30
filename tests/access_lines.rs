//! The access lines of a conversation, through the library: one line when it ends, whoever ends it, and a
//! line per message only when asked for (`log_each_message`). This test binary installs a logger of its own
//! that keeps the records with target `access`.

mod support;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::{Condvar, Mutex},
    thread,
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender};
use log::{Level, Log, Metadata, Record};
use poolserver::{Config, Server};
use support::{Gate, WAIT, connect};

/// The access lines logged so far, by every test of this binary.
struct Lines {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

static LINES: Lines = Lines { lines: Mutex::new(Vec::new()), added: Condvar::new() };

impl Log for Lines {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "access" && metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.lines.lock().unwrap().push(record.args().to_string());
            self.added.notify_all();
        }
    }

    fn flush(&self) {}
}

/// The access lines about `client`, once one of them contains `needle`; fails the test after `WAIT`.
fn lines_until(client: SocketAddr, needle: &str) -> Vec<String> {
    let about = |lines: &[String]| -> Vec<String> {
        lines.iter().filter(|l| l.starts_with(&format!("{client} "))).cloned().collect()
    };
    let deadline = Instant::now() + WAIT;
    let mut lines = LINES.lines.lock().unwrap();
    loop {
        let mine = about(&lines);
        if mine.iter().any(|l| l.contains(needle)) {
            return mine;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no access line for {client} with {needle:?}: {mine:#?}");
        lines = LINES.added.wait_timeout(lines, left).unwrap().0;
    }
}

/// A keep-alive server with the `Gate` handler, run on a thread of its own; the first one installs the
/// test's logger.
fn start(log_each_message: bool) -> (SocketAddr, poolserver::ShutdownHandle, Receiver<()>, Sender<()>) {
    let _ = log::set_logger(&LINES).map(|()| log::set_max_level(log::LevelFilter::Info));
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = 2;
    config.keep_alive = true;
    config.log_each_message = log_each_message;
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let (release_tx, release) = crossbeam_channel::unbounded();
    let server = Server::bind_with(config, Gate { entered, release }).unwrap();
    let (addr, handle) = (server.local_addr(), server.shutdown_handle());
    thread::spawn(move || server.run());
    (addr, handle, entered_rx, release_tx)
}

fn ask(stream: &mut std::net::TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut reply = [0; 2];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ok");
}

/// A conversation of two messages, the second `bye`: its client, and its access lines once the one that
/// ends it is there.
fn ended_by_the_handler(log_each_message: bool) -> (SocketAddr, Vec<String>) {
    let (addr, handle, _, _) = start(log_each_message);
    let mut client = connect(addr);
    ask(&mut client, b"one");
    ask(&mut client, b"bye");
    let client = client.local_addr().unwrap();
    let lines = lines_until(client, " ended ");
    handle.shutdown();
    (client, lines)
}

#[test]
fn a_conversation_the_handler_ends_has_one_line_that_says_so() {
    let (_, lines) = ended_by_the_handler(false);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" ended by the handler after 2 messages, "), "{lines:#?}");
}

#[test]
fn a_conversation_the_stop_ends_after_its_reply_has_one_line_that_says_so() {
    let (addr, handle, entered, release) = start(false);
    let (mut client, mut idle) = (connect(addr), connect(addr));
    ask(&mut client, b"one");
    ask(&mut idle, b"one");
    client.write_all(b"hold").unwrap();
    entered.recv_timeout(WAIT).expect("the message is on a worker");
    handle.shutdown();
    // The stop closes the idle conversation (after its short grace): the stop has begun before the held
    // reply goes out.
    idle.read_to_end(&mut Vec::new()).expect("a clean close");
    release.send(()).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).expect("the reply, then a clean close");
    assert_eq!(reply, b"ok");
    let lines = lines_until(client.local_addr().unwrap(), " ended ");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" ended at the stop after 2 messages, "), "{lines:#?}");
}

#[test]
fn with_log_each_message_each_message_has_a_line_before_the_conversations() {
    let (client, lines) = ended_by_the_handler(true);
    assert_eq!(
        lines.iter().map(|l| l.split(", ").next().unwrap()).collect::<Vec<_>>(),
        [
            format!("{client} message 1: 3 B in"),
            format!("{client} message 2: 3 B in"),
            format!("{client} ended by the handler after 2 messages")
        ],
        "{lines:#?}"
    );
}
