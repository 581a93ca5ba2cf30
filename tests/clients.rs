//! `poolserver send` and `poolserver stress` against a real server on loopback.

mod support;

use std::{
    io::Write,
    net::TcpListener,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{REPLY, Server, WAIT, command};

fn run(args: &[&str]) -> Output {
    support::output(&mut command(args, &[]), Duration::from_secs(60))
}

fn stress_json(addr: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["stress", "--addr", addr, "--json", "--timeout", "5s"];
    args.extend_from_slice(extra);
    let output = run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (output, json)
}

#[test]
fn send_prints_the_reply_and_exits_0() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let output = run(&["send", "--addr", &server.addr.to_string(), "hello"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), REPLY);
}

#[test]
fn send_reads_the_message_from_stdin() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--mode", "echo"]);
    let mut child = support::Guarded(
        command(&["send", "--addr", &server.addr.to_string(), "-"], &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    child.0.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
    let output = support::finish(child, WAIT);
    assert!(output.status.success());
    assert_eq!(output.stdout, b"from stdin\n");
}

#[test]
fn send_to_a_closed_port_fails_with_one_line() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let output = run(&["send", "--addr", &addr, "--timeout", "2s"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot connect to {addr}: Connection refused")), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn send_to_a_keep_alive_server_prints_the_reply_and_says_so_before_its_timeout() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive"]);
    let started = Instant::now();
    let output = run(&["send", "--addr", &server.addr.to_string(), "--timeout", "10s", "hello"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), REPLY);
    assert!(
        stderr.contains("kept the connection open") && stderr.contains("'poolserver send --keep-alive'"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "waited out the timeout: {:?}", started.elapsed());
}

#[test]
fn send_keep_alive_to_a_one_shot_server_says_the_conversation_was_cut_short() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let mut child = support::Guarded(
        command(&["send", "--keep-alive", "--addr", &server.addr.to_string(), "-"], &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    child.0.stdin.take().unwrap().write_all(b"one\ntwo\n").unwrap();
    let output = support::finish(child, WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), REPLY, "the first reply is printed");
    assert!(stderr.contains("after 1 reply") && stderr.contains("send without --keep-alive"), "{stderr}");
}

#[test]
fn stress_against_a_keep_alive_server_says_so_and_fails() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive"]);
    let (output, json) = stress_json(&server.addr.to_string(), &["--clients", "1", "--requests", "1"]);
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!((json["ok"].as_u64(), json["errors"]["kept_open"].as_u64()), (Some(0), Some(1)), "{json}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds conversations") && stderr.contains("--messages"), "{stderr}");
}

#[test]
fn conversations_cut_short_by_a_one_shot_server_are_failures() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let (output, json) =
        stress_json(&server.addr.to_string(), &["--clients", "2", "--requests", "6", "--messages", "5"]);
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!(json["ok"], 0, "{json}");
    // A one-shot server closes after its reply; when the next message reaches it first, Linux resets the
    // connection instead of sending the FIN, which a loaded box makes likely now and then.
    let (cut_short, reset) = (json["errors"]["cut_short"].as_u64(), json["errors"]["reset"].as_u64());
    assert_eq!(json["failed"], 6, "{json}");
    assert!(cut_short >= Some(1) && cut_short.zip(reset).map(|(c, r)| c + r) == Some(6), "{json}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("one message per connection"), "{stderr}");
}

#[test]
fn conversations_a_cap_ends_early_count_as_ended_with_no_hint_about_the_mode() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--keep-alive", "--max-messages", "3"]);
    let (output, json) =
        stress_json(&server.addr.to_string(), &["--clients", "2", "--requests", "6", "--messages", "5"]);
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!((json["failed"].as_u64(), json["errors"]["ended"].as_u64()), (Some(6), Some(6)), "{json}");
    assert_eq!(json["errors"]["cut_short"], 0, "{json}");
    let first = json["first_errors"]["ended"].as_str().unwrap_or_default();
    assert!(first.contains("after 3 replies"), "{json}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("one message per connection"), "{stderr}");
}

#[test]
fn stress_counts_add_up_against_a_healthy_server() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let (output, json) = stress_json(&server.addr.to_string(), &["--clients", "8", "--requests", "2000"]);
    assert!(output.status.success(), "{json}");
    assert_eq!(json["ok"], 2000, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    for kind in ["refused", "reset", "timeout", "wrong_reply", "busy"] {
        assert_eq!(json["errors"][kind], 0, "{kind}: {json}");
    }
    let latency = &json["latency_us"];
    assert!(
        latency["p50"].as_u64() <= latency["p99"].as_u64()
            && latency["p99"].as_u64() <= latency["max"].as_u64()
    );
    assert!(json["conns_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn stress_counts_wrong_replies_and_fails() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--reply", "something else"]);
    let (output, json) = stress_json(&server.addr.to_string(), &["--clients", "4", "--requests", "100"]);
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!(json["ok"], 0);
    assert_eq!(json["errors"]["wrong_reply"], 100, "{json}");
}

#[test]
fn stress_counts_refused_connections_and_fails() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (output, json) = stress_json(&addr, &["--clients", "2", "--requests", "10"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json["errors"]["refused"], 10, "{json}");
}

#[test]
fn stress_reports_idle_connections_the_server_closed() {
    let server = Server::start(&["--bind", "127.0.0.1:0", "--read-timeout", "1s"]);
    let args = ["--clients", "2", "--duration", "2500ms", "--idle", "6"];
    let (output, json) = stress_json(&server.addr.to_string(), &args);
    assert!(output.status.success(), "{json}");
    assert_eq!(json["idle"]["held"], 6, "{json}");
    assert_eq!(json["idle"]["closed_by_server"], 6, "{json}");
}

#[test]
fn stress_prints_a_table_for_people() {
    let server = Server::start(&["--bind", "127.0.0.1:0"]);
    let output = run(&["stress", "--addr", &server.addr.to_string(), "--requests", "50"]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    for row in ["connections  50 ok, 0 failed", "throughput", "latency      p50", "errors       none"] {
        assert!(table.contains(row), "{row:?} missing from:\n{table}");
    }
}

#[test]
fn the_stress_script_runs_its_quick_ladder() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stress.sh");
    let output = support::output(
        std::process::Command::new("bash").args([script, "--quick", "--bin", support::BIN]),
        Duration::from_secs(60),
    );
    let status = output.status;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("clients") && stdout.contains("conn/s"), "{stdout}");
}

#[test]
fn the_bench_script_runs_a_one_shot_and_a_conversation_scenario() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh");
    let output = support::output(
        std::process::Command::new("bash").args([
            script,
            "--quick",
            "--scenarios",
            "S1,K1",
            "--bin",
            support::BIN,
        ]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // server, scenario, clients, idle, secs, conn/s, msg/s, ...: msg/s only for the conversation.
    let row = |scenario: &str| -> Vec<String> {
        let line = stdout.lines().find(|line| line.starts_with(&format!("poolserver  {scenario} ")));
        let line = line.unwrap_or_else(|| panic!("no {scenario} row in:\n{stdout}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("S1")[6], "-", "{stdout}");
    assert_ne!(row("K1")[6], "-", "{stdout}");
    assert!(row("K1")[6].chars().next().is_some_and(|c| c.is_ascii_digit()), "{stdout}");
}

#[test]
fn the_bench_script_rejects_options_that_do_not_go_together() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh");
    for (args, needle) in [
        (&["--curves", "--scenarios", "S1"][..], "--curves runs its own sweep"),
        (&["--chart", "x.svg"][..], "add --curves"),
        (&["--scenarios", "K9"][..], "unknown scenario 'K9'"),
    ] {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(script).args(args).args(["--bin", support::BIN]);
        support::rejected_command(cmd, &[needle]);
    }
}
