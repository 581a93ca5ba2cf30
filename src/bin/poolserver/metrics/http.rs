//! Just enough HTTP/1.1 for a scraper: one request per connection, `GET /metrics` answered, anything else
//! refused; the bounds on a connection's time (`DEADLINE`) and request size (`MAX_REQUEST`). Bytes in,
//! bytes out: the sockets are `clients`' business.

use std::time::Duration;

use prometheus_client::{encoding::prometheus_text, registry::Registry};

/// The most one connection may take, reading the request and writing the answer together.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head read; a scraper's is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 << 10;

/// The response to what a client sent so far, once there is one: its request head is complete, or longer
/// than `MAX_REQUEST` (431). `None`: more is needed.
pub fn response_to(received: &[u8], registry: &Registry) -> Option<Vec<u8>> {
    if received.windows(4).any(|w| w == b"\r\n\r\n") || received.windows(2).any(|w| w == b"\n\n") {
        Some(respond(received, registry))
    } else if received.len() > MAX_REQUEST {
        Some(reply("431 Request Header Fields Too Large", "text/plain", "request too large\n".into()))
    } else {
        None
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
    fn a_response_waits_for_the_whole_head_or_refuses_an_oversized_one() {
        let registry = Registry::default();
        assert_eq!(response_to(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", &registry), None);
        assert!(response_to(b"GET /metrics HTTP/1.1\r\n\r\n", &registry).is_some());
        let oversized = [b'a'; MAX_REQUEST + 1];
        let refused = response_to(&oversized, &registry).unwrap();
        assert!(refused.starts_with(b"HTTP/1.1 431 "));
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

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        proptest! {
            /// Whatever a client sends, there is a response once the head ends or passes the limit.
            #[test]
            fn random_requests_never_panic(bytes in vec(any::<u8>(), 0..10_000)) {
                let registry = Registry::default();
                match response_to(&bytes, &registry) {
                    Some(response) => prop_assert!(response.starts_with(b"HTTP/1.1 ")),
                    None => prop_assert!(bytes.len() <= MAX_REQUEST),
                }
            }

            /// However a request arrives, nothing is answered before its head is complete (the client's
            /// bytes are kept and looked at again whole, so the last piece gets the whole one's answer).
            #[test]
            fn a_request_split_anywhere_is_answered_only_when_whole(
                path in "/[a-z?=/]{0,20}", headers in vec("[A-Za-z-]{1,12}: [ -~]{0,40}", 0..8), cuts in vec(any::<usize>(), 0..6)
            ) {
                let registry = Registry::default();
                let request = format!("GET {path} HTTP/1.1\r\n{}\r\n", headers.iter().map(|h| format!("{h}\r\n")).collect::<String>());
                let request = request.as_bytes();
                let whole = response_to(request, &registry);
                prop_assert!(whole.is_some());
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % request.len()).filter(|&c| c > 0).collect();
                cuts.sort_unstable();
                for cut in cuts {
                    prop_assert_eq!(response_to(&request[..cut], &registry), None, "cut at {}", cut);
                }
            }
        }
    }
}
