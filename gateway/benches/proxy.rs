//! zgate against libzmq's own `zmq_proxy` and a direct connection, side by side in one run.
//!
//! `cargo bench -p zdeploy-gateway --bench proxy` prints messages/s and p50/p99 latency
//! for pipelined 64-byte messages (DEALER client, 1000 in flight) and for REQ round trips,
//! each path measured in alternating rounds, and the ratio zgate / zmq_proxy; then zgate
//! with 0, 100 and 10,000 routes by client that do not match (every request is looked up)
//! and the throughput ratio to no routes. Every figure is printed only once zgate's own
//! counters show that it answered every request sent through it.
//! `ZDEPLOY_BENCH_QUICK=1` runs one small round (how ./tests/run keeps it working).

use std::thread;
use std::time::{Duration, Instant};

use zdeploy_gateway::routes::Route;
use zdeploy_gateway::{Gateway, GatewayConfig, PoolConfig};

const WINDOW: usize = 1_000;

/// How much one run sends.
#[derive(Clone, Copy)]
struct Size {
    pipelined: usize,
    round_trips: usize,
    rounds: usize,
}

fn size() -> Size {
    match std::env::var_os("ZDEPLOY_BENCH_QUICK") {
        Some(_) => Size {
            pipelined: 5_000,
            round_trips: 500,
            rounds: 1,
        },
        None => Size {
            pipelined: 200_000,
            round_trips: 20_000,
            rounds: 5,
        },
    }
}

/// A ROUTER that echoes every message whole: the fastest possible service.
fn echo_server(ctx: &zmq::Context) -> String {
    let s = ctx.socket(zmq::ROUTER).unwrap();
    s.set_sndhwm(0).unwrap();
    s.set_rcvhwm(0).unwrap();
    s.bind("tcp://127.0.0.1:*").unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    thread::spawn(move || {
        loop {
            let mut frames = Vec::new();
            loop {
                let mut m = zmq::Message::new();
                if s.recv(&mut m, 0).is_err() {
                    return;
                }
                let more = m.get_more();
                frames.push(m);
                if !more {
                    break;
                }
            }
            let last = frames.len() - 1;
            for (i, f) in frames.into_iter().enumerate() {
                let _ = s.send(f, if i < last { zmq::SNDMORE } else { 0 });
            }
        }
    });
    ep
}

/// libzmq's `zmq_proxy` in a context of its own, as zgate has (as separate processes would).
fn zmq_proxy(backend: &str) -> String {
    let ctx = zmq::Context::new();
    let front = ctx.socket(zmq::ROUTER).unwrap();
    let back = ctx.socket(zmq::DEALER).unwrap();
    // Unbounded like the clients: with the default 1000, a ROUTER drops replies silently.
    for s in [&front, &back] {
        s.set_sndhwm(0).unwrap();
        s.set_rcvhwm(0).unwrap();
    }
    front.bind("tcp://127.0.0.1:*").unwrap();
    back.connect(backend).unwrap();
    let ep = front.get_last_endpoint().unwrap().unwrap();
    thread::spawn(move || {
        let _keep = ctx;
        let _ = zmq::proxy(&front, &back);
    });
    ep
}

struct Result {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut lat: Vec<Duration>, elapsed: Duration, n: usize) -> Result {
    lat.sort_unstable();
    Result {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
    }
}

fn pipelined(ctx: &zmq::Context, endpoint: &str, n: usize) -> Result {
    let s = ctx.socket(zmq::DEALER).unwrap();
    // Routes look at the routing id: a real one, sharing its first bytes with every route.
    s.set_identity(b"client-bench").unwrap();
    s.set_sndhwm(0).unwrap();
    s.set_rcvhwm(0).unwrap();
    s.set_rcvtimeo(10_000).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    let origin = Instant::now();
    let mut payload = [0u8; 64];
    let mut lat = Vec::with_capacity(n);
    let (mut sent, mut outstanding) = (0, 0);
    let start = Instant::now();
    while lat.len() < n {
        while sent < n && outstanding < WINDOW {
            payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
            s.send(&b""[..], zmq::SNDMORE).unwrap();
            s.send(&payload[..], 0).unwrap();
            sent += 1;
            outstanding += 1;
        }
        let reply = s
            .recv_multipart(0)
            .unwrap_or_else(|e| panic!("{endpoint}: no reply after {} of {sent}: {e}", lat.len()));
        let body = reply.last().unwrap();
        let t = u64::from_le_bytes(body[..8].try_into().unwrap());
        lat.push(origin.elapsed() - Duration::from_nanos(t));
        outstanding -= 1;
    }
    percentiles(lat, start.elapsed(), n)
}

fn round_trips(ctx: &zmq::Context, endpoint: &str, n: usize) -> Result {
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_rcvtimeo(10_000).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    let payload = [1u8; 64];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.send(&payload[..], 0).unwrap();
        s.recv_multipart(0).unwrap();
        lat.push(t.elapsed());
    }
    percentiles(lat, start.elapsed(), n)
}

fn median_by_rate(mut rs: Vec<Result>) -> Result {
    rs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    rs.swap_remove(rs.len() / 2)
}

/// A zgate in front of `backend` with `routes` routes by client that match no request.
fn zgate(rt: &tokio::runtime::Runtime, backend: &str, routes: usize) -> Gateway {
    let mut config = GatewayConfig::new(
        "bench",
        "tcp://127.0.0.1:*",
        vec![PoolConfig {
            name: "stable".into(),
            endpoints: vec![backend.to_string()],
        }],
    );
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    config.hwm = 1_000_000;
    config.routes = (0..routes)
        .map(|i| {
            let rule = match i % 2 {
                0 => format!("stable=identity:client-{i:05}"),
                _ => format!("stable=frame:0:key-{i:05}"),
            };
            rule.parse::<Route>().unwrap()
        })
        .collect();
    rt.block_on(Gateway::start(config)).expect("zgate starts")
}

/// Requests zgate answered with its backend's reply.
fn answered(gateway: &Gateway) -> f64 {
    let text = gateway.encode_metrics();
    text.lines()
        .find(|l| l.starts_with("zgate_requests_total") && l.contains("outcome=\"ok\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Fails unless `gateway` answered `expected` requests in all, every one by the backend.
fn check_answered(gateway: &Gateway, expected: usize, what: &str) {
    let got = answered(gateway);
    assert_eq!(
        got, expected as f64,
        "{what}: zgate answered {got} requests with the backend's reply, not the {expected} sent: the figures would not measure zgate"
    );
}

type Run = fn(&zmq::Context, &str, usize) -> Result;

fn main() {
    let size = size();
    let ctx = zmq::Context::new();
    let backend = echo_server(&ctx);
    let proxy = zmq_proxy(&backend);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gateway = zgate(&rt, &backend, 0);
    let zgate_ep = gateway.frontend().to_string();
    thread::sleep(Duration::from_millis(300));

    let paths = [
        ("direct", backend.as_str()),
        ("zmq_proxy", proxy.as_str()),
        ("zgate", zgate_ep.as_str()),
    ];
    println!(
        "zgate benchmark: {} alternating rounds per path, median round shown",
        size.rounds
    );
    let mut through_zgate = 0;
    for (name, run, n) in [
        (
            "pipelined 64 B, 1000 in flight",
            pipelined as Run,
            size.pipelined,
        ),
        (
            "REQ round trips, 64 B",
            round_trips as Run,
            size.round_trips,
        ),
    ] {
        let mut results: Vec<Vec<Result>> = paths.iter().map(|_| Vec::new()).collect();
        for _ in 0..size.rounds {
            for (i, (path, ep)) in paths.iter().enumerate() {
                eprint!("  {name}: {path}...\r");
                results[i].push(run(&ctx, ep, n));
            }
        }
        through_zgate += size.rounds * n;
        check_answered(&gateway, through_zgate, name);
        let medians: Vec<Result> = results.into_iter().map(median_by_rate).collect();
        println!("\n{name}");
        println!(
            "  {:<10} {:>12} {:>10} {:>10}",
            "path", "msg/s", "p50", "p99"
        );
        for ((p, _), r) in paths.iter().zip(&medians) {
            println!(
                "  {:<10} {:>12.0} {:>10.1?} {:>10.1?}",
                p, r.rate, r.p50, r.p99
            );
        }
        println!(
            "  ratio zgate / zmq_proxy: {:.2}",
            medians[2].rate / medians[1].rate
        );
    }
    rt.block_on(gateway.shutdown());

    // Routes: the same pipelined load through zgates that hold 0, 100 and 10,000 routes.
    let routed: Vec<(usize, Gateway)> = [0, 100, 10_000]
        .into_iter()
        .map(|n| (n, zgate(&rt, &backend, n)))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut results: Vec<Vec<Result>> = routed.iter().map(|_| Vec::new()).collect();
    for _ in 0..size.rounds {
        for (i, (n, g)) in routed.iter().enumerate() {
            eprint!("  routes: {n}...\r");
            results[i].push(pipelined(&ctx, g.frontend(), size.pipelined));
        }
    }
    for (n, g) in &routed {
        check_answered(g, size.rounds * size.pipelined, &format!("{n} routes"));
    }
    let medians: Vec<Result> = results.into_iter().map(median_by_rate).collect();
    println!("\npipelined 64 B, 1000 in flight, through routes that match no request");
    println!(
        "  {:<10} {:>12} {:>10} {:>10} {:>8}",
        "routes", "msg/s", "p50", "p99", "ratio"
    );
    for ((n, _), r) in routed.iter().zip(&medians) {
        println!(
            "  {:<10} {:>12.0} {:>10.1?} {:>10.1?} {:>8.2}",
            n,
            r.rate,
            r.p50,
            r.p99,
            r.rate / medians[0].rate
        );
    }
    for (_, g) in routed {
        rt.block_on(g.shutdown());
    }
}
