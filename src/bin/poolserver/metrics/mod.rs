//! `--metrics ADDR`: Prometheus metrics on a port of their own, served by one small thread.
//!
//! The metrics must answer exactly when the pool does not: when every worker is busy, an operator needs to
//! see it. So they never touch the pool: a dedicated thread with its own listener takes one scrape at a
//! time, bounded in size and time (`http`), and reads the server's atomics through a `Monitor`. A slow or
//! hostile client on this port can delay the next scrape by `http::DEADLINE` at most, and can neither hold
//! a worker nor slow the accept loop. No async runtime: one blocking thread is all a scrape every few
//! seconds needs.

mod collector;
mod http;

use std::{
    io,
    net::{SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use log::warn;
use poolserver::{Error, Monitor};

/// Pause after a failed accept (out of file descriptors), so the thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves the metrics of `monitor`'s server from a thread of their own, for the rest of
/// the process. Returns the address bound (port 0 resolved).
pub fn start(addr: SocketAddr, monitor: Monitor) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    let registry = collector::registry(monitor);
    thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            let mut last_warning: Option<Instant> = None;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => http::answer(stream, &registry),
                    // The client gave up before we took it, or a signal came: nothing to report.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                        ) => {}
                    // Out of file descriptors: the server's connections are taking them. Warn now and then.
                    Err(e) => {
                        if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                            warn!("metrics: cannot accept on {bound}: {e}; retrying");
                            last_warning = Some(Instant::now());
                        }
                        thread::sleep(ACCEPT_BACKOFF);
                    }
                }
            }
        })
        .map_err(|source| Error::Io { what: "start the metrics thread", source })?;
    Ok(bound)
}
