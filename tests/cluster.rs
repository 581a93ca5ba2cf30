//! The cluster of scripts/cluster.sh: backend hosts in network namespaces behind HAProxy, under load, through
//! a rolling restart and the loss of a host. One test runs it in order (up, roll, host failure, heal, down),
//! since every step needs the cluster the step before left; it needs root and skips where it cannot run,
//! except under CI.

mod support;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{BIN, REPLY, WAIT, clear_environment, exchange_from};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
/// The load balancer's address on the hosts' bridge: HAProxy connects to the backends from it.
const LB_ADDR: &str = "198.18.0.1";
/// How long one command of the script may take: `roll` restarts three hosts, each bounded by its own waits.
const SCRIPT_WAIT: Duration = Duration::from_secs(90);

/// A cluster made by the script, with fresh names and ports; `down` runs when it is dropped, whatever happened.
struct Cluster {
    name: String,
    front: SocketAddr,
    conv_front: SocketAddr,
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Cluster {
    fn state_dir(&self) -> PathBuf {
        Path::new("/run/poolserver-cluster").join(&self.name)
    }

    /// Runs `cluster.sh --name NAME ARGS` to its end (bounded) and returns what it printed.
    fn run(&self, args: &[&str]) -> Ran {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT).args(["--name", &self.name]).args(args);
        clear_environment(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bash scripts/cluster.sh");
        let stdout = reader(child.stdout.take().expect("piped stdout"));
        let stderr = reader(child.stderr.take().expect("piped stderr"));
        let Some(status) = support::wait_child(&mut child, SCRIPT_WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cluster.sh {args:?} still running after {SCRIPT_WAIT:?}");
        };
        let text = |rx: crossbeam_channel::Receiver<String>| rx.recv_timeout(WAIT).unwrap_or_default();
        Ran { status, stdout: text(stdout), stderr: text(stderr) }
    }

    /// Runs a command that must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert!(ran.status.success(), "cluster.sh {args:?}: {}\n{}{}", ran.status, ran.stdout, ran.stderr);
        eprintln!("$ cluster.sh {}\n{}", args.join(" "), ran.stdout);
        ran.stdout
    }

    /// `status` as rows: (host, pool) → (state, total sessions, pid).
    fn status(&self) -> HashMap<(String, String), Row> {
        let text = self.ok(&["status"]);
        text.lines()
            .skip(2)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let [host, _addr, pool, state, _check, _sessions, total, pid, ..] = f[..] else {
                    return None;
                };
                Some((
                    (host.to_owned(), pool.to_owned()),
                    Row {
                        state: state.to_owned(),
                        total: total.parse().unwrap_or(0),
                        pid: pid.parse().unwrap_or(0),
                    },
                ))
            })
            .collect()
    }

    fn log(&self, host: u32, pool: &str) -> String {
        std::fs::read_to_string(self.state_dir().join(format!("h{host}-{pool}.log"))).unwrap_or_default()
    }

    /// Waits until HAProxy has sent `n` more clients (or conversations) to `pool`, counted over every host.
    fn wait_for_traffic(&self, pool: &str, n: u64) {
        let total = |rows: &HashMap<(String, String), Row>| -> u64 {
            rows.iter().filter(|((_, p), _)| p == pool).map(|(_, r)| r.total).sum()
        };
        let target = total(&self.status()) + n;
        let deadline = Instant::now() + WAIT;
        while total(&self.status()) < target {
            assert!(
                Instant::now() < deadline,
                "HAProxy did not send {n} more clients to {pool} within {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until some host's log of `pool` has a line containing every one of `needles`.
    fn wait_for_log(&self, pool: &str, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            for host in 1..=3 {
                let log = self.log(host, pool);
                if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                    return line.to_owned();
                }
            }
            assert!(Instant::now() < deadline, "no {pool} log has a line with {needles:?} within {WAIT:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ran = self.run(&["down"]);
        if !ran.status.success() {
            eprintln!("cluster.sh down: {}\n{}{}", ran.status, ran.stdout, ran.stderr);
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    state: String,
    total: u64,
    pid: i32,
}

/// Everything a pipe carries until it closes, delivered on a channel (so a full pipe never blocks a child).
fn reader(mut pipe: impl Read + Send + 'static) -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// Two distinct free loopback ports.
fn free_ports() -> (SocketAddr, SocketAddr) {
    let one = TcpListener::bind("127.0.0.1:0").unwrap();
    let two = TcpListener::bind("127.0.0.1:0").unwrap();
    (one.local_addr().unwrap(), two.local_addr().unwrap())
}

/// `poolserver stress --json` in the background; killed by its PID if the test ends before it does.
struct Stress(Child);

impl Stress {
    /// `clients` one-shot clients against `front`, for `duration`, each step bounded by `timeout`.
    fn one_shot(front: SocketAddr, duration: &str, timeout: &str) -> Stress {
        Stress::start(front, &["--clients", "8", "--duration", duration, "--timeout", timeout])
    }

    /// Four clients holding conversations of ten messages, one after another.
    fn conversations(front: SocketAddr, duration: &str, timeout: &str) -> Stress {
        Stress::start(
            front,
            &["--clients", "4", "--messages", "10", "--duration", duration, "--timeout", timeout],
        )
    }

    fn start(front: SocketAddr, args: &[&str]) -> Stress {
        let front = front.to_string();
        let mut cmd = support::command(&["stress", "--addr", &front, "--json"], &[]);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        Stress(cmd.spawn().expect("spawn poolserver stress"))
    }

    fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Waits for the run to end (its duration and timeouts bound it) and returns its JSON report.
    fn report(mut self) -> Value {
        let stdout = reader(self.0.stdout.take().expect("piped stdout"));
        support::wait_child(&mut self.0, Duration::from_secs(60)).expect("stress ends within its own bounds");
        let stdout = stdout.recv_timeout(WAIT).unwrap_or_default();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A conversation of `messages` messages from a chosen loopback source address, each answered, then our
/// goodbye and the server's close; returns the local address used.
fn converse_from(source: &str, addr: SocketAddr, messages: u32) -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0; REPLY.len()];
    for i in 1..=messages {
        stream.write_all(b"hello").unwrap();
        stream.read_exact(&mut reply).unwrap_or_else(|e| panic!("reply to message {i}: {e}"));
        assert_eq!(reply, REPLY.as_bytes(), "reply to message {i}");
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after the last reply", rest.len());
    stream.local_addr().unwrap()
}

fn is_gone(pid: i32) -> bool {
    // A zombie has exited already; only its parent's bookkeeping is left.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn sum_total(rows: &HashMap<(String, String), Row>, host: &str) -> u64 {
    rows.iter().filter(|((h, _), _)| h == host).map(|(_, r)| r.total).sum()
}

#[test]
fn cluster_rolls_without_loss_and_survives_a_lost_host() {
    let (front, conv_front) = free_ports();
    let cluster = Cluster { name: format!("pst{}", std::process::id()), front, conv_front };
    let (port, conv_port) = (front.port().to_string(), conv_front.port().to_string());
    let up = cluster.run(&["up", "--hosts", "3", "--port", &port, "--conv-port", &conv_port, "--bin", BIN]);
    if up.status.code() == Some(3) {
        let reason = up.stderr.trim();
        assert!(std::env::var_os("CI").is_none(), "CI must run the cluster test, but: {reason}");
        eprintln!("SKIPPED: {reason} (.ci/run installs the tools; the test needs root)");
        return;
    }
    assert!(up.status.success(), "cluster.sh up: {}\n{}{}", up.status, up.stdout, up.stderr);
    assert!(up.stdout.contains(&format!("127.0.0.1:{port}")), "{}", up.stdout);
    let rows = cluster.status();
    assert_eq!(rows.len(), 6, "three hosts, two pools each: {rows:?}");
    assert!(rows.values().all(|r| r.state == "UP"), "{rows:?}");

    // Through HAProxy, each backend logs the real client (PROXY v2), and HAProxy's bridge address as the peer.
    let client = exchange_from("127.0.0.2:0", cluster.front);
    cluster.wait_for_log("oneshot", &[&format!("] {client} (via {LB_ADDR}:"), " served: "]);
    let client = converse_from("127.0.0.3:0", cluster.conv_front, 3);
    let peer = format!("] {client} (via {LB_ADDR}:");
    for message in
        [" message 1: 5 B in, 15 B out", " message 3: ", " ended the conversation after 3 messages"]
    {
        cluster.wait_for_log("conversations", &[&peer, message]);
    }

    // A full roll while one-shot clients and conversations keep coming: nobody notices.
    let pids_before: Vec<i32> = rows.values().map(|r| r.pid).collect();
    let mut one_shot = Stress::one_shot(cluster.front, "15s", "5s");
    let mut talks = Stress::conversations(cluster.conv_front, "15s", "5s");
    cluster.wait_for_traffic("oneshot", 200);
    cluster.wait_for_traffic("conversations", 20);
    let roll = cluster.ok(&["roll"]);
    assert!(roll.contains("rolled 3 hosts"), "{roll}");
    assert!(
        one_shot.is_running() && talks.is_running(),
        "a stress run ended before the roll did; it must span it"
    );
    let (one_shot, talks) = (one_shot.report(), talks.report());
    assert_eq!(one_shot["failed"], 0, "one-shot clients failed during the roll: {one_shot}");
    assert_eq!(talks["failed"], 0, "conversations failed during the roll: {talks}");
    assert!(one_shot["ok"].as_u64().unwrap() > 0 && talks["ok"].as_u64().unwrap() > 0, "{one_shot}\n{talks}");
    let rows = cluster.status();
    for (key, row) in &rows {
        assert!(!pids_before.contains(&row.pid), "{key:?} was not restarted: {rows:?}");
        assert_eq!(row.state, "UP", "{key:?} is back in rotation: {rows:?}");
    }
    for host in 1..=3 {
        for pool in ["oneshot", "conversations"] {
            let log = cluster.log(host, pool);
            assert_eq!(log.matches("listening on ").count(), 2, "h{host} {pool} ran twice:\n{log}");
            assert_eq!(log.matches("stopped: ").count(), 1, "h{host} {pool} stopped gracefully once:\n{log}");
        }
    }
    eprintln!(
        "roll: {} one-shot clients and {} conversations served, none failed",
        one_shot["ok"], talks["ok"]
    );

    // Host 2 loses its link under load: HAProxy takes it out; only what was in flight there may fail.
    let one_shot = Stress::one_shot(cluster.front, "8s", "2s");
    let talks = Stress::conversations(cluster.conv_front, "8s", "2s");
    cluster.wait_for_traffic("oneshot", 200);
    cluster.wait_for_traffic("conversations", 20);
    let cut = cluster.ok(&["fail", "2", "--how", "link"]);
    assert!(cut.contains("HAProxy took it out of oneshot after"), "{cut}");
    let frozen = sum_total(&cluster.status(), "h2");
    cluster.wait_for_traffic("oneshot", 200);
    cluster.wait_for_traffic("conversations", 20);
    let rows = cluster.status();
    assert_eq!(sum_total(&rows, "h2"), frozen, "no new client goes to h2 once it is out: {rows:?}");
    assert!(rows.iter().filter(|((h, _), _)| h == "h2").all(|(_, r)| r.state == "DOWN"), "{rows:?}");
    let (one_shot, talks) = (one_shot.report(), talks.report());
    let failed = |report: &Value| report["failed"].as_u64().unwrap();
    let total = |report: &Value| report["ok"].as_u64().unwrap() + failed(report);
    assert!(
        failed(&one_shot) <= 8,
        "more one-shot clients failed than were in flight (8 clients): {one_shot}"
    );
    assert!(failed(&talks) <= 4, "more conversations failed than were in flight (4 clients): {talks}");
    assert!(one_shot["ok"].as_u64().unwrap() > 0 && talks["ok"].as_u64().unwrap() > 0, "{one_shot}\n{talks}");
    eprintln!(
        "host failure: {} of {} one-shot clients and {} of {} conversations failed; {}",
        failed(&one_shot),
        total(&one_shot),
        failed(&talks),
        total(&talks),
        cut.trim()
    );

    // It comes back and gets clients again.
    let healed = cluster.ok(&["heal", "2"]);
    assert!(healed.contains("back in rotation"), "{healed}");
    let rows = cluster.status();
    assert!(rows.values().all(|r| r.state == "UP"), "{rows:?}");
    let after_heal = Stress::one_shot(cluster.front, "1s", "5s").report();
    assert_eq!(after_heal["failed"], 0, "{after_heal}");
    let rows = cluster.status();
    assert!(sum_total(&rows, "h2") > frozen, "h2 serves again: {rows:?}");

    // Down leaves nothing: no process, namespace, state directory or listener.
    let pids: Vec<i32> = rows.values().map(|r| r.pid).collect();
    let haproxy_pid: i32 = std::fs::read_to_string(cluster.state_dir().join("haproxy.pid"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .expect("haproxy.pid");
    let down = cluster.ok(&["down"]);
    assert!(down.contains("is down"), "{down}");
    for pid in pids.iter().chain([&haproxy_pid]) {
        assert!(is_gone(*pid), "process {pid} is still running after down");
    }
    assert_eq!(namespaces_named(&format!("{}-", cluster.name)), Vec::<String>::new());
    assert!(!cluster.state_dir().exists(), "{} is left", cluster.state_dir().display());
    for addr in [cluster.front, cluster.conv_front] {
        assert!(TcpStream::connect_timeout(&addr, WAIT).is_err(), "something still listens on {addr}");
    }
}
