//! A short, escaped preview of a client's request for the per-connection log line.
//!
//! Client bytes are hostile: a newline would forge a log line, an ESC would drive the reader's terminal, a
//! bidi override would reorder what they see. The preview keeps printable text as it is (the tutorial's
//! Chinese included) and escapes everything else, so one request is always one line of plain text.

use std::fmt::{self, Write};

/// How many bytes of the request the preview shows.
const PREVIEW_BYTES: usize = 64;

/// Displays as the escaped start of `bytes`, with `…` when it was cut.
pub(crate) struct Preview<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(PREVIEW_BYTES)];
        // The common request is plain printable ASCII: write it in one piece.
        if shown.iter().all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
            // Checked just above: every byte is ASCII.
            f.write_str(std::str::from_utf8(shown).map_err(|_| fmt::Error)?)?;
            return if shown.len() < self.0.len() { f.write_char('…') } else { Ok(()) };
        }
        for chunk in shown.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    ' ' => f.write_char(' ')?,
                    c => write!(f, "{}", c.escape_debug())?,
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        if shown.len() < self.0.len() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(bytes: &[u8]) -> String {
        Preview(bytes).to_string()
    }

    #[test]
    fn plain_text_and_chinese_stay_readable() {
        assert_eq!(preview(b"hello world"), "hello world");
        assert_eq!(preview("你好".as_bytes()), "你好");
    }

    #[test]
    fn control_characters_never_pass_raw() {
        assert_eq!(preview(b"a\nb\r\t\x1b[31m\x00"), "a\\nb\\r\\t\\u{1b}[31m\\0");
        assert_eq!(preview("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        assert_eq!(preview(b"say \"hi\" \\"), "say \\\"hi\\\" \\\\");
    }

    #[test]
    fn invalid_utf8_is_shown_as_hex() {
        assert_eq!(preview(b"\xff\xfeok"), "\\xff\\xfeok");
    }

    #[test]
    fn long_requests_are_cut() {
        let text = preview(&[b'a'; 100]);
        assert_eq!(text, format!("{}…", "a".repeat(PREVIEW_BYTES)));
    }
}
