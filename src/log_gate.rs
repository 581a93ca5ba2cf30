//! At most one log line a second for one kind of event that a client can cause at will (a refused PROXY
//! header, a failed TLS handshake), with the count of those left unlogged since: a port scan or a flood of
//! garbage cannot flood the log, and the log still says how many there were.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How often one kind of event may be logged.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(1);

/// For one kind of event: when one was last logged, and how many were not logged since.
pub(crate) struct LogGate(Mutex<(Option<Instant>, u64)>);

impl LogGate {
    pub(crate) const fn new() -> LogGate {
        LogGate(Mutex::new((None, 0)))
    }

    /// `Some(events not logged since the last line)` when this one is to be logged, at `now`.
    pub(crate) fn due(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        if last.is_some_and(|last| now < last + LOG_EVERY) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

/// What a logged line adds for the `unlogged` events before it: nothing, or " (N more GROUP since the last
/// line)", where `group` says which events the gate counts.
pub(crate) fn since_last_line(unlogged: u64, group: &str) -> String {
    match unlogged {
        0 => String::new(),
        n => format!(" ({n} more {group} since the last line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_between() {
        let gate = LogGate::new();
        let start = Instant::now();
        assert_eq!(gate.due(start), Some(0));
        assert_eq!(gate.due(start + Duration::from_millis(10)), None);
        assert_eq!(gate.due(start + Duration::from_millis(999)), None);
        assert_eq!(gate.due(start + LOG_EVERY), Some(2));
        assert_eq!(gate.due(start + LOG_EVERY * 3), Some(0));
        assert_eq!(since_last_line(0, "of this kind"), "");
        assert_eq!(since_last_line(2, "of this kind"), " (2 more of this kind since the last line)");
    }
}
