//! The systemd units in `config/` and `scripts/install.sh`: `systemd-analyze` finds nothing wrong with the
//! units and rates the service's exposure at most 1.5, and the installer stages everything under a prefix,
//! changes nothing with `--dry-run`, and can run again without losing an administrator's config.
//!
//! The `systemd-analyze` tests need no running systemd (CI has none), only the tool, which is in Debian's
//! `systemd` package. Without it they fail under CI and say on stderr that they checked nothing otherwise.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::Duration,
};

use support::{BIN, wait_child};

/// The most any one command in these tests may take; generous, because CI runs the suites in parallel.
const LIMIT: Duration = Duration::from_secs(60);
/// What the issue asks of the service unit.
const MAX_EXPOSURE: f64 = 1.5;
/// Where the service unit expects the binary; the installer puts it there.
const INSTALLED_BIN: &str = "/usr/local/bin/poolserver";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    /// Everything the command printed, for failure messages.
    fn dump(&self) -> String {
        format!("{}\n--- stdout:\n{}--- stderr:\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, killing it and failing the test if it takes longer than `LIMIT`.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Read both pipes while the child runs, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let mut pipe = pipe.expect("piped");
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let Some(status) = wait_child(&mut child, LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {LIMIT:?}");
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Whether `systemd-analyze` is on PATH; see `support::have_tool` for what happens when it is not.
fn have_systemd_analyze() -> bool {
    support::have_tool("systemd-analyze", "Debian package systemd; .ci/run installs it")
}

/// Copies both units into a fresh directory, with ExecStart naming `exec` instead of `INSTALLED_BIN`.
fn units_with_exec(exec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::copy(repo("config/poolserver.socket"), dir.path().join("poolserver.socket"))
        .expect("copy socket unit");
    let service = fs::read_to_string(repo("config/poolserver.service")).expect("read service unit");
    let from = format!("ExecStart={INSTALLED_BIN} ");
    assert_eq!(service.matches(&from).count(), 1, "expected exactly one line starting {from:?}");
    let service = service.replace(&from, &format!("ExecStart={exec} "));
    fs::write(dir.path().join("poolserver.service"), service).expect("write service unit");
    dir
}

fn verify(dir: &Path) -> Output {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("poolserver.socket"))
        .arg(dir.join("poolserver.service")))
}

#[test]
fn systemd_analyze_verify_reports_no_problem() {
    if !have_systemd_analyze() {
        return;
    }
    // `verify` also checks that ExecStart's program exists and is executable: on the shipped units it fails
    // (exit 1) with "Command /usr/local/bin/poolserver is not executable: No such file or directory" on any
    // machine where poolserver is not installed, CI included. `--root=DIR` does not help: it moves the whole
    // unit search path under DIR, and then sysinit.target and the other units every service depends on are
    // missing. So the test verifies copies of the units that differ only in ExecStart's path, which names
    // the binary cargo built for this test run.
    assert!(!BIN.contains(char::is_whitespace), "ExecStart cannot name {BIN:?} without quoting");
    let units = units_with_exec(BIN);
    let out = verify(units.path());
    // A clean pair of units prints nothing at all; every complaint (an unknown or misspelt directive, a bad
    // value, a missing dependency) is a line on stderr, and some of them still exit 0.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify found problems: {}",
        out.dump()
    );

    // The same check does see a mistake: without this, an empty output could mean the units were not read.
    let broken = units_with_exec(BIN);
    let service = broken.path().join("poolserver.service");
    let text = fs::read_to_string(&service).expect("read copy");
    fs::write(&service, text.replace("ProtectProc=invisible", "ProtectProc=invisibel")).expect("write copy");
    let out = verify(broken.path());
    assert!(out.stderr.contains("invisibel"), "a bad value went unnoticed: {}", out.dump());
}

#[test]
fn service_exposure_is_at_most_1_5() {
    if !have_systemd_analyze() {
        return;
    }
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(repo("config/poolserver.service")));
    assert!(out.status.success() && out.stderr.is_empty(), "systemd-analyze security failed: {}", out.dump());
    // The last line reads "→ Overall exposure level for poolserver.service: 0.4 SAFE 😀".
    let marker = "Overall exposure level for poolserver.service:";
    let exposure: f64 = out
        .stdout
        .lines()
        .find_map(|line| line.split_once(marker))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no {marker:?} line with a number: {}", out.dump()));
    assert!(
        exposure <= MAX_EXPOSURE,
        "overall exposure {exposure} is above {MAX_EXPOSURE}; what still counts:\n{}",
        out.stdout.lines().filter(|line| line.starts_with('✗')).collect::<Vec<_>>().join("\n")
    );
}

fn install(args: &[&str], prefix: &Path) -> Output {
    // From another directory, to show the script finds the repository by itself.
    let out = run(Command::new(repo("scripts/install.sh"))
        .args(args)
        .arg("--prefix")
        .arg(prefix)
        .args(["--bin", BIN])
        .current_dir(std::env::temp_dir()));
    assert!(out.status.success(), "install.sh {args:?} failed: {}", out.dump());
    out
}

/// Every file under `root`: its path relative to `root`, its permission bits and its contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        for entry in fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                walk(root, &path, files);
            } else {
                let contents = fs::read(&path).expect("read file");
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                files.insert(relative, (meta.permissions().mode() & 0o7777, contents));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

const CONFIG: &str = "etc/poolserver/poolserver.toml";

/// What one run of install.sh leaves in an empty prefix.
fn expected_install() -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let read = |path: &Path| fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let repo_file = |path: &str| read(&repo(path));
    BTreeMap::from([
        (PathBuf::from("usr/local/bin/poolserver"), (0o755, read(Path::new(BIN)))),
        (PathBuf::from(CONFIG), (0o644, repo_file("config/poolserver.toml"))),
        (
            PathBuf::from("etc/systemd/system/poolserver.socket"),
            (0o644, repo_file("config/poolserver.socket")),
        ),
        (
            PathBuf::from("etc/systemd/system/poolserver.service"),
            (0o644, repo_file("config/poolserver.service")),
        ),
        (PathBuf::from("etc/logrotate.d/poolserver"), (0o644, repo_file("config/logrotate"))),
    ])
}

#[test]
fn install_dry_run_changes_nothing_and_lists_every_action() {
    let prefix = tempfile::tempdir().expect("temp dir");
    let out = install(&["--dry-run"], prefix.path());
    let created: Vec<PathBuf> =
        fs::read_dir(prefix.path()).expect("read prefix").map(|entry| entry.expect("entry").path()).collect();
    assert!(created.is_empty(), "--dry-run created {created:?}");
    for file in expected_install().keys() {
        let dest = prefix.path().join(file);
        let line = out.stdout.lines().find(|line| line.ends_with(dest.to_str().expect("UTF-8 path")));
        assert!(
            line.is_some_and(|line| line.starts_with("would run: install -D -m")),
            "no planned install of {}: {}",
            dest.display(),
            out.dump()
        );
    }
    assert!(!out.stdout.contains("running:"), "--dry-run ran something: {}", out.dump());
    assert!(out.stdout.contains("systemctl enable --now poolserver.socket"), "no next steps: {}", out.dump());
}

#[test]
fn install_into_a_prefix_twice_keeps_a_changed_config() {
    let prefix = tempfile::tempdir().expect("temp dir");
    install(&[], prefix.path());
    let mut expected = expected_install();
    assert!(snapshot(prefix.path()) == expected, "first install: {:#?}", snapshot(prefix.path()).keys());

    // The administrator edits the config; a second run replaces binary and units but keeps that file.
    let config = prefix.path().join(CONFIG);
    let mut edited = fs::read(&config).expect("read installed config");
    edited.extend_from_slice(b"reply = \"edited by the admin\"\n");
    fs::write(&config, &edited).expect("edit config");
    expected.get_mut(Path::new(CONFIG)).expect("config expected").1 = edited;

    let out = install(&[], prefix.path());
    let after = snapshot(prefix.path());
    assert!(
        after.get(Path::new(CONFIG)) == expected.get(Path::new(CONFIG)),
        "the edited config was replaced"
    );
    assert!(after == expected, "second install changed more than expected: {:#?}", after.keys());
    assert!(
        out.stdout.contains(&format!("keeping {}", config.display())),
        "the second run did not say it kept the config: {}",
        out.dump()
    );
}
