//! The `poolserver` command: parse the command line, set up logging, run the subcommand, map the outcome to
//! an exit code (0 success, 1 runtime failure, 2 usage or configuration error).

use std::{
    io::{self, IsTerminal},
    process::ExitCode,
    time::Duration,
};

use clap::{CommandFactory, Parser, error::ContextKind, error::ErrorKind};
use log::{error, info, warn};
use poolserver::{Builtin, Error, Server};

mod cli;
mod client;
mod logging;
mod settings;
mod signals;
mod stress;

use cli::{Cli, Command, SendArgs, ServeArgs, StressArgs};
use logging::Logs;
use settings::Settings;
use stress::Plan;

const USAGE: u8 = 2;

/// How long the exit waits for the logs to write what they hold; a destination that stalls longer loses it.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Send(args) => send(&args),
        Command::Stress(args) => run_stress(args),
    }
}

fn send(args: &SendArgs) -> ExitCode {
    match client::send(args, &mut io::stdin().lock(), &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("poolserver send: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_stress(args: StressArgs) -> ExitCode {
    let json = args.json;
    let plan = match Plan::from_args(args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("poolserver: {message}; see 'poolserver stress --help'");
            return ExitCode::from(USAGE);
        }
    };
    let report = stress::run(plan, !json && io::stderr().is_terminal());
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let Settings { config, log } = match Settings::resolve(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("poolserver: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let logs = match logging::init(&log) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("poolserver: {e}");
            // A log file that cannot be opened is the user's to fix; anything else is the system's.
            return if matches!(e, Error::Config(_)) { ExitCode::from(USAGE) } else { ExitCode::FAILURE };
        }
    };
    logging::log_panics();
    let code = run_server(config, &logs);
    logs.finish(FINAL_FLUSH);
    code
}

fn run_server(config: poolserver::Config, logs: &Logs) -> ExitCode {
    // Under systemd's socket activation the socket comes from systemd; otherwise we bind our own.
    let handler = Builtin::from_config(&config);
    let server = match Server::from_systemd(config.clone(), handler.clone()) {
        Ok(Some(server)) => Ok(server),
        Ok(None) => Server::bind_with(config, handler),
        Err(e) => Err(e),
    };
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = signals::install(server.shutdown_handle(), logs.clone()) {
        error!("cannot handle stop signals: {e}");
        return ExitCode::FAILURE;
    }
    match server.run() {
        Ok(summary) => {
            info!("stopped: {summary}");
            ExitCode::SUCCESS
        }
        Err(e @ Error::ShutdownTimedOut { .. }) => {
            warn!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; anything else becomes one line on stderr, naming the
/// environment variable when the bad value came from there, and exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(USAGE);
        }
        _ => {}
    }
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or("invalid usage");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let valid = match e.get(ContextKind::ValidValue) {
        Some(values) if !message.contains("expected") => format!(" (expected one of: {values})"),
        _ => String::new(),
    };
    let origin =
        from_environment(e).map(|var| format!(" (from environment variable {var})")).unwrap_or_default();
    eprintln!("poolserver: {message}{valid}{origin}; see 'poolserver --help'");
    ExitCode::from(USAGE)
}

/// The environment variable behind a rejected value, when the flag itself was not on the command line.
fn from_environment(e: &clap::Error) -> Option<String> {
    let flag = e.get(ContextKind::InvalidArg)?.to_string();
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?.to_owned();
    let on_command_line =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    let command = Cli::command();
    let arg = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .find(|arg| arg.get_long() == Some(long.as_str()))?;
    let short = arg.get_short().map(|s| format!("-{s}"));
    let short_used = short.is_some_and(|s| std::env::args().any(|a| a.starts_with(&s)));
    let var = arg.get_env()?.to_string_lossy().into_owned();
    (!on_command_line && !short_used && std::env::var_os(&var).is_some()).then_some(var)
}
