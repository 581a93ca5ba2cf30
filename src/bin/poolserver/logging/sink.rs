//! A log destination that never makes a logging thread wait.
//!
//! A thread that logs only copies its line into a bounded buffer in memory. A writer thread of the
//! destination's own takes the whole buffer out and writes it, so a destination that stalls (stderr a pipe
//! nobody reads, a paused terminal, a slow disk, a busy journald) stalls that thread and nothing else. When
//! the buffer is full, new lines are dropped and counted, and the count is written to the destination as soon
//! as a write gets through again. While writes fail, `outage` tells the server log once a second. Lines wait at most `FLUSH_DELAY` (nginx's `flush=`), or less once the buffer
//! passes `HIGH_WATER`: under load that is one write per batch instead of one per line.

use std::{
    io, mem,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};

use super::{outage::Outage, router::OPERATOR};

/// The longest a line waits in the buffer before its writer takes it.
pub const FLUSH_DELAY: Duration = Duration::from_millis(50);

/// Buffered bytes that start a write without waiting for `FLUSH_DELAY`.
const HIGH_WATER: usize = 32 << 10;

/// Where a sink's writer thread puts what was logged.
pub trait Destination: Send + 'static {
    type Batch: Batch;

    /// Writes `batch`, which holds `lines` lines, each whole or not at all; `Err` says how many were lost.
    fn write(&mut self, batch: &Self::Batch, lines: u64) -> Result<(), Lost>;

    /// Tells the reader that `lines` lines never reached this destination.
    fn write_loss(&mut self, lines: u64) -> io::Result<()>;

    /// Starts writing to the destination's path anew (after logrotate renamed the file).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lines a write could not put in its destination, and why.
#[derive(Debug)]
pub struct Lost {
    pub lines: u64,
    pub error: io::Error,
}

/// What a sink buffers: bytes, or whole records for the journal.
pub trait Batch: Default + Send + 'static {
    fn clear(&mut self);
}

impl Batch for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
}

/// One destination's buffer, shared by every thread that logs to it and its writer thread.
pub struct Sink<B> {
    /// How messages about this destination name it: `stderr`, `the journal`, `log file PATH`.
    name: String,
    /// Buffered bytes past which lines are dropped.
    capacity: usize,
    state: Mutex<State<B>>,
    wake: Condvar,
    /// Lines dropped or lost in a failed write, over the sink's life.
    lost: AtomicU64,
    /// Disconnected once the writer thread has ended.
    writer_done: Receiver<()>,
}

struct State<B> {
    batch: B,
    bytes: usize,
    lines: u64,
    /// Lines dropped since the writer last looked.
    dropped: u64,
    reopen: bool,
    closing: bool,
}

impl<B: Batch> Sink<B> {
    /// Starts the writer thread of `destination`.
    pub fn start<D>(name: String, capacity: usize, destination: D) -> io::Result<Arc<Sink<B>>>
    where
        D: Destination<Batch = B>,
    {
        let (done, writer_done) = crossbeam_channel::bounded(0);
        let state =
            State { batch: B::default(), bytes: 0, lines: 0, dropped: 0, reopen: false, closing: false };
        let sink = Arc::new(Sink {
            name,
            capacity,
            state: Mutex::new(state),
            wake: Condvar::new(),
            lost: AtomicU64::new(0),
            writer_done,
        });
        let writer = Arc::clone(&sink);
        thread::Builder::new()
            .name(format!("log writer: {}", sink.name))
            .spawn(move || writer.write_until_closed(destination, done))?;
        Ok(sink)
    }

    /// Adds `lines` lines of `bytes` bytes, put into the buffer by `fill`, or drops them if the buffer is
    /// full. Never waits for the destination.
    pub fn push(&self, bytes: usize, lines: u64, fill: impl FnOnce(&mut B)) {
        let mut state = self.lock();
        if state.bytes + bytes > self.capacity {
            state.dropped += lines;
            self.lost.fetch_add(lines, Relaxed);
            return;
        }
        let before = state.bytes;
        fill(&mut state.batch);
        state.bytes += bytes;
        state.lines += lines;
        // The writer sleeps while the buffer is empty, and naps for FLUSH_DELAY once it is not.
        let wake = before == 0 || (before < HIGH_WATER && state.bytes >= HIGH_WATER);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A thread that panicked while holding the lock left a consistent buffer: it only appends.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_until_closed<D: Destination<Batch = B>>(&self, mut destination: D, _done: Sender<()>) {
        let mut batch = B::default();
        let mut unreported = 0;
        let mut outage = Outage::default();
        loop {
            let (lines, reopen, closing) = {
                let mut state = self.lock();
                while state.bytes == 0 && state.dropped == 0 && !state.reopen && !state.closing {
                    state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                if state.bytes < HIGH_WATER && !state.reopen && !state.closing {
                    state =
                        self.wake.wait_timeout(state, FLUSH_DELAY).unwrap_or_else(PoisonError::into_inner).0;
                }
                mem::swap(&mut state.batch, &mut batch);
                state.bytes = 0;
                unreported += mem::take(&mut state.dropped);
                (mem::take(&mut state.lines), mem::take(&mut state.reopen), state.closing)
            };
            if reopen && let Err(e) = destination.reopen() {
                // Logged, not written here: the message goes to the other destinations too. An operator's
                // action, so never throttled: each destination that fails is named.
                error!(target: OPERATOR, "cannot reopen the {}: {e}; still writing to the file it had open", self.name);
            }
            if lines > 0 {
                match destination.write(&batch, lines) {
                    Ok(()) => {
                        if let Some(notice) = outage.recovered(&self.name) {
                            info!(target: OPERATOR, "{notice}");
                        }
                        if unreported > 0 && destination.write_loss(unreported).is_ok() {
                            unreported = 0;
                        }
                    }
                    Err(Lost { lines: lost, error }) => {
                        self.lost.fetch_add(lost, Relaxed);
                        unreported += lost;
                        // Rate-limited here, with the count; the throttle would fold it into a stale sample.
                        if let Some(notice) = outage.failed(&self.name, lost, &error, Instant::now()) {
                            warn!(target: OPERATOR, "{notice}");
                        }
                    }
                }
            }
            batch.clear();
            if closing {
                return;
            }
        }
    }
}

/// What the rest of the logging setup does with a sink, whatever it buffers.
pub trait Control: Send + Sync {
    fn name(&self) -> &str;
    /// Lines that never reached the destination, so far.
    fn lost(&self) -> u64;
    /// Asks the writer to reopen the destination before its next write.
    fn reopen(&self);
    /// Asks the writer to write what is buffered and end.
    fn close(&self);
    /// Waits until the writer has ended, or until `deadline`; whether it ended.
    fn wait_closed(&self, deadline: Instant) -> bool;
}

impl<B: Batch> Control for Sink<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }

    fn reopen(&self) {
        self.lock().reopen = true;
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    fn wait_closed(&self, deadline: Instant) -> bool {
        self.writer_done.recv_deadline(deadline).is_err_and(|e| e.is_disconnected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is given; a write blocks until the test lets it go.
    struct Held {
        written: Sender<Vec<u8>>,
        go: Receiver<()>,
    }

    impl Destination for Held {
        type Batch = Vec<u8>;

        fn write(&mut self, batch: &Vec<u8>, _lines: u64) -> Result<(), Lost> {
            let _ = self.go.recv();
            let _ = self.written.send(batch.clone());
            Ok(())
        }

        fn write_loss(&mut self, lines: u64) -> io::Result<()> {
            let _ = self.written.send(format!("lost {lines}\n").into_bytes());
            Ok(())
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_stalled_destination_drops_and_counts_then_reports_once_it_takes_writes_again() {
        let (written, batches) = crossbeam_channel::unbounded();
        let (go, stalled) = crossbeam_channel::unbounded();
        let sink = Sink::start("test".to_owned(), 10, Held { written, go: stalled }).unwrap();
        // The first line reaches the writer, which stalls on it; the next two fill the buffer, the last two
        // find it full.
        sink.push(5, 1, |b| b.extend_from_slice(b"aaaa\n"));
        while sink.lock().bytes > 0 {
            thread::yield_now();
        }
        for line in [b"bbbb\n", b"cccc\n", b"dddd\n", b"eeee\n"] {
            sink.push(5, 1, |b| b.extend_from_slice(line));
        }
        assert_eq!(sink.lost(), 2);
        go.send(()).unwrap();
        go.send(()).unwrap();
        let got: Vec<_> = (0..3).map(|_| batches.recv_timeout(WAIT).unwrap()).collect();
        assert_eq!(got, [&b"aaaa\n"[..], b"bbbb\ncccc\n", b"lost 2\n"]);
    }

    #[test]
    fn close_writes_what_is_buffered_and_ends_the_writer() {
        let (written, batches) = crossbeam_channel::unbounded();
        let (go, stalled) = crossbeam_channel::unbounded();
        let sink = Sink::start("test".to_owned(), 100, Held { written, go: stalled }).unwrap();
        sink.push(4, 1, |b| b.extend_from_slice(b"one\n"));
        assert!(!sink.wait_closed(Instant::now() + Duration::from_millis(10)), "ended before close");
        sink.close();
        go.send(()).unwrap();
        assert_eq!(batches.recv_timeout(WAIT).unwrap(), b"one\n");
        assert!(sink.wait_closed(Instant::now() + WAIT));
    }
}
