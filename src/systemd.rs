//! The edges to systemd: readiness and status notifications (sd_notify), and the listening socket that
//! socket activation passes in (LISTEN_FDS). Both are no-ops outside systemd.

use std::{
    env,
    net::TcpListener,
    os::fd::FromRawFd,
    sync::atomic::{AtomicBool, Ordering::SeqCst},
    time::{Duration, Instant},
};

use log::warn;
use sd_notify::NotifyState;

use crate::{error::Error, stats::Summary};

/// How often `systemctl status` gets a fresh STATUS line.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The listening socket systemd passed to this process (socket activation: LISTEN_PID is ours and
/// LISTEN_FDS is at least 1), taken once: a second call in the same process gets `None`. Further sockets
/// are not used.
pub(crate) fn take_listener() -> Result<Option<TcpListener>, Error> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.load(SeqCst) {
        return Ok(None);
    }
    let mut fds = sd_notify::listen_fds()
        .map_err(|source| Error::Io { what: "use the sockets passed by systemd (LISTEN_FDS)", source })?;
    let Some(fd) = fds.next() else { return Ok(None) };
    if TAKEN.swap(true, SeqCst) {
        return Ok(None);
    }
    if fds.len() > 0 {
        warn!("systemd passed {} listening sockets; serving on the first only", fds.len() + 1);
    }
    // SAFETY: systemd hands this descriptor to the process to own (LISTEN_FDS), and TAKEN makes sure it is
    // owned once.
    Ok(Some(unsafe { TcpListener::from_raw_fd(fd) }))
}

/// Tells systemd how the server is doing, when it runs as a `Type=notify` service.
pub(crate) struct Notifier {
    next_status: Instant,
}

impl Notifier {
    /// A notifier when NOTIFY_SOCKET is set, else nothing.
    pub(crate) fn from_env() -> Option<Notifier> {
        env::var_os("NOTIFY_SOCKET").map(|_| Notifier { next_status: Instant::now() + STATUS_INTERVAL })
    }

    /// READY=1: sent once the listener accepts connections and the workers run.
    pub(crate) fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1: a reload is being applied; `ready` follows when it is done.
    pub(crate) fn reloading(&self) {
        send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]);
    }

    /// STOPPING=1: a graceful shutdown has begun.
    pub(crate) fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Sends a STATUS line when one is due.
    pub(crate) fn refresh(&mut self, summary: Summary, open: usize) {
        let now = Instant::now();
        if now >= self.next_status {
            send(&[NotifyState::Status(&format!("{summary}, open {open}"))]);
            self.next_status = now + STATUS_INTERVAL;
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd: {e}");
    }
}
