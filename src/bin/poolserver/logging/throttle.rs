//! At most one warning or error a second from each place in the code that logs one.
//!
//! Clients can trigger warnings at will (busy turn-aways, PROXY garbage, replies they never read), so each
//! call site gets a window: the first record opens it and is logged, the rest within a second are only
//! counted. The count rides on the next record logged from there, `(812 more like this in the last 1.0s were
//! not logged)`; if none comes within `REPORT_AFTER`, a thread of its own logs the count alone, `log: 11 more
//! like this ...: ` and the record that opened the window. A sustained flood thus costs one line a second per
//! kind, and the last count is never lost.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use log::{Level, Record};

/// How long a window lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// How long after its window opened a count no record has carried is logged alone.
const REPORT_AFTER: Duration = Duration::from_secs(2);

/// A call site: the source file and line.
type Site = (&'static str, u32);

/// Whether to log a record, and the count it carries.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Log(Option<Suppressed>),
    Drop,
}

/// Records from one call site that were not logged, over how long.
#[derive(Debug, PartialEq)]
pub struct Suppressed {
    pub count: u64,
    pub over: Duration,
}

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} more like this in the last {:.1}s were not logged", self.count, self.over.as_secs_f64())
    }
}

/// What the reporter thread logs for a count that no record carried.
pub struct Report<'a> {
    pub level: Level,
    pub suppressed: Suppressed,
    /// The record that opened the window, as logged.
    pub sample: &'a str,
    /// Whether that record went to stderr only through the access log (see `router`).
    pub access: bool,
}

struct Window {
    opened: Instant,
    suppressed: u64,
    level: Level,
    sample: String,
    access: bool,
}

pub struct Throttle {
    sites: Mutex<HashMap<Site, Window>>,
    /// Wakes the reporter when a window starts counting.
    counting: Condvar,
}

impl Throttle {
    /// A throttle whose counts that no record carried go to `report`, from a thread of its own.
    pub fn start(report: impl Fn(Report<'_>) + Send + 'static) -> std::io::Result<Arc<Throttle>> {
        let throttle = Arc::new(Throttle { sites: Mutex::default(), counting: Condvar::new() });
        let reporter = Arc::clone(&throttle);
        thread::Builder::new().name("log throttle".to_owned()).spawn(move || reporter.report_late(report))?;
        Ok(throttle)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Site, Window>> {
        self.sites.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides about `record`; `access` is passed on to the report of its window.
    pub fn check(&self, record: &Record<'_>, access: bool) -> Verdict {
        let site = (record.file_static().unwrap_or(""), record.line().unwrap_or(0));
        let now = Instant::now();
        let mut sites = self.lock();
        if let Some(window) = sites.get_mut(&site)
            && now < window.opened + WINDOW
        {
            window.suppressed += 1;
            let first = window.suppressed == 1;
            drop(sites);
            if first {
                self.counting.notify_one();
            }
            return Verdict::Drop;
        }
        let sample = record.args().to_string();
        let window = Window { opened: now, suppressed: 0, level: record.level(), sample, access };
        let carried = sites.insert(site, window).and_then(|old| {
            (old.suppressed > 0).then(|| Suppressed { count: old.suppressed, over: now - old.opened })
        });
        Verdict::Log(carried)
    }

    /// Logs every count not carried yet, at once (at the stop).
    pub fn report_all(&self, report: impl Fn(Report<'_>)) {
        self.report_due(&report, None);
    }

    fn report_late(&self, report: impl Fn(Report<'_>)) {
        loop {
            let next = self.report_due(&report, Some(Instant::now()));
            let sites = self.lock();
            // A count that started meanwhile has notified while we were not waiting: look again first.
            if sites.values().any(|w| w.suppressed > 0 && next.is_none_or(|n| w.opened + REPORT_AFTER < n)) {
                continue;
            }
            // The guard the wait gives back is dropped at once: the next round locks again.
            match next {
                Some(at) => {
                    drop(self.counting.wait_timeout(sites, at.saturating_duration_since(Instant::now())))
                }
                None => drop(self.counting.wait(sites)),
            }
        }
    }

    /// Reports the counts due by `now` (all with `None`); returns when the next one falls due.
    fn report_due(&self, report: &impl Fn(Report<'_>), now: Option<Instant>) -> Option<Instant> {
        let mut due = Vec::new();
        let mut next = None::<Instant>;
        {
            let mut sites = self.lock();
            let at = now.unwrap_or_else(Instant::now);
            for window in sites.values_mut().filter(|w| w.suppressed > 0) {
                let report_at = window.opened + REPORT_AFTER;
                if now.is_none_or(|now| report_at <= now) {
                    let suppressed = Suppressed { count: window.suppressed, over: at - window.opened };
                    due.push((window.level, suppressed, window.sample.clone(), window.access));
                    window.suppressed = 0;
                } else {
                    next = Some(next.map_or(report_at, |n| n.min(report_at)));
                }
            }
        }
        for (level, suppressed, sample, access) in due {
            report(Report { level, suppressed, sample: &sample, access });
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_at(line: u32, f: impl FnOnce(&Record<'_>)) {
        f(&Record::builder()
            .level(Level::Warn)
            .args(format_args!("warning from line {line}"))
            .file_static(Some("here.rs"))
            .line(Some(line))
            .build());
    }

    #[test]
    fn one_record_a_second_per_call_site_and_the_next_carries_the_count() {
        let throttle = Throttle::start(|_| {}).unwrap();
        let check = |line| {
            let mut verdict = Verdict::Drop;
            record_at(line, |r| verdict = throttle.check(r, false));
            verdict
        };
        assert_eq!(check(1), Verdict::Log(None));
        assert_eq!(check(2), Verdict::Log(None), "another call site has its own window");
        assert_eq!(check(1), Verdict::Drop);
        assert_eq!(check(1), Verdict::Drop);
        // Age the window instead of sleeping through it.
        throttle.lock().get_mut(&("here.rs", 1)).unwrap().opened -= WINDOW;
        match check(1) {
            Verdict::Log(Some(Suppressed { count: 2, over })) => assert!(over >= WINDOW),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_count_no_record_carried_is_reported_alone() {
        let (reported, reports) = crossbeam_channel::unbounded();
        let throttle = Throttle::start(move |r: Report<'_>| {
            let _ = reported.send((r.suppressed.count, r.sample.to_owned()));
        })
        .unwrap();
        record_at(7, |r| assert_eq!(throttle.check(r, false), Verdict::Log(None)));
        record_at(7, |r| assert_eq!(throttle.check(r, false), Verdict::Drop));
        let report = reports.recv_timeout(REPORT_AFTER * 5).expect("a report");
        assert_eq!(report, (1, "warning from line 7".to_owned()));
    }
}
