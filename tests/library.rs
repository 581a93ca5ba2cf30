//! The library API: custom protocols (a trait with conversation state, a closure), a handler that panics or
//! blocks, a listener made by the caller, a config checked at the door, and an in-process shutdown.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use poolserver::{Config, Error, Handler, Message, Monitor, Reply, Server, ShutdownHandle, Summary};
use support::{BIG, Gate, WAIT, connect, exchange, wait_until};

/// Uppercases the message, and panics on the message `panic`.
struct Fragile;

impl Handler for Fragile {
    type State = ();

    fn reply<'a>(&'a self, message: &Message<'a>, _: &mut ()) -> Reply<'a> {
        assert!(message.bytes() != b"panic", "asked to panic");
        Reply::from(message.bytes().to_ascii_uppercase())
    }
}

fn config(workers: usize) -> Config {
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = workers;
    config
}

/// A server running on a thread of its own; `stop` asks it to stop and waits (bounded) for its summary.
struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    monitor: Monitor,
    done: Receiver<Result<Summary, Error>>,
}

impl Running {
    fn start(server: Server) -> Running {
        let (addr, handle, monitor) = (server.local_addr(), server.shutdown_handle(), server.monitor());
        let (finished, done) = crossbeam_channel::bounded(1);
        thread::spawn(move || finished.send(server.run()));
        Running { addr, handle, monitor, done }
    }

    fn stop(self) -> Summary {
        self.handle.shutdown();
        self.finish()
    }

    fn finish(self) -> Summary {
        let result = self.done.recv_timeout(WAIT).expect("the server stops within WAIT");
        result.expect("a clean stop")
    }
}

#[test]
fn a_custom_handler_serves_its_own_protocol() {
    let running = Running::start(Server::bind_with(config(2), Fragile).unwrap());
    assert_eq!(exchange(running.addr, b"shout this").unwrap(), b"SHOUT THIS");
    assert_eq!(running.stop().served, 1);
}

#[test]
fn a_closure_is_a_handler() {
    let server =
        Server::bind_with(config(1), |message: &Message<'_>| format!("{} bytes", message.bytes().len()));
    let running = Running::start(server.unwrap());
    assert_eq!(exchange(running.addr, b"12345").unwrap(), b"5 bytes");
    running.stop();
}

/// Numbers each conversation's messages and names the client; "bye" ends the conversation.
struct Numbered;

impl Handler for Numbered {
    type State = u64;

    fn reply<'a>(&'a self, message: &Message<'a>, count: &mut u64) -> Reply<'a> {
        *count += 1;
        assert_eq!(*count, message.number());
        let reply = Reply::from(format!("{count} from {}", message.client()));
        if message.bytes() == b"bye" { reply.then_close() } else { reply }
    }
}

fn ask(stream: &mut TcpStream, message: &[u8]) -> String {
    stream.write_all(message).unwrap();
    let mut reply = [0; 256];
    let n = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[test]
fn a_handler_keeps_state_for_each_conversation_and_can_end_it() {
    let mut config = config(2);
    config.keep_alive = true;
    let running = Running::start(Server::bind_with(config, Numbered).unwrap());
    let (mut first, mut second) = (connect(running.addr), connect(running.addr));
    let me = first.local_addr().unwrap();
    assert_eq!(ask(&mut first, b"a"), format!("1 from {me}"));
    assert_eq!(ask(&mut first, b"b"), format!("2 from {me}"));
    // Each conversation has its own count.
    assert!(ask(&mut second, b"a").starts_with("1 from "));
    assert_eq!(ask(&mut first, b"bye"), format!("3 from {me}"));
    // The handler ended the conversation: the server closes after the reply.
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).expect("a clean close");
    assert!(rest.is_empty());
    assert!(ask(&mut second, b"b").starts_with("2 from "));
    drop(second);
    let summary = running.stop();
    assert_eq!(summary.messages, 5);
}

#[test]
fn panics_in_the_handler_never_shrink_the_pool() {
    let running = Running::start(Server::bind_with(config(2), Fragile).unwrap());
    // More panics than workers: if a panic killed its worker, nobody would be left to answer.
    for _ in 0..5 {
        let reply = exchange(running.addr, b"panic").unwrap();
        assert!(reply.is_empty(), "a panicking handler sends nothing");
    }
    for i in 0..10 {
        let reply = exchange(running.addr, format!("after {i}").as_bytes()).unwrap();
        assert_eq!(reply, format!("AFTER {i}").as_bytes());
    }
    let summary = running.stop();
    assert_eq!((summary.served, summary.errors), (10, 5));
}

#[test]
fn a_listener_made_by_the_caller_is_served_and_closed_at_the_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let running = Running::start(Server::from_listener(listener, config(1), Fragile).unwrap());
    assert_eq!(running.addr, addr);
    assert_eq!(exchange(addr, b"mine").unwrap(), b"MINE");
    running.stop();
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed after run returns");
}

#[test]
fn a_config_that_cannot_serve_is_refused_at_the_door() {
    let refused = |change: fn(&mut Config)| {
        let mut config = config(1);
        change(&mut config);
        match Server::bind_with(config, Fragile) {
            Err(Error::Config { field, reason }) => format!("{field}: {reason}"),
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("a config that cannot serve was accepted"),
        }
    };
    assert_eq!(refused(|c| c.workers = 0), "workers: must be at least 1");
    assert_eq!(refused(|c| c.max_request = 0), "max_request: must be at least 1");
    assert!(refused(|c| c.busy_reply.clear()).starts_with("busy_reply: must not be empty"));
}

#[test]
fn shutdown_can_be_requested_from_any_thread_any_number_of_times() {
    let running = Running::start(Server::bind_with(config(1), Fragile).unwrap());
    assert_eq!(exchange(running.addr, b"x").unwrap(), b"X");
    let helpers: Vec<_> = (0..4)
        .map(|_| {
            let handle = running.handle.clone();
            thread::spawn(move || handle.shutdown())
        })
        .collect();
    for helper in helpers {
        helper.join().unwrap();
    }
    let addr = running.addr;
    assert_eq!(running.finish().served, 1);
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed after run returns");
}

fn gated(workers: usize, queue: usize) -> (Running, Receiver<()>, Sender<()>) {
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let (release_tx, release) = crossbeam_channel::unbounded();
    let mut config = config(workers);
    config.queue = queue;
    config.keep_alive = true;
    config.busy_reply = "busy".to_owned();
    let running = Running::start(Server::bind_with(config, Gate { entered, release }).unwrap());
    (running, entered_rx, release_tx)
}

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut reply = vec![0; n];
    stream.read_exact(&mut reply).expect("a reply");
    reply
}

#[test]
fn a_message_that_finds_every_worker_busy_and_the_queue_full_gets_the_busy_reply() {
    let (running, entered, release) = gated(1, 1);
    let mut holding = connect(running.addr);
    holding.write_all(b"hold").unwrap();
    entered.recv_timeout(WAIT).expect("the only worker is held");
    // A conversation already under way: its next message takes the one queue slot...
    let mut queued = connect(running.addr);
    queued.write_all(b"first").unwrap();
    // ...which the worker cannot take yet, so this one finds the queue full.
    let mut turned_away = connect(running.addr);
    turned_away.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    turned_away.read_to_end(&mut reply).expect("the busy reply and a clean close");
    assert_eq!(reply, b"busy");
    drop(turned_away);

    release.send(()).unwrap();
    assert_eq!(read_exactly(&mut holding, 2), b"ok");
    assert_eq!(read_exactly(&mut queued, 2), b"ok");
    // Both conversations go on.
    queued.write_all(b"again").unwrap();
    assert_eq!(read_exactly(&mut queued, 2), b"ok");
    drop((holding, queued));
    let summary = running.stop();
    assert_eq!((summary.busy, summary.messages), (1, 3));
}

#[test]
fn a_reply_too_big_for_the_socket_is_finished_while_every_worker_is_busy() {
    // Idle workers watch the waiting room; with the only one held by a handler, the room's own thread
    // must take the watch back and write the rest of the reply as the client reads it.
    let (running, entered, release) = gated(1, 8);
    let mut reading = connect(running.addr);
    reading.write_all(b"big").unwrap();
    let mut holding = connect(running.addr);
    holding.write_all(b"hold").unwrap();
    entered.recv_timeout(WAIT).expect("the only worker is held, after writing what fit of the big reply");
    reading.set_read_timeout(Some(WAIT)).unwrap();
    let reply = read_exactly(&mut reading, BIG);
    assert!(reply.iter().all(|&b| b == b'x'));
    // The held message is still unanswered: the reply was finished without a worker.
    holding.set_nonblocking(true).unwrap();
    let mut byte = [0; 1];
    let unanswered = holding.read(&mut byte).map_err(|e| e.kind());
    assert_eq!(unanswered, Err(ErrorKind::WouldBlock), "the held message was answered first");
    holding.set_nonblocking(false).unwrap();

    release.send(()).unwrap();
    assert_eq!(read_exactly(&mut holding, 2), b"ok");
    drop((reading, holding));
    let summary = running.stop();
    assert_eq!(summary.messages, 2);
}

#[test]
fn a_conversation_is_answered_while_a_stream_of_new_clients_keeps_every_worker_busy() {
    // Four clients that reconnect for every slow message keep the one worker's queue from ever running
    // dry, so the worker never idles to watch the waiting room: it must still look there between jobs.
    let mut config = config(1);
    config.keep_alive = true;
    let server = Server::bind_with(config, |message: &Message<'_>| {
        if message.bytes() == b"slow" {
            thread::sleep(Duration::from_millis(5));
        }
        "ok"
    });
    let running = Running::start(server.unwrap());
    let mut conversation = connect(running.addr);
    conversation.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(ask(&mut conversation, b"hello"), "ok");
    let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let addr = running.addr;
    let stream: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
            thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let mut client = connect(addr);
                    client.set_read_timeout(Some(WAIT)).unwrap();
                    if ask(&mut client, b"slow") == "ok" {
                        served.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    // Under way: the worker has taken a few of the stream's messages.
    let deadline = Instant::now() + WAIT;
    while served.load(Relaxed) < 8 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    // Four slow messages at most are ahead of it: seconds would be starvation, not a queue.
    conversation.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let answered = conversation.write_all(b"again").map(|()| {
        let mut reply = [0; 2];
        conversation.read_exact(&mut reply).map(|()| reply)
    });
    let during = served.load(Relaxed);
    stop.store(true, Relaxed);
    for client in stream {
        client.join().unwrap();
    }
    assert!(
        matches!(answered, Ok(Ok(reply)) if &reply == b"ok"),
        "the conversation went unanswered: {answered:?}"
    );
    assert!(during >= 8, "the stream of new clients was served meanwhile ({during})");
    drop(conversation);
    running.stop();
}

#[test]
fn a_stop_closes_idle_conversations_at_once_and_answers_the_message_in_flight() {
    let (running, entered, release) = gated(2, 8);
    let mut idle = connect(running.addr);
    idle.write_all(b"hello").unwrap();
    assert_eq!(read_exactly(&mut idle, 2), b"ok");
    // Its reply is out before its worker hands it back: once back, the stop finds it idle.
    wait_until(&running.monitor, "held the idle conversation", |s| s.waiting == 1);
    let mut in_flight = connect(running.addr);
    in_flight.write_all(b"hold").unwrap();
    entered.recv_timeout(WAIT).expect("the message is on a worker");

    running.handle.shutdown();
    // The idle conversation ends while the other message is still being answered.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).expect("a clean close");
    assert!(rest.is_empty());
    assert!(running.done.recv_timeout(Duration::from_millis(200)).is_err(), "the stop waits for the message");

    release.send(()).unwrap();
    let mut reply = Vec::new();
    in_flight.read_to_end(&mut reply).expect("the reply, then a clean close");
    assert_eq!(reply, b"ok");
    let summary = running.finish();
    assert_eq!((summary.messages, summary.idle_closed, summary.served), (2, 1, 1));
}

#[test]
fn a_monitor_sees_busy_workers_queued_messages_and_waiting_connections() {
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let (release_tx, release) = crossbeam_channel::unbounded();
    let mut config = config(1);
    config.keep_alive = true;
    let server = Server::bind_with(config, Gate { entered, release }).unwrap();
    let monitor = server.monitor();
    let running = Running::start(server);
    let mut idle = connect(running.addr);
    idle.write_all(b"hello").unwrap();
    assert_eq!(read_exactly(&mut idle, 2), b"ok");
    let mut holding = connect(running.addr);
    holding.write_all(b"hold").unwrap();
    entered_rx.recv_timeout(WAIT).expect("the only worker is held");
    let mut queued = connect(running.addr);
    queued.write_all(b"next").unwrap();

    // The queued message and the idle conversation show up as soon as the server has taken them in, and
    // stay while the only worker is held.
    wait_until(&monitor, "took in the queued message", |s| s.queued == 1 && s.waiting == 1);
    let snapshot = monitor.snapshot();
    assert_eq!((snapshot.busy_workers, snapshot.workers), (1, 1), "{snapshot:?}");
    assert_eq!((snapshot.queued, snapshot.waiting, snapshot.open), (1, 1, 3), "{snapshot:?}");
    assert_eq!(snapshot.queue_capacity, 1024);
    assert_eq!(snapshot.summary.messages, 1);
    assert_eq!(snapshot.service_times.counts.iter().sum::<u64>(), 1);

    release_tx.send(()).unwrap();
    assert_eq!(read_exactly(&mut holding, 2), b"ok");
    assert_eq!(read_exactly(&mut queued, 2), b"ok");
    drop((idle, holding, queued));
    let summary = running.stop();
    assert_eq!(summary.messages, 3);
    assert_eq!(monitor.snapshot().open, 0);
}
