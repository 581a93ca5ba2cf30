//! The waiting room's bookkeeping, as a plain single-threaded value: which connection waits on which
//! descriptor, until when, and what the stop does to those deadlines.
//!
//! Nothing here touches a socket, a thread or the clock: readiness comes in as `take(key, id)`, time as the
//! `now` a caller passes, and what is due goes out as values. So every rule of the room (one live timer entry
//! per connection, a stale readiness never reaching a later connection on the same descriptor, the stop's
//! grace) is unit-tested below with made-up instants. `room` wraps it in a lock and drives it with epoll.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    time::{Duration, Instant},
};

/// Tells a connection from the others that used the same descriptor before it: the low half of its id, which
/// is what an epoll event carries beside the descriptor.
pub(crate) type Tag = u32;

/// What a held connection waits for, as far as the stop is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Input from its client: its first or next message, or what is left of its input after our FIN. The
    /// stop gives it a short grace, then closes it.
    Input,
    /// Room to write the rest of a reply: the stop leaves it its own deadline.
    Output,
}

/// Why a connection's wait ended without its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Its own deadline passed.
    Deadline,
    /// The server is stopping and the stop's grace ran out first.
    Stop,
}

/// The connections waiting in the room, keyed by descriptor, with their deadlines.
pub(crate) struct Books<T> {
    /// Indexed by key (a descriptor: dense and small, so no hashing).
    slots: Vec<Slot<T>>,
    /// Deadlines, earliest first, with at most one live entry per slot (see `hold`).
    timers: BinaryHeap<Reverse<(Instant, Tag, usize)>>,
    held: usize,
    /// While stopping: how long a connection waiting for a message may still wait, from the stop or from
    /// when it is held, whichever is later.
    grace: Option<Duration>,
    /// What the timer is set to, as last returned by `timer_change`.
    timer_at: Option<Instant>,
}

struct Slot<T> {
    held: Option<Held<T>>,
    /// Readiness that came for this connection while it was not held (on a worker, queued, or armed just
    /// before it is handed in), and whether a hang-up came with it: it goes on at once when it is held.
    ready_early: Option<(Tag, bool)>,
    /// The timer entry queued for this slot, as (connection id, deadline).
    timer: Option<(Tag, Instant)>,
}

/// A connection handed in after readiness came for it: it goes on instead of waiting.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Early<T> {
    pub(crate) item: T,
    /// A hang-up (the client's FIN, or an error) was reported with the readiness.
    pub(crate) hung_up: bool,
}

struct Held<T> {
    id: Tag,
    item: T,
    deadline: Instant,
    wait: Wait,
    /// The deadline is the stop's grace, not the connection's own.
    cut_by_stop: bool,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { held: None, ready_early: None, timer: None }
    }
}

impl<T> Default for Books<T> {
    fn default() -> Self {
        Books { slots: Vec::new(), timers: BinaryHeap::new(), held: 0, grace: None, timer_at: None }
    }
}

impl<T> Books<T> {
    /// How many connections are held.
    pub(crate) fn len(&self) -> usize {
        self.held
    }

    /// Holds `item` (connection `id`, waiting on descriptor `key`) from `now` until `deadline`, or the end of
    /// the stop's grace when that comes first. A slot keeps one live timer entry: a conversation that comes back with a later
    /// deadline keeps its earlier entry, which re-queues itself for the later deadline when it fires, so a
    /// connection that waits a thousand times does not leave a thousand entries behind.
    ///
    /// When readiness for it came already (see `take`), it is not held: it comes back as `Err`, to go on.
    pub(crate) fn hold(
        &mut self,
        key: usize,
        id: Tag,
        item: T,
        deadline: Instant,
        wait: Wait,
        now: Instant,
    ) -> Result<(), Early<T>> {
        let (deadline, cut_by_stop) = match self.grace {
            Some(grace) if wait == Wait::Input && now + grace < deadline => (now + grace, true),
            _ => (deadline, false),
        };
        if self.slots.len() <= key {
            self.slots.resize_with(key + 1, Slot::default);
        }
        let slot = &mut self.slots[key];
        if let Some((early_id, hung_up)) = slot.ready_early.take()
            && early_id == id
        {
            return Err(Early { item, hung_up });
        }
        if slot.held.replace(Held { id, item, deadline, wait, cut_by_stop }).is_none() {
            self.held += 1;
        }
        if !matches!(slot.timer, Some((timer_id, at)) if timer_id == id && at <= deadline) {
            slot.timer = Some((id, deadline));
            self.timers.push(Reverse((deadline, id, key)));
        }
        Ok(())
    }

    /// Takes the connection `id` held on `key`, when readiness for it came (with a hang-up, when
    /// `hung_up`). `None` when it is not held there: it is away (the readiness, and any hang-up, is kept for
    /// when it comes back), or it expired meanwhile (and a later connection on the descriptor will not
    /// mistake the readiness for its own).
    pub(crate) fn take(&mut self, key: usize, id: Tag, hung_up: bool) -> Option<T> {
        if self.slots.len() <= key {
            self.slots.resize_with(key + 1, Slot::default);
        }
        let slot = &mut self.slots[key];
        if slot.held.as_ref().is_none_or(|held| held.id != id) {
            let earlier = matches!(slot.ready_early, Some((early_id, true)) if early_id == id);
            slot.ready_early = Some((id, hung_up || earlier));
            return None;
        }
        self.held -= 1;
        slot.held.take().map(|held| held.item)
    }

    /// Takes every connection whose deadline is `now` or earlier, with why it expired.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(T, Expiry)> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[key];
            if slot.timer != Some((id, at)) {
                continue; // replaced by an earlier entry, or its connection is gone
            }
            slot.timer = None;
            match &slot.held {
                Some(held) if held.id == id && held.deadline <= now => {
                    if let Some(held) = slot.held.take() {
                        self.held -= 1;
                        let why = if held.cut_by_stop { Expiry::Stop } else { Expiry::Deadline };
                        due.push((held.item, why));
                    }
                }
                // It came back with a later deadline: one entry, for that.
                Some(held) if held.id == id => {
                    slot.timer = Some((id, held.deadline));
                    self.timers.push(Reverse((held.deadline, id, key)));
                }
                // Away on a worker, or another connection now: it brings its own deadline when it comes back.
                _ => {}
            }
        }
        due
    }

    /// The server is stopping: every connection waiting for a message gets `grace` from `now` at most, and
    /// every one held from now on gets `grace` from when it is held.
    pub(crate) fn begin_stop(&mut self, now: Instant, grace: Duration) {
        self.grace = Some(grace);
        let grace_end = now + grace;
        for (key, slot) in self.slots.iter_mut().enumerate() {
            let Some(held) = slot.held.as_mut() else { continue };
            if held.wait == Wait::Input && grace_end < held.deadline {
                held.deadline = grace_end;
                held.cut_by_stop = true;
                slot.timer = Some((held.id, grace_end));
                self.timers.push(Reverse((grace_end, held.id, key)));
            }
        }
    }

    /// The timer rang: it is unset now, so the next `timer_change` sets it again, even for the same instant
    /// (a timer that rang a hair early must ring again, not be taken as set).
    pub(crate) fn timer_rang(&mut self) {
        self.timer_at = None;
    }

    /// When the timer must ring next, if that changed since the last call: `Some(None)` to turn it off.
    pub(crate) fn timer_change(&mut self) -> Option<Option<Instant>> {
        let next = self.timers.peek().map(|Reverse((at, ..))| *at);
        (next != self.timer_at).then(|| {
            self.timer_at = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_held_connection_is_taken_once_by_its_own_readiness() {
        let (t0, mut books) = (Instant::now(), Books::default());
        books.hold(7, 1, "a", t0 + secs(5), Wait::Input, t0).unwrap();
        assert_eq!(books.len(), 1);
        assert_eq!(books.take(7, 2, false), None, "another connection's readiness");
        assert_eq!(books.take(8, 1, false), None, "another descriptor");
        assert_eq!(books.take(7, 1, false), Some("a"));
        assert_eq!(books.take(7, 1, false), None, "taken already");
        assert_eq!(books.len(), 0);
    }

    #[test]
    fn readiness_that_comes_before_its_connection_is_held_sends_it_on_at_once() {
        let (t0, mut books) = (Instant::now(), Books::default());
        assert_eq!(books.take(7, 1, false), None, "armed, not in the books yet");
        assert_eq!(
            books.hold(7, 1, "early", t0 + secs(5), Wait::Input, t0),
            Err(Early { item: "early", hung_up: false })
        );
        assert_eq!(books.len(), 0);
        // Kept for that connection only, and only once.
        assert_eq!(books.take(7, 2, false), None);
        assert_eq!(books.hold(7, 3, "later", t0 + secs(5), Wait::Input, t0), Ok(()));
        assert_eq!(books.hold(8, 2, "elsewhere", t0 + secs(5), Wait::Input, t0), Ok(()));
        assert_eq!(books.len(), 2);
        assert!(books.expire(t0 + secs(5)).len() == 2, "both held until their deadline");
    }

    #[test]
    fn a_hang_up_reported_while_the_connection_is_away_comes_back_with_it() {
        let (t0, mut books) = (Instant::now(), Books::default());
        books.hold(7, 1, "conn", t0 + secs(5), Wait::Input, t0).unwrap();
        assert_eq!(books.take(7, 1, false), Some("conn"), "its message");
        // While a worker reads it: the FIN, then a later readiness without it; the FIN is not forgotten.
        assert_eq!(books.take(7, 1, true), None);
        assert_eq!(books.take(7, 1, false), None);
        let back = books.hold(7, 1, "conn", t0 + secs(5), Wait::Input, t0);
        assert_eq!(back, Err(Early { item: "conn", hung_up: true }));
        // A later connection on the descriptor does not inherit it.
        assert_eq!(books.take(7, 1, true), None);
        assert_eq!(books.take(7, 2, false), None);
        assert_eq!(
            books.hold(7, 2, "next", t0 + secs(5), Wait::Input, t0),
            Err(Early { item: "next", hung_up: false })
        );
    }

    #[test]
    fn a_deadline_expires_the_connection_and_nothing_else() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(3, 1, "early", t0 + secs(1), Wait::Input, t0).unwrap();
        books.hold(4, 2, "late", t0 + secs(9), Wait::Output, t0).unwrap();
        assert!(books.expire(t0).is_empty());
        assert_eq!(books.expire(t0 + secs(1)), vec![("early", Expiry::Deadline)]);
        assert_eq!(books.len(), 1);
        assert_eq!(books.expire(t0 + secs(8)), vec![]);
        assert_eq!(books.expire(t0 + secs(9)), vec![("late", Expiry::Deadline)]);
        assert_eq!(books.len(), 0);
    }

    #[test]
    fn a_connection_that_comes_back_later_keeps_one_timer_entry() {
        let t0 = Instant::now();
        let mut books = Books::default();
        for n in 0..1000 {
            books.hold(5, 1, "talker", t0 + secs(60) + Duration::from_millis(n), Wait::Input, t0).unwrap();
            assert_eq!(books.take(5, 1, false), Some("talker"));
        }
        books.hold(5, 1, "talker", t0 + secs(61), Wait::Input, t0).unwrap();
        assert_eq!(books.timers.len(), 1);
        // The first entry fires, finds a later deadline, and re-queues itself for it.
        assert!(books.expire(t0 + secs(60)).is_empty());
        assert_eq!(books.timers.len(), 1);
        assert_eq!(books.expire(t0 + secs(61)), vec![("talker", Expiry::Deadline)]);
    }

    #[test]
    fn an_earlier_deadline_gets_its_own_entry() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(5, 1, "conn", t0 + secs(60), Wait::Input, t0).unwrap();
        assert_eq!(books.take(5, 1, false), Some("conn"));
        books.hold(5, 1, "conn", t0 + secs(2), Wait::Output, t0).unwrap();
        assert_eq!(books.expire(t0 + secs(2)), vec![("conn", Expiry::Deadline)]);
        assert!(books.expire(t0 + secs(60)).is_empty(), "the stale entry expires nothing");
    }

    #[test]
    fn a_timer_that_fires_while_its_connection_is_away_is_renewed_when_it_returns() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(5, 1, "conn", t0 + secs(1), Wait::Input, t0).unwrap();
        assert_eq!(books.take(5, 1, false), Some("conn"));
        assert!(books.expire(t0 + secs(1)).is_empty(), "away on a worker");
        books.hold(5, 1, "conn", t0 + secs(3), Wait::Input, t0).unwrap();
        assert!(books.expire(t0 + secs(2)).is_empty());
        assert_eq!(books.expire(t0 + secs(3)), vec![("conn", Expiry::Deadline)]);
    }

    #[test]
    fn a_later_connection_on_the_same_descriptor_is_not_touched_by_the_earlier_ones_timer_or_readiness() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(5, 1, "first", t0 + secs(1), Wait::Input, t0).unwrap();
        assert_eq!(books.take(5, 1, false), Some("first"));
        // The first closed; the descriptor is reused by connection 2, with a later deadline.
        books.hold(5, 2, "second", t0 + secs(10), Wait::Input, t0).unwrap();
        assert_eq!(books.take(5, 1, false), None, "a late readiness of the first");
        assert!(books.expire(t0 + secs(1)).is_empty(), "the first's timer");
        assert_eq!(books.len(), 1);
        assert_eq!(books.expire(t0 + secs(10)), vec![("second", Expiry::Deadline)]);
    }

    #[test]
    fn the_stop_gives_waiting_for_a_message_a_grace_and_leaves_work_its_own_deadline() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(1, 1, "silent", t0 + secs(60), Wait::Input, t0).unwrap();
        books.hold(2, 2, "nearly due", t0 + secs(1), Wait::Input, t0).unwrap();
        books.hold(3, 3, "writing", t0 + secs(30), Wait::Output, t0).unwrap();
        books.begin_stop(t0, secs(2));
        // Taken in during the stop: its grace counts from then.
        books.hold(4, 4, "held during the stop", t0 + secs(60), Wait::Input, t0 + secs(1)).unwrap();
        assert_eq!(books.expire(t0 + secs(1)), vec![("nearly due", Expiry::Deadline)]);
        assert_eq!(books.expire(t0 + secs(2)), vec![("silent", Expiry::Stop)]);
        assert_eq!(books.expire(t0 + secs(3)), vec![("held during the stop", Expiry::Stop)]);
        assert_eq!(books.len(), 1);
        assert_eq!(books.expire(t0 + secs(30)), vec![("writing", Expiry::Deadline)]);
    }

    #[test]
    fn a_message_that_arrives_in_the_grace_is_taken_as_usual() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.hold(1, 1, "idle", t0 + secs(60), Wait::Input, t0).unwrap();
        books.begin_stop(t0, secs(1));
        assert_eq!(books.take(1, 1, false), Some("idle"));
        assert!(books.expire(t0 + secs(1)).is_empty());
    }

    #[test]
    fn the_timer_follows_the_earliest_deadline_and_says_only_what_changed() {
        let t0 = Instant::now();
        let mut books = Books::default();
        assert_eq!(books.timer_change(), None, "off, and off already");
        books.hold(1, 1, "a", t0 + secs(5), Wait::Input, t0).unwrap();
        assert_eq!(books.timer_change(), Some(Some(t0 + secs(5))));
        books.hold(2, 2, "b", t0 + secs(9), Wait::Input, t0).unwrap();
        assert_eq!(books.timer_change(), None, "a later deadline changes nothing");
        books.hold(3, 3, "c", t0 + secs(1), Wait::Input, t0).unwrap();
        assert_eq!(books.timer_change(), Some(Some(t0 + secs(1))));
        books.timer_rang();
        assert_eq!(books.expire(t0), vec![], "rang early: nothing due yet");
        assert_eq!(books.timer_change(), Some(Some(t0 + secs(1))), "set again for the same instant");
        books.expire(t0 + secs(9));
        assert_eq!(books.timer_change(), Some(None));
    }
}
