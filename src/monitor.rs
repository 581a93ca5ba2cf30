//! A live view of a running server for an operator: how much it has done and, above all, whether the pool
//! is big enough (busy workers, queued messages, waiting connections). Reading it costs the server nothing
//! but a few atomic loads, from any thread, while it serves.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::{
    conn::Conn,
    service::Service,
    stats::{Gauges, OpenCount, ServiceHistogram, Summary},
};

/// A handle that reads a server's numbers; cheap to clone, valid before, during and after `run`.
#[derive(Clone)]
pub struct Monitor {
    pub(crate) service: Arc<Service>,
    pub(crate) open: Arc<OpenCount>,
    pub(crate) gauges: Arc<Gauges>,
    /// The queue's receiving end, only to read its length.
    pub(crate) queue: Receiver<Conn>,
    pub(crate) workers: usize,
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
    /// The queue's capacity: past it, messages get the busy reply.
    pub queue_capacity: usize,
    /// Workers serving a message right now.
    pub busy_workers: usize,
    pub workers: usize,
    /// How long messages took, from their read to the end of their reply.
    pub service_times: ServiceHistogram,
}

impl Monitor {
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        Snapshot {
            summary: self.service.stats.summary(),
            open: self.open.get(),
            waiting: self.gauges.waiting.load(Relaxed),
            queued: self.queue.len(),
            queue_capacity: self.queue.capacity().unwrap_or(0),
            busy_workers: self.gauges.busy_workers.load(Relaxed),
            workers: self.workers,
            service_times: self.service.stats.service_times(),
        }
    }
}
