//! The server log's lines on stderr and in `log_file`, formatted by simplelog.
//!
//! The server log is lifecycle, warnings and errors: a few lines a second at most (see `throttle`), so the
//! formatting can be simplelog's, which this module sets up: UTC time to the microsecond, the level, the
//! message, and colour (the level only) when stderr is a terminal. simplelog writes each line into a
//! `SinkWriter`, which hands it to a sink instead of to the file descriptor, so that no logging thread ever
//! waits on a terminal, a pipe or a disk.

use std::{
    io::{self, Write},
    sync::Arc,
};

use log::{LevelFilter, Log};
use simplelog::{ConfigBuilder, WriteLogger};
use time::macros::format_description;

use super::sink::Sink;

/// A simplelog logger whose lines go to `sink`; colours them when `colour` (the sink is a terminal).
pub fn logger(sink: Arc<Sink<Vec<u8>>>, colour: bool) -> Box<dyn Log> {
    let config = ConfigBuilder::new()
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_write_log_enable_colors(colour)
        .build();
    // The router decides what reaches this logger; it passes everything on.
    WriteLogger::new(LevelFilter::Trace, config, SinkWriter { sink, line: Vec::new() })
}

/// Collects what simplelog writes for one record (it writes a line in several pieces) and hands the whole
/// line to the sink when the router flushes after the record.
struct SinkWriter {
    sink: Arc<Sink<Vec<u8>>>,
    line: Vec<u8>,
}

impl Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            let lines = self.line.iter().filter(|&&b| b == b'\n').count() as u64;
            self.sink.push(self.line.len(), lines.max(1), |batch| batch.extend_from_slice(&self.line));
            self.line.clear();
        }
        Ok(())
    }
}
