//! The library's error type. A program that embeds the server can tell a configuration it should fix
//! (`Config`, with the field by name) from a failure of the system (`Bind`, `Io`) and from a stop that ran
//! out of time; the `poolserver` binary maps them to exit codes 2 and 1.

use std::{fmt, io, net::SocketAddr};

use crate::stats::Summary;

/// Why a server could not be made, reloaded or stopped in time. New kinds may come, so a `match` needs a
/// `_` arm.
///
/// ```
/// use poolserver::{Config, Error, Server};
///
/// let mut config = Config::default();
/// config.queue = 0;
/// match Server::bind(config) {
///     Err(Error::Config { field: "queue", reason }) => assert_eq!(reason, "must be at least 1"),
///     Err(other) => panic!("another error: {other}"),
///     Ok(_) => panic!("a queue of 0 was accepted"),
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A field of [`Config`](crate::Config) cannot make a working server.
    Config {
        /// The field, spelled as in `Config`: `"workers"`, `"idle_timeout"`.
        field: &'static str,
        /// Why, in words that follow the field's name: "must be at least 1".
        reason: String,
    },
    /// The listening socket could not be set up on `addr`.
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// The operating system refused something the server needs (a thread, an epoll instance).
    Io {
        /// What the server was doing, as "cannot {what}" reads: "start a worker thread".
        what: &'static str,
        /// What the operating system said.
        source: io::Error,
    },
    /// The drain after a stop signal ran past `shutdown_timeout`; `abandoned` connections were still open.
    ShutdownTimedOut {
        /// Connections still open when the time ran out.
        abandoned: usize,
        /// What the server did before it stopped.
        summary: Summary,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { field, reason } => write!(f, "{field}: {reason}"),
            Error::Bind { addr, source } => write!(f, "cannot bind {addr}: {source}"),
            Error::Io { what, source } => write!(f, "cannot {what}: {source}"),
            Error::ShutdownTimedOut { abandoned, summary } => write!(
                f,
                "shutdown timed out: abandoning {abandoned} open connection{} ({summary})",
                if *abandoned == 1 { "" } else { "s" }
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Io { source, .. } => Some(source),
            Error::Config { .. } | Error::ShutdownTimedOut { .. } => None,
        }
    }
}
