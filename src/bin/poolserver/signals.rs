//! SIGINT and SIGTERM (and SIGHUP): the first starts a graceful shutdown, a second one exits at once.
//!
//! The handler acts first and logs second, on a thread of its own: a log write can block (stderr is a pipe
//! nobody reads, a paused terminal), and neither the stop nor the exit on a second signal may wait for it.

use std::{
    process,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    thread,
    time::Duration,
};

use crossbeam_channel::Receiver;
use log::{info, warn};

use poolserver::ShutdownHandle;

/// Exit code when a second signal cuts the drain short.
pub const EXIT_INTERRUPTED: i32 = 1;

/// How long the exit on a second signal waits for its log line.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Routes stop signals to `handle`. Call once per process.
pub fn install(handle: ShutdownHandle) -> Result<(), ctrlc::Error> {
    let received = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if received.fetch_add(1, SeqCst) == 0 {
            handle.shutdown();
            log_aside(|| {
                info!("stop signal received: finishing open connections (signal again to exit at once)")
            });
        } else {
            let logged =
                log_aside(|| warn!("second stop signal received: exiting now, abandoning open connections"));
            let _ = logged.recv_timeout(LAST_WORDS);
            process::exit(EXIT_INTERRUPTED);
        }
    })
}

/// Runs `log` on a thread of its own; the receiver hears when it is done.
fn log_aside(log: impl FnOnce() + Send + 'static) -> Receiver<()> {
    let (done, logged) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        log();
        let _ = done.send(());
    });
    logged
}
