//! Lines formatted by hand, for the access log: it logs every connection, so its line must be cheap.
//!
//! Each thread formats into a buffer of its own, with the date and time formatted (by the `time` crate) once
//! a second and only the microseconds per line, then hands the finished line to a sink in one copy. The
//! server log, a few lines a second at most, goes through simplelog instead (see `server_log`). When stderr
//! is the journal, a line starts with its syslog priority (`<5>` for info), which journald stores as the
//! entry's priority, and carries no time of its own: the journal records one.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use log::{Level, Log, Metadata, Record};
use time::{OffsetDateTime, macros::format_description};

use super::sink::Sink;

/// How a line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `2026-11-25T09:24:05.264332Z [INFO] ` (UTC): for a terminal, a pipe or a file.
    Timestamped,
    /// `<5>`: for stderr that is the journal.
    Priority,
}

/// Formats each record as one line and hands it to a sink.
pub struct LineOut {
    pub sink: Arc<Sink<Vec<u8>>>,
    pub style: Style,
}

impl Log for LineOut {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        with_line(self.style, record.level(), *record.args(), |line| {
            self.sink.push(line.len(), 1, |batch| batch.extend_from_slice(line));
        });
    }

    fn flush(&self) {}
}

/// Formats one line in this thread's buffer and passes it to `use_line`.
pub fn with_line(style: Style, level: Level, message: fmt::Arguments<'_>, use_line: impl FnOnce(&[u8])) {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => use_line(buffer.format(style, level, message)),
        // Only if formatting a message logs another one: the inner line gets a buffer of its own.
        Err(_) => use_line(LineBuffer::default().format(style, level, message)),
    });
}

thread_local! {
    static LINE: RefCell<LineBuffer> = RefCell::new(LineBuffer::default());
}

/// One thread's line under construction, and the formatted start of the current second.
#[derive(Default)]
struct LineBuffer {
    text: String,
    second: u64,
    second_text: String,
}

impl LineBuffer {
    fn format(&mut self, style: Style, level: Level, message: fmt::Arguments<'_>) -> &[u8] {
        self.text.clear();
        match style {
            Style::Timestamped => {
                self.timestamp();
                let _ = write!(self.text, "[{level}] ");
            }
            Style::Priority => {
                let _ = write!(self.text, "<{}>", syslog_priority(level));
            }
        }
        let _ = writeln!(self.text, "{message}");
        self.text.as_bytes()
    }

    /// Appends `2026-11-25T09:24:05.264332Z ` (UTC).
    fn timestamp(&mut self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second_text.is_empty() || now.as_secs() != self.second {
            self.second = now.as_secs();
            let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            self.second_text = i64::try_from(now.as_secs())
                .ok()
                .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
                .and_then(|t| t.format(&format).ok())
                .unwrap_or_default();
        }
        self.text.push_str(&self.second_text);
        let _ = write!(self.text, ".{:06}Z ", now.subsec_micros());
    }
}

/// The syslog priority journald stores for a level: the mapping systemd-journal-logger uses for the native
/// entries, so both ways into the journal agree (info is notice, which leaves info for debug).
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 5,
        Level::Debug => 6,
        Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(style: Style, level: Level, message: fmt::Arguments<'_>) -> String {
        let mut text = String::new();
        with_line(style, level, message, |line| text = String::from_utf8_lossy(line).into_owned());
        text
    }

    #[test]
    fn a_timestamped_line_has_utc_time_with_microseconds_and_the_level() {
        let text = line(Style::Timestamped, Level::Warn, format_args!("a {}", "b"));
        let (time, rest) = text.split_once(' ').unwrap();
        assert_eq!(rest, "[WARN] a b\n");
        assert_eq!(time.len(), "2026-11-25T09:24:05.264332Z".len(), "{time}");
        assert!(time.starts_with("20") && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    }

    #[test]
    fn a_journal_line_starts_with_its_priority_and_has_no_time() {
        assert_eq!(line(Style::Priority, Level::Info, format_args!("up")), "<5>up\n");
        assert_eq!(line(Style::Priority, Level::Error, format_args!("down")), "<3>down\n");
    }
}
