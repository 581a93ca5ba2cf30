//! The few Linux socket calls that std and socket2 do not offer, each a thin safe wrapper.

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
};

/// Asks the kernel to hand over a connection only once its first data has arrived, or after about
/// `seconds` of silence (TCP_DEFER_ACCEPT). Idle clients then wait in the kernel instead of in the server.
pub(crate) fn set_defer_accept(fd: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    let value = seconds as libc::c_int;
    // SAFETY: the option value points to a live c_int and its size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// How often the kernel retransmitted on this connection (TCP_INFO's `tcpi_total_retrans`). For a connection
/// that has sent nothing yet, these are SYN-ACK retransmits: under TCP_DEFER_ACCEPT a silent client's
/// handshake completes only after one.
pub(crate) fn synack_retransmits(fd: BorrowedFd<'_>) -> u32 {
    // SAFETY: tcp_info is a C struct of integers: every bit pattern is a valid value.
    let info: io::Result<libc::tcp_info> = unsafe { get_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO) };
    info.map_or(0, |info| info.tcpi_total_retrans)
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

/// The soft limit on open file descriptors (RLIMIT_NOFILE): no descriptor number reaches it. 1024 when it
/// cannot be read, and at most 2^24 (a limit of "unlimited" is not a table size).
pub(crate) fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).min(1 << 24)
}
