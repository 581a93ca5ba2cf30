//! SIGHUP reloads the configuration without dropping a connection: what can change without a new socket
//! changes, a bad file changes nothing, and clients under load never notice.

mod support;

use std::{fs, path::Path, thread};

use support::{Server, WAIT, exchange, write_config};

fn reply_of(server: &Server) -> String {
    String::from_utf8(exchange(server.addr, b"hello").unwrap()).unwrap()
}

/// Rewrites the config file, sends SIGHUP and waits for the server to say what it did.
fn reload(server: &mut Server, config: &Path, text: &str, outcome: &str) -> String {
    fs::write(config, text).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_next(outcome)
}

#[test]
fn sighup_applies_the_new_reply_workers_and_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bind = \"127.0.0.1:0\"\nreply = \"first\"\nworkers = 2\n");
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(reply_of(&server), "first");

    let text = "bind = \"127.0.0.1:0\"\nreply = \"second\"\nworkers = 4\nread_timeout = \"7s\"\n";
    let line = reload(&mut server, &config, text, "reloaded the configuration");
    assert!(
        line.contains("workers 2 → 4") && line.contains("read_timeout 5s → 7s") && line.contains("reply")
    );
    assert_eq!(reply_of(&server), "second");

    // A setting that needs a new socket is kept, with a warning; the rest still applies.
    let text = "bind = \"127.0.0.1:1\"\nreply = \"third\"\nworkers = 1\n";
    reload(&mut server, &config, text, "reloaded the configuration");
    server.wait_for("bind need a restart");
    assert_eq!(reply_of(&server), "third");

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn a_reload_that_changes_only_the_log_level_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bind = \"127.0.0.1:0\"\n");
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let line = reload(&mut server, &config, "bind = \"127.0.0.1:0\"\nlog_level = \"debug\"\n", "reload:");
    assert!(line.contains("log_level info → debug"), "{line}");
    // The server's own line may come before or after the binary's.
    let line = server.wait_for("reloaded the configuration");
    assert!(!line.contains("nothing changed"), "{line}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn a_file_that_does_not_validate_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "reply = \"kept\"\n");
    let mut server = Server::start(&["--bind", "127.0.0.1:0", "--config", config.to_str().unwrap()]);
    let line = reload(&mut server, &config, "reply = \"new\"\nworkers = \"many\"\n", "reload refused");
    assert!(line.contains("workers: expected a number"), "{line}");
    assert_eq!(reply_of(&server), "kept");
    let line = reload(&mut server, &config, "reply = \"new\"\nworkers = 0\n", "reload refused");
    assert!(line.contains("workers: must be at least 1"), "{line}");
    assert_eq!(reply_of(&server), "kept");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn reloads_in_the_middle_of_a_load_fail_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "workers = 2\n");
    let args = ["--bind", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--access-log", "off"];
    let mut server = Server::start(&args);
    let addr = server.addr.to_string();
    let load = thread::spawn(move || {
        let args = ["stress", "--addr", &addr, "--clients", "8", "--duration", "3s", "--json"];
        support::output(&mut support::command(&args, &[]), WAIT)
    });
    // Grow and shrink the pool, change the queue and the timeouts, while the clients keep coming.
    for (i, workers) in [4, 1, 3, 2, 4].into_iter().enumerate() {
        let text = format!("workers = {workers}\nqueue = {}\nwrite_timeout = \"{}s\"\n", 100 + i, 3 + i);
        reload(&mut server, &config, &text, "reloaded the configuration");
    }
    let output = load.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["failed"].as_u64(), Some(0), "{report}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
}
