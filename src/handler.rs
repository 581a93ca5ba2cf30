//! The protocol as a small trait, so that the pool, the waiting room, the timeouts and the stop are shared by
//! every protocol.
//!
//! A handler turns one message (the bytes of one read) into one reply. It sees who sent the message and can
//! keep state for the length of a conversation; it can end a conversation after a reply. It runs on worker
//! threads, possibly on several at once, so it is `Send + Sync`; a panic inside it closes that one connection
//! and the worker lives on. A plain closure taking `&Message` is a handler too.

use std::{any::Any, borrow::Cow, net::SocketAddr};

use crate::config::{Config, Mode};

/// Builds the reply to each message of a conversation.
///
/// A closure from `&Message` to anything that makes a [`Reply`] is a handler without state (see
/// [`Server`](crate::Server)). A handler with state names it as `State`: one value per conversation, made
/// with `Default` when the connection opens. This one numbers each client's messages and ends the
/// conversation on `bye`:
///
/// ```
/// use std::{
///     io::{BufRead, BufReader, Write},
///     net::TcpStream,
///     thread,
///     time::Duration,
/// };
///
/// use poolserver::{Config, Handler, Message, Reply, Server};
///
/// struct Numbered;
///
/// impl Handler for Numbered {
///     type State = u64;
///
///     fn reply<'a>(&'a self, message: &Message<'a>, count: &mut u64) -> Reply<'a> {
///         *count += 1;
///         let text = String::from_utf8_lossy(message.bytes()).trim().to_owned();
///         let reply = Reply::from(format!("{count}: {text}\n"));
///         if text == "bye" { reply.then_close() } else { reply }
///     }
/// }
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse()?;
/// config.keep_alive = true; // conversations: every message gets a reply until one side closes
/// let server = Server::bind_with(config, Numbered)?;
/// let (addr, stop) = (server.local_addr(), server.shutdown_handle());
/// let running = thread::spawn(move || server.run());
///
/// let mut client = TcpStream::connect(addr)?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// let mut replies = BufReader::new(client.try_clone()?);
/// for (message, expected) in [("hello", "1: hello\n"), ("again", "2: again\n"), ("bye", "3: bye\n")] {
///     client.write_all(message.as_bytes())?;
///     let mut reply = String::new();
///     replies.read_line(&mut reply)?;
///     assert_eq!(reply, expected);
/// }
/// stop.shutdown();
/// assert_eq!(running.join().expect("the server thread")?.messages, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Handler: Send + Sync + 'static {
    /// What the handler remembers for one conversation, made with `Default` when the connection opens and
    /// dropped when it closes. `()` for a handler that remembers nothing.
    type State: Default + Send + 'static;

    /// The reply to `message`. Borrow when you can (a fixed reply, or the message itself); allocate when you
    /// must. `Reply::then_close` ends the conversation after this reply.
    fn reply<'a>(&'a self, message: &Message<'a>, state: &mut Self::State) -> Reply<'a>;

    /// How the startup line names this protocol.
    fn name(&self) -> String {
        "custom handler".to_owned()
    }
}

/// One message: the bytes of one read of at most `max_request` bytes, and who sent it.
///
/// Only the server makes one; a handler reads it. Its fields are private, so it can grow without
/// breaking a handler.
///
/// ```
/// use std::{io::{Read, Write}, net::TcpStream, thread, time::Duration};
///
/// use poolserver::{Config, Message, Server};
///
/// let mut config = Config::default();
/// config.bind = "127.0.0.1:0".parse()?;
/// let server = Server::bind_with(config, |m: &Message<'_>| {
///     format!("message {} from {}: {} bytes", m.number(), m.client().ip(), m.bytes().len())
/// })?;
/// let (addr, stop) = (server.local_addr(), server.shutdown_handle());
/// let running = thread::spawn(move || server.run());
///
/// let mut client = TcpStream::connect(addr)?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// client.write_all(b"hello")?;
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "message 1 from 127.0.0.1: 5 bytes");
/// stop.shutdown();
/// running.join().expect("the server thread")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    client: SocketAddr,
    peer: SocketAddr,
    number: u64,
}

impl<'a> Message<'a> {
    pub(crate) fn new(bytes: &'a [u8], client: SocketAddr, peer: SocketAddr, number: u64) -> Message<'a> {
        Message { bytes, client, peer, number }
    }

    /// What the read brought: at most `max_request` bytes, not necessarily UTF-8.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The client: the source a PROXY protocol header named, or else the peer.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The other end of the TCP connection: the client itself, or the load balancer in front of it.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Which message of the conversation this is, counting from 1.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// The bytes to send back, and whether the conversation goes on after them.
///
/// It borrows what it can (a fixed reply, the message itself) and owns what it must:
///
/// ```
/// use poolserver::Reply;
///
/// let fixed = Reply::from("信息已收到");
/// assert_eq!(fixed.bytes(), "信息已收到".as_bytes());
/// let built = Reply::from(format!("{} bytes", 5));
/// assert_eq!(built.bytes(), b"5 bytes");
/// // With keep-alive, the conversation ends after this one:
/// let last = Reply::new(b"bye".as_slice()).then_close();
/// assert_eq!(last.bytes(), b"bye");
/// ```
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub(crate) bytes: Cow<'a, [u8]>,
    pub(crate) close: bool,
}

impl<'a> Reply<'a> {
    /// A reply of these bytes, borrowed or owned; the conversation goes on after it.
    pub fn new(bytes: impl Into<Cow<'a, [u8]>>) -> Reply<'a> {
        Reply { bytes: bytes.into(), close: false }
    }

    /// Closes the connection once this reply is sent, even with keep-alive on.
    pub fn then_close(mut self) -> Reply<'a> {
        self.close = true;
        self
    }

    /// The bytes that will be sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<'a> From<&'a [u8]> for Reply<'a> {
    fn from(bytes: &'a [u8]) -> Reply<'a> {
        Reply::new(bytes)
    }
}

impl<'a> From<&'a str> for Reply<'a> {
    fn from(text: &'a str) -> Reply<'a> {
        Reply::new(text.as_bytes())
    }
}

impl From<Vec<u8>> for Reply<'_> {
    fn from(bytes: Vec<u8>) -> Self {
        Reply::new(bytes)
    }
}

impl From<String> for Reply<'_> {
    fn from(text: String) -> Self {
        Reply::new(text.into_bytes())
    }
}

/// A closure from a message to anything that makes a reply is a handler without state.
impl<F, R> Handler for F
where
    F: Fn(&Message<'_>) -> R + Send + Sync + 'static,
    R: Into<Reply<'static>>,
{
    type State = ();

    fn reply<'a>(&'a self, message: &Message<'a>, _state: &mut ()) -> Reply<'a> {
        self(message).into()
    }
}

/// Mode `ack`: every message is answered with the same fixed bytes (the tutorial's `信息已收到`).
#[derive(Debug, Clone)]
pub struct Ack {
    reply: Vec<u8>,
}

impl Ack {
    /// Answers every message with `reply`.
    pub fn new(reply: impl Into<Vec<u8>>) -> Ack {
        Ack { reply: reply.into() }
    }
}

impl Handler for Ack {
    type State = ();

    fn reply<'a>(&'a self, _message: &Message<'a>, _state: &mut ()) -> Reply<'a> {
        Reply::new(self.reply.as_slice())
    }
}

/// Mode `echo`: the message's bytes are sent back unchanged, whatever they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    type State = ();

    fn reply<'a>(&'a self, message: &Message<'a>, _state: &mut ()) -> Reply<'a> {
        Reply::new(message.bytes())
    }
}

/// The protocol a `Config`'s `mode` names: what `Server::bind` serves.
#[derive(Debug, Clone)]
pub enum Builtin {
    /// Mode `ack`, with the config's `reply`.
    Ack(Ack),
    /// Mode `echo`.
    Echo(Echo),
}

impl Builtin {
    /// The protocol `config.mode` names, with `config.reply` for `ack`.
    pub fn from_config(config: &Config) -> Builtin {
        match config.mode {
            Mode::Ack => Builtin::Ack(Ack::new(config.reply.as_bytes())),
            Mode::Echo => Builtin::Echo(Echo),
        }
    }
}

impl Handler for Builtin {
    type State = ();

    fn reply<'a>(&'a self, message: &Message<'a>, state: &mut ()) -> Reply<'a> {
        match self {
            Builtin::Ack(ack) => Handler::reply(ack, message, state),
            Builtin::Echo(echo) => Handler::reply(echo, message, state),
        }
    }

    fn name(&self) -> String {
        match self {
            Builtin::Ack(_) => "mode ack".to_owned(),
            Builtin::Echo(_) => "mode echo".to_owned(),
        }
    }
}

/// A conversation's state with its type erased, so that the pool holds every handler the same way. A
/// handler without state (a zero-sized `State`) costs no allocation.
pub(crate) type State = Box<dyn Any + Send>;

/// A handler with its state type erased: what the pool and the connections hold.
pub(crate) trait Protocol: Send + Sync + 'static {
    fn new_state(&self) -> State;
    fn reply<'a>(&'a self, message: &Message<'a>, state: &mut State) -> Reply<'a>;
}

impl<H: Handler> Protocol for H {
    fn new_state(&self) -> State {
        Box::new(H::State::default())
    }

    fn reply<'a>(&'a self, message: &Message<'a>, state: &mut State) -> Reply<'a> {
        match state.downcast_mut::<H::State>() {
            Some(state) => Handler::reply(self, message, state),
            // Every state is made by `new_state` of this same handler, so this cannot happen; a fresh state
            // is the harmless answer if it ever did.
            None => Handler::reply(self, message, &mut H::State::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(bytes: &[u8]) -> Message<'_> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        Message::new(bytes, addr, addr, 1)
    }

    #[test]
    fn ack_ignores_the_message() {
        let ack = Ack::new("信息已收到");
        assert_eq!(Handler::reply(&ack, &message(b"anything"), &mut ()).bytes(), "信息已收到".as_bytes());
    }

    #[test]
    fn echo_returns_the_message_byte_for_byte() {
        assert_eq!(Handler::reply(&Echo, &message(b"\xff\x00hi"), &mut ()).bytes(), b"\xff\x00hi");
    }

    #[test]
    fn a_closure_is_a_handler_and_state_survives_between_messages() {
        let shout = |m: &Message<'_>| m.bytes().to_ascii_uppercase();
        let mut state = Protocol::new_state(&shout);
        assert_eq!(Protocol::reply(&shout, &message(b"hi"), &mut state).bytes(), b"HI");

        struct Count;
        impl Handler for Count {
            type State = u64;
            fn reply<'a>(&'a self, _: &Message<'a>, seen: &mut u64) -> Reply<'a> {
                *seen += 1;
                Reply::from(seen.to_string())
            }
        }
        let mut state = Protocol::new_state(&Count);
        Protocol::reply(&Count, &message(b"a"), &mut state);
        assert_eq!(Protocol::reply(&Count, &message(b"b"), &mut state).bytes(), b"2");
    }
}
