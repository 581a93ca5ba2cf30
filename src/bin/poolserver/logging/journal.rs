//! The server log under systemd: native journal entries, sent by a writer thread.
//!
//! When stderr is the journal (systemd sets JOURNAL_STREAM to its device and inode), the server log goes to
//! journald's native socket through systemd-journal-logger: each entry carries its priority, the source
//! file and line, and no time of ours (the journal records one). journald can be slow or rate-limit us, so
//! entries are queued like any other line and a writer thread sends them.

use std::{env, fs::File, io, os::unix::fs::MetadataExt, sync::Arc};

use log::{Level, Log, Metadata, Record};
use systemd_journal_logger::JournalLog;

use super::sink::{Batch, Destination, Lost, Sink};

/// Whether JOURNAL_STREAM names `stderr` (`DEVICE:INODE`), as systemd documents; a variable merely inherited
/// from a parent session does not match.
pub fn is_journal(stderr: &File) -> bool {
    let Some(stream) = env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = stderr.metadata() else { return false };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// A record as the writer thread sends it.
pub struct Entry {
    level: Level,
    target: String,
    message: String,
    file: Option<&'static str>,
    line: Option<u32>,
    module: Option<&'static str>,
}

/// A batch of entries.
#[derive(Default)]
pub struct Entries(Vec<Entry>);

impl Batch for Entries {
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Queues records for the journal.
pub struct JournalOut {
    pub sink: Arc<Sink<Entries>>,
}

impl Log for JournalOut {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let entry = Entry {
            level: record.level(),
            target: record.target().to_owned(),
            message: record.args().to_string(),
            file: record.file_static(),
            line: record.line(),
            module: record.module_path_static(),
        };
        // Counted with what an entry's fixed fields take, so the capacity bounds memory.
        let bytes = entry.message.len() + entry.target.len() + 128;
        self.sink.push(bytes, 1, |batch| batch.0.push(entry));
    }

    fn flush(&self) {}
}

/// journald's native socket.
pub struct Journal {
    log: JournalLog,
}

impl Journal {
    /// Fails when journald's socket is not there (a container without it, a test).
    pub fn connect() -> io::Result<Journal> {
        Ok(Journal { log: JournalLog::new()?.with_syslog_identifier("poolserver".to_owned()) })
    }

    fn send(&self, entry: &Entry) -> io::Result<()> {
        self.log.journal_send(
            &Record::builder()
                .level(entry.level)
                .target(&entry.target)
                .args(format_args!("{}", entry.message))
                .file_static(entry.file)
                .line(entry.line)
                .module_path_static(entry.module)
                .build(),
        )
    }
}

impl Destination for Journal {
    type Batch = Entries;

    fn write(&mut self, batch: &Entries, _lines: u64) -> Result<(), Lost> {
        let mut lost: Option<Lost> = None;
        for entry in &batch.0 {
            if let Err(error) = self.send(entry) {
                let lost = lost.get_or_insert(Lost { lines: 0, error });
                lost.lines += 1;
            }
        }
        lost.map_or(Ok(()), Err)
    }

    fn write_loss(&mut self, lines: u64) -> io::Result<()> {
        self.send(&Entry {
            level: Level::Warn,
            target: module_path!().to_owned(),
            message: format!("log: {lines} lines were dropped while the journal did not keep up"),
            file: None,
            line: None,
            module: None,
        })
    }
}
