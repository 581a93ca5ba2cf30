//! Logging to stderr and optionally a file: one line per record, written with one `write` and no lock.
//!
//! The per-connection info line is on the hot path, so it must be cheap. Each thread formats the whole line
//! into its own buffer and hands it to the kernel in one system call; appends of a whole line do not
//! interleave with other threads' lines, so no mutex is needed (simplelog, which this replaces, takes one
//! per record and writes a line in several pieces). The timestamp's date and time are formatted (by the
//! `time` crate) once per second per thread, and only the microseconds per line. When stderr is the journal
//! (systemd sets JOURNAL_STREAM to its device and inode) the journal adds the time, so each line starts
//! with its syslog priority (`<6>` for info) instead, which journald stores as the level.

use std::{
    cell::RefCell,
    env,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    panic,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use log::{Level, LevelFilter, Log, Metadata, Record, error};
use time::{OffsetDateTime, macros::format_description};

use poolserver::Error;

use crate::errors;

/// Installs the global logger. Fails if `file` cannot be opened for appending.
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let stderr = File::from(
        io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Io { what: "set up logging to stderr", source })?,
    );
    let journal = is_journal(&stderr);
    let mut outputs = vec![stderr];
    if let Some(path) = file {
        outputs.push(open_log_file(path)?);
    }
    log::set_boxed_logger(Box::new(LineLogger { level, outputs, journal }))
        .map_err(|e| Error::Io { what: "install the logger", source: io::Error::other(e) })?;
    log::set_max_level(level);
    Ok(())
}

/// Opens `path` for appending without ever blocking: a FIFO with no reader would block `open` until one
/// came. Regular files and character devices (`/dev/null`) are taken; a FIFO only when something reads it.
fn open_log_file(path: &Path) -> Result<File, Error> {
    let fail = |why: String| Error::Config(format!("cannot open log file {}: {why}", errors::path(path)));
    let file = match OpenOptions::new().create(true).append(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        // ENXIO: a FIFO with no reader (or a socket file, which cannot be opened at all).
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            let what = match fs::metadata(path) {
                Ok(meta) if meta.file_type().is_fifo() => {
                    "it is a FIFO (named pipe) that nothing reads yet; start its reader first or"
                }
                _ => "it cannot be written;",
            };
            return Err(fail(format!("{what} give a regular file")));
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let kind = file.metadata().map_err(|e| fail(e.to_string()))?.file_type();
    if !(kind.is_file() || kind.is_fifo() || kind.is_char_device()) {
        return Err(fail("it is not a regular file".to_owned()));
    }
    // Back to blocking writes, as on stderr: a full pipe slows the server down rather than losing lines.
    if kind.is_fifo() {
        set_blocking(&file).map_err(|e| fail(e.to_string()))?;
    }
    Ok(file)
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with flags it just returned.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct LineLogger {
    level: LevelFilter,
    outputs: Vec<File>,
    /// Stderr is the journal: prefix the priority, leave out the time.
    journal: bool,
}

thread_local! {
    static LINE: RefCell<LineBuffer> = RefCell::new(LineBuffer::default());
}

/// One thread's line under construction, and the formatted start of the current second.
#[derive(Default)]
struct LineBuffer {
    bytes: Vec<u8>,
    second: u64,
    second_text: String,
}

impl Log for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffer) => self.write_line(&mut buffer, record),
            // Only if formatting a record logs another one: give the inner record a buffer of its own.
            Err(_) => self.write_line(&mut LineBuffer::default(), record),
        });
    }

    fn flush(&self) {}
}

impl LineLogger {
    fn write_line(&self, buffer: &mut LineBuffer, record: &Record<'_>) {
        buffer.bytes.clear();
        if self.journal {
            let _ = write!(buffer.bytes, "<{}>", syslog_priority(record.level()));
        } else {
            buffer.timestamp();
        }
        let _ = writeln!(buffer.bytes, "[{}] {}", record.level(), record.args());
        for output in &self.outputs {
            // A logger has nowhere to report its own failure; a full disk must not stop the server.
            let _ = (&*output).write_all(&buffer.bytes);
        }
    }
}

impl LineBuffer {
    /// Appends `2026-11-25T09:24:05.264332Z ` (UTC).
    fn timestamp(&mut self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second_text.is_empty() || now.as_secs() != self.second {
            self.second = now.as_secs();
            let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            self.second_text = OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
                .ok()
                .and_then(|t| t.format(&format).ok())
                .unwrap_or_default();
        }
        self.bytes.extend_from_slice(self.second_text.as_bytes());
        let _ = write!(self.bytes, ".{:06}Z ", now.subsec_micros());
    }
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether JOURNAL_STREAM names `stderr` (`DEVICE:INODE`), as systemd documents; a variable merely inherited
/// from a parent session does not match.
fn is_journal(stderr: &File) -> bool {
    let Some(stream) = env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = stderr.metadata() else { return false };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
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
