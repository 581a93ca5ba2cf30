//! The fixed pool of worker threads, the queue that feeds it, and its orderly stop.
//!
//! The accept loop `dispatch`es each new connection: to the queue when its message is here, to the waiting
//! room when it is silent (a silent connection never takes a queue slot or a worker). A worker serves one
//! message and hands the connection on: closed, or back to the room. With nothing queued, a worker waits
//! in the room's epoll, so a conversation's next message wakes a worker directly, and nothing runs while
//! nothing happens. A worker woken with several ready connections keeps one and queues the rest, where an
//! idle worker (woken for them) or the next free one takes them: one slow handler holds one worker and
//! one conversation, never the others. Each worker catches panics from the handler, so a bad message
//! costs one connection, never a worker.
//!
//! What crosses threads: the queue (a crossbeam channel of connections), the room (one lock around its
//! books, and the kernel's epoll), the count of sleeping workers (`idle`), and the stop flags.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::error;

use crate::{
    conn::{self, Conn, Ready, Scratch, Step},
    error::Error,
    idle::Idle,
    room::{Found, Room},
    service::{Current, Service},
    stats::{Gauges, OpenCount, Summary},
};

/// A worker between jobs looks at the room when it has not for this long, so that waiting conversations
/// are seen even while the queue never runs dry (their messages then queue behind the others, or get the
/// busy reply).
const LOOK_EVERY: Duration = Duration::from_micros(200);
/// After a job, how long a worker may look at the queue for the next one before it sleeps, while that pays
/// (see `Spin`): waking a sleeping thread costs more than a client's whole exchange takes on loopback.
const SPIN_FOR: Duration = Duration::from_micros(100);
/// A worker whose spins found nothing still tries one after every this many jobs, to notice when they would
/// pay again.
const SPIN_PROBE_EVERY: u32 = 1024;
/// How many spins in a row may find nothing before a worker stops spinning.
const SPIN_PATIENCE: u32 = 4;
/// How many events one wait takes from the epoll at most.
const EVENTS: usize = 64;
/// How often the room's own thread looks at the room while every worker is busy (see `watch_while_busy`).
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// How often it looks whether they still are, while some worker is idle: with `WATCH_EVERY`, the longest a
/// waiting connection goes unseen when every worker is suddenly held by a slow handler.
const WATCH_IDLE_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct Pool {
    context: Arc<Context>,
    jobs: Receiver<Conn>,
    /// Each worker holds a clone and never sends; `finished` disconnects when all have ended.
    alive: Sender<()>,
    finished: Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
    workers: usize,
    next_worker_id: usize,
    /// The waiting room's own thread, and the sender whose drop ends it.
    room_thread: (thread::JoinHandle<()>, Sender<()>),
}

/// What the workers and the accept loop share.
struct Context {
    queue: Sender<Conn>,
    room: Room,
    idle: Idle,
    current: Arc<Current>,
    open: Arc<OpenCount>,
    gauges: Arc<Gauges>,
    /// Workers asked to end after their current job (the pool was made smaller).
    retiring: AtomicUsize,
    /// The accept loop has handed in its last connection: workers end once none is open.
    closed: AtomicBool,
}

impl Pool {
    /// Starts `workers` threads taking from `queue` (made by the caller, who may also watch its length).
    pub(crate) fn start(
        workers: usize,
        (queue, jobs): (Sender<Conn>, Receiver<Conn>),
        current: Arc<Current>,
        open: Arc<OpenCount>,
        gauges: Arc<Gauges>,
    ) -> Result<Pool, Error> {
        let room = Room::new().map_err(|source| Error::Io { what: "create the waiting room", source })?;
        let context = Arc::new(Context {
            queue,
            room,
            idle: Idle::default(),
            current,
            open,
            gauges,
            retiring: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let (alive, finished) = crossbeam_channel::bounded::<()>(0);
        let (end_room_thread, room_thread_ends) = crossbeam_channel::bounded::<()>(0);
        let watcher = Arc::clone(&context);
        let room_thread = thread::Builder::new()
            .name("waiting-room".to_owned())
            .spawn(move || watch_while_busy(&watcher, &room_thread_ends))
            .map_err(|source| Error::Io { what: "start the waiting room's thread", source })?;
        let mut pool = Pool {
            context,
            jobs,
            alive,
            finished,
            threads: Vec::new(),
            workers: 0,
            next_worker_id: 0,
            room_thread: (room_thread, end_room_thread),
        };
        pool.resize(workers)?;
        Ok(pool)
    }

    /// Makes the pool `workers` strong: starts new workers, or asks some to end after the job they are on
    /// (a sleeping one is woken for it). Workers that have ended are joined here.
    pub(crate) fn resize(&mut self, workers: usize) -> Result<(), Error> {
        let context = &self.context;
        while self.workers < workers {
            // A worker still asked to retire stays instead of a new one starting.
            if context.retiring.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_err() {
                let (context, jobs, alive) = (Arc::clone(context), self.jobs.clone(), self.alive.clone());
                let thread = thread::Builder::new()
                    .name(format!("worker-{}", self.next_worker_id))
                    .spawn(move || {
                        let _alive = alive;
                        work(&context, &jobs);
                    })
                    .map_err(|source| Error::Io { what: "start a worker thread", source })?;
                self.threads.push(thread);
                self.next_worker_id += 1;
            }
            self.workers += 1;
        }
        if self.workers > workers {
            context.retiring.fetch_add(self.workers - workers, SeqCst);
            self.workers = workers;
            context.room.wake_one();
        }
        let (ended, running) = self.threads.drain(..).partition(|thread| thread.is_finished());
        self.threads = running;
        for thread in ended {
            let _ = thread.join();
        }
        Ok(())
    }

    /// Sends a new connection on: to the queue when its message is here (or the busy reply, when the queue
    /// is full), to the waiting room when it is silent. TCP_DEFER_ACCEPT lets silent ones through too: SYN
    /// cookies skip it, and it lets go of a silent client after a second.
    pub(crate) fn dispatch(&self, conn: Conn, service: &Service) {
        let context = &*self.context;
        if conn.has_input() {
            context.queue_or_turn_away(conn, service);
        } else {
            context.take_step(conn::waiting_for_message(conn, service));
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        self.context.current.get().stats.summary()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.context.open.get()
    }

    /// The stop begins: conversations end after their current reply, and connections waiting for a
    /// message get a short grace to send it (answered, then closed; see `room::STOP_GRACE`).
    pub(crate) fn begin_stop(&self) {
        let context = &*self.context;
        context.current.get().begin_stop();
        context.room.begin_stop(&context.gauges);
    }

    /// After the last accept: lets every queued, in-flight and waiting connection finish, for at most
    /// `timeout`. On time, returns the summary; late, returns how many connections are being abandoned
    /// along with it.
    pub(crate) fn shutdown(self, timeout: Duration) -> Result<Summary, (usize, Summary)> {
        let Pool { context, alive, finished, threads, room_thread: (room_thread, end_room_thread), .. } =
            self;
        drop(alive);
        context.closed.store(true, SeqCst);
        context.room.wake_one();
        let stats = Arc::clone(&context.current.get().stats);
        match finished.recv_deadline(Instant::now() + timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                drop(end_room_thread);
                for thread in threads.into_iter().chain([room_thread]) {
                    let _ = thread.join();
                }
                Ok(stats.summary())
            }
            Err(RecvTimeoutError::Timeout) => Err((context.open.get(), stats.summary())),
        }
    }
}

impl Context {
    /// A connection with a message in hand goes to the queue, waking a sleeping worker for it; when the
    /// queue is full, it gets the busy reply instead.
    fn queue_or_turn_away(&self, conn: Conn, service: &Service) {
        if self.queue.len() >= service.queue_limit {
            return self.take_step(conn::turn_away(conn, service));
        }
        match self.queue.send(conn) {
            Ok(()) => {
                if self.idle.anyone_asleep() {
                    self.room.wake_one();
                }
            }
            Err(refused) => error!("{}: the queue is closed; closing", refused.into_inner()),
        }
    }

    /// Sends a connection where its step says: back to the room, or (done) nowhere, as it closes.
    fn take_step(&self, step: Step) {
        let waiting = match step {
            Step::Wait(waiting) => waiting,
            Step::Queue(conn) => return self.queue_or_turn_away(conn, &self.current.get()),
            Step::Done => return,
        };
        if let Some(conn) = self.room.hold(waiting, &self.gauges) {
            // Its client was ready already: it goes on as if its event had come.
            let service = self.current.get();
            match conn::ready(conn, &service) {
                Ready::Serve(conn) => self.queue_or_turn_away(conn, &service),
                Ready::Then(step) => self.take_step(step),
            }
        }
    }

    /// The accept loop is done and no connection is open any more: every worker ends.
    fn drained(&self) -> bool {
        self.closed.load(SeqCst) && self.open.get() == 0
    }

    /// Whether this worker is to end now: the pool is drained, or this worker takes one of the retirements
    /// asked for.
    fn time_to_end(&self) -> bool {
        self.drained() || self.retiring.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// Whether a worker about to sleep should look at the end instead (without taking a retirement).
    fn time_to_end_soon(&self) -> bool {
        self.drained() || self.retiring.load(SeqCst) > 0
    }

    /// A look at the room without waiting, by a worker between jobs or the room's thread: everything it
    /// finds goes on (messages to the queue). A wake-up it took was meant for a sleeping worker,
    /// so it passes it on.
    fn look(&self, found: &mut Found, service: &Service) {
        match self.room.wait(found, false, &self.gauges) {
            Ok(wake) => {
                self.sort(found, service, false);
                if wake && self.idle.anyone_asleep() {
                    self.room.wake_one();
                }
            }
            Err(e) => error!("waiting room: epoll failed: {e}"),
        }
    }

    /// What a look at the room found: expired connections close, ready ones go on. With `keep`, the first
    /// with a message is kept for this worker; the others are queued for whoever is free.
    fn sort(&self, found: &mut Found, service: &Service, keep: bool) -> Option<Conn> {
        for (conn, why) in found.expired.drain(..) {
            conn::expired(conn, service, why);
        }
        let mut mine = None;
        for conn in found.ready.drain(..) {
            match conn::ready(conn, service) {
                Ready::Serve(conn) if keep && mine.is_none() => mine = Some(conn),
                Ready::Serve(conn) => self.queue_or_turn_away(conn, service),
                Ready::Then(step) => self.take_step(step),
            }
        }
        mine
    }
}

/// A worker: serves connections until it is time to end (see `Context::time_to_end`). A worker that ends
/// wakes the room, so that a sleeping one wakes to see whether it is to end too.
fn work(context: &Context, jobs: &Receiver<Conn>) {
    let mut scratch = Scratch::default();
    let mut found = Found::with_capacity(EVENTS);
    let mut last_look = Instant::now();
    let mut spin = Spin::default();
    loop {
        if context.time_to_end() {
            context.room.wake_one();
            return;
        }
        let job = match jobs.try_recv() {
            Ok(conn) => Some(conn),
            Err(_) => {
                let asleep = context.idle.fall_asleep();
                if !jobs.is_empty() || context.time_to_end_soon() {
                    continue;
                }
                let looked = context.room.wait(&mut found, true, &context.gauges);
                drop(asleep);
                last_look = Instant::now();
                if let Err(e) = looked {
                    error!("waiting room: epoll failed: {e}; this worker stops");
                    return;
                }
                context.sort(&mut found, &context.current.get(), true)
            }
        };
        let Some(conn) = job else { continue };
        let service = context.current.get();
        scratch.fit(&service);
        serve(context, conn, &service, &mut scratch);
        if last_look.elapsed() >= LOOK_EVERY && context.gauges.waiting() > 0 {
            last_look = Instant::now();
            context.look(&mut found, &service);
        }
        spin.after_job(jobs);
    }
}

/// A worker's short look at the queue for the next job, before it sleeps. It spins only while spinning
/// pays: after a spin that found a job, and for `SPIN_PATIENCE` spins after it; then only once every
/// `SPIN_PROBE_EVERY` jobs. Steady one-shot clients (each connection a job the accept loop queues) keep it
/// spinning; a conversation's next message comes through the room, not the queue, so sparse conversations
/// cost no spin, and with no jobs there is nothing to spin after.
#[derive(Default)]
struct Spin {
    misses: u32,
    jobs: u32,
}

impl Spin {
    fn after_job(&mut self, jobs: &Receiver<Conn>) {
        self.jobs = self.jobs.wrapping_add(1);
        let resting = self.misses >= SPIN_PATIENCE && !self.jobs.is_multiple_of(SPIN_PROBE_EVERY);
        if resting || !jobs.is_empty() {
            return;
        }
        let until = Instant::now() + SPIN_FOR;
        let mut round = 0_u32;
        while jobs.is_empty() {
            if Instant::now() >= until {
                self.misses = self.misses.saturating_add(1);
                return;
            }
            round = round.wrapping_add(1);
            // Mostly spinning; yielding now and then, so that on a loaded machine the threads that make the
            // next job (the accept loop, the clients) run first.
            if round.is_multiple_of(8) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        self.misses = 0;
    }
}

/// Serves one message of `conn`, counted as a busy worker, and sends the connection on.
fn serve(context: &Context, conn: Conn, service: &Service, scratch: &mut Scratch) {
    let origin = conn.origin();
    let busy = context.gauges.busy();
    let served = panic::catch_unwind(AssertUnwindSafe(|| conn::serve(conn, service, scratch)));
    drop(busy);
    match served {
        Ok(step) => context.take_step(step),
        // The connection was dropped (closed, and counted as an error) as the panic unwound.
        Err(_) => error!("{origin}: the handler panicked; closed this connection, the worker goes on"),
    }
}

/// The room's own thread. Idle workers wait in the room, so while any does, this thread only looks at the
/// clock, every `WATCH_IDLE_EVERY`. When every worker is busy (each held by a handler, say), it looks at the
/// room itself every `WATCH_EVERY`: deadlines pass, replies that did not fit are finished, lingering
/// connections close, and a conversation's message goes to the queue or gets the busy reply. Ends when
/// `ends` disconnects.
fn watch_while_busy(context: &Context, ends: &Receiver<()>) {
    let mut found = Found::with_capacity(EVENTS);
    let mut every = WATCH_IDLE_EVERY;
    while let Err(RecvTimeoutError::Timeout) = ends.recv_timeout(every) {
        if context.idle.anyone_asleep() || context.gauges.waiting() == 0 {
            every = WATCH_IDLE_EVERY;
            continue;
        }
        every = WATCH_EVERY;
        context.look(&mut found, &context.current.get());
    }
}
