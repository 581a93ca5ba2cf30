//! Bad input as a careless operator or an attacker gives it: bytes that are not UTF-8, files that are not
//! files, huge lines, wrong types, empty replies, typos, and addresses that cannot be bound. Each gets one
//! short line that names the culprit and says what to do, never a panic, a hang or a flood.

mod support;

use std::{
    ffi::{CString, OsStr},
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    os::{
        fd::AsRawFd,
        unix::{
            ffi::{OsStrExt, OsStringExt},
            fs::OpenOptionsExt,
        },
    },
    path::Path,
    process::Command,
    thread,
};

use support::{BIN, WAIT, command, rejected, rejected_command, write_config};

fn not_utf8(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().to_owned().into_vec()).expect("no NUL in a temp path");
    // SAFETY: mkfifo with a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

#[test]
fn arguments_that_are_not_utf8_are_named_not_a_panic() {
    let mut cmd = command(&["serve"], &[]);
    cmd.arg(not_utf8(b"--\xff"));
    let line =
        rejected_command(cmd, &[r"unexpected argument '--\xff' found", "see 'poolserver serve --help'"]);
    assert!(!line.contains("panicked"), "{line}");

    let mut cmd = command(&["serve", "--bind", "127.0.0.1:0", "--reply"], &[]);
    cmd.arg(not_utf8(b"ok\xff"));
    rejected_command(cmd, &[r"argument 'ok\xff' (after '--reply') is not valid UTF-8"]);
}

#[test]
fn a_variable_that_is_not_utf8_is_named() {
    let mut cmd = command(&["serve", "--bind", "127.0.0.1:0"], &[]);
    cmd.env("POOLSERVER_WORKERS", not_utf8(b"\xff"));
    rejected_command(cmd, &[r"environment variable POOLSERVER_WORKERS is not valid UTF-8 ('\xff')"]);
}

#[test]
fn a_config_file_must_be_a_regular_file_of_at_most_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    // Before the fix, a FIFO blocked startup in open() and /dev/zero was read until memory ran out: here
    // both must be refused within support::WAIT.
    let fifo = dir.path().join("config.fifo");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    rejected(&["serve", "--config", fifo], &[], &["cannot read config file", fifo, "a FIFO (named pipe)"]);
    rejected(&["serve", "--config", "/dev/zero"], &[], &["/dev/zero: it is a character device"]);
    let directory = dir.path().to_str().unwrap();
    rejected(&["serve", "--config", directory], &[], &["it is a directory, not a regular file"]);

    let big = dir.path().join("big.toml");
    fs::File::create(&big).unwrap().set_len((64 << 20) + 1).unwrap();
    rejected(&["serve", "-c", big.to_str().unwrap()], &[], &["it is 67108865 bytes", "at most 64 MiB"]);
}

#[test]
fn a_log_file_that_is_a_fifo_never_hangs_startup() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    mkfifo(&fifo);
    let path = fifo.to_str().unwrap();
    rejected(&["serve", "--log-file", path], &[], &[path, "a FIFO (named pipe) that nothing reads yet"]);

    // With a reader, a FIFO is a fine log: the lines arrive there. The reader is open before the server
    // starts (a non-blocking open needs no writer; it is made blocking after), and a writer of the test's
    // own keeps it from reading end-of-file before the server has opened its end.
    let reading = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let keep_open = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    // SAFETY: fcntl on a descriptor the File owns for the whole call; no pointers.
    let rc = unsafe { libc::fcntl(reading.as_raw_fd(), libc::F_SETFL, 0) };
    assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
    let reader = thread::spawn(move || {
        let lines = BufReader::new(reading).lines();
        lines.map_while(Result::ok).find(|line| line.contains("listening on"))
    });
    let server = support::Server::start(&["--bind", "127.0.0.1:0", "--log-file", path]);
    // The line reaches the FIFO from the log's writer thread, a moment after stderr: wait for it first.
    let seen = support::spawn(move || reader.join()).join(WAIT).expect("reader thread");
    drop((server, keep_open));
    assert!(seen.is_some(), "no 'listening on' line reached the FIFO");
}

#[test]
fn long_and_binary_input_is_quoted_short_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"workers = 4 \0".to_vec();
    text.extend(std::iter::repeat_n(b'a', 5 << 20));
    text.extend_from_slice(b"\x1b[2J\n");
    let config = dir.path().join("long.toml");
    fs::write(&config, &text).unwrap();
    let line =
        rejected(&["serve", "-c", config.to_str().unwrap()], &[], &["line 1 ('workers = 4 \\0aaa", "…'"]);
    assert!(line.len() < 400, "{} bytes: {line}", line.len());
    assert!(!line.contains(['\0', '\x1b']), "raw control bytes: {line:?}");

    let value = "a\nb".repeat(30_000);
    let line = rejected(&["serve", "--bind", &value], &[], &["invalid value 'a\\nba\\nb", "(90000 bytes)"]);
    assert!(line.len() < 600, "{} bytes: {line}", line.len());
    let line = rejected(&["serve", "--workers", &value], &[], &["is not a whole number"]);
    assert!(line.len() < 600, "{} bytes: {line}", line.len());
}

#[test]
fn type_errors_in_the_file_say_what_the_key_wants() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 5] = [
        (
            "workers = \"4\"",
            "line 1: workers: expected a number, like 4 (found a string: write the number without quotes)",
        ),
        ("\nqueue = 1.5", "line 2: queue: expected a number, like 1024 (found a fraction)"),
        ("read_timeout = 5", "read_timeout: expected a duration in quotes, like \"5s\""),
        ("keep_alive = \"yes\"", "keep_alive: expected true or false (found a string)"),
        ("bind = 8000", "bind: expected a string in quotes, like \"127.0.0.1:8000\""),
    ];
    for (text, expected) in cases {
        let config = write_config(dir.path(), text);
        rejected(&["serve", "--config", config.to_str().unwrap()], &[], &[expected]);
    }
}

#[test]
fn an_empty_reply_is_refused_from_flag_variable_and_file() {
    let why = "must not be empty: a client could not tell an empty reply from a close";
    rejected(&["serve", "--reply", ""], &[], &["'--reply <TEXT>'", why]);
    rejected(&["serve", "--busy-reply="], &[], &["'--busy-reply <TEXT>'", why]);
    rejected(&["serve"], &[("POOLSERVER_REPLY", "")], &["from environment variable POOLSERVER_REPLY", why]);
    rejected(&["serve"], &[("POOLSERVER_BUSY_REPLY", "")], &["POOLSERVER_BUSY_REPLY", why]);
    let dir = tempfile::tempdir().unwrap();
    for key in ["reply", "busy_reply"] {
        let config = write_config(dir.path(), &format!("{key} = \"\"\n"));
        rejected(&["serve", "-c", config.to_str().unwrap()], &[], &[&format!("line 1: {key}: {why}")]);
    }
}

#[test]
fn typos_keep_clap_hints_and_point_to_the_right_help() {
    rejected(
        &["serve", "--bnid", "127.0.0.1:0"],
        &[],
        &[
            "unexpected argument '--bnid' found; tip: a similar argument exists: '--bind'",
            "'poolserver serve --help'",
        ],
    );
    rejected(&["serv"], &[], &["unrecognized subcommand 'serv'; tip: a similar subcommand exists: 'serve'"]);
    rejected(&["stress", "--clients", "0"], &[], &["'--clients <C>'", "see 'poolserver stress --help'"]);
    rejected(&["send", "--timeout", "soon"], &[], &["'--timeout <DUR>'", "see 'poolserver send --help'"]);
    rejected(&["nonsense"], &[], &["see 'poolserver --help'"]);

    let line = rejected(&["serve", "--workers"], &[], &["a value is required for '--workers <N>'"]);
    assert!(!line.contains("expected one of") && !line.contains("()"), "{line}");
    rejected(
        &["serve", "--mode"],
        &[],
        &["a value is required for '--mode <MODE>'", "(possible values: ack, echo)"],
    );
}

/// Runs `serve` expecting a bind failure: exit code 1 (a port in use or an address not yet configured can
/// clear up, so a service manager may retry) and one line.
fn bind_fails(mut cmd: Command, needles: &[&str]) {
    let out = support::output(&mut cmd, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn bind_failures_name_the_cause_and_the_fix() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    bind_fails(
        command(&["serve", "--bind", &addr.to_string()], &[]),
        &[
            "Address already in use",
            &format!(
                "another process is listening on port {} (find it: ss -ltnp 'sport = :{}')",
                addr.port(),
                addr.port()
            ),
        ],
    );
    // 192.0.2.0/24 is TEST-NET-1, reserved for documentation: no machine has it.
    bind_fails(
        command(&["serve", "--bind", "192.0.2.1:0"], &[]),
        &["cannot bind 192.0.2.1:0", "192.0.2.1 is not an address of this machine"],
    );
}

#[test]
fn a_port_below_1024_without_the_capability_says_how_to_get_it() {
    let unprivileged = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    assert!(unprivileged > 1, "this kernel lets anyone bind port 1: nothing to check");
    let args = ["serve", "--bind", "127.0.0.1:1"];
    // SAFETY: geteuid has no preconditions.
    let cmd = if unsafe { libc::geteuid() } == 0 {
        // Root binds low ports: drop the capability, as a service without it runs.
        if !support::have_tool("setpriv", "Debian package util-linux") {
            return;
        }
        let mut cmd = Command::new("setpriv");
        support::clear_environment(&mut cmd);
        cmd.args(["--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", BIN]).args(args);
        cmd
    } else {
        command(&args, &[])
    };
    bind_fails(cmd, &["Permission denied", "CAP_NET_BIND_SERVICE", "poolserver.socket", "from 1024 up"]);
}
