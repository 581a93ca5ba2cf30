//! The tutorial's client, as `poolserver send` and as the unit of work of `poolserver stress`: connect, send
//! the message, receive until the server closes, close. Every step is bounded in time and the reply in size,
//! and a failure says which step failed and how, in words a load report can count.

use crate::cli::SendArgs;
use std::{
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// What went wrong, as counted by `poolserver stress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Nobody listens at the address.
    Refused,
    /// The server reset the connection.
    Reset,
    /// A step took longer than the timeout.
    Timeout,
    /// The server closed without replying, or sent too much.
    WrongReply,
    /// The server answered with its busy reply.
    Busy,
    /// No local port or address was free for the connection (too many in TIME_WAIT, say).
    AddrNotAvailable,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::WrongReply => "wrong_reply",
            FailureKind::Busy => "busy",
            FailureKind::AddrNotAvailable => "addr_not_available",
            FailureKind::Other => "other",
        }
    }

    fn of(error: &io::Error) -> FailureKind {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                FailureKind::Reset
            }
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::Timeout,
            io::ErrorKind::AddrNotAvailable => FailureKind::AddrNotAvailable,
            _ => FailureKind::Other,
        }
    }
}

/// A failed exchange: the kind, and a one-line description of the step and the cause.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Failure {}

/// One exchange with a server.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub addr: SocketAddr,
    /// Bounds the connect, each read and write, and the whole exchange (twice this).
    pub timeout: Duration,
    /// Replies longer than this are a failure rather than a memory hazard.
    pub max_reply: usize,
}

impl Exchange {
    /// Sends `message` and reads the reply into `reply` (cleared first) until the server closes.
    pub fn run(&self, message: &[u8], reply: &mut Vec<u8>) -> Result<(), Failure> {
        reply.clear();
        let started = Instant::now();
        let fail = |step: &str, e: io::Error| Failure {
            kind: FailureKind::of(&e),
            detail: format!("{step} {}: {}", self.addr, describe(&e)),
        };
        let mut stream =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| fail("cannot connect to", e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| fail("cannot configure the socket for", e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| fail("cannot configure the socket for", e))?;
        stream.write_all(message).map_err(|e| fail("cannot send to", e))?;

        let mut chunk = [0; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).map_err(|e| fail("no complete reply from", e))?;
            if n == 0 {
                break;
            }
            if reply.len() + n > self.max_reply {
                return Err(Failure {
                    kind: FailureKind::WrongReply,
                    detail: format!("reply from {} is longer than {} bytes", self.addr, self.max_reply),
                });
            }
            reply.extend_from_slice(&chunk[..n]);
            if started.elapsed() > 2 * self.timeout {
                return Err(Failure {
                    kind: FailureKind::Timeout,
                    detail: format!("reply from {} took longer than {:?}", self.addr, 2 * self.timeout),
                });
            }
        }
        if reply.is_empty() {
            return Err(Failure {
                kind: FailureKind::WrongReply,
                detail: format!("{} closed the connection without replying", self.addr),
            });
        }
        Ok(())
    }
}

/// Largest message `send` reads from standard input, and largest reply it accepts.
const SEND_LIMIT: usize = 256 << 20;

/// `poolserver send`: one exchange, the message from the arguments or (`-`) from `input`, the reply to
/// `output` exactly as received. The error is one line for stderr.
pub fn send(args: &SendArgs, input: &mut impl Read, output: &mut impl Write) -> Result<(), String> {
    let message = if args.message == "-" {
        let mut bytes = Vec::new();
        input
            .take(SEND_LIMIT as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the message from standard input: {e}"))?;
        bytes
    } else {
        args.message.clone().into_bytes()
    };
    let exchange = Exchange { addr: args.addr, timeout: args.timeout, max_reply: SEND_LIMIT };
    let mut reply = Vec::new();
    exchange.run(&message, &mut reply).map_err(|failure| failure.detail)?;
    output.write_all(&reply).and_then(|()| output.flush()).map_err(|e| format!("cannot write the reply: {e}"))
}

/// `Resource temporarily unavailable` is what a socket read timeout looks like; say what it means.
fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => error.to_string(),
    }
}
