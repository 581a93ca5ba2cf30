//! `--metrics ADDR`: Prometheus metrics on a port of their own, served by one small thread.
//!
//! The metrics must answer exactly when the pool does not: when every worker is busy, an operator needs to
//! see it. So they never touch the pool: a dedicated thread with its own listener serves every metrics
//! client at once, each bounded in size and time (`http`, `clients`), and reads the server's atomics
//! through a `Monitor`. A slow or hostile client on this port is dropped at its deadline and delays no
//! other, so a scrape is answered beside any number of them; it can neither hold a worker nor slow the
//! accept loop. No async runtime: one thread polling a handful of sockets is all a scrape needs.

mod clients;
mod collector;
mod http;

use std::{
    io,
    net::{SocketAddr, TcpListener},
    thread,
};

use log::error;
use poolserver::Monitor;

use crate::errors::{self, CliError};

/// Binds `addr` and serves the metrics of `monitor`'s server from a thread of their own, for the rest of
/// the process. Returns the address bound (port 0 resolved).
pub fn start(addr: SocketAddr, monitor: Monitor) -> Result<SocketAddr, CliError> {
    let cannot_bind = |e: io::Error| CliError::System(errors::bind_failure(addr, &e));
    let listener = TcpListener::bind(addr).map_err(cannot_bind)?;
    let bound = listener.local_addr().map_err(cannot_bind)?;
    let registry = collector::registry(monitor);
    thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            // poll(2) itself failed (out of memory): the metrics stop, the server goes on.
            if let Err(e) = clients::serve(&listener, &registry) {
                error!("metrics: stopped serving on {bound}: {e}");
            }
        })
        .map_err(|e| CliError::System(format!("cannot start the metrics thread: {e}")))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        thread,
        time::{Duration, Instant},
    };

    use crossbeam_channel::{Receiver, Sender};
    use poolserver::{Config, Message, Server};

    use super::*;
    use crate::stats::scrape::scrape;

    const WAIT: Duration = Duration::from_secs(15);

    fn send(addr: SocketAddr, message: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.write_all(message).expect("send");
        stream
    }

    /// The one place where a worker can really be stuck is the handler; the binary's handlers never block,
    /// so this runs the library's server with one that does, behind the binary's metrics.
    #[test]
    fn the_metrics_answer_while_every_worker_is_stuck_and_the_queue_is_full() {
        let (entered, entered_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::unbounded();
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let mut config = Config::default();
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        (config.workers, config.queue) = (1, 1);
        config.busy_reply = "busy".to_owned();
        let server = Server::bind_with(config, move |_: &Message<'_>| {
            let _ = entered.send(());
            let _ = release.recv_timeout(WAIT);
            "ok"
        })
        .expect("bind");
        let addr = server.local_addr();
        let metrics = start(SocketAddr::from(([127, 0, 0, 1], 0)), server.monitor()).expect("metrics");
        let stop = server.shutdown_handle();
        let running = thread::spawn(move || server.run());

        let held = send(addr, b"one");
        entered_rx.recv_timeout(WAIT).expect("the only worker is stuck in the handler");
        let queued = send(addr, b"two");
        let mut turned_away = send(addr, b"three");
        let mut reply = Vec::new();
        turned_away.read_to_end(&mut reply).expect("the busy reply");
        assert_eq!(reply, b"busy");
        // An ending is counted when its connection closes: the server lingers until the client closes too.
        drop(turned_away);
        let deadline = Instant::now() + WAIT;
        let page = loop {
            let page = scrape(metrics, WAIT).expect("a scrape while the pool is full");
            if page.get("poolserver_busy_total") == Ok(1.0) || Instant::now() >= deadline {
                break page;
            }
            thread::yield_now();
        };
        assert_eq!(page.get("poolserver_busy_workers"), Ok(1.0));
        assert_eq!(page.get("poolserver_workers"), Ok(1.0));
        assert_eq!(page.get("poolserver_queued_connections"), Ok(1.0));
        assert_eq!(page.get("poolserver_queue_capacity"), Ok(1.0));
        assert_eq!(page.get("poolserver_busy_total"), Ok(1.0));
        assert_eq!(page.get("poolserver_messages_total"), Ok(0.0));

        release_tx.send(()).expect("release");
        release_tx.send(()).expect("release");
        drop((held, queued));
        stop.shutdown();
        let summary = running.join().expect("server thread").expect("clean stop");
        assert_eq!(summary.messages, 2);
        let after = scrape(metrics, WAIT).expect("a scrape after the stop");
        assert_eq!(after.get("poolserver_messages_total"), Ok(2.0));
        assert_eq!(after.buckets("poolserver_service_seconds").last().map(|b| b.1), Some(2.0));
    }
}
