//! The tutorial's clients, as `poolserver send` and as the units of work of `poolserver stress`: the
//! single-client tutorial's exchange (connect, send, receive until the server closes, close) and the
//! multitasking tutorial's conversation (connect; send and receive, again and again; close). Every step is
//! bounded in time and the reply in size, and a failure says which step failed and how, in words a load
//! report can count.
//!
//! With `--framing line|length` a message and its reply have edges, so a conversation needs no guessing:
//! each reply is read to its end (`Conversation::ask_framed`), and `stress --pipeline K` keeps K messages
//! in flight on one connection.
//!
//! A client in the wrong mode is told so, not left to time out: a one-shot exchange whose server goes
//! quiet after a reply without closing is talking to a `--keep-alive` server (`KeptOpen`), and a
//! conversation the server closes after a reply is talking to a one-shot server (`CutShort`).

use crate::{
    cli::SendArgs,
    tls_client::{Link, TlsClient},
};
use poolserver::{Decoded, Framing};
use std::{
    fmt,
    io::{self, BufRead, Read, Write},
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
    /// A one-shot exchange got its reply, and then the server kept the connection open: it holds
    /// conversations (`--keep-alive`).
    KeptOpen,
    /// A conversation got one reply, and then the server closed it: it answers one message per
    /// connection (no `--keep-alive`).
    CutShort,
    /// A conversation got two replies or more, and then the server closed it before its last message: a
    /// cap (`max_messages`, `max_conversation`), its handler, or its stop ended it.
    Ended,
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
            FailureKind::KeptOpen => "kept_open",
            FailureKind::CutShort => "cut_short",
            FailureKind::Ended => "ended",
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

/// After the first bytes of a reply, how long `send` waits for more (or for the close) before it takes the
/// reply as whole and the server as one that keeps connections open. A server that closes after its reply
/// sends the FIN right behind it; a person should not wait long for what they came for.
const SEND_QUIET: Duration = Duration::from_secs(1);

/// One exchange with a server.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub addr: SocketAddr,
    /// Bounds the connect, each read and write, and the whole exchange (twice this).
    pub timeout: Duration,
    /// Replies longer than this are a failure rather than a memory hazard.
    pub max_reply: usize,
    /// After the first bytes of the reply, how long a silence (no more bytes, no close) may last before
    /// the server is taken for one that keeps the connection open (`KeptOpen`). At most `timeout`.
    pub quiet: Duration,
    /// Over TLS, with whom and how.
    pub tls: Option<TlsClient>,
}

impl Exchange {
    /// Sends `message` and reads the reply into `reply` (cleared first) until the server closes. A server
    /// that sends a reply and then stays quiet for `quiet` without closing is a `KeptOpen` failure, with the
    /// reply in `reply`.
    pub fn run(&self, message: &[u8], reply: &mut Vec<u8>) -> Result<(), Failure> {
        reply.clear();
        let started = Instant::now();
        let fail = |step: &str, e: io::Error| Failure {
            kind: FailureKind::of(&e),
            detail: format!("{step} {}: {}", self.addr, describe(&e)),
        };
        let tcp =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| fail("cannot connect to", e))?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(|e| fail("cannot configure the socket for", e))?;
        tcp.set_write_timeout(Some(self.timeout)).map_err(|e| fail("cannot configure the socket for", e))?;
        let mut stream = Link::new(tcp, self.tls.as_ref()).map_err(|e| fail("cannot start TLS with", e))?;
        stream.write_all(message).and_then(|()| stream.flush()).map_err(|e| fail("cannot send to", e))?;

        let mut chunk = [0; 16 * 1024];
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if !reply.is_empty() && is_timeout(&e) => {
                    return Err(Failure {
                        kind: FailureKind::KeptOpen,
                        detail: format!(
                            "{} sent a reply and kept the connection open: it holds conversations (--keep-alive)",
                            self.addr
                        ),
                    });
                }
                Err(e) => return Err(fail("no complete reply from", e)),
            };
            if n == 0 {
                break;
            }
            if reply.is_empty() {
                stream
                    .tcp()
                    .set_read_timeout(Some(self.quiet.min(self.timeout)))
                    .map_err(|e| fail("cannot configure the socket for", e))?;
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

/// One conversation with a keep-alive server: every message gets one reply on the same connection.
pub struct Conversation {
    stream: Link,
    addr: SocketAddr,
    /// Replies received so far.
    replies: u64,
    /// With framing: bytes read past the last reply taken (the start of the next).
    inbox: Vec<u8>,
}

impl Conversation {
    /// Connects, with `timeout` bounding the connect and every later read and write; over TLS when `tls`
    /// says so.
    pub fn open(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&TlsClient>,
    ) -> Result<Conversation, Failure> {
        let fail = |step: &str, e: io::Error| Failure {
            kind: FailureKind::of(&e),
            detail: format!("{step} {addr}: {}", describe(&e)),
        };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("cannot connect to", e))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| fail("cannot configure the socket for", e))?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| fail("cannot configure the socket for", e))?;
        // Lockstep messages are small: send each at once rather than wait for the previous reply's ACK.
        stream.set_nodelay(true).map_err(|e| fail("cannot configure the socket for", e))?;
        let stream = Link::new(stream, tls).map_err(|e| fail("cannot start TLS with", e))?;
        Ok(Conversation { stream, addr, replies: 0, inbox: Vec::new() })
    }

    /// Sends `message` and reads its reply into `reply` (cleared first): `expected` bytes, or fewer when
    /// the server closes first (a busy reply, say).
    pub fn ask(&mut self, message: &[u8], expected: usize, reply: &mut Vec<u8>) -> Result<(), Failure> {
        reply.clear();
        self.stream
            .write_all(message)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.fail("cannot send to", &e))?;
        reply.resize(expected, 0);
        let mut got = 0;
        while got < expected {
            match self.stream.read(&mut reply[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail("no complete reply from", &e)),
            }
        }
        reply.truncate(got);
        if got == 0 {
            return Err(self.closed());
        }
        self.replies += 1;
        Ok(())
    }

    /// With framing: sends `message` with its edge and reads one whole reply, without its edge, into
    /// `reply` (cleared first). A reply longer than `max_reply` is a failure.
    pub fn ask_framed(
        &mut self,
        framing: Framing,
        message: &[u8],
        max_reply: usize,
        reply: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        reply.clear();
        let mut wire = Vec::with_capacity(message.len() + 4);
        framing.encode(message, &mut wire);
        self.send(&wire)?;
        loop {
            match framing.decode(&self.inbox, max_reply) {
                Decoded::Message { message, consumed } => {
                    reply.extend_from_slice(&self.inbox[message]);
                    self.inbox.drain(..consumed);
                    self.replies += 1;
                    return Ok(());
                }
                Decoded::TooLong(_) => {
                    return Err(Failure {
                        kind: FailureKind::WrongReply,
                        detail: format!("reply from {} is longer than {max_reply} bytes", self.addr),
                    });
                }
                Decoded::NeedMore => {}
            }
            let mut inbox = std::mem::take(&mut self.inbox);
            let n = self.receive(&mut inbox);
            self.inbox = inbox;
            match n? {
                0 if self.inbox.is_empty() => return Err(self.closed()),
                0 => {
                    return Err(Failure {
                        kind: FailureKind::WrongReply,
                        detail: format!("{} closed the connection in the middle of a reply", self.addr),
                    });
                }
                _ => {}
            }
        }
    }

    /// Sends bytes as they are (messages already framed, say).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.write_all(bytes).map_err(|e| self.fail("cannot send to", &e))
    }

    /// Appends what one read brings to `into`; 0 when the server has closed.
    pub fn receive(&mut self, into: &mut Vec<u8>) -> Result<usize, Failure> {
        let mut chunk = [0; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    into.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail("no complete reply from", &e)),
            }
        }
    }

    /// Counts replies taken by the caller (with `send` and `receive`), for the failure when the server
    /// closes.
    pub fn count_replies(&mut self, n: u64) {
        self.replies += n;
    }

    /// The server closed before replying: at the start, a wrong reply; after one reply, a server that
    /// does not hold conversations; after more, one that ended this conversation early.
    pub fn closed(&self) -> Failure {
        match self.replies {
            0 => Failure {
                kind: FailureKind::WrongReply,
                detail: format!("{} closed the conversation without replying", self.addr),
            },
            1 => Failure {
                kind: FailureKind::CutShort,
                detail: format!(
                    "{} closed the conversation after 1 reply: it answers one message per connection (it runs \
                     without --keep-alive)",
                    self.addr
                ),
            },
            n => Failure {
                kind: FailureKind::Ended,
                detail: format!(
                    "{} ended the conversation after {n} replies: a cap (max_messages, max_conversation), its \
                     handler or its stop",
                    self.addr
                ),
            },
        }
    }

    /// Sends one message and returns what one read brings back, as the tutorial's `recv` does: a reply
    /// longer than one read, or two replies at once, come back as they arrive.
    pub fn ask_once(&mut self, message: &[u8], reply: &mut Vec<u8>) -> Result<(), Failure> {
        self.stream
            .write_all(message)
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.fail("cannot send to", &e))?;
        let mut chunk = [0; 64 * 1024];
        let n = self.stream.read(&mut chunk).map_err(|e| match e.kind() {
            // A one-shot server that closed just as this message arrived resets instead of sending its
            // FIN (Linux resets a close with unread input): after a reply, that too is the server ending
            // the conversation, not a failure of its own.
            io::ErrorKind::ConnectionReset if self.replies > 0 => self.closed(),
            _ => self.fail("no reply from", &e),
        })?;
        if n == 0 {
            return Err(self.closed());
        }
        self.replies += 1;
        reply.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Ends the conversation as a polite client does: our side closes, and the server must close its side
    /// cleanly (no reset) without sending anything more. Returns anything it did send.
    pub fn close(mut self) -> Result<Vec<u8>, Failure> {
        self.stream.shutdown_write();
        let mut rest = Vec::new();
        (&mut self.stream)
            .take(SEND_LIMIT as u64)
            .read_to_end(&mut rest)
            .map_err(|e| self.fail("no clean close from", &e))?;
        Ok(rest)
    }

    fn fail(&self, step: &str, e: &io::Error) -> Failure {
        Failure { kind: FailureKind::of(e), detail: format!("{step} {}: {}", self.addr, describe(e)) }
    }
}

/// Largest message `send` reads from standard input, and largest reply it accepts.
const SEND_LIMIT: usize = 256 << 20;

/// `poolserver send`: one exchange, the message from the arguments or (`-`) from `input`, the reply to
/// `output` exactly as received. The error is one line for stderr.
pub fn send(args: &SendArgs, input: &mut impl BufRead, output: &mut impl Write) -> Result<(), String> {
    if let Some(framing) = args.framing.map(Framing::from).filter(|&f| f != Framing::Raw) {
        return converse_framed(args, framing, input, output);
    }
    if args.keep_alive {
        return converse(args, input, output);
    }
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
    let tls = TlsClient::from_args(&args.tls, args.addr)?;
    let exchange =
        Exchange { addr: args.addr, timeout: args.timeout, max_reply: SEND_LIMIT, quiet: SEND_QUIET, tls };
    let mut reply = Vec::new();
    let kept_open = match exchange.run(&message, &mut reply) {
        Ok(()) => None,
        // The reply is whole; the server is only in the other mode.
        Err(failure) if failure.kind == FailureKind::KeptOpen => Some(failure.detail),
        Err(failure) => return Err(failure.detail),
    };
    output
        .write_all(&reply)
        .and_then(|()| output.flush())
        .map_err(|e| format!("cannot write the reply: {e}"))?;
    if let Some(detail) = kept_open {
        eprintln!("poolserver send: {detail}; to hold a conversation, use 'poolserver send --keep-alive'");
    }
    Ok(())
}

/// `poolserver send --keep-alive`: one conversation, one message per argument or (`-`) per line of `input`,
/// each reply written to `output` as it comes, then a clean close.
fn converse(args: &SendArgs, input: &mut impl BufRead, output: &mut impl Write) -> Result<(), String> {
    let tls = TlsClient::from_args(&args.tls, args.addr)?;
    let mut conversation = Conversation::open(args.addr, args.timeout, tls.as_ref()).map_err(|f| f.detail)?;
    let mut reply = Vec::new();
    for_each_message(&args.message, input, |message| {
        reply.clear();
        conversation.ask_once(message, &mut reply).map_err(|f| match f.kind {
            FailureKind::CutShort => format!("{}; send without --keep-alive", f.detail),
            _ => f.detail,
        })?;
        output
            .write_all(&reply)
            .and_then(|()| output.flush())
            .map_err(|e| format!("cannot write the reply: {e}"))
    })?;
    let rest = conversation.close().map_err(|f| f.detail)?;
    output.write_all(&rest).and_then(|()| output.flush()).map_err(|e| format!("cannot write the reply: {e}"))
}

/// `poolserver send --framing line|length`: one conversation, one message per argument or (`-`) per line of
/// `input` (without its line end), sent with its edge; each reply, without its edge, is printed on a line
/// of its own as it comes; then a clean close. A one-shot server answers the first message only, and the
/// second one says so.
fn converse_framed(
    args: &SendArgs,
    framing: Framing,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> Result<(), String> {
    let tls = TlsClient::from_args(&args.tls, args.addr)?;
    let mut conversation = Conversation::open(args.addr, args.timeout, tls.as_ref()).map_err(|f| f.detail)?;
    let mut reply = Vec::new();
    for_each_message(&args.message, input, |message| {
        let message = message.strip_suffix(b"\n").unwrap_or(message);
        let message = message.strip_suffix(b"\r").unwrap_or(message);
        conversation.ask_framed(framing, message, SEND_LIMIT, &mut reply).map_err(|f| match f.kind {
            FailureKind::CutShort => format!("{}; give one message per connection", f.detail),
            _ => f.detail,
        })?;
        output
            .write_all(&reply)
            .and_then(|()| output.write_all(b"\n"))
            .and_then(|()| output.flush())
            .map_err(|e| format!("cannot write the reply: {e}"))
    })?;
    // A one-shot server closes after its reply: that is no error here.
    let _ = conversation.close();
    Ok(())
}

/// The messages `send` was given, one by one to `say`: `message`, or when it is `-`, each line of `input`
/// as it is read (its line end kept, at most `SEND_LIMIT` bytes), so that a reply comes before the next
/// line is typed.
fn for_each_message(
    message: &str,
    input: &mut impl BufRead,
    mut say: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    if message != "-" {
        return say(message.as_bytes());
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .take(SEND_LIMIT as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read a message from standard input: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        say(&line)?;
    }
}

/// Whether a socket read or write ran out of time (a timeout shows as `WouldBlock` on Linux).
fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `Resource temporarily unavailable` is what a socket read timeout looks like; say what it means.
fn describe(error: &io::Error) -> String {
    if is_timeout(error) { "timed out".to_owned() } else { error.to_string() }
}
