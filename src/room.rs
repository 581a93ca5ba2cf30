//! The waiting room: every connection that is waiting on its client, held without occupying a worker.
//!
//! A fixed pool freezes when its workers block on clients (the Rust Book's pool does, with four idle
//! clients). Here nothing waits on a worker: a connection whose first or next message has not arrived, whose
//! reply did not fit the socket buffer, or whose leftover input must drain before the close is put in the
//! room (`hold`), and waits in its one epoll. Idle workers wait there too: the event for a ready connection
//! goes to one of them, which takes the connection out (`take_ready`) and carries on with it. The timer
//! rings at the earliest deadline, and the worker it wakes closes what is due (`expire`).
//!
//! What the threads share is one lock around the books (`books::Books`, which holds the connections and
//! their deadlines) and the kernel's epoll. A connection is a value that moves, so it is in exactly one
//! place: in the books, queued, or on a worker. Its descriptor is armed just before it is put in the books,
//! and readiness that comes in between is kept in the books for it, so none is lost; while it is armed and
//! not yet in the books, it is still its worker's, so no deadline can close it.

use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use log::error;
use parking_lot::Mutex;
use rustix::event::epoll::Event;

use crate::{
    books::{Books, Early, Expiry, Tag, Wait},
    conn::{Conn, Waiting},
    poller::{Interest, Poller, Ready},
    stats::Gauges,
};

/// At the stop, how long a connection waiting for its first or next message may still take to send it.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct Room {
    poller: Poller,
    books: Mutex<Books<Conn>>,
}

/// What a worker found when it looked at the room.
#[derive(Default)]
pub(crate) struct Found {
    /// Connections whose client is ready.
    pub(crate) ready: Vec<Conn>,
    /// Connections whose deadline passed, with why.
    pub(crate) expired: Vec<(Conn, Expiry)>,
    events: Vec<Event>,
    readiness: Vec<Ready>,
}

impl Found {
    pub(crate) fn with_capacity(events: usize) -> Found {
        Found { events: Vec::with_capacity(events), ..Found::default() }
    }
}

impl Room {
    pub(crate) fn new() -> io::Result<Room> {
        Ok(Room { poller: Poller::new()?, books: Mutex::new(Books::default()) })
    }

    /// Puts a connection in the room until its client is ready or its deadline passes. Returns it when its
    /// client turned out to be ready already.
    #[must_use]
    pub(crate) fn hold(&self, waiting: Waiting, gauges: &Gauges) -> Option<Conn> {
        let Waiting { mut conn, interest, deadline } = waiting;
        // Over TLS, a message may be decrypted and waiting already: no event would come for it.
        if conn.waits_for_message() && conn.has_buffered_input() {
            return Some(conn);
        }
        let tag = conn.id() as Tag;
        let wait = if interest == Interest::Readable { Wait::Input } else { Wait::Output };
        let key = conn.stream().as_raw_fd() as usize;
        // Armed before it is in the books, outside the lock: readiness that comes in between is kept in
        // the books for it (see `Books::take`).
        let (stream, registration) = conn.registration();
        if let Err(e) = self.poller.arm(stream, tag, interest, registration) {
            error!("{conn}: cannot wait for the client: {e}; closing");
            return None;
        }
        let mut books = self.books.lock();
        let held = books.hold(key, tag, conn, deadline, wait, Instant::now());
        self.after_change(&mut books, gauges);
        held.err().map(|Early { item: mut conn, hung_up }| {
            if hung_up {
                conn.hung_up();
            }
            conn
        })
    }

    /// Waits for what is ready (at most until something is, when `block`; else only a look) and takes
    /// the connections out: those whose client is ready, and, when the timer rang, those whose deadline
    /// passed. Returns whether a worker was woken.
    pub(crate) fn wait(&self, found: &mut Found, block: bool, gauges: &Gauges) -> io::Result<bool> {
        let timeout = if block { None } else { Some(Duration::ZERO) };
        self.poller.wait(&mut found.events, timeout, &mut found.readiness)?;
        if found.readiness.is_empty() {
            return Ok(false);
        }
        let mut woken = false;
        let mut books = self.books.lock();
        for &ready in &found.readiness {
            match ready {
                Ready::Conn { fd, tag, hung_up } => {
                    if let Some(mut conn) = books.take(fd as usize, tag, hung_up) {
                        if hung_up {
                            conn.hung_up();
                        }
                        found.ready.push(conn);
                    }
                }
                Ready::Wake => woken = true,
                Ready::Timer => {
                    books.timer_rang();
                    let now = Instant::now();
                    found.expired.extend(books.expire(now));
                }
            }
        }
        self.after_change(&mut books, gauges);
        Ok(woken)
    }

    /// The stop: connections waiting for a message get `STOP_GRACE` at most, from now or from when they
    /// come in.
    pub(crate) fn begin_stop(&self, gauges: &Gauges) {
        let mut books = self.books.lock();
        books.begin_stop(Instant::now(), STOP_GRACE);
        self.after_change(&mut books, gauges);
    }

    /// Wakes one waiting worker (or the next to wait).
    pub(crate) fn wake_one(&self) {
        if let Err(e) = self.poller.wake() {
            error!("cannot wake a worker: {e}");
        }
    }

    /// Publishes the count for the gauge, and moves the timer when the earliest deadline changed (under the
    /// lock, so that two changes cannot set it out of order).
    fn after_change(&self, books: &mut Books<Conn>, gauges: &Gauges) {
        gauges.set_waiting(books.len());
        if let Some(at) = books.timer_change()
            && let Err(e) = self.poller.set_timer(at)
        {
            error!("cannot set the waiting room's timer: {e}; deadlines are late");
        }
    }
}
