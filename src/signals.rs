//! SIGINT and SIGTERM (and SIGHUP): the first starts a graceful shutdown, a second one exits at once.

use std::{
    process,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
};

use log::{info, warn};

use crate::server::ShutdownHandle;

/// Exit code when a second signal cuts the drain short.
pub const EXIT_INTERRUPTED: i32 = 1;

/// Routes stop signals to `handle`. Call once per process.
pub fn install(handle: ShutdownHandle) -> Result<(), ctrlc::Error> {
    let received = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if received.fetch_add(1, SeqCst) == 0 {
            info!("stop signal received: finishing open connections (signal again to exit at once)");
            handle.shutdown();
        } else {
            warn!("second stop signal received: exiting now, abandoning open connections");
            process::exit(EXIT_INTERRUPTED);
        }
    })
}
