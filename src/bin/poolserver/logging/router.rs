//! Which log a record goes to: the access log or the server log, or both.
//!
//! The library logs each connection's outcome with target `access`; everything else is the server log. An
//! access record goes to the access log whatever `log_level` says (`access_log = "off"` turns it off). An
//! access record that is a warning (a busy turn-away, PROXY garbage, a reply the client never read) is
//! trouble the operator should hear of, so it also goes to the server log, throttled like every server
//! warning, except to stderr when the access log is already written there. Server records are filtered by
//! `log_level`, and warnings and errors throttled per call site.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::throttle::{Report, Throttle, Verdict};

/// The target of the access log's records.
pub const ACCESS: &str = "access";

/// The server log's outputs: stderr or the journal, and `log_file`.
pub struct ServerLog {
    pub console: Option<Box<dyn Log>>,
    pub file: Option<Box<dyn Log>>,
}

impl ServerLog {
    /// Writes `record`; not to the console when `access_on_console` (the access log already put it there).
    pub fn write(&self, record: &Record<'_>, access_on_console: bool) {
        let console = self.console.as_ref().filter(|_| !access_on_console);
        for out in console.into_iter().chain(&self.file) {
            out.log(record);
            // simplelog's lines are handed to their sink on flush.
            out.flush();
        }
    }

    /// Logs a count of suppressed records that no record carried.
    pub fn report(&self, report: Report<'_>) {
        let Report { level, suppressed, sample, access } = report;
        self.write(
            &Record::builder()
                .level(level)
                .target(module_path!())
                .args(format_args!("log: {suppressed}: {sample}"))
                .build(),
            access,
        );
    }
}

/// The target of records that an operator's action causes: never throttled.
pub const OPERATOR: &str = "operator";

pub struct Router {
    /// The server log's level, as a `LevelFilter` number; a reload may change it.
    pub level: Arc<AtomicUsize>,
    pub server: Arc<ServerLog>,
    /// The access log, unless it is off.
    pub access: Option<Box<dyn Log>>,
    /// The access log is written to stderr, as the server log is (or the journal, under systemd).
    pub access_on_console: bool,
    pub throttle: Arc<Throttle>,
}

impl Router {
    /// The most verbose level any record can reach a log at.
    pub fn max_level(&self) -> LevelFilter {
        max_level(self.level(), self.access.is_some())
    }

    fn level(&self) -> LevelFilter {
        level_from(self.level.load(Relaxed))
    }

    fn to_server(&self, record: &Record<'_>, access: bool) {
        if record.level() > self.level() {
            return;
        }
        let on_console = access && self.access_on_console;
        if on_console && self.server.file.is_none() {
            return;
        }
        // Only what clients can trigger at will needs a throttle; what an operator does (a reload) is logged
        // every time.
        if record.level() > Level::Warn || record.target() == OPERATOR {
            return self.server.write(record, on_console);
        }
        match self.throttle.check(record, on_console) {
            Verdict::Drop => {}
            Verdict::Log(None) => self.server.write(record, on_console),
            Verdict::Log(Some(suppressed)) => self.server.write(
                &Record::builder()
                    .level(record.level())
                    .target(record.target())
                    .args(format_args!("{} ({suppressed})", record.args()))
                    .file_static(record.file_static())
                    .line(record.line())
                    .module_path_static(record.module_path_static())
                    .build(),
                on_console,
            ),
        }
    }
}

impl Log for Router {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let access = metadata.target() == ACCESS && self.access.is_some();
        access || metadata.level() <= self.level()
    }

    fn log(&self, record: &Record<'_>) {
        let access = record.target() == ACCESS;
        if access {
            if let Some(out) = &self.access {
                out.log(record);
            }
            if record.level() <= Level::Warn {
                self.to_server(record, true);
            }
        } else {
            self.to_server(record, false);
        }
    }

    fn flush(&self) {}
}

/// The most verbose level a record can reach a log at: the server log's, or info when the access log is on.
pub fn max_level(level: LevelFilter, access: bool) -> LevelFilter {
    if access { level.max(LevelFilter::Info) } else { level }
}

/// A `LevelFilter` from its number (`LevelFilter as usize`).
pub fn level_from(number: usize) -> LevelFilter {
    LevelFilter::iter().find(|level| *level as usize == number).unwrap_or(LevelFilter::Info)
}
