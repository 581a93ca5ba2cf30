//! TLS on the same pool, with rustls: the certificate a server presents ([`TlsConfig`]) and one
//! connection's encryption (`Session`), driven by readiness like every other wait.
//!
//! rustls does no I/O of its own: it is handed the ciphertext that arrived and asked for the ciphertext to
//! send. So a handshake is a series of non-blocking steps; a step that needs the client says which
//! readiness it waits for, and the connection waits for it in the waiting room like any other, never on a
//! worker. The socket stays the connection's own, so the room arms it as it arms a plain one.
//!
//! Without the `tls` feature this module is `no_tls.rs` instead, where a session cannot exist.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Instant,
};

use log::warn;
pub(crate) use rustls::ServerConfig;
use rustls::{
    AlertDescription, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::{
    error::Error,
    log_gate::{LogGate, since_last_line},
    poller::Interest,
};

/// The certificate chain and key a TLS server presents, with rustls' defaults (TLS 1.2 and 1.3, no client
/// certificates). Made from PEM, or from a `rustls::ServerConfig` taken as it is.
///
/// ```no_run
/// use poolserver::{Config, Server, TlsConfig};
///
/// let mut config = Config::default();
/// config.tls = Some(TlsConfig::from_pem(&std::fs::read("cert.pem")?, &std::fs::read("key.pem")?)?);
/// Server::bind(config)?.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A PEM file with no certificate in it is refused, and the error says why:
///
/// ```
/// let refused = poolserver::TlsConfig::from_pem(b"not a certificate", b"");
/// assert_eq!(refused.unwrap_err().to_string(), "tls: no certificate in the certificate PEM");
/// ```
#[derive(Clone)]
pub struct TlsConfig(Arc<ServerConfig>);

impl TlsConfig {
    /// The chain (the server's certificate first, then any intermediates) and its private key (PKCS#8,
    /// PKCS#1 or SEC1), both PEM. Refused, as [`Error::Config`] for the field `tls`, when either is missing
    /// or unreadable, or when the key is not the certificate's.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, Error> {
        let refused = |reason: String| Error::Config { field: "tls", reason };
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(format!("cannot read the certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(refused("no certificate in the certificate PEM".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                refused("no private key in the key PEM".to_owned())
            }
            e => refused(format!("cannot read the key PEM: {e}")),
        })?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| refused(key_refusal(&e)))?;
        Ok(TlsConfig(Arc::new(config)))
    }

    /// The rustls configuration it serves with.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.0
    }
}

/// ring's ciphers and key exchanges: the provider that builds from crates alone (aws-lc-rs needs a C
/// toolchain with cmake). rustls marks it deprecated for having no post-quantum key exchange, which
/// TLS 1.3 with X25519 does without.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why rustls refused a chain and key, in words an operator acts on.
fn key_refusal(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => "the private key does not match the certificate".to_owned(),
        e => format!("the certificate and key cannot be used: {e}"),
    }
}

impl From<Arc<ServerConfig>> for TlsConfig {
    fn from(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig(config)
    }
}

impl From<ServerConfig> for TlsConfig {
    fn from(config: ServerConfig) -> TlsConfig {
        TlsConfig(Arc::new(config))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").field("alpn_protocols", &self.0.alpn_protocols).finish_non_exhaustive()
    }
}

/// One connection's TLS state; boxed, so that the extras of a plain connection stay small.
pub(crate) struct Session(Box<ServerConnection>);

/// Where a handshake stands after a step.
pub(crate) enum Handshake {
    /// Finished, and everything we had to send is sent.
    Done,
    /// Waiting on the client for this readiness.
    Wants(Interest),
    /// The client closed before the handshake finished.
    Closed,
    /// The client did not speak TLS, or we could not agree; an alert went out if it could.
    Failed(rustls::Error),
    Io(io::Error),
}

impl Session {
    pub(crate) fn new(config: &Arc<ServerConfig>) -> io::Result<Session> {
        ServerConnection::new(Arc::clone(config)).map(|tls| Session(Box::new(tls))).map_err(io::Error::other)
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    /// Decrypted input that is here already: the next read needs no readiness from the socket.
    pub(crate) fn has_plaintext(&mut self) -> bool {
        self.0.process_new_packets().is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
    }

    /// Ciphertext is still waiting to be sent.
    pub(crate) fn has_output(&self) -> bool {
        self.0.wants_write()
    }

    /// Takes bytes that arrived before the session had the socket (behind a PROXY header).
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            match self.0.read_tls(&mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    self.0.process_new_packets()?;
                }
            }
        }
        Ok(())
    }

    /// One non-blocking step: sends what is due, takes what has arrived, and says what comes next.
    pub(crate) fn handshake(&mut self, stream: &TcpStream) -> Handshake {
        loop {
            match self.flush(stream) {
                Ok(true) => {}
                Ok(false) => return Handshake::Wants(Interest::Writable),
                Err(e) => return Handshake::Io(e),
            }
            if !self.0.is_handshaking() {
                return Handshake::Done;
            }
            match self.0.read_tls(&mut &*stream) {
                Ok(0) => return Handshake::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Handshake::Wants(Interest::Readable);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Handshake::Io(e),
            }
            match self.0.process_new_packets() {
                Ok(_) => {}
                // The client said goodbye before it said anything: a hang-up, not a failure.
                Err(rustls::Error::AlertReceived(AlertDescription::CloseNotify)) => return Handshake::Closed,
                Err(e) => {
                    // The alert rustls queued tells the client why; it may not fit, and that is all right.
                    let _ = self.flush(stream);
                    return Handshake::Failed(e);
                }
            }
        }
    }

    /// Reads decrypted input into `buf`: `WouldBlock` when none has arrived, `Ok(0)` when the client ended
    /// its side (with or without close_notify).
    pub(crate) fn read(&mut self, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                done => return done,
            }
            match self.0.read_tls(&mut &*stream) {
                Ok(0) => {
                    let _ = self.0.process_new_packets();
                    return match self.0.reader().read(buf) {
                        Ok(n) => Ok(n),
                        Err(_) => Ok(0),
                    };
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.0.process_new_packets() {
                let _ = self.flush(stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // A key update or an alert may want an answer; what does not fit goes with the reply.
            let _ = self.flush(stream);
        }
    }

    /// Encrypts as much of `data` as the session takes and sends as much ciphertext as the socket takes.
    /// Returns how much of `data` was taken; when some ciphertext is left over (`has_output`), the
    /// connection waits to write it even if all of `data` was taken.
    pub(crate) fn write(&mut self, stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            taken += self.0.writer().write(&data[taken..])?;
            if !self.flush(stream)? || taken == data.len() {
                return Ok(taken);
            }
        }
    }

    /// Sends our close_notify, so that the client can tell the end of the replies from a cut.
    pub(crate) fn close(&mut self, stream: &TcpStream) {
        self.0.send_close_notify();
        let _ = self.flush(stream);
    }

    /// Sends pending ciphertext; `Ok(false)` when the socket's buffer is full before the end of it.
    fn flush(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while self.0.wants_write() {
            match self.0.write_tls(&mut &*stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Failed handshakes logged at most once a second for each kind (see `log_gate`).
static NOT_TLS: LogGate = LogGate::new();
static INCOMPATIBLE: LogGate = LogGate::new();
static ALERTED: LogGate = LogGate::new();
static OTHER: LogGate = LogGate::new();

/// Logs a failed handshake, unless one of its kind was logged within the last second.
pub(crate) fn log_failure(peer: SocketAddr, error: &rustls::Error) {
    let (kind, what) = match error {
        rustls::Error::InvalidMessage(_) => (&NOT_TLS, "did not speak TLS (plain text or garbage)"),
        rustls::Error::PeerIncompatible(_) => {
            (&INCOMPATIBLE, "has no TLS version or cipher in common with us")
        }
        rustls::Error::AlertReceived(_) => (&ALERTED, "ended the handshake with an alert"),
        _ => (&OTHER, "failed the TLS handshake"),
    };
    if let Some(unlogged) = kind.due(Instant::now()) {
        let more = since_last_line(unlogged, "of this kind");
        warn!(target: "access", "{peer} {what}: {error}; closed{more}");
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use rcgen::{CertificateParams, KeyPair};
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, pki_types::ServerName};

    use super::*;

    /// A self-signed certificate for 127.0.0.1: its PEM, its key's PEM, and a client that trusts it.
    fn certificate() -> (String, String, Arc<ClientConfig>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (cert.pem(), key.serialize_pem(), Arc::new(client))
    }

    /// Waits (at most 10 s) for the readiness a step asked for, as the waiting room would.
    fn wait(stream: &TcpStream, interest: Interest) {
        let flags = match interest {
            Interest::Readable => PollFlags::IN,
            Interest::Writable => PollFlags::OUT,
        };
        let timeout = Timespec { tv_sec: 10, tv_nsec: 0 };
        assert_eq!(
            poll(&mut [PollFd::new(stream, flags)], Some(&timeout)).unwrap(),
            1,
            "no readiness in 10 s"
        );
    }

    /// A non-blocking server socket, and the client's end.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    #[test]
    fn a_pair_that_does_not_belong_together_is_refused_with_why() {
        let (cert, _, _) = certificate();
        let (_, other_key, _) = certificate();
        let why = |result: Result<TlsConfig, Error>| result.unwrap_err().to_string();
        assert_eq!(
            why(TlsConfig::from_pem(cert.as_bytes(), other_key.as_bytes())),
            "tls: the private key does not match the certificate"
        );
        assert_eq!(why(TlsConfig::from_pem(cert.as_bytes(), b"")), "tls: no private key in the key PEM");
    }

    #[test]
    fn handshake_message_reply_and_close_notify_in_non_blocking_steps() {
        let (cert, key, client) = certificate();
        let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let (server, tcp) = pair();
        // The client starts only once the server has found nothing to read: a step waits, never blocks.
        let (go, start) = std::sync::mpsc::channel::<()>();
        let peer = thread::spawn(move || {
            start.recv().unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = StreamOwned::new(ClientConnection::new(client, name).unwrap(), tcp);
            tls.write_all(b"hello").unwrap();
            let mut reply = Vec::new();
            // Ends with the server's close_notify: a clean end, not UnexpectedEof.
            tls.read_to_end(&mut reply).map(|_| reply)
        });
        let mut session = Session::new(config.server_config()).unwrap();
        assert!(matches!(session.handshake(&server), Handshake::Wants(Interest::Readable)));
        go.send(()).unwrap();
        loop {
            match session.handshake(&server) {
                Handshake::Done => break,
                Handshake::Wants(interest) => wait(&server, interest),
                _ => panic!("the handshake failed"),
            }
        }
        let mut buf = [0; 64];
        let n = loop {
            match session.read(&server, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(&server, Interest::Readable),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(session.write(&server, b"got it").unwrap(), 6);
        while session.has_output() {
            wait(&server, Interest::Writable);
            session.write(&server, b"").unwrap();
        }
        session.close(&server);
        drop(server);
        assert_eq!(peer.join().unwrap().unwrap(), b"got it");
    }

    #[test]
    fn plain_text_fails_the_handshake_as_not_tls() {
        let (cert, key, _) = certificate();
        let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let (server, mut tcp) = pair();
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut session = Session::new(config.server_config()).unwrap();
        let failure = loop {
            match session.handshake(&server) {
                Handshake::Wants(interest) => wait(&server, interest),
                Handshake::Failed(e) => break e,
                _ => panic!("plain text did not fail the handshake"),
            }
        };
        assert!(matches!(failure, rustls::Error::InvalidMessage(_)), "{failure:?}");
    }
}
