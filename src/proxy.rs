//! The PROXY protocol header (v1 text and v2 binary, as HAProxy sends them) that a load balancer puts in
//! front of each connection, so that we log the real client's address instead of the balancer's.
//!
//! Parsing is the ppp crate's. This module bounds it: the header must be a prefix of a PROXY header from its
//! first byte, complete within `MAX_HEADER` bytes, and it is read without blocking, so a client that sends
//! garbage, too much or too little never costs more than its read timeout in the waiting room.
//!
//! It also decides whom to believe. With `proxy_from`, a connection from a peer outside those ranges is
//! refused as soon as its first bytes arrive, header or not: it is closed without a reply and counted as an
//! error. Serving it as its real peer instead was the other choice; refusing is louder. A balancer missing
//! from the list shows at once as refusals instead of as clients all named after the balancer (sharing one
//! `max_per_client` quota), and a client that forges headers learns nothing and gets nothing. The refusals
//! are logged at most once a second per address family, each line with the count since the last, so a
//! flood of them cannot flood the log.

use std::{
    io::{self, Read},
    net::{SocketAddr, TcpStream},
    time::Instant,
};

use log::warn;
use ppp::{PartialResult, v1, v2};

use crate::{
    cidr::{self, Cidr},
    log_gate::{LogGate, since_last_line},
};

/// The longest header we accept. v1 is at most 107 bytes; HAProxy's v2 headers are 28 (IPv4) or 52 (IPv6)
/// bytes plus any TLVs it was told to add.
pub(crate) const MAX_HEADER: usize = 512;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole header of `len` bytes; `source` is the client it speaks for, `None` for a health check
    /// (v2 LOCAL) or an unknown family, where the connection's own peer stands.
    Complete { source: Option<SocketAddr>, len: usize },
    /// A valid start; more bytes are needed.
    Incomplete,
    /// Not a header we accept, and why.
    Invalid(String),
}

/// Parses the start of a connection's input.
pub(crate) fn parse(input: &[u8]) -> Parsed {
    let checked = input.len().min(V2_SIGNATURE.len());
    let is_v2 = input[..checked] == V2_SIGNATURE[..checked];
    let is_v1 = input[..input.len().min(V1_PREFIX.len())] == V1_PREFIX[..input.len().min(V1_PREFIX.len())];
    if !is_v1 && !is_v2 {
        return Parsed::Invalid("the connection does not start with a PROXY protocol header".to_owned());
    }
    if is_v2 && input.len() >= 16 {
        let announced = 16 + usize::from(u16::from_be_bytes([input[14], input[15]]));
        if announced > MAX_HEADER {
            return Parsed::Invalid(format!("PROXY v2 header of {announced} bytes (at most {MAX_HEADER})"));
        }
    }
    if is_v2 { parse_v2(input) } else { parse_v1(input) }
}

/// A v1 header is one text line; nothing is parsed before its CRLF has arrived.
fn parse_v1(input: &[u8]) -> Parsed {
    match input.iter().position(|&b| b == b'\n') {
        None if input.len() >= V1_MAX => {
            return Parsed::Invalid(format!(
                "no end of line in the first {V1_MAX} bytes of a PROXY v1 header"
            ));
        }
        None => return Parsed::Incomplete,
        Some(end) if end == 0 || input[end - 1] != b'\r' => {
            return Parsed::Invalid("malformed PROXY v1 header: the line must end with CRLF".to_owned());
        }
        Some(_) => {}
    }
    match v1::Header::try_from(input) {
        Ok(header) => Parsed::Complete { source: v1_source(&header.addresses), len: header.header.len() },
        Err(e) => Parsed::Invalid(format!("malformed PROXY v1 header: {e}")),
    }
}

fn parse_v2(input: &[u8]) -> Parsed {
    let result = v2::Header::try_from(input);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        Ok(header) => {
            let source = match header.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_source(&header.addresses),
            };
            Parsed::Complete { source, len: header.len() }
        }
        Err(e) => Parsed::Invalid(format!("malformed PROXY v2 header: {e}")),
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: &v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    }
}

/// How far reading the header got.
#[derive(Debug)]
pub(crate) enum HeaderRead {
    /// Not all of it is here yet; wait until the socket is readable again.
    More,
    /// Read and parsed; `rest` is whatever of the request arrived with it.
    Done { source: Option<SocketAddr>, rest: Vec<u8> },
    /// The client closed before sending a byte of it (a load balancer's plain TCP check, say).
    Closed,
    /// A protocol error: the connection must be closed.
    Failed(String),
    /// The peer is not one whose headers are believed (`proxy_from`); already logged, it must be closed.
    Refused,
    /// The socket failed.
    Io(io::Error),
}

/// Reads what is available (without blocking) onto `received` and parses it, if `peer` is in `trusted`
/// (`None`: everyone is).
pub(crate) fn read_header(
    stream: &TcpStream,
    received: &mut Vec<u8>,
    peer: SocketAddr,
    trusted: Option<&[Cidr]>,
) -> HeaderRead {
    let start = received.len();
    received.resize(MAX_HEADER, 0);
    let result = (&*stream).read(&mut received[start..]);
    received.truncate(start + *result.as_ref().unwrap_or(&0));
    match result {
        Ok(0) if start == 0 => HeaderRead::Closed,
        Ok(0) => HeaderRead::Failed("closed before sending a complete PROXY header".to_owned()),
        Ok(_) if trusted.is_some_and(|ranges| !cidr::any_contains(ranges, peer.ip())) => {
            log_refusal(peer);
            HeaderRead::Refused
        }
        Ok(_) => match parse(received) {
            Parsed::Complete { source, len } => HeaderRead::Done { source, rest: received[len..].to_vec() },
            Parsed::Incomplete => HeaderRead::More,
            Parsed::Invalid(reason) => HeaderRead::Failed(reason),
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => HeaderRead::More,
        Err(e) => HeaderRead::Io(e),
    }
}

/// Refusals logged at most once a second for each address family.
static REFUSED_V4: LogGate = LogGate::new();
static REFUSED_V6: LogGate = LogGate::new();

fn log_refusal(peer: SocketAddr) {
    let family = if peer.ip().to_canonical().is_ipv4() { &REFUSED_V4 } else { &REFUSED_V6 };
    if let Some(unlogged) = family.due(Instant::now()) {
        let more = since_last_line(unlogged, "from peers of its address family");
        warn!(target: "access", "{peer}: PROXY header refused: the peer is not in proxy_from; closed{more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};

    fn v2_header(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses).build().unwrap()
    }

    fn complete(source: Option<&str>, len: usize) -> Parsed {
        Parsed::Complete { source: source.map(|s| s.parse().unwrap()), len }
    }

    #[test]
    fn v1_tcp4_and_tcp6_carry_the_client() {
        let v4 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\nhello";
        assert_eq!(parse(v4), complete(Some("192.0.2.7:40000"), v4.len() - 5));
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 40001 8000\r\n";
        assert_eq!(parse(v6), complete(Some("[2001:db8::1]:40001"), v6.len()));
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), complete(None, 15));
    }

    #[test]
    fn v2_tcp4_tcp6_and_local() {
        let v4 =
            v2_header(v2::Command::Proxy, v2::IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 40000, 8000).into());
        assert_eq!(parse(&v4), complete(Some("192.0.2.7:40000"), 28));
        let mut with_request = v4.clone();
        with_request.extend_from_slice(b"hello");
        assert_eq!(parse(&with_request), complete(Some("192.0.2.7:40000"), 28));

        let v6 = v2::IPv6::new(
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
            std::net::Ipv6Addr::LOCALHOST,
            40001,
            8000,
        );
        assert_eq!(
            parse(&v2_header(v2::Command::Proxy, v6.into())),
            complete(Some("[2001:db8::1]:40001"), 52)
        );

        let local = v2_header(v2::Command::Local, v2::Addresses::Unspecified);
        assert_eq!(parse(&local), complete(None, 16));
    }

    #[test]
    fn truncated_headers_ask_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\n";
        let v2 =
            v2_header(v2::Command::Proxy, v2::IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 40000, 8000).into());
        for cut in 1..v1.len() {
            assert_eq!(parse(&v1[..cut]), Parsed::Incomplete, "v1 cut at {cut}");
        }
        for cut in 1..v2.len() {
            assert_eq!(parse(&v2[..cut]), Parsed::Incomplete, "v2 cut at {cut}");
        }
    }

    fn invalid(input: &[u8], reason: &str) {
        match parse(input) {
            Parsed::Invalid(message) => assert!(message.contains(reason), "{message:?} lacks {reason:?}"),
            other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn malformed_headers_are_rejected_with_a_reason() {
        invalid(b"hello", "does not start with a PROXY protocol header");
        invalid(b"GET / HTTP/1.1\r\n", "does not start with");
        invalid(b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n", "malformed PROXY v1");
        invalid(b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 8000\r\n", "malformed PROXY v1");
        invalid(b"PROXY TCP5 192.0.2.7 127.0.0.1 1 2\r\n", "malformed PROXY v1");
        invalid(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n", "malformed PROXY v1");
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        invalid(&long, "PROXY v1");
    }

    #[test]
    fn malformed_and_oversized_v2_headers_are_rejected() {
        let mut wrong_version = v2_header(v2::Command::Local, v2::Addresses::Unspecified);
        wrong_version[12] = 0x30;
        invalid(&wrong_version, "malformed PROXY v2");
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        invalid(&oversized, "at most 512");
        let mut short_addresses = V2_SIGNATURE.to_vec();
        short_addresses.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        invalid(&short_addresses, "malformed PROXY v2");
    }

    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::{collection::vec, prelude::*};

        use super::*;

        /// A valid header, as HAProxy would send it, and the client it names.
        fn header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
            let v4 = (any::<[u8; 4]>(), any::<[u8; 4]>(), any::<u16>(), any::<u16>());
            let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u16>(), any::<u16>());
            prop_oneof![
                v4.prop_map(|(s, d, sp, dp)| {
                    let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
                    (
                        format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n").into_bytes(),
                        Some(SocketAddr::from((s, sp))),
                    )
                }),
                v6.prop_map(|(s, d, sp, dp)| {
                    let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
                    (
                        format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n").into_bytes(),
                        Some(SocketAddr::from((s, sp))),
                    )
                }),
                Just((b"PROXY UNKNOWN\r\n".to_vec(), None)),
                (v4, vec(any::<u8>(), 0..100)).prop_map(|((s, d, sp, dp), tlvs)| {
                    let addresses = v2::IPv4::new(s, d, sp, dp);
                    (with_tlvs(v2_header(v2::Command::Proxy, addresses.into()), &tlvs), Some((s, sp).into()))
                }),
                (v6, vec(any::<u8>(), 0..100)).prop_map(|((s, d, sp, dp), tlvs)| {
                    let addresses = v2::IPv6::new(Ipv6Addr::from(s), Ipv6Addr::from(d), sp, dp);
                    let source = SocketAddr::from((Ipv6Addr::from(s), sp));
                    (with_tlvs(v2_header(v2::Command::Proxy, addresses.into()), &tlvs), Some(source))
                }),
                Just((v2_header(v2::Command::Local, v2::Addresses::Unspecified), None)),
            ]
        }

        /// A v2 header with `tlvs` after its addresses, counted in its length (not parsed by us).
        fn with_tlvs(mut header: Vec<u8>, tlvs: &[u8]) -> Vec<u8> {
            let len = u16::from_be_bytes([header[14], header[15]]) + tlvs.len() as u16;
            header[14..16].copy_from_slice(&len.to_be_bytes());
            header.extend_from_slice(tlvs);
            header
        }

        proptest! {
            /// Garbage, and garbage behind a real header's first bytes, never panics and is bounded.
            #[test]
            fn random_bytes_never_panic(
                (start, _) in header(), keep in 0..60_usize, tail in vec(any::<u8>(), 0..600)
            ) {
                let mut input = start[..keep.min(start.len())].to_vec();
                input.extend_from_slice(&tail);
                match parse(&input) {
                    Parsed::Complete { len, .. } => prop_assert!(len <= input.len() && len <= MAX_HEADER),
                    Parsed::Incomplete => prop_assert!(input.len() < MAX_HEADER),
                    Parsed::Invalid(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            /// However the bytes arrive, the header is incomplete until its last byte and then decodes to
            /// the client it names, with the request bytes after it left alone.
            #[test]
            fn a_header_split_anywhere_decodes_the_same(
                (header, source) in header(), request in vec(any::<u8>(), 0..64), cuts in vec(any::<usize>(), 0..6)
            ) {
                let input = [header.as_slice(), &request].concat();
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % input.len()).collect();
                cuts.push(input.len());
                cuts.sort_unstable();
                for cut in cuts.into_iter().filter(|&c| c > 0) {
                    let expected = if cut < header.len() {
                        Parsed::Incomplete
                    } else {
                        Parsed::Complete { source, len: header.len() }
                    };
                    prop_assert_eq!(parse(&input[..cut]), expected, "cut at {} of {}", cut, input.len());
                }
            }
        }
    }
}
