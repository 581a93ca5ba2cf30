//! The server: the accept loop that feeds the pool, and the shutdown that drains it.
//!
//! The main thread blocks in `accept` and hands each connection to the pool: one system call per
//! connection. The accept times out every `ACCEPT_TICK` (SO_RCVTIMEO), so a stop request is seen within that
//! on any listener: loopback, wildcard or IPv6, port 0, inherited from systemd, or shared with other
//! processes through SO_REUSEPORT, where connecting to ourselves to wake the thread could reach another
//! process instead. Under systemd the listener may be inherited (socket activation) and
//! readiness, status and stopping are reported to the service manager.

use std::{
    fs, io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use log::{debug, info, warn};

use crate::{
    config::{Config, Mode},
    conn::Conn,
    error::Error,
    handler::{Ack, Echo, Handler},
    listener::Listener,
    pool::Pool,
    stats::Summary,
    systemd::{self, Notifier},
};

/// Pause after an accept failure such as running out of file descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound server, ready to `run`.
pub struct Server {
    config: Config,
    handler: Arc<dyn Handler>,
    /// How the startup line names the protocol: `mode ack`, `mode echo` or `custom handler`.
    protocol: String,
    listener: Listener,
    stop: ShutdownHandle,
}

/// Asks a running server to stop accepting and drain; the accept loop sees it within `ACCEPT_TICK`. Cheap to
/// clone and safe to call from any thread or a signal-handling thread, any number of times.
#[derive(Clone, Default)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.requested.store(true, SeqCst);
    }

    fn is_requested(&self) -> bool {
        self.requested.load(SeqCst)
    }
}

impl Server {
    /// Binds `config.bind` and serves the protocol of `config.mode`.
    pub fn bind(config: Config) -> Result<Server, Error> {
        let handler: Arc<dyn Handler> = match config.mode {
            Mode::Ack => Arc::new(Ack::new(config.reply.as_bytes())),
            Mode::Echo => Arc::new(Echo),
        };
        let protocol = format!("mode {}", config.mode);
        Ok(Server { protocol, ..Server::bind_with(config, handler)? })
    }

    /// Binds `config.bind` and serves `handler`'s protocol (`config.mode` and `config.reply` are not used).
    /// When systemd passed a listening socket (LISTEN_FDS), serves on that instead and ignores `bind`.
    pub fn bind_with(config: Config, handler: Arc<dyn Handler>) -> Result<Server, Error> {
        let listener = match systemd::inherited_listener()? {
            Some(fd) => Listener::inherit(fd)?,
            None => Listener::bind(&config)?,
        };
        let protocol = "custom handler".to_owned();
        Ok(Server { config, handler, protocol, listener, stop: ShutdownHandle::default() })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Serves until a shutdown is requested, then stops accepting and lets open connections finish within
    /// `shutdown_timeout`.
    ///
    /// With a socket from systemd, connections still queued in the kernel are left there: the socket
    /// outlives this process, and the next one serves them.
    pub fn run(mut self) -> Result<Summary, Error> {
        let config = &self.config;
        let addr = self.local_addr();
        let socket = if self.listener.is_inherited() {
            "socket from systemd: bind and backlog not used".to_owned()
        } else {
            format!("backlog {}", config.backlog)
        };
        info!(
            "listening on {addr} (workers {}, queue {}, {socket}, {})",
            config.workers, config.queue, self.protocol
        );
        let pool = Pool::start(config, Arc::clone(&self.handler), self.listener.held_back())?;
        let mut notifier = Notifier::from_env();
        if let Some(notifier) = &notifier {
            notifier.ready(&format!("serving on {addr}"));
        }
        self.accept_until_stopped(&pool, &mut notifier);
        if let Some(notifier) = &notifier {
            notifier.stopping(&format!("stopping: draining {} open connections", pool.open_connections()));
        }
        let inherited = self.listener.is_inherited();
        if !inherited {
            self.accept_already_queued(&pool);
        }
        let Server { config, listener, .. } = self;
        drop(listener);
        let stopped = if inherited {
            format!("stopped accepting on {addr} (queued clients stay for the next process)")
        } else {
            format!("closed {addr}")
        };
        info!(
            "stopping: {stopped}; waiting up to {:?} for open connections: {}",
            config.shutdown_timeout,
            pool.open_connections()
        );
        pool.shutdown(config.shutdown_timeout)
            .map_err(|(abandoned, summary)| Error::ShutdownTimedOut { abandoned, summary })
    }

    fn accept_until_stopped(&mut self, pool: &Pool, notifier: &mut Option<Notifier>) {
        let mut last_warning: Option<Instant> = None;
        while !self.stop.is_requested() {
            match self.listener.accept() {
                Ok((stream, peer)) => pool.dispatch(Conn::new(stream, peer, self.config.proxy_protocol)),
                // The accept timed out (ACCEPT_TICK): time to look at the stop request again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client gave up between its handshake and our accept, or a signal arrived: try again.
                Err(e) if is_transient(&e) => debug!("accept: {e}"),
                // Out of file descriptors or memory: the pending connections stay queued in the kernel; warn
                // (at most once a second) and retry after a pause instead of spinning.
                Err(e) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        warn!("cannot accept on {}: {e}; retrying", self.local_addr());
                        last_warning = Some(Instant::now());
                    }
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
            if let Some(notifier) = notifier {
                notifier.refresh(pool.summary(), pool.open_connections());
            }
        }
    }

    /// Takes in the connections the kernel had already completed when the stop came, so they are served,
    /// not reset when the listener closes. No more than the accept queue can hold, so clients that keep
    /// arriving meanwhile cannot keep the listener open.
    fn accept_already_queued(&mut self, pool: &Pool) {
        if let Err(e) = self.listener.stop_blocking() {
            warn!("cannot take in the connections queued on {}: {e}; they will be reset", self.local_addr());
            return;
        }
        let kernel_cap = fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .unwrap_or(4096);
        for _ in 0..self.config.backlog.min(kernel_cap) {
            match self.listener.accept() {
                Ok((stream, peer)) => pool.dispatch(Conn::new(stream, peer, self.config.proxy_protocol)),
                Err(e) if is_transient(&e) => {}
                Err(_) => return,
            }
        }
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted)
        || error.raw_os_error() == Some(libc::EPROTO)
}
