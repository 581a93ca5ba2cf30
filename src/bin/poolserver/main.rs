//! The `poolserver` command: parse the command line, set up logging, run the subcommand, map the outcome to
//! an exit code (0 success, 1 runtime failure, 2 usage or configuration error).

#![deny(clippy::undocumented_unsafe_blocks)]

use std::{
    io::{self, IsTerminal},
    net::SocketAddr,
    process::ExitCode,
    time::Duration,
};

use clap::{CommandFactory, Parser};
use log::{error, info, warn};
use poolserver::{Builtin, Error, Server};

mod check;
mod cli;
mod client;
mod errors;
mod fd_limit;
mod generate;
mod logging;
mod metrics;
mod reload;
mod settings;
mod signals;
mod stats;
mod stress;
mod tls_client;
mod tls_files;
mod values;

use cli::{Cli, Command, GenerateArgs, SendArgs, ServeArgs, StatsArgs, StressArgs};
use logging::Logs;
use reload::Reloader;
use settings::{LogSettings, Settings};
use stress::Plan;

const USAGE: u8 = 2;

/// How long the exit waits for the logs to write what they hold; a destination that stalls longer loses it.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match errors::usage(&e, &Cli::command()) {
                errors::Usage::Printed { failed: false } => ExitCode::SUCCESS,
                errors::Usage::Printed { failed: true } => ExitCode::from(USAGE),
                errors::Usage::Error(line) => {
                    eprintln!("poolserver: {line}");
                    ExitCode::from(USAGE)
                }
            };
        }
    };
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Send(args) => send(&args),
        Command::Stress(args) => run_stress(args),
        Command::Stats(args) => show_stats(&args),
        Command::Generate(args) => run_generate(&args),
    }
}

fn show_stats(args: &StatsArgs) -> ExitCode {
    match stats::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("poolserver stats: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_generate(args: &GenerateArgs) -> ExitCode {
    match generate::run(&args.what) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poolserver generate: {e}");
            ExitCode::FAILURE
        }
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
    let settings = match Settings::resolve(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("poolserver: {e}");
            return e.exit_code();
        }
    };
    if args.check {
        let sources = match &args.config {
            Some(file) => format!("flags, environment, {} and defaults", errors::path(file)),
            None => "flags, environment and defaults; no config file".to_owned(),
        };
        print!("{}", check::to_toml(&settings, &sources));
        return ExitCode::SUCCESS;
    }
    let Settings { config, log, metrics, tls } = settings;
    let logs = match logging::init(&log) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("poolserver: {e}");
            // A log file that cannot be opened is the user's to fix (2); anything else is the system's (1).
            return e.exit_code();
        }
    };
    logging::log_panics();
    match &tls {
        Some(tls) if tls.has_expired() => {
            warn!(
                "TLS with the certificate {}, which has {}; clients will refuse it",
                errors::path(&tls.cert),
                tls.expiry()
            )
        }
        Some(tls) => info!("TLS with the certificate {}, which {}", errors::path(&tls.cert), tls.expiry()),
        None => {}
    }
    let code = run_server(config, metrics, args, log, &logs);
    logs.finish(FINAL_FLUSH);
    code
}

fn run_server(
    config: poolserver::Config,
    metrics: Option<SocketAddr>,
    args: &ServeArgs,
    log: LogSettings,
    logs: &Logs,
) -> ExitCode {
    // Before the server is made: the default max_connections follows the limit.
    match fd_limit::raise() {
        Ok(fd_limit::FdLimit::AtHard) => {}
        Ok(fd_limit::FdLimit::Raised { from, to }) => {
            info!("raised the soft fd limit from {from} to {to} (the hard limit)")
        }
        Ok(fd_limit::FdLimit::Refused { soft, hard, error }) => {
            warn!(
                "cannot raise the soft fd limit from {soft} to the hard limit {hard}: {error}; it stays {soft}"
            )
        }
        Err(e) => warn!("cannot read the fd limit: {e}"),
    }
    match (config.proxy_protocol, &config.proxy_from) {
        (true, None) => warn!(
            "proxy_protocol without proxy_from: every peer that reaches the port may claim any client address; \
             set proxy_from to the load balancers' addresses"
        ),
        (false, Some(_)) => warn!("proxy_from has no effect without proxy_protocol: no PROXY header is read"),
        _ => {}
    }
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
            // A failed bind exits 1, not 2: a port in use or an address not configured yet can clear up, so
            // a service manager should try again.
            log_start_error(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = metrics {
        match metrics::start(addr, server.monitor()) {
            Ok(bound) => info!("metrics on http://{bound}/metrics"),
            Err(e) => {
                error!("metrics: {e}");
                return e.exit_code();
            }
        }
    }
    let reloader =
        Reloader { args: args.clone(), log, metrics, server: server.reload_handle(), logs: logs.clone() };
    if let Err(e) = signals::install(server.shutdown_handle(), reloader, logs.clone()) {
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

/// A failure to start, in one line; a bind failure with its likely cause and fix.
fn log_start_error(e: &Error) {
    match e {
        Error::Bind { addr, source } => error!("{}", errors::bind_failure(*addr, source)),
        _ => error!("{e}"),
    }
}
