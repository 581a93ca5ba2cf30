//! `--proxy-protocol` against the real binary: the client address from v1 and v2 headers reaches the log,
//! health checks (v2 LOCAL) are served, and bad headers close the connection as protocol errors; with
//! `--proxy-from`, only the named peers' headers are believed.

mod support;

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ppp::v2::{self, Builder, Command, Protocol, Version};
use support::{REPLY, Server, WAIT, connect, exchange, write_config};

fn v2_header(command: Command, addresses: v2::Addresses) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses).build().unwrap()
}

fn proxied_server() -> Server {
    Server::start(&["--bind", "127.0.0.1:0", "--proxy-protocol", "--read-timeout", "1s"])
}

#[test]
fn a_v1_header_with_the_request_in_the_same_segment() {
    let mut server = proxied_server();
    let reply = exchange(server.addr, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\nhello").unwrap();
    assert_eq!(reply, REPLY.as_bytes());
    let line = server.wait_for(" served: ");
    assert!(line.contains("] 192.0.2.7:40000 (via 127.0.0.1:"), "{line}");
    assert!(
        line.ends_with("5 B in, 15 B out") || line.contains(" 5 B in,"),
        "header bytes counted as request: {line}"
    );
    assert!(line.ends_with("request \"hello\""), "{line}");
}

#[test]
fn a_request_that_came_with_the_header_is_read_up_to_max_request() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--proxy-protocol", "--mode", "echo"]);
    let mut request = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\n".to_vec();
    let body: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
    request.extend_from_slice(&body);
    assert_eq!(exchange(server.addr, &request).unwrap(), body);
}

#[test]
fn a_client_that_closes_before_any_header_byte_has_hung_up() {
    let mut server = proxied_server();
    drop(connect(server.addr));
    server.wait_for("closed the connection without sending a PROXY header");
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
    assert!(server.log.iter().any(|l| l.contains("hung up 1, idle closed 0, errors 0")), "{:#?}", server.log);
}

#[test]
fn a_v2_header_then_the_request_later() {
    let mut server = proxied_server();
    let mut client = connect(server.addr);
    let source = v2::IPv6::new(
        "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap(),
        std::net::Ipv6Addr::LOCALHOST,
        40001,
        8000,
    );
    client.write_all(&v2_header(Command::Proxy, source.into())).unwrap();
    // The header alone is not the request: nothing comes back until the request does.
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(client.read(&mut [0; 16]).is_err(), "replied before the request arrived");
    client.write_all(b"hello").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes());
    let line = server.wait_for(" served: ");
    assert!(line.contains("] [2001:db8::7]:40001 (via 127.0.0.1:"), "{line}");
}

#[test]
fn a_v2_local_health_check_is_served_as_the_peer_itself() {
    let mut server = proxied_server();
    let mut request = v2_header(Command::Local, v2::Addresses::Unspecified);
    request.extend_from_slice(b"hello");
    assert_eq!(exchange(server.addr, &request).unwrap(), REPLY.as_bytes());
    let line = server.wait_for(" served: ");
    assert!(line.contains("] 127.0.0.1:") && !line.contains("via"), "{line}");
}

#[test]
fn bad_headers_are_closed_as_protocol_errors_without_a_reply() {
    let mut server = proxied_server();
    let cases: [(&[u8], &str); 3] = [
        (b"hello", "does not start with a PROXY protocol header"),
        (b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\nhello", "malformed PROXY v1 header"),
        (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", "PROXY v2 header of 65551 bytes"),
    ];
    for (request, reason) in cases {
        assert_eq!(exchange(server.addr, request).unwrap(), b"", "{reason}");
        let line = server.wait_for(reason);
        assert!(line.contains("[WARN]") && line.contains("PROXY protocol error"), "{line}");
    }
    // Truncated, then the client closes its side.
    let client = connect(server.addr);
    (&client).write_all(b"PROXY TCP4 192.0.2.7").unwrap();
    support::finish_sending(&client);
    assert_eq!(support::read_rest(client).unwrap(), 0);
    server.wait_for("closed before sending a complete PROXY header");
}

#[test]
fn a_truncated_header_is_given_up_at_the_read_timeout() {
    let mut server = proxied_server();
    let mut client = connect(server.addr);
    client.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.wait_for("timed out: no PROXY header within 1s");
}

#[test]
fn without_the_option_a_proxy_header_is_just_request_bytes() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--mode", "echo"]);
    let request = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\nhello";
    assert_eq!(exchange(server.addr, request).unwrap(), request);
}

#[test]
fn a_slow_header_does_not_hold_a_worker() {
    // One worker, and a read_timeout far longer than the answered client's patience: a worker held by a
    // partial header stays held past that patience, so the test fails instead of waiting it out.
    let args = ["--bind", "127.0.0.1:0", "--proxy-protocol", "--workers", "1", "--read-timeout", "1m"];
    let server = Server::start(&args);
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            let client = connect(server.addr);
            (&client).write_all(b"PROXY TCP4 ").unwrap();
            client
        })
        .collect();
    // Their bytes arrived before this client connected, so the server takes them first (its accept queue
    // and its worker queue are both in order): the only worker meets the partial headers first.
    let mut answered = connect(server.addr);
    answered.set_read_timeout(Some(WAIT)).unwrap();
    answered.write_all(b"PROXY UNKNOWN\r\nhello").unwrap();
    let mut reply = Vec::new();
    answered.read_to_end(&mut reply).expect("answered while the partial headers are pending");
    assert_eq!(reply, REPLY.as_bytes());
    // The stalled clients are still waiting for their headers: nothing gave up on them to make room.
    assert!(
        stalled.iter().all(|client| !support::is_closed_by_server(client)),
        "stalled clients were closed"
    );
}

/// Connects from the loopback address `from`, sends a v1 header that claims `client` and a message, and
/// reads the reply: REPLY, the busy reply, or nothing when the server closed the connection. The
/// connection is returned open, so that a keep-alive server keeps counting it against `client`.
fn claim(addr: SocketAddr, from: &str, client: &str) -> (TcpStream, Vec<u8>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!("PROXY TCP4 {client} 127.0.0.1 40000 8000\r\nhello");
    // Both replies are 15 bytes; a close (or a reset, which may come while writing) reads as none.
    let mut reply = vec![0; REPLY.len()];
    if stream.write_all(request.as_bytes()).and_then(|()| stream.read_exact(&mut reply)).is_err() {
        reply.clear();
    }
    (stream, reply)
}

const BUSY: &str = "服务器繁忙";

/// The hole `--proxy-from` closes, as it stays without it: one peer claims 60 sources and holds 60
/// conversations past `--max-per-client 2`, and the server warns at start that this is possible.
#[test]
fn without_proxy_from_one_peer_holds_60_forged_clients_past_the_quota() {
    let args = ["--bind", "127.0.0.1:0", "--proxy-protocol", "--keep-alive", "--max-per-client", "2"];
    let mut server = Server::start(&args);
    let line = server.wait_for("proxy_protocol without proxy_from");
    assert!(line.contains("[WARN]"), "{line}");
    let held: Vec<_> = (1..=60).map(|i| claim(server.addr, "127.0.0.1", &format!("192.0.2.{i}"))).collect();
    let served = held.iter().filter(|(_, reply)| reply == REPLY.as_bytes()).count();
    assert_eq!(served, 60);
}

/// With `--proxy-from`, the same 60 forged claims from a peer outside it are refused (closed without a
/// reply, counted as errors, logged at most once a second), while the balancer that is in it is believed:
/// its client's conversations count against that client's quota.
#[test]
fn with_proxy_from_forged_headers_from_other_peers_are_refused() {
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--proxy-from",
        "192.0.2.0/24, 127.0.0.2",
        "--keep-alive",
        "--max-per-client",
        "2",
    ];
    let mut server = Server::start(&args);
    let started = Instant::now();
    let forged: Vec<_> = (1..=60).map(|i| claim(server.addr, "127.0.0.1", &format!("192.0.2.{i}"))).collect();
    let elapsed = started.elapsed();
    assert!(forged.iter().all(|(_, reply)| reply.is_empty()), "a forged claim was answered");

    let balanced: Vec<_> = (0..3).map(|_| claim(server.addr, "127.0.0.2", "198.51.100.7")).collect();
    let replies: Vec<_> = balanced.iter().map(|(_, reply)| String::from_utf8_lossy(reply)).collect();
    assert_eq!(replies, [REPLY, REPLY, BUSY]);
    server.wait_for("198.51.100.7:40000 (via 127.0.0.2:");
    assert!(!server.log.iter().any(|l| l.contains("proxy_protocol without proxy_from")), "warned anyway");

    drop((forged, balanced));
    server.signal(libc::SIGTERM);
    server.wait_exit(WAIT);
    let summary = server.log.iter().find(|l| l.contains("stopped: ")).expect("a summary").clone();
    assert!(summary.contains("errors 60 "), "{summary}");
    let refusals: Vec<_> = server.log.iter().filter(|l| l.contains("PROXY header refused")).collect();
    assert!(!refusals.is_empty() && refusals[0].contains("127.0.0.1:"), "{:#?}", server.log);
    // One line a second at most: the first, then one for each second the 60 took (none within one).
    assert!(refusals.len() as u64 <= 1 + elapsed.as_secs(), "{} lines in {elapsed:?}", refusals.len());
}

#[test]
fn proxy_from_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        |from: &str| format!("bind = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_from = \"{from}\"\n");
    let config = write_config(dir.path(), &text("192.0.2.0/24"));
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(claim(server.addr, "127.0.0.1", "198.51.100.7").1, b"");
    fs::write(&config, text("192.0.2.0/24, 127.0.0.0/8")).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_next("reloaded the configuration");
    assert!(line.contains("proxy_from 192.0.2.0/24 → 192.0.2.0/24, 127.0.0.0/8"), "{line}");
    assert_eq!(claim(server.addr, "127.0.0.1", "198.51.100.7").1, REPLY.as_bytes());
}
