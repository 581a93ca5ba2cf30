//! poolserver: the tutorial's one-client-at-a-time TCP server, grown into a thread-pool server that holds
//! many conversations at once on a fixed number of threads.
//!
//! The shape is deliberately simple. The main thread blocks waiting for connections and hands each accepted
//! one to a fixed pool of worker threads through a queue (a crossbeam channel whose length is checked
//! against `queue` at each send); a worker reads one message, writes the reply, and hands the connection
//! on. What keeps that shape from falling over:
//!
//! - a connection that is waiting on its client (for its first or next message, for room to write the rest
//!   of a reply, for its leftover input to drain) never occupies a worker: it waits in the *waiting room*,
//!   one epoll for all of them, until its client is ready or its deadline passes;
//! - a message that finds every worker busy and the queue full gets `busy_reply` at once instead of hanging.
//!
//! With `keep_alive` a connection is a conversation: every message gets a reply until the client hangs up,
//! as in the tutorial's multitasking server. The protocol is a [`Handler`]: [`Ack`] and [`Echo`] ship with
//! the crate, a closure is one, and a handler can keep state for each conversation (this one serves on
//! 127.0.0.1:8000 until the process is stopped; [`Server`] and [`Handler`] have examples that run whole):
//!
//! ```no_run
//! use poolserver::{Config, Handler, Message, Reply, Server};
//!
//! /// Numbers each client's messages: "1: hello", "2: again", ...
//! struct Numbered;
//!
//! impl Handler for Numbered {
//!     type State = u64;
//!
//!     fn reply<'a>(&'a self, message: &Message<'a>, count: &mut u64) -> Reply<'a> {
//!         *count += 1;
//!         Reply::from(format!("{count}: {}", String::from_utf8_lossy(message.bytes())))
//!     }
//! }
//!
//! let mut config = Config::default();
//! config.keep_alive = true;
//! let server = Server::bind_with(config, Numbered)?;
//! println!("listening on {}", server.local_addr());
//! let summary = server.run()?;
//! # Ok::<(), poolserver::Error>(())
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod books;
mod cidr;
pub mod config;
mod conn;
mod error;
mod framing;
mod handler;
mod idle;
mod limits;
mod listener;
mod log_gate;
mod monitor;
mod poller;
mod pool;
mod preview;
mod proxy;
mod room;
mod server;
mod service;
mod stats;
mod stop;
mod sys;
mod systemd;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;

pub use cidr::{Cidr, ParseCidrError};
pub use config::{Config, Framing, Mode};
pub use error::Error;
pub use framing::{Decoded, TooLong};
pub use handler::{Ack, Builtin, Echo, Handler, Message, Reply};
pub use monitor::{Monitor, Snapshot};
/// The rustls this crate serves TLS with, for a `rustls::ServerConfig` made by hand ([`TlsConfig`]).
#[cfg(feature = "tls")]
pub use rustls;
pub use server::{ReloadHandle, Server, ShutdownHandle};
pub use stats::{ServiceHistogram, Summary};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;
