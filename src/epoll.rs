//! A thin safe face on Linux epoll, and an eventfd to wake the thread that waits.
//!
//! A connection's descriptor is registered once, edge-triggered, for input and for room to write: a
//! conversation that comes back to wait a thousand times costs no system call to wait again. An edge can
//! fire while the connection is away on a worker; the waiting room keeps it for when the connection comes
//! back (see `waiting`).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// What a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Input, or the client's end of input.
    Readable,
    /// Room in the send buffer.
    Writable,
}

/// What an event says about its descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) token: u64,
    /// Input arrived, or the client closed or failed.
    pub(crate) readable: bool,
    /// Room in the send buffer, or the connection failed.
    pub(crate) writable: bool,
}

pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before it is owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Registers `fd` once for all its life, edge-triggered, reported with `token`: an event says that
    /// input arrived or room appeared since the last one. Closing the descriptor removes the registration.
    pub(crate) fn register(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let mut event = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }).map(drop)
    }

    /// Waits up to `timeout` (forever when `None`) and fills `events` with what fired; see [`readiness`].
    pub(crate) fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        // Round up, so that a deadline less than a millisecond away is waited for rather than spun on.
        let millis = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        events.clear();
        let capacity = events.capacity().clamp(1, i32::MAX as usize);
        // SAFETY: the kernel writes at most `capacity` events into the vector's spare capacity.
        let n = cvt(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), capacity as i32, millis)
        })?;
        // SAFETY: the kernel initialised the first `n` (at most `capacity`) elements.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

/// What one event says.
pub(crate) fn readiness(event: &libc::epoll_event) -> Readiness {
    let bits = event.events as libc::c_int;
    let failed = bits & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
    Readiness {
        token: event.u64,
        readable: failed || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0,
        writable: failed || bits & libc::EPOLLOUT != 0,
    }
}

/// An eventfd registered with an `Epoll`: `wake` makes the waiting thread's `wait` return.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A waker reported as `token` on each of `epolls`. It stays armed: a wake is seen however often it
    /// comes, by whichever of them is waited on.
    pub(crate) fn new(epolls: &[&Epoll], token: u64) -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let waker = Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
        for epoll in epolls {
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
            // SAFETY: `event` is a valid epoll_event for the duration of the call.
            cvt(unsafe {
                libc::epoll_ctl(epoll.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, waker.fd.as_raw_fd(), &mut event)
            })?;
        }
        Ok(waker)
    }

    pub(crate) fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64. A full counter (EAGAIN) means a wake is pending anyway.
        let rc = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Clears pending wakes, so that the next `wait` sleeps until a new one.
    pub(crate) fn reset(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64. Nothing to read (EAGAIN) is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
