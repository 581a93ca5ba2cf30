//! One connection, from its request to its close: read once, reply, and close without resetting the client.
//!
//! Sockets here are non-blocking. A request that has not arrived yet is not waited for on a worker: the
//! connection goes to the waiting room and comes back when it is readable. The reply is written completely,
//! bounded by `write_timeout`. Closing a socket with unread input makes Linux send a reset, which can destroy
//! the reply before the client reads it, so when input is left over we shut down our side and let the waiting
//! room read and discard the rest (bounded in bytes and time) before the close.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use log::{info, warn};

use crate::{
    pool::Shared,
    preview::Preview,
    proxy::{self, HeaderRead},
    stats::Ending,
    sys,
    waiting::Wait,
};

/// Input discarded after the reply before we close anyway (and the client may see a reset).
pub(crate) const LEFTOVER_LIMIT: usize = 4 << 20;
/// How long a worker waits for the request of a connection that arrived without one, before it hands the
/// connection to the waiting room. A client that sends right after connecting makes it; a silent one costs
/// a worker this much once.
const FIRST_READ_GRACE: Duration = Duration::from_millis(1);

/// An accepted connection on its way through the pool. Small, because the queue holds `queue` of them.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// When we accepted it; request deadlines count from here, not from when a worker picked it up.
    pub(crate) accepted: Instant,
    /// What only some connections need, boxed so the common one stays small.
    slow: Option<Box<SlowPath>>,
}

/// The state of a connection that expects a PROXY header or has had to wait for its request.
#[derive(Debug, Default)]
struct SlowPath {
    /// The client a PROXY protocol header named, when it named one.
    client: Option<SocketAddr>,
    preamble: Preamble,
    /// When the request must have arrived; set the first time the connection has to wait for it.
    deadline: Option<Instant>,
}

/// What comes before the request.
#[derive(Debug, Default)]
enum Preamble {
    #[default]
    /// Nothing: the first bytes are the request.
    None,
    /// A PROXY protocol header, of which these bytes have arrived.
    ProxyHeader(Vec<u8>),
    /// The header has been read; the request has not arrived yet.
    HeaderRead,
    /// The header has been read, and these request bytes arrived with it.
    Request(Vec<u8>),
}

impl Conn {
    /// A connection accepted just now; `proxy_header` when it must start with a PROXY protocol header.
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, proxy_header: bool) -> Conn {
        let slow = proxy_header.then(|| {
            Box::new(SlowPath { preamble: Preamble::ProxyHeader(Vec::new()), ..SlowPath::default() })
        });
        Conn { stream, peer, accepted: Instant::now(), slow }
    }

    /// The client it speaks for: the peer, or the source a PROXY protocol header named.
    fn client(&self) -> SocketAddr {
        self.slow.as_ref().and_then(|slow| slow.client).unwrap_or(self.peer)
    }

    fn preamble(&self) -> &Preamble {
        self.slow.as_ref().map_or(&Preamble::None, |slow| &slow.preamble)
    }

    fn deadline(&self) -> Option<Instant> {
        self.slow.as_ref().and_then(|slow| slow.deadline)
    }

    fn slow_mut(&mut self) -> &mut SlowPath {
        self.slow.get_or_insert_with(Box::default)
    }
}

impl Conn {
    /// Who this connection is, for the log; cheap to keep after the connection has moved on.
    pub(crate) fn who(&self) -> Who {
        Who { client: self.client(), peer: self.peer }
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.who().fmt(f)
    }
}

/// Shows the client, and the peer it came through when a load balancer stands between.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who {
    client: SocketAddr,
    peer: SocketAddr,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client == self.peer {
            write!(f, "{}", self.client)
        } else {
            write!(f, "{} (via {})", self.client, self.peer)
        }
    }
}

/// Where a connection goes after a worker has looked at it.
#[derive(Debug)]
pub(crate) enum Step {
    /// Finished and closed.
    Closed,
    /// Waiting on the client: for its request, or for its leftover input to drain.
    Wait(Wait),
}

/// Serves one connection on a worker: one read of at most `buf.len()` bytes, the handler's reply, the close.
pub(crate) fn serve(mut conn: Conn, shared: &Shared, buf: &mut [u8]) -> Step {
    if let Some(slow) = &mut conn.slow
        && let Preamble::ProxyHeader(received) = &mut slow.preamble
    {
        match proxy::read_header(&conn.stream, received) {
            HeaderRead::More => return wait_for_request(conn, shared),
            HeaderRead::Done { source, rest } => {
                slow.client = source;
                slow.preamble = if rest.is_empty() { Preamble::HeaderRead } else { Preamble::Request(rest) };
            }
            HeaderRead::Closed => {
                info!("{conn} closed the connection without sending a PROXY header");
                return ended(shared, Ending::HungUp);
            }
            HeaderRead::Failed(reason) => {
                warn!("{}: PROXY protocol error: {reason}; closed", conn.peer);
                return ended(shared, Ending::Error);
            }
            HeaderRead::Io(e) => return failed(shared, &conn, "reading the PROXY header", &e),
        }
    }
    let received = if let Preamble::Request(early) = conn.preamble() {
        // Part of the request came with the header; what the kernel holds besides belongs to it too.
        let n = early.len().min(buf.len());
        buf[..n].copy_from_slice(&early[..n]);
        conn.slow_mut().preamble = Preamble::HeaderRead;
        n + if n < buf.len() { (&conn.stream).read(&mut buf[n..]).unwrap_or(0) } else { 0 }
    } else {
        match read_request(&conn, buf) {
            Ok(0) => {
                info!("{conn} closed the connection without sending a request");
                return ended(shared, Ending::HungUp);
            }
            Ok(n) => n,
            // Not here yet: wait for it without holding a worker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return wait_for_request(conn, shared),
            Err(e) => return failed(shared, &conn, "reading the request", &e),
        }
    };

    let request = &buf[..received];
    let reply = shared.handler.reply(request);
    if let Err((written, e)) = write_all(&conn.stream, &reply, shared.write_timeout) {
        if e.kind() == io::ErrorKind::TimedOut {
            warn!(
                "{conn} timed out: wrote {written} of {} reply bytes in {:?}",
                reply.len(),
                shared.write_timeout
            );
            return ended(shared, Ending::TimedOut);
        }
        return failed(shared, &conn, "writing the reply", &e);
    }
    info!(
        "{conn} served: {received} B in, {} B out, {:.1?}, request \"{}\"",
        reply.len(),
        conn.accepted.elapsed(),
        Preview(request)
    );
    drop(reply);
    shared.stats.count(Ending::Served);
    close_without_reset(conn, shared, buf)
}

/// Reads the request. When a fresh connection's request has not arrived yet, waits a moment for it first: a
/// client that connected and is sending right now should not make the trip through the waiting room. With
/// TCP_DEFER_ACCEPT a connection arrives with its data, so this wait is for sockets without it.
fn read_request(conn: &Conn, buf: &mut [u8]) -> io::Result<usize> {
    match (&conn.stream).read(buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && conn.deadline().is_none() => {
            if sys::wait_readable(conn.stream.as_fd(), Instant::now() + FIRST_READ_GRACE)? {
                (&conn.stream).read(buf)
            } else {
                Err(e)
            }
        }
        result => result,
    }
}

/// Closes at once when nothing is left unread (the common case, at the cost of one read that finds nothing);
/// otherwise sends our FIN now and hands the connection to the waiting room to discard what the client still
/// sends. The look is needed even after a read that did not fill the buffer: the rest of a request sent in
/// two pieces may have arrived since.
fn close_without_reset(conn: Conn, shared: &Shared, buf: &mut [u8]) -> Step {
    match (&conn.stream).read(buf) {
        Ok(discarded) if discarded > 0 => {
            // The reply is already queued; shutting down our side sends it with the FIN behind it.
            if conn.stream.shutdown(Shutdown::Write).is_err() {
                return Step::Closed;
            }
            let deadline = Instant::now() + shared.read_timeout;
            Step::Wait(Wait::Leftovers { conn, deadline, discarded })
        }
        // Nothing unread (WouldBlock), end of input, or an error: a plain close cannot hurt the reply.
        _ => Step::Closed,
    }
}

/// The deadline for a request counts from when the client connected, and is fixed the first time the
/// connection has to wait.
fn wait_for_request(mut conn: Conn, shared: &Shared) -> Step {
    let deadline = match conn.deadline() {
        Some(deadline) => deadline,
        None => {
            let connected = conn.accepted.checked_sub(held_in_kernel(&conn, shared)).unwrap_or(conn.accepted);
            *conn.slow_mut().deadline.insert(connected + shared.read_timeout)
        }
    };
    if deadline <= Instant::now() {
        timed_out_waiting(&conn, shared);
        return ended(shared, Ending::TimedOut);
    }
    Step::Wait(Wait::Request { conn, deadline })
}

/// How long the kernel held the connection before we accepted it. TCP_INFO's round-trip time measures it:
/// from our first SYN-ACK to the segment that completed the accept, which under TCP_DEFER_ACCEPT is the
/// client's first data or, for a silent client, the ACK after the defer period. A silent client was held
/// for at least that period, which also covers clients whose ACKs give no RTT sample.
fn held_in_kernel(conn: &Conn, shared: &Shared) -> Duration {
    let Some(hold) = shared.held_back else { return Duration::ZERO };
    let rtt = sys::round_trip_time(conn.stream.as_fd()).unwrap_or(Duration::ZERO);
    let silent = match conn.preamble() {
        Preamble::None => true,
        Preamble::ProxyHeader(received) => received.is_empty(),
        Preamble::HeaderRead | Preamble::Request(_) => false,
    };
    if silent { rtt.max(hold) } else { rtt }
}

/// Logs a connection closed for sending no request in time.
pub(crate) fn timed_out_waiting(conn: &Conn, shared: &Shared) {
    let awaited =
        if matches!(conn.preamble(), Preamble::ProxyHeader(_)) { "PROXY header" } else { "request" };
    info!("{conn} timed out: no {awaited} within {:?}", shared.read_timeout);
}

/// Answers a connection that found every worker busy and the queue full, then closes it the way a served one
/// is closed, so that a client that sent a long request still gets the busy reply rather than a reset. The
/// socket is fresh, so the short reply fits its send buffer without blocking.
pub(crate) fn turn_away(conn: Conn, shared: &Shared) -> Step {
    let _ = (&conn.stream).write(&shared.busy_reply);
    warn!("{conn} turned away with the busy reply: every worker busy and the queue full");
    shared.stats.count(Ending::Busy);
    close_without_reset(conn, shared, &mut [0; 2048])
}

/// Reads and drops the client's leftover input until it would block. Returns true when the connection can
/// be closed: the client finished, failed, or sent more than `LEFTOVER_LIMIT`.
pub(crate) fn discard_leftovers(stream: &TcpStream, discarded: &mut usize, buf: &mut [u8]) -> bool {
    loop {
        match (&*stream).read(buf) {
            Ok(0) => return true,
            Ok(n) => {
                *discarded += n;
                if *discarded >= LEFTOVER_LIMIT {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Writes all of `data` to a non-blocking socket, waiting for room for at most `timeout` in all (counted from
/// the first time the socket is full, so the common single write reads no clock). On failure, returns how
/// much was written with the error; running out of time is `TimedOut`.
fn write_all(stream: &TcpStream, data: &[u8], timeout: Duration) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    let mut deadline = None;
    while written < data.len() {
        match (&*stream).write(&data[written..]) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                match sys::wait_writable(stream.as_fd(), deadline) {
                    Ok(true) => {}
                    Ok(false) => return Err((written, io::ErrorKind::TimedOut.into())),
                    Err(e) => return Err((written, e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

fn ended(shared: &Shared, ending: Ending) -> Step {
    shared.stats.count(ending);
    Step::Closed
}

/// Logs an I/O failure at the right level: a client that hung up is routine, anything else is worth a warning.
fn failed(shared: &Shared, conn: &Conn, doing: &str, error: &io::Error) -> Step {
    if is_client_disconnect(error) {
        info!("{conn} hung up while we were {doing}: {error}");
        ended(shared, Ending::HungUp)
    } else {
        warn!("{conn}: failed {doing}: {error}");
        ended(shared, Ending::Error)
    }
}

fn is_client_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}
