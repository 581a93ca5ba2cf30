//! Nothing waits on a worker: silent connections, clients that do not read their reply, and clients still
//! sending when the reply is out all wait in the waiting room, never on one of the (here: one or two)
//! workers, and never cost another client its turn.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, TryRecvError};
use support::{REPLY, Server, WAIT, big_reply_config, connect, exchange};

/// Watches silent connections as they come from `opened` and returns, for each, how long after it
/// connected the server closed it, or what else happened. Polls all of them at once, so that each close
/// is seen when it happens, however long opening the others takes.
/// Gives up on a connection `patience` after it connected.
fn watch_closes(
    opened: Receiver<(TcpStream, Instant)>,
    patience: Duration,
) -> Vec<Result<(Duration, u16), String>> {
    let mut watched: Vec<(TcpStream, Instant)> = Vec::new();
    let mut results = Vec::new();
    let mut deadline = Instant::now() + WAIT;
    let mut more_coming = true;
    while (more_coming || !watched.is_empty()) && Instant::now() < deadline {
        loop {
            match opened.try_recv() {
                Ok(conn) => {
                    deadline = conn.1 + patience;
                    watched.push(conn);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    more_coming = false;
                    break;
                }
            }
        }
        let mut fds: Vec<libc::pollfd> = watched
            .iter()
            .map(|(s, _)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        let now = Instant::now();
        let mut index = 0;
        watched.retain(|(stream, connected)| {
            let ready = fds[index].revents != 0;
            index += 1;
            if ready {
                let mut byte = [0; 1];
                let port = stream.local_addr().map_or(0, |a| a.port());
                results.push(match (&*stream).read(&mut byte) {
                    Ok(0) => Ok((now - *connected, port)),
                    Ok(_) => Err("got data".to_owned()),
                    Err(e) => Err(e.to_string()),
                });
            }
            !ready
        });
    }
    results.extend(watched.iter().map(|_| Err("still open".to_owned())));
    results
}

/// Silent connections in the test below: four times the backlog, so most come in through SYN cookies.
const SILENT: usize = 1000;

#[test]
fn thousands_of_silent_connections_get_no_busy_reply_and_close_on_time() {
    let read_timeout = Duration::from_secs(3);
    // A small backlog makes the kernel answer many of the silent handshakes with SYN cookies, which skip
    // TCP_DEFER_ACCEPT: those arrive at once with nothing to read.
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--queue",
        "16",
        "--backlog",
        "64",
        "--read-timeout",
        "3s",
    ];
    let mut server = Server::start(&args);
    let addr = server.addr;
    let overflows_before = listen_overflows();
    let (opened, to_watch) = crossbeam_channel::unbounded();
    let watcher = thread::spawn(move || watch_closes(to_watch, read_timeout + Duration::from_secs(3)));
    let opener = thread::spawn(move || {
        for _ in 0..SILENT {
            let stream = connect(addr);
            opened.send((stream, Instant::now())).unwrap();
        }
    });

    // Ordinary clients next to them: every one answered with the reply, none turned away.
    let talkers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || (0..50).map(|_| exchange(addr, b"hello").unwrap()).collect::<Vec<_>>())
        })
        .collect();
    for talker in talkers {
        for reply in talker.join().unwrap() {
            assert_eq!(reply, REPLY.as_bytes());
        }
    }
    opener.join().unwrap();

    // Each silent connection is closed (FIN) about read_timeout after it connected, by the client's clock.
    let closes = watcher.join().unwrap();
    assert_eq!(closes.len(), SILENT);
    // A handshake answered with a SYN cookie whose ACK met a full accept queue is dropped by the kernel
    // without the server ever seeing it; a client that stays silent then stays "connected" alone. Such
    // losses show in the box-wide ListenOverflows counter, which bounds how many may stay open.
    let never_accepted = closes.iter().filter(|close| matches!(close, Err(e) if e == "still open")).count();
    let overflows = listen_overflows() - overflows_before;
    assert!(never_accepted as u64 <= overflows, "{never_accepted} still open, {overflows} listen overflows");
    for (i, close) in
        closes.into_iter().enumerate().filter(|(_, close)| !matches!(close, Err(e) if e == "still open"))
    {
        let (after, port) = close.unwrap_or_else(|e| panic!("silent connection {i}: {e}"));
        let early = after < read_timeout - Duration::from_millis(500);
        let late = after >= read_timeout + Duration::from_secs(2);
        if early || late {
            let needle = format!(":{port} ");
            server.wait_for(&needle);
            let seen: Vec<&String> = server.log.iter().filter(|line| line.contains(&needle)).collect();
            panic!("silent connection {i} (port {port}) closed {after:?} after connecting; server: {seen:?}");
        }
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    let summary = server.wait_for("stopped:");
    assert!(
        summary.contains(&format!("served 200, busy 0, timed out {}", SILENT - never_accepted)),
        "{summary}"
    );
}

/// The kernel's count of connections dropped because an accept queue was full (any listener on the box).
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// A client that asks for a big reply and never reads it.
fn non_reader(addr: std::net::SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.write_all(b"hello").unwrap();
    stream
}

#[test]
fn clients_that_do_not_read_a_big_reply_do_not_delay_another_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = big_reply_config(dir.path(), 10 << 20);
    let args = ["--bind", "127.0.0.1:0", "--workers", "1", "--write-timeout", "60s", "--config"];
    let mut server = Server::start(&[&args[..], &[config.to_str().unwrap()]].concat());
    let stuck: Vec<TcpStream> = (0..10).map(|_| non_reader(server.addr)).collect();
    // With a worker held per non-reader until write_timeout (60 s), this client would wait a minute.
    let started = Instant::now();
    let mut client = connect(server.addr);
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).expect("answered while ten clients do not read");
    assert_eq!(reply.len(), 10 << 20);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stuck);
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
}

#[test]
fn a_reply_cut_short_by_the_write_timeout_ends_in_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let config = big_reply_config(dir.path(), 10 << 20);
    let args = ["--bind", "127.0.0.1:0", "--write-timeout", "1s", "--config", config.to_str().unwrap()];
    let mut server = Server::start(&args);
    let mut reader = non_reader(server.addr);
    server.wait_for("timed out: wrote");
    reader.set_read_timeout(Some(WAIT)).unwrap();
    let mut total = 0;
    let mut buf = vec![0; 64 * 1024];
    let ending = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(total),
            Ok(n) => total += n,
            Err(e) => break Err(e),
        }
    };
    match ending {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "after {total} B"),
        Ok(total) => panic!("a cut reply of {total} B of {} ended like a complete one", 10 << 20),
    }
}

/// Sends `size` bytes (all of them, however slowly the server reads), then reads the whole reply.
fn send_then_read(addr: std::net::SocketAddr, size: usize) -> std::io::Result<Vec<u8>> {
    let mut stream = connect(addr);
    stream.write_all(&vec![b'x'; size])?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}

#[test]
fn clients_sending_up_to_twice_max_request_get_the_reply_and_no_reset() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--max-request", "16777216"]);
    let addr = server.addr;
    let senders: Vec<_> = (0..100).map(|_| thread::spawn(move || send_then_read(addr, 1 << 20))).collect();
    for (i, sender) in senders.into_iter().enumerate() {
        let reply = sender.join().unwrap().unwrap_or_else(|e| panic!("client {i} of 1 MiB: {e}"));
        assert_eq!(reply, REPLY.as_bytes(), "client {i}");
    }
    let reply = send_then_read(addr, 32 << 20).expect("a client sending twice max_request is not reset");
    assert_eq!(reply, REPLY.as_bytes());

    let echo = Server::start(&["--bind", "127.0.0.1:0", "--max-request", "65536", "--mode", "echo"]);
    let addr = echo.addr;
    let senders: Vec<_> = (0..20).map(|_| thread::spawn(move || send_then_read(addr, 128 << 10))).collect();
    for (i, sender) in senders.into_iter().enumerate() {
        let reply = sender.join().unwrap().unwrap_or_else(|e| panic!("echo client {i}: {e}"));
        assert!(!reply.is_empty() && reply.len() <= 65536, "echo client {i}: {} B", reply.len());
    }
}

#[test]
fn a_client_still_sending_its_long_message_when_the_reply_is_out_is_not_reset() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--max-request", "65536"]);
    let mut stream = connect(server.addr);
    // The first part is all the server reads (less than max_request), and long enough that more may follow.
    stream.write_all(&[b'x'; 4096]).unwrap();
    // The reply has arrived (left unread) when the client sends the rest of its message.
    let mut poll = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, WAIT.as_millis() as i32) };
    assert_eq!(ready, 1, "no reply within {WAIT:?}");
    stream.write_all(&vec![b'y'; 2 << 20]).expect("the rest of the message is taken in, not refused");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("the reply and a clean close, not a reset");
    assert_eq!(reply, REPLY.as_bytes());
}
