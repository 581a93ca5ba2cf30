//! The library API: a custom protocol on the same pool, a handler that panics, and an in-process shutdown.

mod support;

use std::net::SocketAddr;

use poolserver::{Config, Error, Handler, Message, Reply, Server, Summary};
use support::{BoundedThread, WAIT, exchange};

/// Uppercases the request, and panics on the request `panic`.
struct Fragile;

impl Handler for Fragile {
    type State = ();

    fn reply<'a>(&'a self, message: &Message<'a>, _: &mut ()) -> Reply<'a> {
        assert!(message.bytes() != b"panic", "asked to panic");
        Reply::from(message.bytes().to_ascii_uppercase())
    }
}

fn start(workers: usize) -> (SocketAddr, poolserver::ShutdownHandle, BoundedThread<Result<Summary, Error>>) {
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = workers;
    let server = Server::bind_with(config, Fragile).unwrap();
    let (addr, stop) = (server.local_addr(), server.shutdown_handle());
    (addr, stop, support::spawn(move || server.run()))
}

#[test]
fn a_custom_handler_serves_its_own_protocol() {
    let (addr, stop, running) = start(2);
    assert_eq!(exchange(addr, b"shout this").unwrap(), b"SHOUT THIS");
    stop.shutdown();
    let summary = running.join(WAIT).unwrap();
    assert_eq!(summary.served, 1);
}

#[test]
fn panics_in_the_handler_never_shrink_the_pool() {
    let (addr, stop, running) = start(2);
    // More panics than workers: if a panic killed its worker, nobody would be left to answer.
    for _ in 0..5 {
        let reply = exchange(addr, b"panic").unwrap();
        assert!(reply.is_empty(), "a panicking handler sends nothing");
    }
    for i in 0..10 {
        assert_eq!(exchange(addr, format!("after {i}").as_bytes()).unwrap(), format!("AFTER {i}").as_bytes());
    }
    stop.shutdown();
    let summary = running.join(WAIT).unwrap();
    assert_eq!((summary.served, summary.errors), (10, 5));
}

#[test]
fn shutdown_can_be_requested_from_any_thread_any_number_of_times() {
    let (addr, stop, running) = start(1);
    assert_eq!(exchange(addr, b"x").unwrap(), b"X");
    let helpers: Vec<_> = (0..4)
        .map(|_| {
            support::spawn({
                let stop = stop.clone();
                move || stop.shutdown()
            })
        })
        .collect();
    for helper in helpers {
        helper.join(WAIT);
    }
    assert_eq!(running.join(WAIT).unwrap().served, 1);
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed after run returns");
}
