//! The resolved configuration: defaults, config file, environment and flags merged, then validated.
//!
//! Precedence is flag > environment variable > config file > built-in default. clap already folds the
//! environment into the flag values (see `cli`), so this module merges those with the file and the defaults.
//! Every check happens here, before anything binds, and every failure is one line that names the flag, the
//! key or the file.

use std::{
    fs,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use log::LevelFilter;
use serde::Deserialize;

use crate::{cli::ServeArgs, error::Error};

/// The tutorial's reply: "message received".
pub const DEFAULT_REPLY: &str = "信息已收到";
/// Sent when every worker is busy and the queue is full: "server busy".
pub const DEFAULT_BUSY_REPLY: &str = "服务器繁忙";
/// The tutorial's `recv(1024)`.
pub const DEFAULT_MAX_REQUEST: usize = 1024;
/// Large enough that bursts of a few hundred clients wait in line instead of being turned away.
pub const DEFAULT_QUEUE: usize = 1024;
/// Well above the 128 that std and most tutorials use: at 128 a burst of clients overflows the kernel's
/// accept queue and each dropped SYN costs its client a one-second retransmit.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// The largest request buffer we allow; every worker owns one of this size.
pub const MAX_REQUEST_LIMIT: usize = 16 << 20;

/// What the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reply with the configured text, whatever the request.
    #[default]
    Ack,
    /// Reply with the request's bytes.
    Echo,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Ack => "ack",
            Mode::Echo => "echo",
        })
    }
}

/// Everything `poolserver serve` needs, with every value checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub workers: usize,
    pub queue: usize,
    pub backlog: u32,
    pub mode: Mode,
    pub reply: String,
    pub busy_reply: String,
    pub max_request: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub log_level: LevelFilter,
    pub log_file: Option<PathBuf>,
    /// SO_REUSEPORT on the listener, so several processes can serve one port.
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer.
    pub proxy_protocol: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            workers: num_cpus::get(),
            queue: DEFAULT_QUEUE,
            backlog: DEFAULT_BACKLOG,
            mode: Mode::Ack,
            reply: DEFAULT_REPLY.to_owned(),
            busy_reply: DEFAULT_BUSY_REPLY.to_owned(),
            max_request: DEFAULT_MAX_REQUEST,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            log_level: LevelFilter::Info,
            log_file: None,
            reuse_port: false,
            proxy_protocol: false,
        }
    }
}

impl Config {
    /// Merges flags (with the environment already folded in by clap), the config file they name, and the
    /// defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let key = |name: &str, message: String| match &args.config {
            Some(path) => Error::Config(format!("config file {}: {name}: {message}", path.display())),
            None => Error::Config(format!("{name}: {message}")),
        };
        let checked = |name: &str, value: Option<usize>, check: fn(usize) -> Result<usize, String>| {
            value.map(check).transpose().map_err(|m| key(name, m))
        };
        let parsed = |name: &str, value: &Option<String>, parse: fn(&str) -> Result<Duration, String>| {
            value.as_deref().map(parse).transpose().map_err(|m| key(name, m))
        };

        let defaults = Config::default();
        let file_bind = file.bind.as_deref().map(parse_bind).transpose().map_err(|m| key("bind", m))?;
        let file_backlog = file.backlog.map(check_backlog).transpose().map_err(|m| key("backlog", m))?;
        let file_log_level =
            file.log_level.as_deref().map(parse_log_level).transpose().map_err(|m| key("log_level", m))?;
        Ok(Config {
            bind: args.bind.or(file_bind).unwrap_or(defaults.bind),
            workers: args
                .workers
                .or(checked("workers", file.workers, check_workers)?)
                .unwrap_or(defaults.workers),
            queue: args.queue.or(checked("queue", file.queue, check_queue)?).unwrap_or(defaults.queue),
            backlog: args.backlog.or(file_backlog).unwrap_or(defaults.backlog),
            mode: args.mode.or(file.mode).unwrap_or(defaults.mode),
            reply: args.reply.clone().or(file.reply).unwrap_or(defaults.reply),
            busy_reply: args.busy_reply.clone().or(file.busy_reply).unwrap_or(defaults.busy_reply),
            max_request: args
                .max_request
                .or(checked("max_request", file.max_request, check_max_request)?)
                .unwrap_or(defaults.max_request),
            read_timeout: args
                .read_timeout
                .or(parsed("read_timeout", &file.read_timeout, parse_duration)?)
                .unwrap_or(defaults.read_timeout),
            write_timeout: args
                .write_timeout
                .or(parsed("write_timeout", &file.write_timeout, parse_duration)?)
                .unwrap_or(defaults.write_timeout),
            shutdown_timeout: args
                .shutdown_timeout
                .or(parsed("shutdown_timeout", &file.shutdown_timeout, parse_duration)?)
                .unwrap_or(defaults.shutdown_timeout),
            log_level: args.log_level.or(file_log_level).unwrap_or(defaults.log_level),
            log_file: args.log_file.clone().or(file.log_file),
            reuse_port: args.reuse_port.or(file.reuse_port).unwrap_or(defaults.reuse_port),
            proxy_protocol: args.proxy_protocol.or(file.proxy_protocol).unwrap_or(defaults.proxy_protocol),
        })
    }
}

/// The config file as written: every key optional, unknown keys rejected by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    workers: Option<usize>,
    queue: Option<usize>,
    backlog: Option<u32>,
    mode: Option<Mode>,
    reply: Option<String>,
    busy_reply: Option<String>,
    max_request: Option<usize>,
    read_timeout: Option<String>,
    write_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
    reuse_port: Option<bool>,
    proxy_protocol: Option<bool>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, Error> {
        let text = fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!(", line {line} (`{source}`)")
                }
                None => String::new(),
            };
            Error::Config(format!("config file {}{place}: {}", path.display(), e.message().trim()))
        })
    }
}

/// `HOST:PORT`: an IP address with a port, or a name that resolves to one (the first address wins).
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let hint = "expected HOST:PORT, like 127.0.0.1:8000 or [::1]:8000";
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("'{text}' resolves to no address; {hint}")),
        Err(e) => Err(format!("cannot use '{text}' ({e}); {hint}")),
    }
}

/// The most worker threads; far past what a machine runs well, short of what it cannot start.
pub const MAX_WORKERS: usize = 1024;
/// The most queue slots; the queue is allocated whole at startup (64 bytes a slot).
pub const MAX_QUEUE: usize = 1 << 16;
/// The longest timeout; beyond it a deadline stops meaning anything.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A count of worker threads: a whole number from 1 to `MAX_WORKERS`.
pub fn parse_workers(text: &str) -> Result<usize, String> {
    check_workers(parse_number(text)?)
}

fn check_workers(n: usize) -> Result<usize, String> {
    check_range(n, MAX_WORKERS)
}

/// A count of queue slots: a whole number from 1 to `MAX_QUEUE`.
pub fn parse_queue(text: &str) -> Result<usize, String> {
    check_queue(parse_number(text)?)
}

fn check_queue(n: usize) -> Result<usize, String> {
    check_range(n, MAX_QUEUE)
}

fn check_range(n: usize, max: usize) -> Result<usize, String> {
    match n {
        0 => Err("must be at least 1".to_owned()),
        n if n > max => Err(format!("must be at most {max}")),
        n => Ok(n),
    }
}

pub fn parse_backlog(text: &str) -> Result<u32, String> {
    check_backlog(parse_number(text)?)
}

fn check_backlog(n: u32) -> Result<u32, String> {
    if n == 0 || n > i32::MAX as u32 { Err(format!("must be between 1 and {}", i32::MAX)) } else { Ok(n) }
}

pub fn parse_max_request(text: &str) -> Result<usize, String> {
    check_max_request(parse_number(text)?)
}

fn check_max_request(n: usize) -> Result<usize, String> {
    if n == 0 || n > MAX_REQUEST_LIMIT {
        Err(format!("must be between 1 and {MAX_REQUEST_LIMIT} bytes"))
    } else {
        Ok(n)
    }
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("'{text}' is not a whole number"))
}

/// A positive duration in humantime's notation: `250ms`, `5s`, `1m`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(d) if d > MAX_DURATION => Err(format!("'{text}' is longer than the most allowed, 24h")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("'{text}' is not a duration ({e}); write it like 250ms, 5s or 1m")),
    }
}

pub fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a log level; use off, error, warn, info, debug or trace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_humans_write_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_duration("5").unwrap_err().contains("like 250ms"));
        assert!(parse_duration("300000000000y").unwrap_err().contains("most allowed, 24h"));
    }

    #[test]
    fn counts_must_be_positive_whole_numbers() {
        assert_eq!(parse_workers("4"), Ok(4));
        assert_eq!(parse_workers("0").unwrap_err(), "must be at least 1");
        assert!(parse_workers("-1").unwrap_err().contains("not a whole number"));
        assert_eq!(parse_workers("100000000000000").unwrap_err(), "must be at most 1024");
        assert_eq!(parse_queue("65537").unwrap_err(), "must be at most 65536");
        assert!(parse_max_request("99999999999").unwrap_err().contains("between 1 and"));
    }

    #[test]
    fn bind_takes_ipv4_ipv6_and_names() {
        assert_eq!(parse_bind("0.0.0.0:0"), Ok(SocketAddr::from(([0, 0, 0, 0], 0))));
        assert!(parse_bind("[::1]:8000").unwrap().is_ipv6());
        assert!(parse_bind("localhost:8000").is_ok());
        assert!(parse_bind("nonsense").unwrap_err().contains("expected HOST:PORT"));
    }

    #[test]
    fn log_levels_are_named() {
        assert_eq!(parse_log_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_log_level("loud").unwrap_err().contains("use off, error"));
    }
}
