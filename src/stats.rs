//! Counters shared by the accept loop, the workers and the waiting room; the open count and the endings,
//! kept by the connections themselves (`Tally`); and the summary logged at shutdown.

use crossbeam_utils::CachePadded;
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::Duration,
};

use crate::limits::Vacancy;

/// The counters of what happened to connections and messages. Relaxed: they are read only for reports.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    connections: AtomicU64,
    messages: AtomicU64,
    served: AtomicU64,
    busy: AtomicU64,
    timed_out: AtomicU64,
    hung_up: AtomicU64,
    idle_closed: AtomicU64,
    errors: AtomicU64,
    service_times: ServiceTimes,
}

/// Upper bounds of the buckets of the service-time histogram, in microseconds: from 50 µs, where a message
/// on loopback is answered, to 5 s, where a reply to a slow reader ends.
const SERVICE_BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];

/// How long messages took, from their read to the end of their reply, counted in buckets.
#[derive(Debug, Default)]
struct ServiceTimes {
    /// One more than the bounds: the last bucket counts everything longer.
    buckets: [AtomicU64; SERVICE_BOUNDS_US.len() + 1],
    total_us: AtomicU64,
}

impl ServiceTimes {
    fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = SERVICE_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.total_us.fetch_add(us, Relaxed);
    }

    fn histogram(&self) -> ServiceHistogram {
        let counts = self.buckets.iter().map(|bucket| bucket.load(Relaxed)).collect();
        ServiceHistogram { counts, total: Duration::from_micros(self.total_us.load(Relaxed)) }
    }
}

/// The service-time histogram: how many messages took at most each bound, from their read to the end of
/// their reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHistogram {
    /// Per bucket, not cumulative; the last counts the messages longer than every bound.
    pub counts: Vec<u64>,
    /// All the messages' times added up.
    pub total: Duration,
}

impl ServiceHistogram {
    /// The buckets' upper bounds, one fewer than `counts`.
    pub fn bounds() -> impl Iterator<Item = Duration> {
        SERVICE_BOUNDS_US.iter().map(|&us| Duration::from_micros(us))
    }
}

/// How a connection ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every reply was written and the exchange or conversation ended normally.
    Served,
    /// Turned away with the busy reply.
    Busy,
    /// A message or a reply did not make it in time.
    TimedOut,
    /// The client went away before it was answered (closed, reset).
    HungUp,
    /// A conversation was silent for `idle_timeout`, or was idle when the server stopped: closed quietly.
    IdleClosed,
    /// Anything else, including a panic in the handler.
    Error,
}

impl Stats {
    /// One more message answered, `took` from its read to the end of its reply.
    pub(crate) fn answered(&self, took: Duration) {
        self.messages.fetch_add(1, Relaxed);
        self.service_times.record(took);
    }

    fn count(&self, ending: Ending) {
        let counter = match ending {
            Ending::Served => &self.served,
            Ending::Busy => &self.busy,
            Ending::TimedOut => &self.timed_out,
            Ending::HungUp => &self.hung_up,
            Ending::IdleClosed => &self.idle_closed,
            Ending::Error => &self.errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn service_times(&self) -> ServiceHistogram {
        self.service_times.histogram()
    }

    pub(crate) fn summary(&self) -> Summary {
        Summary {
            connections: self.connections.load(Relaxed),
            messages: self.messages.load(Relaxed),
            served: self.served.load(Relaxed),
            busy: self.busy.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            hung_up: self.hung_up.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// How many connections are open: queued, on a worker, or in the waiting room. Each connection holds a
/// [`Tally`] that counts it while it lives, so no path can forget or double a release.
#[derive(Debug, Default)]
pub(crate) struct OpenCount {
    count: CachePadded<AtomicUsize>,
    /// Wakes the accept loop waiting at `max_connections` when a connection closes.
    vacancy: Vacancy,
}

impl OpenCount {
    // SeqCst: the drain ends when the stop flag is set and this count is zero, and every thread must see
    // those two in one order.
    pub(crate) fn get(&self) -> usize {
        self.count.load(SeqCst)
    }

    /// Waits until fewer than `max` connections are open, for at most `timeout`; returns whether they are.
    pub(crate) fn wait_below(&self, max: usize, timeout: Duration) -> bool {
        self.vacancy.wait(|| self.get() < max, timeout)
    }
}

/// What the pool is doing right now, for a monitor: each written by the one place that knows it.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Workers serving a message (counted by `Busy` guards).
    busy_workers: CachePadded<AtomicUsize>,
    /// Connections in the waiting room (written by the room, under its lock).
    waiting: CachePadded<AtomicUsize>,
    /// The pool's size (written at the start and by a reload).
    pub(crate) workers: AtomicUsize,
}

impl Gauges {
    /// Counts a worker busy until the guard drops (however the job ends, a panic included).
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.busy_workers.fetch_add(1, Relaxed);
        Busy(self)
    }

    pub(crate) fn busy_workers(&self) -> usize {
        self.busy_workers.load(Relaxed)
    }

    pub(crate) fn set_waiting(&self, waiting: usize) {
        if self.waiting.load(Relaxed) != waiting {
            self.waiting.store(waiting, Relaxed);
        }
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

/// One worker counted busy.
pub(crate) struct Busy<'a>(&'a Gauges);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_workers.fetch_sub(1, Relaxed);
    }
}

/// One connection's place in the counts, carried by the connection: counted open from its accept, and
/// counted under how it ended when it is dropped, wherever that happens. So no path can leave a
/// connection uncounted or count it twice, and once the open count is zero the endings add up to the
/// connections accepted. A connection dropped before anything said how it ended (a panic in the handler,
/// a failure of the waiting room) counts as an error.
#[derive(Debug)]
pub(crate) struct Tally {
    open: Arc<OpenCount>,
    stats: Arc<CachePadded<Stats>>,
    ending: Ending,
}

impl Tally {
    pub(crate) fn new(open: &Arc<OpenCount>, stats: &Arc<CachePadded<Stats>>) -> Tally {
        stats.connections.fetch_add(1, Relaxed);
        open.count.fetch_add(1, SeqCst);
        Tally { open: Arc::clone(open), stats: Arc::clone(stats), ending: Ending::Error }
    }

    /// How the connection ended (the last word counts).
    pub(crate) fn end(&mut self, ending: Ending) {
        self.ending = ending;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // The ending first, so that a summary taken once nothing is open is complete.
        self.stats.count(self.ending);
        self.open.count.fetch_sub(1, SeqCst);
        self.open.vacancy.notify();
    }
}

/// What a server did over its life, as logged when it stops: [`Server::run`](crate::Server::run) returns
/// it, and a [`Monitor`](crate::Monitor) reads it while the server runs.
///
/// ```
/// use std::{io::{Read, Write}, net::TcpStream, thread, time::Duration};
///
/// use poolserver::{Config, Server};
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse()?;
/// let server = Server::bind(config)?;
/// let (addr, stop) = (server.local_addr(), server.shutdown_handle());
/// let running = thread::spawn(move || server.run());
/// for _ in 0..2 {
///     let mut client = TcpStream::connect(addr)?;
///     client.set_read_timeout(Some(Duration::from_secs(10)))?;
///     client.write_all(b"hello")?;
///     client.read_to_end(&mut Vec::new())?;
/// }
/// stop.shutdown();
/// let summary = running.join().expect("the server thread")?;
/// assert_eq!((summary.connections, summary.messages, summary.served, summary.errors), (2, 2, 2, 0));
/// assert!(summary.to_string().starts_with("served 2, busy 0"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Connections accepted.
    pub connections: u64,
    /// Messages answered (one per connection without keep-alive).
    pub messages: u64,
    /// Connections that got every reply and ended normally.
    pub served: u64,
    /// Connections turned away with the busy reply.
    pub busy: u64,
    /// Connections closed because a message or a reply took too long.
    pub timed_out: u64,
    /// Connections the client closed or reset before it was answered.
    pub hung_up: u64,
    /// Conversations closed quietly after `idle_timeout` of silence, or idle when the server stopped.
    pub idle_closed: u64,
    /// Connections that ended in an I/O fault or a handler panic.
    pub errors: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {}, busy {}, timed out {}, hung up {}, idle closed {}, errors {} ({} connections, {} messages)",
            self.served,
            self.busy,
            self.timed_out,
            self.hung_up,
            self.idle_closed,
            self.errors,
            self.connections,
            self.messages
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_counted_open_until_it_drops_and_then_under_its_ending() {
        let (open, stats) = (Arc::new(OpenCount::default()), Arc::new(CachePadded::new(Stats::default())));
        let (mut served, unsaid) = (Tally::new(&open, &stats), Tally::new(&open, &stats));
        served.end(Ending::Busy);
        served.end(Ending::Served);
        assert_eq!(open.get(), 2);
        assert_eq!(stats.summary(), Summary { connections: 2, ..Summary::default() });
        drop(served);
        assert_eq!(open.get(), 1);
        drop(unsaid);
        assert_eq!(open.get(), 0);
        let summary = stats.summary();
        assert_eq!((summary.served, summary.errors, summary.connections), (1, 1, 2));
    }
}
