//! TLS on the same pool, against the real binary (and the library once): conversations and the tutorial's
//! exchange over TLS, `send --tls --ca`, handshakes that never finish held in the waiting room next to real
//! clients, a plain-text client on the TLS port, close_notify, the PROXY header before the hello, and the
//! certificate swapped by a reload (or kept, when the new pair is bad). The certificate authority is made
//! here, with rcgen.

mod support;

use std::{
    fs,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use poolserver::rustls::{
    self, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    client::Resumption,
    pki_types::{CertificateDer, ServerName},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{REPLY, Server, WAIT, command, connect, output, rejected, spawn, write_config};

/// A test certificate authority, and the files of certificates it signed for 127.0.0.1.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate (chain of one) and its key, as files, with the certificate's DER to compare with what a
/// client is shown.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "poolserver test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = Ca { issuer, dir: tempfile::tempdir().unwrap() };
        fs::write(ca.pem(), ca.issuer.pem()).unwrap();
        ca
    }

    /// The CA certificate's file, for `--ca`.
    fn pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new certificate for 127.0.0.1 and localhost, in `NAME.pem` and `NAME.key`.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            der: cert.der().clone(),
        };
        fs::write(&leaf.cert, cert.pem()).unwrap();
        fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A client that trusts this CA and nothing else, with no session resumption.
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn tls_server(leaf: &Leaf, more: &[&str]) -> Server {
    let mut args =
        vec!["--bind", "127.0.0.1:0", "--tls-cert", path(&leaf.cert), "--tls-key", path(&leaf.key)];
    args.extend_from_slice(more);
    Server::start(&args)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr`, its handshake done.
fn open(client: &Arc<ClientConfig>, addr: SocketAddr) -> Tls {
    let tcp = connect(addr);
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = StreamOwned::new(ClientConnection::new(Arc::clone(client), name).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// Sends one message and reads one reply of `len` bytes.
fn ask(tls: &mut Tls, message: &[u8], len: usize) -> Vec<u8> {
    tls.write_all(message).unwrap();
    tls.flush().unwrap();
    let mut reply = vec![0; len];
    tls.read_exact(&mut reply).expect("a reply");
    reply
}

/// The tutorial's exchange over TLS: the reply, and whether the server ended it with close_notify (a read
/// of 0) rather than a bare FIN (UnexpectedEof).
fn exchange(client: &Arc<ClientConfig>, addr: SocketAddr, message: &[u8]) -> (Vec<u8>, bool) {
    let mut tls = open(client, addr);
    tls.write_all(message).unwrap();
    tls.flush().unwrap();
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => (reply, true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (reply, false),
        Err(e) => panic!("reading the reply: {e}"),
    }
}

fn peer_certificate(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().expect("a certificate")[0].clone().into_owned()
}

#[test]
fn a_conversation_and_an_exchange_over_tls_end_with_close_notify() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let client = ca.client();
    let args = ["--keep-alive", "--log-each-message", "--mode", "echo", "--max-request", "8192"];
    let mut server = tls_server(&leaf, &args);
    let mut tls = open(&client, server.addr);
    for message in [&b"one"[..], b"two", &[b'x'; 5000]] {
        assert_eq!(ask(&mut tls, message, message.len()), message);
    }
    assert_eq!(peer_certificate(&tls), leaf.der);
    drop(tls);
    server.wait_for("message 3: 5000 B in");

    let mut server = tls_server(&leaf, &[]);
    let (reply, close_notify) = exchange(&client, server.addr, b"hello");
    assert_eq!(reply, REPLY.as_bytes());
    assert!(close_notify, "the reply ended with a bare FIN, not close_notify");
    server.wait_for("served: 5 B in");
}

#[test]
fn send_tls_checks_the_certificate_against_the_ca() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let server = tls_server(&leaf, &[]);
    let addr = server.addr.to_string();
    let out =
        output(&mut command(&["send", "--addr", &addr, "--tls", "--ca", path(&ca.pem()), "hi"], &[]), WAIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, REPLY.as_bytes());

    let other = Ca::new();
    let out = output(
        &mut command(&["send", "--addr", &addr, "--tls", "--ca", path(&other.pem()), "hi"], &[]),
        WAIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate") && stderr.lines().count() == 1, "{stderr}");

    let out = output(&mut command(&["send", "--addr", &addr, "--tls", "--insecure", "hi"], &[]), WAIT);
    assert_eq!(out.stdout, REPLY.as_bytes(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A ClientHello sent, and nothing more: the handshake waits on the client for ever.
fn hello_and_silence(client: &Arc<ClientConfig>, addr: SocketAddr) -> TcpStream {
    let mut tcp = connect(addr);
    let mut session =
        ClientConnection::new(Arc::clone(client), ServerName::IpAddress(addr.ip().into())).unwrap();
    session.write_tls(&mut tcp).unwrap();
    tcp
}

#[test]
fn handshakes_that_never_finish_wait_in_the_room_not_on_a_worker() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let client = ca.client();
    let read_timeout = Duration::from_secs(4);
    let mut server = tls_server(&leaf, &["--workers", "2", "--read-timeout", "4s"]);
    let addr = server.addr;
    let opened = Instant::now();
    let silent: Vec<TcpStream> = (0..1000).map(|_| hello_and_silence(&client, addr)).collect();
    // 50 real clients, 10 at a time, while the 1,000 wait.
    let real: Vec<_> = (0..10)
        .map(|_| {
            let client = Arc::clone(&client);
            spawn(move || (0..5).map(|_| exchange(&client, addr, b"hello").0).collect::<Vec<_>>())
        })
        .collect();
    for thread in real {
        for reply in thread.join(WAIT * 4) {
            assert_eq!(reply, REPLY.as_bytes(), "a real client was not served");
        }
    }
    for mut tcp in silent {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        // The server's part of the handshake, then its close.
        let mut sink = [0; 4096];
        loop {
            match tcp.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        assert!(opened.elapsed() + Duration::from_millis(200) >= read_timeout, "closed before read_timeout");
    }
    server.wait_for("timed out: no finished TLS handshake within 4s");
    assert!(!server.log.iter().any(|line| line.contains("turned away")), "{}", server.log.join("\n"));
}

#[test]
fn a_plain_text_client_on_the_tls_port_is_closed_and_logged_once_a_second() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let mut server = tls_server(&leaf, &[]);
    let started = Instant::now();
    for _ in 0..20 {
        let mut tcp = connect(server.addr);
        tcp.write_all(b"hello\n").unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        // The server answers with a TLS alert and closes; a reset is a close too.
        let _ = tcp.read_to_end(&mut rest);
        assert!(!rest.windows(REPLY.len()).any(|w| w == REPLY.as_bytes()), "a plain reply on the TLS port");
    }
    let took = started.elapsed();
    // A TLS client still gets its reply, and its connection's line comes after every plain client's.
    let (reply, _) = exchange(&ca.client(), server.addr, b"hello");
    assert_eq!(reply, REPLY.as_bytes());
    server.wait_for("served: 5 B in");
    let lines = server.log.iter().filter(|line| line.contains("did not speak TLS")).count();
    assert!(lines >= 1, "{}", server.log.join("\n"));
    assert!(lines as u64 <= took.as_secs() + 2, "{lines} lines in {took:?}:\n{}", server.log.join("\n"));
}

#[test]
fn the_proxy_header_comes_before_the_tls_hello() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let mut server = tls_server(&leaf, &["--proxy-protocol", "--proxy-from", "127.0.0.1"]);
    let mut tcp = connect(server.addr);
    let mut session =
        ClientConnection::new(ca.client(), ServerName::IpAddress(server.addr.ip().into())).unwrap();
    // The header and the hello in one segment: the hello arrives with the header.
    let mut first = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\n".to_vec();
    session.write_tls(&mut first).unwrap();
    tcp.write_all(&first).unwrap();
    let mut tls = StreamOwned::new(session, tcp);
    assert_eq!(ask(&mut tls, b"hello", REPLY.len()), REPLY.as_bytes());
    server.wait_for("192.0.2.7:40000 (via 127.0.0.1");
}

#[test]
fn a_bad_pair_at_the_start_is_one_line_and_exit_2() {
    let ca = Ca::new();
    let (a, b) = (ca.leaf("a"), ca.leaf("b"));
    rejected(
        &["serve", "--tls-cert", path(&a.cert), "--tls-key", path(&b.key)],
        &[],
        &["the private key does not match the certificate", "a.pem"],
    );
    rejected(
        &["serve", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", path(&a.key)],
        &[],
        &["cannot read the TLS certificate file /nonexistent/cert.pem"],
    );
    rejected(&["serve", "--tls-cert", path(&a.cert)], &[], &["TLS needs both"]);
    rejected(
        &["serve", "--tls-cert", path(&a.key), "--tls-key", path(&a.key)],
        &[],
        &["no certificate in the certificate PEM"],
    );
    let out = output(
        &mut command(&["serve", "--check", "--tls-cert", path(&a.cert), "--tls-key", path(&a.key)], &[]),
        WAIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tls_cert = ") && stdout.contains("the certificate expires "), "{stdout}");
}

#[test]
fn a_reload_swaps_the_certificate_under_load_and_a_bad_pair_keeps_the_old() {
    let ca = Ca::new();
    let (old, new) = (ca.leaf("old"), ca.leaf("new"));
    let client = ca.client();
    let dir = tempfile::tempdir().unwrap();
    let pair = |leaf: &Leaf, key: &Path| {
        format!(
            "bind = \"127.0.0.1:0\"\nkeep_alive = true\nlog_each_message = true\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            path(&leaf.cert),
            path(key)
        )
    };
    let config = write_config(dir.path(), &pair(&old, &old.key));
    let mut server = Server::start(&["--config", path(&config)]);
    let addr = server.addr;
    let mut before = open(&client, addr);
    assert_eq!(ask(&mut before, b"hello", REPLY.len()), REPLY.as_bytes());

    let ca_file = ca.pem();
    let stress = spawn(move || {
        let args = ["stress", "--addr", &addr.to_string(), "--tls", "--ca", path(&ca_file), "--json"];
        let mut cmd = command(&args, &[]);
        cmd.args(["--clients", "8", "--messages", "20", "--duration", "4s"]);
        output(&mut cmd, WAIT * 2)
    });
    // A conversation under way and stress clients connecting while the certificate changes.
    server.wait_for_next("message 20:");
    write_config(dir.path(), &pair(&new, &new.key));
    server.signal(libc::SIGHUP);
    server.wait_for_next("reloaded the configuration");
    assert_eq!(peer_certificate(&open(&client, addr)), new.der, "a new connection got the old certificate");
    assert_eq!(ask(&mut before, b"hello", REPLY.len()), REPLY.as_bytes(), "the old conversation was cut");
    assert_eq!(peer_certificate(&before), old.der);

    let out = stress.join(WAIT * 3);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("\"failed\":0") && !report.contains("\"ok\":0,"),
        "{report}\n{}",
        server
            .log
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The new certificate with the old key: refused, and the new pair stays.
    write_config(dir.path(), &pair(&new, &old.key));
    server.signal(libc::SIGHUP);
    let line = server.wait_for_next("reload refused");
    assert!(line.contains("the private key does not match the certificate"), "{line}");
    let mut after = open(&client, addr);
    assert_eq!(peer_certificate(&after), new.der);
    assert_eq!(ask(&mut after, b"hello", REPLY.len()), REPLY.as_bytes());
}

#[test]
fn the_library_serves_a_rustls_server_config_as_it_is() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let tls = poolserver::TlsConfig::from_pem(&fs::read(&leaf.cert).unwrap(), &fs::read(&leaf.key).unwrap())
        .unwrap();
    let mut config = poolserver::Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = 2;
    config.tls = Some(poolserver::TlsConfig::from(Arc::clone(tls.server_config())));
    let server = poolserver::Server::bind(config).unwrap();
    let addr = server.local_addr();
    let stop = server.shutdown_handle();
    let running = spawn(move || server.run());
    let (reply, close_notify) = exchange(&ca.client(), addr, b"hello");
    assert_eq!(reply, REPLY.as_bytes());
    assert!(close_notify);
    stop.shutdown();
    running.join(WAIT).unwrap();
}

#[test]
fn framed_messages_pipelined_in_tls_records_are_each_answered_in_order() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let args = [
        "--keep-alive",
        "--log-each-message",
        "--framing",
        "line",
        "--mode",
        "echo",
        "--max-messages",
        "5000",
    ];
    let mut server = tls_server(&leaf, &args);
    let mut tls = open(&ca.client(), server.addr);
    // 2,000 lines in one write: far more than one read of max_request, decrypted in many records.
    let lines: Vec<String> = (0..2000).map(|i| format!("message {i:05}\n")).collect();
    tls.write_all(lines.concat().as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut replies = vec![0; lines.concat().len()];
    tls.read_exact(&mut replies).expect("every reply");
    assert_eq!(String::from_utf8_lossy(&replies), lines.concat());
    // A line split over two records, with a pause between: one message, one reply.
    tls.write_all(b"hel").unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ask(&mut tls, b"lo\n", 6), b"hello\n");
    server.wait_for("message 2001: 5 B in");
}

#[test]
fn a_message_longer_than_one_read_is_answered_whole_from_what_the_session_holds() {
    let ca = Ca::new();
    let leaf = ca.leaf("server");
    let args = ["--keep-alive", "--log-each-message", "--mode", "echo", "--max-request", "1024"];
    let mut server = tls_server(&leaf, &args);
    let mut tls = open(&ca.client(), server.addr);
    tls.sock.set_read_timeout(Some(WAIT)).unwrap();
    // One record of 3,000 B: the first read takes 1,024, and the rest is already decrypted in the
    // session, where no readiness of the socket announces it.
    let message = vec![b'x'; 3000];
    assert_eq!(ask(&mut tls, &message, message.len()), message);
    server.wait_for("message 3: 952 B in");
}
