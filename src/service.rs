//! What every connection is served with: the protocol, the replies and limits, the timeouts, the counters,
//! and whether the server is stopping.
//!
//! A reload makes a new `Service` from the new `Config` and swaps it in whole (`Current`): a worker takes the
//! current one for each message, the waiting room for each round, the accept loop for each connection, so
//! a reload applies from the next step on and nothing is ever half old, half new. The counters and the stop
//! flag are shared by every generation.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use crossbeam_utils::CachePadded;

use crate::{
    cidr::Cidr,
    config::{Config, Framing},
    framing::MAX_EDGE,
    handler::Protocol,
    limits::PerClient,
    stats::Stats,
    tls::ServerConfig,
};

/// Input discarded after a one-shot reply before the connection is closed anyway (the client may then see
/// a reset): at least this much, and twice `max_request` when that is more.
const LEFTOVER_LIMIT: usize = 4 << 20;
/// The least a worker's read buffer holds, so that one read takes many short pipelined messages.
const MIN_READ_BUFFER: usize = 16 << 10;

pub(crate) struct Service {
    pub(crate) protocol: Arc<dyn Protocol>,
    pub(crate) busy_reply: Box<[u8]>,
    pub(crate) max_request: usize,
    /// The framing of new connections (an open one keeps its own).
    pub(crate) framing: Framing,
    /// Each worker's read buffer: a raw read takes `max_request` of it; a framed one all of it, which holds
    /// at least one whole message with its edge.
    pub(crate) read_buffer: usize,
    /// Messages that may wait for a worker; past it, the busy reply.
    pub(crate) queue_limit: usize,
    pub(crate) keep_alive: bool,
    /// With `keep_alive`: an access line for each message, not only for the conversation.
    pub(crate) log_each_message: bool,
    /// Every connection starts with a PROXY protocol header.
    pub(crate) proxy_protocol: bool,
    /// The peers whose PROXY headers are believed; `None`: every peer's.
    pub(crate) proxy_from: Option<Box<[Cidr]>>,
    /// New connections are encrypted with this; `None`: plain TCP.
    pub(crate) tls: Option<Arc<ServerConfig>>,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// A conversation closes after the reply to this many messages...
    pub(crate) max_messages: u64,
    /// ...or after the first reply once it is this old.
    pub(crate) max_conversation: Duration,
    pub(crate) leftover_limit: usize,
    /// The connections open per client, with `max_per_client`.
    pub(crate) per_client: Option<Arc<PerClient>>,
    /// On cache lines of their own: every connection bumps a counter, from a worker or the waiting room,
    /// and that must not drag the read-mostly fields above between cores.
    pub(crate) stats: Arc<CachePadded<Stats>>,
    stopping: Arc<AtomicBool>,
}

impl Service {
    /// The first generation.
    pub(crate) fn new(config: &Config, protocol: Arc<dyn Protocol>) -> Service {
        let per_client = config.max_per_client.map(PerClient::new);
        Service::with(config, protocol, per_client, Arc::default(), Arc::default())
    }

    /// The next generation, after a reload: new settings, the same counters and stop flag, and the same
    /// per-client counts (with the new limit).
    pub(crate) fn next(&self, config: &Config, protocol: Arc<dyn Protocol>) -> Service {
        let per_client = config.max_per_client.map(|max| match &self.per_client {
            Some(per_client) => {
                per_client.set_max(max);
                Arc::clone(per_client)
            }
            None => PerClient::new(max),
        });
        Service::with(config, protocol, per_client, Arc::clone(&self.stats), Arc::clone(&self.stopping))
    }

    fn with(
        config: &Config,
        protocol: Arc<dyn Protocol>,
        per_client: Option<Arc<PerClient>>,
        stats: Arc<CachePadded<Stats>>,
        stopping: Arc<AtomicBool>,
    ) -> Service {
        Service {
            protocol,
            busy_reply: config.busy_reply.as_bytes().into(),
            max_request: config.max_request,
            framing: config.framing,
            read_buffer: (config.max_request + MAX_EDGE).max(MIN_READ_BUFFER),
            queue_limit: config.queue,
            keep_alive: config.keep_alive,
            log_each_message: config.log_each_message,
            proxy_protocol: config.proxy_protocol,
            proxy_from: config.proxy_from.as_deref().map(Box::from),
            tls: acceptor(config),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            idle_timeout: config.idle_timeout,
            max_messages: config.max_messages as u64,
            max_conversation: config.max_conversation,
            leftover_limit: LEFTOVER_LIMIT.max(2 * config.max_request),
            per_client,
            stats,
            stopping,
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, SeqCst);
    }
}

/// The service in force, swapped whole by a reload.
pub(crate) struct Current(ArcSwap<Service>);

impl Current {
    pub(crate) fn new(service: Service) -> Current {
        Current(ArcSwap::from_pointee(service))
    }

    /// The service in force now; cheap, and valid for as long as it is held even across a reload.
    pub(crate) fn get(&self) -> Guard<Arc<Service>> {
        self.0.load()
    }

    pub(crate) fn set(&self, service: Service) {
        self.0.store(Arc::new(service));
    }
}

/// What new connections are encrypted with, from the configuration; `None`: plain TCP.
#[cfg(feature = "tls")]
fn acceptor(config: &Config) -> Option<Arc<ServerConfig>> {
    config.tls.as_ref().map(|tls| Arc::clone(tls.server_config()))
}

/// A build without the `tls` feature has no TLS configuration.
#[cfg(not(feature = "tls"))]
fn acceptor(_: &Config) -> Option<Arc<ServerConfig>> {
    None
}
