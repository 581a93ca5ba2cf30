//! How a job put in the queue reaches a worker that is asleep, with no system call when none is.
//!
//! Idle workers sleep in the waiting room's epoll, and the room's waker (an eventfd in it) wakes one. Waking one
//! costs a system call, so whoever queues a job wakes a worker only when a worker sleeps. The race to rule out: a
//! worker finds the queue empty and goes to sleep just as a job arrives. Each side writes first and reads
//! second, with a SeqCst fence between: the worker counts itself asleep, then looks at the queue again; the
//! producer queues the job, then looks whether anyone sleeps. At least one of them sees the other's write:
//! the worker finds the job, or the producer wakes one (and a wake-up that comes before the worker sleeps is kept
//! by the eventfd, so its wait returns at once). The model test below runs every interleaving of that.
//!
//! This is the only protocol between threads in the pool that is not a lock or a channel.

#[cfg(test)]
use shuttle::sync::atomic::{AtomicUsize, Ordering::SeqCst, fence};
#[cfg(not(test))]
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst, fence};

/// How many workers are asleep, or about to be.
#[derive(Default)]
pub(crate) struct Idle {
    asleep: AtomicUsize,
}

impl Idle {
    /// After queueing a job: whether a worker must be woken for it.
    pub(crate) fn anyone_asleep(&self) -> bool {
        fence(SeqCst);
        self.asleep.load(SeqCst) > 0
    }

    /// A worker that found nothing to do counts itself asleep; it must then look at the queue once more
    /// before it sleeps, and it counts as awake again when the guard drops.
    pub(crate) fn fall_asleep(&self) -> Asleep<'_> {
        self.asleep.fetch_add(1, SeqCst);
        fence(SeqCst);
        Asleep(self)
    }
}

/// A worker counted asleep.
pub(crate) struct Asleep<'a>(&'a Idle);

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        self.0.asleep.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use shuttle::{
        sync::{Arc, Condvar, Mutex},
        thread,
    };

    use super::*;

    /// The eventfd: a wake-up is kept until a wait takes it.
    #[derive(Default)]
    struct Waker {
        rung: Mutex<u32>,
        changed: Condvar,
    }

    impl Waker {
        fn wake(&self) {
            *self.rung.lock().unwrap() += 1;
            self.changed.notify_one();
        }

        fn wait(&self) {
            let mut rung = self.rung.lock().unwrap();
            while *rung == 0 {
                rung = self.changed.wait(rung).unwrap();
            }
            *rung -= 1;
        }
    }

    /// Two workers and a producer of two jobs: every job is taken, and no worker sleeps through one (shuttle
    /// reports a deadlock if a worker waits for a wake-up that never comes while a job sits in the queue).
    fn two_workers_two_jobs() {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let idle = Arc::new(Idle::default());
        let waker = Arc::new(Waker::default());
        let taken = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (queue, idle, waker, taken) =
                    (Arc::clone(&queue), Arc::clone(&idle), Arc::clone(&waker), Arc::clone(&taken));
                thread::spawn(move || {
                    while taken.load(SeqCst) < 2 {
                        if queue.lock().unwrap().pop_front().is_some() {
                            taken.fetch_add(1, SeqCst);
                            // The last job taken: the other worker may be asleep, let it see the end.
                            waker.wake();
                            continue;
                        }
                        let _asleep = idle.fall_asleep();
                        if !queue.lock().unwrap().is_empty() || taken.load(SeqCst) == 2 {
                            continue;
                        }
                        waker.wait();
                    }
                })
            })
            .collect();
        for job in 0..2 {
            queue.lock().unwrap().push_back(job);
            if idle.anyone_asleep() {
                waker.wake();
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(taken.load(SeqCst), 2);
    }

    #[test]
    fn no_job_is_left_while_a_worker_sleeps() {
        shuttle::check_random(two_workers_two_jobs, 20_000);
        shuttle::check_pct(two_workers_two_jobs, 20_000, 3);
    }
}
