//! `zdeploy example load`, and the demo's load: a load generator for ZeroMQ request/reply services: paced, pipelined requests from one
//! DEALER, counting every reply by its first word and version, and the requests that
//! never got one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Arguments of `zdeploy example load`.
#[derive(clap::Args)]
pub struct Args {
    /// Endpoint to connect to (zgate's frontend, or a service directly).
    #[arg(long)]
    connect: String,
    /// Requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to send.
    #[arg(long, default_value = "10s")]
    duration: zdeploy_api::Duration,
}

/// Sends load for the duration, then prints the counts as JSON (exit 1 if any request had no reply).
pub fn run(args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let load = Load::start(&args.connect, args.rate)?;
    std::thread::sleep(args.duration.get());
    let stats = load.finish();
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(if stats.unanswered == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// Counts so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadStats {
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub answered: u64,
    /// Replies that were errors (first frame starting with `ERR`).
    pub errors: u64,
    /// Replies by their first two words (`OK echo`, `ERR zgate`...) and version.
    pub by_reply: BTreeMap<String, u64>,
    /// Requests without a reply when the load stopped.
    pub unanswered: u64,
    /// When the first error reply from each version arrived (not serialized).
    #[serde(skip)]
    pub first_error: HashMap<String, Instant>,
}

/// A running load generator.
pub struct Load {
    stats: Arc<Mutex<LoadStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts sending `rate` requests a second to `endpoint`.
    pub fn start(endpoint: &str, rate: u32) -> anyhow::Result<Self> {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::DEALER)?;
        sock.set_linger(0)?;
        sock.connect(endpoint)?;
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || drive(&ctx, &sock, rate, &s, &st));
        Ok(Self {
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The counts so far.
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Stops sending, waits for outstanding replies (at most `drain`), returns the totals.
    pub fn finish(mut self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

/// Longest wait for the last replies after the load stops (longer than any gateway timeout).
const DRAIN: Duration = Duration::from_secs(10);

fn drive(
    _ctx: &zmq::Context,
    sock: &zmq::Socket,
    rate: u32,
    stats: &Mutex<LoadStats>,
    stop: &AtomicBool,
) {
    let start = Instant::now();
    // zgate answers every request exactly once, so sent minus answered is what is missing.
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        if let Some(t) = stopped_at
            && (answered >= sent || t.elapsed() > DRAIN)
        {
            break;
        }
        if stopped_at.is_none() {
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while sent < due {
                let body = sent.to_le_bytes();
                if sock
                    .send_multipart([&b""[..], &body[..]], zmq::DONTWAIT)
                    .is_err()
                {
                    break;
                }
                sent += 1;
                stats.lock().expect("stats lock").sent = sent;
            }
        }
        if sock.poll(zmq::POLLIN, 2).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok(frames) = sock.recv_multipart(zmq::DONTWAIT) {
            // [ "", head, echoed request... ]; zgate's own errors are one frame.
            let head = frames
                .get(1)
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .unwrap_or_default();
            answered += 1;
            let words: Vec<&str> = head.split_whitespace().take(3).collect();
            let key = words.join(" ");
            let mut s = stats.lock().expect("stats lock");
            s.answered += 1;
            *s.by_reply.entry(key.clone()).or_default() += 1;
            if head.starts_with("ERR") {
                s.errors += 1;
                s.first_error.entry(key).or_insert_with(Instant::now);
            }
        }
    }
    stats.lock().expect("stats lock").unanswered = sent.saturating_sub(answered);
}
