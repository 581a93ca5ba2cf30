//! The pool's core as its users meet it: no readiness lost while a connection is on a worker, a stop that
//! does not wait for silent clients, one slow handler holding one worker only, nothing running while
//! nothing happens, and every connection's ending counted once.

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use poolserver::{
    Config, Echo, Error, Message, Monitor, Server, ShutdownHandle, Summary, config::MAX_MESSAGES_LIMIT,
};
use support::{REPLY, Server as Binary, WAIT, connect, metrics_addr, sample, scrape, wait_until_waiting};

fn config(workers: usize, keep_alive: bool) -> Config {
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = workers;
    config.keep_alive = keep_alive;
    config
}

/// A server on a thread of its own, its monitor, and its summary once it has stopped.
struct Running {
    addr: SocketAddr,
    stop: ShutdownHandle,
    monitor: Monitor,
    done: Receiver<(Result<Summary, Error>, Instant)>,
}

impl Running {
    fn start(server: Server) -> Running {
        let (addr, stop, monitor) = (server.local_addr(), server.shutdown_handle(), server.monitor());
        let (finished, done) = crossbeam_channel::bounded(1);
        thread::spawn(move || finished.send((server.run(), Instant::now())));
        Running { addr, stop, monitor, done }
    }

    /// Waits (bounded) until `ready` holds for the monitor's numbers.
    fn wait_until(&self, what: &str, ready: impl Fn(&poolserver::Snapshot) -> bool) {
        support::wait_until(&self.monitor, what, ready);
    }

    /// Stops the server and returns its result and how long `run` took to return after the request.
    fn stop(self) -> (Result<Summary, Error>, Duration) {
        let asked = Instant::now();
        self.stop.shutdown();
        let (result, returned) = self.done.recv_timeout(WAIT + WAIT).expect("run() never returned");
        (result, returned.saturating_duration_since(asked))
    }
}

/// Sends `data` in pieces of pseudo-random sizes (seeded), then closes its side; reads everything the
/// server sends until EOF meanwhile. Returns what was read, or an error when EOF did not come in `within`.
fn echo_then_fin(addr: SocketAddr, data: Vec<u8>, seed: u64, within: Duration) -> Result<Vec<u8>, String> {
    let stream = connect(addr);
    stream.set_read_timeout(Some(within)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = thread::spawn(move || {
        let mut state = seed | 1;
        let mut at = 0;
        while at < data.len() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let piece = (1 + state % 20_000) as usize;
            let end = (at + piece).min(data.len());
            writer.write_all(&data[at..end]).expect("send");
            at = end;
        }
        writer.shutdown(Shutdown::Write).expect("FIN");
    });
    let started = Instant::now();
    let mut echoed = Vec::new();
    let mut reader = &stream;
    let outcome = reader.read_to_end(&mut echoed);
    sending.join().expect("sender");
    match outcome {
        Ok(_) => Ok(echoed),
        Err(e) => Err(format!("no EOF after {:?} ({} bytes echoed): {e}", started.elapsed(), echoed.len())),
    }
}

#[test]
fn a_fin_that_arrives_while_the_connection_is_on_a_worker_is_seen() {
    let mut config = config(2, true);
    // The 1 MiB echo below is over a thousand reads of max_request: more than the default max_messages.
    config.max_messages = MAX_MESSAGES_LIMIT;
    let running = Running::start(Server::bind_with(config, Echo).unwrap());
    let addr = running.addr;
    // 20 clients at once, 10,000 bytes each then FIN: the FIN often arrives while a worker still echoes.
    let clients: Vec<_> = (0..20_u64)
        .map(|n| {
            thread::spawn(move || {
                let data: Vec<u8> = (0..10_000).map(|i| (i % 251) as u8).collect();
                (echo_then_fin(addr, data.clone(), n, Duration::from_secs(3)), data)
            })
        })
        .collect();
    for client in clients {
        let (echoed, sent) = client.join().unwrap();
        assert!(echoed.as_ref().is_ok_and(|echoed| *echoed == sent), "{:?}", echoed.map(|e| e.len()));
    }
    // Every size, split at random: the echo is whole and the FIN is seen.
    for (n, size) in [1, 2, 1023, 1024, 1025, 4096, 65_535, 100_000, 1 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let echoed = echo_then_fin(addr, data.clone(), 1000 + n as u64, WAIT);
        assert!(
            echoed.as_ref().is_ok_and(|echoed| *echoed == data),
            "{size} B: {:?}",
            echoed.map(|e| e.len())
        );
    }
    let (summary, _) = running.stop();
    let summary = summary.expect("a clean stop");
    assert_eq!(summary.served, 29, "{summary:?}");
    assert_eq!(summary.idle_closed, 0, "{summary:?}");
}

#[test]
fn a_stop_closes_idle_and_silent_connections_after_a_short_grace() {
    // A listener without TCP_DEFER_ACCEPT, so that silent clients are accepted at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let running = Running::start(Server::from_listener(listener, config(2, true), Echo).unwrap());
    let addr = running.addr;
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(b"hi").unwrap();
            let mut reply = [0; 2];
            stream.read_exact(&mut reply).unwrap();
            stream
        })
        .collect();
    let silent: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    running.wait_until("held 60 connections", |s| s.open == 60 && s.waiting == 60);
    let mut late = connect(addr);
    late.write_all(b"x").unwrap();
    let mut reply = [0; 1];
    late.read_exact(&mut reply).unwrap();
    // Its reply is out before its worker hands it back: once back, the stop finds it idle.
    running.wait_until("held the late one too", |s| s.waiting == 61);
    let (result, took) = running.stop();
    let summary = result.unwrap_or_else(|e| panic!("the stop waited for silence: {e}"));
    // The grace is 1 s; an old server waited for shutdown_timeout (10 s) and failed.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(summary.connections, 61, "{summary:?}");
    assert_eq!(summary.idle_closed, 61, "{summary:?}");
    // Each was closed with a FIN: EOF, not a reset.
    for mut stream in idle.into_iter().chain(silent).chain([late]) {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).ok(), Some(0), "a FIN, nothing more");
    }
}

#[test]
fn sigterm_with_only_idle_conversations_exits_at_once_and_a_message_in_the_grace_is_answered() {
    let mut server = Binary::start(&[
        "--bind",
        "127.0.0.1:0",
        "--keep-alive",
        "--mode",
        "echo",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);
    let conversations: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = connect(server.addr);
            stream.write_all(b"first").unwrap();
            let mut reply = [0; 5];
            stream.read_exact(&mut reply).unwrap();
            stream
        })
        .collect();
    // One still on a worker when the stop begins would end after its reply, counted served.
    wait_until_waiting(metrics, 20);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_for("stop requested");
    // In the stop's grace: answered, then closed.
    let mut talker = &conversations[0];
    talker.write_all(b"second").unwrap();
    talker.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    talker.read_to_end(&mut rest).expect("the answer, then EOF");
    assert_eq!(rest, b"second");
    let status = server.wait_exit(WAIT);
    let took = signalled.elapsed();
    assert!(status.success(), "{status}: {:#?}", server.log);
    // The grace is 1 s; an old server waited for shutdown_timeout (10 s), then failed.
    assert!(took < Duration::from_secs(5), "{took:?}");
    let summary = server.wait_for("served");
    assert!(summary.contains("served 1,") && summary.contains("idle closed 19"), "{summary}");
    for mut stream in conversations.into_iter().skip(1) {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).ok(), Some(0), "a FIN, nothing more");
    }
}

#[test]
fn one_slow_handler_holds_one_worker_not_the_other_conversations() {
    const SLOW_HANDLER: Duration = Duration::from_secs(1);
    // Issue 18 names a 400 ms handler and a 300 ms bound; on a loaded 2-core box that window is too tight
    // for scheduling noise, so the handler is slower and the bound wider: a conversation stuck behind it
    // would still wait up to a second, and a healthy one waits milliseconds.
    let handler = |message: &Message<'_>| {
        if message.bytes() == b"slow" {
            thread::sleep(SLOW_HANDLER);
        }
        message.bytes().to_vec()
    };
    let mut config = config(4, true);
    // The fast conversations talk for the whole 2 s: more than the default max_messages.
    config.max_messages = MAX_MESSAGES_LIMIT;
    let running = Running::start(Server::bind_with(config, handler).unwrap());
    let addr = running.addr;
    let slow_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&slow_done);
    let slow = thread::spawn(move || {
        let mut stream = connect(addr);
        for _ in 0..3 {
            stream.write_all(b"slow").unwrap();
            let mut reply = [0; 4];
            stream.read_exact(&mut reply).unwrap();
        }
        done.store(true, SeqCst);
    });
    // The others talk for as long as the slow one does (bounded by WAIT).
    let others: Vec<_> = (0..16)
        .map(|_| {
            let slow_done = Arc::clone(&slow_done);
            thread::spawn(move || {
                let mut stream = connect(addr);
                let mut worst = Duration::ZERO;
                let until = Instant::now() + WAIT;
                while !slow_done.load(SeqCst) && Instant::now() < until {
                    let sent = Instant::now();
                    stream.write_all(b"fast").unwrap();
                    let mut reply = [0; 4];
                    stream.read_exact(&mut reply).unwrap();
                    worst = worst.max(sent.elapsed());
                }
                worst
            })
        })
        .collect();
    let worst = others.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    slow.join().unwrap();
    // A conversation stuck behind the slow handler would wait for what is left of its second.
    assert!(worst < SLOW_HANDLER / 2, "a conversation waited {worst:?}");
    running.stop().0.expect("a clean stop");
}

/// CPU time (user + system) of process `pid` so far, from /proc.
fn process_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes no pointers.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn nothing_runs_while_nothing_happens() {
    let args = ["--bind", "127.0.0.1:0", "--keep-alive", "--idle-timeout", "10m", "--access-log", "off"];
    let server = Binary::start(&args);
    let conversations: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut stream = connect(server.addr);
            stream.write_all(b"hi").unwrap();
            let mut reply = [0; REPLY.len()];
            stream.read_exact(&mut reply).unwrap();
            stream
        })
        .collect();
    let before = process_cpu(server.pid());
    let started = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let used = process_cpu(server.pid()).saturating_sub(before);
    let elapsed = started.elapsed();
    // 1 % of a core: 30 ms over these 3 s (the kernel counts in 10 ms ticks).
    assert!(used <= elapsed / 100, "{used:?} of CPU in {elapsed:?} with 2,000 silent conversations");
    drop(conversations);
}

/// Longer than what a socket's buffers hold on loopback: a client that does not read holds the reply.
const REPLY_LEN: usize = 8 << 20;

const ENDINGS: [&str; 6] = ["served", "busy", "timed_out", "hung_up", "idle_closed", "errors"];

#[test]
fn every_connection_is_counted_once_under_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::big_reply_config(dir.path(), REPLY_LEN);
    let config = config.to_str().unwrap();
    let args =
        ["--config", config, "--bind", "127.0.0.1:0", "--keep-alive", "--workers", "2", "--queue", "2"];
    let mut server =
        Binary::start(&[&args[..], &["--write-timeout", "1s", "--metrics", "127.0.0.1:0"]].concat());
    let metrics = metrics_addr(&mut server);
    let addr = server.addr;
    let read_reply = |stream: &mut TcpStream| {
        let mut reply = vec![0; REPLY_LEN];
        stream.read_exact(&mut reply)
    };
    let mut threads = Vec::new();
    // Conversations of five messages, and single exchanges, with a burst that may find the queue full.
    for n in 0..30 {
        threads.push(thread::spawn(move || {
            let mut stream = connect(addr);
            for _ in 0..(if n < 10 { 5 } else { 1 }) {
                if stream.write_all(b"hello").is_err() || read_reply(&mut stream).is_err() {
                    break;
                }
            }
        }));
    }
    // Clients that reset in the middle of a reply, and clients that send much and leave at once.
    for n in 0..10 {
        threads.push(thread::spawn(move || {
            let mut stream = connect(addr);
            let message = if n % 2 == 0 { vec![b'x'; 5] } else { vec![b'x'; 5000] };
            let _ = stream.write_all(&message);
            let mut some = [0; 1000];
            let _ = stream.read(&mut some);
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    // Held through the stop: silent clients, and clients that never read their reply.
    let silent: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    let not_reading: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(b"hello").unwrap();
            stream
        })
        .collect();
    // Quiet now: what the metrics count adds up, the open ones included.
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let page = scrape(metrics);
        let ended: u64 = ENDINGS.iter().map(|name| sample(&page, &format!("poolserver_{name}"))).sum();
        let open = sample(&page, "poolserver_open_connections");
        if ended + open == sample(&page, "poolserver_accepted_connections") || Instant::now() >= deadline {
            break page;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let ended: u64 = ENDINGS.iter().map(|name| sample(&page, &format!("poolserver_{name}"))).sum();
    let open = sample(&page, "poolserver_open_connections");
    assert_eq!(ended + open, sample(&page, "poolserver_accepted_connections"), "{page}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
    drop((silent, not_reading));
    // After the stop: every connection under exactly one ending.
    let summary = server.wait_for("stopped:");
    let number = |label: &str| -> u64 {
        let at = summary.find(label).unwrap_or_else(|| panic!("no {label} in {summary}")) + label.len();
        summary[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let endings: u64 =
        ["served", "busy", "timed out", "hung up", "idle closed", "errors"].iter().map(|l| number(l)).sum();
    let connections =
        summary.split('(').nth(1).and_then(|s| s.split(' ').next()).unwrap().parse::<u64>().unwrap();
    assert_eq!(endings, connections, "{summary}");
    assert_eq!(connections, 50, "{summary}");
    assert!(number("timed out") >= 1, "the clients that never read: {summary}");
    assert!(number("idle closed") >= 5, "the silent ones: {summary}");
}
