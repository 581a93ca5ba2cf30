//! The fixed pool of worker threads behind a bounded crossbeam channel, the waiting room beside it, and
//! their orderly stop.
//!
//! The accept loop `dispatch`es each new connection to the queue; when the queue is full the connection
//! goes to the waiting room instead, which gives it the busy reply only once it has a message in hand (a
//! silent connection is never turned away for being silent). A worker serves one message and hands the
//! connection on: closed, or back to the waiting room. Each worker catches panics from the handler, so a
//! bad message costs one connection, never a worker. The stop drops the accept loop's sender; the waiting
//! room ends idle conversations and runs until every connection has closed, and the workers finish the
//! queue and end with it.

use std::{
    hint,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        atomic::{
            AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::error;

use crate::{
    conn::{self, Conn, Step},
    error::Error,
    service::{Current, Service},
    stats::{Ending, Gauges, OpenCount, Summary},
    waiting::{Door, WaitingRoom},
};

pub(crate) struct Pool {
    queue: Sender<Conn>,
    jobs: Receiver<Conn>,
    door: Door,
    current: Arc<Current>,
    open: Arc<OpenCount>,
    gauges: Arc<Gauges>,
    /// Each thread of the pool holds a clone and never sends; `finished` disconnects when all have ended.
    alive: Sender<()>,
    finished: Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Workers asked to end after their current job (the pool was made smaller).
    retiring: Arc<AtomicUsize>,
    workers: usize,
    next_worker_id: usize,
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
        let (room, door) =
            WaitingRoom::new(queue.clone(), Arc::clone(&current), Arc::clone(&open), Arc::clone(&gauges))?;
        let (alive, finished) = crossbeam_channel::bounded::<()>(0);
        let room_alive = alive.clone();
        let room = spawn(
            "waiting-room".to_owned(),
            Box::new(move || {
                let _alive = room_alive;
                room.run();
            }),
        )?;
        let mut pool = Pool {
            queue,
            jobs,
            door,
            current,
            open,
            gauges,
            alive,
            finished,
            threads: vec![room],
            retiring: Arc::default(),
            workers: 0,
            next_worker_id: 0,
        };
        pool.resize(workers)?;
        Ok(pool)
    }

    /// Makes the pool `workers` strong: starts new workers, or asks some to end after the job they are on
    /// (a sleeping one ends when it is next woken, so for a while it only waits).
    pub(crate) fn resize(&mut self, workers: usize) -> Result<(), Error> {
        while self.workers < workers {
            // A worker still asked to retire stays instead of a new one starting.
            if self.retiring.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_err() {
                let (jobs, door, current) = (self.jobs.clone(), self.door.clone(), Arc::clone(&self.current));
                let (gauges, retiring, alive) =
                    (Arc::clone(&self.gauges), Arc::clone(&self.retiring), self.alive.clone());
                self.threads.push(spawn(
                    format!("worker-{}", self.next_worker_id),
                    Box::new(move || {
                        let _alive = alive;
                        work(&jobs, &door, &current, &gauges, &retiring);
                    }),
                )?);
                self.next_worker_id += 1;
            }
            self.workers += 1;
        }
        if self.workers > workers {
            self.retiring.fetch_add(self.workers - workers, SeqCst);
            self.workers = workers;
        }
        Ok(())
    }

    /// Queues a new connection for the workers when its message is here; a silent one (TCP_DEFER_ACCEPT
    /// lets some through: SYN cookies skip it, and it lets go of a silent client after a second) goes to the
    /// waiting room and takes neither a queue slot nor a worker. So does one that finds the queue full: the
    /// room turns it away only if the queue is still full when it reads.
    pub(crate) fn dispatch(&self, conn: Conn, service: &Service) {
        let conn = if conn.has_input() && self.queue.len() < service.queue_limit {
            match self.queue.send(conn) {
                Ok(()) => return,
                Err(refused) => refused.into_inner(),
            }
        } else {
            conn
        };
        match conn::waiting_for_message(conn, service) {
            Step::Wait(waiting) => {
                self.door.admit(waiting, service);
                self.door.nudge();
            }
            Step::Done => {}
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        self.current.get().stats.summary()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Lets every queued, in-flight and waiting connection finish, for at most `timeout`. On time, returns
    /// the summary; late, returns how many connections are being abandoned along with it.
    pub(crate) fn shutdown(self, timeout: Duration) -> Result<Summary, (usize, Summary)> {
        let Pool { queue, jobs, door, current, open, alive, finished, threads, .. } = self;
        // Once the waiting room lets go of its sender too, the workers finish the queue and end.
        drop((queue, jobs, alive));
        let service = current.get_full();
        service.begin_stop();
        door.wake();
        drop(door);
        match finished.recv_deadline(Instant::now() + timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                for thread in threads {
                    let _ = thread.join();
                }
                Ok(service.stats.summary())
            }
            Err(RecvTimeoutError::Timeout) => Err((open.get(), service.stats.summary())),
        }
    }
}

/// How long an idle worker keeps looking for the next connection before it sleeps. Waking a sleeping thread
/// costs more latency than a client's whole exchange takes on loopback; a client that comes back at once
/// (or the next of a steady stream) finds a worker still awake.
const STAY_AWAKE: Duration = Duration::from_micros(100);

/// The next queued connection: at once if there is one, else after looking for `STAY_AWAKE` (watching the
/// waiting room meanwhile, so that a message that arrives there comes straight to an awake worker), else
/// after sleeping until one comes. `None` once the queue is closed and empty.
fn next_job(
    jobs: &Receiver<Conn>,
    door: &Door,
    current: &Current,
    events: &mut Vec<libc::epoll_event>,
) -> Option<Conn> {
    match jobs.try_recv() {
        Ok(conn) => return Some(conn),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    let watch = door.watch();
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
        watch.look(current, events);
        match jobs.try_recv() {
            Ok(conn) => return Some(conn),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() >= until => {
                watch.before_sleep();
                return jobs.recv().ok();
            }
            Err(TryRecvError::Empty) => {}
        }
    }
}

fn spawn(name: String, body: Box<dyn FnOnce() + Send>) -> Result<thread::JoinHandle<()>, Error> {
    thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|source| Error::Io { what: "start a pool thread", source })
}

/// A worker: serves queued connections until the queue is closed and empty, or it is asked to retire.
fn work(jobs: &Receiver<Conn>, door: &Door, current: &Current, gauges: &Gauges, retiring: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut events = Vec::with_capacity(64);
    while let Some(conn) = next_job(jobs, door, current, &mut events) {
        let service = current.get();
        // A reload may have changed max_request; the buffer follows before the next read.
        buf.resize(service.max_request, 0);
        let who = conn.who();
        gauges.busy_workers.fetch_add(1, Relaxed);
        let served = panic::catch_unwind(AssertUnwindSafe(|| conn::serve(conn, &service, &mut buf)));
        gauges.busy_workers.fetch_sub(1, Relaxed);
        door.served(&service, &mut events);
        match served {
            Ok(Step::Wait(waiting)) => door.admit(waiting, &service),
            Ok(Step::Done) => {}
            // The connection was dropped (and closed, and uncounted) as the panic unwound.
            Err(_) => {
                error!("{who}: the handler panicked; closed this connection, the worker goes on");
                service.stats.count(Ending::Error);
            }
        }
        if retiring.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return;
        }
    }
}
