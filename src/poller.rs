//! The waiting room's three kernel objects, through rustix: one epoll that every idle worker waits in, an
//! eventfd to wake one of them (the waker), and a timerfd that rings at the earliest deadline (the timer).
//!
//! Connections are registered one-shot: an event hands the descriptor to exactly one worker and disarms
//! it, and re-arming (when the connection waits again) makes the kernel look at the socket afresh. So input,
//! a client's FIN or room to write that arrive while the connection is on a worker are never lost: they are
//! reported when it is armed again. Waker and timer are edge-triggered: each wakes one waiting worker.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use rustix::{
    event::{
        EventfdFlags, Timespec,
        epoll::{self, CreateFlags, Event, EventData, EventFlags},
        eventfd,
    },
    time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime},
};

/// What a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Input, or the client's end of input.
    Readable,
    /// Room in the send buffer.
    Writable,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// A connection: its descriptor and its tag.
    Conn { fd: u32, tag: u32 },
    /// A worker was woken: work was queued, or something changed that a sleeping worker must look at.
    Wake,
    /// The timer rang: a deadline has passed.
    Timer,
}

const WAKE: u64 = u64::MAX;
const TIMER: u64 = u64::MAX - 1;

pub(crate) struct Poller {
    epoll: OwnedFd,
    waker: OwnedFd,
    timer: OwnedFd,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let waker = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let timer =
            timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK)?;
        let edge = EventFlags::IN | EventFlags::ET;
        epoll::add(&epoll, &waker, EventData::new_u64(WAKE), edge)?;
        epoll::add(&epoll, &timer, EventData::new_u64(TIMER), edge)?;
        Ok(Poller { epoll, waker, timer })
    }

    /// Arms `fd` for one event of `interest`, reported with the connection's `tag`. `first` registers it (a
    /// descriptor is registered once for its life; closing it removes the registration).
    pub(crate) fn arm(&self, fd: impl AsFd, tag: u32, interest: Interest, first: bool) -> io::Result<()> {
        let fd = fd.as_fd();
        let token = EventData::new_u64((u64::from(tag) << 32) | u64::from(fd.as_raw_fd() as u32));
        let flags = match interest {
            Interest::Readable => EventFlags::IN | EventFlags::RDHUP,
            Interest::Writable => EventFlags::OUT,
        } | EventFlags::ONESHOT;
        if first {
            epoll::add(&self.epoll, fd, token, flags)
        } else {
            epoll::modify(&self.epoll, fd, token, flags)
        }
        .map_err(io::Error::from)
    }

    /// Waits for events, up to `timeout` (forever when `None`), and puts what is ready in `ready`.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> io::Result<()> {
        events.clear();
        ready.clear();
        let timeout =
            timeout.map(|t| Timespec::try_from(t).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 }));
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        ready.extend(events.iter().map(|event| match event.data.u64() {
            WAKE => Ready::Wake,
            TIMER => Ready::Timer,
            token => Ready::Conn { fd: token as u32, tag: (token >> 32) as u32 },
        }));
        Ok(())
    }

    /// Wakes one waiting worker, or the next to wait.
    pub(crate) fn wake(&self) -> io::Result<()> {
        match rustix::io::write(&self.waker, &1_u64.to_ne_bytes()) {
            // A full counter: a wake-up is pending anyway.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the timer to ring at `at` (at once when that has passed), or turns it off.
    pub(crate) fn set_timer(&self, at: Option<Instant>) -> io::Result<()> {
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let value = match at {
            // A zero value would turn it off: a deadline already passed rings in a nanosecond.
            Some(at) => {
                Timespec::try_from(at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1)))
                    .unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
            }
            None => zero,
        };
        let spec = Itimerspec { it_interval: zero, it_value: value };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec).map(drop).map_err(io::Error::from)
    }
}
