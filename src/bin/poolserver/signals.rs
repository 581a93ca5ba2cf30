//! Signals: SIGINT and SIGTERM stop the server (the first gracefully, a second at once); SIGHUP reloads the
//! configuration; SIGUSR1 reopens the log files, as logrotate expects.
//!
//! signal-hook's handler only wakes a thread of our own, which does the rest. The first stop signal only
//! asks the server to stop and logs nothing: the server logs the stop when it acts on it, so the stop lines
//! come in the order things happen. A second one logs why the process exits, gives the logs a bounded moment
//! to get that out, and exits.

use std::{io, process, thread, time::Duration};

use log::warn;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};

use poolserver::ShutdownHandle;

use crate::{logging::Logs, reload::Reloader};

/// Exit code when a second signal cuts the drain short.
pub const EXIT_INTERRUPTED: i32 = 1;

/// How long the exit on a second signal waits for the logs.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Routes stop signals to `handle`, SIGHUP to `reloader` and SIGUSR1 to `logs`. Call once per process.
pub fn install(handle: ShutdownHandle, reloader: Reloader, logs: Logs) -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?;
    thread::Builder::new().name("signals".to_owned()).spawn(move || {
        let mut stopping = false;
        for signal in signals.forever() {
            if signal == SIGUSR1 {
                logs.reopen();
            } else if signal == SIGHUP {
                if !stopping {
                    reloader.reload();
                }
            } else if !stopping {
                stopping = true;
                handle.shutdown();
            } else {
                warn!("second stop signal received: exiting now, abandoning open connections");
                logs.finish(LAST_WORDS);
                process::exit(EXIT_INTERRUPTED);
            }
        }
    })?;
    Ok(())
}
