//! The soft limit on open files, raised to the hard limit at startup as Go's runtime does. Every connection
//! takes a descriptor, and the usual soft limit of 1024 is a leftover of select(2)'s fixed-size sets, which
//! poolserver does not use; the hard limit is what the administrator allows. The binary does it, not the
//! library: a process's limits are the program's business, like its signal handlers and its logger.

use std::io;

/// What became of the soft limit.
#[derive(Debug)]
pub enum FdLimit {
    /// It was the hard limit already.
    AtHard,
    Raised {
        from: u64,
        to: u64,
    },
    /// The system refused (a seccomp filter that forbids setrlimit, say); the soft limit stays.
    Refused {
        soft: u64,
        hard: u64,
        error: io::Error,
    },
}

/// Raises the soft RLIMIT_NOFILE to the hard one.
pub fn raise() -> io::Result<FdLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft >= hard {
        return Ok(FdLimit::AtHard);
    }
    let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads one rlimit struct, which lives on this stack frame.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Ok(FdLimit::Refused { soft, hard, error: io::Error::last_os_error() });
    }
    Ok(FdLimit::Raised { from: soft, to: hard })
}
