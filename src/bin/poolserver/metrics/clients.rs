//! The metrics thread's loop: one `poll(2)` over the listener and every client at once, so that a client
//! that sends half a request, or reads its answer slowly, delays nobody else.
//!
//! Served one at a time, six such clients kept every scrape waiting past Prometheus's timeout. Here each
//! client is only a buffer and a deadline (`http::DEADLINE` from its accept, for reading the request and
//! writing the answer together): past it, the client is dropped. At most `MAX_CLIENTS` are held; one more
//! drops the oldest, which is the one nearest its deadline and the likeliest to be stalling, so a flood of
//! idle connections cannot keep a scraper out either. One thread, no worker of the pool, no runtime.

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use log::warn;
use prometheus_client::registry::Registry;

use super::http;

/// The most clients held at once; a scraper needs one, a few more cover several Prometheus servers.
pub const MAX_CLIENTS: usize = 64;
/// Pause after a failed accept (out of file descriptors), so the thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a failing accept is logged.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(60);

struct Client {
    stream: TcpStream,
    deadline: Instant,
    phase: Phase,
}

enum Phase {
    /// The request head so far.
    Reading(Vec<u8>),
    /// The response, of which `written` bytes are sent.
    Writing { response: Vec<u8>, written: usize },
}

/// What a client's turn leaves.
enum Turn {
    Keep,
    Drop,
}

/// Serves the metrics on `listener` for the rest of the process.
pub fn serve(listener: &TcpListener, registry: &Registry) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // In the order they came, so deadlines only grow from front to back.
    let mut clients: VecDeque<Client> = VecDeque::new();
    let mut accept_after: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while clients.front().is_some_and(|c| c.deadline <= now) {
            clients.pop_front();
        }
        let accepting = accept_after.is_none_or(|at| at <= now);
        let mut fds: Vec<libc::pollfd> = clients.iter().map(Client::pollfd).collect();
        if accepting {
            fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN));
        }
        let wake = clients.front().map(|c| c.deadline).into_iter().chain(accept_after.filter(|_| !accepting));
        let timeout = match wake.min() {
            Some(at) => i32::try_from(at.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX),
            None => -1,
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            // A signal came in (SIGHUP, SIGUSR1 are handled on other threads, but may land here): go round.
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut index = 0;
        clients.retain_mut(|client| {
            let revents = fds[index].revents;
            index += 1;
            revents == 0 || matches!(client.turn(registry), Turn::Keep)
        });
        if accepting && fds.last().is_some_and(|fd| fd.revents != 0) {
            accept_after = None;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if clients.len() == MAX_CLIENTS {
                            clients.pop_front();
                        }
                        if let Some(client) = Client::new(stream) {
                            clients.push_back(client);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The client gave up before we took it, or a signal came: nothing to report.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                        ) => {}
                    // Out of file descriptors: the server's connections are taking them. Warn now and then.
                    Err(e) => {
                        if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_EVERY) {
                            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                            warn!("metrics: cannot accept on {addr}: {e}; retrying");
                            last_warning = Some(Instant::now());
                        }
                        accept_after = Some(Instant::now() + ACCEPT_BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

impl Client {
    /// `None` if the socket cannot be made non-blocking: nothing could bound it then.
    fn new(stream: TcpStream) -> Option<Client> {
        stream.set_nonblocking(true).ok()?;
        Some(Client { stream, deadline: Instant::now() + http::DEADLINE, phase: Phase::Reading(Vec::new()) })
    }

    fn pollfd(&self) -> libc::pollfd {
        let events = match self.phase {
            Phase::Reading(_) => libc::POLLIN,
            Phase::Writing { .. } => libc::POLLOUT,
        };
        pollfd(self.stream.as_raw_fd(), events)
    }

    /// Reads or writes what the socket takes now.
    fn turn(&mut self, registry: &Registry) -> Turn {
        if let Phase::Reading(received) = &mut self.phase {
            let mut buf = [0; 1024];
            match self.stream.read(&mut buf) {
                // Closed (or reset) before a whole request: nobody to answer.
                Ok(0) => return Turn::Drop,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if is_retry(&e) => return Turn::Keep,
                Err(_) => return Turn::Drop,
            }
            match http::response_to(received, registry) {
                Some(response) => self.phase = Phase::Writing { response, written: 0 },
                None => return Turn::Keep,
            }
        }
        let Phase::Writing { response, written } = &mut self.phase else { return Turn::Keep };
        while *written < response.len() {
            match self.stream.write(&response[*written..]) {
                Ok(0) => return Turn::Drop,
                Ok(n) => *written += n,
                Err(e) if is_retry(&e) => return Turn::Keep,
                Err(_) => return Turn::Drop,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        Turn::Drop
    }
}

/// Not an error: the socket has nothing (or no room) yet, or a signal interrupted the call.
fn is_retry(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}
