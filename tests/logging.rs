//! The two logs against the real binary: a stalled stderr stops neither serving nor the exit, the access log
//! reaches its file while the server runs and completely at a stop, floods of warnings are throttled,
//! SIGUSR1 reopens renamed files, the stop lines come in order, and under systemd the journal gets entries
//! with their priorities.

mod support;

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{KillOnDrop, REPLY, Server, WAIT, connect, exchange, have_tool, kill, wait_child};

/// The shutdown timeout the tests give the server; it must exit within it.
const SHUTDOWN: Duration = Duration::from_secs(3);

/// Polls `check` every few milliseconds until it holds or `within` has passed; whether it held.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// `clients` exchanges of the tutorial's client, spread over four threads; panics unless each got the reply.
fn serve_clients(addr: SocketAddr, clients: usize) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in (t..clients).step_by(4) {
                    let reply = exchange(addr, b"hello").unwrap_or_else(|e| panic!("client {i}: {e}"));
                    assert_eq!(reply, REPLY.as_bytes(), "client {i}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client failed");
    }
}

/// `poolserver serve ARGS` on `listener` (socket activation), its stderr a pipe that nobody reads.
fn start_unread(listener: &TcpListener, args: &[&str]) -> (KillOnDrop, std::process::ChildStderr) {
    let mut child = support::socket_activated(listener, args, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn poolserver");
    let stderr = child.stderr.take().expect("piped stderr");
    (KillOnDrop(child), stderr)
}

/// Waits for the exit, which must come within `SHUTDOWN` and be a success.
fn exits_in_time(child: &mut Child) {
    let started = Instant::now();
    let status =
        wait_child(child, SHUTDOWN).unwrap_or_else(|| panic!("still running {SHUTDOWN:?} after SIGTERM"));
    assert!(status.success(), "{status} after {:?}", started.elapsed());
}

#[test]
fn a_stderr_nobody_reads_stops_neither_serving_nor_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = format!("{}s", SHUTDOWN.as_secs());
    let (mut server, _unread) =
        start_unread(&listener, &["--shutdown-timeout", &shutdown, "--log-file", log.to_str().unwrap()]);
    drop(listener);

    // About 2,000 access lines of a hundred bytes: far more than a pipe holds.
    serve_clients(addr, 2000);
    kill(server.0.id(), libc::SIGTERM);
    exits_in_time(&mut server.0);
    let written = read(&log);
    assert!(written.contains("stopped: served 2000,"), "{written}");
}

#[test]
fn lines_lost_to_a_stalled_stderr_are_counted_and_reported_once_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // --max-messages: the one conversation below is longer than the default cap allows; --log-each-message:
    // each of its messages is an access line.
    let log_file = log.to_str().unwrap();
    let args = [
        "--keep-alive",
        "--log-each-message",
        "--max-messages",
        "10000",
        "--mode",
        "echo",
        "--log-file",
        log_file,
    ];
    let (mut server, unread) = start_unread(&listener, &args);
    drop(listener);

    // One conversation of 10,000 messages of 64 bytes: an access line of about 160 bytes each, 1.6 MB in
    // all, more than the pipe and the server's buffer for stderr hold together.
    let mut stream = connect(addr);
    let message = [b'm'; 64];
    let mut reply = [0; 64];
    for _ in 0..10_000 {
        stream.write_all(&message).unwrap();
        stream.read_exact(&mut reply).unwrap();
    }
    drop(stream);

    // Now read stderr: the writer gets through again and says, while the server runs, how many lines it
    // dropped.
    let (tx, lines) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        for line in BufReader::new(unread).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let report = loop {
        match lines.recv_deadline(deadline) {
            Ok(line) if line.contains("lines were dropped here") => break line,
            Ok(_) => {}
            Err(e) => panic!("no report of dropped lines on stderr: {e}"),
        }
    };
    assert!(report.contains("[WARN] log: "), "{report}");
    kill(server.0.id(), libc::SIGTERM);
    exits_in_time(&mut server.0);
    let written = read(&log);
    let lost = written.lines().find(|l| l.contains("log: lost ")).unwrap_or_else(|| panic!("{written}"));
    assert!(lost.contains(" lines to stderr while a destination did not keep up"), "{lost}");
}

#[test]
fn the_access_log_file_gets_lines_while_the_server_runs_and_all_of_them_at_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--access-log", access.to_str().unwrap()]);
    let addr = server.client_addr();

    exchange(addr, b"first").unwrap();
    let served = Instant::now();
    assert!(
        eventually(Duration::from_millis(1500), || read(&access).contains("request \"first\"")),
        "no access line within 1.5 s: {:?}",
        read(&access)
    );
    assert!(served.elapsed() < Duration::from_millis(1500));

    // Many more, and the stop right after the last: every line must be there once the process has exited.
    serve_clients(addr, 300);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
    let written = read(&access);
    assert_eq!(written.lines().filter(|l| l.contains(" served: ")).count(), 301, "{written}");
    assert!(written.lines().all(|l| l.contains("[INFO] 127.0.0.1:")), "{written}");
    assert!(!server.log.iter().any(|l| l.contains(" served: ")), "access lines on stderr: {:#?}", server.log);
}

#[test]
fn access_log_off_writes_no_line_per_connection() {
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--access-log", "off"]);
    exchange(server.client_addr(), b"hello").unwrap();
    drop(connect(server.client_addr()));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
    assert!(server.log.iter().any(|l| l.contains("stopped: served 1, ")), "{:#?}", server.log);
    let lifecycle = ["listening on ", "stop requested", "stopping: ", "stopped: "];
    assert!(server.log.iter().all(|l| lifecycle.iter().any(|s| l.contains(s))), "{:#?}", server.log);
}

/// The count in `N more like this in the last Ts were not logged`, if the line has one.
fn suppressed_count(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" more like this in the last ")?;
    before.rsplit([' ', '(']).next()?.parse().ok()
}

#[test]
fn a_flood_of_warnings_writes_a_few_lines_with_counts_and_the_access_log_gets_them_all() {
    const CLIENTS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // At warn there is no `listening on` line to wait for: the socket is ours, and clients queue on it.
    let access = access.to_str().unwrap();
    let args =
        ["--proxy-protocol", "--proxy-from", "127.0.0.1", "--log-level", "warn", "--access-log", access];
    let (mut server, mut stderr) = start_unread(&listener, &args);
    drop(listener);
    let log = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Each client sends garbage where the PROXY header belongs: one warning each.
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for _ in (t..CLIENTS).step_by(4) {
                    let _ = exchange(addr, b"GARBAGE garbage garbage\r\n");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let flood = started.elapsed();
    kill(server.0.id(), libc::SIGTERM);
    exits_in_time(&mut server.0);
    let log = log.join().unwrap();
    let log: Vec<&str> = log.lines().collect();

    let warnings: Vec<&str> = log.iter().copied().filter(|l| l.contains("PROXY protocol error")).collect();
    // One a second, a count that nobody carried, and the rounding of a partial second.
    let allowed = flood.as_secs() as usize + 3;
    assert!(warnings.len() <= allowed, "{} lines in {flood:?}: {warnings:#?}", warnings.len());
    assert_eq!(log.len(), warnings.len(), "{log:#?}");
    let logged = warnings.iter().filter(|l| !l.contains("] log: ")).count() as u64;
    let suppressed: u64 = warnings.iter().filter_map(|l| suppressed_count(l)).sum();
    assert_eq!(logged + suppressed, CLIENTS as u64, "{warnings:#?}");
    let written = read(Path::new(access));
    assert_eq!(
        written.lines().filter(|l| l.contains("[WARN]") && l.contains("PROXY protocol error")).count(),
        CLIENTS
    );
}

#[test]
fn sigusr1_starts_new_log_files_after_they_were_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let [log, access, old_log, old_access] =
        ["server.log", "access.log", "server.log.1", "access.log.1"].map(|name| dir.path().join(name));
    let mut server = Server::start(&[
        "--bind",
        "127.0.0.1:0",
        "--log-file",
        log.to_str().unwrap(),
        "--access-log",
        access.to_str().unwrap(),
    ]);
    exchange(server.client_addr(), b"before").unwrap();
    assert!(eventually(WAIT, || read(&access).contains("\"before\"")), "{}", read(&access));

    fs::rename(&log, &old_log).unwrap();
    fs::rename(&access, &old_access).unwrap();
    server.signal(libc::SIGUSR1);
    assert!(eventually(WAIT, || read(&log).contains("reopening the log files")), "no new {}", log.display());
    exchange(server.client_addr(), b"after").unwrap();
    assert!(eventually(WAIT, || read(&access).contains("\"after\"")), "no new {}", access.display());

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
    let (old_log, old_access, log) = (read(&old_log), read(&old_access), read(&log));
    assert!(old_log.contains("listening on") && !old_log.contains("stopped:"), "{old_log}");
    assert!(log.contains("stopped: served 2,") && !log.contains("listening on"), "{log}");
    assert!(old_access.contains("\"before\"") && !old_access.contains("\"after\""), "{old_access}");
    assert!(!read(dir.path().join("access.log").as_path()).contains("\"before\""));
}

#[test]
fn the_stop_lines_come_in_order_in_twenty_stops() {
    for round in 0..20 {
        let mut server = Server::start(&["--bind", "127.0.0.1:0"]);
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(WAIT).success(), "round {round}: {:#?}", server.log);
        let at = |needle: &str| {
            server
                .log
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("round {round}: no {needle:?} in {:#?}", server.log))
        };
        let (requested, stopping, stopped) = (at("stop requested"), at("stopping: "), at("stopped: "));
        assert!(requested < stopping && stopping < stopped, "round {round}: {:#?}", server.log);
    }
}

/// A pipe for the server's stderr, and JOURNAL_STREAM naming it (`DEVICE:INODE`), as systemd sets it when
/// stderr is connected to the journal.
fn journal_stream() -> (io::PipeReader, io::PipeWriter, String) {
    let (reader, writer) = io::pipe().unwrap();
    let meta = fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&reader))).unwrap();
    (reader, writer, format!("{}:{}", meta.dev(), meta.ino()))
}

#[test]
fn on_a_journal_stream_without_the_journal_socket_lines_carry_their_priority_and_no_time() {
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("SKIP: journald runs here, so the server would send it native entries instead");
        return;
    }
    let (reader, writer, stream) = journal_stream();
    let cmd = support::command(
        &["serve", "--bind", "127.0.0.1:0", "--proxy-protocol"],
        &[("JOURNAL_STREAM", &stream)],
    );
    let mut server = Server::start_with_stderr(cmd, writer, reader);
    let _ = exchange(server.client_addr(), b"GARBAGE\r\n");
    let _ = exchange(server.client_addr(), b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\nhello");
    server.wait_for(" served: ");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);

    let line = |needle: &str| server.log.iter().find(|l| l.contains(needle)).expect(needle).as_str();
    assert!(line("listening on").starts_with("<5>listening on 127.0.0.1:"), "{:#?}", server.log);
    assert!(line("PROXY protocol error").starts_with("<4>127.0.0.1:"), "{:#?}", server.log);
    assert!(line(" served: ").starts_with("<5>192.0.2.7:40000 (via 127.0.0.1:"), "{:#?}", server.log);
    assert!(line("stopped: ").starts_with("<5>stopped: served 1,"), "{:#?}", server.log);
    assert!(server.log.iter().all(|l| !l.contains("Z [")), "a timestamp of ours: {:#?}", server.log);
}

/// The fields of one native journal entry: `NAME=value` lines, or `NAME`, a 64-bit length and the bytes.
fn journal_fields(mut rest: &[u8]) -> HashMap<String, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut fields = HashMap::new();
    while let Some(end) = rest.iter().position(|&b| b == b'=' || b == b'\n') {
        let name = text(&rest[..end]);
        let (value, next) = if rest[end] == b'=' {
            let len = rest[end + 1..].iter().position(|&b| b == b'\n').unwrap_or(rest.len() - end - 1);
            (&rest[end + 1..end + 1 + len], end + 1 + len + 1)
        } else {
            let len = u64::from_le_bytes(rest[end + 1..end + 9].try_into().unwrap()) as usize;
            (&rest[end + 9..end + 9 + len], end + 9 + len + 1)
        };
        fields.insert(name, text(value));
        rest = rest.get(next..).unwrap_or_default();
    }
    fields
}

/// Whether this process may make a mount namespace of its own (root, or a container that allows it).
fn can_unshare_mounts() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn under_systemd_the_server_log_goes_to_the_journal_as_entries_with_their_priority() {
    if !can_unshare_mounts() {
        eprintln!("SKIP: cannot make a mount namespace here, to put a test socket where journald's would be");
        return;
    }
    // A socket of ours as journald's: mounted over /run/systemd/journal in a mount namespace of the server's
    // own, so the server finds it where journald keeps its socket.
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    let (tx, entries) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        let mut datagram = vec![0; 1 << 16];
        while let Ok(n) = journal.recv(&mut datagram) {
            let fields = journal_fields(&datagram[..n]);
            if !fields.is_empty() && tx.send(fields).is_err() {
                break;
            }
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stderr, writer, stream) = journal_stream();
    let script = "bin=$0 dir=$1; shift; mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
                  && mount --bind \"$dir\" /run/systemd/journal \
                  && LISTEN_PID=$$ LISTEN_FDS=1 exec \"$bin\" serve \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script, support::BIN, journal_dir.to_str().unwrap()]);
    cmd.args(["--proxy-protocol", "--access-log", "off"]);
    support::clean_env(&mut cmd, &[("JOURNAL_STREAM", &stream)]);
    support::pass_listener(&mut cmd, &listener);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(writer);
    let mut server = KillOnDrop(cmd.spawn().unwrap());
    drop(cmd);
    drop(listener);

    let mut seen = Vec::new();
    let mut entry = |needle: &str| {
        if let Some(found) = seen.iter().find(|e: &&HashMap<String, String>| e["MESSAGE"].contains(needle)) {
            return found.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let fields =
                entries.recv_deadline(deadline).unwrap_or_else(|_| panic!("no entry {needle:?}: {seen:#?}"));
            seen.push(fields.clone());
            if fields.get("MESSAGE").is_some_and(|m| m.contains(needle)) {
                return fields;
            }
        }
    };
    let listening = entry("listening on");
    let _ = exchange(addr, b"GARBAGE\r\n");
    let warning = entry("PROXY protocol error");
    kill(server.0.id(), libc::SIGTERM);
    exits_in_time(&mut server.0);
    let stopped = entry("stopped: ");

    for (fields, priority) in [(&listening, "5"), (&warning, "4"), (&stopped, "5")] {
        assert_eq!(fields["PRIORITY"], priority, "{fields:#?}");
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "poolserver", "{fields:#?}");
        assert!(fields.contains_key("CODE_FILE") && fields.contains_key("CODE_LINE"), "{fields:#?}");
    }
    assert!(listening["MESSAGE"].starts_with("listening on 127.0.0.1:"), "{listening:#?}");
    assert!(stopped["MESSAGE"].starts_with("stopped: served 0,"), "{stopped:#?}");
    let mut written = String::new();
    BufReader::new(stderr).read_to_string(&mut written).unwrap();
    assert_eq!(written, "", "the server log went to stderr too");
}

#[test]
fn logrotate_with_the_shipped_settings_rotates_a_running_server_without_losing_a_line() {
    if !have_tool("logrotate", "Debian package logrotate; .ci/run installs it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--access-log", access.to_str().unwrap()]);
    serve_clients(server.client_addr(), 50);
    let served = |path: &Path| read(path).lines().filter(|l| l.contains(" served: ")).count();
    assert!(eventually(WAIT, || served(&access) == 50), "{}", read(&access));

    // config/logrotate as shipped, but for this directory and signalling this process.
    let shipped = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/logrotate")).unwrap();
    let signal = "systemctl kill --kill-whom=main --signal=SIGUSR1 poolserver.service";
    assert!(shipped.contains("/var/log/poolserver/*.log {") && shipped.contains(signal), "{shipped}");
    let config = shipped
        .replace("/var/log/poolserver/*.log", &format!("{}/*.log", dir.path().display()))
        .replace(signal, &format!("kill -USR1 {}", server.pid()));
    let config_path = dir.path().join("logrotate.conf");
    fs::write(&config_path, config).unwrap();
    let mut logrotate = KillOnDrop(
        Command::new("logrotate")
            .args(["--force", "--state"])
            .arg(dir.path().join("logrotate.state"))
            .arg(&config_path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_child(&mut logrotate.0, WAIT).expect("logrotate did not finish");
    assert!(status.success(), "logrotate: {status}");
    server.wait_for("reopening the log files");

    serve_clients(server.client_addr(), 50);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success(), "{:#?}", server.log);
    // delaycompress: the newest old file stays uncompressed.
    let rotated = dir.path().join("access.log.1");
    assert_eq!((served(&rotated), served(&access)), (50, 50), "{}\n---\n{}", read(&rotated), read(&access));
}
