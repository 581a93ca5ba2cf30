//! The server: the accept loop that feeds the pool, and the stop that drains it.
//!
//! The main thread blocks in `accept` and hands each connection to the pool: one system call per
//! connection. The accept times out every `ACCEPT_TICK` (SO_RCVTIMEO), so a stop request is seen within that
//! on any listener: loopback, wildcard or IPv6, port 0, inherited from systemd, or shared with other
//! processes through SO_REUSEPORT, where connecting to ourselves to wake the thread could reach another
//! process instead. Under systemd, readiness, status and stopping are reported to the service manager.

use std::{
    fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use log::{debug, info, warn};

use crate::{
    config::Config,
    conn::Conn,
    error::Error,
    handler::{Builtin, Handler},
    listener::Listener,
    pool::Pool,
    service::Service,
    stats::{Open, OpenCount, Summary},
    systemd::{self, Notifier},
};

/// Pause after an accept failure such as running out of file descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A server with its listening socket, ready to `run`.
pub struct Server {
    config: Config,
    service: Arc<Service>,
    /// How the startup line names the protocol: `mode ack`, `mode echo` or `custom handler`.
    protocol: String,
    listener: Listener,
    stop: ShutdownHandle,
    /// The id of the last connection accepted.
    last_id: u64,
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
        let handler = Builtin::from_config(&config);
        Server::bind_with(config, handler)
    }

    /// Binds `config.bind` and serves `handler`'s protocol (`config.mode` and `config.reply` are not used).
    pub fn bind_with(config: Config, handler: impl Handler) -> Result<Server, Error> {
        config.validate()?;
        let listener = Listener::bind(&config)?;
        Ok(Server::with_listener(config, handler, listener))
    }

    /// Serves `handler`'s protocol on a listening socket the caller made; `config.bind`, `backlog` and
    /// `reuse_port` are not used. At the stop the server closes it, after taking in the clients the kernel
    /// had already queued.
    pub fn from_listener(
        listener: TcpListener,
        config: Config,
        handler: impl Handler,
    ) -> Result<Server, Error> {
        config.validate()?;
        let listener = Listener::from_std(listener, false)?;
        Ok(Server::with_listener(config, handler, listener))
    }

    /// Serves on the listening socket systemd passed to this process (socket activation), or returns
    /// `None` when it passed none. The socket belongs to systemd: at the stop, clients still queued on it
    /// stay there for the next process.
    pub fn from_systemd(config: Config, handler: impl Handler) -> Result<Option<Server>, Error> {
        config.validate()?;
        let Some(listener) = systemd::take_listener()? else { return Ok(None) };
        let listener = Listener::from_std(listener, true)?;
        Ok(Some(Server::with_listener(config, handler, listener)))
    }

    fn with_listener(config: Config, handler: impl Handler, listener: Listener) -> Server {
        let protocol = handler.name();
        let service = Arc::new(Service::new(&config, Box::new(handler)));
        Server { config, service, protocol, listener, stop: ShutdownHandle::default(), last_id: 0 }
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
    pub fn run(mut self) -> Result<Summary, Error> {
        let config = &self.config;
        let addr = self.local_addr();
        let socket = if self.listener.is_inherited() {
            "socket from systemd: bind and backlog not used".to_owned()
        } else {
            format!("backlog {}", config.backlog)
        };
        let conversations = if config.keep_alive {
            format!(", keep-alive, idle timeout {:?}", config.idle_timeout)
        } else {
            String::new()
        };
        info!(
            "listening on {addr} (workers {}, queue {}, {socket}, {}{conversations})",
            config.workers, config.queue, self.protocol
        );
        let open = Arc::new(OpenCount::default());
        let pool = Pool::start(config.workers, config.queue, Arc::clone(&self.service), Arc::clone(&open))?;
        let mut notifier = Notifier::from_env();
        if let Some(notifier) = &notifier {
            notifier.ready(&format!("serving on {addr}"));
        }
        self.accept_until_stopped(&pool, &open, &mut notifier);
        if let Some(notifier) = &notifier {
            notifier.stopping(&format!("stopping: draining {} open connections", pool.open_connections()));
        }
        let inherited = self.listener.is_inherited();
        if !inherited {
            self.accept_already_queued(&pool, &open);
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

    fn accept_until_stopped(&mut self, pool: &Pool, open: &Arc<OpenCount>, notifier: &mut Option<Notifier>) {
        let mut last_warning: Option<Instant> = None;
        while !self.stop.is_requested() {
            match self.listener.accept() {
                Ok((stream, peer)) => self.dispatch(pool, open, stream, peer),
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

    fn dispatch(&mut self, pool: &Pool, open: &Arc<OpenCount>, stream: TcpStream, peer: SocketAddr) {
        self.last_id += 1;
        self.service.stats.accepted();
        pool.dispatch(Conn::new(stream, peer, self.last_id, Open::new(open), &self.service));
    }

    /// Takes in the connections the kernel had already completed when the stop came, so they are served,
    /// not reset when the listener closes. No more than the accept queue can hold, so clients that keep
    /// arriving meanwhile cannot keep the listener open.
    fn accept_already_queued(&mut self, pool: &Pool, open: &Arc<OpenCount>) {
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
                Ok((stream, peer)) => self.dispatch(pool, open, stream, peer),
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
