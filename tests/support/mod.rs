//! Helpers shared by the integration tests: start the real binary on a fresh port, wait for its log lines,
//! talk to it like the tutorial's client, and always kill what was started.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};

pub const BIN: &str = env!("CARGO_BIN_EXE_poolserver");
/// The longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// The tutorial's reply.
pub const REPLY: &str = "信息已收到";

/// Variables from systemd that the binary reads; cleared with every `POOLSERVER_*` variable so the developer's
/// environment cannot leak into a test.
const SYSTEMD_VARS: &[&str] =
    &["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "JOURNAL_STREAM"];

/// Removes from `cmd` every variable the binary reads: systemd's, and every `POOLSERVER_*` one set here
/// (a list of names would miss the next option's).
pub fn clear_environment(cmd: &mut Command) {
    for var in SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.as_encoded_bytes().starts_with(b"POOLSERVER_") {
            cmd.env_remove(var);
        }
    }
}

/// `poolserver ARGS` with a clean environment plus `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    clear_environment(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd
}

/// A running `poolserver serve`, killed by its PID when dropped.
pub struct Server {
    child: Child,
    /// The address it reported in `listening on ADDR`.
    pub addr: SocketAddr,
    lines: Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl Server {
    /// Starts `poolserver serve ARGS` (add `--bind 127.0.0.1:0` yourself) and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        Server::start_command(command(&full, env))
    }

    /// Starts a prepared `poolserver serve` command and waits until it listens.
    pub fn start_command(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn poolserver");
        let stderr = child.stderr.take().expect("piped stderr");
        Server::watch(child, stderr)
    }

    /// Starts a prepared `poolserver serve` command whose stderr is the write end of a pipe the test made,
    /// reads the other end, and waits until it listens.
    pub fn start_with_stderr(mut cmd: Command, stderr: io::PipeWriter, reader: io::PipeReader) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("spawn poolserver");
        // Our copy of the write end closed, EOF comes when the server exits.
        drop(cmd);
        Server::watch(child, reader)
    }

    fn watch(child: Child, stderr: impl Read + Send + 'static) -> Server {
        let (tx, lines) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), lines, log: Vec::new() };
        let line = server.wait_for("listening on ");
        let addr = line.split("listening on ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("");
        server.addr = addr.parse().unwrap_or_else(|_| panic!("no address in {line:?}"));
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Where a client reaches it: a wildcard bind is reached on loopback.
    pub fn client_addr(&self) -> SocketAddr {
        loopback(self.addr)
    }

    /// Waits for a stderr line containing `needle` (one already read counts) and returns it; fails the test
    /// after `WAIT`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        match self.log.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for_next(needle),
        }
    }

    /// Like `wait_for`, but only lines that arrive from now on count.
    pub fn wait_for_next(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needle:?} within {WAIT:?}:\n{}", self.log.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server exited without logging {needle:?}:\n{}", self.log.join("\n"))
                }
            }
        }
    }

    /// Sends a signal to the process by its PID.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the PID of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed: {}", self.pid(), io::Error::last_os_error());
    }

    /// Waits for the process to exit (failing the test after `within`) and reads the rest of its stderr.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = wait_child(&mut self.child, within)
            .unwrap_or_else(|| panic!("server still running after {within:?}:\n{}", self.log.join("\n")));
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self.lines.recv_deadline(deadline) {
            self.log.push(line);
        }
        status
    }
}

/// A child process killed by its PID when dropped, for tests that do not read its stderr.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends `signal` to the process `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) with the PID of a child the caller has not reaped yet.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", io::Error::last_os_error());
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `poolserver serve ARGS` as systemd's socket activation starts it: `listener` becomes its file
/// descriptor 3, with LISTEN_FDS=1 and LISTEN_PID set to its own PID (by a shell that `exec`s it).
pub fn socket_activated(listener: &TcpListener, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut shell = Command::new("sh");
    clean_env(&mut shell, env);
    shell.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve \"$@\"", BIN]).args(args);
    pass_listener(&mut shell, listener);
    shell
}

/// Clears every variable the binary reads from `cmd`'s environment, then adds `env`.
pub fn clean_env(cmd: &mut Command, env: &[(&str, &str)]) {
    clear_environment(cmd);
    cmd.envs(env.iter().copied());
}

/// Makes `listener` the file descriptor 3 of the process `cmd` starts, as systemd passes a socket.
pub fn pass_listener(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls for `child`'s exit until `within` has passed; `None` if it is still running.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `poolserver ARGS` that is expected to exit on its own; returns its status and stderr.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = output(&mut command(args, env), WAIT);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `cmd` with no input to completion and returns what it printed; kills it and fails the test if it
/// takes longer than `within`.
pub fn output(cmd: &mut Command, within: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    finish(Guarded(child), within)
}

/// Waits for a child started with piped stdout and stderr, reading both while it runs (a chatty child never
/// blocks on a full pipe); kills it by its PID and fails the test if it runs longer than `within`.
pub fn finish(mut child: Guarded, within: Duration) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let mut pipe = pipe.expect("piped output");
        spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.0.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_child(&mut child.0, within)
        .unwrap_or_else(|| panic!("process {} still running after {within:?}", child.0.id()));
    // The child has exited: its pipes close unless it left a process behind holding them.
    let (stdout, stderr) = (stdout.join(within), stderr.join(within));
    Output { status, stdout, stderr }
}

/// A child process that is killed by its PID when dropped, if it is still running: a failing test never
/// leaves it behind.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A thread whose result can be waited for with a bound, unlike `JoinHandle::join`.
pub struct BoundedThread<T> {
    result: Receiver<thread::Result<T>>,
}

/// Runs `f` on a new thread.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> BoundedThread<T> {
    let (tx, result) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    BoundedThread { result }
}

impl<T> BoundedThread<T> {
    /// The thread's result; fails the test if it takes longer than `within`, and panics again with the
    /// thread's panic.
    pub fn join(self, within: Duration) -> T {
        match self.result.recv_timeout(within) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("thread still running after {within:?}"),
        }
    }
}

pub fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        other => other,
    }
}

/// The tutorial's client step 1-2: a connected socket, with every wait bounded.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream
}

/// Waits (bounded) until `ready` holds for the numbers of a server run through the library.
pub fn wait_until(monitor: &poolserver::Monitor, what: &str, ready: impl Fn(&poolserver::Snapshot) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let snapshot = monitor.snapshot();
        if ready(&snapshot) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {snapshot:#?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Where a server started with `--metrics 127.0.0.1:0` serves its metrics, from its log.
pub fn metrics_addr(server: &mut Server) -> SocketAddr {
    let line = server.wait_for("metrics on http://");
    line.rsplit("http://").next().unwrap().trim_end_matches("/metrics").parse().unwrap()
}

/// The metrics page, as `GET /metrics` returns it.
pub fn scrape(metrics: SocketAddr) -> String {
    let mut stream = connect(metrics);
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

/// A metric's value on a metrics page (a counter's name without its `_total`).
pub fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name || key == format!("{name}_total")).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {page}")) as u64
}

/// Waits (bounded) until `n` connections wait in the server's waiting room. A reply reaches its client
/// before the worker that wrote it hands the conversation back, so a test that stops the server right after
/// its last reply must wait for this to find every conversation idle.
pub fn wait_until_waiting(metrics: SocketAddr, n: u64) {
    let deadline = Instant::now() + WAIT;
    while sample(&scrape(metrics), "poolserver_waiting_connections") < n {
        assert!(Instant::now() < deadline, "never {n} connections in the waiting room");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The tutorial's client: connect, send, receive until the server closes, close.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = connect(addr);
    stream.write_all(request)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}

/// A client that asked for a reply and reads it slowly: a small receive buffer, so a large reply keeps the
/// server's worker writing. Returns once the first bytes have arrived, i.e. once the worker is mid-reply.
pub fn slow_reader(addr: SocketAddr) -> (TcpStream, usize) {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect_timeout(&addr.into(), WAIT).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.write_all(b"hello").expect("send request");
    let mut first = [0; 1024];
    let n = stream.read(&mut first).expect("first bytes of the reply");
    assert!(n > 0, "server closed before replying");
    (stream, n)
}

/// Reads the rest of a reply to EOF and returns how many bytes came.
pub fn read_rest(mut stream: TcpStream) -> io::Result<usize> {
    let mut total = 0;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

/// Whether the server has closed `stream` (EOF) without sending anything, checked without waiting.
pub fn is_closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0; 1];
    let closed = matches!((&*stream).read(&mut byte), Ok(0));
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("poolserver.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A config file whose reply is `size` bytes: larger than the socket buffers, so writing it takes a worker
/// for as long as the client takes to read it.
pub fn big_reply_config(dir: &Path, size: usize) -> PathBuf {
    write_config(dir, &format!("reply = \"{}\"\n", "x".repeat(size)))
}

/// A server whose reply is `size` bytes, and a client reading it slowly: the worker serving that client stays
/// busy writing until the client reads on. `args` are `serve`'s (with `--bind`); the config file that sets
/// the reply lives in `_dir`, kept as long as this is. Keep `reader` bound while the server should stay busy:
/// dropping it resets the connection and frees the worker.
pub struct MidReply {
    pub server: Server,
    pub reader: TcpStream,
    /// Reply bytes the reader has already had.
    pub first: usize,
    _dir: tempfile::TempDir,
}

pub fn server_mid_reply(size: usize, args: &[&str]) -> MidReply {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = big_reply_config(dir.path(), size);
    let mut full = vec!["--config", config.to_str().expect("UTF-8 path")];
    full.extend_from_slice(args);
    let server = Server::start(&full);
    let (reader, first) = slow_reader(server.client_addr());
    MidReply { server, reader, first, _dir: dir }
}

/// Closes our sending side, as a client that finished its request does.
pub fn finish_sending(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// Runs `poolserver ARGS` expecting a usage or configuration error, and checks it is one line with exit code
/// 2 that contains every needle. `serve` gets `--bind 127.0.0.1:0` unless `args` name one, so a mistake
/// in the test never binds a real port. Returns the line.
pub fn rejected(args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    rejected_command(command(&serve_args(args), env), needles)
}

fn serve_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut full = Vec::new();
    if args.first() == Some(&"serve") && !args.iter().any(|a| a.starts_with("--bind") || *a == "-b") {
        full.extend(["serve", "--bind", "127.0.0.1:0"]);
        full.extend_from_slice(&args[1..]);
    } else {
        full.extend_from_slice(args);
    }
    full
}

/// Like `rejected`, for a prepared command.
pub fn rejected_command(mut cmd: Command, needles: &[&str]) -> String {
    let out = output(&mut cmd, WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{cmd:?}: not one line: {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{cmd:?}: {needle:?} not in {stderr}");
    }
    stderr
}

/// Whether `tool` is on PATH. When it is not, the calling test cannot check what it is for: it fails when
/// the variable `CI` is set (CI installs its tools, so a missing one is a broken CI), and otherwise says so
/// on the test process's real stderr, which `cargo test` shows (`eprintln!` would be captured and hidden
/// unless the test failed), then returns false for the test to end early.
pub fn have_tool(tool: &str, install: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if !found {
        let test = thread::current().name().unwrap_or("a test").to_owned();
        assert!(std::env::var_os("CI").is_none(), "{test} needs {tool}, which is not on PATH ({install})");
        let line = format!(
            "\nNOT CHECKED: {test} needs {tool}, which is not on PATH ({install}); under CI=1 this fails\n"
        );
        let _ = io::stderr().write_all(line.as_bytes());
    }
    found
}

/// Every key the server accepts in a config file, as the server itself lists them when it refuses an
/// unknown one: no copy of the list in the tests can fall behind the binary.
pub fn accepted_keys() -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = write_config(dir.path(), "no_such_key = 1\n");
    let line =
        rejected(&["serve", "--config", config.to_str().expect("UTF-8 path")], &[], &["the keys are "]);
    let list = line.split("the keys are ").nth(1).unwrap_or_default().trim();
    let keys: Vec<String> = list.split(", ").map(str::to_owned).collect();
    assert!(keys.len() >= 10 && keys.iter().all(|k| !k.is_empty() && !k.contains(' ')), "{line}");
    keys
}

/// The tutorial's exchange from a chosen loopback source address; returns the local address used.
pub fn exchange_from(source: &str, addr: SocketAddr) -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, REPLY.as_bytes());
    stream.local_addr().unwrap()
}

/// A library handler for tests of the pool: replies "ok", except that the message "hold" keeps its worker
/// until the test lets go (it says so on `entered`, then waits on `release`, bounded), the message "big"
/// gets `BIG` bytes, more than a loopback socket takes at once, and "bye" ends the conversation.
pub struct Gate {
    pub entered: crossbeam_channel::Sender<()>,
    pub release: Receiver<()>,
}

/// The reply to "big".
pub const BIG: usize = 32 << 20;

impl poolserver::Handler for Gate {
    type State = ();

    fn reply<'a>(&'a self, message: &poolserver::Message<'a>, _: &mut ()) -> poolserver::Reply<'a> {
        use poolserver::Reply;
        match message.bytes() {
            b"hold" => {
                let _ = self.entered.send(());
                let _ = self.release.recv_timeout(WAIT);
            }
            b"big" => return Reply::from(vec![b'x'; BIG]),
            b"bye" => return Reply::from("ok").then_close(),
            _ => {}
        }
        Reply::from("ok")
    }
}
