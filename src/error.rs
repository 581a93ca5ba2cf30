//! The library's error type. The binary maps it to exit codes: `Config` is a usage error (2), the rest are
//! runtime failures (1).

use std::{fmt, io, net::SocketAddr};

use crate::stats::Summary;

#[derive(Debug)]
pub enum Error {
    /// A flag, variable, key or file is wrong; the message says which and why.
    Config(String),
    /// The listening socket could not be set up on `addr`.
    Bind { addr: SocketAddr, source: io::Error },
    /// The operating system refused something the server needs (a thread, an epoll instance).
    Io { what: &'static str, source: io::Error },
    /// The drain after a stop signal ran past `shutdown_timeout`; `abandoned` connections were still open.
    ShutdownTimedOut { abandoned: usize, summary: Summary },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(message) => f.write_str(message),
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
            Error::Config(_) | Error::ShutdownTimedOut { .. } => None,
        }
    }
}
