//! What a held connection costs the server's heap: nothing of its own while it waits for its first message
//! or for the next one, only its slot in the waiting room's books, which grow by doubling. 10,000 clients
//! holding conversations is what the waiting room is for, so an allocation per waiting connection shows.
//!
//! This test binary counts the process's live allocations with an allocator of its own, around a server
//! run through the library.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicIsize, Ordering::SeqCst},
    thread,
    time::Duration,
};

use poolserver::{Config, Server};
use support::{REPLY, connect, wait_until};

/// The system's allocator, counting the allocations that are live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator with the caller's arguments, which uphold its
// contract; the count is only a number beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(1, SeqCst);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is valid for `layout`'s alignment, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How many clients hold a connection: enough that one allocation each stands out from the books' few.
const CLIENTS: usize = 300;

#[test]
fn a_connection_waiting_for_its_first_or_next_message_allocates_nothing() {
    let mut config = Config::default();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.keep_alive = true;
    config.read_timeout = Duration::from_secs(60);
    let server = Server::bind(config).unwrap();
    let (addr, stop, monitor) = (server.local_addr(), server.shutdown_handle(), server.monitor());
    let running = thread::spawn(move || server.run());
    // One conversation first, so that what is made once (buffers, the books) is made before counting.
    let mut first = connect(addr);
    first.write_all(b"hello").unwrap();
    first.read_exact(&mut [0; REPLY.len()]).unwrap();
    drop(first);
    wait_until(&monitor, "closed the first conversation", |s| s.open == 0);

    let before = LIVE.load(SeqCst);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    wait_until(&monitor, "held every silent client", |s| s.waiting == CLIENTS);
    let waiting_for_first = LIVE.load(SeqCst) - before;
    for client in &mut clients {
        client.write_all(b"hello").unwrap();
    }
    for client in &mut clients {
        let mut reply = [0; REPLY.len()];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(reply, REPLY.as_bytes());
    }
    wait_until(&monitor, "held every conversation again", |s| s.waiting == CLIENTS);
    let waiting_for_next = LIVE.load(SeqCst) - before;

    let bound = (CLIENTS / 10) as isize;
    assert!(
        waiting_for_first < bound,
        "{CLIENTS} connections waiting for their first message hold {waiting_for_first} more allocations"
    );
    assert!(
        waiting_for_next < bound,
        "{CLIENTS} conversations waiting for their next message hold {waiting_for_next} more allocations"
    );
    drop(clients);
    stop.shutdown();
    running.join().unwrap().unwrap();
}
