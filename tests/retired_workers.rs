//! Reloads that shrink the pool retire workers, and a retired worker's thread is joined once it ends: over
//! 200 reloads between 1 and 16 workers under load, the process's threads, mappings and resident memory
//! stay flat, as read from /proc. (Unjoined, each retired thread kept its stack: the campaign in issue 20
//! saw 15 mappings and 94 KiB more per reload, until thread creation failed.) Without load, the sleeping
//! workers a shrink retires are woken to end.

mod support;

use std::{
    fs,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use support::{REPLY, Server, WAIT, exchange, spawn, write_config};

const RELOADS: usize = 200;
/// Where the first measure is taken: past the first cycles, whatever they allocate once.
const FIRST_MEASURE: usize = 20;
/// Clients exchanging in a loop while the pool is resized.
const CLIENTS: usize = 4;
/// The pause between one client's exchanges.
const PACE: Duration = Duration::from_millis(2);
/// Mappings the process may gain from reload 20 to reload 200: retired workers that have ended but are
/// not joined yet (two per thread, its stack and guard page) and a malloc arena or two. Without the join,
/// 180 reloads add over 1,000.
const MAPPINGS_MARGIN: usize = 64;
/// Resident memory it may gain over the same reloads.
const RSS_MARGIN_KB: u64 = 8 * 1024;

/// What /proc says about the server.
#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: usize,
    mappings: usize,
    rss_kb: u64,
}

fn usage(pid: i32) -> Usage {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line[name.len()..].trim().trim_end_matches(" kB").trim().parse().expect("a number")
    };
    let mappings = fs::read_to_string(format!("/proc/{pid}/maps")).expect("/proc/PID/maps").lines().count();
    Usage { threads: field("Threads:") as usize, mappings, rss_kb: field("VmRSS:") }
}

/// Rewrites the config file with `workers`, sends SIGHUP and waits for the server to say it reloaded.
fn reload(server: &mut Server, config: &Path, workers: usize) {
    fs::write(config, format!("workers = {workers}\n")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_next("reloaded the configuration");
}

/// Waits (at most `WAIT`) until the server runs at most `max` threads; the retired workers of the reload
/// before may still be on their way out. Returns what /proc said last.
fn threads_settle_at_most(pid: i32, max: usize) -> Usage {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = usage(pid);
        if now.threads <= max || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_hundred_reloads_between_1_and_16_workers_under_load_leave_threads_mappings_and_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "workers = 16\n");
    let args = ["--bind", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--access-log", "off"];
    let mut server = Server::start(&args);
    let pid = server.pid();
    // 16 workers and the server's own threads; read before any load or reload.
    let at_start = usage(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, served, failed, addr) =
                (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&failed), server.addr);
            spawn(move || {
                while !stop.load(SeqCst) {
                    match exchange(addr, b"hello") {
                        Ok(reply) if reply == REPLY.as_bytes() => served.fetch_add(1, SeqCst),
                        _ => failed.fetch_add(1, SeqCst),
                    };
                    // A light load: workers busy now and then, not a benchmark (the machine is shared).
                    thread::sleep(PACE);
                }
            })
        })
        .collect();

    let mut after_first = None;
    for i in 1..=RELOADS {
        reload(&mut server, &config, if i % 2 == 1 { 1 } else { 16 });
        if i == FIRST_MEASURE {
            after_first = Some(threads_settle_at_most(pid, at_start.threads));
        }
    }
    let after_first = after_first.expect("measured");
    let after_all = threads_settle_at_most(pid, at_start.threads);
    stop.store(true, SeqCst);
    for client in clients {
        client.join(WAIT);
    }
    eprintln!(
        "at start {at_start:?}; after {FIRST_MEASURE} reloads {after_first:?}; after {RELOADS} {after_all:?}; \
         {} exchanges",
        served.load(SeqCst)
    );

    assert!(
        after_all.threads <= at_start.threads,
        "{} threads after {RELOADS} reloads, {} at the start with the same 16 workers",
        after_all.threads,
        at_start.threads
    );
    assert!(
        after_all.mappings <= after_first.mappings + MAPPINGS_MARGIN,
        "mappings grew from {} after {FIRST_MEASURE} reloads to {} after {RELOADS}",
        after_first.mappings,
        after_all.mappings
    );
    assert!(
        after_all.rss_kb <= after_first.rss_kb + RSS_MARGIN_KB,
        "resident memory grew from {} kB after {FIRST_MEASURE} reloads to {} kB after {RELOADS}",
        after_first.rss_kb,
        after_all.rss_kb
    );
    assert!(served.load(SeqCst) > 0, "no exchange completed: the reloads were not under load");
    assert_eq!(failed.load(SeqCst), 0, "clients failed during the reloads");

    // Without load the workers sleep; a shrink wakes them to retire, and their threads end.
    reload(&mut server, &config, 1);
    let idle = threads_settle_at_most(pid, at_start.threads - 15);
    assert!(
        idle.threads <= at_start.threads - 15,
        "{} threads {WAIT:?} after a reload from 16 workers to 1 without load; {} with 16",
        idle.threads,
        at_start.threads
    );

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
}
