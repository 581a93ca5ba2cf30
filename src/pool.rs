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
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use log::error;

use crate::{
    conn::{self, Conn, Step},
    error::Error,
    service::Service,
    stats::{Ending, OpenCount, Summary},
    waiting::{Door, WaitingRoom},
};

pub(crate) struct Pool {
    queue: Sender<Conn>,
    door: Door,
    service: Arc<Service>,
    open: Arc<OpenCount>,
    /// Disconnects when every thread of the pool has ended: each holds a sender and never sends.
    finished: Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    pub(crate) fn start(
        workers: usize,
        queue_size: usize,
        service: Arc<Service>,
        open: Arc<OpenCount>,
    ) -> Result<Pool, Error> {
        let (queue, jobs) = crossbeam_channel::bounded(queue_size);
        let (room, door) = WaitingRoom::new(queue.clone(), Arc::clone(&service), Arc::clone(&open))?;
        let (alive, finished) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::with_capacity(workers + 1);
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name)
                .spawn(body)
                .map_err(|source| Error::Io { what: "start a pool thread", source })
        };

        let room_alive = alive.clone();
        threads.push(spawn(
            "waiting-room".to_owned(),
            Box::new(move || {
                let _alive = room_alive;
                room.run();
            }),
        )?);
        for id in 0..workers {
            let (jobs, door, service, alive) =
                (jobs.clone(), door.clone(), Arc::clone(&service), alive.clone());
            threads.push(spawn(
                format!("worker-{id}"),
                Box::new(move || {
                    let _alive = alive;
                    work(&jobs, &door, &service);
                }),
            )?);
        }
        Ok(Pool { queue, door, service, open, finished, threads })
    }

    /// Queues a new connection for the workers when its message is here; a silent one (TCP_DEFER_ACCEPT
    /// lets some through: SYN cookies skip it, and it lets go of a silent client after a second) goes to the
    /// waiting room and takes neither a queue slot nor a worker. So does one that finds the queue full: the
    /// room turns it away only if the queue is still full when it reads.
    pub(crate) fn dispatch(&self, conn: Conn) {
        let conn = if conn.has_input() {
            match self.queue.try_send(conn) {
                Ok(()) => return,
                Err(TrySendError::Full(conn) | TrySendError::Disconnected(conn)) => conn,
            }
        } else {
            conn
        };
        match conn::waiting_for_message(conn, &self.service) {
            Step::Wait(waiting) => self.door.admit(waiting),
            Step::Done => {}
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        self.service.stats.summary()
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Lets every queued, in-flight and waiting connection finish, for at most `timeout`. On time, returns
    /// the summary; late, returns how many connections are being abandoned along with it.
    pub(crate) fn shutdown(self, timeout: Duration) -> Result<Summary, (usize, Summary)> {
        let Pool { queue, door, service, open, finished, threads } = self;
        // Once the waiting room lets go of its sender too, the workers finish the queue and end.
        drop(queue);
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

/// The next queued connection: at once if there is one, else after looking for `STAY_AWAKE`, else after
/// sleeping until one comes. `None` once the queue is closed and empty.
fn next_job(jobs: &Receiver<Conn>) -> Option<Conn> {
    match jobs.try_recv() {
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
        match jobs.try_recv() {
            Ok(conn) => return Some(conn),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() >= until => return jobs.recv().ok(),
            Err(TryRecvError::Empty) => {}
        }
    }
}

/// A worker: serves queued connections until the queue is closed and empty.
fn work(jobs: &Receiver<Conn>, door: &Door, service: &Service) {
    let mut buf = vec![0; service.max_request];
    while let Some(conn) = next_job(jobs) {
        let who = conn.who();
        match panic::catch_unwind(AssertUnwindSafe(|| conn::serve(conn, service, &mut buf))) {
            Ok(Step::Wait(waiting)) => door.admit(waiting),
            Ok(Step::Done) => {}
            // The connection was dropped (and closed, and uncounted) as the panic unwound.
            Err(_) => {
                error!("{who}: the handler panicked; closed this connection, the worker goes on");
                service.stats.count(Ending::Error);
            }
        }
    }
}
