//! Message edges on a byte stream, apart from sockets: where the next message in a buffer ends (line or
//! length-prefixed framing), and how a message or reply is framed on its way out. The server uses it, and
//! so can a client (`poolserver send` and `stress` do).
//!
//! The decoder only looks at the bytes it is given and never copies them: a complete message is a range of
//! the buffer, and what is not yet complete is the caller's to keep until more arrives. A message longer
//! than the limit is refused as soon as that is certain: for a line, once `max + 2` bytes have come without
//! its `\n`; for a length prefix, from the prefix alone, before anything past it is read or allocated.
//!
//! ```
//! use poolserver::{Decoded, Framing};
//!
//! let mut wire = Vec::new();
//! Framing::Length.encode(b"hello", &mut wire);
//! Framing::Length.encode(b"again", &mut wire);
//! assert_eq!(&wire[..9], b"\0\0\0\x05hello");
//! match Framing::Length.decode(&wire, 1024) {
//!     Decoded::Message { message, consumed } => {
//!         assert_eq!(&wire[message], b"hello");
//!         assert_eq!(consumed, 9);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(Framing::Line.decode(b"no end yet", 1024), Decoded::NeedMore);
//! ```

use std::ops::Range;

use crate::config::Framing;

/// The most bytes an edge adds to a message: the 4-byte length prefix, or a line's `\r\n`.
pub(crate) const MAX_EDGE: usize = 4;

/// What the front of a buffer holds (see [`Framing::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete message.
    Message {
        /// Where its bytes are in the buffer, without the edge.
        message: Range<usize>,
        /// How many bytes at the front of the buffer it took, edge included.
        consumed: usize,
    },
    /// No complete message yet (the buffer may be empty, or hold the start of one).
    NeedMore,
    /// The message is longer than the limit: the conversation cannot go on.
    TooLong(TooLong),
}

/// Why a message was refused as too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLong {
    /// A line: this many bytes arrived without its end (or with an end, but past the limit).
    Line {
        /// The bytes seen of the line.
        without_end: usize,
    },
    /// A length prefix announced this many bytes.
    Prefix {
        /// The length the prefix gave.
        announced: u64,
    },
}

impl Framing {
    /// The first message at the front of `input`, if it is all there, and at most `max` bytes long
    /// without its edge. `Framing::Raw` has no edges: the whole input is one message.
    pub fn decode(self, input: &[u8], max: usize) -> Decoded {
        match self {
            Framing::Raw if input.is_empty() => Decoded::NeedMore,
            Framing::Raw => Decoded::Message { message: 0..input.len(), consumed: input.len() },
            Framing::Line => decode_line(input, max),
            Framing::Length => decode_length(input, max),
        }
    }

    /// Appends `message` to `out` with its edge: a `\n` after it (`Line`), its length before it
    /// (`Length`), nothing (`Raw`). The server frames its replies so; a client frames its messages so.
    pub fn encode(self, message: &[u8], out: &mut Vec<u8>) {
        if let Some(head) = reply_head(self, message.len()) {
            out.extend_from_slice(&head);
        }
        out.extend_from_slice(message);
        out.extend_from_slice(reply_tail(self));
    }
}

fn decode_line(input: &[u8], max: usize) -> Decoded {
    // A message of `max` bytes ends within `max + 2` (with a `\r\n`): no need to look further.
    let window = &input[..input.len().min(max.saturating_add(2))];
    let Some(newline) = memchr(b'\n', window) else {
        return if window.len() >= max.saturating_add(2) {
            Decoded::TooLong(TooLong::Line { without_end: input.len() })
        } else {
            Decoded::NeedMore
        };
    };
    let end = if newline > 0 && input[newline - 1] == b'\r' { newline - 1 } else { newline };
    if end > max {
        return Decoded::TooLong(TooLong::Line { without_end: end });
    }
    Decoded::Message { message: 0..end, consumed: newline + 1 }
}

fn decode_length(input: &[u8], max: usize) -> Decoded {
    let Some(prefix) = input.first_chunk::<4>() else { return Decoded::NeedMore };
    let announced = u32::from_be_bytes(*prefix);
    if u64::from(announced) > max as u64 {
        return Decoded::TooLong(TooLong::Prefix { announced: u64::from(announced) });
    }
    let end = 4 + announced as usize;
    if input.len() < end {
        return Decoded::NeedMore;
    }
    Decoded::Message { message: 4..end, consumed: end }
}

/// The position of the first `byte` in `haystack`. Lines are short and the scan runs once per byte, so a
/// plain loop (which the compiler vectorises) does; no dependency for it.
fn memchr(byte: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == byte)
}

/// The bytes that go before a message of `len` bytes.
fn reply_head(framing: Framing, len: usize) -> Option<[u8; 4]> {
    match framing {
        // A reply of 4 GiB or more cannot be framed; the prefix says the most it can (no handler replies so).
        Framing::Length => Some(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()),
        Framing::Raw | Framing::Line => None,
    }
}

/// The bytes that go after a message.
fn reply_tail(framing: Framing) -> &'static [u8] {
    match framing {
        Framing::Line => b"\n",
        Framing::Raw | Framing::Length => b"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message at the front of `input`, and what is left.
    fn all(framing: Framing, mut input: &[u8], max: usize) -> (Vec<Vec<u8>>, Result<usize, TooLong>) {
        let mut messages = Vec::new();
        loop {
            match framing.decode(input, max) {
                Decoded::Message { message, consumed } => {
                    messages.push(input[message].to_vec());
                    input = &input[consumed..];
                }
                Decoded::NeedMore => return (messages, Ok(input.len())),
                Decoded::TooLong(why) => return (messages, Err(why)),
            }
        }
    }

    #[test]
    fn lines_are_split_at_newlines_and_a_carriage_return_before_one_is_dropped() {
        let (messages, left) = all(Framing::Line, b"a\nbb\r\n\nc\rd\nhel", 10);
        assert_eq!(messages, [&b"a"[..], b"bb", b"", b"c\rd"]);
        assert_eq!(left, Ok(3));
    }

    #[test]
    fn a_line_split_anywhere_is_one_message_once_its_end_comes() {
        let whole = b"hello, world\r\n";
        for cut in 0..whole.len() {
            assert_eq!(Framing::Line.decode(&whole[..cut], 64), Decoded::NeedMore, "cut at {cut}");
        }
        assert_eq!(Framing::Line.decode(whole, 64), Decoded::Message { message: 0..12, consumed: 14 });
    }

    #[test]
    fn a_line_of_the_limit_passes_and_one_byte_more_is_refused_without_waiting_for_its_end() {
        let max = 8;
        let exact = [&[b'x'; 8][..], b"\r\n"].concat();
        assert_eq!(Framing::Line.decode(&exact, max), Decoded::Message { message: 0..8, consumed: 10 });
        let exact = [&[b'x'; 8][..], b"\n"].concat();
        assert_eq!(Framing::Line.decode(&exact, max), Decoded::Message { message: 0..8, consumed: 9 });
        assert_eq!(Framing::Line.decode(&[b'x'; 9], max), Decoded::NeedMore, "could still end in \\r\\n");
        assert!(matches!(Framing::Line.decode(&[b'x'; 10], max), Decoded::TooLong(TooLong::Line { .. })));
        let over = [&[b'x'; 9][..], b"\n"].concat();
        assert_eq!(Framing::Line.decode(&over, max), Decoded::TooLong(TooLong::Line { without_end: 9 }));
        // A megabyte without a newline is looked at only as far as the limit.
        assert!(matches!(Framing::Line.decode(&vec![b'y'; 1 << 20], max), Decoded::TooLong(_)));
    }

    #[test]
    fn length_prefixed_messages_follow_their_prefixes() {
        let mut input = Vec::new();
        for message in [&b"one"[..], b"", b"three"] {
            Framing::Length.encode(message, &mut input);
        }
        input.extend_from_slice(&[0, 0, 0, 9, b'p']);
        let (messages, left) = all(Framing::Length, &input, 16);
        assert_eq!(messages, [&b"one"[..], b"", b"three"]);
        assert_eq!(left, Ok(5));
        assert_eq!(Framing::Length.decode(&[0, 0], 16), Decoded::NeedMore);
    }

    #[test]
    fn a_prefix_over_the_limit_is_refused_from_the_prefix_alone() {
        assert_eq!(
            Framing::Length.decode(&(1_u32 << 31).to_be_bytes(), 1024),
            Decoded::TooLong(TooLong::Prefix { announced: 1 << 31 })
        );
        assert_eq!(
            Framing::Length.decode(&[0, 0, 4, 1], 1024),
            Decoded::TooLong(TooLong::Prefix { announced: 1025 })
        );
        assert_eq!(Framing::Length.decode(&[0, 0, 4, 0], 1024), Decoded::NeedMore);
    }

    #[test]
    fn replies_are_framed_the_way_messages_are() {
        let mut out = Vec::new();
        Framing::Line.encode(b"ok", &mut out);
        Framing::Length.encode(b"ok", &mut out);
        Framing::Raw.encode(b"ok", &mut out);
        assert_eq!(out, b"ok\n\0\0\0\x02okok");
    }

    #[test]
    fn raw_input_is_one_message_whatever_it_holds() {
        assert_eq!(Framing::Raw.decode(b"a\nb\n", 1), Decoded::Message { message: 0..4, consumed: 4 });
        assert_eq!(Framing::Raw.decode(b"", 1), Decoded::NeedMore);
    }
}
