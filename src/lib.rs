//! poolserver: the tutorial's one-client-at-a-time TCP server, grown into a thread-pool server that serves
//! many clients at once.
//!
//! The shape is deliberately simple. The main thread blocks waiting for connections and hands each accepted
//! one over a bounded channel to a fixed pool of worker threads; a worker reads the request once, writes the
//! reply and closes. Two things keep that simple shape from falling over:
//!
//! - a connection whose request has not arrived yet never occupies a worker: it waits in the *waiting room*
//!   (one epoll thread) until it becomes readable or its `read_timeout` runs out;
//! - when every worker is busy and the queue is full, the client gets `busy_reply` at once instead of
//!   hanging.
//!
//! The protocol itself is a [`Handler`]: [`Ack`] and [`Echo`] ship with the crate, and a library user can
//! serve their own on the same pool, timeouts and shutdown:
//!
//! ```no_run
//! use std::{borrow::Cow, sync::Arc};
//! use poolserver::{Config, Handler, Server};
//!
//! struct Shout;
//! impl Handler for Shout {
//!     fn reply<'a>(&'a self, request: &'a [u8]) -> Cow<'a, [u8]> {
//!         Cow::Owned(request.to_ascii_uppercase())
//!     }
//! }
//!
//! let server = Server::bind_with(Config::default(), Arc::new(Shout))?;
//! println!("listening on {}", server.local_addr());
//! let summary = server.run()?;
//! # Ok::<(), poolserver::Error>(())
//! ```

pub mod cli;
pub mod client;
pub mod config;
mod conn;
mod error;
pub mod handler;
mod listener;
pub mod logging;
mod pool;
mod preview;
mod proxy;
mod server;
pub mod signals;
mod stats;
pub mod stress;
mod sys;
mod systemd;
mod waiting;

pub use config::{Config, Mode};
pub use error::Error;
pub use handler::{Ack, Echo, Handler};
pub use server::{Server, ShutdownHandle};
pub use stats::Summary;
