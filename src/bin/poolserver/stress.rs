//! `poolserver stress`: many clients at once, each looping the tutorial's five steps (or holding
//! conversations), with every reply checked, every connection's or message's latency in an HDR histogram
//! and every failure counted by kind.
//!
//! Clients are plain blocking threads, like the server's workers: on two cores this keeps the load generator
//! cheap enough that it can push the server instead of itself. Three shapes: one-shot connections (the
//! single-client tutorial), conversations of `--messages N` back to back (the multitasking tutorial), and
//! `--held K` conversations kept open all run, each sending at a set interval, spread over the threads.
//! Optional idle connections send nothing for the whole run, to show how the server treats silent clients.
//!
//! With `--framing line|length` every message goes out with its edge and every reply is checked with its
//! edge (the plan holds them framed, so the lockstep paths are the same); `--pipeline K` keeps K messages
//! of a conversation in flight, sending the next as each reply comes.
//!
//! A run against a server in the other mode (one-shot clients against `--keep-alive`, conversations against
//! a one-shot server) says so on stderr at its first such failure, and the report says it again.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{self, Read},
    net::TcpStream,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use poolserver::{Decoded, Framing};
use serde::Serialize;

use crate::{
    cli::StressArgs,
    client::{Conversation, Exchange, Failure, FailureKind},
    tls_client::TlsClient,
};

/// No run goes on longer than this, whatever it was asked.
pub const MAX_RUN: Duration = Duration::from_secs(3600);
/// How long a run lasts when neither `--requests` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many connections in total.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub exchange: Exchange,
    pub clients: usize,
    pub limit: Limit,
    /// The message, the expected reply and the busy reply as they cross the wire: with `framing`'s edges.
    pub message: Vec<u8>,
    pub expect: Vec<u8>,
    /// A reply equal to this counts as `busy`, not `wrong_reply`.
    pub busy: Vec<u8>,
    pub framing: Framing,
    /// Messages in flight on one conversation; 1 is lockstep.
    pub pipeline: u64,
    pub idle: usize,
    /// Messages per connection; 1 is the tutorial's one-shot client.
    pub messages: u64,
    /// Conversations held open all run, each sending every `interval`.
    pub held: usize,
    pub interval: Duration,
}

impl Plan {
    /// The plan `poolserver stress` was asked for; the error is one line for stderr.
    pub fn from_args(args: StressArgs) -> Result<Plan, String> {
        if args.held > 0 && args.requests.is_some() {
            return Err("--held runs for a --duration, not a number of --requests".to_owned());
        }
        let limit = match (args.requests, args.duration) {
            (Some(n), _) => Limit::Requests(n),
            (None, Some(d)) if d > MAX_RUN => return Err(format!("--duration may be at most {MAX_RUN:?}")),
            (None, duration) => Limit::Duration(duration.unwrap_or(DEFAULT_DURATION)),
        };
        let framing = Framing::from(args.framing);
        if args.pipeline > 1 && framing == Framing::Raw {
            return Err("--pipeline needs --framing line or length: with raw framing the server answers \
                        messages that arrive together as one"
                .to_owned());
        }
        if args.pipeline > 1 && (args.messages < 2 || args.held > 0) {
            return Err("--pipeline needs conversations of --messages N (N > 1), not --held ones".to_owned());
        }
        if framing == Framing::Line && [&args.message, &args.expect].iter().any(|text| text.contains('\n')) {
            return Err(
                "with --framing line, --message and --expect cannot hold a newline: it ends a message"
                    .to_owned(),
            );
        }
        let framed = |text: String| {
            let mut wire = Vec::with_capacity(text.len() + 4);
            framing.encode(text.as_bytes(), &mut wire);
            wire
        };
        let expect = framed(args.expect);
        let busy = framed(args.busy_reply);
        Ok(Plan {
            // Room for the expected reply and then some, so a wrong reply is seen whole enough to report.
            exchange: Exchange {
                addr: args.addr,
                timeout: args.timeout,
                max_reply: expect.len().max(busy.len()) + 64 * 1024,
                // A loaded server may be slow to close; only a whole timeout of silence after the reply
                // counts as kept open.
                quiet: args.timeout,
                tls: TlsClient::from_args(&args.tls, args.addr)?,
            },
            clients: args.clients as usize,
            limit,
            message: framed(args.message),
            expect,
            busy,
            framing,
            pipeline: args.pipeline,
            idle: args.idle as usize,
            messages: args.messages,
            held: args.held as usize,
            interval: args.interval,
        })
    }
}

/// What happened to the idle connections.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IdleReport {
    pub held: usize,
    pub closed_by_server: usize,
    pub reset_by_server: usize,
    pub got_data: usize,
    pub still_open: usize,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub plan: Plan,
    /// Connections (or conversations) that got every reply right.
    pub ok: u64,
    /// Messages answered with the expected reply.
    pub messages: u64,
    pub errors: BTreeMap<FailureKind, u64>,
    /// The first message seen for each kind of error.
    pub first_errors: BTreeMap<FailureKind, String>,
    pub elapsed: Duration,
    /// Microseconds from connect to the server's close for every one-shot connection that got a reply; from
    /// send to the whole reply for every message of a conversation.
    pub latency: Histogram<u64>,
    pub idle: IdleReport,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn conns_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn conversations(&self) -> bool {
        self.plan.messages > 1 || self.plan.held > 0
    }

    fn percentile(&self, q: f64) -> u64 {
        if self.latency.is_empty() { 0 } else { self.latency.value_at_quantile(q) }
    }

    /// The report for scripts: one JSON object.
    pub fn to_json(&self) -> String {
        let errors: BTreeMap<&str, u64> =
            ALL_KINDS.iter().map(|kind| (kind.name(), self.errors.get(kind).copied().unwrap_or(0))).collect();
        let first_errors: BTreeMap<&str, &str> =
            self.first_errors.iter().map(|(kind, message)| (kind.name(), message.as_str())).collect();
        let json = serde_json::json!({
            "addr": self.plan.exchange.addr.to_string(),
            "clients": self.plan.clients,
            "framing": self.plan.framing.to_string(),
            "pipeline": self.plan.pipeline,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "messages": self.messages,
            "failed": self.failed(),
            "errors": errors,
            "first_errors": first_errors,
            "conns_per_sec": self.conns_per_sec(),
            "messages_per_sec": self.messages_per_sec(),
            "latency_per": if self.conversations() { "message" } else { "connection" },
            "latency_us": {
                "p50": self.percentile(0.5),
                "p90": self.percentile(0.9),
                "p99": self.percentile(0.99),
                "p999": self.percentile(0.999),
                "max": self.latency.max(),
            },
            "idle": self.idle,
        });
        json.to_string()
    }

    /// The report for people: a short table.
    pub fn to_table(&self) -> String {
        let us = |v: u64| format!("{:.1?}", Duration::from_micros(v));
        let framing = match (self.plan.framing, self.plan.pipeline) {
            (Framing::Raw, _) => String::new(),
            (framing, 1) => format!(", {framing} framing"),
            (framing, k) => format!(", {framing} framing, pipeline {k}"),
        };
        let mut out = format!(
            "target       {} ({} clients{framing}, {:.2} s)\nconnections  {} ok, {} failed\nthroughput   {:.0} conn/s\n",
            self.plan.exchange.addr,
            self.plan.clients,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.failed(),
            self.conns_per_sec()
        );
        if self.conversations() {
            out +=
                &format!("messages     {} answered, {:.0} msg/s\n", self.messages, self.messages_per_sec());
        }
        out += &format!(
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            us(self.percentile(0.5)),
            us(self.percentile(0.9)),
            us(self.percentile(0.99)),
            us(self.percentile(0.999)),
            us(self.latency.max())
        );
        if self.errors.is_empty() {
            out += "errors       none\n";
        } else {
            for (kind, count) in &self.errors {
                let first = self.first_errors.get(kind).map(String::as_str).unwrap_or("");
                out += &format!("errors       {} {count} (first: {first})\n", kind.name());
            }
        }
        // Only when nothing was served: see `ModeHint`.
        if self.ok == 0 {
            for hint in self.errors.keys().filter_map(|kind| mode_hint(*kind)) {
                out += &format!("hint         {hint}\n");
            }
        }
        if self.idle.held > 0 {
            out += &format!(
                "idle         {} held: {} closed by the server, {} reset, {} got data, {} still open\n",
                self.idle.held,
                self.idle.closed_by_server,
                self.idle.reset_by_server,
                self.idle.got_data,
                self.idle.still_open
            );
        }
        out
    }
}

const ALL_KINDS: [FailureKind; 10] = [
    FailureKind::Refused,
    FailureKind::Reset,
    FailureKind::Timeout,
    FailureKind::WrongReply,
    FailureKind::Busy,
    FailureKind::AddrNotAvailable,
    FailureKind::KeptOpen,
    FailureKind::CutShort,
    FailureKind::Ended,
    FailureKind::Other,
];

/// What to do about a failure that means the server runs in the other mode.
fn mode_hint(kind: FailureKind) -> Option<&'static str> {
    match kind {
        FailureKind::KeptOpen => Some(
            "the server holds conversations (--keep-alive): give stress --messages N (N > 1) or --held K, \
             or start the server without --keep-alive",
        ),
        FailureKind::CutShort => Some(
            "the server answers one message per connection (no --keep-alive): run stress without --messages \
             and --held, or start the server with --keep-alive",
        ),
        _ => None,
    }
}

/// One client thread's counts, merged into the report at the end.
struct Tally<'a> {
    ok: u64,
    messages: u64,
    errors: BTreeMap<FailureKind, u64>,
    first_errors: BTreeMap<FailureKind, String>,
    latency: Histogram<u64>,
    mode: &'a ModeHint,
}

/// Shared by the run's threads: whether any client was served whole, and whether the server's mode has been
/// pointed out on stderr yet. A failure that looks like the other mode only means it while nothing was
/// served: under a stop or a cap, some conversations end early while others were whole.
#[derive(Default)]
struct ModeHint {
    served: AtomicBool,
    told: AtomicBool,
}

impl<'a> Tally<'a> {
    fn new(mode: &'a ModeHint) -> Tally<'a> {
        Tally {
            ok: 0,
            messages: 0,
            errors: BTreeMap::new(),
            first_errors: BTreeMap::new(),
            // 1 µs to 10 minutes at three significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            mode,
        }
    }

    /// A client served whole.
    fn served(&mut self) {
        self.ok += 1;
        if !self.mode.served.load(Relaxed) {
            self.mode.served.store(true, Relaxed);
        }
    }

    /// Sends one message of a conversation and checks its reply; false when the conversation is over.
    fn ask(&mut self, plan: &Plan, conversation: &mut Conversation, reply: &mut Vec<u8>) -> bool {
        let started = Instant::now();
        match conversation.ask(&plan.message, plan.expect.len(), reply) {
            Ok(()) => {
                let _ = self.latency.record(started.elapsed().as_micros().max(1) as u64);
                let right = self.check(plan, reply);
                if right {
                    self.messages += 1;
                }
                right
            }
            Err(failure) => {
                self.fail(failure);
                false
            }
        }
    }

    /// Ends a conversation politely and counts it ok when the server closed cleanly and sent nothing more.
    fn close(&mut self, conversation: Conversation) {
        match conversation.close() {
            Ok(rest) if rest.is_empty() => self.served(),
            Ok(rest) => self.fail(Failure {
                kind: FailureKind::WrongReply,
                detail: format!("{} B more than the replies before the close", rest.len()),
            }),
            Err(failure) => self.fail(failure),
        }
    }

    /// Whether `reply` is the expected one; counts it as busy or wrong otherwise.
    fn check(&mut self, plan: &Plan, reply: &[u8]) -> bool {
        if reply == plan.expect {
            return true;
        }
        if reply == plan.busy {
            self.fail(Failure { kind: FailureKind::Busy, detail: "the server answered busy".to_owned() });
        } else {
            let shown = String::from_utf8_lossy(&reply[..reply.len().min(64)]).escape_debug().to_string();
            self.fail(Failure {
                kind: FailureKind::WrongReply,
                detail: format!("unexpected reply \"{shown}\""),
            });
        }
        false
    }

    fn fail(&mut self, failure: Failure) {
        if let Some(hint) = mode_hint(failure.kind)
            && !self.mode.served.load(Relaxed)
            && !self.mode.told.swap(true, Relaxed)
        {
            eprintln!("poolserver stress: {hint}");
        }
        *self.errors.entry(failure.kind).or_default() += 1;
        self.first_errors.entry(failure.kind).or_insert(failure.detail);
    }

    fn merge(&mut self, other: Tally<'_>) {
        self.ok += other.ok;
        self.messages += other.messages;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, message) in other.first_errors {
            self.first_errors.entry(kind).or_insert(message);
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(other.latency);
    }
}

/// Runs `plan`, showing a progress bar on stderr when `progress` is set.
pub fn run(plan: Plan, progress: bool) -> Report {
    let idle = open_idle(&plan);
    let started = Instant::now();
    let deadline = started
        + match plan.limit {
            Limit::Duration(d) => d.min(MAX_RUN),
            Limit::Requests(_) => MAX_RUN,
        };
    let issued = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let mode = ModeHint::default();

    let mut total = Tally::new(&mode);
    thread::scope(|scope| {
        let clients: Vec<_> = (0..plan.clients)
            .map(|thread| {
                let (plan, issued, done, mode) = (&plan, &issued, &done, &mode);
                scope.spawn(move || {
                    let tally = Tally::new(mode);
                    if plan.held > 0 {
                        hold_conversations(plan, thread, deadline, done, tally)
                    } else {
                        client_loop(plan, deadline, issued, done, tally)
                    }
                })
            })
            .collect();
        if progress {
            scope.spawn(|| show_progress(&plan, started, &done, &finished));
        }
        for client in clients {
            if let Ok(tally) = client.join() {
                total.merge(tally);
            }
        }
        finished.store(true, Relaxed);
    });
    let elapsed = started.elapsed();
    let mut report = Report {
        ok: total.ok,
        messages: total.messages,
        errors: total.errors,
        first_errors: total.first_errors,
        elapsed,
        latency: total.latency,
        idle: IdleReport::default(),
        plan,
    };
    report.idle = check_idle(idle, &mut report);
    report
}

fn client_loop<'a>(
    plan: &Plan,
    deadline: Instant,
    issued: &AtomicU64,
    done: &AtomicU64,
    mut tally: Tally<'a>,
) -> Tally<'a> {
    let mut reply = Vec::with_capacity(plan.expect.len().max(64));
    loop {
        if let Limit::Requests(n) = plan.limit
            && issued.fetch_add(1, Relaxed) >= n
        {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        if plan.messages > 1 && plan.pipeline > 1 {
            converse_pipelined(plan, deadline, &mut tally, &mut reply);
            done.fetch_add(1, Relaxed);
            continue;
        }
        if plan.messages > 1 {
            converse(plan, plan.messages, deadline, &mut tally, &mut reply);
            done.fetch_add(1, Relaxed);
            continue;
        }
        let started = Instant::now();
        match plan.exchange.run(&plan.message, &mut reply) {
            Ok(()) => {
                let _ = tally.latency.record(started.elapsed().as_micros().max(1) as u64);
                if tally.check(plan, &reply) {
                    tally.served();
                    tally.messages += 1;
                }
            }
            Err(failure) => tally.fail(failure),
        }
        done.fetch_add(1, Relaxed);
    }
    tally
}

/// One conversation of `messages` lockstep messages, then a clean close; cut short (and still closed
/// cleanly) when the run's `deadline` comes first, so that a long conversation cannot overrun the run.
fn converse(plan: &Plan, messages: u64, deadline: Instant, tally: &mut Tally<'_>, reply: &mut Vec<u8>) {
    let mut conversation =
        match Conversation::open(plan.exchange.addr, plan.exchange.timeout, plan.exchange.tls.as_ref()) {
            Ok(conversation) => conversation,
            Err(failure) => return tally.fail(failure),
        };
    for _ in 0..messages {
        if Instant::now() >= deadline {
            break;
        }
        if !tally.ask(plan, &mut conversation, reply) {
            return;
        }
    }
    tally.close(conversation);
}

/// One conversation of `plan.messages` messages with up to `plan.pipeline` of them in flight: the first
/// `pipeline` go out in one write, and as replies come back (each checked, its latency counted from its
/// message's send) as many more go out in one write. When the run's `deadline` comes, no more are sent and
/// those in flight are waited for; then a clean close.
fn converse_pipelined(plan: &Plan, deadline: Instant, tally: &mut Tally<'_>, inbox: &mut Vec<u8>) {
    let mut conversation =
        match Conversation::open(plan.exchange.addr, plan.exchange.timeout, plan.exchange.tls.as_ref()) {
            Ok(conversation) => conversation,
            Err(failure) => return tally.fail(failure),
        };
    inbox.clear();
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(plan.pipeline as usize);
    let mut batch = Vec::new();
    let mut sent = 0;
    loop {
        let room = (plan.pipeline - in_flight.len() as u64).min(plan.messages - sent);
        if room > 0 && Instant::now() < deadline {
            batch.clear();
            for _ in 0..room {
                batch.extend_from_slice(&plan.message);
            }
            if let Err(failure) = conversation.send(&batch) {
                return tally.fail(failure);
            }
            let now = Instant::now();
            in_flight.extend((0..room).map(|_| now));
            sent += room;
        }
        if in_flight.is_empty() {
            break;
        }
        match conversation.receive(inbox) {
            Ok(0) if inbox.is_empty() => return tally.fail(conversation.closed()),
            // A reply cut off by the close: the busy reply, or a wrong one.
            Ok(0) => {
                tally.check(plan, inbox);
                return;
            }
            Ok(_) => {}
            Err(failure) => return tally.fail(failure),
        }
        let (mut taken, mut replies) = (0, 0);
        loop {
            match plan.framing.decode(&inbox[taken..], plan.exchange.max_reply) {
                Decoded::Message { consumed, .. } => {
                    let reply = &inbox[taken..taken + consumed];
                    if let Some(asked) = in_flight.pop_front() {
                        let _ = tally.latency.record(asked.elapsed().as_micros().max(1) as u64);
                    }
                    if !tally.check(plan, reply) {
                        return;
                    }
                    tally.messages += 1;
                    (taken, replies) = (taken + consumed, replies + 1);
                }
                Decoded::NeedMore => break,
                Decoded::TooLong(_) => {
                    return tally.fail(Failure {
                        kind: FailureKind::WrongReply,
                        detail: format!("a reply longer than {} bytes", plan.exchange.max_reply),
                    });
                }
            }
        }
        inbox.drain(..taken);
        conversation.count_replies(replies);
    }
    tally.close(conversation);
}

/// One thread's share of the `--held` conversations: opened at the start, each sending one message every
/// `interval` (their first sends spread over one interval), closed cleanly at the end. A conversation that
/// fails is counted and dropped.
fn hold_conversations<'a>(
    plan: &Plan,
    thread: usize,
    deadline: Instant,
    done: &AtomicU64,
    mut tally: Tally<'a>,
) -> Tally<'a> {
    let mut reply = Vec::with_capacity(plan.expect.len().max(64));
    let share = (thread..plan.held).step_by(plan.clients).count();
    let started = Instant::now();
    let mut held: VecDeque<(Instant, Conversation)> = VecDeque::with_capacity(share);
    for i in 0..share {
        match Conversation::open(plan.exchange.addr, plan.exchange.timeout, plan.exchange.tls.as_ref()) {
            Ok(conversation) => {
                held.push_back((started + plan.interval.mul_f64(i as f64 / share as f64), conversation))
            }
            Err(failure) => tally.fail(failure),
        }
    }
    while !held.is_empty() {
        // Sends are due in the order the conversations sit in; each goes to the back when it is served.
        let due = held[0].0;
        if due >= deadline {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let Some((_, mut conversation)) = held.pop_front() else { break };
        if tally.ask(plan, &mut conversation, &mut reply) {
            held.push_back((due + plan.interval, conversation));
        }
        done.fetch_add(1, Relaxed);
    }
    for (_, conversation) in held {
        tally.close(conversation);
    }
    tally
}

/// Opens the idle connections before the clients start; failing to open one is counted as an error.
fn open_idle(plan: &Plan) -> Vec<io::Result<TcpStream>> {
    (0..plan.idle).map(|_| TcpStream::connect_timeout(&plan.exchange.addr, plan.exchange.timeout)).collect()
}

/// Looks at each idle connection without waiting: did the server close it, reset it, or leave it open?
fn check_idle(idle: Vec<io::Result<TcpStream>>, report: &mut Report) -> IdleReport {
    let mut result = IdleReport::default();
    for connection in idle {
        let stream = match connection {
            Ok(stream) => stream,
            Err(e) => {
                let detail = format!("cannot open an idle connection to {}: {e}", report.plan.exchange.addr);
                *report.errors.entry(FailureKind::Other).or_default() += 1;
                report.first_errors.entry(FailureKind::Other).or_insert(detail);
                continue;
            }
        };
        result.held += 1;
        let _ = stream.set_nonblocking(true);
        match (&stream).read(&mut [0; 64]) {
            Ok(0) => result.closed_by_server += 1,
            Ok(_) => result.got_data += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => result.still_open += 1,
            Err(_) => result.reset_by_server += 1,
        }
    }
    result
}

/// What the progress bar counts: one-shot connections, conversations, or (with `--held`) messages.
fn unit(plan: &Plan) -> &'static str {
    if plan.held > 0 {
        "messages"
    } else if plan.messages > 1 {
        "conversations"
    } else {
        "connections"
    }
}

/// The bar's length, position and label after `elapsed` with `count` done: a `--requests` run fills with
/// the count, a `--duration` run with the time (in milliseconds).
fn progress(plan: &Plan, elapsed: Duration, count: u64) -> (u64, u64, String) {
    let rate = count as f64 / elapsed.as_secs_f64().max(1e-3);
    let label = format!("{count} {} ({rate:.0}/s)", unit(plan));
    match plan.limit {
        Limit::Requests(n) => (n, count.min(n), label),
        Limit::Duration(d) => {
            let total = d.min(MAX_RUN).as_millis() as u64;
            (total, (elapsed.as_millis() as u64).min(total), label)
        }
    }
}

fn show_progress(plan: &Plan, started: Instant, done: &AtomicU64, finished: &AtomicBool) {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while !finished.load(Relaxed) {
        let (length, position, label) = progress(plan, started.elapsed(), done.load(Relaxed));
        bar.set_length(length);
        bar.set_position(position);
        bar.set_message(label);
        thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn plan(limit: Limit, messages: u64, held: usize) -> Plan {
        Plan {
            exchange: Exchange {
                addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
                timeout: Duration::from_secs(5),
                max_reply: 64,
                quiet: Duration::from_secs(5),
                tls: None,
            },
            clients: 1,
            limit,
            message: b"hello".to_vec(),
            expect: b"ok".to_vec(),
            busy: b"busy".to_vec(),
            framing: Framing::Raw,
            pipeline: 1,
            idle: 0,
            messages,
            held,
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_duration_run_fills_its_bar_with_time() {
        let run = plan(Limit::Duration(Duration::from_secs(10)), 1, 0);
        let (length, position, label) = progress(&run, Duration::from_secs(4), 400);
        assert_eq!((length, position), (10_000, 4_000));
        assert_eq!(label, "400 connections (100/s)");
        assert_eq!(progress(&run, Duration::from_secs(11), 0).1, 10_000, "never past the end");
    }

    #[test]
    fn a_requests_run_fills_its_bar_with_the_count() {
        let (length, position, _) = progress(&plan(Limit::Requests(50), 1, 0), Duration::from_secs(1), 20);
        assert_eq!((length, position), (50, 20));
    }

    #[test]
    fn the_bar_names_what_it_counts() {
        let label =
            |messages, held| progress(&plan(Limit::Requests(9), messages, held), Duration::from_secs(1), 3).2;
        assert_eq!(label(1, 0), "3 connections (3/s)");
        assert_eq!(label(5, 0), "3 conversations (3/s)");
        assert_eq!(label(1, 100), "3 messages (3/s)");
    }
}
