//! The command line as clap types: raw values only.
//!
//! Every option of `serve` is `Option<_>` because a missing flag is not a default: the value may still come
//! from the environment (clap reads `POOLSERVER_*` for us, so flag beats environment), then from the config
//! file, and only then from the built-in default. `settings::Settings::resolve` does that merge. The
//! defaults and ranges that `--help` (and so the man page) shows are the library's constants, printed, never
//! written out again here; `tests/defaults.rs` compares them with `Config::default()`.

use std::{fmt::Display, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};
use log::LevelFilter;

use poolserver::{
    Config, Framing, Mode,
    config::{
        DEFAULT_BACKLOG, DEFAULT_BIND, DEFAULT_BUSY_REPLY, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONVERSATION,
        DEFAULT_MAX_MESSAGES, DEFAULT_MAX_REQUEST, DEFAULT_QUEUE, DEFAULT_READ_TIMEOUT, DEFAULT_REPLY,
        DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_WRITE_TIMEOUT, MAX_BACKLOG, MAX_CONNECTIONS_LIMIT, MAX_DURATION,
        MAX_MESSAGES_LIMIT, MAX_QUEUE, MAX_REQUEST_LIMIT, MAX_WORKERS,
    },
};

use crate::values::{
    AccessLog, DEFAULT_ACCESS_LOG, DEFAULT_LOG_LEVEL, DEFAULT_METRICS, MetricsAddr, ProxyFrom,
    parse_access_log, parse_backlog, parse_bind, parse_count, parse_duration, parse_log_level, parse_metrics,
    parse_positive_duration, parse_proxy_from,
};

/// A help line that ends in its default, as clap writes one.
fn with_default(help: &str, default: impl Display) -> String {
    format!("{help} [default: {default}]")
}

/// A duration as `--help` and the config file write it: 5s, 1m.
fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The longest timeout, as the library's message says it: 24h.
fn longest() -> String {
    format!("{}h", MAX_DURATION.as_secs() / 3600)
}

#[derive(Debug, Parser)]
#[command(name = "poolserver", version, about = "A thread-pool TCP server that serves many clients at once")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve clients: answer one message per connection (or every message, with --keep-alive).
    Serve(ServeArgs),
    /// Send a message and print the reply: the tutorial's client (or a conversation, with --keep-alive).
    Send(SendArgs),
    /// Load a server with many clients at once; report throughput, latency and errors.
    Stress(StressArgs),
    /// Show a running server's numbers, read from its --metrics port: rates, busy workers, queue, latency.
    Stats(StatsArgs),
    /// Write the man page or a shell completion script to stdout (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// Options of `poolserver stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The server's metrics address, as given to `serve --metrics`
    #[arg(short, long, value_name = "ADDR", default_value = DEFAULT_METRICS, value_parser = parse_bind)]
    pub metrics: SocketAddr,

    /// Time between the two scrapes that the rates are computed from (and between screens with --watch)
    #[arg(short, long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Show a fresh screen every --interval until interrupted
    #[arg(short, long)]
    pub watch: bool,

    /// Bounds the connect and each read and write of a scrape
    #[arg(short, long, value_name = "DUR", default_value = "2s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
}

/// What `poolserver generate` writes.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

#[derive(Debug, Subcommand)]
pub enum Generated {
    /// The man pages, in roff, into DIR: poolserver.1 and poolserver-SUBCOMMAND.1 for each subcommand.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// A completion script for SHELL.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// Options of `poolserver send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server address, HOST:PORT
    #[arg(short, long, value_name = "ADDR", default_value_t = DEFAULT_BIND, value_parser = parse_bind)]
    pub addr: SocketAddr,

    /// Bounds the connect and each read and write; the whole exchange gets twice this
    #[arg(short, long, value_name = "DUR", default_value = "5s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Hold a conversation with a --keep-alive server: with MESSAGE `-`, one message per line of standard
    /// input, each reply printed as it arrives; then close
    #[arg(short, long)]
    pub keep_alive: bool,

    /// Draw message edges as a server with the same --framing does: each message (with MESSAGE `-`, each
    /// line of standard input) is sent with its edge, and each reply is printed on a line of its own;
    /// a conversation whether or not --keep-alive is given
    #[arg(long, value_name = "FRAMING")]
    pub framing: Option<FramingArg>,

    /// The message to send; `-` reads it from standard input
    #[arg(value_name = "MESSAGE", default_value = "hello")]
    pub message: String,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How `send` and `stress` speak TLS.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Speak TLS to a server started with --tls-cert and --tls-key
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the certificate authorities in this PEM file [default: the system's,
    /// /etc/ssl/certs/ca-certificates.crt]
    #[arg(long, value_name = "FILE", requires = "tls", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,

    /// With --tls: take any certificate for the server's (encrypted, but not knowing with whom)
    #[arg(long, requires = "tls")]
    pub insecure: bool,

    /// With --tls: the name the certificate must carry, sent as SNI [default: the address's IP]
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

/// Options of `poolserver stress`.
#[derive(Debug, Args)]
pub struct StressArgs {
    /// Server address, HOST:PORT
    #[arg(short, long, value_name = "ADDR", default_value_t = DEFAULT_BIND, value_parser = parse_bind)]
    pub addr: SocketAddr,

    /// Client threads, each looping connect, send, receive, close
    #[arg(short, long, value_name = "C", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,

    /// Stop after N connections in total
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub requests: Option<u64>,

    /// Stop after this long (at most 1h) [default: 5s]
    #[arg(short, long, value_name = "DUR", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// What each client sends
    #[arg(short, long, value_name = "M", default_value = "hello")]
    pub message: String,

    /// The reply every client must get
    #[arg(short, long, value_name = "TEXT", default_value = DEFAULT_REPLY)]
    pub expect: String,

    /// A reply equal to this is counted as busy rather than wrong
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_BUSY_REPLY)]
    pub busy_reply: String,

    /// Messages per connection: above 1, each client holds a conversation (the server needs --keep-alive),
    /// sending one message and reading its reply N times before it closes and reconnects
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub messages: u64,

    /// Send each message with its edge, as a server with the same --framing expects, and read each reply
    /// to its edge
    #[arg(long, value_name = "FRAMING", default_value = "raw")]
    pub framing: FramingArg,

    /// With --framing line or length and --messages N: keep up to K messages in flight on each
    /// connection, sending the next as each reply comes (1: lockstep)
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub pipeline: u64,

    /// Instead of looping clients: hold K conversations open for the whole run, each sending one message
    /// every --interval (spread over the --clients threads; the server needs --keep-alive)
    #[arg(long, value_name = "K", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub held: u64,

    /// With --held: how often each held conversation sends a message
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Also hold K connections open that send nothing, and report how many the server closed
    #[arg(long, value_name = "K", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub idle: u64,

    /// Bounds each connect, read and write
    #[arg(short, long, value_name = "DUR", default_value = "5s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Options of `poolserver serve`. Precedence: flag > environment variable > config file > default.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Check the configuration (flags, environment and file) and print it as TOML, then exit: 0 if it is
    /// valid, 2 if not. Binds nothing and opens no log file
    #[arg(short = 't', long)]
    pub check: bool,

    /// TOML config file (every key is optional; see config/poolserver.toml)
    #[arg(short, long, env = "POOLSERVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(short, long, env = "POOLSERVER_BIND", value_name = "ADDR", value_parser = parse_bind,
          help = with_default("Address to listen on, HOST:PORT; port 0 picks a free port", DEFAULT_BIND))]
    pub bind: Option<SocketAddr>,

    #[arg(short, long, env = "POOLSERVER_WORKERS", value_name = "N", value_parser = parse_count,
          help = with_default(&format!("Worker threads, 1 to {MAX_WORKERS}"), "number of CPUs"))]
    pub workers: Option<usize>,

    #[arg(long, env = "POOLSERVER_QUEUE", value_name = "N", value_parser = parse_count,
          help = with_default(&format!("Connections with a message in hand that may wait for a free worker before \
                                        clients get the busy reply, 1 to {MAX_QUEUE}"), DEFAULT_QUEUE))]
    pub queue: Option<usize>,

    #[arg(long, env = "POOLSERVER_BACKLOG", value_name = "N", value_parser = parse_backlog,
          help = with_default(&format!("Listen backlog: connections the kernel holds before we accept them, 1 to \
                                        {MAX_BACKLOG} (the kernel caps it at net.core.somaxconn)"), DEFAULT_BACKLOG))]
    pub backlog: Option<u32>,

    #[arg(long, env = "POOLSERVER_MAX_CONNECTIONS", value_name = "N", value_parser = parse_count,
          help = with_default(&format!("Most connections open at once (queued, on a worker or waiting), 1 to \
                                        {MAX_CONNECTIONS_LIMIT}; at the cap, new clients wait in the listen backlog \
                                        until one closes"), "the fd limit less a reserve for the server's own files"))]
    pub max_connections: Option<usize>,

    #[arg(long, env = "POOLSERVER_MAX_PER_CLIENT", value_name = "N", value_parser = parse_count,
          help = with_default(&format!("Most connections open at once from one client address (with \
                                        --proxy-protocol, the address the header names), 1 to \
                                        {MAX_CONNECTIONS_LIMIT}; past it, a connection gets the busy reply"), "no limit"))]
    pub max_per_client: Option<usize>,

    #[arg(long, env = "POOLSERVER_MODE", value_name = "MODE",
          help = with_default("ack: answer every message with --reply; echo: send the message back", Mode::default()))]
    pub mode: Option<ModeArg>,

    #[arg(long, env = "POOLSERVER_REPLY", value_name = "TEXT",
          help = with_default("Reply in mode ack, sent as UTF-8 without a newline; not empty", DEFAULT_REPLY))]
    pub reply: Option<String>,

    #[arg(long, env = "POOLSERVER_BUSY_REPLY", value_name = "TEXT",
          help = with_default("Reply when every worker is busy and the queue is full; not empty", DEFAULT_BUSY_REPLY))]
    pub busy_reply: Option<String>,

    #[arg(long, env = "POOLSERVER_MAX_REQUEST", value_name = "BYTES", value_parser = parse_count,
          help = with_default(&format!("Longest message, 1 to {MAX_REQUEST_LIMIT}: with raw framing the most bytes \
                                        one read takes; with line or length, the most bytes of one message \
                                        without its edge (a longer one ends the conversation)"),
                              DEFAULT_MAX_REQUEST))]
    pub max_request: Option<usize>,

    #[arg(long, env = "POOLSERVER_FRAMING", value_name = "FRAMING",
          help = with_default("Where a message ends. raw: one read is one message; line: at a newline (a \\r \
                               before it dropped too), and each reply is followed by one; length: each message \
                               and each reply comes after its length, 4 bytes big-endian. A reload applies it to \
                               new connections", Framing::default()))]
    pub framing: Option<FramingArg>,

    #[arg(long, env = "POOLSERVER_READ_TIMEOUT", value_name = "DUR", value_parser = parse_duration,
          help = with_default(&format!("How long a client may take to send its first message, counted from when \
                                        it connected; at most {}", longest()), duration(DEFAULT_READ_TIMEOUT)))]
    pub read_timeout: Option<Duration>,

    #[arg(long, env = "POOLSERVER_WRITE_TIMEOUT", value_name = "DUR", value_parser = parse_duration,
          help = with_default(&format!("How long writing one whole reply may take; a reply cut short ends in a \
                                        reset; at most {}", longest()), duration(DEFAULT_WRITE_TIMEOUT)))]
    pub write_timeout: Option<Duration>,

    #[arg(long, env = "POOLSERVER_SHUTDOWN_TIMEOUT", value_name = "DUR", value_parser = parse_duration,
          help = with_default(&format!("How long a shutdown may wait for open connections before abandoning \
                                        them; at most {}", longest()), duration(DEFAULT_SHUTDOWN_TIMEOUT)))]
    pub shutdown_timeout: Option<Duration>,

    #[arg(long, env = "POOLSERVER_LOG_LEVEL", value_name = "LEVEL", value_parser = parse_log_level,
          help = with_default("The server log's level: off, error, warn, info, debug or trace (the access log \
                               has --access-log)", DEFAULT_LOG_LEVEL.as_str().to_lowercase()))]
    pub log_level: Option<LevelFilter>,

    #[arg(long, env = "POOLSERVER_KEEP_ALIVE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new(),
          help = with_default("Keep each connection open and answer every message until the client hangs up",
                              Config::default().keep_alive))]
    pub keep_alive: Option<bool>,

    #[arg(long, env = "POOLSERVER_IDLE_TIMEOUT", value_name = "DUR", value_parser = parse_duration,
          help = with_default(&format!("With --keep-alive: how long a conversation may be silent after a reply \
                                        before it is closed; at most {}", longest()), duration(DEFAULT_IDLE_TIMEOUT)))]
    pub idle_timeout: Option<Duration>,

    #[arg(long, env = "POOLSERVER_MAX_MESSAGES", value_name = "N", value_parser = parse_count,
          help = with_default(&format!("With --keep-alive: the most messages one conversation is answered, 1 to \
                                        {MAX_MESSAGES_LIMIT}; the last reply is followed by a close"),
                              DEFAULT_MAX_MESSAGES))]
    pub max_messages: Option<usize>,

    #[arg(long, env = "POOLSERVER_MAX_CONVERSATION", value_name = "DUR", value_parser = parse_duration,
          help = with_default(&format!("With --keep-alive: how long one conversation may last; the first reply \
                                        after it is followed by a close; at most {}", longest()),
                              duration(DEFAULT_MAX_CONVERSATION)))]
    pub max_conversation: Option<Duration>,

    #[arg(long, env = "POOLSERVER_LOG_EACH_MESSAGE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new(),
          help = with_default("With --keep-alive: an access line for every message, besides the conversation's \
                               own line at its end", Config::default().log_each_message))]
    pub log_each_message: Option<bool>,

    /// Also append the server log to this file (reopened on SIGUSR1)
    #[arg(long, env = "POOLSERVER_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    #[arg(long, env = "POOLSERVER_ACCESS_LOG", value_name = "DEST", value_parser = parse_access_log,
          help = with_default("The access log, one line per connection (and per message with --log-each-message): stderr, \
                               off, or a file to append to (reopened on SIGUSR1)", DEFAULT_ACCESS_LOG))]
    pub access_log: Option<AccessLog>,

    #[arg(long, env = "POOLSERVER_REUSE_PORT", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new(),
          help = with_default("Set SO_REUSEPORT so several poolserver processes can serve one port",
                              Config::default().reuse_port))]
    pub reuse_port: Option<bool>,

    #[arg(long, env = "POOLSERVER_PROXY_PROTOCOL", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new(),
          help = with_default("Expect a PROXY protocol header (v1 or v2) before each request, as HAProxy's \
                               send-proxy sends it", Config::default().proxy_protocol))]
    pub proxy_protocol: Option<bool>,

    #[arg(long, env = "POOLSERVER_PROXY_FROM", value_name = "CIDR[,CIDR...]", value_parser = parse_proxy_from,
          help = with_default("With --proxy-protocol: the load balancers whose PROXY headers are believed, as \
                               address ranges (10.0.0.0/8, 192.0.2.1, 2001:db8::/32); a connection from any other \
                               peer is refused and counted as an error",
                              "every peer's header is believed, with a warning at start"))]
    pub proxy_from: Option<ProxyFrom>,

    #[arg(long, env = "POOLSERVER_METRICS", value_name = "ADDR", value_parser = parse_metrics,
          help = with_default("Serve Prometheus metrics at http://ADDR/metrics, or off", "off"))]
    pub metrics: Option<MetricsAddr>,

    #[arg(long, env = "POOLSERVER_TLS_CERT", value_name = "FILE",
          help = with_default("Serve over TLS with this certificate chain (PEM, the server's first); needs \
                               --tls-key. Reread on SIGHUP", "off: plain TCP"))]
    pub tls_cert: Option<PathBuf>,

    #[arg(long, env = "POOLSERVER_TLS_KEY", value_name = "FILE",
          help = with_default("With --tls-cert: its private key (PEM: PKCS#8, PKCS#1 or SEC1). Reread on SIGHUP",
                              "off: plain TCP"))]
    pub tls_key: Option<PathBuf>,
}

/// Where messages end, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FramingArg {
    /// One read is one message (the tutorial's recv).
    Raw,
    /// A message ends at a newline.
    Line,
    /// Each message follows its length, 4 bytes big-endian.
    Length,
}

impl From<FramingArg> for Framing {
    fn from(framing: FramingArg) -> Framing {
        match framing {
            FramingArg::Raw => Framing::Raw,
            FramingArg::Line => Framing::Line,
            FramingArg::Length => Framing::Length,
        }
    }
}

/// The built-in protocols, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Reply with the configured text, whatever the message.
    Ack,
    /// Reply with the message's bytes.
    Echo,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::Ack => Mode::Ack,
            ModeArg::Echo => Mode::Echo,
        }
    }
}
