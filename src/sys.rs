//! The few Linux socket calls that std and socket2 do not offer, each a thin safe wrapper.

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
    time::{Duration, Instant},
};

/// Waits until `fd` can take more bytes or `deadline` passes; `Ok(false)` means the deadline passed.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    wait_for(fd, libc::POLLOUT, deadline)
}

/// Waits until `fd` has input (or end of input) or `deadline` passes; `Ok(false)` means the deadline passed.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN, deadline)
}

fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Round up so that a sub-millisecond remainder still waits instead of spinning.
        let millis = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
        let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
        // SAFETY: `pollfd` is a valid array of one element for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        match ready {
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            // POLLERR or POLLHUP count as ready: the next read or write reports what happened.
            n if n > 0 => return Ok(true),
            _ => {}
        }
    }
}

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

/// The connection's measured round-trip time (TCP_INFO's `tcpi_rtt`).
///
/// For a connection that TCP_DEFER_ACCEPT held back because it sent nothing, the kernel's only sample is
/// from its first SYN-ACK to the ACK that finally completed the handshake, so this is how long the client
/// has already been connected.
pub(crate) fn round_trip_time(fd: BorrowedFd<'_>) -> Option<Duration> {
    // SAFETY: tcp_info is a C struct of integers: every bit pattern is a valid value.
    let info: libc::tcp_info = unsafe { get_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO) }.ok()?;
    Some(Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// The listener's TCP_DEFER_ACCEPT setting in seconds (0 when off), e.g. as systemd's DeferAcceptSec= set it.
pub(crate) fn defer_accept(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: a C int: every bit pattern is a valid value.
    let value: libc::c_int = unsafe { get_option(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) }?;
    Ok(value.max(0) as u32)
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
