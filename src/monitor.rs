//! A live view of a running server for an operator: how much it has done and, above all, whether the pool
//! is big enough (busy workers, queued messages, waiting connections). Reading it costs the server nothing
//! but a few atomic loads, from any thread, while it serves.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::{
    conn::Conn,
    service::Current,
    stats::{Gauges, OpenCount, ServiceHistogram, Summary},
};

/// A handle that reads a server's numbers; cheap to clone, valid before, during and after `run`.
///
/// ```
/// use std::thread;
///
/// use poolserver::{Config, Server};
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse()?;
/// config.workers = 2;
/// config.queue = 64;
/// let server = Server::bind(config)?;
/// let monitor = server.monitor();
/// let before = monitor.snapshot();
/// assert_eq!((before.workers, before.queue_capacity, before.open), (2, 64, 0));
///
/// let stop = server.shutdown_handle();
/// let running = thread::spawn(move || server.run());
/// stop.shutdown();
/// let summary = running.join().expect("the server thread")?;
/// assert_eq!(monitor.snapshot().summary, summary, "still readable after the run");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Monitor {
    pub(crate) current: Arc<Current>,
    pub(crate) open: Arc<OpenCount>,
    pub(crate) gauges: Arc<Gauges>,
    /// The queue's receiving end, only to read its length.
    pub(crate) queue: Receiver<Conn>,
}

/// The numbers at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The counters since the start.
    pub summary: Summary,
    /// Connections open: queued, on a worker, or in the waiting room.
    pub open: usize,
    /// Connections in the waiting room (waiting on their client).
    pub waiting: usize,
    /// Messages waiting for a free worker.
    pub queued: usize,
    /// How many messages may be queued: past it, messages get the busy reply.
    pub queue_capacity: usize,
    /// Workers serving a message right now.
    pub busy_workers: usize,
    /// Worker threads in the pool.
    pub workers: usize,
    /// How long messages took, from their read to the end of their reply.
    pub service_times: ServiceHistogram,
}

impl Monitor {
    /// The numbers now: a few atomic loads.
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let service = self.current.get();
        Snapshot {
            summary: service.stats.summary(),
            open: self.open.get(),
            waiting: self.gauges.waiting(),
            queued: self.queue.len(),
            queue_capacity: service.queue_limit,
            busy_workers: self.gauges.busy_workers(),
            workers: self.gauges.workers.load(Relaxed),
            service_times: service.stats.service_times(),
        }
    }
}
