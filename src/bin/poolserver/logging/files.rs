//! The byte destinations a sink writes to: stderr, and a log file that can be opened anew by its path.
//!
//! A log file is opened when logging starts, so a path that cannot be opened is a configuration error at
//! startup. SIGUSR1 opens the path again (logrotate renamed the file): from then on lines go to a new file
//! there, while the old one, renamed, is left complete.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use log::Level;

use super::{
    line::{Style, with_line},
    sink::Destination,
};

/// An open file descriptor (stderr, or a log file) and, for a log file, its path.
pub struct Output {
    file: File,
    path: Option<PathBuf>,
    /// How lines start here, for the line that reports lost ones.
    style: Style,
}

impl Output {
    pub fn stderr(file: File, style: Style) -> Output {
        Output { file, path: None, style }
    }

    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> io::Result<Output> {
        Ok(Output { file: append(path)?, path: Some(path.to_owned()), style: Style::Timestamped })
    }
}

/// Opens `path` for appending without ever blocking: a FIFO with no reader would block `open` until one
/// came. Regular files and character devices (`/dev/null`) are taken; a FIFO only when something reads it.
fn append(path: &Path) -> io::Result<File> {
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
            return Err(io::Error::other(format!("{what} give a regular file")));
        }
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_fifo() || kind.is_char_device()) {
        return Err(io::Error::other("it is not a regular file"));
    }
    // Back to blocking writes: only this destination's writer thread waits on them, never the server.
    set_blocking(&file)?;
    Ok(file)
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with flags it just returned.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Destination for Output {
    type Batch = Vec<u8>;

    fn write(&mut self, batch: &Vec<u8>, lines: u64) -> u64 {
        // All or nothing is close enough for a count: a write cut short is rare (a full disk, a reader
        // that went away) and loses the rest of the batch anyway.
        match self.file.write_all(batch) {
            Ok(()) => 0,
            Err(_) => lines,
        }
    }

    fn write_loss(&mut self, lines: u64) -> io::Result<()> {
        let mut result = Ok(());
        let message =
            format_args!("log: {lines} lines were dropped here while this destination did not keep up");
        with_line(self.style, Level::Warn, message, |line| result = self.file.write_all(line));
        result
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.file = append(path)?;
        }
        Ok(())
    }
}
