//! The waiting room: every connection that is waiting on its client, held without occupying a worker.
//!
//! A fixed pool freezes when its workers block on clients (the Rust Book's pool does, with four idle
//! clients). Here nothing waits on a worker: a connection whose first or next message has not arrived, whose
//! reply did not fit the socket buffer, or whose leftover input must drain before the close, comes to this
//! one epoll thread. When its client is ready, a message goes back to the queue for a worker (or gets the
//! busy reply when the queue is full), and writing or draining goes on here; when its deadline passes, it is
//! closed. Each descriptor is armed for one event at a time (see `epoll`), so a connection is in exactly one
//! place: here, queued, or on a worker.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::error;

use crate::{
    conn::{self, Conn, Ready, Step, Waiting},
    epoll::{self, Epoll, Waker},
    error::Error,
    service::Service,
    stats::OpenCount,
};

/// The waker's token; connection tokens are their descriptors, which are never negative.
const WAKE: u64 = u64::MAX;
/// While stopping, how often the room looks whether every connection has closed.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// The way in, for the accept loop and the workers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Door {
    inbox: Sender<Waiting>,
    waker: Arc<Waker>,
}

impl Door {
    /// Hands a connection to the room. The room runs as long as any connection is open, so this fails only
    /// if its thread has died; the connection then closes as it drops.
    pub(crate) fn admit(&self, waiting: Waiting) {
        match self.inbox.send(waiting) {
            Ok(()) => self.wake(),
            Err(refused) => error!("{}: the waiting room has stopped; closing", refused.into_inner().conn),
        }
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            error!("cannot wake the waiting room: {e}");
        }
    }
}

/// One descriptor's place in the room.
#[derive(Default)]
struct Slot {
    waiting: Option<Waiting>,
    /// The connection whose registration this descriptor carries in epoll (closing it removes it).
    registered: Option<u64>,
    /// The timer entry queued for this descriptor: connection and deadline.
    timer: Option<(u64, Instant)>,
}

pub(crate) struct WaitingRoom {
    epoll: Epoll,
    waker: Arc<Waker>,
    inbox: Receiver<Waiting>,
    queue: Sender<Conn>,
    service: Arc<Service>,
    open: Arc<OpenCount>,
    /// Indexed by descriptor: dense and small, so no hashing.
    slots: Vec<Slot>,
    /// Deadlines, earliest first, at most one live entry per connection: a connection that comes back with a
    /// later deadline keeps its earlier entry, which re-queues itself when it fires (so a conversation that
    /// waits a thousand times does not leave a thousand entries behind).
    timers: BinaryHeap<Reverse<(Instant, u64, RawFd)>>,
    buf: Vec<u8>,
}

impl WaitingRoom {
    /// Creates the room (not yet running) and its door. `queue` is where readable messages go.
    pub(crate) fn new(
        queue: Sender<Conn>,
        service: Arc<Service>,
        open: Arc<OpenCount>,
    ) -> Result<(WaitingRoom, Door), Error> {
        let failed = |what| move |source| Error::Io { what, source };
        let epoll = Epoll::new().map_err(failed("create the waiting room's epoll"))?;
        let waker = Arc::new(Waker::new(&epoll, WAKE).map_err(failed("create the waiting room's waker"))?);
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let door = Door { inbox: inbox_tx, waker: Arc::clone(&waker) };
        let room = WaitingRoom {
            epoll,
            waker,
            inbox,
            queue,
            service,
            open,
            slots: Vec::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; 64 * 1024],
        };
        Ok((room, door))
    }

    /// Runs until the server is stopping and no connection is open anywhere in the pool.
    pub(crate) fn run(mut self) {
        let mut events = Vec::with_capacity(256);
        let mut swept = false;
        loop {
            let stopping = self.service.is_stopping();
            if stopping && !swept {
                self.end_idle_conversations();
                swept = true;
            }
            if stopping && self.open.get() == 0 {
                return;
            }
            let next_deadline =
                self.timers.peek().map(|Reverse((at, ..))| at.saturating_duration_since(Instant::now()));
            let timeout = if stopping {
                Some(next_deadline.map_or(DRAIN_TICK, |t| t.min(DRAIN_TICK)))
            } else {
                next_deadline
            };
            match self.epoll.wait(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
                Err(e) => {
                    error!("waiting room: epoll failed: {e}; closing every waiting connection");
                    self.slots.clear();
                    return;
                }
            }
            for token in events.iter().map(epoll::token) {
                if token == WAKE {
                    self.waker.reset();
                } else {
                    self.ready(token as RawFd);
                }
            }
            while let Ok(waiting) = self.inbox.try_recv() {
                self.admit(waiting);
            }
            self.expire();
        }
    }

    fn ready(&mut self, fd: RawFd) {
        let Some(waiting) = self.slots.get_mut(fd as usize).and_then(|slot| slot.waiting.take()) else {
            // Its connection left already (the stop sweep sent it on): nothing waits for this event.
            return;
        };
        let ready = conn::ready(waiting.conn, &self.service, &mut self.buf);
        self.route(ready);
    }

    /// Sends a connection where it goes next: a message to the queue, or the busy reply when the queue is
    /// full; a wait back into the room.
    fn route(&mut self, ready: Ready) {
        match ready {
            Ready::Serve(conn) => match self.queue.try_send(conn) {
                Ok(()) => {}
                Err(TrySendError::Full(conn) | TrySendError::Disconnected(conn)) => {
                    let step = conn::turn_away(conn, &self.service);
                    self.settle(step);
                }
            },
            Ready::Then(step) => self.settle(step),
        }
    }

    fn settle(&mut self, step: Step) {
        match step {
            Step::Wait(waiting) => self.admit(waiting),
            Step::Done => {}
        }
    }

    fn admit(&mut self, waiting: Waiting) {
        if self.service.is_stopping() && waiting.conn.is_idle() {
            let ready = conn::stop_idle(waiting.conn, &self.service);
            return self.route(ready);
        }
        let fd = waiting.conn.stream().as_raw_fd();
        let (id, deadline) = (waiting.conn.id(), waiting.deadline);
        let index = fd as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut self.slots[index];
        let armed = if slot.registered == Some(id) {
            self.epoll.rearm(fd, waiting.interest, fd as u64)
        } else {
            self.epoll.add(fd, waiting.interest, fd as u64)
        };
        if let Err(e) = armed {
            error!("{}: cannot wait for the client: {e}; closing", waiting.conn);
            return;
        }
        slot.registered = Some(id);
        slot.waiting = Some(waiting);
        if !matches!(slot.timer, Some((timer_id, at)) if timer_id == id && at <= deadline) {
            slot.timer = Some((id, deadline));
            self.timers.push(Reverse((deadline, id, fd)));
        }
    }

    /// Closes every connection whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id, fd))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[fd as usize];
            if slot.timer != Some((id, at)) {
                continue; // replaced by an earlier deadline, or its connection is gone
            }
            slot.timer = None;
            match &slot.waiting {
                Some(waiting) if waiting.conn.id() == id && waiting.deadline <= now => {
                    if let Some(waiting) = slot.waiting.take() {
                        conn::expired(waiting.conn, &self.service);
                    }
                }
                // It came back with a later deadline: keep one entry, for that.
                Some(waiting) if waiting.conn.id() == id => {
                    slot.timer = Some((id, waiting.deadline));
                    self.timers.push(Reverse((waiting.deadline, id, fd)));
                }
                // Away on a worker, or another connection now: it will bring its own deadline.
                _ => {}
            }
        }
    }

    /// At the stop: conversations waiting between messages end now (or are answered first when their next
    /// message is already here).
    fn end_idle_conversations(&mut self) {
        let idle: Vec<Waiting> = self
            .slots
            .iter_mut()
            .filter(|slot| slot.waiting.as_ref().is_some_and(|w| w.conn.is_idle()))
            .filter_map(|slot| slot.waiting.take())
            .collect();
        for waiting in idle {
            let ready = conn::stop_idle(waiting.conn, &self.service);
            self.route(ready);
        }
    }
}
