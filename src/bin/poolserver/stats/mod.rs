//! `poolserver stats`: a running server's numbers on one screen for a person, from its `--metrics` port,
//! without Prometheus or Grafana.
//!
//! Two scrapes `--interval` apart give the rates; the service-time histogram's buckets give the latency
//! percentiles over that interval (interpolated within a bucket, as Prometheus's `histogram_quantile`
//! does). `--watch` keeps scraping and redraws the screen.

pub mod scrape;

use std::{fmt::Write, io::IsTerminal, thread, time::Duration};

use scrape::{Scrape, scrape};

use crate::cli::StatsArgs;

const HISTOGRAM: &str = "poolserver_service_seconds";

/// Shows the screen once, or with `--watch` forever; `Err` is one line saying what failed.
pub fn run(args: &StatsArgs) -> Result<(), String> {
    let mut before = scrape(args.metrics, args.timeout)?;
    let clear = args.watch && std::io::stdout().is_terminal();
    loop {
        thread::sleep(args.interval);
        let now = scrape(args.metrics, args.timeout)?;
        let screen = render(args, &before, &now)?;
        if clear {
            // Home and clear: the next screen replaces this one.
            print!("\x1b[H\x1b[2J");
        }
        print!("{screen}");
        if !args.watch {
            return Ok(());
        }
        println!();
        before = now;
    }
}

/// The screen for two scrapes.
fn render(args: &StatsArgs, before: &Scrape, now: &Scrape) -> Result<String, String> {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let total = |name: &str| now.get(name);
    let rate = |name: &str| Ok::<f64, String>((now.get(name)? - before.get(name)?).max(0.0) / secs);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "poolserver at {} (rates over the last {secs:.1} s)", args.metrics);
    for (label, name) in [
        ("connections", "poolserver_accepted_connections_total"),
        ("messages", "poolserver_messages_total"),
        ("busy replies", "poolserver_busy_total"),
    ] {
        let _ = writeln!(w, "{label:<13}{:>10.1}/s  {:>12} since start", rate(name)?, total(name)? as u64);
    }
    let mut endings = Vec::new();
    for (label, name) in [
        ("served", "poolserver_served_total"),
        ("timed out", "poolserver_timed_out_total"),
        ("hung up", "poolserver_hung_up_total"),
        ("idle closed", "poolserver_idle_closed_total"),
        ("errors", "poolserver_errors_total"),
    ] {
        endings.push(format!("{label} {:.1}/s", rate(name)?));
    }
    let _ = writeln!(w, "{:<13}{}", "endings", endings.join(", "));
    let gauge = |name: &str| now.get(name).map(|v| v as u64);
    let _ = writeln!(
        w,
        "{:<13}{} of {} busy",
        "workers",
        gauge("poolserver_busy_workers")?,
        gauge("poolserver_workers")?
    );
    let _ = writeln!(
        w,
        "{:<13}{} of {} places taken",
        "queue",
        gauge("poolserver_queued_connections")?,
        gauge("poolserver_queue_capacity")?
    );
    let _ = writeln!(
        w,
        "{:<13}{} connections, {} of them waiting on their client",
        "open",
        gauge("poolserver_open_connections")?,
        gauge("poolserver_waiting_connections")?
    );
    let _ = writeln!(w, "{:<13}{}", "latency", latency(before, now));
    Ok(out)
}

/// The percentiles of the messages answered between the scrapes, or since the start when there were none.
fn latency(before: &Scrape, now: &Scrape) -> String {
    let (then, current) = (before.buckets(HISTOGRAM), now.buckets(HISTOGRAM));
    let delta: Vec<(f64, f64)> = if then.len() == current.len() {
        current.iter().zip(&then).map(|(&(bound, n), &(_, m))| (bound, (n - m).max(0.0))).collect()
    } else {
        Vec::new()
    };
    let (buckets, when) = match delta.last() {
        Some(&(_, n)) if n > 0.0 => (delta, "over the interval"),
        _ => match current.last() {
            Some(&(_, n)) if n > 0.0 => (current, "since start: no message in the interval"),
            _ => return "no message answered yet".to_owned(),
        },
    };
    let shown: Vec<String> = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        .iter()
        .map(|&(name, q)| format!("{name} {}", quantile(&buckets, q)))
        .collect();
    format!("{}  ({when}, from the histogram's buckets)", shown.join("  "))
}

/// The `q` quantile of cumulative buckets, as text; linear within the bucket it falls in.
fn quantile(buckets: &[(f64, f64)], q: f64) -> String {
    let Some(&(_, count)) = buckets.last() else { return "-".to_owned() };
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                return format!("> {}", seconds(lower.0));
            }
            let within = if cumulative > lower.1 { (rank - lower.1) / (cumulative - lower.1) } else { 1.0 };
            return seconds(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, cumulative);
    }
    "-".to_owned()
}

fn seconds(s: f64) -> String {
    let d = Duration::from_secs_f64(s.max(0.0));
    if d < Duration::from_millis(1) {
        format!("{:.0}µs", s * 1e6)
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.0001, 50.0), (0.001, 90.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 0.5), "100µs");
        assert_eq!(quantile(&buckets, 0.7), "550µs");
        assert_eq!(quantile(&buckets, 0.99), "> 1.0ms");
        assert_eq!(quantile(&[], 0.5), "-");
    }
}
