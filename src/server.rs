//! The server: the accept loop that feeds the pool, and the stop that drains it.
//!
//! The main thread blocks in `accept` and hands each connection to the pool: one system call per
//! connection. The accept times out every `ACCEPT_TICK` (SO_RCVTIMEO), so a stop request is seen within that
//! on any listener: loopback, wildcard or IPv6, port 0, inherited from systemd, or shared with other
//! processes through SO_REUSEPORT, where connecting to ourselves to wake the thread could reach another
//! process instead. At `max_connections` the loop waits for a connection to close before it accepts the
//! next (see `limits`); at the stop it takes in the last connections without resetting any (see `stop`).
//! Under systemd, readiness, status and stopping are reported to the service manager.

use std::{
    any::TypeId,
    io,
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
    cidr,
    config::{Config, Framing},
    conn::Conn,
    error::Error,
    handler::{Builtin, Handler, Protocol},
    limits,
    listener::Listener,
    monitor::Monitor,
    pool::Pool,
    service::{Current, Service},
    stats::{Gauges, OpenCount, Summary, Tally},
    stop::{Closing, HALF_OPEN_WAIT},
    sys,
    systemd::{self, Notifier},
};

/// Pause after an accept failure such as running out of file descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At `max_connections`, how long one wait for a connection to close lasts before the loop looks at the
/// stop request again.
const FULL_TICK: Duration = Duration::from_millis(20);

/// A server with its listening socket, ready to `run`.
///
/// Make one with [`Server::bind`] (the built-in protocol `config.mode` names), [`Server::bind_with`] (your
/// [`Handler`]; a closure is one), [`Server::from_listener`] or [`Server::from_systemd`]; every one checks
/// the [`Config`] first. [`Server::run`] serves until a [`ShutdownHandle`] asks it to stop, from any
/// thread, then drains and returns the [`Summary`]:
///
/// ```
/// use std::{io::{Read, Write}, net::TcpStream, thread, time::Duration};
///
/// use poolserver::{Config, Message, Server};
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse()?; // port 0: a free port
/// config.workers = 2;
/// let server = Server::bind_with(config, |m: &Message<'_>| m.bytes().to_ascii_uppercase())?;
/// let addr = server.local_addr();
/// let stop = server.shutdown_handle();
/// let running = thread::spawn(move || server.run());
///
/// // The tutorial's client: connect, send, read the reply until the server closes.
/// let mut client = TcpStream::connect(addr)?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// client.write_all(b"hello")?;
/// let mut reply = Vec::new();
/// client.read_to_end(&mut reply)?;
/// assert_eq!(reply, b"HELLO");
///
/// stop.shutdown(); // from any thread, any number of times
/// let summary = running.join().expect("the server thread")?;
/// assert_eq!((summary.connections, summary.served), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    /// At this many open connections the accept loop waits for one to close.
    max_connections: usize,
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
    /// Asks the server to stop accepting and drain; returns at once. `Server::run` returns when the drain
    /// is over.
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
    /// `reuse_port` are not used. At the stop the server closes it, after taking in every client the kernel
    /// had answered (it attaches a socket filter that drops new SYNs and turns TCP_DEFER_ACCEPT off first).
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
            max_connections: usize::MAX,
            open: Arc::default(),
            gauges: Arc::default(),
            queue,
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// A handle that stops the server from any thread (see the example on [`Server`]).
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
        let fd_limit = sys::fd_limit();
        let max_connections =
            config.max_connections.unwrap_or_else(|| limits::default_max_connections(fd_limit));
        let per_client = config.max_per_client.map(|n| format!(", max per client {n}")).unwrap_or_default();
        let framing = match config.framing {
            Framing::Raw => String::new(),
            framing => format!(", {framing} framing"),
        };
        let fds = fd_limit.map_or_else(|| "no fd limit".to_owned(), |n| format!("fd limit {n}"));
        info!(
            "listening on {addr} (workers {}, queue {}, {socket}, {}{framing}{conversations}, max \
             connections {max_connections}{per_client}, {fds})",
            config.workers, config.queue, self.protocol
        );
        if let Some(limit) = fd_limit
            && max_connections as u64 > limit
        {
            warn!(
                "max_connections {max_connections} is above the fd limit {limit}: accepts will fail with \
                 'Too many open files' before the cap is reached; raise the limit (ulimit -n, LimitNOFILE=) \
                 or lower max_connections"
            );
        }
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
        self.max_connections = max_connections;
        self.accept_until_stopped(&mut pool, &open, &mut notifier);
        // Logged here, where the stop is acted on, so it always comes before the `stopping:` line.
        info!("stop requested: finishing open connections");
        if let Some(notifier) = &notifier {
            notifier.stopping(&format!("stopping: draining {} open connections", pool.open_connections()));
        }
        let stop_began = Instant::now();
        pool.begin_stop();
        let inherited = self.listener.is_inherited();
        if !inherited {
            self.take_in_the_last(&pool, &open, self.max_connections);
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
        pool.shutdown(config.shutdown_timeout.saturating_sub(stop_began.elapsed()))
            .map_err(|(abandoned, summary)| Error::ShutdownTimedOut { abandoned, summary })
    }

    fn accept_until_stopped(
        &mut self,
        pool: &mut Pool,
        open: &Arc<OpenCount>,
        notifier: &mut Option<Notifier>,
    ) {
        let mut last_warning: Option<Instant> = None;
        let mut last_full: Option<Instant> = None;
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
            // At the cap, clients wait whole in the listen backlog until a connection closes.
            let max_connections = self.max_connections;
            if open.get() >= max_connections {
                if last_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    warn!(
                        "{max_connections} connections open (max_connections): accepting again when one \
                         closes; new clients wait in the listen backlog"
                    );
                    last_full = Some(Instant::now());
                }
                open.wait_below(max_connections, FULL_TICK);
                continue;
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
        let tally = Tally::new(open, &service.stats);
        pool.dispatch(Conn::new(stream, peer, self.last_id, tally, &service), &service);
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
        self.max_connections =
            config.max_connections.unwrap_or_else(|| limits::default_max_connections(sys::fd_limit()));
        if let Err(e) = pool.resize(config.workers) {
            warn!("reload: {e}; the pool stays at fewer workers than asked");
        }
        self.gauges.workers.store(config.workers, SeqCst);
        self.config = config;
        if changed.is_empty() {
            info!("reloaded the configuration: no server setting changed");
        } else {
            info!("reloaded the configuration: {}", changed.join(", "));
        }
        if !kept.is_empty() {
            warn!("reload: {} need a restart (a new listening socket); kept as they were", kept.join(", "));
        }
    }

    /// Takes in every connection the kernel had answered when the stop came, queued or half-open, so that
    /// none is reset when the listener closes (see `stop`), within `HALF_OPEN_WAIT` and the shutdown
    /// timeout, and still under `max_connections`.
    fn take_in_the_last(&mut self, pool: &Pool, open: &Arc<OpenCount>, max_connections: usize) {
        let addr = self.local_addr();
        let mut closing = Closing::begin(&self.listener, HALF_OPEN_WAIT.min(self.config.shutdown_timeout));
        loop {
            if open.get() >= max_connections {
                if !closing.anything_left(&self.listener) {
                    return;
                }
                if Instant::now() >= closing.deadline() {
                    warn!(
                        "{max_connections} connections open (max_connections) at the stop: clients still \
                         queued or half-open on {addr} are reset"
                    );
                    return;
                }
                open.wait_below(max_connections, FULL_TICK);
                continue;
            }
            match closing.next(&self.listener) {
                Some(Ok((stream, peer))) => self.dispatch(pool, open, stream, peer),
                Some(Err(e)) if is_transient(&e) => {}
                Some(Err(e)) => {
                    warn!("cannot take in the last connections on {addr}: {e}; those left are reset");
                    return;
                }
                None => return,
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
    note("framing", old.framing.to_string(), new.framing.to_string());
    note("read_timeout", format!("{:?}", old.read_timeout), format!("{:?}", new.read_timeout));
    note("write_timeout", format!("{:?}", old.write_timeout), format!("{:?}", new.write_timeout));
    note("shutdown_timeout", format!("{:?}", old.shutdown_timeout), format!("{:?}", new.shutdown_timeout));
    note("keep_alive", old.keep_alive.to_string(), new.keep_alive.to_string());
    note("idle_timeout", format!("{:?}", old.idle_timeout), format!("{:?}", new.idle_timeout));
    note("max_messages", old.max_messages.to_string(), new.max_messages.to_string());
    note("max_conversation", format!("{:?}", old.max_conversation), format!("{:?}", new.max_conversation));
    note("log_each_message", old.log_each_message.to_string(), new.log_each_message.to_string());
    note("proxy_protocol", old.proxy_protocol.to_string(), new.proxy_protocol.to_string());
    note("proxy_from", cidr::describe(old.proxy_from.as_deref()), cidr::describe(new.proxy_from.as_deref()));
    let limit = |n: Option<usize>| n.map_or_else(|| "default".to_owned(), |n| n.to_string());
    note("max_connections", limit(old.max_connections), limit(new.max_connections));
    note("max_per_client", limit(old.max_per_client), limit(new.max_per_client));
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
