//! The protocol as a small trait, so the pool, the timeouts and the shutdown are shared by every protocol.
//!
//! A handler turns one request (the bytes of the single read) into the reply. It runs on a worker thread,
//! possibly on several at once, so it must be `Send + Sync`; a panic inside it closes that one connection and
//! is logged, and the worker lives on.

use std::borrow::Cow;

/// Builds the reply to one request.
pub trait Handler: Send + Sync + 'static {
    /// The bytes to send back for `request`. Borrow when you can (a fixed reply, or the request itself);
    /// allocate when you must.
    fn reply<'a>(&'a self, request: &'a [u8]) -> Cow<'a, [u8]>;
}

/// Mode `ack`: every request is answered with the same fixed bytes (the tutorial's `信息已收到`).
#[derive(Debug, Clone)]
pub struct Ack {
    reply: Vec<u8>,
}

impl Ack {
    pub fn new(reply: impl Into<Vec<u8>>) -> Ack {
        Ack { reply: reply.into() }
    }
}

impl Handler for Ack {
    fn reply<'a>(&'a self, _request: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Borrowed(&self.reply)
    }
}

/// Mode `echo`: the request's bytes are sent back unchanged, whatever they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn reply<'a>(&'a self, request: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Borrowed(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ignores_the_request() {
        let ack = Ack::new("信息已收到");
        assert_eq!(&*ack.reply(b"anything"), "信息已收到".as_bytes());
    }

    #[test]
    fn echo_returns_the_request_byte_for_byte() {
        assert_eq!(&*Echo.reply(b"\xff\x00hi"), b"\xff\x00hi");
    }
}
