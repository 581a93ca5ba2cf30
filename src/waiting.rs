//! The waiting room: every connection that is waiting on its client, held without occupying a worker.
//!
//! A fixed pool freezes when its workers block on clients (the Rust Book's pool does, with four idle
//! clients). Here nothing waits on a worker: a connection whose first or next message has not arrived, whose
//! reply did not fit the socket buffer, or whose leftover input must drain before the close, waits in this
//! room's one epoll. When its client is ready, a message goes to the queue for a worker (or gets the busy
//! reply when the queue is full), and writing or draining goes on in the room; when its deadline passes, it
//! is closed. A connection is a value that moves, so it is in exactly one place: here, queued, or on a worker.
//!
//! Who looks at the epoll: a worker with nothing to do watches the room while it stays awake (`Watch`),
//! so under load a conversation's next message reaches an awake worker and no thread is woken to carry
//! it. The room's own thread keeps the deadlines, and watches the connections only while no worker is
//! about (all asleep, or all busy for a whole tick); the rest of the time it rests on its bell. Its books
//! (slots, timers) are behind a lock that nobody waits for but that thread: a worker that finds them taken
//! goes on, and hands connections back through the inbox instead.
//!
//! Each descriptor is registered once, edge-triggered (see `epoll`), so waiting again costs no system call.
//! An edge that fires while the connection is away (the client's next message arrived while the worker was
//! still writing the reply) is kept in the descriptor's slot and honoured when the connection comes back;
//! input a worker knows it left unread (a read that filled the buffer) comes flagged.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
            fence,
        },
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use log::error;
use parking_lot::{Mutex, MutexGuard};

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
/// While workers watch the connections, how often the room's thread looks whether they still do: the
/// longest a client waits to be seen when every worker has gone to serve something long.
const WATCH_TICK: Duration = Duration::from_millis(1);
/// A worker that finishes a job looks at the connections itself when no worker did for this long.
const LOOK_EVERY: Duration = Duration::from_micros(200);
/// `Room::looked_at`'s step, in nanoseconds.
const LOOK_GRAIN: u64 = 20_000;
/// `Room::looked_at` before any look, or after the last watcher went to sleep.
const NEVER: u64 = 0;
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

/// The way in, for the accept loop and the workers, and the way a worker with nothing to do watches the
/// room. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Door {
    room: Arc<Room>,
}

impl Door {
    /// Hands a connection to the room: straight in when nobody else is in the room's books at the moment,
    /// else through the inbox. The inbox is closed only if the room's thread has ended; the connection then
    /// closes as it drops.
    pub(crate) fn admit(&self, waiting: Waiting, service: &Service) {
        let room = &*self.room;
        if room.closed.load(SeqCst) {
            error!("{}: the waiting room has stopped; closing", waiting.conn);
            return;
        }
        if let Some(mut round) = room.try_round(service) {
            return round.hold(waiting);
        }
        // Rung when no event may come without the room (it must register the descriptor first, or the
        // input is here already), or when the room would sleep past this connection's deadline.
        let urgent = !waiting.conn.is_registered() || waiting.input_pending;
        let deadline = room.bell.nanos(waiting.deadline);
        let fd = waiting.conn.stream().as_raw_fd();
        if let Err(refused) = room.inbox_tx.send(waiting) {
            error!("{}: the waiting room has stopped; closing", refused.into_inner().conn);
            return;
        }
        // Ordered after the send, as the room orders its marks and its announcement before its last look
        // at the inbox: either the room sees this connection before it sleeps, or this sees the mark (an
        // edge came while the connection was away) or when the room will wake.
        fence(SeqCst);
        if urgent || room.bell.is_marked(fd) || deadline < room.bell.sleep_until.load(SeqCst) {
            room.bell.ring();
        }
    }

    /// A worker finished a job: unless a worker looked at the room lately, it looks now, so that a room
    /// full of conversations is not left unseen while a long queue keeps every worker from watching (their
    /// messages must still reach the queue, or get the busy reply).
    pub(crate) fn served(&self, service: &Service, events: &mut Vec<libc::epoll_event>) {
        let room = &*self.room;
        if room.is_empty() || room.looked_within(LOOK_EVERY) {
            return;
        }
        room.look(service, events);
    }

    /// After the accept loop admitted a connection: wakes the room's thread if it rests while no worker
    /// watches, for nobody else would see the connection's first message.
    pub(crate) fn nudge(&self) {
        let room = &*self.room;
        fence(SeqCst);
        if room.resting.load(SeqCst) && room.watchers.load(SeqCst) == 0 {
            room.bell.ring();
        }
    }

    /// Wakes the room to look at the stop.
    pub(crate) fn wake(&self) {
        self.room.bell.ring();
    }

    /// A worker with nothing to do starts watching the room (see [`Watch`]).
    pub(crate) fn watch(&self) -> Watch<'_> {
        self.room.watchers.fetch_add(1, SeqCst);
        Watch { room: &self.room, going_to_sleep: false }
    }
}

/// A worker that is awake with nothing to do looks at the room itself, so that a conversation's next
/// message reaches a worker with no thread woken in between: while workers are about, the room's thread
/// rests on its bell and timers. Dropped when the worker has a job, or (`going_to_sleep`) when it gives up
/// and sleeps: the last watcher to sleep wakes the room's thread to watch the connections again.
pub(crate) struct Watch<'a> {
    room: &'a Room,
    going_to_sleep: bool,
}

impl Watch<'_> {
    /// Takes what the room has ready, if nobody else is in its books: every message that arrived goes
    /// to the queue (where this worker finds it next), and writing or draining that can go on does. One
    /// system call, and none while the room is empty.
    pub(crate) fn look(&self, current: &Current, events: &mut Vec<libc::epoll_event>) {
        // Without touching the books while the room is empty: one-shot connections never come here.
        if !self.room.is_empty() {
            self.room.look(&current.get(), events);
        }
    }

    pub(crate) fn before_sleep(mut self) {
        self.going_to_sleep = true;
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let room = self.room;
        let last = room.watchers.fetch_sub(1, SeqCst) == 1;
        // Nobody watches now: the room's thread is to watch at once, not after its tick, if anyone waits.
        if last && self.going_to_sleep && room.resting.load(SeqCst) && !room.is_empty() {
            room.looked_at.store(NEVER, SeqCst);
            room.bell.ring();
        }
    }
}

/// What the room's thread and the workers share.
struct Room {
    /// Every waiting descriptor, and the bell.
    epoll: Epoll,
    /// The bell alone: where the room's thread sleeps while workers watch the connections.
    quiet: Epoll,
    bell: Bell,
    inbox_tx: Sender<Waiting>,
    inbox: Receiver<Waiting>,
    /// The books: whoever holds them does the room's work.
    hall: Mutex<Hall>,
    /// Workers watching the room now.
    watchers: AtomicUsize,
    /// When a worker last looked at the connections (`Bell::nanos`, in steps of `LOOK_GRAIN`): while that is
    /// recent, the workers are about, and the room's thread rests.
    looked_at: AtomicU64,
    /// The room's thread sleeps on its bell alone, leaving the connections to the workers.
    resting: AtomicBool,
    /// The room's thread has ended.
    closed: AtomicBool,
    open: Arc<OpenCount>,
    gauges: Arc<Gauges>,
}

impl Room {
    /// Nobody waits here, as far as the last holder of the books told (or in the inbox).
    fn is_empty(&self) -> bool {
        self.gauges.waiting.load(Relaxed) == 0 && self.inbox.is_empty()
    }

    /// A worker's look at the connections, if nobody else has the books: what arrived goes to the queue.
    fn look(&self, service: &Service, events: &mut Vec<libc::epoll_event>) {
        let Some(mut round) = self.try_round(service) else { return };
        // Written once a grain, so that spinning watchers do not keep a shared line moving.
        let now = self.bell.nanos(Instant::now());
        if now.saturating_sub(self.looked_at.load(Relaxed)) >= LOOK_GRAIN {
            self.looked_at.store(now, Relaxed);
        }
        // `handle` takes the inbox with what fired. A failing epoll fails the room's own thread too, which
        // reports it and closes the room.
        let _ = round.poll(events, Some(Duration::ZERO));
    }

    /// Whether a worker looked at the connections less than `span` ago.
    fn looked_within(&self, span: Duration) -> bool {
        let now = self.bell.nanos(Instant::now());
        now.saturating_sub(self.looked_at.load(Relaxed)) < span.as_nanos() as u64
    }

    /// The books, unless someone else has them (nobody waits for them but the room's own thread).
    fn try_round<'a>(&'a self, service: &'a Service) -> Option<Round<'a>> {
        let hall = self.hall.try_lock()?;
        Some(Round { room: self, hall, service, keeper: false })
    }

    fn round<'a>(&'a self, service: &'a Service) -> Round<'a> {
        Round { room: self, hall: self.hall.lock(), service, keeper: true }
    }
}

/// The room's books.
struct Hall {
    /// Where messages go for a worker; let go of when the room's thread ends, so the workers end too.
    queue: Option<Sender<Conn>>,
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

/// The room's own thread: it keeps the deadlines, and watches the connections whenever no worker does.
pub(crate) struct WaitingRoom {
    room: Arc<Room>,
    current: Arc<Current>,
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
        let epoll = Epoll::new().map_err(failed("create the waiting room's epoll"))?;
        let quiet = Epoll::new().map_err(failed("create the waiting room's epoll"))?;
        let waker = Waker::new(&[&epoll, &quiet], WAKE).map_err(failed("create the waiting room's waker"))?;
        let words = sys::descriptor_limit().div_ceil(64);
        let marked = (0..words).map(|_| AtomicU64::new(0)).collect();
        let bell = Bell { waker, sleep_until: AtomicU64::new(AWAKE), base: Instant::now(), marked };
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let hall = Hall {
            queue: Some(queue),
            count: 0,
            slots: Vec::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; 64 * 1024],
        };
        let room = Arc::new(Room {
            epoll,
            quiet,
            bell,
            inbox_tx,
            inbox,
            hall: Mutex::new(hall),
            watchers: AtomicUsize::new(0),
            looked_at: AtomicU64::new(NEVER),
            resting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            open,
            gauges,
        });
        Ok((WaitingRoom { room: Arc::clone(&room), current }, Door { room }))
    }

    /// Runs until the server is stopping and no connection is open anywhere in the pool.
    pub(crate) fn run(self) {
        let room = &*self.room;
        let _closing = Closing(room);
        let mut events = Vec::with_capacity(256);
        let mut swept = false;
        loop {
            let service = self.current.get_full();
            let mut round = room.round(&service);
            round.take_inbox();
            round.expire();
            let stopping = service.is_stopping();
            if stopping && !swept {
                round.end_idle_conversations();
                swept = true;
            }
            if stopping && room.open.get() == 0 {
                return;
            }
            let next_deadline = round.hall.timers.peek().map(|Reverse((at, ..))| *at);
            // While workers are about (watching, or looking between jobs), the connections are theirs to
            // look at, and this thread rests: it keeps the time, and takes the watch back when a tick went
            // by with no worker looking (each is serving something long) or the last watcher went to
            // sleep. Resting is announced before the workers are counted, as they count
            // themselves out before they look whether it rests (see `Watch`'s drop, `Door::nudge`).
            room.resting.store(true, SeqCst);
            let rest = !stopping && (room.watchers.load(SeqCst) > 0 || room.looked_within(WATCH_TICK));
            if !rest {
                room.resting.store(false, SeqCst);
            }
            let tick = if stopping { Some(DRAIN_TICK) } else { rest.then_some(WATCH_TICK) };
            let wake_at = match (next_deadline, tick.map(|tick| Instant::now() + tick)) {
                (Some(at), Some(tick)) => Some(at.min(tick)),
                (at, tick) => at.or(tick),
            };
            // Announce when we wake by ourselves, still holding the books (whoever holds them next and
            // sets an earlier deadline rings; see `Round::hold`), then look at the inbox one last time: a
            // connection handed in from now on sees the announcement (see `Door::admit`).
            room.bell.sleep_until.store(wake_at.map_or(FOREVER, |at| room.bell.nanos(at)), SeqCst);
            fence(SeqCst);
            if !room.inbox.is_empty() {
                room.bell.sleep_until.store(AWAKE, SeqCst);
                room.resting.store(false, SeqCst);
                continue;
            }
            let timeout = wake_at.map(|at| at.saturating_duration_since(Instant::now()));
            let waited =
                if rest { round.sleep(&mut events, timeout) } else { round.poll(&mut events, timeout) };
            room.bell.sleep_until.store(AWAKE, SeqCst);
            room.resting.store(false, SeqCst);
            if let Err(e) = waited {
                error!("waiting room: epoll failed: {e}; closing every waiting connection");
                round.hall.slots.clear();
                return;
            }
        }
    }
}

/// Closes the door when the room's thread ends, however it ends: connections handed in later are closed,
/// and the queue's sender goes, so the workers end once it is empty.
struct Closing<'a>(&'a Room);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.closed.store(true, SeqCst);
        self.0.hall.lock().queue = None;
    }
}

/// One turn at the room's work, by whoever holds its books: the room's thread or a watching worker.
struct Round<'a> {
    room: &'a Room,
    hall: MutexGuard<'a, Hall>,
    service: &'a Service,
    /// Taken by the room's own thread, the only one that answers the bell: a watcher leaves it ringing,
    /// or a wake meant for the room's thread (a new deadline, the stop) could be lost.
    keeper: bool,
}

impl Drop for Round<'_> {
    /// Publishes how many wait (for the gauge, and for watchers to tell an empty room without the books).
    fn drop(&mut self) {
        let waiting = &self.room.gauges.waiting;
        if waiting.load(Relaxed) != self.hall.count {
            waiting.store(self.hall.count, Relaxed);
        }
    }
}

impl Round<'_> {
    /// Waits on the connections for up to `timeout` (without the books, so that others may hold them
    /// meanwhile) and handles what fired.
    fn poll(&mut self, events: &mut Vec<libc::epoll_event>, timeout: Option<Duration>) -> io::Result<()> {
        let waited = if timeout == Some(Duration::ZERO) {
            self.room.epoll.wait(events, timeout)
        } else {
            MutexGuard::unlocked(&mut self.hall, || self.room.epoll.wait(events, timeout))
        };
        self.handle(events, waited)
    }

    /// The room's thread while workers watch the connections: waits on the bell alone.
    fn sleep(&mut self, events: &mut Vec<libc::epoll_event>, timeout: Option<Duration>) -> io::Result<()> {
        let waited = MutexGuard::unlocked(&mut self.hall, || self.room.quiet.wait(events, timeout));
        self.handle(events, waited)
    }

    fn handle(&mut self, events: &[libc::epoll_event], waited: io::Result<()>) -> io::Result<()> {
        match waited {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // What was handed in before its event fired is in the inbox: take it first.
        self.take_inbox();
        for readiness in events.iter().map(epoll::readiness) {
            if readiness.token == WAKE {
                if self.keeper {
                    self.room.bell.waker.reset();
                }
            } else {
                self.edge(readiness);
            }
        }
        Ok(())
    }

    /// Takes in the connections handed over through the inbox.
    fn take_inbox(&mut self) {
        while let Ok(waiting) = self.room.inbox.try_recv() {
            self.hold(waiting);
        }
    }

    /// Takes the connection waiting on `fd`, if one is.
    fn take(&mut self, fd: RawFd) -> Option<Waiting> {
        let waiting = self.hall.slots.get_mut(fd as usize)?.waiting.take()?;
        self.hall.count -= 1;
        Some(waiting)
    }

    /// An edge fired on a descriptor: the connection waiting there goes on if it was what it waited for;
    /// otherwise the edge is kept for it.
    fn edge(&mut self, readiness: Readiness) {
        let fd = readiness.token as RawFd;
        let Some(slot) = self.hall.slots.get_mut(fd as usize) else { return };
        slot.readable |= readiness.readable;
        slot.writable |= readiness.writable;
        let Some(interest) = slot.waiting.as_ref().map(|waiting| waiting.interest) else {
            // Away: whoever hands it back must ring, for no new edge may come.
            self.room.bell.mark(fd, true);
            return;
        };
        if slot.take_edge(interest)
            && let Some(waiting) = self.take(fd)
        {
            self.go_on(waiting.conn);
        }
    }

    /// The connection is ready for what it waited for.
    fn go_on(&mut self, conn: Conn) {
        let ready = conn::ready(conn, self.service, &mut self.hall.buf);
        self.route(ready);
    }

    /// Sends a connection where it goes next: a message to the queue, or the busy reply when the queue is
    /// full; a wait back into the room.
    fn route(&mut self, ready: Ready) {
        match ready {
            Ready::Serve(conn) => {
                let refused = match &self.hall.queue {
                    Some(queue) if queue.len() < self.service.queue_limit => {
                        queue.send(conn).map_err(|e| e.into_inner())
                    }
                    _ => Err(conn),
                };
                if let Err(conn) = refused {
                    let step = conn::turn_away(conn, self.service);
                    self.settle(step);
                }
            }
            Ready::Then(step) => self.settle(step),
        }
    }

    fn settle(&mut self, step: Step) {
        match step {
            Step::Wait(waiting) => self.hold(waiting),
            Step::Done => {}
        }
    }

    /// Keeps a connection until the edge it waits for, or its deadline. Registers its descriptor the first
    /// time; goes on at once when the edge fired while it was away, or its input is known to be here.
    fn hold(&mut self, mut waiting: Waiting) {
        if self.service.is_stopping() && waiting.conn.is_idle() {
            let ready = conn::stop_idle(waiting.conn, self.service);
            return self.route(ready);
        }
        let fd = waiting.conn.stream().as_raw_fd();
        let (id, deadline) = (waiting.conn.id(), waiting.deadline);
        let index = fd as usize;
        let hall = &mut *self.hall;
        if hall.slots.len() <= index {
            hall.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut hall.slots[index];
        self.room.bell.mark(fd, false);
        if slot.registered != Some(id) {
            // A new connection on this descriptor: the edges kept were the last one's.
            slot.readable = false;
            slot.writable = false;
            if let Err(e) = self.room.epoll.register(fd, fd as u64) {
                error!("{}: cannot wait for the client: {e}; closing", waiting.conn);
                return;
            }
            slot.registered = Some(id);
            waiting.conn.mark_registered();
        }
        if slot.take_edge(waiting.interest) || waiting.input_pending {
            return self.go_on(waiting.conn);
        }
        if slot.waiting.replace(waiting).is_none() {
            hall.count += 1;
        }
        if !matches!(slot.timer, Some((timer_id, at)) if timer_id == id && at <= deadline) {
            slot.timer = Some((id, deadline));
            hall.timers.push(Reverse((deadline, id, fd)));
            // Held by a worker while the room's thread sleeps: it must wake in time for this deadline.
            let bell = &self.room.bell;
            if bell.nanos(deadline) < bell.sleep_until.load(SeqCst) {
                bell.ring();
            }
        }
    }

    /// Closes every connection whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id, fd))) = self.hall.timers.peek() {
            if at > now {
                break;
            }
            let hall = &mut *self.hall;
            hall.timers.pop();
            let slot = &mut hall.slots[fd as usize];
            if slot.timer != Some((id, at)) {
                continue; // replaced by an earlier deadline, or its connection is gone
            }
            slot.timer = None;
            match &slot.waiting {
                Some(waiting) if waiting.conn.id() == id && waiting.deadline <= now => {
                    if let Some(waiting) = self.take(fd) {
                        conn::expired(waiting.conn, self.service);
                    }
                }
                // It came back with a later deadline: keep one entry, for that.
                Some(waiting) if waiting.conn.id() == id => {
                    slot.timer = Some((id, waiting.deadline));
                    hall.timers.push(Reverse((waiting.deadline, id, fd)));
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
            .hall
            .slots
            .iter_mut()
            .filter(|slot| slot.waiting.as_ref().is_some_and(|w| w.conn.is_idle()))
            .filter_map(|slot| slot.waiting.take())
            .collect();
        self.hall.count -= idle.len();
        for waiting in idle {
            let ready = conn::stop_idle(waiting.conn, self.service);
            self.route(ready);
        }
    }
}
