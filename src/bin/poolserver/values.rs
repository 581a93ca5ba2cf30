//! Text to values: what a flag, an environment variable or a config-file string means, shared by the
//! command line (`cli`) and the config file (`settings`) so that both read a value the same way.
//!
//! These only parse. Whether a value can make a working server (a count of at least 1, a timeout of at most
//! a day) is `Config::validate`'s to say, in the library, once; a number too large for its type is kept as
//! the type's largest value so that `validate` refuses it with the field's bound.

use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use log::LevelFilter;
use poolserver::{Cidr, Framing, Mode, config::MAX_DURATION};

use crate::errors::{quote, shorten};

/// Where `stats` looks for the metrics by default, and the address the documentation suggests for `serve
/// --metrics`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9180";

/// The server log's level when nothing sets it.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;
/// Where the access log goes when nothing sets it.
pub const DEFAULT_ACCESS_LOG: AccessLog = AccessLog::Stderr;

/// The `metrics` setting: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// The `proxy_from` setting: the peers whose PROXY headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFrom(pub Vec<Cidr>);

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stderr,
    Off,
    File(PathBuf),
}

/// As the setting is written; a file named like a keyword is written `./off`, so that it reads back a file.
impl fmt::Display for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLog::Stderr => f.write_str("stderr"),
            AccessLog::Off => f.write_str("off"),
            AccessLog::File(path) => {
                let path = path.to_string_lossy();
                match path.trim() {
                    keyword @ ("stderr" | "off") => write!(f, "./{keyword}"),
                    _ => f.write_str(&path),
                }
            }
        }
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
            addrs.next().ok_or_else(|| format!("{} resolves to no address; {hint}", quote(text)))
        }
        Err(e) => Err(format!("cannot use {} ({e}); {hint}", quote(text))),
    }
}

/// `off`, or the `HOST:PORT` to serve the metrics on.
pub fn parse_metrics(text: &str) -> Result<MetricsAddr, String> {
    match text.trim() {
        "off" => Ok(MetricsAddr(None)),
        _ => parse_bind(text).map(|addr| MetricsAddr(Some(addr))),
    }
}

/// A whole number, at least 0; one too large for `usize` is `usize::MAX`.
pub fn parse_count(text: &str) -> Result<usize, String> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a whole number", quote(text)));
    }
    // Only digits: the one way to fail is to be too large.
    Ok(digits.parse().unwrap_or(usize::MAX))
}

/// The listen backlog: a whole number; one too large for `u32` is `u32::MAX`.
pub fn parse_backlog(text: &str) -> Result<u32, String> {
    parse_count(text).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A duration in humantime's notation: `250ms`, `5s`, `1m`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{} is not a duration ({}); write it like 250ms, 5s or 1m",
            quote(text),
            shorten(&e.to_string())
        )
    })
}

/// A duration for the clients' own flags (`--timeout`, `--interval`): longer than zero, at most a day.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{} must be longer than zero", quote(text))),
        d if d > MAX_DURATION => {
            Err(format!("{} must be at most {}h", quote(text), MAX_DURATION.as_secs() / 3600))
        }
        d => Ok(d),
    }
}

/// Address ranges separated by commas: `10.0.0.0/8, 192.0.2.1, 2001:db8::/32`. An empty list cannot be
/// written (an empty item is not a range); `Config::validate` refuses one that comes another way.
pub fn parse_proxy_from(text: &str) -> Result<ProxyFrom, String> {
    Cidr::parse_list(text).map(ProxyFrom).map_err(|e| shorten(&e.to_string()))
}

/// `raw`, `line` or `length`.
pub fn parse_framing(text: &str) -> Result<Framing, String> {
    match text.trim() {
        "raw" => Ok(Framing::Raw),
        "line" => Ok(Framing::Line),
        "length" => Ok(Framing::Length),
        _ => Err(format!("{} is not a framing; use raw, line or length", quote(text))),
    }
}

/// `ack` or `echo`.
pub fn parse_mode(text: &str) -> Result<Mode, String> {
    match text.trim() {
        "ack" => Ok(Mode::Ack),
        "echo" => Ok(Mode::Echo),
        _ => Err(format!("{} is not a mode; use ack or echo", quote(text))),
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
        format!("{} is not a log level; use off, error, warn, info, debug or trace", quote(text))
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
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO), "zero is Config::validate's to refuse");
        assert!(parse_duration("5").unwrap_err().contains("like 250ms"));
        assert!(parse_positive_duration("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_positive_duration("300000000000y").unwrap_err().contains("at most 24h"));
    }

    #[test]
    fn counts_are_whole_numbers_and_too_large_is_the_largest() {
        assert_eq!(parse_count("4"), Ok(4));
        assert_eq!(parse_count(" 0 "), Ok(0), "zero is Config::validate's to refuse");
        assert!(parse_count("-1").unwrap_err().contains("not a whole number"));
        assert!(parse_count("").unwrap_err().contains("not a whole number"));
        assert_eq!(parse_count("99999999999999999999999999"), Ok(usize::MAX));
        assert_eq!(parse_backlog("5000000000"), Ok(u32::MAX));
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
        assert_eq!(AccessLog::File(PathBuf::from("off")).to_string(), "./off");
        assert_eq!(AccessLog::File(PathBuf::from("/var/log/a.log")).to_string(), "/var/log/a.log");
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
    fn proxy_from_is_a_list_of_ranges() {
        assert_eq!(parse_proxy_from(" 10.0.0.0/8,::1").map(|r| r.0.len()), Ok(2));
        assert!(parse_proxy_from("10.0.0.1/8").unwrap_err().contains("did you mean 10.0.0.0/8?"));
        assert!(parse_proxy_from("").unwrap_err().contains("is not an IP address"));
        assert!(parse_proxy_from(&"x".repeat(1 << 20)).unwrap_err().len() < 1000, "one short line");
    }

    #[test]
    fn log_levels_are_named() {
        assert_eq!(parse_log_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_log_level("loud").unwrap_err().contains("use off, error"));
    }
}
