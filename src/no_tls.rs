//! The `tls` module of a build without the `tls` feature: no connection can have a session, so every
//! TLS branch of a connection's life is dead code the compiler removes, and no crypto is compiled.

use std::{io, net::TcpStream, sync::Arc};

use crate::poller::Interest;

/// Stands for rustls' server configuration: there is none.
pub(crate) enum ServerConfig {}

/// Stands for rustls' error: there is none.
pub(crate) enum TlsError {}

impl std::fmt::Display for TlsError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// A session cannot be made without the feature.
pub(crate) enum Session {}

/// The variants the connection's code matches on; none is ever made.
#[allow(dead_code)]
pub(crate) enum Handshake {
    Done,
    Wants(Interest),
    Closed,
    Failed(TlsError),
    Io(io::Error),
}

pub(crate) fn log_failure(_: std::net::SocketAddr, error: &TlsError) {
    match *error {}
}

impl Session {
    pub(crate) fn new(config: &Arc<ServerConfig>) -> io::Result<Session> {
        match **config {}
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match *self {}
    }

    pub(crate) fn has_plaintext(&mut self) -> bool {
        match *self {}
    }

    pub(crate) fn has_output(&self) -> bool {
        match *self {}
    }

    pub(crate) fn feed(&mut self, _: &[u8]) -> Result<(), TlsError> {
        match *self {}
    }

    pub(crate) fn handshake(&mut self, _: &TcpStream) -> Handshake {
        match *self {}
    }

    pub(crate) fn read(&mut self, _: &TcpStream, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }

    pub(crate) fn write(&mut self, _: &TcpStream, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }

    pub(crate) fn close(&mut self, _: &TcpStream) {
        match *self {}
    }
}
