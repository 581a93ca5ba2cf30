//! The two logs of `poolserver serve`, as nginx has `error_log` and `access_log`, set up so that logging
//! never stops the server.
//!
//! - The **server log**: lifecycle, warnings and errors at `log_level`, to stderr (coloured on a terminal;
//!   native journal entries under systemd) and to `log_file`.
//! - The **access log**: the library's records with target `access`, one per connection (and one per
//!   message with `log_each_message`), to stderr, a file, or nowhere (`access_log`).
//!
//! Every destination is a sink: a bounded buffer drained by a writer thread of its own, so a destination
//! that stalls loses lines (counted and reported) instead of stopping workers or the accept loop. Warnings
//! are throttled per call site. SIGUSR1 reopens the files (`Logs::reopen`), and `Logs::finish` writes what
//! is buffered before the process exits, waiting no longer than it is told to.

mod files;
mod journal;
mod line;
mod outage;
mod router;
mod server_log;
mod sink;
mod throttle;

use std::{
    fs::File,
    io::{self, IsTerminal},
    os::fd::AsFd,
    panic,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use log::{LevelFilter, Log, error, info, warn};

use crate::{errors::CliError, settings::LogSettings, values::AccessLog};
use files::Output;
use journal::{Journal, JournalOut};
use line::{LineOut, Style};
pub use router::OPERATOR;
use router::{Router, ServerLog};
use sink::{Control, Sink};
use throttle::Throttle;

/// What stderr and the access log file may buffer: about a second of access lines at 7,000 connections a
/// second; more only while the destination stalls, and then the lines past it are dropped.
const BIG_BUFFER: usize = 1 << 20;
/// What the server log's other destinations may buffer.
const SMALL_BUFFER: usize = 256 << 10;

/// The running logs: what the signal handler and `main` need to rotate and to finish them.
#[derive(Clone)]
pub struct Logs {
    sinks: Vec<Arc<dyn Control>>,
    /// The sinks that write to a file, which SIGUSR1 reopens.
    files: Vec<Arc<dyn Control>>,
    throttle: Arc<Throttle>,
    server: Arc<ServerLog>,
    /// The server log's level, shared with the logger; a reload may change it.
    level: Arc<AtomicUsize>,
    access_on: bool,
}

/// Installs the global logger. Fails if a log file cannot be opened for appending (the user's to fix), or
/// if the system refuses a thread or a descriptor.
pub fn init(settings: &LogSettings) -> Result<Logs, CliError> {
    let io_error = |what| move |e: io::Error| CliError::System(format!("cannot {what}: {e}"));
    let stderr =
        File::from(io::stderr().as_fd().try_clone_to_owned().map_err(io_error("set up logging to stderr"))?);
    let journal = journal::is_journal(&stderr);
    let colour = !journal && io::stderr().is_terminal();
    let mut logs = Builder { sinks: Vec::new(), files: Vec::new(), stderr: None, stderr_file: Some(stderr) };
    let threads = io_error("start a log writer thread");

    let native = if journal { Journal::connect().ok() } else { None };
    let console: Box<dyn Log> = match native {
        Some(journal) => {
            let sink = Sink::start("journal".to_owned(), SMALL_BUFFER, journal).map_err(threads)?;
            logs.sinks.push(sink.clone());
            Box::new(JournalOut { sink })
        }
        // Stderr is the journal but its native socket is not reachable: lines with their priority.
        None if journal => {
            Box::new(LineOut { sink: logs.stderr().map_err(threads)?, style: Style::Priority })
        }
        None => server_log::logger(logs.stderr().map_err(threads)?, colour),
    };
    let file = match &settings.file {
        Some(path) => Some(server_log::logger(logs.file(path, "log file", SMALL_BUFFER)?, false)),
        None => None,
    };
    let access: Option<Box<dyn Log>> = match &settings.access {
        AccessLog::Off => None,
        AccessLog::Stderr => {
            let style = if journal { Style::Priority } else { Style::Timestamped };
            Some(Box::new(LineOut { sink: logs.stderr().map_err(threads)?, style }))
        }
        AccessLog::File(path) => Some(Box::new(LineOut {
            sink: logs.file(path, "access log", BIG_BUFFER)?,
            style: Style::Timestamped,
        })),
    };

    let server = Arc::new(ServerLog { console: Some(console), file });
    let reporter = Arc::clone(&server);
    let throttle = Throttle::start(move |report| reporter.report(report)).map_err(threads)?;
    let level = Arc::new(AtomicUsize::new(settings.level as usize));
    let access_on = access.is_some();
    let router = Router {
        level: Arc::clone(&level),
        server: Arc::clone(&server),
        access,
        access_on_console: settings.access == AccessLog::Stderr,
        throttle: Arc::clone(&throttle),
    };
    let max_level = router.max_level();
    log::set_boxed_logger(Box::new(router))
        .map_err(|e| CliError::System(format!("cannot install the logger: {e}")))?;
    log::set_max_level(max_level);
    Ok(Logs { sinks: logs.sinks, files: logs.files, throttle, server, level, access_on })
}

/// The sinks made so far while setting up.
struct Builder {
    sinks: Vec<Arc<dyn Control>>,
    files: Vec<Arc<dyn Control>>,
    /// Shared by the server log and the access log, so their lines stay in order.
    stderr: Option<Arc<Sink<Vec<u8>>>>,
    stderr_file: Option<File>,
}

impl Builder {
    fn stderr(&mut self) -> io::Result<Arc<Sink<Vec<u8>>>> {
        if let Some(sink) = &self.stderr {
            return Ok(Arc::clone(sink));
        }
        let file = self.stderr_file.take().ok_or_else(|| io::Error::other("stderr taken twice"))?;
        let sink = Sink::start("stderr".to_owned(), BIG_BUFFER, Output::stderr(file, Style::Timestamped))?;
        self.sinks.push(sink.clone());
        self.stderr = Some(Arc::clone(&sink));
        Ok(sink)
    }

    fn file(&mut self, path: &Path, what: &str, capacity: usize) -> Result<Arc<Sink<Vec<u8>>>, CliError> {
        let output = Output::open(path)
            .map_err(|e| CliError::Usage(format!("cannot open {what} {}: {e}", path.display())))?;
        let sink = Sink::start(format!("{what} {}", path.display()), capacity, output)
            .map_err(|e| CliError::System(format!("cannot start a log writer thread: {e}")))?;
        self.sinks.push(sink.clone());
        self.files.push(sink.clone());
        Ok(sink)
    }
}

impl Logs {
    /// The server log's level now.
    pub fn level(&self) -> LevelFilter {
        router::level_from(self.level.load(Relaxed))
    }

    /// Changes the server log's level (a reload).
    pub fn set_level(&self, level: LevelFilter) {
        self.level.store(level as usize, Relaxed);
        log::set_max_level(router::max_level(level, self.access_on));
    }

    /// Opens the log files anew by their paths, as logrotate expects after renaming them (SIGUSR1).
    pub fn reopen(&self) {
        for file in &self.files {
            file.reopen();
        }
        info!("reopening the log files (SIGUSR1)");
    }

    /// Logs the counts the throttle still holds and the lines lost so far, then writes what every sink has
    /// buffered, waiting at most `within` for destinations that do not take it. Logging after this is lost.
    pub fn finish(&self, within: Duration) {
        self.throttle.report_all(|report| self.server.report(report));
        let lost: Vec<String> = self
            .sinks
            .iter()
            .filter(|sink| sink.lost() > 0)
            .map(|sink| format!("{} lines to {}", sink.lost(), sink.name()))
            .collect();
        if !lost.is_empty() {
            warn!("log: lost {} while a destination did not keep up", lost.join(", "));
        }
        for sink in &self.sinks {
            sink.close();
        }
        let deadline = Instant::now() + within;
        for sink in &self.sinks {
            sink.wait_closed(deadline);
        }
    }
}

/// Sends panic messages through the log as one line, instead of raw multi-line text on stderr.
pub fn log_panics() {
    panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        error!("panic in thread {}{location}: {}", thread.name().unwrap_or("?"), message.escape_debug());
    }));
}
