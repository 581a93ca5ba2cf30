//! The settings of `poolserver serve`: flags, environment, config file and defaults merged into the
//! library's `Config` and the logging setup.
//!
//! Precedence is flag > environment variable > config file > built-in default. clap already folds the
//! environment into the flag values (see `cli`), so this module merges those with the file and the defaults.
//! Values are parsed here (`values`) and checked by `Config::validate` alone; when it refuses a field, the
//! error is one line that names where the value came from: the flag, the variable, or the file and line.

use std::{
    collections::HashMap,
    env,
    fs::{self, OpenOptions},
    io::Read,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::CommandFactory;
use log::LevelFilter;
use poolserver::{Config, Error, Framing, Mode};
use toml::de::{DeTable, DeValue};

use crate::{
    cli::{Cli, ServeArgs},
    errors::{self, CliError},
    tls_files::TlsFiles,
    values::{
        AccessLog, DEFAULT_ACCESS_LOG, DEFAULT_LOG_LEVEL, MetricsAddr, ProxyFrom, parse_access_log,
        parse_bind, parse_duration, parse_framing, parse_log_level, parse_metrics, parse_mode,
        parse_proxy_from,
    },
};

/// Everything `poolserver serve` runs with.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub log: LogSettings,
    /// Where the Prometheus metrics are served; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    /// The certificate and key, when the server speaks TLS.
    pub tls: Option<TlsFiles>,
}

/// The two logs: the server log (level and optional file; always stderr too) and the access log.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LevelFilter,
    pub file: Option<PathBuf>,
    pub access: AccessLog,
}

/// Where a value of `Config` came from, for the message when `Config::validate` refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The flag, or the environment variable clap read for it.
    Flag,
    /// The config file, at this line.
    File(usize),
}

/// The merge of one value: the flag's if there is one, else the file's; records which.
struct Merge<'a> {
    file: &'a ConfigFile,
    origins: HashMap<&'static str, Origin>,
}

impl Merge<'_> {
    fn pick<T>(&mut self, field: &'static str, flag: Option<T>, file: Option<T>) -> Option<T> {
        if flag.is_some() {
            self.origins.insert(field, Origin::Flag);
            return flag;
        }
        if file.is_some() {
            self.origins.insert(field, Origin::File(self.file.lines.get(field).copied().unwrap_or(0)));
        }
        file
    }
}

impl Settings {
    /// Merges flags (with the environment already folded in by clap), the config file they name, and the
    /// defaults, and has the library check the result.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, CliError> {
        let file = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let f = &file.values;
        let mut m = Merge { file: &file, origins: HashMap::new() };
        let mut config = Config::default();
        let c = &mut config;
        c.bind = m.pick("bind", args.bind, f.bind).unwrap_or(c.bind);
        c.workers = m.pick("workers", args.workers, f.workers).unwrap_or(c.workers);
        c.queue = m.pick("queue", args.queue, f.queue).unwrap_or(c.queue);
        c.backlog = m.pick("backlog", args.backlog, f.backlog).unwrap_or(c.backlog);
        c.max_connections =
            m.pick("max_connections", args.max_connections, f.max_connections).or(c.max_connections);
        c.max_per_client =
            m.pick("max_per_client", args.max_per_client, f.max_per_client).or(c.max_per_client);
        c.mode = m.pick("mode", args.mode.map(Mode::from), f.mode).unwrap_or(c.mode);
        if let Some(reply) = m.pick("reply", args.reply.clone(), f.reply.clone()) {
            c.reply = reply;
        }
        if let Some(busy_reply) = m.pick("busy_reply", args.busy_reply.clone(), f.busy_reply.clone()) {
            c.busy_reply = busy_reply;
        }
        c.max_request = m.pick("max_request", args.max_request, f.max_request).unwrap_or(c.max_request);
        c.framing = m.pick("framing", args.framing.map(Framing::from), f.framing).unwrap_or(c.framing);
        c.read_timeout = m.pick("read_timeout", args.read_timeout, f.read_timeout).unwrap_or(c.read_timeout);
        c.write_timeout =
            m.pick("write_timeout", args.write_timeout, f.write_timeout).unwrap_or(c.write_timeout);
        c.shutdown_timeout = m
            .pick("shutdown_timeout", args.shutdown_timeout, f.shutdown_timeout)
            .unwrap_or(c.shutdown_timeout);
        c.keep_alive = m.pick("keep_alive", args.keep_alive, f.keep_alive).unwrap_or(c.keep_alive);
        c.idle_timeout = m.pick("idle_timeout", args.idle_timeout, f.idle_timeout).unwrap_or(c.idle_timeout);
        c.max_messages = m.pick("max_messages", args.max_messages, f.max_messages).unwrap_or(c.max_messages);
        c.max_conversation = m
            .pick("max_conversation", args.max_conversation, f.max_conversation)
            .unwrap_or(c.max_conversation);
        c.log_each_message = m
            .pick("log_each_message", args.log_each_message, f.log_each_message)
            .unwrap_or(c.log_each_message);
        c.reuse_port = m.pick("reuse_port", args.reuse_port, f.reuse_port).unwrap_or(c.reuse_port);
        c.proxy_protocol =
            m.pick("proxy_protocol", args.proxy_protocol, f.proxy_protocol).unwrap_or(c.proxy_protocol);
        c.proxy_from = m
            .pick("proxy_from", args.proxy_from.clone().map(|r| r.0), f.proxy_from.clone().map(|r| r.0))
            .or(c.proxy_from.take());
        let tls_cert = m.pick("tls_cert", args.tls_cert.clone(), f.tls_cert.clone());
        let tls_key = m.pick("tls_key", args.tls_key.clone(), f.tls_key.clone());
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles::load(&cert, &key)?),
            (None, None) => None,
            (Some(_), None) => return Err(CliError::Usage(one_of_pair("tls_cert", "tls_key"))),
            (None, Some(_)) => return Err(CliError::Usage(one_of_pair("tls_key", "tls_cert"))),
        };
        config.tls = tls.as_ref().map(|files| files.config.clone());
        if let Err(e) = config.validate() {
            return Err(refused(e, m.origins, args.config.as_deref()));
        }
        let log = LogSettings {
            level: args.log_level.or(f.log_level).unwrap_or(DEFAULT_LOG_LEVEL),
            file: args.log_file.clone().or(f.log_file.clone()),
            access: args.access_log.clone().or(f.access_log.clone()).unwrap_or(DEFAULT_ACCESS_LOG),
        };
        let metrics = args.metrics.or(f.metrics).and_then(|m| m.0);
        Ok(Settings { config, log, metrics, tls })
    }
}

/// TLS needs both files.
fn one_of_pair(given: &str, missing: &str) -> String {
    format!(
        "{given} (--{}) is set but {missing} (--{}) is not: TLS needs both",
        given.replace('_', "-"),
        missing.replace('_', "-")
    )
}

/// `Config::validate`'s refusal as the user reads it: the flag (and the variable behind it), or the file
/// and line, that gave the field its value.
fn refused(e: Error, origins: HashMap<&'static str, Origin>, file: Option<&Path>) -> CliError {
    let Error::Config { field, reason } = e else { return CliError::Usage(e.to_string()) };
    let long = field.replace('_', "-");
    CliError::Usage(match (origins.get(field), file) {
        (Some(Origin::Flag), _) => {
            let command = Cli::command();
            let serve = command.find_subcommand("serve").unwrap_or(&command);
            let value = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .and_then(|a| a.get_value_names()?.first().cloned());
            let flag = match value {
                Some(value) => format!("--{long} <{value}>"),
                None => format!("--{long}"),
            };
            let args: Vec<_> = env::args_os().skip(1).collect();
            let from = errors::environment_behind(serve, &long, &args)
                .map(|var| format!(" (from environment variable {var})"))
                .unwrap_or_default();
            format!("invalid value for '{flag}': {reason}{from}; see 'poolserver serve --help'")
        }
        (Some(Origin::File(line)), Some(path)) => {
            format!("config file {}, line {line}: {field}: {reason}", errors::path(path))
        }
        _ => format!(
            "the default {field} cannot work here: {reason}; set --{long} or {field} in the config file"
        ),
    })
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
    "framing",
    "read_timeout",
    "write_timeout",
    "shutdown_timeout",
    "keep_alive",
    "idle_timeout",
    "max_messages",
    "max_conversation",
    "log_each_message",
    "log_level",
    "log_file",
    "access_log",
    "reuse_port",
    "proxy_protocol",
    "proxy_from",
    "metrics",
    "tls_cert",
    "tls_key",
];

/// A config file as read: its values, and the line of each key, for the messages about them.
#[derive(Debug, Default)]
struct ConfigFile {
    values: FileConfig,
    lines: HashMap<&'static str, usize>,
}

/// The config file's values, each parsed as it was read: every key optional.
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
    framing: Option<Framing>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    keep_alive: Option<bool>,
    idle_timeout: Option<Duration>,
    max_messages: Option<usize>,
    max_conversation: Option<Duration>,
    log_each_message: Option<bool>,
    log_level: Option<LevelFilter>,
    log_file: Option<PathBuf>,
    access_log: Option<AccessLog>,
    reuse_port: Option<bool>,
    proxy_protocol: Option<bool>,
    proxy_from: Option<ProxyFrom>,
    metrics: Option<MetricsAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

impl ConfigFile {
    /// Reads and parses the file; every error names the file, and the line and key when there is one.
    fn load(path: &Path) -> Result<ConfigFile, CliError> {
        let text = read_config(path)?;
        ConfigFile::parse(&text)
            .map_err(|why| CliError::Usage(format!("config file {}, {why}", errors::path(path))))
    }

    /// `Err` reads "line N: ...".
    fn parse(text: &str) -> Result<ConfigFile, String> {
        let document = DeTable::parse(text).map_err(|e| {
            let start = e.span().map_or(0, |span| span.start);
            let line = text[..start.min(text.len())].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} ({}): {}", errors::quote(source), errors::shorten(e.message().trim()))
        })?;
        let mut file = ConfigFile::default();
        for (key, value) in document.get_ref() {
            let line = text[..key.span().start.min(text.len())].matches('\n').count() + 1;
            let name: &str = key.get_ref();
            let Some(&known) = KEYS.iter().find(|&&k| k == name) else {
                return Err(format!(
                    "line {line}: unknown key {}; the keys are {}",
                    errors::quote(name),
                    KEYS.join(", ")
                ));
            };
            file.values.set(known, value.get_ref()).map_err(|why| format!("line {line}: {name}: {why}"))?;
            file.lines.insert(known, line);
        }
        Ok(file)
    }
}

impl FileConfig {
    /// Parses one value and keeps it; `Err` says what the key wants.
    fn set(&mut self, key: &str, value: &DeValue<'_>) -> Result<(), String> {
        match key {
            "bind" => self.bind = Some(parse_bind(text(value, "\"127.0.0.1:8000\"")?)?),
            "workers" => self.workers = Some(count(value, "4")?),
            "queue" => self.queue = Some(count(value, "1024")?),
            "backlog" => self.backlog = Some(u32::try_from(count(value, "4096")?).unwrap_or(u32::MAX)),
            "max_connections" => self.max_connections = Some(count(value, "10000")?),
            "max_per_client" => self.max_per_client = Some(count(value, "100")?),
            "mode" => self.mode = Some(parse_mode(text(value, "\"ack\" or \"echo\"")?)?),
            "reply" => self.reply = Some(text(value, "\"got it\"")?.to_owned()),
            "busy_reply" => self.busy_reply = Some(text(value, "\"busy\"")?.to_owned()),
            "max_request" => self.max_request = Some(count(value, "1024")?),
            "framing" => self.framing = Some(parse_framing(text(value, "\"raw\", \"line\" or \"length\"")?)?),
            "read_timeout" => self.read_timeout = Some(duration(value)?),
            "write_timeout" => self.write_timeout = Some(duration(value)?),
            "shutdown_timeout" => self.shutdown_timeout = Some(duration(value)?),
            "keep_alive" => self.keep_alive = Some(switch(value)?),
            "idle_timeout" => self.idle_timeout = Some(duration(value)?),
            "max_messages" => self.max_messages = Some(count(value, "1000")?),
            "max_conversation" => self.max_conversation = Some(duration(value)?),
            "log_each_message" => self.log_each_message = Some(switch(value)?),
            "log_level" => self.log_level = Some(parse_log_level(text(value, "\"info\"")?)?),
            "log_file" => self.log_file = Some(text(value, "\"/var/log/poolserver.log\"")?.into()),
            "access_log" => {
                self.access_log = Some(parse_access_log(text(value, "\"stderr\", \"off\" or a path")?)?)
            }
            "reuse_port" => self.reuse_port = Some(switch(value)?),
            "proxy_protocol" => self.proxy_protocol = Some(switch(value)?),
            "proxy_from" => self.proxy_from = Some(ranges(value)?),
            "metrics" => self.metrics = Some(parse_metrics(text(value, "\"127.0.0.1:9180\" or \"off\"")?)?),
            "tls_cert" => self.tls_cert = Some(text(value, "\"/etc/poolserver/cert.pem\"")?.into()),
            "tls_key" => self.tls_key = Some(text(value, "\"/etc/poolserver/key.pem\"")?.into()),
            _ => return Err(format!("not a key; the keys are {}", KEYS.join(", "))),
        }
        Ok(())
    }
}

/// The file's bytes, refusing what is not a regular file of at most `MAX_CONFIG_BYTES` before reading it.
fn read_config(path: &Path) -> Result<String, CliError> {
    let fail =
        |why: String| CliError::Usage(format!("cannot read config file {}: {why}", errors::path(path)));
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

/// A whole number that is at least 0; one too large for `usize` comes back as `usize::MAX`, and one below 0
/// as 0, for `Config::validate` to refuse with the field's bounds.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_key_says_what_it_wants() {
        let wrong = |text: &str| ConfigFile::parse(text).unwrap_err();
        assert_eq!(
            wrong("workers = \"4\""),
            "line 1: workers: expected a number, like 4 (found a string: write the number without quotes)"
        );
        for key in [
            "workers",
            "queue",
            "backlog",
            "max_connections",
            "max_per_client",
            "max_request",
            "max_messages",
        ] {
            assert!(
                wrong(&format!("{key} = []")).contains(&format!("{key}: expected a number, like")),
                "{key}"
            );
        }
        for key in ["bind", "mode", "reply", "busy_reply", "log_level", "log_file", "metrics"] {
            let message = wrong(&format!("{key} = 1"));
            assert!(message.contains(&format!("{key}: expected a string in quotes, like \"")), "{message}");
        }
        for key in ["read_timeout", "write_timeout", "shutdown_timeout", "idle_timeout", "max_conversation"] {
            let message = wrong(&format!("{key} = 5"));
            assert!(
                message.contains(&format!("{key}: expected a duration in quotes, like \"5s\"")),
                "{message}"
            );
        }
        for key in ["keep_alive", "log_each_message", "reuse_port", "proxy_protocol"] {
            let message = wrong(&format!("\n{key} = \"yes\""));
            assert_eq!(message, format!("line 2: {key}: expected true or false (found a string)"));
        }
        assert!(wrong("bogus = 1").starts_with("line 1: unknown key 'bogus'; the keys are bind, workers,"));
    }

    #[test]
    fn numbers_out_of_range_are_kept_for_validate_to_refuse() {
        let file = ConfigFile::parse("workers = -3\nqueue = 99999999999999999999999\nbacklog = 5000000000\n")
            .unwrap();
        assert_eq!(
            (file.values.workers, file.values.queue, file.values.backlog),
            (Some(0), Some(usize::MAX), Some(u32::MAX))
        );
        assert_eq!(file.lines.get("queue"), Some(&2));
    }

    #[test]
    fn a_refused_field_is_named_where_its_value_came_from() {
        let e = || Error::Config { field: "max_request", reason: "must be at least 1".to_owned() };
        let file = Path::new("/etc/poolserver.toml");
        let from_file = refused(e(), HashMap::from([("max_request", Origin::File(7))]), Some(file));
        assert_eq!(
            from_file.to_string(),
            "config file /etc/poolserver.toml, line 7: max_request: must be at least 1"
        );
        let from_flag = refused(e(), HashMap::from([("max_request", Origin::Flag)]), Some(file)).to_string();
        assert!(
            from_flag.starts_with("invalid value for '--max-request <BYTES>': must be at least 1"),
            "{from_flag}"
        );
        let default = refused(e(), HashMap::new(), None).to_string();
        assert!(default.starts_with("the default max_request cannot work here"), "{default}");
    }

    #[test]
    fn every_file_key_is_read() {
        let file = ConfigFile::parse(
            "bind = \"127.0.0.1:9\"\nworkers = 3\nqueue = 7\nbacklog = 9\nmax_connections = 11\nmax_per_client = 2\n\
             mode = \"echo\"\nreply = \"r\"\n\
             busy_reply = \"b\"\nmax_request = 5\nframing = \"line\"\nread_timeout = \"1s\"\nwrite_timeout = \"2s\"\n\
             shutdown_timeout = \"3s\"\nkeep_alive = true\nidle_timeout = \"4s\"\nmax_messages = 6\nmax_conversation = \"8s\"\nlog_each_message = true\nlog_level = \"warn\"\n\
             log_file = \"x.log\"\naccess_log = \"off\"\nreuse_port = true\nproxy_protocol = false\n\
             proxy_from = [\"10.0.0.0/8\", \"::1\"]\nmetrics = \"127.0.0.1:9180\"\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(file.lines.len(), KEYS.len());
        assert_eq!(
            format!("{:?}", file.values),
            "FileConfig { bind: Some(127.0.0.1:9), workers: Some(3), queue: Some(7), backlog: Some(9), \
             max_connections: Some(11), max_per_client: Some(2), \
             mode: Some(Echo), reply: Some(\"r\"), busy_reply: Some(\"b\"), max_request: Some(5), \
             framing: Some(Line), read_timeout: Some(1s), write_timeout: Some(2s), shutdown_timeout: Some(3s), keep_alive: Some(true), \
             idle_timeout: Some(4s), max_messages: Some(6), max_conversation: Some(8s), log_each_message: Some(true), log_level: Some(Warn), log_file: Some(\"x.log\"), access_log: Some(Off), \
             reuse_port: Some(true), \
             proxy_protocol: Some(false), proxy_from: Some(ProxyFrom([10.0.0.0/8, ::1/128])), metrics: Some(MetricsAddr(Some(127.0.0.1:9180))), \
             tls_cert: Some(\"c.pem\"), tls_key: Some(\"k.pem\") }"
        );
    }

    #[test]
    fn proxy_from_is_a_list_of_ranges_in_a_string_or_an_array() {
        let from = |text: &str| ConfigFile::parse(text).map(|file| format!("{:?}", file.values.proxy_from));
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

    mod properties {
        use poolserver::config::{MAX_DURATION, MAX_REQUEST_LIMIT, MAX_WORKERS};
        use proptest::prelude::*;

        use super::*;
        use crate::values::{parse_backlog, parse_count};

        /// Whether `Config::validate` takes `change` of the defaults; a refusal must name `field`.
        fn valid(field: &str, change: impl FnOnce(&mut Config)) -> bool {
            let mut config = Config::default();
            change(&mut config);
            match config.validate() {
                Ok(()) => true,
                Err(Error::Config { field: refused, reason }) => {
                    assert_eq!(refused, field, "{reason}");
                    assert!(!reason.is_empty());
                    false
                }
                Err(e) => panic!("{e}"),
            }
        }

        proptest! {
            /// Whatever a flag, a variable or a file holds, the parsers answer with a value or a message.
            #[test]
            fn random_values_never_panic(text in any::<String>(), like in "[0-9 .a-z+-]{0,24}") {
                for text in [&text, &like] {
                    if let Err(why) = parse_duration(text) {
                        prop_assert!(!why.is_empty());
                    }
                    let _ = (parse_count(text), parse_backlog(text), parse_proxy_from(text));
                }
            }

            #[test]
            fn random_files_never_panic(text in any::<String>(), toml in "([a-z_]{1,16} = [\"0-9a-z ,.\\[\\]]{0,16}\n){0,6}") {
                for text in [&text, &toml] {
                    if let Err(why) = ConfigFile::parse(text) {
                        prop_assert!(why.starts_with("line "), "{}", why);
                    }
                }
            }

            /// A duration reads back from how `--check` writes it, and a count from its digits; the
            /// library takes them exactly when they are in range, and otherwise names the field.
            #[test]
            fn durations_and_counts_read_back(nanos in 0..=MAX_DURATION.as_nanos() as u64 * 2, n in any::<u64>()) {
                let d = Duration::from_nanos(nanos);
                let written = humantime::format_duration(d).to_string();
                prop_assert_eq!(parse_duration(&written), Ok(d));
                prop_assert_eq!(valid("read_timeout", |c| c.read_timeout = d), !d.is_zero() && d <= MAX_DURATION);
                let n = n >> (n % 64);
                let read = parse_count(&n.to_string());
                prop_assert_eq!(read.clone(), Ok(usize::try_from(n).unwrap_or(usize::MAX)));
                let read = read.unwrap();
                prop_assert_eq!(valid("workers", |c| c.workers = read), (1..=MAX_WORKERS).contains(&read));
                prop_assert_eq!(parse_count(&format!(" {n} ")), Ok(read));
                prop_assert_eq!(valid("max_request", |c| c.max_request = read), (1..=MAX_REQUEST_LIMIT).contains(&read));
            }

            /// The same values read from a file, whatever order the keys come in.
            #[test]
            fn a_file_of_valid_values_reads_back(
                workers in 1..=MAX_WORKERS, queue in 1..=poolserver::config::MAX_QUEUE,
                max_request in 1..=MAX_REQUEST_LIMIT,
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
                let file = ConfigFile::parse(&lines.join("\n")).map_err(TestCaseError::fail)?.values;
                prop_assert_eq!((file.workers, file.queue, file.max_request), (Some(workers), Some(queue), Some(max_request)));
                prop_assert_eq!((file.read_timeout, file.idle_timeout), (Some(read_timeout), Some(idle_timeout)));
            }
        }
    }
}
