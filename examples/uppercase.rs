//! Serving your own protocol (an uppercase echo) on poolserver's pool, timeouts and shutdown.

// Run: cargo run --example uppercase [ADDR]     (ADDR defaults to 127.0.0.1:8001)
// Try: printf hello | nc 127.0.0.1 8001         (prints HELLO)

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use log::LevelFilter;
use poolserver::{Config, Handler, Server};

/// Replies with the request, its ASCII letters in upper case.
struct Uppercase;

impl Handler for Uppercase {
    fn reply<'a>(&'a self, request: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Owned(request.to_ascii_uppercase())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = match std::env::args().nth(1) {
        Some(addr) => poolserver::config::parse_bind(&addr)?,
        None => SocketAddr::from(([127, 0, 0, 1], 8001)),
    };
    let config = Config {
        bind,
        // Default workers, queue, timeouts, busy reply; bind_with ignores `mode` and `reply`.
        ..Config::default()
    };
    poolserver::logging::init(LevelFilter::Info, None)?;
    let server = Server::bind_with(config, Arc::new(Uppercase))?;
    poolserver::signals::install(server.shutdown_handle())?;
    let summary = server.run()?;
    log::info!("stopped: {summary}");
    Ok(())
}
