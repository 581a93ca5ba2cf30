//! SIGHUP: the configuration read again and applied to the running server, as nginx and HAProxy do.
//!
//! It is resolved as a start would resolve it: the same flags, the environment as it was at the start
//! (clap read it then), and the config file as it is now. A file that does not parse or validate is one
//! error line and changes nothing. The server applies what it can without a new socket and logs what it
//! changed; the log level is the binary's, so it changes here and says so here; the log destinations need a
//! restart, and a warning says so. The TLS certificate and key are read again too: new connections get the
//! new pair, those open keep theirs, and a pair that does not load is the one error line and keeps the old.

use std::net::SocketAddr;

use log::{error, info, warn};
use poolserver::ReloadHandle;

use crate::{
    cli::ServeArgs,
    errors,
    logging::{Logs, OPERATOR},
    settings::{LogSettings, Settings},
};

/// What a reload needs: the command line of the start, its log settings, and the server and logs to change.
pub struct Reloader {
    pub args: ServeArgs,
    pub log: LogSettings,
    pub metrics: Option<SocketAddr>,
    pub server: ReloadHandle,
    pub logs: Logs,
}

impl Reloader {
    pub fn reload(&self) {
        let Settings { config, log, metrics, tls } = match Settings::resolve(&self.args) {
            Ok(settings) => settings,
            Err(e) => return error!(target: OPERATOR, "reload refused, the running configuration stays: {e}"),
        };
        if let Err(e) = self.server.reload(config) {
            return error!(target: OPERATOR, "reload refused, the running configuration stays: {e}");
        }
        if let Some(tls) = tls {
            info!(target: OPERATOR, "reload: TLS certificate {} reread; it {}", errors::path(&tls.cert), tls.expiry());
        }
        let level = self.logs.level();
        if log.level != level {
            // Logged at the level that lets it through: before the change when the level goes down.
            let change = format!(
                "reload: log_level {} → {}",
                level.as_str().to_lowercase(),
                log.level.as_str().to_lowercase()
            );
            if log.level < level {
                info!(target: OPERATOR, "{change}");
                self.logs.set_level(log.level);
            } else {
                self.logs.set_level(log.level);
                info!(target: OPERATOR, "{change}");
            }
        }
        if log.file != self.log.file || log.access != self.log.access {
            warn!(target: OPERATOR, "reload: log_file and access_log need a restart; the logs go where they went");
        }
        if metrics != self.metrics {
            warn!(target: OPERATOR, "reload: metrics needs a restart; the metrics stay where they were");
        }
    }
}
