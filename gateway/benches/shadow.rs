//! What shadow traffic costs the client: the p99 a client sees at 1,000 requests/s through
//! zgate with shadowing off and with every request copied to the canary, side by side.
//!
//! `cargo bench -p zdeploy-gateway --bench shadow` runs two gateways in front of the same
//! echo services (one copying 100% of stable's requests to the canary and comparing the
//! replies), paces a REQ client at 1,000 requests/s through each in alternating rounds,
//! and prints p50/p99 of each and the ratio of the p99s (the bound is 1.10).

use std::thread;
use std::time::{Duration, Instant};

use zdeploy_api::Weight;
use zdeploy_api::shadow::ShadowCopy;
use zdeploy_gateway::{Gateway, GatewayConfig, PoolConfig};

const RATE: u32 = 1_000;
const PER_ROUND: usize = 5_000;
/// Alternating rounds: 6, or 1 with `ZDEPLOY_BENCH_QUICK` (how ./tests/run keeps it working).
fn rounds() -> usize {
    match std::env::var_os("ZDEPLOY_BENCH_QUICK") {
        Some(_) => 1,
        None => 6,
    }
}

/// A ROUTER that echoes every message whole.
fn echo_server(ctx: &zmq::Context) -> String {
    let s = ctx.socket(zmq::ROUTER).unwrap();
    s.bind("tcp://127.0.0.1:*").unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    thread::spawn(move || {
        while let Ok(frames) = s.recv_multipart(0) {
            if s.send_multipart(frames, 0).is_err() {
                return;
            }
        }
    });
    ep
}

/// A gateway over a stable and a canary pool, all requests to stable, copying `shadow`.
fn gateway(
    rt: &tokio::runtime::Runtime,
    stable: &str,
    canary: &str,
    shadow: Option<ShadowCopy>,
) -> Gateway {
    let pool = |name: &str, ep: &str| PoolConfig {
        name: name.into(),
        endpoints: vec![ep.into()],
    };
    let mut config = GatewayConfig::new(
        "bench",
        "tcp://127.0.0.1:*",
        vec![pool("stable", stable), pool("canary", canary)],
    );
    config.shadow = shadow;
    rt.block_on(Gateway::start(config)).expect("zgate starts")
}

/// p50 and p99 of `PER_ROUND` REQ round trips sent on a 1 ms schedule.
fn paced(ctx: &zmq::Context, endpoint: &str) -> (Duration, Duration) {
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_rcvtimeo(10_000).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    let payload = [7u8; 64];
    let gap = Duration::from_secs(1) / RATE;
    let mut lat = Vec::with_capacity(PER_ROUND);
    let start = Instant::now();
    for i in 0..PER_ROUND {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        s.send(&payload[..], 0).unwrap();
        s.recv_multipart(0).expect("a reply");
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// The value of the series of `name` whose labels contain `label`.
fn series(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let ctx = zmq::Context::new();
    let (stable, canary) = (echo_server(&ctx), echo_server(&ctx));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let off = gateway(&rt, &stable, &canary, None);
    let copy = ShadowCopy {
        pool: "canary".into(),
        percent: Weight::FULL,
    };
    let on = gateway(&rt, &stable, &canary, Some(copy));
    thread::sleep(Duration::from_millis(300));
    let paths = [
        ("shadow off", off.frontend()),
        ("shadow 100%", on.frontend()),
    ];
    println!(
        "shadow benchmark: {RATE} req/s, {PER_ROUND} requests per round, {} alternating rounds, median round shown",
        rounds()
    );
    let mut p50s = [Vec::new(), Vec::new()];
    let mut p99s = [Vec::new(), Vec::new()];
    for round in 0..rounds() {
        for (i, (name, ep)) in paths.iter().enumerate() {
            eprint!("  round {}: {name}...\r", round + 1);
            let (p50, p99) = paced(&ctx, ep);
            p50s[i].push(p50);
            p99s[i].push(p99);
        }
    }
    eprintln!();
    // Measured what it names only if every request was copied and its copy judged a match.
    let sent = (rounds() * PER_ROUND) as f64;
    let on_metrics = on.encode_metrics();
    let matched = series(
        &on_metrics,
        "zgate_shadow_total",
        "pool=\"canary\",outcome=\"match\"",
    );
    let off_copies = series(
        &off.encode_metrics(),
        "zgate_shadow_total",
        "pool=\"canary\",outcome=\"match\"",
    );
    assert_eq!(matched, sent, "copies judged a match with shadowing on");
    assert_eq!(off_copies, 0.0, "copies with shadowing off");
    let p50s = p50s.map(median);
    let p99s = p99s.map(median);
    println!("  {:<12} {:>10} {:>10}", "path", "p50", "p99");
    for (i, (name, _)) in paths.iter().enumerate() {
        println!("  {:<12} {:>10.1?} {:>10.1?}", name, p50s[i], p99s[i]);
    }
    let ratio = p99s[1].as_secs_f64() / p99s[0].as_secs_f64();
    println!("  ratio p99 shadow on / off: {ratio:.2} (bound 1.10)");
    let text = on.encode_metrics();
    let judged: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("zgate_shadow_total") && !l.ends_with(" 0"))
        .collect();
    println!("  copies judged: {judged:?}");
    rt.block_on(off.shutdown());
    rt.block_on(on.shutdown());
}
