//! Just enough HTTP/1.1 for a scraper: one request per connection, `GET /metrics` answered, anything else
//! refused, and every connection bounded so that no client can keep the metrics thread for long.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use prometheus_client::{encoding::prometheus_text, registry::Registry};

/// The most one connection may take, reading the request and writing the answer together.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head read; a scraper's is a few hundred bytes.
const MAX_REQUEST: usize = 8 << 10;

/// Answers one connection; any failure just ends it (the scraper sees the close and retries next time).
pub fn answer(mut stream: TcpStream, registry: &Registry) {
    let deadline = Instant::now() + DEADLINE;
    let response = match read_head(&mut stream, deadline) {
        Ok(Some(head)) => respond(&head, registry),
        Ok(None) => reply("431 Request Header Fields Too Large", "text/plain", "request too large\n".into()),
        // Timed out, reset or closed before a whole request: nobody to answer.
        Err(_) => return,
    };
    let Some(left) = deadline.checked_duration_since(Instant::now()) else { return };
    if stream.set_write_timeout(Some(left.max(Duration::from_millis(1)))).is_ok() {
        let _ = stream.write_all(&response);
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// The request head up to its blank line; `None` when it is longer than `MAX_REQUEST`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let Some(left) = left else { return Err(io::ErrorKind::TimedOut.into()) };
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// The whole response to a request head.
fn respond(head: &[u8], registry: &Registry) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let mut body = String::new();
            match prometheus_text::encode(&mut body, registry) {
                Ok(()) if method == "HEAD" => head_only(reply("200 OK", prometheus_text::CONTENT_TYPE, body)),
                Ok(()) => reply("200 OK", prometheus_text::CONTENT_TYPE, body),
                Err(_) => {
                    reply("500 Internal Server Error", "text/plain", "cannot encode the metrics\n".into())
                }
            }
        }
        (_, "/metrics") => reply("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        _ => reply("404 Not Found", "text/plain", "poolserver serves its metrics at /metrics\n".into()),
    }
}

fn reply(status: &str, content_type: &str, body: String) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The response without its body, for HEAD.
fn head_only(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(request: &str) -> String {
        let response = respond(request.as_bytes(), &Registry::default());
        String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn only_get_metrics_is_answered() {
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(status("\u{1b}\r\n\r\n"), "HTTP/1.1 404 Not Found");
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &Registry::default());
        assert!(head.ends_with(b"\r\n\r\n"), "{}", String::from_utf8_lossy(&head));
    }
}
