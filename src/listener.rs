//! The listening socket: created with socket2 so that the backlog, SO_REUSEADDR, SO_REUSEPORT and
//! TCP_DEFER_ACCEPT are ours to set (or inherited from systemd), accepting straight into non-blocking sockets.
//! The listener itself blocks in `accept`, with a timeout so the accept loop can notice a stop request.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use log::warn;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{config::Config, error::Error, sys};

/// How long the kernel keeps a connection that sent nothing before handing it over anyway. One second is the
/// shortest TCP_DEFER_ACCEPT can do (it counts SYN-ACK retransmits, the first after one second).
const DEFER_ACCEPT: Duration = Duration::from_secs(1);
/// How long one blocking `accept` waits before the accept loop looks at the stop request again: the most a
/// stop can take to be noticed, and the only wake-ups of an idle server's main thread.
const ACCEPT_TICK: Duration = Duration::from_millis(20);

pub(crate) struct Listener {
    socket: Socket,
    local_addr: SocketAddr,
    /// Passed in by systemd: the socket outlives this process and its queue belongs to the next one.
    inherited: bool,
}

impl Listener {
    /// Binds and listens on `config.bind`. SO_REUSEADDR lets a restart bind while old connections sit in
    /// TIME_WAIT. TCP_DEFER_ACCEPT is used only when `read_timeout` is at least its one second, or silent
    /// clients would be closed late.
    pub(crate) fn bind(config: &Config) -> Result<Listener, Error> {
        let addr = config.bind;
        let fail = |source| Error::Bind { addr, source };
        let socket =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        if config.reuse_port {
            socket.set_reuse_port(true).map_err(fail)?;
        }
        socket.bind(&addr.into()).map_err(fail)?;
        socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX)).map_err(fail)?;
        socket.set_read_timeout(Some(ACCEPT_TICK)).map_err(fail)?;
        let local_addr = socket.local_addr().map_err(fail)?.as_socket().unwrap_or(addr);

        if config.read_timeout >= DEFER_ACCEPT
            && let Err(e) = sys::set_defer_accept(socket.as_fd(), DEFER_ACCEPT.as_secs() as u32)
        {
            warn!(
                "cannot set TCP_DEFER_ACCEPT on {local_addr}: {e}; connections may arrive before their data"
            );
        }
        Ok(Listener { socket, local_addr, inherited: false })
    }

    /// Serves on a listening socket made elsewhere: by the caller, or by systemd (`inherited`: the socket
    /// outlives this process and its queue belongs to the next one). Its options are left as they are.
    pub(crate) fn from_std(listener: std::net::TcpListener, inherited: bool) -> Result<Listener, Error> {
        let fail = |source| Error::Io { what: "serve on the given listener", source };
        let socket = Socket::from(listener);
        if !socket.is_listener().map_err(fail)? || socket.r#type().map_err(fail)? != Type::STREAM {
            return Err(fail(io::Error::other("not a listening TCP socket")));
        }
        socket.set_nonblocking(false).map_err(fail)?;
        socket.set_read_timeout(Some(ACCEPT_TICK)).map_err(fail)?;
        let local_addr = socket
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .ok_or_else(|| fail(io::Error::other("not an IPv4 or IPv6 socket")))?;
        Ok(Listener { socket, local_addr, inherited })
    }

    pub(crate) fn is_inherited(&self) -> bool {
        self.inherited
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts one connection as a non-blocking stream, waiting at most `ACCEPT_TICK` for it (then
    /// `WouldBlock`); after `stop_blocking`, only what is already pending.
    pub(crate) fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (socket, peer) = self.socket.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
        let peer = peer.as_socket().unwrap_or(self.local_addr);
        Ok((socket.into(), peer))
    }

    /// From now on `accept` returns `WouldBlock` at once when nothing is pending.
    pub(crate) fn stop_blocking(&self) -> io::Result<()> {
        self.socket.set_nonblocking(true)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
