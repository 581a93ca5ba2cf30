//! The server: the accept loop that feeds the pool, and the stop that drains it.
//!
//! The main thread blocks in `accept` and hands each connection to the pool: one system call per
//! connection. The accept times out every `ACCEPT_TICK` (SO_RCVTIMEO), so a stop request is seen within that
//! on any listener: loopback, wildcard or IPv6, port 0, inherited from systemd, or shared with other
//! processes through SO_REUSEPORT, where connecting to ourselves to wake the thread could reach another
//! process instead. Under systemd, readiness, status and stopping are reported to the service manager.

use std::{
    any::TypeId,
    fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};

use crate::{
    config::Config,
    conn::Conn,
    error::Error,
    handler::{Builtin, Handler, Protocol},
    listener::Listener,
    monitor::Monitor,
    pool::Pool,
    service::{Current, Service},
    stats::{Gauges, Open, OpenCount, Summary},
    systemd::{self, Notifier},
};

/// Pause after an accept failure such as running out of file descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A server with its listening socket, ready to `run`.
pub struct Server {
    config: Config,
    current: Arc<Current>,
    /// The handler; kept across reloads unless it is the `Builtin` one, which follows `mode` and `reply`.
    handler: Arc<dyn Protocol>,
    builtin: bool,
    /// How the startup line names the protocol: `mode ack`, `mode echo` or `custom handler`.
    protocol: String,
    reload: ReloadHandle,
    listener: Listener,
    stop: ShutdownHandle,
    /// The id of the last connection accepted.
    last_id: u64,
    open: Arc<OpenCount>,
    gauges: Arc<Gauges>,
    /// The queue from the accept loop and the waiting room to the workers, made here so that a `Monitor`
    /// can read its length before the pool starts.
    queue: (Sender<Conn>, Receiver<Conn>),
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

/// Asks a running server to apply a new configuration: what can change without a new socket changes within
/// `ACCEPT_TICK`, without dropping a connection (see `Server::run`). Cheap to clone, safe from any thread.
#[derive(Clone, Default)]
pub struct ReloadHandle {
    requested: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<Config>>>,
}

impl ReloadHandle {
    /// Checks `config` and hands it to the server; a config that does not validate is refused here and the
    /// running one stays.
    pub fn reload(&self, config: Config) -> Result<(), Error> {
        config.validate()?;
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(config);
        self.requested.store(true, SeqCst);
        Ok(())
    }

    fn take(&self) -> Option<Config> {
        if !self.requested.swap(false, SeqCst) {
            return None;
        }
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).take()
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

    fn with_listener<H: Handler>(config: Config, handler: H, listener: Listener) -> Server {
        let protocol = handler.name();
        let builtin = TypeId::of::<H>() == TypeId::of::<Builtin>();
        let handler: Arc<dyn Protocol> = Arc::new(handler);
        let current = Arc::new(Current::new(Service::new(&config, Arc::clone(&handler))));
        // Unbounded: the queue's limit is `queue`, checked at each send, so that a reload can change it.
        let queue = crossbeam_channel::unbounded();
        Server {
            config,
            current,
            handler,
            builtin,
            protocol,
            reload: ReloadHandle::default(),
            listener,
            stop: ShutdownHandle::default(),
            last_id: 0,
            open: Arc::default(),
            gauges: Arc::default(),
            queue,
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// A handle that applies a new configuration while the server runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// A handle that reads the server's numbers while it runs (and after).
    pub fn monitor(&self) -> Monitor {
        self.gauges.workers.store(self.config.workers, SeqCst);
        Monitor {
            current: Arc::clone(&self.current),
            open: Arc::clone(&self.open),
            gauges: Arc::clone(&self.gauges),
            queue: self.queue.1.clone(),
        }
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
        let open = Arc::clone(&self.open);
        self.gauges.workers.store(config.workers, SeqCst);
        let mut pool = Pool::start(
            config.workers,
            self.queue.clone(),
            Arc::clone(&self.current),
            Arc::clone(&open),
            Arc::clone(&self.gauges),
        )?;
        let mut notifier = Notifier::from_env();
        if let Some(notifier) = &notifier {
            notifier.ready(&format!("serving on {addr}"));
        }
        self.accept_until_stopped(&mut pool, &open, &mut notifier);
        // Logged here, where the stop is acted on, so it always comes before the `stopping:` line.
        info!("stop requested: finishing open connections");
        if let Some(notifier) = &notifier {
            notifier.stopping(&format!("stopping: draining {} open connections", pool.open_connections()));
        }
        let inherited = self.listener.is_inherited();
        if !inherited {
            self.accept_already_queued(&pool, &open);
        }
        // The queue's last sender outside the pool goes too, or the workers would wait for more forever.
        let Server { config, listener, queue, .. } = self;
        drop((listener, queue));
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

    fn accept_until_stopped(
        &mut self,
        pool: &mut Pool,
        open: &Arc<OpenCount>,
        notifier: &mut Option<Notifier>,
    ) {
        let mut last_warning: Option<Instant> = None;
        while !self.stop.is_requested() {
            if let Some(config) = self.reload.take() {
                if let Some(notifier) = notifier {
                    notifier.reloading();
                }
                self.apply(config, pool);
                if let Some(notifier) = notifier {
                    notifier.ready(&format!("serving on {}", self.local_addr()));
                }
            }
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
        let service = self.current.get();
        service.stats.accepted();
        pool.dispatch(Conn::new(stream, peer, self.last_id, Open::new(open), &service));
    }

    /// Applies a reloaded configuration: a new service for every next step, the pool resized. What needs a
    /// new socket stays as it is, with a warning.
    fn apply(&mut self, mut config: Config, pool: &mut Pool) {
        let old = &self.config;
        let mut kept = Vec::new();
        if config.bind != old.bind && !self.listener.is_inherited() {
            kept.push("bind");
        }
        if config.backlog != old.backlog && !self.listener.is_inherited() {
            kept.push("backlog");
        }
        if config.reuse_port != old.reuse_port {
            kept.push("reuse_port");
        }
        (config.bind, config.backlog, config.reuse_port) = (old.bind, old.backlog, old.reuse_port);
        let changed = changes(old, &config);
        let handler = if self.builtin {
            let builtin = Builtin::from_config(&config);
            self.protocol = builtin.name();
            Arc::new(builtin)
        } else {
            Arc::clone(&self.handler)
        };
        self.current.set(self.current.get().next(&config, handler));
        if let Err(e) = pool.resize(config.workers) {
            warn!("reload: {e}; the pool stays at fewer workers than asked");
        }
        self.gauges.workers.store(config.workers, SeqCst);
        self.config = config;
        if changed.is_empty() {
            info!("reloaded the configuration: nothing changed that the server can apply");
        } else {
            info!("reloaded the configuration: {}", changed.join(", "));
        }
        if !kept.is_empty() {
            warn!("reload: {} need a restart (a new listening socket); kept as they were", kept.join(", "));
        }
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

/// What differs between two configurations, as `key old → new` (replies by name only).
fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut note = |key: &str, before: String, after: String| {
        if before != after {
            changed.push(format!("{key} {before} → {after}"));
        }
    };
    note("workers", old.workers.to_string(), new.workers.to_string());
    note("queue", old.queue.to_string(), new.queue.to_string());
    note("mode", old.mode.to_string(), new.mode.to_string());
    note("max_request", old.max_request.to_string(), new.max_request.to_string());
    note("read_timeout", format!("{:?}", old.read_timeout), format!("{:?}", new.read_timeout));
    note("write_timeout", format!("{:?}", old.write_timeout), format!("{:?}", new.write_timeout));
    note("shutdown_timeout", format!("{:?}", old.shutdown_timeout), format!("{:?}", new.shutdown_timeout));
    note("keep_alive", old.keep_alive.to_string(), new.keep_alive.to_string());
    note("idle_timeout", format!("{:?}", old.idle_timeout), format!("{:?}", new.idle_timeout));
    note("proxy_protocol", old.proxy_protocol.to_string(), new.proxy_protocol.to_string());
    if old.reply != new.reply {
        changed.push("reply".to_owned());
    }
    if old.busy_reply != new.busy_reply {
        changed.push("busy_reply".to_owned());
    }
    changed
}

fn is_transient(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted)
        || error.raw_os_error() == Some(libc::EPROTO)
}
