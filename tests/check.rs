//! `poolserver serve --check` (`-t`): the configuration a start would use, resolved from flags, environment
//! and file and validated, printed as TOML; exit 0 or 2; nothing bound.

mod support;

use std::{net::TcpListener, process::Output};

use support::{WAIT, accepted_keys, command, output, rejected, write_config};

fn check(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut full = vec!["serve", "--check"];
    full.extend_from_slice(args);
    output(&mut command(&full, env), WAIT)
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

/// The value of `key = value` in the printed configuration.
fn value<'a>(toml: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    toml.lines().find_map(|line| line.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key} in:\n{toml}"))
}

#[test]
fn every_key_is_printed_with_the_value_from_the_strongest_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "workers = 3\nreply = \"from file\"\nread_timeout = \"1500ms\"\nqueue = 9\naccess_log = \"off\"\n",
    );
    let env =
        [("POOLSERVER_REPLY", "from env"), ("POOLSERVER_QUEUE", "17"), ("POOLSERVER_METRICS", "127.0.0.1:9")];
    let toml = stdout(&check(&["-c", file.to_str().unwrap(), "--queue", "33", "--log-level", "warn"], &env));
    assert!(toml.starts_with("# poolserver: the configuration a start would use"), "{toml}");
    for key in accepted_keys() {
        let named =
            toml.lines().any(|l| l.starts_with(&format!("{key} = ")) || l == format!("# {key} is not set"));
        assert!(named, "{key} missing from:\n{toml}");
    }
    assert_eq!(value(&toml, "workers"), "3");
    assert_eq!(value(&toml, "reply"), "\"from env\"");
    assert_eq!(value(&toml, "queue"), "33");
    assert_eq!(value(&toml, "read_timeout"), "\"1s 500ms\"");
    assert_eq!(value(&toml, "log_level"), "\"warn\"");
    assert_eq!(value(&toml, "access_log"), "\"off\"");
    assert_eq!(value(&toml, "metrics"), "\"127.0.0.1:9\"");
    assert_eq!(value(&toml, "busy_reply"), "\"服务器繁忙\"");
    assert!(toml.contains("\n# log_file is not set\n"), "{toml}");
}

#[test]
fn the_printed_configuration_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("POOLSERVER_REPLY", "quote \" backslash \\ tab \t 信息"),
        ("POOLSERVER_KEEP_ALIVE", "yes"),
        ("POOLSERVER_ACCESS_LOG", "off"),
        ("POOLSERVER_LOG_FILE", "/tmp/poolserver test.log"),
        ("POOLSERVER_IDLE_TIMEOUT", "1m 30s"),
        ("POOLSERVER_MODE", "echo"),
    ];
    let first = stdout(&check(&[], &env));
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &first).unwrap();
    let again = stdout(&check(&["--config", file.to_str().unwrap()], &[]));
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&first));
}

#[test]
fn a_check_binds_nothing_even_where_a_start_would_fail_to() {
    // Both addresses are taken: a start would fail with EADDRINUSE on either.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let (bind, metrics_addr) =
        (taken.local_addr().unwrap().to_string(), metrics.local_addr().unwrap().to_string());
    let out = output(&mut command(&["serve", "-t", "--bind", &bind, "--metrics", &metrics_addr], &[]), WAIT);
    let toml = stdout(&out);
    assert_eq!(value(&toml, "bind"), format!("\"{bind}\""));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // ...and the same settings without --check do try to bind.
    let mut start = command(&["serve", "--bind", &bind], &[]);
    let started = output(&mut start, WAIT);
    assert_eq!(started.status.code(), Some(1), "{}", String::from_utf8_lossy(&started.stderr));
}

#[test]
fn an_invalid_configuration_is_one_line_and_exit_2_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "workers = 0\n");
    let line =
        rejected(&["serve", "--check", "--config", file.to_str().unwrap()], &[], &["workers", "at least 1"]);
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    rejected(&["serve", "-t"], &[("POOLSERVER_METRICS", "everywhere")], &["POOLSERVER_METRICS", "HOST:PORT"]);
    let out = check(&["--read-timeout", "0s"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}
