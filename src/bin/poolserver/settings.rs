//! The settings of `poolserver serve`: flags, environment, config file and defaults merged into the
//! library's `Config` and the logging setup, with every value checked.
//!
//! Precedence is flag > environment variable > config file > built-in default. clap already folds the
//! environment into the flag values (see `cli`), so this module merges those with the file and the defaults.
//! Every check happens here, before anything binds, and every failure is one line that names the flag, the
//! key or the file.

use std::{
    fs::{self, OpenOptions},
    io::Read,
    net::{SocketAddr, ToSocketAddrs},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use log::LevelFilter;
use poolserver::{
    Cidr, Config, Error, Mode,
    config::{
        MAX_BACKLOG, MAX_CONNECTIONS_LIMIT, MAX_QUEUE, MAX_REQUEST_LIMIT, MAX_WORKERS, check_count,
        check_duration,
    },
};
use toml::de::{DeTable, DeValue};

use crate::{cli::ServeArgs, errors};

/// Everything `poolserver serve` runs with.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub log: LogSettings,
    /// Where the Prometheus metrics are served; `None`: not at all.
    pub metrics: Option<SocketAddr>,
}

/// Where `stats` looks for the metrics by default, and the address the documentation suggests for `serve
/// --metrics`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9180";

/// The `metrics` setting: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// The `proxy_from` setting: the peers whose PROXY headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFrom(pub Vec<Cidr>);

/// The two logs: the server log (level and optional file; always stderr too) and the access log.
#[derive(Debug, Clone)]
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
        let mut config = Config::default();
        let c = &mut config;
        c.bind = args.bind.or(file.bind).unwrap_or(c.bind);
        c.workers = args.workers.or(file.workers).unwrap_or(c.workers);
        c.queue = args.queue.or(file.queue).unwrap_or(c.queue);
        c.backlog = args.backlog.or(file.backlog).unwrap_or(c.backlog);
        c.max_connections = args.max_connections.or(file.max_connections).or(c.max_connections);
        c.max_per_client = args.max_per_client.or(file.max_per_client).or(c.max_per_client);
        c.mode = args.mode.map(Mode::from).or(file.mode).unwrap_or(c.mode);
        if let Some(reply) = args.reply.clone().or(file.reply) {
            c.reply = reply;
        }
        if let Some(busy_reply) = args.busy_reply.clone().or(file.busy_reply) {
            c.busy_reply = busy_reply;
        }
        c.max_request = args.max_request.or(file.max_request).unwrap_or(c.max_request);
        c.read_timeout = args.read_timeout.or(file.read_timeout).unwrap_or(c.read_timeout);
        c.write_timeout = args.write_timeout.or(file.write_timeout).unwrap_or(c.write_timeout);
        c.shutdown_timeout = args.shutdown_timeout.or(file.shutdown_timeout).unwrap_or(c.shutdown_timeout);
        c.keep_alive = args.keep_alive.or(file.keep_alive).unwrap_or(c.keep_alive);
        c.idle_timeout = args.idle_timeout.or(file.idle_timeout).unwrap_or(c.idle_timeout);
        c.reuse_port = args.reuse_port.or(file.reuse_port).unwrap_or(c.reuse_port);
        c.proxy_protocol = args.proxy_protocol.or(file.proxy_protocol).unwrap_or(c.proxy_protocol);
        c.proxy_from = args.proxy_from.clone().or(file.proxy_from).map(|ranges| ranges.0);
        config.validate()?;
        let log = LogSettings {
            level: args.log_level.or(file.log_level).unwrap_or(LevelFilter::Info),
            file: args.log_file.clone().or(file.log_file),
            access: args.access_log.clone().or(file.access_log).unwrap_or(AccessLog::Stderr),
        };
        let metrics = args.metrics.or(file.metrics).and_then(|m| m.0);
        Ok(Settings { config, log, metrics })
    }
}

/// The largest config file read: far above any real one, yet a reply of several MiB still fits.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The config file's keys, in the order the documentation lists them.
pub const KEYS: &[&str] = &[
    "bind",
    "workers",
    "queue",
    "backlog",
    "max_connections",
    "max_per_client",
    "mode",
    "reply",
    "busy_reply",
    "max_request",
    "read_timeout",
    "write_timeout",
    "shutdown_timeout",
    "keep_alive",
    "idle_timeout",
    "log_level",
    "log_file",
    "access_log",
    "reuse_port",
    "proxy_protocol",
    "proxy_from",
    "metrics",
];

/// The config file's values, each checked as it was read: every key optional.
#[derive(Debug, Default)]
struct FileConfig {
    bind: Option<SocketAddr>,
    workers: Option<usize>,
    queue: Option<usize>,
    backlog: Option<u32>,
    max_connections: Option<usize>,
    max_per_client: Option<usize>,
    mode: Option<Mode>,
    reply: Option<String>,
    busy_reply: Option<String>,
    max_request: Option<usize>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    keep_alive: Option<bool>,
    idle_timeout: Option<Duration>,
    log_level: Option<LevelFilter>,
    log_file: Option<PathBuf>,
    access_log: Option<AccessLog>,
    reuse_port: Option<bool>,
    proxy_protocol: Option<bool>,
    proxy_from: Option<ProxyFrom>,
    metrics: Option<MetricsAddr>,
}

impl FileConfig {
    /// Reads and checks the file; every error names the file, and the line and key when there is one.
    fn load(path: &Path) -> Result<FileConfig, Error> {
        let text = read_config(path)?;
        FileConfig::parse(&text)
            .map_err(|why| Error::Config(format!("config file {}, {why}", errors::path(path))))
    }

    /// `Err` reads "line N: ...".
    fn parse(text: &str) -> Result<FileConfig, String> {
        let document = DeTable::parse(text).map_err(|e| {
            let start = e.span().map_or(0, |span| span.start);
            let line = text[..start.min(text.len())].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} ({}): {}", errors::quote(source), errors::shorten(e.message().trim()))
        })?;
        let mut file = FileConfig::default();
        for (key, value) in document.get_ref() {
            let line = text[..key.span().start.min(text.len())].matches('\n').count() + 1;
            let name: &str = key.get_ref();
            if !KEYS.contains(&name) {
                return Err(format!(
                    "line {line}: unknown key {}; the keys are {}",
                    errors::quote(name),
                    KEYS.join(", ")
                ));
            }
            file.set(name, value.get_ref()).map_err(|why| format!("line {line}: {name}: {why}"))?;
        }
        Ok(file)
    }

    /// Checks one value and keeps it; `Err` says what the key wants.
    fn set(&mut self, key: &str, value: &DeValue<'_>) -> Result<(), String> {
        match key {
            "bind" => self.bind = Some(parse_bind(text(value, "\"127.0.0.1:8000\"")?)?),
            "workers" => self.workers = Some(check_workers(count(value, "4")?)?),
            "queue" => self.queue = Some(check_queue(count(value, "1024")?)?),
            "backlog" => {
                let n = u32::try_from(count(value, "1024")?).unwrap_or(u32::MAX);
                self.backlog = Some(check_backlog(n)?);
            }
            "max_connections" => self.max_connections = Some(check_connections(count(value, "10000")?)?),
            "max_per_client" => self.max_per_client = Some(check_connections(count(value, "100")?)?),
            "mode" => self.mode = Some(parse_mode(text(value, "\"ack\" or \"echo\"")?)?),
            "reply" => self.reply = Some(parse_reply(text(value, "\"got it\"")?)?),
            "busy_reply" => self.busy_reply = Some(parse_reply(text(value, "\"busy\"")?)?),
            "max_request" => self.max_request = Some(check_max_request(count(value, "1024")?)?),
            "read_timeout" => self.read_timeout = Some(duration(value)?),
            "write_timeout" => self.write_timeout = Some(duration(value)?),
            "shutdown_timeout" => self.shutdown_timeout = Some(duration(value)?),
            "keep_alive" => self.keep_alive = Some(switch(value)?),
            "idle_timeout" => self.idle_timeout = Some(duration(value)?),
            "log_level" => self.log_level = Some(parse_log_level(text(value, "\"info\"")?)?),
            "log_file" => self.log_file = Some(text(value, "\"/var/log/poolserver.log\"")?.into()),
            "access_log" => {
                self.access_log = Some(parse_access_log(text(value, "\"stderr\", \"off\" or a path")?)?)
            }
            "reuse_port" => self.reuse_port = Some(switch(value)?),
            "proxy_protocol" => self.proxy_protocol = Some(switch(value)?),
            "proxy_from" => self.proxy_from = Some(ranges(value)?),
            "metrics" => self.metrics = Some(parse_metrics(text(value, "\"127.0.0.1:9180\" or \"off\"")?)?),
            _ => return Err(format!("not a key; the keys are {}", KEYS.join(", "))),
        }
        Ok(())
    }
}

/// The file's bytes, refusing what is not a regular file of at most `MAX_CONFIG_BYTES` before reading it.
fn read_config(path: &Path) -> Result<String, Error> {
    let fail = |why: String| Error::Config(format!("cannot read config file {}: {why}", errors::path(path)));
    // Opened non-blocking: a FIFO with no writer would block `open` itself. The type check refuses it next.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(format!("it is {}, not a regular file", file_kind(&meta.file_type()))));
    }
    let too_big = |len: u64| fail(format!("it is {len} bytes; a config file may be at most 64 MiB"));
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    // Bounded again while reading: the file may grow after the check.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        fail(format!("line {line} is not UTF-8 text (byte {:#04x}); TOML files are UTF-8", e.as_bytes()[at]))
    })
}

/// What a file that is not a regular one is, for the message that refuses it.
fn file_kind(kind: &fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// What a value in the file is, for the message that says it is the wrong kind.
fn found(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "found a string",
        DeValue::Integer(_) => "found a whole number",
        DeValue::Float(_) => "found a fraction",
        DeValue::Boolean(_) => "found true or false",
        DeValue::Datetime(_) => "found a date or time",
        DeValue::Array(_) => "found an array",
        DeValue::Table(_) => "found a table",
    }
}

/// A string value; `like` is an example, in TOML.
fn text<'a>(value: &'a DeValue<'_>, like: &str) -> Result<&'a str, String> {
    match value {
        DeValue::String(s) => Ok(s),
        other => Err(format!("expected a string in quotes, like {like} ({})", found(other))),
    }
}

/// A whole number that is at least 0; one too large for `usize` comes back as `usize::MAX`, for the key's
/// own check to refuse with its bounds.
fn count(value: &DeValue<'_>, like: &str) -> Result<usize, String> {
    let wanted = format!("expected a number, like {like}");
    match value {
        DeValue::Integer(n) => match i128::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) if n < 0 => Ok(0),
            Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Err(_) => Ok(usize::MAX),
        },
        DeValue::String(s) if s.trim().parse::<u64>().is_ok() => {
            Err(format!("{wanted} (found a string: write the number without quotes)"))
        }
        other => Err(format!("{wanted} ({})", found(other))),
    }
}

fn duration(value: &DeValue<'_>) -> Result<Duration, String> {
    match value {
        DeValue::String(s) => parse_duration(s),
        other => Err(format!("expected a duration in quotes, like \"5s\" or \"250ms\" ({})", found(other))),
    }
}

/// Address ranges: one string with commas, or an array of strings.
fn ranges(value: &DeValue<'_>) -> Result<ProxyFrom, String> {
    let like =
        "expected address ranges, like \"10.0.0.0/8, 192.0.2.1\" or [\"10.0.0.0/8\", \"2001:db8::/32\"]";
    match value {
        DeValue::String(s) => parse_proxy_from(s),
        DeValue::Array(items) => {
            let mut all = Vec::new();
            for item in items {
                match item.get_ref() {
                    DeValue::String(s) => all.extend(parse_proxy_from(s)?.0),
                    other => return Err(format!("{like} ({} in the array)", found(other))),
                }
            }
            Ok(ProxyFrom(all))
        }
        other => Err(format!("{like} ({})", found(other))),
    }
}

fn switch(value: &DeValue<'_>) -> Result<bool, String> {
    match value {
        DeValue::Boolean(b) => Ok(*b),
        DeValue::String(s) if matches!(s.trim(), "true" | "false") => {
            Err("expected true or false (found a string: write it without quotes)".to_owned())
        }
        other => Err(format!("expected true or false ({})", found(other))),
    }
}

/// `HOST:PORT`: an IP address with a port, or a name that resolves to one (the first address wins).
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let hint = "expected HOST:PORT, like 127.0.0.1:8000 or [::1]:8000";
    match text.to_socket_addrs() {
        Ok(mut addrs) => {
            addrs.next().ok_or_else(|| format!("{} resolves to no address; {hint}", errors::quote(text)))
        }
        Err(e) => Err(format!("cannot use {} ({e}); {hint}", errors::quote(text))),
    }
}

/// `off`, or the `HOST:PORT` to serve the metrics on.
pub fn parse_metrics(text: &str) -> Result<MetricsAddr, String> {
    match text.trim() {
        "off" => Ok(MetricsAddr(None)),
        _ => parse_bind(text).map(|addr| MetricsAddr(Some(addr))),
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

/// A cap on connections (`max_connections`, `max_per_client`): a whole number from 1 to
/// `MAX_CONNECTIONS_LIMIT`.
pub fn parse_max_connections(text: &str) -> Result<usize, String> {
    check_connections(parse_number(text)?)
}

fn check_connections(n: usize) -> Result<usize, String> {
    check_count(n, MAX_CONNECTIONS_LIMIT)
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
    text.trim().parse().map_err(|_| format!("{} is not a whole number", errors::quote(text)))
}

/// A positive duration in humantime's notation: `250ms`, `5s`, `1m`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) => check_duration(d).map_err(|why| format!("{} {why}", errors::quote(text))),
        Err(e) => Err(format!(
            "{} is not a duration ({}); write it like 250ms, 5s or 1m",
            errors::quote(text),
            errors::shorten(&e.to_string())
        )),
    }
}

/// Address ranges separated by commas: `10.0.0.0/8, 192.0.2.1, 2001:db8::/32`.
pub fn parse_proxy_from(text: &str) -> Result<ProxyFrom, String> {
    Cidr::parse_list(text).map(ProxyFrom).map_err(|e| e.to_string())
}

/// `ack` or `echo`.
pub fn parse_mode(text: &str) -> Result<Mode, String> {
    match text.trim() {
        "ack" => Ok(Mode::Ack),
        "echo" => Ok(Mode::Echo),
        _ => Err(format!("{} is not a mode; use ack or echo", errors::quote(text))),
    }
}

/// A reply must have at least one byte: an empty one cannot be told from a close.
pub fn parse_reply(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty: a client could not tell an empty reply from a close".to_owned())
    } else {
        Ok(text.to_owned())
    }
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

pub fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    text.trim().parse().map_err(|_| {
        format!("{} is not a log level; use off, error, warn, info, debug or trace", errors::quote(text))
    })
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
        assert_eq!(parse_max_connections("0").unwrap_err(), "must be at least 1");
        assert_eq!(parse_max_connections("2000000000").unwrap_err(), "must be at most 1073741824");
    }

    #[test]
    fn bind_takes_ipv4_ipv6_and_names() {
        assert_eq!(parse_bind("0.0.0.0:0"), Ok(SocketAddr::from(([0, 0, 0, 0], 0))));
        assert!(parse_bind("[::1]:8000").unwrap().is_ipv6());
        assert!(parse_bind("localhost:8000").is_ok());
        assert!(parse_bind("nonsense").unwrap_err().contains("expected HOST:PORT"));
    }

    #[test]
    fn every_file_key_says_what_it_wants() {
        let wrong = |text: &str| FileConfig::parse(text).unwrap_err();
        assert_eq!(
            wrong("workers = \"4\""),
            "line 1: workers: expected a number, like 4 (found a string: write the number without quotes)"
        );
        for key in ["workers", "queue", "backlog", "max_connections", "max_per_client", "max_request"] {
            assert!(
                wrong(&format!("{key} = []")).contains(&format!("{key}: expected a number, like")),
                "{key}"
            );
        }
        for key in ["bind", "mode", "reply", "busy_reply", "log_level", "log_file", "metrics"] {
            let message = wrong(&format!("{key} = 1"));
            assert!(message.contains(&format!("{key}: expected a string in quotes, like \"")), "{message}");
        }
        for key in ["read_timeout", "write_timeout", "shutdown_timeout", "idle_timeout"] {
            let message = wrong(&format!("{key} = 5"));
            assert!(
                message.contains(&format!("{key}: expected a duration in quotes, like \"5s\"")),
                "{message}"
            );
        }
        for key in ["keep_alive", "reuse_port", "proxy_protocol"] {
            let message = wrong(&format!("\n{key} = \"yes\""));
            assert_eq!(message, format!("line 2: {key}: expected true or false (found a string)"));
        }
        assert_eq!(wrong("workers = -3"), "line 1: workers: must be at least 1");
        assert_eq!(wrong("queue = 99999999999999999999999"), "line 1: queue: must be at most 65536");
        assert!(wrong("bogus = 1").starts_with("line 1: unknown key 'bogus'; the keys are bind, workers,"));
    }

    #[test]
    fn every_file_key_is_read() {
        let file = FileConfig::parse(
            "bind = \"127.0.0.1:9\"\nworkers = 3\nqueue = 7\nbacklog = 9\nmax_connections = 11\nmax_per_client = 2\n\
             mode = \"echo\"\nreply = \"r\"\n\
             busy_reply = \"b\"\nmax_request = 5\nread_timeout = \"1s\"\nwrite_timeout = \"2s\"\n\
             shutdown_timeout = \"3s\"\nkeep_alive = true\nidle_timeout = \"4s\"\nlog_level = \"warn\"\n\
             log_file = \"x.log\"\naccess_log = \"off\"\nreuse_port = true\nproxy_protocol = false\n\
             proxy_from = [\"10.0.0.0/8\", \"::1\"]\nmetrics = \"127.0.0.1:9180\"\n",
        )
        .unwrap();
        assert_eq!(
            format!("{file:?}"),
            "FileConfig { bind: Some(127.0.0.1:9), workers: Some(3), queue: Some(7), backlog: Some(9), \
             max_connections: Some(11), max_per_client: Some(2), \
             mode: Some(Echo), reply: Some(\"r\"), busy_reply: Some(\"b\"), max_request: Some(5), \
             read_timeout: Some(1s), write_timeout: Some(2s), shutdown_timeout: Some(3s), keep_alive: Some(true), \
             idle_timeout: Some(4s), log_level: Some(Warn), log_file: Some(\"x.log\"), access_log: Some(Off), \
             reuse_port: Some(true), \
             proxy_protocol: Some(false), proxy_from: Some(ProxyFrom([10.0.0.0/8, ::1/128])), metrics: Some(MetricsAddr(Some(127.0.0.1:9180))) }"
        );
    }

    #[test]
    fn the_access_log_is_stderr_off_or_a_file() {
        assert_eq!(parse_access_log("stderr"), Ok(AccessLog::Stderr));
        assert_eq!(parse_access_log(" off "), Ok(AccessLog::Off));
        assert_eq!(parse_access_log("./off"), Ok(AccessLog::File(PathBuf::from("./off"))));
        assert!(parse_access_log(" ").unwrap_err().contains("stderr, off or the path"));
    }

    #[test]
    fn metrics_are_an_address_or_off() {
        assert_eq!(parse_metrics("off"), Ok(MetricsAddr(None)));
        assert_eq!(
            parse_metrics("127.0.0.1:9180"),
            Ok(MetricsAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9180)))))
        );
        assert!(parse_metrics("on").unwrap_err().contains("expected HOST:PORT"));
    }

    #[test]
    fn proxy_from_is_a_list_of_ranges_in_a_string_or_an_array() {
        let from = |text: &str| FileConfig::parse(text).map(|file| format!("{:?}", file.proxy_from));
        assert_eq!(
            from("proxy_from = \"10.0.0.0/8, 192.0.2.1\""),
            Ok("Some(ProxyFrom([10.0.0.0/8, 192.0.2.1/32]))".into())
        );
        assert!(from("proxy_from = [1]").unwrap_err().contains("found a whole number in the array"));
        assert!(
            from("proxy_from = true").unwrap_err().starts_with("line 1: proxy_from: expected address ranges")
        );
        assert!(from("proxy_from = \"10.0.0.1/8\"").unwrap_err().contains("did you mean 10.0.0.0/8?"));
    }

    #[test]
    fn log_levels_are_named() {
        assert_eq!(parse_log_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_log_level("loud").unwrap_err().contains("use off, error"));
    }

    mod properties {
        use poolserver::config::MAX_DURATION;
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a flag, a variable or a file holds, the parsers answer with a value or a message.
            #[test]
            fn random_values_never_panic(text in any::<String>(), like in "[0-9 .a-z+-]{0,24}") {
                for text in [&text, &like] {
                    if let Err(why) = parse_duration(text) {
                        prop_assert!(!why.is_empty());
                    }
                    let _ = (parse_workers(text), parse_queue(text), parse_backlog(text));
                    let _ = (parse_max_connections(text), parse_max_request(text), parse_proxy_from(text));
                }
            }

            #[test]
            fn random_files_never_panic(text in any::<String>(), toml in "([a-z_]{1,16} = [\"0-9a-z ,.\\[\\]]{0,16}\n){0,6}") {
                for text in [&text, &toml] {
                    if let Err(why) = FileConfig::parse(text) {
                        prop_assert!(why.starts_with("line "), "{}", why);
                    }
                }
            }

            /// A duration reads back from how `--check` writes it, and a count from its digits, whenever
            /// it is in range; out of range, the message says the bounds.
            #[test]
            fn durations_and_counts_read_back(nanos in 0..=MAX_DURATION.as_nanos() as u64 * 2, n in any::<u64>()) {
                let d = Duration::from_nanos(nanos);
                let written = humantime::format_duration(d).to_string();
                match parse_duration(&written) {
                    Ok(read) => prop_assert_eq!(read, d),
                    Err(why) => prop_assert!(d.is_zero() || d > MAX_DURATION, "{}: {}", written, why),
                }
                let n = n >> (n % 64);
                prop_assert_eq!(parse_workers(&n.to_string()).ok(), usize::try_from(n).ok().filter(|n| (1..=MAX_WORKERS).contains(n)));
                prop_assert_eq!(parse_max_request(&format!(" {n} ")).ok(), usize::try_from(n).ok().filter(|n| (1..=MAX_REQUEST_LIMIT).contains(n)));
            }

            /// The same values read from a file, whatever order the keys come in.
            #[test]
            fn a_file_of_valid_values_reads_back(
                workers in 1..=MAX_WORKERS, queue in 1..=MAX_QUEUE, max_request in 1..=MAX_REQUEST_LIMIT,
                read_ms in 1..=86_400_000_u64, idle_s in 1..=86_400_u64, reversed in any::<bool>()
            ) {
                let read_timeout = Duration::from_millis(read_ms);
                let idle_timeout = Duration::from_secs(idle_s);
                let mut lines = [
                    format!("workers = {workers}"),
                    format!("queue = {queue}"),
                    format!("max_request = {max_request}"),
                    format!("read_timeout = \"{}\"", humantime::format_duration(read_timeout)),
                    format!("idle_timeout = \"{}\"", humantime::format_duration(idle_timeout)),
                ];
                if reversed {
                    lines.reverse();
                }
                let file = FileConfig::parse(&lines.join("\n")).map_err(TestCaseError::fail)?;
                prop_assert_eq!((file.workers, file.queue, file.max_request), (Some(workers), Some(queue), Some(max_request)));
                prop_assert_eq!((file.read_timeout, file.idle_timeout), (Some(read_timeout), Some(idle_timeout)));
            }
        }
    }
}
