//! Logging to stderr and optionally a file, one `write` per line.
//!
//! simplelog formats a record in several small writes; a `LineWriter` gathers them so each line reaches the
//! file descriptor whole, in one system call, and lines from different threads never interleave. When
//! stderr is the journal (systemd sets JOURNAL_STREAM to its device and inode) we leave the timestamp to the
//! journal and keep only the level.

use std::{
    env,
    fs::{File, OpenOptions},
    io::{self, LineWriter},
    os::{fd::AsFd, unix::fs::MetadataExt},
    panic,
    path::Path,
};

use log::{LevelFilter, error};
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, WriteLogger};

use crate::error::Error;

/// Installs the global logger. Fails if `file` cannot be opened for appending.
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let time_level = if stderr_is_journal() { LevelFilter::Off } else { LevelFilter::Error };
    let format = ConfigBuilder::new()
        .set_time_level(time_level)
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![WriteLogger::new(level, format.clone(), LineWriter::new(io::stderr()))];
    if let Some(path) = file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Config(format!("cannot open log file {}: {e}", path.display())))?;
        loggers.push(WriteLogger::new(level, format, LineWriter::new(file)));
    }
    CombinedLogger::init(loggers)
        .map_err(|e| Error::Io { what: "install the logger", source: io::Error::other(e) })
}

/// Whether JOURNAL_STREAM names the file our stderr is connected to (`DEVICE:INODE`), as systemd documents;
/// a variable merely inherited from a parent session does not match.
fn stderr_is_journal() -> bool {
    let Some(stream) = env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = File::from(stderr).metadata() else { return false };
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
