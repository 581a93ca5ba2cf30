//! The byte destinations a sink writes to: stderr, and a log file that can be opened anew by its path.
//!
//! A log file is opened when logging starts, so a path that cannot be opened is a configuration error at
//! startup. SIGUSR1 opens the path again (logrotate renamed the file): from then on lines go to a new file
//! there, while the old one, renamed, is left complete.
//!
//! A line is written whole or not at all. On a full disk a write stops part way (the kernel takes what fits
//! in the last free block), which would leave half a line for the next one to be appended to once space
//! returns. So a write that fails part way cuts a regular file back to the end of its last whole line, and
//! only the lines that were written whole count as written. (A pipe or a terminal cannot be cut back; a
//! blocking write to one stops early only when its reader is gone, and then nothing more is read anyway.)

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
    sink::{Destination, Lost},
};

/// An open file descriptor (stderr, or a log file) and, for a log file, its path.
pub struct Output {
    file: File,
    /// A regular file, which a write that fails part way is cut back in.
    regular: bool,
    path: Option<PathBuf>,
    /// How lines start here, for the line that reports lost ones.
    style: Style,
}

impl Output {
    pub fn stderr(file: File, style: Style) -> Output {
        let regular = is_regular(&file);
        Output { file, regular, path: None, style }
    }

    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> io::Result<Output> {
        let file = append(path)?;
        Ok(Output {
            regular: is_regular(&file),
            file,
            path: Some(path.to_owned()),
            style: Style::Timestamped,
        })
    }
}

fn is_regular(file: &File) -> bool {
    file.metadata().is_ok_and(|meta| meta.is_file())
}

/// Writes `bytes` (whole lines) to `file`, appending; on a failure, returns how many bytes of whole lines
/// went in, having cut a regular file back to them.
fn write_lines(file: &mut File, regular: bool, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    // Where this write starts: the file's end, as it is opened for appending.
    let start = if regular { file.metadata().map(|meta| meta.len()).ok() } else { None };
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return Err(cut_back(file, start, bytes, written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut_back(file, start, bytes, written, e)),
        }
    }
    Ok(())
}

/// After a write failed with `written` of `bytes` in the file: cuts off a torn last line (regular files,
/// whose end before the write was `start`); the bytes of whole lines written, and the error.
fn cut_back(
    file: &File,
    start: Option<u64>,
    bytes: &[u8],
    written: usize,
    error: io::Error,
) -> (usize, io::Error) {
    let whole = bytes[..written].iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
    if whole < written
        && let Some(start) = start
    {
        // If even this fails the torn line stays: there is nothing else to try, and the count says so.
        let _ = file.set_len(start + whole as u64);
    }
    (whole, error)
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

    fn write(&mut self, batch: &Vec<u8>, lines: u64) -> Result<(), Lost> {
        write_lines(&mut self.file, self.regular, batch).map_err(|(whole, error)| {
            let written = batch[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
            Lost { lines: lines.saturating_sub(written), error }
        })
    }

    fn write_loss(&mut self, lines: u64) -> io::Result<()> {
        let mut result = Ok(());
        let message =
            format_args!("log: {lines} lines were dropped here while this destination did not keep up");
        let (file, regular) = (&mut self.file, self.regular);
        with_line(self.style, Level::Warn, message, |line| {
            result = write_lines(file, regular, line).map_err(|(_, error)| error)
        });
        result
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.file = append(path)?;
            self.regular = is_regular(&self.file);
        }
        Ok(())
    }
}
