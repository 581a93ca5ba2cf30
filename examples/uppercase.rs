//! Serving your own protocol (an uppercase echo) on poolserver's pool, waiting room and shutdown: a closure
//! is a handler.

// Run: cargo run --example uppercase [ADDR]     (ADDR defaults to 127.0.0.1:8001)
// Try: printf hello | nc 127.0.0.1 8001         (prints HELLO)

use std::net::SocketAddr;

use poolserver::{Config, Message, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.bind = match std::env::args().nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 8001)),
    };
    let server = Server::bind_with(config, |message: &Message<'_>| message.bytes().to_ascii_uppercase())?;
    println!("listening on {}; Ctrl-C stops", server.local_addr());
    let summary = server.run()?;
    println!("stopped: {summary}");
    Ok(())
}
