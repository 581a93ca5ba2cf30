//! The last accepts of a stop: the listener closes without resetting any client the kernel has answered.
//!
//! Closing a listening socket resets every handshake the kernel still holds half-open for it (SYN_RECV):
//! the client's last ACK is on its way, or, under TCP_DEFER_ACCEPT, the ACK came and the first data has
//! not. Such a client's `connect` has already succeeded, so it sees ECONNRESET. Taking in what is queued
//! is not enough, because new handshakes keep starting until the close. So the stop first makes the
//! listener ignore new handshakes (a socket filter drops SYNs: a client that connects from now on retries
//! after a second and then finds the port closed, or served by the next server), turns TCP_DEFER_ACCEPT
//! off (a bare ACK completes a handshake again), and takes in what the kernel completes until no handshake
//! on its port is half-open, for at most `HALF_OPEN_WAIT`. A silent client held by TCP_DEFER_ACCEPT
//! completes when the kernel retransmits its SYN-ACK, one second after its SYN, so a stop takes up to a
//! second longer only while such a client is there.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use log::{debug, warn};

use crate::{listener::Listener, sys};

/// The longest the stop waits for half-open handshakes: the kernel's first SYN-ACK retransmit (one second
/// after the SYN, which is when a silent client under TCP_DEFER_ACCEPT completes), and room for the ACK.
pub(crate) const HALF_OPEN_WAIT: Duration = Duration::from_millis(1250);
/// Taken in for at least this long after new handshakes are dropped: a SYN the kernel was processing on
/// another CPU as the filter went on, and a SYN-cookie handshake (which the kernel does not hold, so it
/// cannot be counted) whose ACK is one round trip away, complete within it.
const SETTLE: Duration = Duration::from_millis(10);
/// How long one wait for the next connection lasts before the half-open handshakes are counted again.
const POLL_TICK: Duration = Duration::from_millis(2);

/// Takes in the connections the kernel completes while the listener is being closed.
pub(crate) struct Closing {
    started: Instant,
    deadline: Instant,
    /// Whether new handshakes are dropped; without that, half-open ones never run out.
    sealed: bool,
    /// Whether half-open handshakes can be counted; without that, the stop waits until the deadline.
    counting: bool,
    /// None are half-open any more: what is queued now is the last.
    last_pass: bool,
}

impl Closing {
    /// Stops new handshakes on `listener` and starts taking in the rest, for at most `within`. `next` must
    /// be given the same listener.
    pub(crate) fn begin(listener: &Listener, within: Duration) -> Closing {
        let addr = listener.local_addr();
        let started = Instant::now();
        let mut closing =
            Closing { started, deadline: started + within, sealed: true, counting: true, last_pass: false };
        if let Err(e) = listener.stop_blocking() {
            warn!("cannot switch {addr} to non-blocking accepts: {e}; taking in only what is queued");
            closing.sealed = false;
            return closing;
        }
        if let Err(e) = sys::drop_new_handshakes(listener.as_fd()) {
            warn!(
                "cannot stop new handshakes on {addr}: {e}; clients connecting during the stop may be reset"
            );
            closing.sealed = false;
            return closing;
        }
        // Defer is off from now on: a bare ACK that arrives completes its handshake at once.
        if let Err(e) = sys::set_defer_accept(listener.as_fd(), 0) {
            debug!("cannot turn TCP_DEFER_ACCEPT off on {addr}: {e}");
        }
        closing
    }

    /// The next connection to take in; `None` once no handshake is half-open and the queue is empty, or the
    /// time is up. An error is the accept's.
    pub(crate) fn next(&mut self, listener: &Listener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            match listener.accept() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                accepted => return Some(accepted),
            }
            // The queue is empty.
            let now = Instant::now();
            if self.last_pass || !self.sealed || now >= self.deadline {
                return None;
            }
            if now >= self.started + SETTLE && self.counting {
                match sys::half_open(listener.local_addr()) {
                    // Every handshake that was half-open has completed into the queue: one more pass.
                    Ok(0) => {
                        self.last_pass = true;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(
                            "cannot count the half-open connections on {} (sock_diag): {e}; taking in what \
                             completes for {:?}",
                            listener.local_addr(),
                            self.deadline.saturating_duration_since(self.started)
                        );
                        self.counting = false;
                    }
                }
            }
            sys::wait_readable(listener.as_fd(), POLL_TICK.min(self.deadline - now));
        }
    }

    /// Whether a client is still queued or half-open, looked at without waiting (for a server at
    /// `max_connections`, which takes in the next only once a connection closes).
    pub(crate) fn anything_left(&self, listener: &Listener) -> bool {
        if !self.sealed || Instant::now() >= self.deadline {
            return false;
        }
        sys::is_readable(listener.as_fd())
            || !self.counting
            || sys::half_open(listener.local_addr()).is_ok_and(|n| n > 0)
    }

    /// When the taking in ends at the latest.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
}
