//! The waiting room: connections that are waiting on their client, held without occupying a worker.
//!
//! A fixed pool freezes when its workers block on clients that never send (the Rust Book's pool does, with
//! four idle clients). Here a worker that finds no request yet hands the connection to this one epoll thread,
//! which sends it back to the workers once it is readable, or closes it when its deadline passes. The same
//! thread discards a client's leftover input after the reply, so that the close does not reset the client.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    os::fd::AsRawFd,
    sync::Arc,
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, error};
use mio::{Events, Interest, Poll, Token, Waker, unix::SourceFd};

use crate::{
    conn::{self, Conn, Step},
    error::Error,
    pool::Shared,
    stats::Ending,
};

const WAKE: Token = Token(0);

/// What a connection in the waiting room waits for.
#[derive(Debug)]
pub(crate) enum Wait {
    /// Its request, until `deadline`.
    Request { conn: Conn, deadline: Instant },
    /// The end of its leftover input, until `deadline`; the reply has been sent.
    Leftovers { conn: Conn, deadline: Instant, discarded: usize },
}

impl Wait {
    pub(crate) fn who(&self) -> crate::conn::Who {
        self.conn().who()
    }

    fn conn(&self) -> &Conn {
        match self {
            Wait::Request { conn, .. } | Wait::Leftovers { conn, .. } => conn,
        }
    }

    fn deadline(&self) -> Instant {
        match self {
            Wait::Request { deadline, .. } | Wait::Leftovers { deadline, .. } => *deadline,
        }
    }
}

/// The way in: workers admit connections through it; it also wakes the room to look at the shutdown state.
#[derive(Debug)]
pub(crate) struct Door {
    inbox: Sender<Wait>,
    waker: Waker,
}

impl Door {
    /// Hands a connection to the room. The room outlives every open connection, so this fails only if its
    /// thread has stopped; the connection comes back to be closed.
    pub(crate) fn admit(&self, wait: Wait) -> Result<(), Wait> {
        self.inbox.send(wait).map_err(|refused| refused.into_inner())?;
        self.wake();
        Ok(())
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            error!("cannot wake the waiting room: {e}");
        }
    }
}

pub(crate) struct WaitingRoom {
    poll: Poll,
    inbox: Receiver<Wait>,
    jobs: Sender<Conn>,
    waiting: HashMap<Token, Wait>,
    deadlines: BinaryHeap<Reverse<(Instant, Token)>>,
    next_token: usize,
    buf: Vec<u8>,
}

impl WaitingRoom {
    /// Creates the room (not yet running) and its door. `jobs` is where readable requests go back to.
    pub(crate) fn new(jobs: Sender<Conn>) -> Result<(WaitingRoom, Door), Error> {
        let poll =
            Poll::new().map_err(|source| Error::Io { what: "create the waiting room's epoll", source })?;
        let waker = Waker::new(poll.registry(), WAKE)
            .map_err(|source| Error::Io { what: "create the waiting room's waker", source })?;
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let room = WaitingRoom {
            poll,
            inbox,
            jobs,
            waiting: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_token: 1,
            buf: vec![0; 64 * 1024],
        };
        Ok((room, Door { inbox: inbox_tx, waker }))
    }

    /// Runs until a shutdown has begun and no connection is open anywhere in the pool.
    pub(crate) fn run(mut self, shared: Arc<Shared>) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout =
                self.deadlines.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!("waiting room: epoll failed: {e}; closing {} waiting connections", self.waiting.len());
                let admitted = self.inbox.try_iter();
                for wait in self.waiting.drain().map(|(_, wait)| wait).chain(admitted) {
                    // A connection draining leftovers was served already.
                    if matches!(wait, Wait::Request { .. }) {
                        shared.stats.count(Ending::Error);
                    }
                    shared.release();
                }
                return;
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    self.readable(event.token(), &shared);
                }
            }
            while let Ok(wait) = self.inbox.try_recv() {
                self.admit(wait, &shared);
            }
            self.expire(&shared);
            if shared.is_closing() && shared.stats.open() == 0 {
                return;
            }
        }
    }

    fn admit(&mut self, wait: Wait, shared: &Shared) {
        let token = Token(self.next_token);
        self.next_token += 1;
        let fd = wait.conn().stream.as_raw_fd();
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE) {
            error!("{}: cannot wait for the client: {e}; closing", wait.conn());
            shared.stats.count(Ending::Error);
            shared.release();
            return;
        }
        self.deadlines.push(Reverse((wait.deadline(), token)));
        self.waiting.insert(token, wait);
    }

    fn readable(&mut self, token: Token, shared: &Shared) {
        let Some(wait) = self.waiting.remove(&token) else {
            return;
        };
        match wait {
            Wait::Request { conn, .. } => {
                self.forget(&conn);
                match self.jobs.try_send(conn) {
                    Ok(()) => {}
                    Err(TrySendError::Full(conn) | TrySendError::Disconnected(conn)) => {
                        match conn::turn_away(conn, shared) {
                            Step::Closed => shared.release(),
                            Step::Wait(wait) => self.admit(wait, shared),
                        }
                    }
                }
            }
            Wait::Leftovers { conn, deadline, mut discarded } => {
                if conn::discard_leftovers(&conn.stream, &mut discarded, &mut self.buf) {
                    debug!("{conn}: discarded {discarded} B of input left after the reply");
                    self.forget(&conn);
                    shared.release();
                } else {
                    self.waiting.insert(token, Wait::Leftovers { conn, deadline, discarded });
                }
            }
        }
    }

    /// Closes every connection whose deadline has passed.
    fn expire(&mut self, shared: &Shared) {
        let now = Instant::now();
        while let Some(Reverse((deadline, token))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            // Gone already when it became readable in time.
            let Some(wait) = self.waiting.remove(&token) else {
                continue;
            };
            self.forget(wait.conn());
            match wait {
                Wait::Request { conn, .. } => {
                    conn::timed_out_waiting(&conn, shared);
                    shared.stats.count(Ending::TimedOut);
                }
                Wait::Leftovers { conn, discarded, .. } => {
                    debug!("{conn}: stopped discarding leftover input after {discarded} B");
                }
            }
            shared.release();
        }
    }

    fn forget(&self, conn: &Conn) {
        let fd = conn.stream.as_raw_fd();
        // Failing to deregister only means epoll forgot it already; closing the socket removes it anyway.
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }
}
