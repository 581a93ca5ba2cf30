//! The client side of TLS for `send --tls` and `stress --tls`: whom to trust (`--ca`, the system's bundle,
//! or with `--insecure` anyone), which name to check (`--server-name`, else the address), and a stream that
//! reads and writes through the session as a `TcpStream` does.

use std::{
    fs,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use crate::{cli::TlsArgs, errors};

/// Where Debian keeps the certificate authorities the system trusts.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest CA file read: far above any bundle.
const MAX_CA_BYTES: u64 = 16 << 20;

/// How a client speaks TLS to one server.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// From `--tls`, `--ca`, `--insecure` and `--server-name`; `None` without `--tls`. Each new connection
    /// makes a full handshake (no resumption), so `stress --tls` measures what a new client costs.
    pub fn from_args(args: &TlsArgs, addr: SocketAddr) -> Result<Option<TlsClient>, String> {
        if !args.tls {
            return Ok(None);
        }
        let provider = Arc::new(provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let mut config = if args.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let system = PathBuf::from(SYSTEM_BUNDLE);
            let ca = args.ca.as_ref().unwrap_or(&system);
            builder.with_root_certificates(roots(ca, args.ca.is_none())?).with_no_client_auth()
        };
        config.resumption = Resumption::disabled();
        let name = match &args.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| format!("invalid value for '--server-name <NAME>': {e}"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(Some(TlsClient { config: Arc::new(config), name }))
    }

    fn connect(&self, tcp: TcpStream) -> io::Result<Link> {
        let session =
            ClientConnection::new(Arc::clone(&self.config), self.name.clone()).map_err(io::Error::other)?;
        Ok(Link::Tls(Box::new(StreamOwned::new(session, tcp))))
    }
}

/// ring, as the server has it (see the library's `tls` module for why).
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate authorities in a PEM file.
fn roots(path: &Path, system: bool) -> Result<RootCertStore, String> {
    let fail = |why: String| {
        let hint = if system { "; pass --ca FILE, or --insecure to trust any certificate" } else { "" };
        format!("cannot read the CA file {}: {why}{hint}", errors::path(path))
    };
    let file = fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_BYTES).read_to_end(&mut pem).map_err(|e| fail(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        store.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(fail("no certificate in it".to_owned()));
    }
    Ok(store)
}

/// `--insecure`: any certificate is taken for the server's; the handshake's signatures are still checked,
/// so the session is encrypted, but with whom is not known.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client's connection: plain, or through a TLS session.
pub enum Link {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Link {
    /// Wraps a connected socket: in a session when `tls` says so (the handshake happens with the first
    /// read or write).
    pub fn new(tcp: TcpStream, tls: Option<&TlsClient>) -> io::Result<Link> {
        match tls {
            Some(tls) => tls.connect(tcp),
            None => Ok(Link::Plain(tcp)),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(tcp) => tcp,
            Link::Tls(stream) => &stream.sock,
        }
    }

    /// Ends our side: close_notify first over TLS, then a FIN. A session whose handshake has not finished
    /// (no message was sent) ends with the FIN alone, as a plain connection does, and turns plain: reading
    /// on through the session would drive the handshake and write into the closed side.
    pub fn shutdown_write(&mut self) {
        if let Link::Tls(stream) = self {
            if stream.conn.is_handshaking() {
                let tcp = stream.sock.try_clone();
                if let Ok(tcp) = tcp {
                    *self = Link::Plain(tcp);
                }
            } else {
                stream.conn.send_close_notify();
                let _ = stream.conn.complete_io(&mut stream.sock);
            }
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

impl Read for Link {
    /// Over TLS, the end of the server's replies without its close_notify reads as the end too: the server
    /// closed, and the caller judges the reply it has.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(tcp) => tcp.read(buf),
            Link::Tls(stream) => match stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                read => read,
            },
        }
    }
}

impl Write for Link {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(tcp) => tcp.write(data),
            Link::Tls(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(tcp) => tcp.flush(),
            Link::Tls(stream) => stream.flush(),
        }
    }
}
