//! While a destination refuses writes (a full disk, a quota, a reader gone), the operator hears of it at
//! once, then once a second for as long as writes keep failing, each time with the count of lines dropped so
//! far; and once more when it takes writes again.
//!
//! Counting the loss at the stop, or writing it into the destination once it works again, says nothing
//! while it matters. The notices go to the server log, so they reach stderr (or the journal) whichever
//! destination is failing; the writer thread of the failing destination logs them, between its writes.

use std::{
    io,
    time::{Duration, Instant},
};

/// How often a failing destination is reported.
pub const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// One destination's failure, from its first failed write to its next good one.
#[derive(Default)]
pub struct Outage {
    /// Lines dropped since writes started failing; 0 while they work.
    dropped: u64,
    /// When the last notice was logged.
    noticed: Option<Instant>,
}

impl Outage {
    /// A write to `name` failed with `error` and lost `lines`: the notice to log, when one is due.
    pub fn failed(&mut self, name: &str, lines: u64, error: &io::Error, now: Instant) -> Option<String> {
        self.dropped += lines;
        if self.noticed.is_some_and(|at| now < at + NOTICE_EVERY) {
            return None;
        }
        self.noticed = Some(now);
        Some(format!(
            "log: cannot write to the {name}: {error}; {} lines dropped so far, and more until it takes writes again",
            self.dropped
        ))
    }

    /// A write to `name` got through: the notice that it works again, if it was failing.
    pub fn recovered(&mut self, name: &str) -> Option<String> {
        if self.dropped == 0 {
            return None;
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.noticed = None;
        Some(format!("log: the {name} takes writes again; {dropped} lines were dropped while it failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_at_once_then_one_a_second_with_the_count_then_one_at_recovery() {
        let mut outage = Outage::default();
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let start = Instant::now();
        assert_eq!(outage.recovered("log file x"), None, "nothing failed yet");
        let first = outage.failed("log file x", 3, &full, start).unwrap();
        assert!(first.starts_with("log: cannot write to the log file x: No space left on device"), "{first}");
        assert!(first.contains("; 3 lines dropped so far"), "{first}");
        assert_eq!(outage.failed("log file x", 2, &full, start + Duration::from_millis(500)), None);
        let second = outage.failed("log file x", 1, &full, start + NOTICE_EVERY).unwrap();
        assert!(second.contains("; 6 lines dropped so far"), "{second}");
        assert_eq!(
            outage.recovered("log file x").as_deref(),
            Some("log: the log file x takes writes again; 6 lines were dropped while it failed")
        );
        assert_eq!(outage.recovered("log file x"), None);
    }
}
