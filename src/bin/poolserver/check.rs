//! `poolserver serve --check` (`-t`): the configuration a start would use, resolved from flags, environment
//! and file and validated, printed as TOML, as `nginx -t` and `haproxy -c` let an operator try a change
//! before a restart. Nothing is bound and no log file is opened. With TLS the certificate and key are read
//! and checked as a start would, and the output says when the certificate expires.
//!
//! The output is itself a valid config file that names every key (a key that is not set, such as
//! `log_file`, is a comment), so the printed configuration can be kept and read back.

use std::time::Duration;

use log::LevelFilter;
use toml::Value;

use crate::settings::{KEYS, Settings};

/// The effective configuration as a config file: every key of `settings::KEYS`, in that order.
pub fn to_toml(settings: &Settings, sources: &str) -> String {
    let mut out = format!("# poolserver: the configuration a start would use (from {sources})\n");
    for key in KEYS {
        match value(settings, key) {
            Some(value) => out.push_str(&format!("{key} = {value}\n")),
            None => out.push_str(&format!("# {key} is not set\n")),
        }
        if let ("tls_key", Some(tls)) = (*key, &settings.tls) {
            out.push_str(&format!("# the TLS certificate and key match; the certificate {}\n", tls.expiry()));
        }
    }
    out
}

/// The TOML value of `key`, or `None` for a key that is not set.
fn value(settings: &Settings, key: &str) -> Option<Value> {
    let c = &settings.config;
    let log = &settings.log;
    let count = |n: usize| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let value = match key {
        "bind" => Value::String(c.bind.to_string()),
        "workers" => count(c.workers),
        "queue" => count(c.queue),
        "backlog" => Value::Integer(i64::from(c.backlog)),
        "mode" => Value::String(c.mode.to_string()),
        "reply" => Value::String(c.reply.clone()),
        "busy_reply" => Value::String(c.busy_reply.clone()),
        "max_request" => count(c.max_request),
        "framing" => Value::String(c.framing.to_string()),
        "read_timeout" => duration(c.read_timeout),
        "write_timeout" => duration(c.write_timeout),
        "shutdown_timeout" => duration(c.shutdown_timeout),
        "keep_alive" => Value::Boolean(c.keep_alive),
        "idle_timeout" => duration(c.idle_timeout),
        "max_messages" => count(c.max_messages),
        "max_conversation" => duration(c.max_conversation),
        "log_each_message" => Value::Boolean(c.log_each_message),
        "log_level" => Value::String(level(log.level).to_owned()),
        "log_file" => Value::String(log.file.as_ref()?.to_string_lossy().into_owned()),
        "access_log" => Value::String(log.access.to_string()),
        "reuse_port" => Value::Boolean(c.reuse_port),
        "proxy_protocol" => Value::Boolean(c.proxy_protocol),
        "proxy_from" => Value::String(
            c.proxy_from.as_ref()?.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        ),
        "metrics" => Value::String(settings.metrics.map_or("off".to_owned(), |addr| addr.to_string())),
        "tls_cert" => Value::String(settings.tls.as_ref()?.cert.to_string_lossy().into_owned()),
        "tls_key" => Value::String(settings.tls.as_ref()?.key.to_string_lossy().into_owned()),
        // Every key in KEYS is above: `settings::tests` reads them all, and `tests/check.rs` sees each one.
        _ => return None,
    };
    Some(value)
}

/// A duration as the config file writes it: "5s", "250ms", "1m 30s".
fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn level(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::Off => "off",
        LevelFilter::Error => "error",
        LevelFilter::Warn => "warn",
        LevelFilter::Info => "info",
        LevelFilter::Debug => "debug",
        LevelFilter::Trace => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_they_are_read() {
        assert_eq!(duration(Duration::from_millis(1500)).to_string(), "\"1s 500ms\"");
        assert_eq!(duration(Duration::from_secs(90)).to_string(), "\"1m 30s\"");
    }
}
