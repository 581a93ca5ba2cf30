//! The few Linux socket and process calls that std and socket2 do not offer, each a thin safe wrapper.

use std::{
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

use socket2::{SockFilter, SockRef};

/// Asks the kernel to hand over a connection only once its first data has arrived, or after about
/// `seconds` of silence (TCP_DEFER_ACCEPT). Idle clients then wait in the kernel instead of in the server.
pub(crate) fn set_defer_accept(fd: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, &(seconds as libc::c_int))
}

/// Sets a socket option to the bytes of `value`, which must be the C type the option takes.
fn set_option<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the option value points to a live `T` and its size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Waits until `fd` is readable (for a listener: a connection is queued), for at most `timeout`.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) {
    poll_readable(fd, timeout.as_millis().clamp(1, 1000) as libc::c_int);
}

/// Whether `fd` is readable now (for a listener: a connection is queued).
pub(crate) fn is_readable(fd: BorrowedFd<'_>) -> bool {
    poll_readable(fd, 0)
}

fn poll_readable(fd: BorrowedFd<'_>, millis: libc::c_int) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, which lives on this stack frame. An error or a signal only ends the wait early.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

/// How often the kernel retransmitted on this connection (TCP_INFO's `tcpi_total_retrans`). For a connection
/// that has sent nothing yet, these are SYN-ACK retransmits: under TCP_DEFER_ACCEPT a silent client's
/// handshake completes only after one.
pub(crate) fn synack_retransmits(fd: BorrowedFd<'_>) -> u32 {
    // SAFETY: tcp_info is a C struct of integers: every bit pattern is a valid value.
    let info: io::Result<libc::tcp_info> = unsafe { get_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO) };
    info.map_or(0, |info| info.tcpi_total_retrans)
}

/// The process's soft limit on open file descriptors (RLIMIT_NOFILE); `None` when it is unlimited or
/// cannot be read.
pub(crate) fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which lives on this stack frame.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// A classic BPF program for a listening socket that drops every segment opening a new handshake (SYN
/// without ACK) and lets everything else through: the ACKs and data that complete handshakes already under
/// way, and segments of accepted connections (which inherit the filter). When TCP runs a socket's filter
/// the segment starts at its TCP header, whose byte 13 holds the flags.
const DROP_NEW_HANDSHAKES: [SockFilter; 5] = {
    const LOAD_FLAGS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    [
        SockFilter::new(LOAD_FLAGS, 0, 0, 13),
        SockFilter::new(AND, 0, 0, SYN | ACK),
        // A SYN alone: fall through to the drop; anything else: skip it.
        SockFilter::new(IF_EQUAL, 0, 1, SYN),
        SockFilter::new(RETURN, 0, 0, 0),
        SockFilter::new(RETURN, 0, 0, u32::MAX),
    ]
};

/// Makes a listening socket ignore new handshakes while it keeps completing the ones under way: a client
/// that connects from now on gets no answer (it retries its SYN after a second), instead of an answer that
/// the close of the listener would then turn into a reset.
pub(crate) fn drop_new_handshakes(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).attach_filter(&DROP_NEW_HANDSHAKES)
}

/// How many handshakes the kernel holds half-open (SYN_RECV) for the listener bound to `local`: handshakes
/// whose last ACK has not arrived, and, under TCP_DEFER_ACCEPT, those whose ACK arrived but whose first data
/// has not. They are not in the accept queue yet, and closing the listener resets them. Counted with a
/// sock_diag dump of both address families; with a wildcard address, a listener of another process on the
/// same port (SO_REUSEPORT) counts too.
pub(crate) fn half_open(local: SocketAddr) -> io::Result<usize> {
    let diag = open_sock_diag()?;
    let mut count = 0;
    for family in [libc::AF_INET, libc::AF_INET6] {
        count += dump_syn_recv(&diag, family as u8, local)?;
    }
    Ok(count)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_SYN_RECV: u32 = 3;

/// `struct inet_diag_sockid` of linux/inet_diag.h; ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// The start of `struct inet_diag_msg`, as far as the socket's address.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsgHead {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
}

#[repr(C)]
struct DumpRequest {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

fn open_sock_diag() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor it returns is owned from here on.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
    set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    Ok(fd)
}

/// Dumps the SYN_RECV sockets of one family on `local`'s port and counts those on its address.
fn dump_syn_recv(diag: &OwnedFd, family: u8, local: SocketAddr) -> io::Result<usize> {
    // The kernel filters the dump by state and port; the address is checked below.
    let id = InetDiagSockId { sport: local.port().to_be(), ..InetDiagSockId::default() };
    let request = DumpRequest {
        header: libc::nlmsghdr {
            nlmsg_len: mem::size_of::<DumpRequest>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_SYN_RECV,
            id,
            ..InetDiagReqV2::default()
        },
    };
    // SAFETY: the buffer is the whole request struct, which lives on this stack frame.
    let sent = unsafe {
        libc::send(
            diag.as_raw_fd(),
            (&request as *const DumpRequest).cast(),
            mem::size_of::<DumpRequest>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // u64s, so that the netlink headers in it are aligned.
    let mut buf = vec![0_u64; 4096];
    let mut count = 0;
    loop {
        // SAFETY: recv writes at most the buffer's length in bytes into it.
        let received = unsafe { libc::recv(diag.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8, 0) };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the u64 buffer is valid for `received` bytes, and u8 has no alignment or invalid values.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), received as usize) };
        let mut at = 0;
        while at + mem::size_of::<libc::nlmsghdr>() <= bytes.len() {
            // SAFETY: the bytes from `at` hold a whole nlmsghdr (checked above); read_unaligned copies it.
            let header: libc::nlmsghdr =
                unsafe { bytes.as_ptr().add(at).cast::<libc::nlmsghdr>().read_unaligned() };
            let len = header.nlmsg_len as usize;
            if len < mem::size_of::<libc::nlmsghdr>() || at + len > bytes.len() {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            let payload = &bytes[at + mem::size_of::<libc::nlmsghdr>()..at + len];
            match i32::from(header.nlmsg_type) {
                libc::NLMSG_DONE => return Ok(count),
                libc::NLMSG_ERROR => {
                    let errno = payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ if header.nlmsg_type == SOCK_DIAG_BY_FAMILY
                    && payload.len() >= mem::size_of::<InetDiagMsgHead>() =>
                {
                    // SAFETY: the payload holds a whole InetDiagMsgHead (checked above), which is plain data.
                    let message: InetDiagMsgHead =
                        unsafe { payload.as_ptr().cast::<InetDiagMsgHead>().read_unaligned() };
                    if u32::from(message.state) == TCP_SYN_RECV
                        && u16::from_be(message.id.sport) == local.port()
                        && on_address(message.family, &message.id.src, local.ip())
                    {
                        count += 1;
                    }
                }
                _ => {}
            }
            // Messages are padded to 4 bytes.
            at += (len + 3) & !3;
        }
    }
}

/// Whether a socket's local address (as sock_diag gives it) is `ip`, or any address when `ip` is a wildcard.
fn on_address(family: u8, src: &[u8; 16], ip: IpAddr) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    let theirs = match i32::from(family) {
        libc::AF_INET => IpAddr::from([src[0], src[1], src[2], src[3]]),
        _ => IpAddr::from(*src),
    };
    theirs.to_canonical() == ip.to_canonical()
}

/// Reads a socket option. The kernel may write fewer bytes than `T` has; the rest stay zero.
///
/// # Safety
/// `T` must be plain old data: all-zero bytes, and any bytes the kernel writes, must be a valid `T`.
unsafe fn get_option<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: the caller guarantees that all-zero bytes are a valid `T`.
    let mut value: T = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes, and the kernel writes at most `len` bytes.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut value as *mut T).cast(), &mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}
