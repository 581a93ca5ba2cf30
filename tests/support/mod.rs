//! Helpers shared by the integration tests: start the real binary on a fresh port, wait for its log lines,
//! talk to it like the tutorial's client, and always kill what was started.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};

pub const BIN: &str = env!("CARGO_BIN_EXE_poolserver");
/// The longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// The tutorial's reply.
pub const REPLY: &str = "信息已收到";

/// Every variable the binary reads; cleared so the developer's environment cannot leak into a test.
pub const VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "POOLSERVER_CONFIG",
    "POOLSERVER_BIND",
    "POOLSERVER_WORKERS",
    "POOLSERVER_QUEUE",
    "POOLSERVER_BACKLOG",
    "POOLSERVER_MODE",
    "POOLSERVER_REPLY",
    "POOLSERVER_BUSY_REPLY",
    "POOLSERVER_MAX_REQUEST",
    "POOLSERVER_READ_TIMEOUT",
    "POOLSERVER_WRITE_TIMEOUT",
    "POOLSERVER_SHUTDOWN_TIMEOUT",
    "POOLSERVER_LOG_LEVEL",
    "POOLSERVER_LOG_FILE",
    "POOLSERVER_REUSE_PORT",
    "POOLSERVER_PROXY_PROTOCOL",
    "POOLSERVER_KEEP_ALIVE",
    "POOLSERVER_IDLE_TIMEOUT",
];

/// `poolserver ARGS` with a clean environment plus `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in VARS {
        cmd.env_remove(var);
    }
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
    for var in VARS {
        shell.env_remove(var);
    }
    shell.envs(env.iter().copied());
    shell.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve \"$@\"", BIN]).args(args);
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe, as required between fork and exec.
    unsafe {
        shell.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    shell
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
    let mut child = command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn poolserver");
    let status = match wait_child(&mut child, WAIT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("poolserver {args:?} did not exit within {WAIT:?}");
        }
    };
    let mut stderr = String::new();
    child.stderr.take().expect("piped stderr").read_to_string(&mut stderr).expect("read stderr");
    (status, stderr)
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
