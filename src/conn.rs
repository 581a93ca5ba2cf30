//! One connection's life in one place: its states, its deadlines, and every step a worker or the waiting
//! room takes on it.
//!
//! ```text
//! accepted ─► New ─ readable ─► worker: read one message, handler, write
//!                                 ├─ reply did not fit ──► Writing (room, until write_timeout) ─► a reset if late
//!                                 ├─ keep-alive ─────────► Idle (room, until idle_timeout) ─ readable ─► worker
//!                                 │   (not after max_messages, or once the conversation is max_conversation old)
//!                                 ├─ client may send more ► Lingering (room: our FIN sent, discard, bounded)
//!                                 └─ otherwise ──────────► closed
//! ```
//! Over TLS, a new connection's handshake comes first (after the PROXY header, when there is one), in
//! non-blocking steps between the room and whoever takes it out of the room, within `read_timeout` of the
//! connect; reads and writes then go through its session (`tls`), and a close sends close_notify first.
//!
//! With `line` or `length` framing a worker answers every complete message that has arrived (up to `TURN`)
//! and keeps the rest with the connection: a part of a message waits in the room (`New`/`Idle`, its
//! deadline counted from its first byte), complete messages go back to the queue (see `serve_framed`).
//!
//! Sockets are non-blocking and nothing here waits: a step that would wait returns the connection as
//! [`Step::Wait`] with what it waits for and until when, and the waiting room does the waiting. The
//! connection is a value that moves (queue, worker, room), so exactly one place holds it at a time, and it
//! carries its place in the counts ([`Tally`]: open, then how it ended) and in its client's count
//! ([`Quota`]), given back when it is dropped. Every step that ends a connection says how (`finish`);
//! the count happens as it drops.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use log::{info, warn};

use crate::{
    books::Expiry,
    config::Framing,
    framing::{self, Decoded, TooLong},
    handler::{Message, Reply, State},
    limits::Quota,
    poller::{Interest, Registration},
    preview::Preview,
    proxy::{self, HeaderRead},
    service::Service,
    stats::{Ending, Tally},
    sys,
    tls::{self, Handshake, Session},
};

/// A message at least this long may be the start of a longer one still on its way; closing right after
/// the reply could then reset the client, so such a connection lingers (see `close_gracefully`). Shorter
/// messages arrive in one segment, and the common one closes at once.
const LINGER_FROM: usize = 1024;
/// The kernel's first SYN-ACK retransmit timeout (TCP_TIMEOUT_INIT); each further one doubles it.
const SYNACK_TIMEOUT: Duration = Duration::from_secs(1);
/// More retransmits than this (over a minute of handshake) are counted as this many.
const MAX_RETRANSMITS: u32 = 6;
/// With line or length framing, the most pipelined messages a worker answers in one turn; a connection with
/// more goes back through the queue, behind the others, so that a client that pipelines cannot hold a worker.
pub(crate) const TURN: usize = 64;

/// An accepted connection on its way through the pool. Small, because the queue holds `queue` of them.
pub(crate) struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Unique per server: tells a connection from a later one on the same descriptor.
    id: u64,
    accepted: Instant,
    phase: Phase,
    /// Messages answered so far.
    messages: u64,
    /// Where its messages end; fixed when it is accepted, so a reload applies to new connections.
    framing: Framing,
    /// The handler's state for this conversation.
    state: State,
    /// What only some connections need, boxed so the common one stays small.
    extras: Option<Box<Extras>>,
    /// Its registration with the waiting room's epoll (for as long as the socket lives).
    registration: Registration,
    /// An event said the client's end of input (or an error) came: a short read no longer means the socket
    /// is drained, as the FIN still waits to be read.
    hung_up: bool,
    tally: Tally,
    /// Its place under `max_per_client`.
    quota: Quota,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Its first message (or PROXY header) has not been read. The deadline for it is fixed the first time
    /// the connection has to wait for it (see `Conn::first_deadline`).
    New { deadline: Option<Instant> },
    /// A conversation between messages: the last reply was finished at this instant.
    Idle(Instant),
    /// A reply is being written; the rest is in `Extras::pending`.
    Writing,
    /// The last reply and our FIN are sent; the client's leftover input is read and dropped until it
    /// finishes, or until the bounds.
    Lingering { since: Instant, discarded: usize },
}

#[derive(Default)]
struct Extras {
    /// The client a PROXY protocol header named, when it named one.
    client: Option<SocketAddr>,
    preamble: Preamble,
    pending: Option<Pending>,
    /// Over TLS: the session, or why it could not be made.
    tls: Option<io::Result<Session>>,
    /// With line or length framing: bytes read and not yet answered, the start of a message still
    /// arriving or pipelined messages waiting for their turn.
    input: Vec<u8>,
    /// When the first byte of the incomplete message at the end of `input` was read: its deadline counts
    /// from then, and more bytes do not move it.
    partial_since: Option<Instant>,
}

/// What comes before the first message.
#[derive(Default)]
enum Preamble {
    /// Nothing, or a PROXY header already read: the next bytes are a message.
    #[default]
    None,
    /// A PROXY protocol header, of which these bytes have arrived.
    ProxyHeader(Vec<u8>),
    /// Message bytes that arrived with the PROXY header.
    Early(Vec<u8>),
}

/// A reply (or, with framing, the replies of one turn) that did not fit the socket buffer at once.
struct Pending {
    rest: Vec<u8>,
    written: usize,
    deadline: Instant,
    close_after: bool,
    /// The client may still be sending the rest of a long message.
    may_send_more: bool,
    /// A raw reply is logged and counted once it is out; framed replies were as they were made.
    unlogged: Option<Unlogged>,
}

/// What the access log says of a raw message once its reply is out.
struct Unlogged {
    /// The message's length and escaped preview.
    message_len: usize,
    preview: String,
    started: Instant,
}

/// Where a connection goes after a step.
pub(crate) enum Step {
    /// It waits on its client in the waiting room.
    Wait(Waiting),
    /// It holds complete messages (pipelined, with framing): to the queue, for a worker.
    Queue(Conn),
    /// Finished; the socket closes as the connection drops.
    Done,
}

/// What the waiting room does with a connection that became ready.
pub(crate) enum Ready {
    /// It has a message to be answered: to the queue, for a worker.
    Serve(Conn),
    /// Anything else.
    Then(Step),
}

/// A connection in the waiting room: what it waits for, and until when.
pub(crate) struct Waiting {
    pub(crate) conn: Conn,
    pub(crate) interest: Interest,
    pub(crate) deadline: Instant,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, id: u64, tally: Tally, service: &Service) -> Conn {
        let mut extras = service
            .proxy_protocol
            .then(|| Box::new(Extras { preamble: Preamble::ProxyHeader(Vec::new()), ..Extras::default() }));
        if let Some(config) = &service.tls {
            // The session's tickets go out on their own right after the handshake: with Nagle, the first
            // reply would then wait for their ACK, which a client delays by up to 40 ms.
            let _ = stream.set_nodelay(true);
            extras.get_or_insert_with(Box::default).tls = Some(Session::new(config));
        }
        Conn {
            stream,
            peer,
            id,
            accepted: Instant::now(),
            phase: Phase::New { deadline: None },
            messages: 0,
            framing: service.framing,
            state: service.protocol.new_state(),
            extras,
            registration: Registration::default(),
            hung_up: false,
            tally,
            // Behind a load balancer the client is known once the PROXY header has been read.
            quota: if service.proxy_protocol { Quota::Free } else { client_quota(service, peer) },
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether something has arrived to read (input, the client's end of input, or an error), looked at
    /// without waiting and without taking it. One system call; what lets a silent connection skip the queue.
    pub(crate) fn has_input(&self) -> bool {
        let mut byte = [0; 1];
        !matches!(self.stream.peek(&mut byte), Err(e) if is_would_block(&e))
    }

    /// The socket and its registration, for the room to arm it.
    pub(crate) fn registration(&mut self) -> (&TcpStream, &mut Registration) {
        (&self.stream, &mut self.registration)
    }

    /// An event reported the client's end of input, or an error.
    pub(crate) fn hung_up(&mut self) {
        self.hung_up = true;
    }

    /// Reads from the socket, and notes for the room whether the read drained it (see
    /// `poller::Registration`): one that came back short or would block did, unless a FIN was reported
    /// behind its input.
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = (&self.stream).read(buf);
        let drained = match &read {
            Ok(n) => (1..buf.len()).contains(n) && !self.hung_up,
            Err(e) => is_would_block(e),
        };
        self.registration.read_left(drained);
        read
    }

    /// Whether it waits for its first or next message (rather than for work under way to finish).
    pub(crate) fn waits_for_message(&self) -> bool {
        matches!(self.phase, Phase::New { .. } | Phase::Idle(_))
    }

    /// Ends the connection, counted as `ending`; the socket closes as it drops.
    fn finish(mut self, ending: Ending) -> Step {
        self.tally.end(ending);
        Step::Done
    }

    /// The client it speaks for: the peer, or the source a PROXY protocol header named.
    fn client(&self) -> SocketAddr {
        self.extras.as_ref().and_then(|extras| extras.client).unwrap_or(self.peer)
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn session(&mut self) -> Option<&mut Session> {
        self.extras.as_deref_mut()?.tls.as_mut()?.as_mut().ok()
    }

    /// Over TLS, with the handshake (or what it has to send) not finished.
    fn is_handshaking(&self) -> bool {
        match self.extras.as_deref().and_then(|extras| extras.tls.as_ref()) {
            Some(Ok(session)) => session.is_handshaking() || session.has_output(),
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Over TLS: input is decrypted and waiting already, which no readiness of the socket will announce.
    pub(crate) fn has_buffered_input(&mut self) -> bool {
        self.session().is_some_and(|session| session.has_plaintext())
    }

    /// Reads the next bytes of a message, through the session when there is one. What a session read
    /// leaves in the socket is not known here, so a TLS connection re-arms when it waits.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.extras.as_deref_mut().and_then(|extras| extras.tls.as_mut()) {
            Some(Ok(session)) => {
                self.registration.read_left(false);
                session.read(&self.stream, buf)
            }
            _ => self.read_input(buf),
        }
    }

    /// Writes as much of `data` as the socket takes now, through the session when there is one.
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.extras.as_deref_mut().and_then(|extras| extras.tls.as_mut()) {
            Some(Ok(session)) => session.write(&self.stream, data),
            _ => write_some(&self.stream, data),
        }
    }

    /// Nothing the session encrypted is left to send (always so without TLS).
    fn is_flushed(&self) -> bool {
        !matches!(self.extras.as_deref().and_then(|extras| extras.tls.as_ref()), Some(Ok(session)) if session.has_output())
    }

    /// The bytes of a message under way (with framing), kept until the rest comes.
    fn partial(&self) -> usize {
        self.extras.as_ref().map_or(0, |extras| extras.input.len())
    }

    fn expects_proxy_header(&self) -> bool {
        matches!(self.extras.as_deref(), Some(Extras { preamble: Preamble::ProxyHeader(_), .. }))
    }

    /// Waits in the room for `interest` until the deadline of its phase.
    fn wait(mut self, interest: Interest, service: &Service) -> Step {
        let deadline = match self.phase {
            Phase::New { deadline: Some(deadline) } => deadline,
            Phase::New { deadline: None } => self.first_deadline(service),
            Phase::Idle(since) => match self.extras.as_ref().and_then(|extras| extras.partial_since) {
                // A message under way: from its first byte, however slowly the rest trickles in.
                Some(first_byte) => first_byte + service.idle_timeout,
                None => since + service.idle_timeout,
            },
            Phase::Writing => self
                .extras
                .as_ref()
                .and_then(|extras| extras.pending.as_ref())
                .map_or_else(Instant::now, |p| p.deadline),
            Phase::Lingering { since, .. } => since + service.read_timeout,
        };
        Step::Wait(Waiting { conn: self, interest, deadline })
    }

    /// The first message's deadline counts from when the client connected, by its clock: when our first
    /// SYN-ACK reached it. A connection that has sent nothing may have been held in the kernel well after
    /// that: TCP_DEFER_ACCEPT keeps a silent client's handshake open for its one second, and a full accept
    /// queue drops the client's ACK until the next try. Either way the kernel retransmitted the SYN-ACK, at
    /// 1 s, then 2 s, 4 s, ... later, so k retransmits mean the client connected 2^k − 1 seconds before we
    /// accepted it. A client that came in through SYN cookies (which skip the defer) had none: it connected
    /// when we accepted it.
    ///
    /// It is kept in the phase rather than in `Extras`, so that waiting for a first message, which most
    /// connections do, allocates nothing: the boxed `Extras` is 240 B, and it stays for the whole
    /// conversation (`tests/memory.rs`).
    fn first_deadline(&mut self, service: &Service) -> Instant {
        let retransmits = if self.sent_nothing() { sys::synack_retransmits(self.stream.as_fd()) } else { 0 };
        let held = SYNACK_TIMEOUT * ((1_u32 << retransmits.min(MAX_RETRANSMITS)) - 1);
        let connected = self.accepted.checked_sub(held).unwrap_or(self.accepted);
        let deadline = connected + service.read_timeout;
        self.phase = Phase::New { deadline: Some(deadline) };
        deadline
    }

    fn sent_nothing(&self) -> bool {
        match self.extras.as_deref() {
            None => self.messages == 0,
            Some(Extras { preamble: Preamble::None, input, .. }) => self.messages == 0 && input.is_empty(),
            Some(Extras { preamble: Preamble::ProxyHeader(received), .. }) => received.is_empty(),
            Some(Extras { preamble: Preamble::Early(_), .. }) => false,
        }
    }
}

impl Conn {
    /// Where this connection comes from, for the log; cheap to keep after the connection has moved on.
    pub(crate) fn origin(&self) -> Origin {
        Origin { client: self.client(), peer: self.peer }
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.origin().fmt(f)
    }
}

/// Shows the client, and the peer it came through when a load balancer stands between.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    client: SocketAddr,
    peer: SocketAddr,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client == self.peer {
            write!(f, "{}", self.client)
        } else {
            write!(f, "{} (via {})", self.client, self.peer)
        }
    }
}

/// A worker's buffers, kept from job to job.
#[derive(Default)]
pub(crate) struct Scratch {
    /// What a read takes in: `max_request` of it for a raw message, all of it with framing.
    input: Vec<u8>,
    /// With framing: the replies of one turn, written together.
    output: Vec<u8>,
}

impl Scratch {
    /// A reload may have changed max_request: the buffer follows before the next read.
    pub(crate) fn fit(&mut self, service: &Service) {
        self.input.resize(service.read_buffer, 0);
    }
}

/// On a worker: reads one message, answers it, and sends the connection on; with framing, answers every
/// complete message that has arrived (see `serve_framed`).
pub(crate) fn serve(conn: Conn, service: &Service, scratch: &mut Scratch) -> Step {
    let mut conn = match read_proxy_header(conn, service) {
        Header::Read(conn) => conn,
        Header::Then(step) => return step,
    };
    if conn.is_handshaking() {
        conn = match handshake(conn, service) {
            Ready::Serve(conn) => conn,
            Ready::Then(step) => return step,
        };
    }
    if let Quota::Over { open } = conn.quota {
        return turn_away_client(conn, service, open);
    }
    let early = match conn.extras.as_deref_mut() {
        Some(extras) if matches!(extras.preamble, Preamble::Early(_)) => std::mem::take(&mut extras.preamble),
        _ => Preamble::None,
    };
    if conn.framing != Framing::Raw {
        let early = if let Preamble::Early(early) = early { Some(early) } else { None };
        return serve_framed(conn, service, early, scratch);
    }
    let buf = &mut scratch.input[..service.max_request];
    let received = if let Preamble::Early(early) = early {
        // Part of the first message came with the header; what the kernel holds besides belongs to it too.
        let n = early.len().min(buf.len());
        buf[..n].copy_from_slice(&early[..n]);
        n + if n < buf.len() { conn.read_input(&mut buf[n..]).unwrap_or(0) } else { 0 }
    } else {
        match conn.read(buf) {
            Ok(0) => return client_closed(conn),
            Ok(n) => n,
            // Not here yet: wait for it without holding a worker.
            Err(e) if is_would_block(&e) || e.kind() == io::ErrorKind::Interrupted => {
                return waiting_for_message(conn, service);
            }
            Err(e) => return failed(conn, "reading a message", &e),
        }
    };
    answer(conn, service, &buf[..received], buf.len())
}

/// How far the PROXY header is.
enum Header {
    /// Read (or none expected): the connection goes on to its message.
    Read(Conn),
    /// Not complete yet, or bad: the connection goes here instead.
    Then(Step),
}

/// Reads what has arrived of the PROXY header, when one is expected.
fn read_proxy_header(mut conn: Conn, service: &Service) -> Header {
    let Some(Extras { preamble: Preamble::ProxyHeader(received), .. }) = conn.extras.as_deref_mut() else {
        return Header::Read(conn);
    };
    Header::Then(match proxy::read_header(&conn.stream, received, conn.peer, service.proxy_from.as_deref()) {
        HeaderRead::More => waiting_for_message(conn, service),
        HeaderRead::Done { source, rest } => {
            let extras = conn.extras_mut();
            extras.client = source;
            extras.preamble = if rest.is_empty() { Preamble::None } else { Preamble::Early(rest) };
            conn.quota = client_quota(service, conn.client());
            return Header::Read(conn);
        }
        HeaderRead::Closed => {
            info!(target: "access", "{conn} closed the connection without sending a PROXY header");
            conn.finish(Ending::HungUp)
        }
        // A peer not in proxy_from: proxy::read_header logged it (throttled).
        HeaderRead::Refused => conn.finish(Ending::Error),
        HeaderRead::Failed(reason) => {
            warn!(target: "access", "{}: PROXY protocol error: {reason}; closed", conn.peer);
            conn.finish(Ending::Error)
        }
        HeaderRead::Io(e) => failed(conn, "reading the PROXY header", &e),
    })
}

/// One non-blocking step of the TLS handshake: the connection goes on to its message when the handshake
/// is done, or back to the room when it waits on its client.
fn handshake(mut conn: Conn, service: &Service) -> Ready {
    let Some(extras) = conn.extras.as_deref_mut() else { return Ready::Serve(conn) };
    let session = match extras.tls.as_mut() {
        Some(Ok(session)) => session,
        Some(Err(_)) => {
            let Some(Err(e)) = extras.tls.take() else { return Ready::Then(Step::Done) };
            return Ready::Then(failed(conn, "starting TLS", &e));
        }
        None => return Ready::Serve(conn),
    };
    // Bytes that came behind the PROXY header are the start of the handshake.
    if let Preamble::Early(early) = std::mem::take(&mut extras.preamble)
        && let Err(e) = session.feed(&early)
    {
        tls::log_failure(conn.peer, &e);
        return Ready::Then(conn.finish(Ending::Error));
    }
    let progress = session.handshake(&conn.stream);
    let message_here = matches!(progress, Handshake::Done) && session.has_plaintext();
    Ready::Then(match progress {
        Handshake::Done if message_here => return Ready::Serve(conn),
        Handshake::Done | Handshake::Wants(Interest::Readable) => waiting_for_message(conn, service),
        Handshake::Wants(interest) => waiting_for(conn, interest, service),
        Handshake::Closed => {
            info!(target: "access", "{conn} closed the connection during the TLS handshake");
            conn.finish(Ending::HungUp)
        }
        Handshake::Failed(e) => {
            tls::log_failure(conn.peer, &e);
            conn.finish(Ending::Error)
        }
        Handshake::Io(e) => failed(conn, "in the TLS handshake", &e),
    })
}

/// Nothing to read yet: the connection waits in the room for its message, unless its time is already up.
pub(crate) fn waiting_for_message(conn: Conn, service: &Service) -> Step {
    waiting_for(conn, Interest::Readable, service)
}

/// The connection waits in the room for `interest`, unless its time is already up.
fn waiting_for(conn: Conn, interest: Interest, service: &Service) -> Step {
    match conn.wait(interest, service) {
        Step::Wait(waiting) if waiting.deadline <= Instant::now() => {
            expired(waiting.conn, service, Expiry::Deadline);
            Step::Done
        }
        next => next,
    }
}

/// The client closed its side: before its first message it hung up; in a conversation, it said goodbye.
fn client_closed(conn: Conn) -> Step {
    match conn.phase {
        Phase::Idle(_) => {
            info!(target: "access", "{conn} ended the conversation after {} messages, {:.1?}", conn.messages, conn.accepted.elapsed());
            conn.finish(Ending::Served)
        }
        _ => {
            info!(target: "access", "{conn} closed the connection without sending a message");
            conn.finish(Ending::HungUp)
        }
    }
}

/// Answers one message: the handler's reply, written as far as the socket takes it now.
fn answer(mut conn: Conn, service: &Service, message: &[u8], max: usize) -> Step {
    let started = Instant::now();
    let reply = reply_to(&mut conn, service, message);
    let filled = message.len() == max;
    let may_send_more = message.len() >= LINGER_FROM || filled;
    let written = match conn.write_some(&reply.bytes) {
        Ok(written) => written,
        Err(e) => return failed(conn, "writing the reply", &e),
    };
    if written == reply.bytes.len() && conn.is_flushed() {
        log_answer(&conn, service, message.len(), &Preview(message), reply.bytes.len(), started);
        return replied(conn, service, After { close: reply.close, may_send_more }, started);
    }
    // The send buffer is full: room to write comes as an event.
    conn.registration.write_blocked();
    conn.extras_mut().pending = Some(Pending {
        rest: reply.bytes[written..].to_vec(),
        written,
        deadline: Instant::now() + service.write_timeout,
        close_after: reply.close,
        may_send_more,
        unlogged: Some(Unlogged {
            message_len: message.len(),
            preview: Preview(message).to_string(),
            started,
        }),
    });
    conn.phase = Phase::Writing;
    conn.wait(Interest::Writable, service)
}

/// How a framed turn ended.
enum Turn {
    /// Nothing complete is left, and the socket has nothing more for now.
    Wait,
    /// `TURN` messages answered and more are here: the connection goes back through the queue.
    Requeue,
    /// The conversation ends after the replies: handler, caps, no keep-alive, or the stop.
    Close,
    /// The client closed its side.
    Eof,
    /// A message over `max_request`.
    TooLong(TooLong),
}

/// With line or length framing: answers, in order, every complete message that has arrived (those kept
/// from before, then what the socket holds), at most `TURN` of them, and writes their replies together.
/// What is left of the input (the start of a message, or messages past the turn) stays with the
/// connection: a connection with a complete message goes back to the queue, one with a part of a message
/// waits in the room until the rest comes or the deadline counted from its first byte passes.
fn serve_framed(mut conn: Conn, service: &Service, early: Option<Vec<u8>>, scratch: &mut Scratch) -> Step {
    let Scratch { input: buf, output: out } = scratch;
    out.clear();
    let max = service.max_request;
    let kept = match early {
        Some(early) => early,
        None => {
            conn.extras.as_deref_mut().map(|extras| std::mem::take(&mut extras.input)).unwrap_or_default()
        }
    };
    if kept.len() > buf.len() {
        // Kept under a larger max_request, before a reload.
        buf.resize(kept.len(), 0);
    }
    buf[..kept.len()].copy_from_slice(&kept);
    let (mut start, mut filled) = (0, kept.len());
    drop(kept);
    let mut answered = 0;
    // A read that fills the buffer may have left more in the socket; a shorter one has taken it all.
    let mut may_read = true;
    let turn = loop {
        match conn.framing.decode(&buf[start..filled], max) {
            Decoded::Message { .. } if answered == TURN => break Turn::Requeue,
            Decoded::Message { message, consumed } => {
                let message = &buf[start + message.start..start + message.end];
                start += consumed;
                answered += 1;
                if !answer_framed(&mut conn, service, message, out) {
                    break Turn::Close;
                }
                continue;
            }
            Decoded::TooLong(why) => break Turn::TooLong(why),
            Decoded::NeedMore if !may_read => break Turn::Wait,
            Decoded::NeedMore => {}
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            (filled, start) = (filled - start, 0);
        }
        // The buffer holds a whole message of `max` bytes and its edge, and the decoder refuses a longer
        // one before it fills the buffer, so there is always room to read into (an empty read would look
        // like the client's close).
        debug_assert!(filled < buf.len(), "a framed read buffer full without a complete message");
        match conn.read(&mut buf[filled..]) {
            Ok(0) => break Turn::Eof,
            Ok(n) => {
                filled += n;
                may_read = filled == buf.len();
            }
            Err(e) if is_would_block(&e) => break Turn::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return failed(conn, "reading a message", &e),
        }
    };
    let written = match conn.write_some(out) {
        Ok(written) => written,
        Err(e) => return failed(conn, "writing the reply", &e),
    };
    let left = &buf[start..filled];
    match turn {
        Turn::TooLong(why) => {
            match why {
                TooLong::Line { without_end } => warn!(
                    target: "access",
                    "{conn}: a line longer than max_request ({max} B): {without_end} B without its end; closed"
                ),
                TooLong::Prefix { announced } => warn!(
                    target: "access",
                    "{conn}: a length prefix of {announced} B, over max_request ({max} B); closed"
                ),
            }
            conn.tally.end(Ending::Error);
            return close_gracefully(conn, service, true);
        }
        Turn::Eof if !left.is_empty() => info!(
            target: "access",
            "{conn} closed its side with {} B after its last complete message; dropped",
            left.len()
        ),
        _ => {}
    }
    let close = matches!(turn, Turn::Close | Turn::Eof);
    if written < out.len() || !conn.is_flushed() {
        if !close {
            conn.keep_input(left, answered > 0);
        }
        conn.extras_mut().pending = Some(Pending {
            rest: out[written..].to_vec(),
            written,
            deadline: Instant::now() + service.write_timeout,
            close_after: close,
            may_send_more: !left.is_empty(),
            unlogged: None,
        });
        conn.phase = Phase::Writing;
        return conn.wait(Interest::Writable, service);
    }
    match turn {
        Turn::Eof => client_closed(conn),
        Turn::Close => {
            conn.tally.end(Ending::Served);
            let may_send_more = !left.is_empty();
            close_gracefully(conn, service, may_send_more)
        }
        _ => {
            conn.keep_input(left, answered > 0);
            if answered > 0 {
                conn.phase = Phase::Idle(Instant::now());
            }
            go_on_framed(conn, service)
        }
    }
}

/// Answers one framed message: the handler's reply, framed, goes to `out`, written with the turn's other
/// replies (its access line, when each message has one, is written now). Returns whether the conversation
/// goes on after it.
fn answer_framed(conn: &mut Conn, service: &Service, message: &[u8], out: &mut Vec<u8>) -> bool {
    let started = Instant::now();
    let reply = reply_to(conn, service, message);
    let before = out.len();
    conn.framing.encode(&reply.bytes, out);
    log_answer(conn, service, message.len(), &Preview(message), out.len() - before, started);
    service.stats.answered(started.elapsed());
    conn.phase = Phase::Idle(started);
    goes_on(conn, service, reply.close)
}

/// Calls the handler with one message of the conversation, counted: its reply.
fn reply_to<'a>(conn: &mut Conn, service: &'a Service, message: &'a [u8]) -> Reply<'a> {
    conn.messages += 1;
    let message = Message::new(message, conn.client(), conn.peer, conn.messages);
    service.protocol.reply(&message, &mut conn.state)
}

/// Whether the conversation goes on after a reply: with keep-alive, unless the handler ended it
/// (`handler_closed`), the server is stopping, or a cap is reached. An ending here is the conversation's
/// access line, as the client's goodbye or a timeout is elsewhere.
fn goes_on(conn: &Conn, service: &Service, handler_closed: bool) -> bool {
    if !service.keep_alive {
        return false;
    }
    let by = if handler_closed {
        "by the handler"
    } else if service.is_stopping() {
        "at the stop"
    } else if let Some(cap) = cap_reached(conn, service) {
        info!(target: "access", "{conn} ended after {cap}");
        return false;
    } else {
        return true;
    };
    info!(target: "access", "{conn} ended {by} after {} messages, {:.1?}", conn.messages, conn.accepted.elapsed());
    false
}

/// After a framed turn whose replies are out: a complete message kept goes back to the queue at once (a
/// handler runs on a worker, never in the room); otherwise the connection waits for more input.
fn go_on_framed(conn: Conn, service: &Service) -> Step {
    let complete = conn.extras.as_deref().is_some_and(|extras| {
        !matches!(conn.framing.decode(&extras.input, service.max_request), Decoded::NeedMore)
    });
    if complete { Step::Queue(conn) } else { waiting_for_message(conn, service) }
}

impl Conn {
    /// Keeps the input a framed turn did not answer. The deadline of a message under way counts from its
    /// first byte: it is kept while the same message is still incomplete, and restarts only when one has
    /// been answered since (`answered`).
    fn keep_input(&mut self, left: &[u8], answered: bool) {
        if left.is_empty() {
            if let Some(extras) = self.extras.as_deref_mut() {
                extras.input = Vec::new();
                extras.partial_since = None;
            }
            return;
        }
        let extras = self.extras_mut();
        extras.input = left.to_vec();
        if answered || extras.partial_since.is_none() {
            extras.partial_since = Some(Instant::now());
        }
    }
}

/// The access log line for one answered message.
fn log_answer(
    conn: &Conn,
    service: &Service,
    message_len: usize,
    preview: &dyn fmt::Display,
    reply_len: usize,
    started: Instant,
) {
    if !service.keep_alive {
        info!(
            target: "access",
            "{conn} served: {message_len} B in, {reply_len} B out, {:.1?}, request \"{preview}\"",
            conn.accepted.elapsed()
        );
    } else if service.log_each_message {
        info!(
            target: "access",
            "{conn} message {}: {message_len} B in, {reply_len} B out, {:.1?}, \"{preview}\"",
            conn.messages,
            started.elapsed()
        );
    }
}

/// What follows a reply that is out.
struct After {
    /// The handler ended the conversation.
    close: bool,
    may_send_more: bool,
}

/// The whole reply is out: the conversation goes on, or the connection closes.
fn replied(mut conn: Conn, service: &Service, after: After, started: Instant) -> Step {
    service.stats.answered(started.elapsed());
    if goes_on(&conn, service, after.close) {
        conn.phase = Phase::Idle(Instant::now());
        return conn.wait(Interest::Readable, service);
    }
    conn.tally.end(Ending::Served);
    close_gracefully(conn, service, after.may_send_more)
}

/// A framed turn's replies are out, after waiting in the room: the conversation goes on (with the messages
/// kept, if any), or the connection closes. Counted and logged as each reply was made.
fn replied_framed(mut conn: Conn, service: &Service, after: After) -> Step {
    if after.close {
        conn.tally.end(Ending::Served);
        return close_gracefully(conn, service, after.may_send_more);
    }
    conn.phase = Phase::Idle(Instant::now());
    go_on_framed(conn, service)
}

/// The cap a conversation has reached with its last reply, as the access log says it: `max_messages` or
/// `max_conversation` (nginx's `keepalive_requests` and `keepalive_time`), so that no client holds a
/// connection for ever by sending a byte now and then.
fn cap_reached(conn: &Conn, service: &Service) -> Option<String> {
    let age = conn.accepted.elapsed();
    if conn.messages >= service.max_messages {
        Some(format!("{} messages (max_messages)", conn.messages))
    } else if age >= service.max_conversation {
        Some(format!(
            "{age:.1?} (max_conversation {:?}, {} messages)",
            service.max_conversation, conn.messages
        ))
    } else {
        None
    }
}

/// Closes without resetting the client. Linux resets a connection closed with unread input, and a reset
/// can destroy the reply before the client reads it. So: one read looks for input left over; when there
/// is some, or the last message was long enough that more of it may still be on its way, our FIN goes out
/// behind the reply now and the room reads and drops the rest (bounded) before the close. Otherwise (the
/// common case) the socket closes at once. In a conversation (`keep_alive`) the client may send its next
/// message at any moment, even between that look and the close, so a conversation the server ends (at the
/// stop, at a cap, or by its handler) always lingers: `scripts/stops.sh --keep-alive` saw a reset in about
/// one stop in 30 without it.
fn close_gracefully(mut conn: Conn, service: &Service, may_send_more: bool) -> Step {
    let may_send_more = may_send_more || service.keep_alive;
    if let Some(session) = conn.extras.as_deref_mut().and_then(|extras| extras.tls.as_mut()?.as_mut().ok()) {
        session.close(&conn.stream);
    }
    let mut scratch = [0; 512];
    let discarded = match conn.read_input(&mut scratch) {
        Ok(0) => return Step::Done,
        Ok(n) => n,
        Err(e) if is_would_block(&e) && may_send_more => 0,
        // Nothing unread, or an error: a plain close cannot hurt the reply.
        Err(_) => return Step::Done,
    };
    if conn.stream.shutdown(Shutdown::Write).is_err() {
        return Step::Done;
    }
    conn.phase = Phase::Lingering { since: Instant::now(), discarded };
    conn.wait(Interest::Readable, service)
}

/// In the room: the connection is ready for what it waited for.
pub(crate) fn ready(conn: Conn, service: &Service) -> Ready {
    match conn.phase {
        Phase::New { .. } if conn.is_handshaking() && !conn.expects_proxy_header() => {
            handshake(conn, service)
        }
        Phase::New { .. } | Phase::Idle(_) => Ready::Serve(conn),
        _ => Ready::Then(finish_waiting(conn, service)),
    }
}

/// The room's part of writing a reply that did not fit, and of lingering.
fn finish_waiting(mut conn: Conn, service: &Service) -> Step {
    match conn.phase {
        Phase::New { .. } | Phase::Idle(_) => conn.wait(Interest::Readable, service),
        Phase::Writing => {
            let Some(mut pending) = conn.extras.as_mut().and_then(|extras| extras.pending.take()) else {
                return Step::Done;
            };
            match conn.write_some(&pending.rest) {
                Ok(n) if n == pending.rest.len() && conn.is_flushed() => {
                    let after = After { close: pending.close_after, may_send_more: pending.may_send_more };
                    let Some(unlogged) = pending.unlogged else {
                        return replied_framed(conn, service, after);
                    };
                    let reply_len = pending.written + n;
                    log_answer(
                        &conn,
                        service,
                        unlogged.message_len,
                        &unlogged.preview,
                        reply_len,
                        unlogged.started,
                    );
                    replied(conn, service, after, unlogged.started)
                }
                Ok(n) => {
                    conn.registration.write_blocked();
                    pending.rest.drain(..n);
                    pending.written += n;
                    conn.extras_mut().pending = Some(pending);
                    conn.wait(Interest::Writable, service)
                }
                Err(e) => failed(conn, "writing the reply", &e),
            }
        }
        Phase::Lingering { since, mut discarded } => loop {
            let mut scratch = [0; 16 * 1024];
            match conn.read_input(&mut scratch) {
                Ok(0) => return Step::Done,
                Ok(n) => {
                    discarded += n;
                    if discarded >= service.leftover_limit {
                        warn!(target: "access", "{conn}: sent more than {} B after its reply; closed", service.leftover_limit);
                        return Step::Done;
                    }
                }
                Err(e) if is_would_block(&e) => {
                    conn.phase = Phase::Lingering { since, discarded };
                    return conn.wait(Interest::Readable, service);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Done,
            }
        },
    }
}

/// In the room: the connection's deadline, or the stop's grace, has passed. It closes as it drops.
pub(crate) fn expired(mut conn: Conn, service: &Service, why: Expiry) {
    let ending = match (conn.phase, why) {
        (Phase::New { .. } | Phase::Idle(_), Expiry::Stop) => {
            let before = if conn.messages == 0 { "before its first message" } else { "between messages" };
            info!(target: "access", "{conn} closed at the stop, {before} ({} messages)", conn.messages);
            Ending::IdleClosed
        }
        (Phase::New { .. } | Phase::Idle(_), Expiry::Deadline) if conn.partial() > 0 => {
            let (which, timeout) = match conn.phase {
                Phase::New { .. } => ("its first message".to_owned(), service.read_timeout),
                _ => (format!("message {}", conn.messages + 1), service.idle_timeout),
            };
            info!(
                target: "access",
                "{conn} timed out: {} B of {which} arrived, not its end, within {timeout:?} ({} messages)",
                conn.partial(),
                conn.messages
            );
            Ending::TimedOut
        }
        (Phase::New { .. }, Expiry::Deadline) => {
            let awaited = if conn.expects_proxy_header() {
                "PROXY header"
            } else if conn.is_handshaking() {
                "finished TLS handshake"
            } else {
                "message"
            };
            info!(target: "access", "{conn} timed out: no {awaited} within {:?}", service.read_timeout);
            Ending::TimedOut
        }
        (Phase::Idle(_), Expiry::Deadline) => {
            info!(target: "access", "{conn} closed after {:?} without a message ({} messages)", service.idle_timeout, conn.messages);
            Ending::IdleClosed
        }
        (Phase::Writing, _) => {
            let (written, left) = conn
                .extras
                .as_ref()
                .and_then(|extras| extras.pending.as_ref())
                .map_or((0, 0), |pending| (pending.written, pending.rest.len()));
            warn!(
                target: "access",
                "{conn} timed out: wrote {written} of {} reply bytes in {:?}; reset, so the client can tell",
                written + left,
                service.write_timeout
            );
            // A reset, not a FIN: a reply cut short must not look complete.
            let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
            Ending::TimedOut
        }
        (Phase::Lingering { discarded, .. }, _) => {
            info!(target: "access", "{conn}: stopped discarding its input after {discarded} B and {:?}", service.read_timeout);
            // Served already: the ending was said when the reply was out.
            return;
        }
    };
    conn.tally.end(ending);
}

/// Answers a message that found every worker busy and the queue full, then closes as a served connection
/// closes, so that a client that sent a long message still gets the busy reply rather than a reset. The
/// short reply fits the send buffer of a connection that has no reply in flight. A client that only
/// closed its side has sent no message: it is not turned away, just closed.
pub(crate) fn turn_away(conn: Conn, service: &Service) -> Step {
    refuse(conn, service, format_args!("every worker busy and the queue full"))
}

/// Answers the first message of a connection whose client already had `max_per_client` connections open
/// when it came, as `turn_away` does.
fn turn_away_client(conn: Conn, service: &Service, open: usize) -> Step {
    let max = service.per_client.as_ref().map_or(open, |clients| clients.max());
    let ip = conn.client().ip().to_canonical();
    refuse(conn, service, format_args!("{open} connections from {ip} already open (max_per_client {max})"))
}

fn refuse(conn: Conn, service: &Service, why: fmt::Arguments<'_>) -> Step {
    let mut byte = [0; 1];
    if matches!(conn.stream.peek(&mut byte), Ok(0)) {
        return client_closed(conn);
    }
    let mut conn = conn;
    if conn.is_handshaking() {
        // A reply in plain text would not be TLS; there is no session to send it in yet.
        warn!(target: "access", "{conn} turned away before its TLS handshake, closed without a reply: {why}");
    } else {
        let mut framed = Vec::with_capacity(service.busy_reply.len() + framing::MAX_EDGE);
        conn.framing.encode(&service.busy_reply, &mut framed);
        let _ = conn.write_some(&framed);
        warn!(target: "access", "{conn} turned away with the busy reply: {why}");
    }
    conn.tally.end(Ending::Busy);
    close_gracefully(conn, service, true)
}

/// A place for one more connection from `client` under `max_per_client`.
fn client_quota(service: &Service, client: SocketAddr) -> Quota {
    service.per_client.as_ref().map_or(Quota::Free, |clients| clients.take(client))
}

/// Writes as much of `data` as the socket takes now.
fn write_some(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match (&*stream).write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if is_would_block(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Logs an I/O failure at the right level: a client that hung up is routine, anything else is worth a warning.
fn failed(conn: Conn, doing: &str, error: &io::Error) -> Step {
    if is_client_disconnect(error) {
        info!(target: "access", "{conn} hung up while we were {doing}: {error}");
        conn.finish(Ending::HungUp)
    } else {
        warn!(target: "access", "{conn}: failed {doing}: {error}");
        conn.finish(Ending::Error)
    }
}

fn is_would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

fn is_client_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}
