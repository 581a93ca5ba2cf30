//! What every connection is served with: the protocol, the replies and limits, the timeouts, the counters,
//! and whether the server is stopping. Built once from the `Config`; read by the workers and the waiting
//! room, never changed while the server runs except for the stop flag.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;

use crate::{config::Config, handler::Protocol, limits::PerClient, stats::Stats};

/// Input discarded after a one-shot reply before the connection is closed anyway (the client may then see
/// a reset): at least this much, and twice `max_request` when that is more.
const LEFTOVER_LIMIT: usize = 4 << 20;

pub(crate) struct Service {
    pub(crate) protocol: Box<dyn Protocol>,
    pub(crate) busy_reply: Box<[u8]>,
    pub(crate) max_request: usize,
    pub(crate) keep_alive: bool,
    /// Every connection starts with a PROXY protocol header.
    pub(crate) proxy_protocol: bool,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) leftover_limit: usize,
    /// The connections open per client, with `max_per_client`.
    pub(crate) per_client: Option<Arc<PerClient>>,
    /// On cache lines of their own: every connection bumps a counter, from a worker or the waiting room,
    /// and that must not drag the read-mostly fields above between cores.
    pub(crate) stats: CachePadded<Stats>,
    stopping: AtomicBool,
}

impl Service {
    pub(crate) fn new(config: &Config, protocol: Box<dyn Protocol>) -> Service {
        Service {
            protocol,
            busy_reply: config.busy_reply.as_bytes().into(),
            max_request: config.max_request,
            keep_alive: config.keep_alive,
            proxy_protocol: config.proxy_protocol,
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            idle_timeout: config.idle_timeout,
            leftover_limit: LEFTOVER_LIMIT.max(2 * config.max_request),
            per_client: config.max_per_client.map(PerClient::new),
            stats: CachePadded::new(Stats::default()),
            stopping: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, SeqCst);
    }
}
