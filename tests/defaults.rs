//! Every default and every range is written once, in the library (`poolserver::config`); what prints them
//! (`serve --help`, and so the man pages; `serve --check`) and what repeats them (the sample
//! config/poolserver.toml) are held to `Config::default()` and the `MAX_*` constants here, so none of them
//! can drift again (as `--backlog [default: 1024]` did while the server used 4096).

mod support;

use std::{collections::BTreeMap, fs, time::Duration};

use poolserver::{
    Config,
    config::{
        MAX_BACKLOG, MAX_CONNECTIONS_LIMIT, MAX_DURATION, MAX_MESSAGES_LIMIT, MAX_QUEUE, MAX_REQUEST_LIMIT,
        MAX_WORKERS,
    },
};
use support::{WAIT, accepted_keys, command, output};

/// Keys whose value in the sample config is an example, as its comment says: their default depends on the
/// machine (workers, max_connections) or is "not set" (TLS is off until both files are named).
const EXAMPLES: &[&str] =
    &["workers", "max_connections", "max_per_client", "proxy_from", "log_file", "tls_cert", "tls_key"];

fn stdout_of(args: &[&str]) -> String {
    let out = output(&mut command(args, &[]), WAIT);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// "5s", "1m", "250ms", "1m 30s": the few forms the defaults take.
fn duration(text: &str) -> Duration {
    text.split_whitespace()
        .map(|part| {
            let at = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
            let n: u64 = part[..at].parse().unwrap_or_else(|_| panic!("not a duration: {text:?}"));
            match &part[at..] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(60 * n),
                "h" => Duration::from_secs(3600 * n),
                unit => panic!("unit {unit:?} in {text:?}"),
            }
        })
        .sum()
}

/// Whether `shown` (as a config file or `--help` writes it, quotes or not) is `Config::default()`'s value
/// of `key`. `None` for a key that is not a field of `Config`.
fn is_default(key: &str, shown: &str) -> Option<bool> {
    let d = Config::default();
    let shown = shown.trim().trim_matches('"');
    let same = |value: String| value == shown;
    let same_duration = |value: Duration| duration(shown) == value;
    Some(match key {
        "bind" => same(d.bind.to_string()),
        "workers" => same(d.workers.to_string()),
        "queue" => same(d.queue.to_string()),
        "backlog" => same(d.backlog.to_string()),
        "mode" => same(d.mode.to_string()),
        "framing" => same(d.framing.to_string()),
        "reply" => same(d.reply),
        "busy_reply" => same(d.busy_reply),
        "max_request" => same(d.max_request.to_string()),
        "read_timeout" => same_duration(d.read_timeout),
        "write_timeout" => same_duration(d.write_timeout),
        "shutdown_timeout" => same_duration(d.shutdown_timeout),
        "idle_timeout" => same_duration(d.idle_timeout),
        "max_messages" => same(d.max_messages.to_string()),
        "max_conversation" => same_duration(d.max_conversation),
        "keep_alive" => same(d.keep_alive.to_string()),
        "log_each_message" => same(d.log_each_message.to_string()),
        "reuse_port" => same(d.reuse_port.to_string()),
        "proxy_protocol" => same(d.proxy_protocol.to_string()),
        "max_connections" => d.max_connections.is_none() && shown.starts_with("the fd limit"),
        "max_per_client" => d.max_per_client.is_none() && shown == "no limit",
        "proxy_from" => d.proxy_from.is_none() && shown.starts_with("every peer"),
        _ => return None,
    })
}

/// Each option of `serve --help` (long form), by config key, with its help text on one line.
fn help_by_key() -> BTreeMap<String, String> {
    let help = stdout_of(&["serve", "--help"]);
    let mut options = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag = trimmed.strip_prefix("--").or_else(|| trimmed.get(4..)?.strip_prefix("--"));
        if let Some(flag) = flag.filter(|_| line.starts_with("  ") && !line.starts_with("          ")) {
            let name = flag.split([' ', '=']).next().unwrap_or_default().replace('-', "_");
            options.insert(name.clone(), String::new());
            current = Some(name);
        } else if let Some(name) = &current {
            let text = options.get_mut(name).expect("inserted");
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    options
}

fn shown_default(help: &str) -> Option<&str> {
    let start = help.find("[default: ")? + "[default: ".len();
    Some(&help[start..start + help[start..].find(']')?])
}

#[test]
fn serve_help_shows_the_librarys_defaults_and_ranges() {
    let options = help_by_key();
    let mut checked = 0;
    for (key, help) in &options {
        let Some(shown) = shown_default(help) else { continue };
        match (key.as_str(), is_default(key, shown)) {
            ("workers", _) => assert_eq!(shown, "number of CPUs", "--workers"),
            (_, Some(agrees)) => {
                assert!(agrees, "--{key} says [default: {shown}], Config::default() disagrees")
            }
            (_, None) => {}
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} defaults found in serve --help: {options:#?}");
    for (key, max) in [
        ("workers", MAX_WORKERS),
        ("queue", MAX_QUEUE),
        ("backlog", MAX_BACKLOG as usize),
        ("max_request", MAX_REQUEST_LIMIT),
        ("max_messages", MAX_MESSAGES_LIMIT),
        ("max_connections", MAX_CONNECTIONS_LIMIT),
        ("max_per_client", MAX_CONNECTIONS_LIMIT),
    ] {
        let help = &options[key];
        assert!(help.contains(&format!("1 to {max}")), "--{key} does not say its range 1 to {max}: {help}");
    }
}

#[test]
fn serve_check_prints_the_librarys_defaults() {
    let toml = stdout_of(&["serve", "--check"]);
    let mut checked = 0;
    for line in toml.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.split_once(" = ").unwrap_or_else(|| panic!("not key = value: {line}"));
        if let Some(agrees) = is_default(key, value) {
            assert!(agrees, "serve --check says {line}, Config::default() disagrees");
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} keys checked in:\n{toml}");
}

#[test]
fn the_sample_config_names_every_key_with_its_default() {
    let sample = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/poolserver.toml")).unwrap();
    let shown: BTreeMap<&str, &str> = sample
        .lines()
        .filter_map(|line| line.strip_prefix("# ")?.split_once(" = "))
        .filter(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    let check = stdout_of(&["serve", "--check"]);
    for key in accepted_keys() {
        let value =
            shown.get(key.as_str()).unwrap_or_else(|| panic!("config/poolserver.toml lacks `# {key} = `"));
        if EXAMPLES.contains(&key.as_str()) {
            continue;
        }
        match is_default(&key, value) {
            Some(agrees) => {
                assert!(agrees, "config/poolserver.toml: {key} = {value}; Config::default() disagrees")
            }
            // The binary's own settings (logs, metrics): as `serve --check` prints them.
            None => {
                assert!(check.contains(&format!("\n{key} = {value}\n")), "{key} = {value} not in:\n{check}")
            }
        }
    }
}

#[test]
fn the_options_table_in_the_docs_shows_the_defaults() {
    let page = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let check = stdout_of(&["serve", "--check"]);
    let mut keys = Vec::new();
    // | flag | TOML key | environment variable | default |
    for row in page.lines().filter(|l| l.starts_with("| `-")) {
        let row = row.replace("\\|", "/");
        let cells: Vec<&str> = row.split('|').map(|c| c.trim_matches([' ', '`'])).collect();
        let ["", _, key, _, default, ""] = cells[..] else { panic!("not a row of four: {row}") };
        if key.is_empty() || EXAMPLES.contains(&key) {
            continue;
        }
        match is_default(key, default) {
            Some(agrees) => assert!(
                agrees,
                "docs/configuration.md: {key} defaults to {default}; Config::default() disagrees"
            ),
            None => assert!(
                check.contains(&format!("\n{key} = \"{default}\"\n")),
                "{key}: {default} not in:\n{check}"
            ),
        }
        keys.push(key.to_owned());
    }
    for key in accepted_keys().iter().filter(|k| !EXAMPLES.contains(&k.as_str())) {
        assert!(keys.contains(key), "docs/configuration.md's table lacks {key}");
    }
}

#[test]
fn the_ranges_the_docs_and_the_sample_name_are_the_librarys() {
    // Read with every run of white space as one space, so that a reflowed line still matches.
    let read = |path: &str| {
        let text = fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let (page, sample) = (read("docs/configuration.md"), read("config/poolserver.toml"));
    for (text, said) in [
        (&page, format!("`workers` is 1 to {MAX_WORKERS} and `queue` 1 to {MAX_QUEUE}")),
        (&page, format!("Both are 1 to {MAX_CONNECTIONS_LIMIT}")),
        (&page, format!("`max_request` is 1 to 16 MiB ({MAX_REQUEST_LIMIT})")),
        (&page, format!("at most `{}h`", MAX_DURATION.as_secs() / 3600)),
        (&page, format!("`max_messages` is 1 to {MAX_MESSAGES_LIMIT}")),
        (&sample, format!("(1 to {MAX_MESSAGES_LIMIT})")),
        (&sample, format!("(1 to {MAX_REQUEST_LIMIT})")),
    ] {
        assert!(text.contains(&said), "the docs or the sample no longer say {said:?}");
    }
    assert_eq!(MAX_REQUEST_LIMIT, 16 << 20, "the docs say 16 MiB");
}

#[test]
fn the_man_pages_show_the_defaults_and_point_only_to_pages_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    stdout_of(&["generate", "man", dir.path().to_str().unwrap()]);
    let main = fs::read_to_string(dir.path().join("poolserver.1")).unwrap();
    let mut pointed = 0;
    for (at, _) in main.match_indices("(1)") {
        let name =
            main[..at].rsplit(|c: char| c.is_whitespace()).next().unwrap_or_default().replace("\\-", "-");
        assert!(
            dir.path().join(format!("{name}.1")).is_file(),
            "poolserver(1) points to {name}(1), which is missing"
        );
        pointed += 1;
    }
    assert!(pointed >= 4, "poolserver(1) points to {pointed} pages:\n{main}");
    let serve = fs::read_to_string(dir.path().join("poolserver-serve.1")).unwrap();
    let backlog = format!("[default: {}]", Config::default().backlog);
    assert!(serve.contains(&backlog), "poolserver-serve(1) lacks {backlog}");
}
