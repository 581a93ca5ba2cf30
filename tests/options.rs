//! Options reach the server from flags, environment variables and the config file, in that order of
//! precedence; every bad value stops the binary before it binds, with one line naming the culprit.

mod support;

use std::io::{Read, Write};

use support::{REPLY, Server, exchange, write_config};

fn reply_of(server: &Server) -> String {
    String::from_utf8(exchange(server.addr, b"hello").unwrap()).unwrap()
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "reply = \"from file\"\n");
    let config = config.to_str().unwrap();

    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    assert_eq!(reply_of(&server), REPLY);

    let server = Server::start(&["--bind", "127.0.0.1:0", "--config", config]);
    assert_eq!(reply_of(&server), "from file");

    let server =
        Server::start_with(&["--bind", "127.0.0.1:0", "-c", config], &[("POOLSERVER_REPLY", "from env")]);
    assert_eq!(reply_of(&server), "from env");

    let args = ["--bind", "127.0.0.1:0", "--config", config, "--reply", "from flag"];
    let server = Server::start_with(&args, &[("POOLSERVER_REPLY", "from env")]);
    assert_eq!(reply_of(&server), "from flag");
}

#[test]
fn every_option_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let env = [
        ("POOLSERVER_BIND", "127.0.0.1:0"),
        ("POOLSERVER_WORKERS", "3"),
        ("POOLSERVER_QUEUE", "5"),
        ("POOLSERVER_BACKLOG", "300"),
        ("POOLSERVER_MAX_CONNECTIONS", "50"),
        ("POOLSERVER_MAX_PER_CLIENT", "5"),
        ("POOLSERVER_MODE", "echo"),
        ("POOLSERVER_MAX_REQUEST", "4"),
        ("POOLSERVER_READ_TIMEOUT", "2s"),
        ("POOLSERVER_WRITE_TIMEOUT", "2s"),
        ("POOLSERVER_SHUTDOWN_TIMEOUT", "3s"),
        ("POOLSERVER_LOG_LEVEL", "debug"),
        ("POOLSERVER_LOG_FILE", log.to_str().unwrap()),
        ("POOLSERVER_KEEP_ALIVE", "yes"),
        ("POOLSERVER_IDLE_TIMEOUT", "3s"),
    ];
    let mut server = Server::start_with(&[], &env);
    let line = server.wait_for("listening on");
    assert!(
        line.contains(
            "workers 3, queue 5, backlog 300, mode echo, keep-alive, idle timeout 3s, max connections 50, \
             max per client 5,"
        ),
        "{line}"
    );
    // Reads of at most 4 bytes: "abcdefgh" is two messages, each echoed.
    let mut conversation = support::connect(server.addr);
    conversation.write_all(b"abcdefgh").unwrap();
    let mut reply = [0; 8];
    conversation.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"abcdefgh");
    conversation.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(conversation.read(&mut reply).unwrap(), 0, "a clean close after the client's");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(support::WAIT).success());
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("listening on") && written.contains("stopped: served 1"), "{written}");
}

#[test]
fn every_key_can_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
bind = "127.0.0.1:0"
workers = 3
queue = 7
backlog = 200
max_connections = 60
max_per_client = 6
mode = "echo"
reply = "unused in echo mode"
busy_reply = "full"
max_request = 3
read_timeout = "1500ms"
write_timeout = "2s"
shutdown_timeout = "1m"
keep_alive = true
idle_timeout = "42s"
log_level = "info"
"#,
    );
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let line = server.wait_for("listening on");
    assert!(
        line.contains(
            "workers 3, queue 7, backlog 200, mode echo, keep-alive, idle timeout 42s, max connections 60, \
             max per client 6,"
        ),
        "{line}"
    );
    let mut conversation = support::connect(server.addr);
    // Each read of at most 3 bytes is one message: "hello" is two, "hel" and "lo".
    conversation.write_all(b"hello").unwrap();
    let mut reply = [0; 5];
    conversation.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"hello");
}

#[test]
fn the_shipped_config_file_parses_and_sets_the_defaults() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/poolserver.toml");
    let mut server = Server::start(&["--config", shipped, "--bind", "127.0.0.1:0"]);
    let line = server.wait_for("listening on");
    assert!(line.contains("queue 1024, backlog 4096, mode ack"), "{line}");
    assert_eq!(reply_of(&server), REPLY);
}

#[test]
fn every_example_in_the_shipped_config_file_has_the_type_its_key_wants() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/poolserver.toml")).unwrap();
    // Each setting is shipped as a commented-out line `# key = value`: uncomment them all.
    let mut uncommented = 0;
    let text: String = shipped
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting)
                // Not the TLS files: their examples name files this machine need not have.
                if setting.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.starts_with("tls_")
                }) =>
            {
                uncommented += 1;
                format!("{setting}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented >= 10, "only {uncommented} settings found in:\n{text}");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &text);
    let log = dir.path().join("server.log");
    let args =
        ["--config", config.to_str().unwrap(), "--bind", "127.0.0.1:0", "--log-file", log.to_str().unwrap()];
    let mut server = Server::start(&args);
    assert!(server.wait_for("listening on").contains("queue 1024, backlog 4096, mode ack"));
}

/// Runs `serve` with a bad input and checks the one-line error that names it.
fn rejected(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let mut full = vec!["serve"];
    full.extend_from_slice(args);
    support::rejected(&full, env, needles);
}

#[test]
fn bad_flag_values_are_named() {
    rejected(&["--workers", "many"], &[], &["--workers", "'many' is not a whole number"]);
    rejected(&["--workers", "0"], &[], &["--workers", "at least 1"]);
    rejected(&["--queue", "0"], &[], &["--queue", "at least 1"]);
    rejected(&["--workers", "100000000000000"], &[], &["--workers", "at most 1024"]);
    rejected(&["--queue", "100000000000000"], &[], &["--queue", "at most 65536"]);
    rejected(&["--shutdown-timeout", "300000000000y"], &[], &["--shutdown-timeout", "24h"]);
    rejected(&["--backlog=-5"], &[], &["--backlog", "not a whole number"]);
    rejected(&["--mode", "shout"], &[], &["--mode", "shout"]);
    rejected(&["--max-request", "0"], &[], &["--max-request"]);
    rejected(&["--max-connections", "0"], &[], &["--max-connections", "at least 1"]);
    rejected(&["--max-per-client", "2000000000"], &[], &["--max-per-client", "at most 1073741824"]);
    rejected(&["--read-timeout", "5"], &[], &["--read-timeout", "like 250ms"]);
    rejected(&["--write-timeout", "0s"], &[], &["--write-timeout", "longer than zero"]);
    rejected(&["--log-level", "loud"], &[], &["--log-level", "loud"]);
    rejected(&["--bind", "nowhere"], &[], &["--bind", "HOST:PORT"]);
    rejected(&["--no-such-flag"], &[], &["--no-such-flag"]);
}

#[test]
fn bad_environment_values_name_the_variable() {
    rejected(&[], &[("POOLSERVER_WORKERS", "many")], &["--workers", "POOLSERVER_WORKERS"]);
    rejected(&[], &[("POOLSERVER_SHUTDOWN_TIMEOUT", "soon")], &["POOLSERVER_SHUTDOWN_TIMEOUT"]);
    rejected(
        &[],
        &[("POOLSERVER_MAX_PER_CLIENT", "lots")],
        &["--max-per-client", "POOLSERVER_MAX_PER_CLIENT"],
    );
}

#[test]
fn bad_config_files_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 8] = [
        ("workers = 0\n", &["workers", "at least 1"]),
        ("queue = 0\n", &["queue", "at least 1"]),
        ("max_connections = 0\n", &["max_connections", "at least 1"]),
        ("read_timeout = \"soon\"\n", &["read_timeout", "'soon' is not a duration"]),
        ("bogus = 1\n", &["line 1: unknown key 'bogus'; the keys are bind,"]),
        ("workers = \"two\"\n", &["line 1: workers: expected a number, like 4 (found a string)"]),
        ("mode = \"shout\"\n", &["mode", "shout", "use ack or echo"]),
        ("reply = \"unterminated\n", &["line 1"]),
    ];
    for (text, needles) in cases {
        let config = write_config(dir.path(), text);
        let path = config.to_str().unwrap();
        let mut expected = vec![path];
        expected.extend_from_slice(needles);
        rejected(&["--config", path], &[], &expected);
    }
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    rejected(&["--config", missing], &[], &["cannot read config file", missing]);
    let directory = dir.path().to_str().unwrap();
    rejected(&["--config", directory], &[], &["cannot read config file", directory]);
    let log = dir.path().join("no/such/dir/server.log");
    let log = log.to_str().unwrap();
    rejected(&["--log-file", log], &[], &["cannot open log file", log]);
}

#[test]
fn help_lists_every_option_with_its_variable() {
    let output = support::output(&mut support::command(&["serve", "--help"], &[]), support::WAIT);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "POOLSERVER_BIND",
        "POOLSERVER_WORKERS",
        "POOLSERVER_READ_TIMEOUT",
        "POOLSERVER_LOG_FILE",
        "POOLSERVER_MAX_CONNECTIONS",
        "POOLSERVER_MAX_PER_CLIENT",
    ] {
        assert!(help.contains(var), "{var} missing from:\n{help}");
    }
}

#[test]
fn the_shipped_config_file_names_every_key_the_server_accepts() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/poolserver.toml")).unwrap();
    for key in support::accepted_keys() {
        let named = shipped.lines().any(|line| line.starts_with(&format!("# {key} = ")));
        assert!(named, "config/poolserver.toml has no commented-out `# {key} = ...` line");
    }
}
