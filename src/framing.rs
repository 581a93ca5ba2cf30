//! Message edges on a byte stream, apart from sockets: where the next message in a buffer ends (line or
//! length-prefixed framing), and how a reply is framed on its way out.
//!
//! The decoder only looks at the bytes it is given and never copies them: a complete message is a range of
//! the buffer, and what is not yet complete is the caller's to keep until more arrives. A message longer
//! than the limit is refused as soon as that is certain: for a line, once `max + 2` bytes have come without
//! its `\n`; for a length prefix, from the prefix alone, before anything past it is read or allocated.

use std::ops::Range;

use crate::config::Framing;

/// The most bytes an edge adds to a message: the 4-byte length prefix, or a line's `\r\n`.
pub(crate) const MAX_EDGE: usize = 4;

/// What the front of a buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A complete message: its bytes are `message` (without the edge), and the whole of it, edge included,
    /// is the first `consumed` bytes.
    Message { message: Range<usize>, consumed: usize },
    /// No complete message yet (the buffer may be empty, or hold the start of one).
    NeedMore,
    /// The message is longer than the limit: the conversation cannot go on.
    TooLong(TooLong),
}

/// Why a message was refused as too long, as the log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooLong {
    /// A line: this many bytes (at least the limit plus the longest edge) arrived without its end.
    Line { without_end: usize },
    /// A length prefix announced this many bytes.
    Prefix { announced: u64 },
}

/// The first message at the front of `input`, if it is all there. `Framing::Raw` has no edges: the whole
/// input is one message (the caller never asks; it is here so the answer is total).
pub(crate) fn decode(framing: Framing, input: &[u8], max: usize) -> Decoded {
    match framing {
        Framing::Raw if input.is_empty() => Decoded::NeedMore,
        Framing::Raw => Decoded::Message { message: 0..input.len(), consumed: input.len() },
        Framing::Line => decode_line(input, max),
        Framing::Length => decode_length(input, max),
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

/// The bytes that go before a reply of `len` bytes.
pub(crate) fn reply_head(framing: Framing, len: usize) -> Option<[u8; 4]> {
    match framing {
        // A reply of 4 GiB or more cannot be framed; the prefix says the most it can (no handler replies so).
        Framing::Length => Some(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()),
        Framing::Raw | Framing::Line => None,
    }
}

/// The bytes that go after a reply.
pub(crate) fn reply_tail(framing: Framing) -> &'static [u8] {
    match framing {
        Framing::Line => b"\n",
        Framing::Raw | Framing::Length => b"",
    }
}

/// Appends `reply`, framed, to `out`.
pub(crate) fn frame_into(framing: Framing, reply: &[u8], out: &mut Vec<u8>) {
    if let Some(head) = reply_head(framing, reply.len()) {
        out.extend_from_slice(&head);
    }
    out.extend_from_slice(reply);
    out.extend_from_slice(reply_tail(framing));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message at the front of `input`, and what is left.
    fn all(framing: Framing, mut input: &[u8], max: usize) -> (Vec<Vec<u8>>, Result<usize, TooLong>) {
        let mut messages = Vec::new();
        loop {
            match decode(framing, input, max) {
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
            assert_eq!(decode(Framing::Line, &whole[..cut], 64), Decoded::NeedMore, "cut at {cut}");
        }
        assert_eq!(decode(Framing::Line, whole, 64), Decoded::Message { message: 0..12, consumed: 14 });
    }

    #[test]
    fn a_line_of_the_limit_passes_and_one_byte_more_is_refused_without_waiting_for_its_end() {
        let max = 8;
        let exact = [&[b'x'; 8][..], b"\r\n"].concat();
        assert_eq!(decode(Framing::Line, &exact, max), Decoded::Message { message: 0..8, consumed: 10 });
        let exact = [&[b'x'; 8][..], b"\n"].concat();
        assert_eq!(decode(Framing::Line, &exact, max), Decoded::Message { message: 0..8, consumed: 9 });
        assert_eq!(decode(Framing::Line, &[b'x'; 9], max), Decoded::NeedMore, "could still end in \\r\\n");
        assert!(matches!(decode(Framing::Line, &[b'x'; 10], max), Decoded::TooLong(TooLong::Line { .. })));
        let over = [&[b'x'; 9][..], b"\n"].concat();
        assert_eq!(decode(Framing::Line, &over, max), Decoded::TooLong(TooLong::Line { without_end: 9 }));
        // A megabyte without a newline is looked at only as far as the limit.
        assert!(matches!(decode(Framing::Line, &vec![b'y'; 1 << 20], max), Decoded::TooLong(_)));
    }

    #[test]
    fn length_prefixed_messages_follow_their_prefixes() {
        let mut input = Vec::new();
        for message in [&b"one"[..], b"", b"three"] {
            frame_into(Framing::Length, message, &mut input);
        }
        input.extend_from_slice(&[0, 0, 0, 9, b'p']);
        let (messages, left) = all(Framing::Length, &input, 16);
        assert_eq!(messages, [&b"one"[..], b"", b"three"]);
        assert_eq!(left, Ok(5));
        assert_eq!(decode(Framing::Length, &[0, 0], 16), Decoded::NeedMore);
    }

    #[test]
    fn a_prefix_over_the_limit_is_refused_from_the_prefix_alone() {
        assert_eq!(
            decode(Framing::Length, &(1_u32 << 31).to_be_bytes(), 1024),
            Decoded::TooLong(TooLong::Prefix { announced: 1 << 31 })
        );
        assert_eq!(
            decode(Framing::Length, &[0, 0, 4, 1], 1024),
            Decoded::TooLong(TooLong::Prefix { announced: 1025 })
        );
        assert_eq!(decode(Framing::Length, &[0, 0, 4, 0], 1024), Decoded::NeedMore);
    }

    #[test]
    fn replies_are_framed_the_way_messages_are() {
        let mut out = Vec::new();
        frame_into(Framing::Line, b"ok", &mut out);
        frame_into(Framing::Length, b"ok", &mut out);
        frame_into(Framing::Raw, b"ok", &mut out);
        assert_eq!(out, b"ok\n\0\0\0\x02okok");
    }

    #[test]
    fn raw_input_is_one_message_whatever_it_holds() {
        assert_eq!(decode(Framing::Raw, b"a\nb\n", 1), Decoded::Message { message: 0..4, consumed: 4 });
        assert_eq!(decode(Framing::Raw, b"", 1), Decoded::NeedMore);
    }
}
