//! Limits on open connections, so that neither the file-descriptor limit nor one client can stop the server
//! from serving the others.
//!
//! - `max_connections` caps the connections open at once (queued, on a worker, or waiting). At the cap the
//!   accept loop stops accepting until one closes: new clients wait whole in the kernel's listen backlog,
//!   instead of being accepted by a server that has no descriptor left to serve them with. By default it is
//!   the file-descriptor limit less a reserve for the server's own files.
//! - `max_per_client` caps the connections open at once from one client address (the peer, or the source a
//!   PROXY protocol header names); a connection past it gets the busy reply when its message arrives.
//!
//! Each connection holds its places in both counts as guards (`stats::Open`, [`ClientSlot`]) that give them
//! back when it drops, so no path can leak or double one.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::Duration,
};

/// The largest `max_connections` and `max_per_client` (re-exported as `config::MAX_CONNECTIONS_LIMIT`).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 30;

/// Descriptors kept back from `max_connections`'s default for the server's own files: the standard streams,
/// the listener, the waiting room's epoll and eventfd, log files (two at once while SIGUSR1 reopens them),
/// the journal's socket, the signal pipe, the stop's sock_diag socket; about 15 in all.
const FD_RESERVE: u64 = 64;

/// The default `max_connections` for a soft file-descriptor limit: the limit less `FD_RESERVE`, or half the
/// limit when it is below twice the reserve; no cap (but `MAX_CONNECTIONS_LIMIT`) when there is no limit.
pub(crate) fn default_max_connections(fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else { return MAX_CONNECTIONS_LIMIT };
    let reserve = if limit < 2 * FD_RESERVE { limit / 2 } else { FD_RESERVE };
    usize::try_from(limit - reserve).unwrap_or(usize::MAX).clamp(1, MAX_CONNECTIONS_LIMIT)
}

/// Where the accept loop waits, at `max_connections`, for a connection to close. A closing connection pays
/// one atomic load when nobody waits, and takes the lock only to wake the loop.
#[derive(Debug, Default)]
pub(crate) struct Vacancy {
    waiting: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Vacancy {
    /// Called after a connection has left the count.
    pub(crate) fn notify(&self) {
        // SeqCst, with the count's decrement before it and the waiter's store before its check of the count:
        // either the waiter sees the decrement, or this sees the waiter and wakes it under the lock.
        if self.waiting.load(SeqCst) {
            let _lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_all();
        }
    }

    /// Waits until `has_room` holds or `timeout` has passed; returns whether it holds.
    pub(crate) fn wait(&self, has_room: impl Fn() -> bool, timeout: Duration) -> bool {
        let lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.store(true, SeqCst);
        if !has_room() {
            let _ = self.freed.wait_timeout(lock, timeout).unwrap_or_else(PoisonError::into_inner);
        }
        self.waiting.store(false, SeqCst);
        has_room()
    }
}

/// The connections open per client address, for `max_per_client`.
#[derive(Debug)]
pub(crate) struct PerClient {
    /// A reload may change it; the counts carry over.
    max: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub(crate) fn new(max: usize) -> Arc<PerClient> {
        Arc::new(PerClient { max: AtomicUsize::new(max), open: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Relaxed)
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Relaxed);
    }

    /// A place for one more connection from `client`, or `Over` when it has `max` open already. An IPv4
    /// client seen through an IPv6 socket (`::ffff:192.0.2.7`) counts as the IPv4 address.
    pub(crate) fn take(self: &Arc<PerClient>, client: SocketAddr) -> Quota {
        let ip = client.ip().to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max() {
            return Quota::Over { open: *count };
        }
        *count += 1;
        Quota::Counted { _slot: Box::new(ClientSlot { clients: Arc::clone(self), ip }) }
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> Option<usize> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(&ip).copied()
    }
}

/// A connection's standing under `max_per_client`.
#[derive(Debug, Default)]
pub(crate) enum Quota {
    /// No limit, or the client is not known yet (its PROXY header has not been read).
    #[default]
    Free,
    /// It holds one of its client's places, until it drops (boxed, so that a connection without the limit
    /// stays small).
    Counted { _slot: Box<ClientSlot> },
    /// Its client had `open` connections already: it gets the busy reply when its message arrives.
    Over { open: usize },
}

/// One connection's place in its client's count, given back when it drops.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_reserve_of_descriptors() {
        assert_eq!(default_max_connections(Some(20_000)), 19_936);
        assert_eq!(default_max_connections(Some(1024)), 960);
        assert_eq!(default_max_connections(Some(64)), 32);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(None), MAX_CONNECTIONS_LIMIT);
        assert_eq!(default_max_connections(Some(u64::MAX)), MAX_CONNECTIONS_LIMIT);
    }

    #[test]
    fn a_client_gets_max_places_and_each_comes_back_when_its_connection_drops() {
        let clients = PerClient::new(2);
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let (first, second) = (clients.take(client), clients.take(client));
        assert!(matches!(first, Quota::Counted { .. }) && matches!(second, Quota::Counted { .. }));
        assert!(matches!(clients.take(client), Quota::Over { open: 2 }));
        // The same client through an IPv6 socket, from another port.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:40001".parse().unwrap();
        assert!(matches!(clients.take(mapped), Quota::Over { open: 2 }));
        assert!(matches!(clients.take("192.0.2.8:40000".parse().unwrap()), Quota::Counted { .. }));
        drop(first);
        assert_eq!(clients.open(client.ip()), Some(1));
        let third = clients.take(mapped);
        assert!(matches!(third, Quota::Counted { .. }));
        drop((second, third));
        assert_eq!(clients.open(client.ip()), None, "an address with nothing open is forgotten");
    }

    #[test]
    fn a_wait_for_room_ends_when_notified_or_at_its_timeout() {
        let vacancy = Arc::new(Vacancy::default());
        let room = Arc::new(AtomicBool::new(false));
        assert!(!vacancy.wait(|| room.load(SeqCst), Duration::from_millis(10)));
        let (v, r) = (Arc::clone(&vacancy), Arc::clone(&room));
        let started = std::time::Instant::now();
        let waiter = std::thread::spawn(move || v.wait(|| r.load(SeqCst), Duration::from_secs(30)));
        while !vacancy.waiting.load(SeqCst) {
            std::thread::yield_now();
        }
        room.store(true, SeqCst);
        vacancy.notify();
        assert!(waiter.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(10), "woken by its timeout, not by the notify");
    }
}
