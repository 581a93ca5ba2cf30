//! The waiting room's three kernel objects, through rustix: one epoll that every idle worker waits in, an
//! eventfd to wake one of them (the waker), and a timerfd that rings at the earliest deadline (the timer).
//!
//! Everything is registered edge-triggered: the kernel reports each change (input arrived, the client's FIN,
//! room to write after a write that would have blocked) once, to one waiting worker, without being asked
//! again. A connection is registered when it first waits and stays registered for its life, so most waits
//! cost no system call at all: after a read that drained the socket, the next input is sure to come as an
//! event. When the connection cannot be sure of that (a read that filled the buffer, a FIN already seen, a
//! change of interest), waiting re-arms it (`EPOLL_CTL_MOD`), which makes the kernel look at the socket
//! afresh and report what is there already. Events for a connection that is on a worker are not lost
//! either: the room keeps them for it (`books::Books::take`). The waker and the timer wake one worker each.

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
    /// A connection: its descriptor, its tag, and whether the client's end of input (or an error) was
    /// reported with it.
    Conn { fd: u32, tag: u32, hung_up: bool },
    /// A worker was woken: work was queued, or something changed that a sleeping worker must look at.
    Wake,
    /// The timer rang: a deadline has passed.
    Timer,
}

/// A connection's registration, as the connection carries it (the poller keeps no per-descriptor state).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Registration {
    /// What it is registered for; `None` until it first waits.
    registered: Option<Interest>,
    /// The readiness whose next change the kernel is sure to report by itself, since the last I/O of that
    /// kind: a read that came back short or would block (the socket is empty, no FIN is pending), or a write
    /// that would block (the send buffer is full). Forgotten each time the connection is armed.
    drained: Option<Interest>,
}

impl Registration {
    /// What the last read left: `drained` when it came back short or would block, with no FIN behind it.
    pub(crate) fn read_left(&mut self, drained: bool) {
        self.drained = drained.then_some(Interest::Readable);
    }

    /// The last write would have blocked: room to write comes as an event.
    pub(crate) fn write_blocked(&mut self) {
        self.drained = Some(Interest::Writable);
    }
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

    /// Makes sure the next event of `interest` on `fd` is reported, with the connection's `tag`: registers
    /// the descriptor the first time (closing it removes the registration), re-arms it when its interest
    /// changed or the kernel might not report on its own, and otherwise leaves it as it is.
    pub(crate) fn arm(
        &self,
        fd: impl AsFd,
        tag: u32,
        interest: Interest,
        registration: &mut Registration,
    ) -> io::Result<()> {
        let fd = fd.as_fd();
        let token = EventData::new_u64((u64::from(tag) << 32) | u64::from(fd.as_raw_fd() as u32));
        let flags = match interest {
            Interest::Readable => EventFlags::IN | EventFlags::RDHUP,
            Interest::Writable => EventFlags::IN | EventFlags::RDHUP | EventFlags::OUT,
        } | EventFlags::ET;
        let Registration { registered, drained } = *registration;
        *registration = Registration { registered: Some(interest), drained: None };
        match registered {
            None => epoll::add(&self.epoll, fd, token, flags),
            Some(was) if was == interest && drained == Some(interest) => Ok(()),
            Some(_) => epoll::modify(&self.epoll, fd, token, flags),
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
        let hang_up = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        ready.extend(events.iter().map(|&Event { flags, data }| match data.u64() {
            WAKE => Ready::Wake,
            TIMER => Ready::Timer,
            token => Ready::Conn {
                fd: token as u32,
                tag: (token >> 32) as u32,
                hung_up: flags.intersects(hang_up),
            },
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
