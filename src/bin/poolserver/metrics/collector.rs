//! The server's numbers as Prometheus metrics: one `Monitor` snapshot per scrape, encoded by the
//! prometheus-client crate in the Prometheus text format.
//!
//! The counters live in the library (a few atomics it keeps anyway), so nothing is counted twice: a scrape
//! reads them, and between scrapes the metrics cost the server nothing.

use std::fmt;

use poolserver::{Monitor, ServiceHistogram, Snapshot};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Reads a running server for each scrape.
pub struct ServerCollector(pub Monitor);

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCollector")
    }
}

impl Collector for ServerCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_snapshot(&self.0.snapshot(), encoder)
    }
}

/// A registry that holds only the server's metrics.
pub fn registry(monitor: Monitor) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector(monitor)));
    registry
}

/// The metrics of one snapshot. Names end as Prometheus expects: `_total` for counters (added by the
/// encoder), the unit for the histogram.
fn encode_snapshot(s: &Snapshot, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
    let t = &s.summary;
    let counters: [(&str, &str, u64); 8] = [
        ("poolserver_accepted_connections", "Connections accepted.", t.connections),
        ("poolserver_messages", "Messages answered (one per connection without keep-alive).", t.messages),
        ("poolserver_served", "Connections that got every reply and ended normally.", t.served),
        (
            "poolserver_busy",
            "Connections turned away with the busy reply (every worker busy, queue full).",
            t.busy,
        ),
        (
            "poolserver_timed_out",
            "Connections closed because a message or a reply took too long.",
            t.timed_out,
        ),
        ("poolserver_hung_up", "Connections the client closed or reset before it was answered.", t.hung_up),
        (
            "poolserver_idle_closed",
            "Conversations closed after idle_timeout of silence, or idle at the stop.",
            t.idle_closed,
        ),
        (
            "poolserver_errors",
            "Connections that ended in an I/O fault, a PROXY protocol error or a handler panic.",
            t.errors,
        ),
    ];
    for (name, help, value) in counters {
        let counter = ConstCounter::new(value);
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    let gauges: [(&str, &str, usize); 6] = [
        (
            "poolserver_open_connections",
            "Connections open: queued, on a worker or in the waiting room.",
            s.open,
        ),
        (
            "poolserver_waiting_connections",
            "Connections in the waiting room, waiting on their client.",
            s.waiting,
        ),
        ("poolserver_queued_connections", "Messages waiting for a free worker.", s.queued),
        (
            "poolserver_queue_capacity",
            "Messages that may wait for a worker before clients get the busy reply.",
            s.queue_capacity,
        ),
        ("poolserver_busy_workers", "Workers serving a message right now.", s.busy_workers),
        ("poolserver_workers", "Worker threads.", s.workers),
    ];
    for (name, help, value) in gauges {
        let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
    }
    let (sum, count, buckets) = histogram(&s.service_times);
    let help = "How long messages took, from their read to the end of their reply.";
    let mut metric =
        encoder.encode_descriptor("poolserver_service_seconds", help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// Sum in seconds, count, and (upper bound in seconds, count in that bucket alone), the last bound +Inf.
fn histogram(h: &ServiceHistogram) -> (f64, u64, Vec<(f64, u64)>) {
    let bounds = ServiceHistogram::bounds().map(|b| b.as_secs_f64()).chain([f64::INFINITY]);
    let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied()).collect();
    (h.total.as_secs_f64(), h.counts.iter().sum(), buckets)
}
