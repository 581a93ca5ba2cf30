//! The waiting room: every connection that is waiting on its client, held without occupying a worker.
//!
//! A fixed pool freezes when its workers block on clients (the Rust Book's pool does, with four idle
//! clients). Here nothing waits on a worker: a connection whose first or next message has not arrived, whose
//! reply did not fit the socket buffer, or whose leftover input must drain before the close, comes to this
//! one epoll thread. When its client is ready, a message goes back to the queue for a worker (or gets the
//! busy reply when the queue is full), and writing or draining goes on here; when its deadline passes, it is
//! closed. A connection is a value that moves, so it is in exactly one place: here, queued, or on a worker.
//!
//! Each descriptor is registered once, edge-triggered (see `epoll`), so waiting again costs the worker no
//! system call: it puts the connection in the inbox and rings only when the room would not wake in time by
//! itself. An edge that fires while the connection is away (the client's next message arrived while the
//! worker was still writing the reply) is kept in the descriptor's slot and honoured when the connection
//! comes back; input a worker knows it left unread (a read that filled the buffer) comes flagged.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{
            AtomicU64,
            Ordering::{Relaxed, SeqCst},
            fence,
        },
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use log::error;

use crate::{
    conn::{self, Conn, Ready, Step, Waiting},
    epoll::{self, Epoll, Interest, Readiness, Waker},
    error::Error,
    service::{Current, Service},
    stats::{Gauges, OpenCount},
    sys,
};

/// The waker's token; connection tokens are their descriptors, which are never negative.
const WAKE: u64 = u64::MAX;
/// While stopping, how often the room looks whether every connection has closed.
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// `Bell::sleep_until` while the room is awake: nobody needs to ring.
const AWAKE: u64 = 0;
/// `Bell::sleep_until` while the room sleeps with no deadline.
const FOREVER: u64 = u64::MAX;

/// How the room is woken, and when it must be: it publishes when it will wake up by itself, and a connection
/// handed in with an earlier deadline rings the eventfd. The common hand-over (a conversation between
/// messages, whose deadline is later than others already waiting) rings nothing: its readiness event, or
/// the room's own timer, wakes the room, which then takes it from the inbox.
struct Bell {
    waker: Waker,
    /// Nanoseconds after `base` at which the sleeping room wakes by itself; `AWAKE` or `FOREVER`.
    sleep_until: AtomicU64,
    base: Instant,
    /// One bit per descriptor: an edge fired while its connection was away, so no new edge may come to wake
    /// the room when it returns. Descriptors past the end always count as marked.
    marked: Box<[AtomicU64]>,
}

impl Bell {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(FOREVER - 1)
            .max(AWAKE + 1)
    }

    fn mark(&self, fd: RawFd, on: bool) {
        if let Some(word) = self.marked.get(fd as usize / 64) {
            let bit = 1 << (fd as usize % 64);
            if on {
                word.fetch_or(bit, SeqCst);
            } else {
                word.fetch_and(!bit, SeqCst);
            }
        }
    }

    fn is_marked(&self, fd: RawFd) -> bool {
        self.marked
            .get(fd as usize / 64)
            .is_none_or(|word| word.load(SeqCst) & (1 << (fd as usize % 64)) != 0)
    }

    fn ring(&self) {
        if let Err(e) = self.waker.wake() {
            error!("cannot wake the waiting room: {e}");
        }
    }
}

/// The way in, for the accept loop and the workers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Door {
    inbox: Sender<Waiting>,
    bell: Arc<Bell>,
}

impl Door {
    /// Hands a connection to the room. The room runs as long as any connection is open, so the inbox is
    /// closed only if its thread has died; the connection then closes as it drops.
    pub(crate) fn admit(&self, waiting: Waiting) {
        // Rung when no event may come without the room (it must register the descriptor first, or the
        // input is here already), or when the room would sleep past this connection's deadline.
        let urgent = !waiting.conn.is_registered() || waiting.input_pending;
        let deadline = self.bell.nanos(waiting.deadline);
        let fd = waiting.conn.stream().as_raw_fd();
        if let Err(refused) = self.inbox.send(waiting) {
            error!("{}: the waiting room has stopped; closing", refused.into_inner().conn);
            return;
        }
        // Ordered after the send, as the room orders its marks and its announcement before its last look
        // at the inbox: either the room sees this connection before it sleeps, or this sees the mark (an
        // edge came while the connection was away) or when the room will wake.
        fence(SeqCst);
        if urgent || self.bell.is_marked(fd) || deadline < self.bell.sleep_until.load(SeqCst) {
            self.bell.ring();
        }
    }

    /// Wakes the room to look at the stop.
    pub(crate) fn wake(&self) {
        self.bell.ring();
    }
}

/// One descriptor's place in the room.
#[derive(Default)]
struct Slot {
    waiting: Option<Waiting>,
    /// The connection whose registration this descriptor carries in epoll (closing it removes it).
    registered: Option<u64>,
    /// Edges that fired and were not used yet: kept for the connection's return.
    readable: bool,
    writable: bool,
    /// The timer entry queued for this descriptor: connection and deadline.
    timer: Option<(u64, Instant)>,
}

impl Slot {
    /// Takes the edge the waiting connection waits for, if it has fired.
    fn take_edge(&mut self, interest: Interest) -> bool {
        let edge = match interest {
            Interest::Readable => &mut self.readable,
            Interest::Writable => &mut self.writable,
        };
        std::mem::take(edge)
    }
}

pub(crate) struct WaitingRoom {
    epoll: Arc<Epoll>,
    bell: Arc<Bell>,
    inbox: Receiver<Waiting>,
    queue: Sender<Conn>,
    current: Arc<Current>,
    /// The service in force, taken anew every round (a reload applies from the next round).
    service: Arc<Service>,
    open: Arc<OpenCount>,
    gauges: Arc<Gauges>,
    /// How many connections wait here now.
    count: usize,
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
        current: Arc<Current>,
        open: Arc<OpenCount>,
        gauges: Arc<Gauges>,
    ) -> Result<(WaitingRoom, Door), Error> {
        let failed = |what| move |source| Error::Io { what, source };
        let epoll = Arc::new(Epoll::new().map_err(failed("create the waiting room's epoll"))?);
        let waker = Waker::new(&epoll, WAKE).map_err(failed("create the waiting room's waker"))?;
        let words = sys::descriptor_limit().div_ceil(64);
        let marked = (0..words).map(|_| AtomicU64::new(0)).collect();
        let bell = Arc::new(Bell { waker, sleep_until: AtomicU64::new(AWAKE), base: Instant::now(), marked });
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let door = Door { inbox: inbox_tx, bell: Arc::clone(&bell) };
        let room = WaitingRoom {
            epoll,
            bell,
            inbox,
            queue,
            service: current.get_full(),
            current,
            open,
            gauges,
            count: 0,
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
            self.service = self.current.get_full();
            self.take_inbox();
            self.expire();
            let stopping = self.service.is_stopping();
            if stopping && !swept {
                self.end_idle_conversations();
                swept = true;
            }
            if stopping && self.open.get() == 0 {
                return;
            }
            self.gauges.waiting.store(self.count, Relaxed);
            let next_deadline = self.timers.peek().map(|Reverse((at, ..))| *at);
            let wake_at = if stopping {
                Some(
                    next_deadline
                        .map_or(Instant::now() + DRAIN_TICK, |at| at.min(Instant::now() + DRAIN_TICK)),
                )
            } else {
                next_deadline
            };
            // Announce when we wake by ourselves, then look at the inbox one last time: a connection handed
            // in from now on sees the announcement (see `Door::admit`).
            self.bell.sleep_until.store(wake_at.map_or(FOREVER, |at| self.bell.nanos(at)), SeqCst);
            fence(SeqCst);
            if !self.inbox.is_empty() {
                self.bell.sleep_until.store(AWAKE, SeqCst);
                continue;
            }
            let timeout = wake_at.map(|at| at.saturating_duration_since(Instant::now()));
            let waited = self.epoll.wait(&mut events, timeout);
            self.bell.sleep_until.store(AWAKE, SeqCst);
            match waited {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
                Err(e) => {
                    error!("waiting room: epoll failed: {e}; closing every waiting connection");
                    self.slots.clear();
                    return;
                }
            }
            // What was handed in before its event fired is in the inbox: take it first.
            self.take_inbox();
            for readiness in events.iter().map(epoll::readiness) {
                if readiness.token == WAKE {
                    self.bell.waker.reset();
                } else {
                    self.edge(readiness);
                }
            }
        }
    }

    /// Takes in the connections handed over by the accept loop and the workers.
    fn take_inbox(&mut self) {
        while let Ok(waiting) = self.inbox.try_recv() {
            self.hold(waiting);
        }
    }

    /// Takes the connection waiting on `fd`, if one is.
    fn take(&mut self, fd: RawFd) -> Option<Waiting> {
        let waiting = self.slots.get_mut(fd as usize)?.waiting.take()?;
        self.count -= 1;
        Some(waiting)
    }

    /// An edge fired on a descriptor: the connection waiting there goes on if it was what it waited for;
    /// otherwise the edge is kept for it.
    fn edge(&mut self, readiness: Readiness) {
        let fd = readiness.token as RawFd;
        let Some(slot) = self.slots.get_mut(fd as usize) else { return };
        slot.readable |= readiness.readable;
        slot.writable |= readiness.writable;
        let Some(interest) = slot.waiting.as_ref().map(|waiting| waiting.interest) else {
            // Away: whoever hands it back must ring, for no new edge may come.
            self.bell.mark(fd, true);
            return;
        };
        if slot.take_edge(interest)
            && let Some(waiting) = self.take(fd)
        {
            let ready = conn::ready(waiting.conn, &self.service, &mut self.buf);
            self.route(ready);
        }
    }

    /// Sends a connection where it goes next: a message to the queue, or the busy reply when the queue is
    /// full; a wait back into the room.
    fn route(&mut self, ready: Ready) {
        match ready {
            Ready::Serve(conn) => {
                let full = self.queue.len() >= self.service.queue_limit;
                let refused =
                    if full { Err(conn) } else { self.queue.send(conn).map_err(|e| e.into_inner()) };
                if let Err(conn) = refused {
                    let step = conn::turn_away(conn, &self.service);
                    self.settle(step);
                }
            }
            Ready::Then(step) => self.settle(step),
        }
    }

    fn settle(&mut self, step: Step) {
        match step {
            Step::Wait(waiting) => self.admit(waiting),
            Step::Done => {}
        }
    }

    /// Takes in a connection the room itself sends back to waiting (after writing, or a busy reply).
    fn admit(&mut self, waiting: Waiting) {
        self.hold(waiting);
    }

    /// Keeps a connection until the edge it waits for, or its deadline. Registers its descriptor the first
    /// time; goes on at once when the edge fired while it was away, or its input is known to be here.
    fn hold(&mut self, mut waiting: Waiting) {
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
        self.bell.mark(fd, false);
        if slot.registered != Some(id) {
            // A new connection on this descriptor: the edges kept were the last one's.
            slot.readable = false;
            slot.writable = false;
            if let Err(e) = self.epoll.register(fd, fd as u64) {
                error!("{}: cannot wait for the client: {e}; closing", waiting.conn);
                return;
            }
            slot.registered = Some(id);
            waiting.conn.mark_registered();
        }
        if slot.take_edge(waiting.interest) || waiting.input_pending {
            let ready = conn::ready(waiting.conn, &self.service, &mut self.buf);
            return self.route(ready);
        }
        if slot.waiting.replace(waiting).is_none() {
            self.count += 1;
        }
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
                    if let Some(waiting) = self.take(fd) {
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
        self.count -= idle.len();
        for waiting in idle {
            let ready = conn::stop_idle(waiting.conn, &self.service);
            self.route(ready);
        }
    }
}
