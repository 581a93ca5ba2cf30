//! The settings of `poolserver serve`: flags, environment, config file and defaults merged into the
//! library's `Config` and the logs' settings, with every value checked.
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
use poolserver::{
    Config, Error, Mode,
    config::{MAX_BACKLOG, MAX_QUEUE, MAX_REQUEST_LIMIT, MAX_WORKERS, check_count, check_duration},
};
use serde::Deserialize;

use crate::cli::ServeArgs;

/// Everything `poolserver serve` runs with.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub log: LogSettings,
}

/// The two logs: the server log (level and optional file; always stderr too) and the access log.
#[derive(Debug)]
pub struct LogSettings {
    pub level: LevelFilter,
    pub file: Option<PathBuf>,
    pub access: AccessLog,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stderr,
    Off,
    File(PathBuf),
}

impl Settings {
    /// Merges flags (with the environment already folded in by clap), the config file they name, and the
    /// defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, Error> {
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

        let file_bind = file.bind.as_deref().map(parse_bind).transpose().map_err(|m| key("bind", m))?;
        let file_backlog = file.backlog.map(check_backlog).transpose().map_err(|m| key("backlog", m))?;
        let file_mode = file.mode.as_deref().map(parse_mode).transpose().map_err(|m| key("mode", m))?;
        let file_log_level =
            file.log_level.as_deref().map(parse_log_level).transpose().map_err(|m| key("log_level", m))?;
        let file_access_log =
            file.access_log.as_deref().map(parse_access_log).transpose().map_err(|m| key("access_log", m))?;

        let mut config = Config::default();
        let c = &mut config;
        c.bind = args.bind.or(file_bind).unwrap_or(c.bind);
        c.workers = args.workers.or(checked("workers", file.workers, check_workers)?).unwrap_or(c.workers);
        c.queue = args.queue.or(checked("queue", file.queue, check_queue)?).unwrap_or(c.queue);
        c.backlog = args.backlog.or(file_backlog).unwrap_or(c.backlog);
        c.mode = args.mode.map(Mode::from).or(file_mode).unwrap_or(c.mode);
        if let Some(reply) = args.reply.clone().or(file.reply) {
            c.reply = check_reply(reply).map_err(|m| key("reply", m))?;
        }
        if let Some(busy_reply) = args.busy_reply.clone().or(file.busy_reply) {
            c.busy_reply = check_reply(busy_reply).map_err(|m| key("busy_reply", m))?;
        }
        c.max_request = args
            .max_request
            .or(checked("max_request", file.max_request, check_max_request)?)
            .unwrap_or(c.max_request);
        c.read_timeout = args
            .read_timeout
            .or(parsed("read_timeout", &file.read_timeout, parse_duration)?)
            .unwrap_or(c.read_timeout);
        c.write_timeout = args
            .write_timeout
            .or(parsed("write_timeout", &file.write_timeout, parse_duration)?)
            .unwrap_or(c.write_timeout);
        c.shutdown_timeout = args
            .shutdown_timeout
            .or(parsed("shutdown_timeout", &file.shutdown_timeout, parse_duration)?)
            .unwrap_or(c.shutdown_timeout);
        c.keep_alive = args.keep_alive.or(file.keep_alive).unwrap_or(c.keep_alive);
        c.idle_timeout = args
            .idle_timeout
            .or(parsed("idle_timeout", &file.idle_timeout, parse_duration)?)
            .unwrap_or(c.idle_timeout);
        c.reuse_port = args.reuse_port.or(file.reuse_port).unwrap_or(c.reuse_port);
        c.proxy_protocol = args.proxy_protocol.or(file.proxy_protocol).unwrap_or(c.proxy_protocol);
        config.validate()?;
        let log = LogSettings {
            level: args.log_level.or(file_log_level).unwrap_or(LevelFilter::Info),
            file: args.log_file.clone().or(file.log_file),
            access: args.access_log.clone().or(file_access_log).unwrap_or(AccessLog::Stderr),
        };
        Ok(Settings { config, log })
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
    mode: Option<String>,
    reply: Option<String>,
    busy_reply: Option<String>,
    max_request: Option<usize>,
    read_timeout: Option<String>,
    write_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    keep_alive: Option<bool>,
    idle_timeout: Option<String>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
    access_log: Option<String>,
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

/// A count of worker threads: a whole number from 1 to `MAX_WORKERS`.
pub fn parse_workers(text: &str) -> Result<usize, String> {
    check_workers(parse_number(text)?)
}

fn check_workers(n: usize) -> Result<usize, String> {
    check_count(n, MAX_WORKERS)
}

/// A count of queue slots: a whole number from 1 to `MAX_QUEUE`.
pub fn parse_queue(text: &str) -> Result<usize, String> {
    check_queue(parse_number(text)?)
}

fn check_queue(n: usize) -> Result<usize, String> {
    check_count(n, MAX_QUEUE)
}

pub fn parse_backlog(text: &str) -> Result<u32, String> {
    check_backlog(parse_number(text)?)
}

fn check_backlog(n: u32) -> Result<u32, String> {
    if n == 0 || n > MAX_BACKLOG { Err(format!("must be between 1 and {MAX_BACKLOG}")) } else { Ok(n) }
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
        Ok(d) => check_duration(d).map_err(|why| format!("'{text}' {why}")),
        Err(e) => Err(format!("'{text}' is not a duration ({e}); write it like 250ms, 5s or 1m")),
    }
}

/// `ack` or `echo`.
pub fn parse_mode(text: &str) -> Result<Mode, String> {
    match text.trim() {
        "ack" => Ok(Mode::Ack),
        "echo" => Ok(Mode::Echo),
        _ => Err(format!("'{text}' is not a mode; use ack or echo")),
    }
}

/// A reply must have at least one byte: an empty one cannot be told from a close.
fn check_reply(text: String) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty: a client could not tell an empty reply from a close".to_owned())
    } else {
        Ok(text)
    }
}

pub fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a log level; use off, error, warn, info, debug or trace"))
}

/// `stderr`, `off`, or the path of a file to append to (`./off` for a file named off).
pub fn parse_access_log(text: &str) -> Result<AccessLog, String> {
    match text.trim() {
        "" => Err("must not be empty; use stderr, off or the path of a file".to_owned()),
        "stderr" => Ok(AccessLog::Stderr),
        "off" => Ok(AccessLog::Off),
        _ => Ok(AccessLog::File(PathBuf::from(text))),
    }
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
        assert!(parse_duration("300000000000y").unwrap_err().contains("at most 24h"));
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
    fn the_access_log_is_stderr_off_or_a_file() {
        assert_eq!(parse_access_log("stderr"), Ok(AccessLog::Stderr));
        assert_eq!(parse_access_log(" off "), Ok(AccessLog::Off));
        assert_eq!(parse_access_log("./off"), Ok(AccessLog::File(PathBuf::from("./off"))));
        assert!(parse_access_log(" ").unwrap_err().contains("stderr, off or the path"));
    }

    #[test]
    fn log_levels_are_named() {
        assert_eq!(parse_log_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_log_level("loud").unwrap_err().contains("use off, error"));
    }
}
