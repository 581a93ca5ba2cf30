//! The server's configuration as the library takes it: plain values with defaults, checked once at the door.
//!
//! Where the values come from (flags, environment, a file) is the binary's business; the library only
//! insists that what it is given makes a working server. `Server::bind*` and `Server::from_listener` call
//! [`Config::validate`], so a zero worker count or a zero-byte request buffer is an error at startup, not a
//! server that turns everyone away.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

pub use crate::limits::MAX_CONNECTIONS_LIMIT;
use crate::{cidr::Cidr, error::Error};

// Every default and every limit lives here, once: `Config::default()` and `Config::validate` use them, the
// binary's `--help`, `--check` and man page print them, and `tests/defaults.rs` holds the sample config and
// the docs to them.

/// The tutorial's address: this machine only, port 8000.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);

/// The tutorial's reply: "message received".
pub const DEFAULT_REPLY: &str = "信息已收到";
/// Sent when every worker is busy and the queue is full: "server busy".
pub const DEFAULT_BUSY_REPLY: &str = "服务器繁忙";
/// The tutorial's `recv(1024)`.
pub const DEFAULT_MAX_REQUEST: usize = 1024;
/// Large enough that bursts of a few hundred clients wait in line instead of being turned away.
pub const DEFAULT_QUEUE: usize = 1024;
/// Well above the 128 that std and most tutorials use: at 128 a burst of clients overflows the kernel's
/// accept queue and each dropped SYN costs its client a one-second retransmit. Under a flood of silent
/// clients (SYN cookies) an overflow is worse: the handshake of a client that then stays silent is lost
/// without the server ever seeing it. 4096 is Linux's default `net.core.somaxconn`, which caps it anyway.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// How long a conversation may sit silent between messages before the server closes it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages one conversation may have before the server closes it after the reply: nginx's
/// `keepalive_requests`. Without a cap, a client that sends a byte now and then holds its connection for ever.
pub const DEFAULT_MAX_MESSAGES: usize = 1000;
/// How long one conversation may last before the server closes it after a reply: nginx's `keepalive_time`.
pub const DEFAULT_MAX_CONVERSATION: Duration = Duration::from_secs(3600);
/// How long a new client may take to send its first message.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one whole reply may take.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stop waits for open connections.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request buffer allowed; every worker owns one of this size.
pub const MAX_REQUEST_LIMIT: usize = 16 << 20;
/// The largest `max_messages`; far past any real conversation, and still a cap.
pub const MAX_MESSAGES_LIMIT: usize = 1 << 30;
/// The most worker threads; far past what a machine runs well, short of what it cannot start.
pub const MAX_WORKERS: usize = 1024;
/// The most queue places. The queue is a channel without a bound of its own; its length is checked against
/// `queue` at each send, so that a reload can change the limit.
pub const MAX_QUEUE: usize = 1 << 16;
/// The largest listen backlog the kernel's interface takes.
pub const MAX_BACKLOG: u32 = i32::MAX as u32;
/// The longest timeout; beyond it a deadline stops meaning anything.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// What the built-in protocols answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Reply with the configured text, whatever the message.
    #[default]
    Ack,
    /// Reply with the message's bytes.
    Echo,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Ack => "ack",
            Mode::Echo => "echo",
        })
    }
}

/// Where one message ends and the next begins on a connection's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// A message is whatever one read brings, at most `max_request` bytes (the tutorial's `recv(1024)`):
    /// two messages sent close together may arrive as one, and a long one split by the network as two.
    #[default]
    Raw,
    /// A message ends at `\n` (a `\r` before it is dropped too); each reply is sent followed by `\n`.
    Line,
    /// Each message and each reply is preceded by its length, a 4-byte big-endian unsigned integer (the
    /// default layout of tokio-util's `LengthDelimitedCodec`).
    Length,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Raw => "raw",
            Framing::Line => "line",
            Framing::Length => "length",
        })
    }
}

/// Everything a server needs. Start from `Config::default()` and change what you need; new fields will
/// come with defaults, so the struct is `#[non_exhaustive]`. [`Config::validate`] (which every
/// `Server` constructor calls) names the first field that cannot work.
///
/// ```
/// use std::time::Duration;
///
/// use poolserver::{Config, Error};
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse().unwrap();
/// config.workers = 2;
/// config.keep_alive = true;
/// config.idle_timeout = Duration::from_secs(30);
/// config.validate()?;
///
/// config.workers = 0;
/// match config.validate() {
///     Err(Error::Config { field, reason }) => {
///         assert_eq!(field, "workers");
///         assert_eq!(reason, "must be at least 1");
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where `Server::bind` listens.
    pub bind: SocketAddr,
    /// Worker threads: how many messages are answered at once.
    pub workers: usize,
    /// Connections with a message in hand that may wait for a free worker before clients get `busy_reply`.
    pub queue: usize,
    /// The listen backlog: connections the kernel completes and holds before the server accepts them.
    pub backlog: u32,
    /// The built-in protocol `Server::bind` serves; a custom handler ignores it and `reply`.
    pub mode: Mode,
    /// What `Mode::Ack` answers, sent as UTF-8 without a newline.
    pub reply: String,
    /// What a client gets when every worker is busy and the queue is full, or past `max_per_client`.
    pub busy_reply: String,
    /// The longest message: with `Framing::Raw`, the most bytes one read takes; with `Line` or `Length`, the
    /// most bytes of one message without its edge (a longer one, or a longer length prefix, ends the
    /// conversation).
    pub max_request: usize,
    /// Where messages end: `Raw` (one read is one message), `Line` or `Length`. A reload applies it to new
    /// connections; an open one keeps the framing it started with.
    pub framing: Framing,
    /// How long a client may take to send its first message, counted from when it connected.
    pub read_timeout: Duration,
    /// How long writing one whole reply may take.
    pub write_timeout: Duration,
    /// How long a stop may wait for open connections before abandoning them.
    pub shutdown_timeout: Duration,
    /// Keep the connection after a reply and answer every message until the client hangs up.
    pub keep_alive: bool,
    /// With `keep_alive`: how long a conversation may be silent after a reply before it is closed.
    pub idle_timeout: Duration,
    /// With `keep_alive`: the most messages one conversation is answered; the reply to the last one is
    /// followed by a close (a FIN), and the connection counts as served.
    pub max_messages: usize,
    /// With `keep_alive`: how long one conversation may last, counted from when it was accepted; the first
    /// reply after it is followed by a close (a FIN), and the connection counts as served.
    pub max_conversation: Duration,
    /// With `keep_alive`: an access line for every message answered, besides the one for the conversation
    /// as a whole. Off, a conversation is one line however many messages it holds, as a one-shot connection
    /// is: the log grows with connections, not with what each client sends.
    pub log_each_message: bool,
    /// SO_REUSEPORT on the listener, so several processes can serve one port.
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the peers (load balancers) whose PROXY headers are believed. A connection from
    /// any other peer is refused: closed without a reply and counted as an error. `None`: every peer's
    /// header is believed, so anyone who reaches the port can claim any client address. Without
    /// `proxy_protocol` no header is read, and this has no effect.
    pub proxy_from: Option<Vec<Cidr>>,
    /// The most connections open at once: queued, on a worker, or waiting. At the cap the server accepts
    /// no more until one closes, and new clients wait in the listen backlog. `None`: the soft limit on file
    /// descriptors when the server starts, less 64 for the server's own files (half the limit below 128).
    pub max_connections: Option<usize>,
    /// The most connections open at once from one client address (with `proxy_protocol`, the address the
    /// header names); a connection past it gets `busy_reply` when its message arrives. `None`: no limit.
    pub max_per_client: Option<usize>,
    /// Serve every connection over TLS with this certificate and key (the `tls` feature). The handshake
    /// waits in the waiting room like a message, within `read_timeout` of the connect. `None`: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: DEFAULT_BIND,
            workers: num_cpus::get(),
            queue: DEFAULT_QUEUE,
            backlog: DEFAULT_BACKLOG,
            mode: Mode::Ack,
            reply: DEFAULT_REPLY.to_owned(),
            busy_reply: DEFAULT_BUSY_REPLY.to_owned(),
            max_request: DEFAULT_MAX_REQUEST,
            framing: Framing::Raw,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            keep_alive: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_conversation: DEFAULT_MAX_CONVERSATION,
            log_each_message: false,
            reuse_port: false,
            proxy_protocol: false,
            proxy_from: None,
            max_connections: None,
            max_per_client: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl Config {
    /// Checks every value; the error ([`Error::Config`]) names the first field that cannot work and why.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if let Err(why) = check_count(self.workers, MAX_WORKERS) {
            return bad("workers", why);
        }
        if let Err(why) = check_count(self.queue, MAX_QUEUE) {
            return bad("queue", why);
        }
        if let Err(why) = check_count(self.backlog as usize, MAX_BACKLOG as usize) {
            return bad("backlog", why);
        }
        if let Err(why) = check_count(self.max_request, MAX_REQUEST_LIMIT) {
            return bad("max_request", why);
        }
        if let Err(why) = check_count(self.max_messages, MAX_MESSAGES_LIMIT) {
            return bad("max_messages", why);
        }
        for (field, value) in
            [("max_connections", self.max_connections), ("max_per_client", self.max_per_client)]
        {
            if let Some(Err(why)) = value.map(|n| check_count(n, MAX_CONNECTIONS_LIMIT)) {
                return bad(field, why);
            }
        }
        for (field, value) in [
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("idle_timeout", self.idle_timeout),
            ("max_conversation", self.max_conversation),
        ] {
            if let Err(why) = check_duration(value) {
                return bad(field, why);
            }
        }
        if self.proxy_from.as_ref().is_some_and(Vec::is_empty) {
            return bad("proxy_from", "must name at least one address range".to_owned());
        }
        if self.reply.is_empty() {
            return bad(
                "reply",
                "must not be empty: a client could not tell an empty reply from a close".to_owned(),
            );
        }
        if self.busy_reply.is_empty() {
            return bad(
                "busy_reply",
                "must not be empty: a client could not tell an empty reply from a close".to_owned(),
            );
        }
        Ok(())
    }
}

/// A count from 1 to `max`.
fn check_count(n: usize, max: usize) -> Result<usize, String> {
    match n {
        0 => Err("must be at least 1".to_owned()),
        n if n > max => Err(format!("must be at most {max}")),
        n => Ok(n),
    }
}

/// A duration longer than zero and at most `MAX_DURATION`.
fn check_duration(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be longer than zero".to_owned())
    } else if d > MAX_DURATION {
        Err(format!("must be at most {}h", MAX_DURATION.as_secs() / 3600))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_config_that_cannot_serve_is_refused_by_name() {
        let refused = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.validate().unwrap_err().to_string()
        };
        assert_eq!(refused(|c| c.workers = 0), "workers: must be at least 1");
        assert_eq!(refused(|c| c.max_request = 0), "max_request: must be at least 1");
        assert_eq!(refused(|c| c.queue = MAX_QUEUE + 1), "queue: must be at most 65536");
        assert_eq!(refused(|c| c.idle_timeout = Duration::ZERO), "idle_timeout: must be longer than zero");
        assert_eq!(refused(|c| c.max_messages = 0), "max_messages: must be at least 1");
        assert_eq!(
            refused(|c| c.max_messages = MAX_MESSAGES_LIMIT + 1),
            "max_messages: must be at most 1073741824"
        );
        assert_eq!(
            refused(|c| c.max_conversation = Duration::ZERO),
            "max_conversation: must be longer than zero"
        );
        assert_eq!(
            refused(|c| c.max_conversation = MAX_DURATION + Duration::from_secs(1)),
            "max_conversation: must be at most 24h"
        );
        assert!(refused(|c| c.reply.clear()).starts_with("reply: must not be empty"));
        assert_eq!(refused(|c| c.max_connections = Some(0)), "max_connections: must be at least 1");
        assert_eq!(refused(|c| c.max_per_client = Some(0)), "max_per_client: must be at least 1");
        assert_eq!(
            refused(|c| c.proxy_from = Some(Vec::new())),
            "proxy_from: must name at least one address range"
        );
    }
}
