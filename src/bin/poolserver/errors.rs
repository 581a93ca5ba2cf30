//! What the user reads when something is wrong: one line that names the culprit and says what to do.
//!
//! Input is quoted before it reaches a message, because input can be anything: a 5 MB flag value, a config
//! line with a NUL in it, bytes that are not UTF-8. `quote` escapes what is not printable and cuts what is
//! long, so every error stays one short line of plain text. clap's errors are rebuilt from their parts into
//! that one line, keeping its "similar argument" tips; bind failures get the likely cause and the fix.
//!
//! The binary's own failures (a config file it cannot read, a log file it cannot open, a flag whose value
//! `Config::validate` refused) are a `CliError`, which says whose they are to fix and so the exit code; the
//! library's `Error` is for what the library does. Nothing here knows the command line's types: clap's
//! `Command` is passed in, so that data flows from `cli` to here and not back.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt::{self, Write},
    io,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    process::ExitCode,
};

use clap::{
    Command,
    error::{ContextKind, ContextValue, ErrorKind},
};

/// A failure of the binary's own, as one line, and whose it is to fix.
#[derive(Debug)]
pub enum CliError {
    /// A flag, variable, config key or file, or log file is wrong: the user's to fix. Exit code 2.
    Usage(String),
    /// The system refused something (a thread, the logger, a socket): exit code 1, for a service manager
    /// to try again.
    System(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::System(_) => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(line) | CliError::System(line) => f.write_str(line),
        }
    }
}

/// About how many bytes of the user's input a message quotes.
const QUOTE_BYTES: usize = 100;
/// Paths are quoted longer: cutting one short can hide which file was meant.
const PATH_BYTES: usize = 300;

/// `input` in single quotes, escaped (control and other invisible characters, backslashes; invalid UTF-8 as
/// `\xNN`) and
/// cut after about `QUOTE_BYTES` with its full length said: `'aaaa…' (5000000 bytes)`.
pub fn quote(input: impl AsRef<[u8]>) -> String {
    let bytes = input.as_ref();
    let (shown, cut) = escape(bytes, QUOTE_BYTES);
    if cut { format!("'{shown}…' ({} bytes)", bytes.len()) } else { format!("'{shown}'") }
}

/// A path as messages show it: escaped like `quote`, without quotes, cut only when very long.
pub fn path(path: impl AsRef<OsStr>) -> String {
    let (shown, cut) = escape(path.as_ref().as_bytes(), PATH_BYTES);
    if cut { format!("{shown}…") } else { shown }
}

/// A message from elsewhere that may carry input (a parser's, a library's): escaped, and cut when long.
pub fn shorten(message: &str) -> String {
    let (shown, cut) = escape(message.as_bytes(), 3 * QUOTE_BYTES);
    if cut { format!("{shown}…") } else { shown }
}

/// Escapes at most about `limit` bytes of `bytes`; says whether it left some out.
fn escape(bytes: &[u8], limit: usize) -> (String, bool) {
    let mut out = String::new();
    let mut taken = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if taken + c.len_utf8() > limit {
                return (out, true);
            }
            taken += c.len_utf8();
            match c {
                // Quotes stay as they are: a message reads better with them, and they break no line.
                ' ' | '"' | '\'' => out.push(c),
                c => {
                    let _ = write!(out, "{}", c.escape_debug());
                }
            }
        }
        for byte in chunk.invalid() {
            if taken + 1 > limit {
                return (out, true);
            }
            taken += 1;
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    (out, false)
}

/// The one line for a command line clap refused, and whether it is help or version (printed as clap does)
/// rather than an error.
pub enum Usage {
    /// Help or version text, printed by clap itself; `failed` when the user gave no subcommand.
    Printed { failed: bool },
    /// An error, to print after `poolserver: `.
    Error(String),
}

/// Turns clap's error into one line: what is wrong (with the user's input quoted), clap's tips, the
/// environment variable the bad value came from, and the help of the subcommand in use. `command` is the
/// whole command line's definition.
pub fn usage(e: &clap::Error, command: &Command) -> Usage {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return Usage::Printed { failed: false };
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return Usage::Printed { failed: true };
        }
        _ => {}
    }
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    let subcommand = subcommand(command, &args);
    let mut line = what_is_wrong(e, command, &args, subcommand.as_deref());
    for tip in tips(e) {
        let _ = write!(line, "; tip: {tip}");
    }
    if let Some(var) = from_environment(e, command, &args) {
        let _ = write!(line, " (from environment variable {var})");
    }
    match subcommand {
        Some(name) => {
            let _ = write!(line, "; see 'poolserver {name} --help'");
        }
        None => line.push_str("; see 'poolserver --help'"),
    }
    Usage::Error(line)
}

/// The subcommand the command line names: the first argument that is not an option (the top level takes
/// no option with a value), if it is one of ours.
fn subcommand(command: &Command, args: &[OsString]) -> Option<String> {
    let first = args.iter().find(|a| !a.as_bytes().starts_with(b"-"))?.to_str()?;
    let sub = command
        .get_subcommands()
        .find(|s| s.get_name() == first || s.get_all_aliases().any(|a| a == first))?;
    Some(sub.get_name().to_owned())
}

fn what_is_wrong(e: &clap::Error, command: &Command, args: &[OsString], subcommand: Option<&str>) -> String {
    let string = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match (e.kind(), string(ContextKind::InvalidArg), string(ContextKind::InvalidValue)) {
        (ErrorKind::InvalidValue, Some(arg), Some("")) => {
            format!("a value is required for '{arg}' but none was supplied{}", possible_values(e))
        }
        (ErrorKind::InvalidValue, Some(arg), Some(value)) => {
            format!("invalid value {} for '{arg}'{}", quote(value), possible_values(e))
        }
        (ErrorKind::ValueValidation, Some(arg), Some(value)) => {
            let why = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
            format!("invalid value {} for '{arg}'{why}", quote(value))
        }
        (ErrorKind::UnknownArgument, Some(arg), _) => {
            format!("unexpected argument {} found", quote(original(arg, args)))
        }
        (ErrorKind::InvalidSubcommand, ..) => match string(ContextKind::InvalidSubcommand) {
            Some(name) => format!("unrecognized subcommand {}", quote(original(name, args))),
            None => clap_line(e),
        },
        (ErrorKind::InvalidUtf8, ..) => not_utf8(command, args, subcommand),
        _ => clap_line(e),
    }
}

/// " (possible values: ack, echo)", when clap knows some.
fn possible_values(e: &clap::Error) -> String {
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) if !values.is_empty() => {
            format!(" (possible values: {})", values.join(", "))
        }
        _ => String::new(),
    }
}

/// The command-line argument clap quoted, as the user typed it: clap replaces bytes that are not UTF-8
/// with U+FFFD, which would hide what was wrong.
fn original<'a>(shown: &'a str, args: &'a [OsString]) -> &'a [u8] {
    args.iter()
        .map(|a| a.as_bytes())
        .find(|a| String::from_utf8_lossy(a) == shown)
        .unwrap_or(shown.as_bytes())
}

/// clap says only "invalid UTF-8 was detected": find the argument or the environment variable.
fn not_utf8(command: &Command, args: &[OsString], subcommand: Option<&str>) -> String {
    if let Some(i) = args.iter().position(|a| a.to_str().is_none()) {
        let after = match i.checked_sub(1).and_then(|p| args[p].to_str()) {
            Some(previous) => format!(" (after {})", quote(previous)),
            None => String::new(),
        };
        return format!(
            "argument {}{after} is not valid UTF-8: options take UTF-8 text",
            quote(args[i].as_bytes())
        );
    }
    let bad_var = command
        .get_subcommands()
        .filter(|s| subcommand.is_none_or(|name| s.get_name() == name))
        .flat_map(|s| s.get_arguments())
        .filter_map(|arg| arg.get_env())
        .find(|var| env::var_os(var).is_some_and(|value| value.to_str().is_none()));
    match bad_var {
        Some(var) => {
            let value = env::var_os(var).unwrap_or_default();
            format!(
                "environment variable {} is not valid UTF-8 ({}): set it to UTF-8 text or unset it",
                var.to_string_lossy(),
                quote(value.as_bytes())
            )
        }
        None => "an argument or environment variable is not valid UTF-8: options take UTF-8 text".to_owned(),
    }
}

/// clap's own wording for the rarer errors, the lines of its first paragraph joined, with any input in it
/// escaped and the whole cut.
fn clap_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let joined = first.join(" ");
    shorten(joined.strip_prefix("error: ").unwrap_or(&joined))
}

/// clap's hints: "a similar argument exists: '--bind'", "a similar subcommand exists: 'serve'", and its
/// other tips (how to pass a value that starts with a dash).
fn tips(e: &clap::Error) -> Vec<String> {
    let mut tips = Vec::new();
    for (kind, what) in [
        (ContextKind::SuggestedSubcommand, "subcommand"),
        (ContextKind::SuggestedArg, "argument"),
        (ContextKind::SuggestedValue, "value"),
    ] {
        match e.get(kind) {
            Some(ContextValue::String(s)) => tips.push(format!("a similar {what} exists: {}", quote(s))),
            Some(ContextValue::Strings(list)) if !list.is_empty() => {
                let list: Vec<String> = list.iter().map(quote).collect();
                let some = if list.len() == 1 {
                    format!("a similar {what} exists")
                } else {
                    format!("some similar {what}s exist")
                };
                tips.push(format!("{some}: {}", list.join(", ")));
            }
            _ => {}
        }
    }
    if let Some(ContextValue::StyledStrs(more)) = e.get(ContextKind::Suggested) {
        for tip in more {
            let (shown, cut) = escape(tip.to_string().as_bytes(), 3 * QUOTE_BYTES);
            if !cut {
                tips.push(shown);
            }
        }
    }
    tips
}

/// The environment variable behind a rejected value, when the flag itself was not on the command line.
fn from_environment(e: &clap::Error, command: &Command, args: &[OsString]) -> Option<String> {
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?;
    environment_behind(command, long, args)
}

/// The environment variable that gave the option `--long` (of `command` or one of its subcommands) its
/// value: set, while the flag is not on the command line `args`.
pub fn environment_behind(command: &Command, long: &str, args: &[OsString]) -> Option<String> {
    let arg = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|sub| sub.get_arguments()))
        .find(|arg| arg.get_long() == Some(long))?;
    let var = arg.get_env()?;
    let long_flag = format!("--{long}");
    let on_command_line = args.iter().map(|a| a.as_bytes()).any(|a| {
        a == long_flag.as_bytes()
            || a.strip_prefix(long_flag.as_bytes()).is_some_and(|rest| rest.starts_with(b"="))
            || arg
                .get_short()
                .is_some_and(|s| a.starts_with(format!("-{s}").as_bytes()) && !a.starts_with(b"--"))
    });
    (!on_command_line && env::var_os(var).is_some()).then(|| var.to_string_lossy().into_owned())
}

/// A bind that failed, in one line with its likely cause and fix when there is one.
pub fn bind_failure(addr: SocketAddr, e: &io::Error) -> String {
    match bind_advice(addr, e) {
        Some(advice) => format!("cannot bind {addr}: {e}; {advice}"),
        None => format!("cannot bind {addr}: {e}"),
    }
}

/// The likely cause of a failed bind and what to do about it, for the errors people actually meet.
fn bind_advice(addr: SocketAddr, e: &io::Error) -> Option<String> {
    let port = addr.port();
    match e.kind() {
        io::ErrorKind::AddrInUse => Some(format!(
            "another process is listening on port {port} (find it: ss -ltnp 'sport = :{port}'); stop it or \
             choose another --bind (processes that share a port all need --reuse-port)"
        )),
        io::ErrorKind::PermissionDenied if port < 1024 => {
            let exe = env::current_exe().map_or_else(|_| "the binary".to_owned(), path);
            Some(format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE: grant it (setcap \
                 cap_net_bind_service=+ep {exe}), let systemd open the port with the shipped poolserver.socket \
                 unit, or choose a port from 1024 up"
            ))
        }
        io::ErrorKind::AddrNotAvailable => Some(format!(
            "{} is not an address of this machine (see: ip -brief address); bind one that is, or 0.0.0.0 \
             or [::] for all",
            addr.ip()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_one_short_line() {
        assert_eq!(quote("many"), "'many'");
        assert_eq!(quote("a\nb\r\0\x1b[2J"), r"'a\nb\r\0\u{1b}[2J'");
        assert_eq!(quote(b"--\xff"), r"'--\xff'");
        assert_eq!(quote("信息 \"x\" 'y' \\"), r#"'信息 "x" 'y' \\'"#);
        let long = quote("a".repeat(5_000_000));
        assert_eq!(long, format!("'{}…' (5000000 bytes)", "a".repeat(QUOTE_BYTES)));
        // Cut on a character boundary, never inside one.
        assert_eq!(quote("信".repeat(50)), format!("'{}…' (150 bytes)", "信".repeat(33)));
    }

    #[test]
    fn bind_failures_name_cause_and_fix() {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let advice = |kind| bind_advice(addr, &io::Error::from(kind));
        assert!(advice(io::ErrorKind::AddrInUse).unwrap().contains("ss -ltnp 'sport = :80'"));
        let low = advice(io::ErrorKind::PermissionDenied).unwrap();
        assert!(low.contains("CAP_NET_BIND_SERVICE") && low.contains("poolserver.socket"), "{low}");
        assert!(advice(io::ErrorKind::AddrNotAvailable).unwrap().starts_with("127.0.0.1 is not an address"));
        let high: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(bind_advice(high, &io::Error::from(io::ErrorKind::PermissionDenied)), None);
    }
}
