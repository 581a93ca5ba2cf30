//! The fixed pool of worker threads behind a bounded crossbeam channel, and its orderly shutdown.
//!
//! The accept loop `dispatch`es each connection; when the queue is full the client gets the busy reply at
//! once. Each worker catches panics from the handler, so a bad request costs one connection, never a worker.
//! Shutdown drops the accept loop's sender; the workers drain the queue, the waiting room keeps serving its
//! connections until every one is closed, and `shutdown` waits for all threads up to a deadline.

use std::{
    hint,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use log::error;

use crate::{
    config::Config,
    conn::{self, Conn, Step},
    error::Error,
    handler::Handler,
    stats::{Ending, Stats},
    waiting::{Door, WaitingRoom},
};

/// What every thread of the pool reads and counts.
pub(crate) struct Shared {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) busy_reply: Vec<u8>,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// How long the listener keeps a silent client in the kernel before handing it over (TCP_DEFER_ACCEPT).
    pub(crate) held_back: Option<Duration>,
    pub(crate) stats: Stats,
    closing: AtomicBool,
    door: Door,
}

impl Shared {
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(SeqCst)
    }

    /// Takes a connection where its step leads: closed, or into the waiting room.
    pub(crate) fn settle(&self, step: Step) {
        match step {
            Step::Closed => self.release(),
            Step::Wait(wait) => {
                if let Err(wait) = self.door.admit(wait) {
                    error!("{}: the waiting room has stopped; closing", wait.who());
                    self.stats.count(Ending::Error);
                    self.release();
                }
            }
        }
    }

    /// Marks one connection closed; the last one closed during a shutdown lets the waiting room finish.
    pub(crate) fn release(&self) {
        if self.stats.closed() == 0 && self.is_closing() {
            self.door.wake();
        }
    }
}

pub(crate) struct Pool {
    jobs: Sender<Conn>,
    shared: Arc<Shared>,
    /// Disconnects when every thread of the pool has ended: each holds a sender and never sends.
    finished: Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    pub(crate) fn start(
        config: &Config,
        handler: Arc<dyn Handler>,
        held_back: Option<Duration>,
    ) -> Result<Pool, Error> {
        let (jobs, queue) = crossbeam_channel::bounded(config.queue);
        let (room, door) = WaitingRoom::new(jobs.clone())?;
        let shared = Arc::new(Shared {
            handler,
            busy_reply: config.busy_reply.as_bytes().to_vec(),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            held_back,
            stats: Stats::default(),
            closing: AtomicBool::new(false),
            door,
        });
        let (alive, finished) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::with_capacity(config.workers + 1);
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name)
                .spawn(body)
                .map_err(|source| Error::Io { what: "start a pool thread", source })
        };

        let (room_shared, room_alive) = (Arc::clone(&shared), alive.clone());
        threads.push(spawn(
            "waiting-room".to_owned(),
            Box::new(move || {
                let _alive = room_alive;
                room.run(room_shared);
            }),
        )?);
        for id in 0..config.workers {
            let (queue, shared, alive) = (queue.clone(), Arc::clone(&shared), alive.clone());
            let max_request = config.max_request;
            threads.push(spawn(
                format!("worker-{id}"),
                Box::new(move || {
                    let _alive = alive;
                    work(&queue, &shared, max_request);
                }),
            )?);
        }
        Ok(Pool { jobs, shared, finished, threads })
    }

    /// Queues a connection for the workers, or turns it away with the busy reply when the queue is full.
    pub(crate) fn dispatch(&self, conn: Conn) {
        // Counted before it is queued, so that a worker can never close it before it is counted.
        self.shared.stats.opened();
        if let Err(TrySendError::Full(conn) | TrySendError::Disconnected(conn)) = self.jobs.try_send(conn) {
            self.shared.settle(conn::turn_away(conn, &self.shared));
        }
    }

    pub(crate) fn summary(&self) -> crate::Summary {
        self.shared.stats.summary()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.shared.stats.open()
    }

    /// Lets every queued, in-flight and waiting connection finish, for at most `timeout`. On time, returns
    /// the summary; late, returns how many connections are being abandoned along with it.
    pub(crate) fn shutdown(self, timeout: Duration) -> Result<crate::Summary, (usize, crate::Summary)> {
        let Pool { jobs, shared, finished, threads } = self;
        // Once the waiting room lets go of its sender too, the workers finish the queue and end.
        drop(jobs);
        shared.closing.store(true, SeqCst);
        shared.door.wake();
        match finished.recv_deadline(Instant::now() + timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                for thread in threads {
                    let _ = thread.join();
                }
                Ok(shared.stats.summary())
            }
            Err(RecvTimeoutError::Timeout) => Err((shared.stats.open(), shared.stats.summary())),
        }
    }
}

/// How long an idle worker keeps looking for the next connection before it sleeps. Waking a sleeping thread
/// costs more latency than a client's whole exchange takes on loopback; a client that comes back at once
/// (or the next of a steady stream) finds a worker still awake.
const STAY_AWAKE: Duration = Duration::from_micros(100);

/// The next queued connection: at once if there is one, else after looking for `STAY_AWAKE`, else after
/// sleeping until one comes. `None` once the queue is closed and empty.
fn next_job(queue: &Receiver<Conn>) -> Option<Conn> {
    match queue.try_recv() {
        Ok(conn) => return Some(conn),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    let until = Instant::now() + STAY_AWAKE;
    let mut round = 0_u32;
    loop {
        round = round.wrapping_add(1);
        // Mostly spinning, which notices a new connection soonest; yielding now and then, so that on a
        // loaded machine the threads that make the next connection (our accept loop, the clients) run first.
        if round.is_multiple_of(8) {
            thread::yield_now();
        } else {
            for _ in 0..32 {
                hint::spin_loop();
            }
        }
        match queue.try_recv() {
            Ok(conn) => return Some(conn),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() >= until => return queue.recv().ok(),
            Err(TryRecvError::Empty) => {}
        }
    }
}

/// A worker: serves queued connections until the queue is closed and empty.
fn work(queue: &Receiver<Conn>, shared: &Shared, max_request: usize) {
    let mut buf = vec![0; max_request];
    while let Some(conn) = next_job(queue) {
        let who = conn.who();
        match panic::catch_unwind(AssertUnwindSafe(|| conn::serve(conn, shared, &mut buf))) {
            Ok(step) => shared.settle(step),
            Err(_) => {
                error!("{who}: the handler panicked; closed this connection, the worker goes on");
                shared.stats.count(Ending::Error);
                shared.release();
            }
        }
    }
}
