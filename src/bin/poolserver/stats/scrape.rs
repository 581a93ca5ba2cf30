//! One scrape of a server's `/metrics`, as Prometheus would make it, read into numbers by name.
//!
//! Only what `poolserver stats` needs: an HTTP/1.1 GET with every wait bounded, and the sample lines of the
//! Prometheus text format (`name{labels} value`), comments skipped.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// The most a metrics page may be; poolserver's is about 4 KiB.
const MAX_BODY: u64 = 1 << 20;

/// The samples of one scrape, keyed by name with labels (`poolserver_service_seconds_bucket{le="0.001"}`),
/// and when it was taken.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// A sample's value; a missing one is an error naming it (the server may be an older poolserver).
    pub fn get(&self, name: &str) -> Result<f64, String> {
        self.samples.get(name).copied().ok_or_else(|| format!("the metrics have no {name}"))
    }

    /// The histogram `name`'s buckets: (upper bound, cumulative count), in order, +Inf last.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(key, &count)| {
                let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// GETs `http://addr/metrics`; each connect, read and write bounded by `timeout`, the whole by twice that.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Result<Scrape, String> {
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {addr}: {e}");
    let deadline = Instant::now() + 2 * timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connect to", e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| fail("set a timeout on", e))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| fail("set a timeout on", e))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| fail("send to", e))?;
    let mut response = Vec::new();
    let mut buf = [0; 8192];
    loop {
        if Instant::now() > deadline {
            return Err(format!("no complete answer from {addr} within {:?}", 2 * timeout));
        }
        match stream.read(&mut buf).map_err(|e| fail("read from", e))? {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
        if response.len() as u64 > MAX_BODY {
            return Err(format!("{addr} sent more than {MAX_BODY} bytes; is it poolserver's --metrics?"));
        }
    }
    let at = Instant::now();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr} did not answer in HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("{addr} answered {status:?}; is it poolserver's --metrics address?"));
    }
    Ok(Scrape { at, samples: parse(body) })
}

/// The sample lines of the Prometheus text format; anything else is skipped.
fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                other => other.parse().ok()?,
            };
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_buckets_are_read_by_name() {
        let body = "# HELP x y\n# TYPE a_total counter\na_total 7\nh_bucket{le=\"0.5\"} 2\n\
                    h_bucket{le=\"+Inf\"} 3\nh_bucket{le=\"0.1\"} 1\nbroken\n";
        let scrape = Scrape { at: Instant::now(), samples: parse(body) };
        assert_eq!(scrape.get("a_total"), Ok(7.0));
        assert!(scrape.get("b").unwrap_err().contains("no b"));
        assert_eq!(scrape.buckets("h"), vec![(0.1, 1.0), (0.5, 2.0), (f64::INFINITY, 3.0)]);
    }

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        proptest! {
            #[test]
            fn random_pages_never_panic(text in any::<String>()) {
                let _ = parse(&text);
            }

            /// Sample lines read back by name, between comments and lines that are not samples.
            #[test]
            fn samples_read_back(samples in vec(("[a-z_]{1,20}(\\{le=\"[0-9.]{1,5}\"\\})?", any::<u32>()), 0..20)) {
                let body: String = samples.iter().map(|(name, value)| format!("# HELP {name} x\n{name} {value}\nnot a sample\n")).collect();
                let read = parse(&body);
                for (name, value) in samples.iter().rev() {
                    // The last of a repeated name wins; look each name up where it was last written.
                    let last = samples.iter().rev().find(|(n, _)| n == name).map(|(_, v)| f64::from(*v));
                    prop_assert_eq!(read.get(name).copied(), last, "{} {}", name, value);
                }
            }
        }
    }
}
