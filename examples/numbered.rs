//! A conversation with state: the server numbers each client's messages ("1: hello", "2: again", ...), and
//! ends the conversation when a client says "bye". Line framing draws the messages' edges, so lines sent
//! together are each answered, in order.

// Run: cargo run --example numbered [ADDR]      (ADDR defaults to 127.0.0.1:8002)
// Try: printf 'hello\nagain\nbye\n' | nc 127.0.0.1 8002

use std::net::SocketAddr;

use poolserver::{Config, Framing, Handler, Message, Reply, Server};

/// Counts each conversation's messages; the count lives as long as the connection.
struct Numbered;

impl Handler for Numbered {
    type State = u64;

    fn reply<'a>(&'a self, message: &Message<'a>, count: &mut u64) -> Reply<'a> {
        *count += 1;
        // One line, without its end: the server sends each reply followed by a newline.
        let text = String::from_utf8_lossy(message.bytes());
        let reply = Reply::from(format!("{count}: {text}"));
        if text.trim() == "bye" { reply.then_close() } else { reply }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.keep_alive = true;
    config.framing = Framing::Line;
    config.bind = match std::env::args().nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 8002)),
    };
    let server = Server::bind_with(config, Numbered)?;
    println!("listening on {}; Ctrl-C stops", server.local_addr());
    let summary = server.run()?;
    println!("stopped: {summary}");
    Ok(())
}
