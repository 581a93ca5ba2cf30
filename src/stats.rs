//! Counters shared by the accept loop, the workers and the waiting room, and the summary logged at shutdown.

use crossbeam_utils::CachePadded;
use std::{
    fmt,
    sync::atomic::{
        AtomicU64, AtomicUsize,
        Ordering::{Relaxed, SeqCst},
    },
};

/// The counters and the open-connection gauge sit on cache lines of their own: every connection touches
/// both, from the accept loop and from a worker, and they should not also drag each other between cores.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    counters: CachePadded<Counters>,
    /// Connections the pool owns right now: queued, with a worker, or in the waiting room.
    open: CachePadded<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    busy: AtomicU64,
    timed_out: AtomicU64,
    hung_up: AtomicU64,
    errors: AtomicU64,
}

/// How a connection ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The whole reply was written.
    Served,
    /// Turned away with the busy reply.
    Busy,
    /// The request or the reply did not make it in time.
    TimedOut,
    /// The client went away first (closed, reset).
    HungUp,
    /// Anything else, including a panic in the handler.
    Error,
}

impl Stats {
    pub(crate) fn count(&self, ending: Ending) {
        let c = &self.counters;
        let counter = match ending {
            Ending::Served => &c.served,
            Ending::Busy => &c.busy,
            Ending::TimedOut => &c.timed_out,
            Ending::HungUp => &c.hung_up,
            Ending::Error => &c.errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    // The gauge is SeqCst, the counters Relaxed: the waiting room decides to end the drain from `open` and
    // the shutdown flag together, and those two must be seen in one order by every thread.
    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, SeqCst);
    }

    /// Returns how many connections are still open after this one closed.
    pub(crate) fn closed(&self) -> usize {
        self.open.fetch_sub(1, SeqCst) - 1
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(SeqCst)
    }

    pub(crate) fn summary(&self) -> Summary {
        let c = &self.counters;
        Summary {
            served: c.served.load(Relaxed),
            busy: c.busy.load(Relaxed),
            timed_out: c.timed_out.load(Relaxed),
            hung_up: c.hung_up.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }
}

/// What a server did over its life, as logged when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections that got their whole reply.
    pub served: u64,
    /// Connections turned away with the busy reply.
    pub busy: u64,
    /// Connections closed because the request or the reply took too long.
    pub timed_out: u64,
    /// Connections the client closed or reset before it was served.
    pub hung_up: u64,
    /// Connections that ended in an I/O fault or a handler panic.
    pub errors: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {}, busy {}, timed out {}, hung up {}, errors {}",
            self.served, self.busy, self.timed_out, self.hung_up, self.errors
        )
    }
}
