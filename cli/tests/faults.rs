//! The fault suite: zgate against backends that freeze, misbehave or attack, with real
//! pyzmq peers and raw sockets on loopback. Each test asserts its figures.

mod support;

use std::time::{Duration, Instant};

use support::{gateway, peer};

/// One request of a [`Load`]: when it left and what came back.
#[derive(Clone, Debug)]
struct Record {
    sent: Instant,
    /// When the reply came, and its first frame.
    reply: Option<(Instant, String)>,
    /// The reply's body did not carry this request's tag.
    foreign: bool,
}

impl Record {
    fn pool(&self) -> Option<&str> {
        let (_, first) = self.reply.as_ref()?;
        first.split_whitespace().nth(1)
    }
    fn latency(&self) -> Option<Duration> {
        self.reply.as_ref().map(|(t, _)| *t - self.sent)
    }
}

/// Open-loop load at `rate` requests/s from `sockets` REQ sockets (a REQ socket matches a
/// reply to its request), each request tagged so that a reply meant for another client
/// is seen. Runs for `length` in this thread; returns every request sent.
fn load(endpoint: &str, rate: f64, sockets: usize, length: Duration) -> Vec<Record> {
    let ctx = zmq::Context::new();
    let socks: Vec<zmq::Socket> = (0..sockets)
        .map(|_| {
            let s = ctx.socket(zmq::REQ).unwrap();
            s.set_linger(0).unwrap();
            s.connect(endpoint).unwrap();
            s
        })
        .collect();
    let mut busy: Vec<Option<usize>> = vec![None; sockets];
    let mut records: Vec<Record> = Vec::new();
    let start = Instant::now();
    let mut next_tag = 0usize;
    loop {
        let elapsed = start.elapsed();
        let due =
            ((elapsed.as_secs_f64() * rate) as usize).min((length.as_secs_f64() * rate) as usize);
        while next_tag < due {
            let Some(free) = busy.iter().position(|b| b.is_none()) else {
                break;
            };
            let tag = format!("tag-{next_tag}");
            socks[free].send(tag.as_bytes(), 0).unwrap();
            busy[free] = Some(next_tag);
            records.push(Record {
                sent: Instant::now(),
                reply: None,
                foreign: false,
            });
            next_tag += 1;
        }
        let waiting = busy.iter().any(Option::is_some);
        if elapsed >= length + Duration::from_secs(3) || (elapsed >= length && !waiting) {
            break;
        }
        let mut items: Vec<zmq::PollItem> =
            socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 1).unwrap();
        for (i, item) in items.iter().enumerate() {
            if !item.is_readable() {
                continue;
            }
            let frames = socks[i].recv_multipart(0).unwrap();
            let tag = busy[i]
                .take()
                .expect("a REQ socket only gets a reply when it asked");
            let first = String::from_utf8_lossy(&frames[0]).into_owned();
            let r = &mut records[tag];
            // Services echo the request after their status; zgate's own errors carry none.
            r.foreign = first.starts_with("OK")
                && frames.get(1).map(|f| f.as_slice()) != Some(format!("tag-{tag}").as_bytes());
            r.reply = Some((Instant::now(), first));
        }
    }
    records
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

/// Stable's replies and their p99 among requests sent in [from, to).
fn stable_figures(
    records: &[Record],
    start: Instant,
    from: Duration,
    to: Duration,
) -> (f64, Duration) {
    let window: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= start + from && r.sent < start + to)
        .filter(|r| r.pool() == Some("stable"))
        .collect();
    let rate = window.len() as f64 / (to - from).as_secs_f64();
    (
        rate,
        p99(window.iter().filter_map(|r| r.latency()).collect()),
    )
}

/// A gateway in front of `stable` and `canary` at `weights`, with request `timeout`,
/// once both pools are live.
fn two_pools(
    stable: &support::Proc,
    canary: &support::Proc,
    weights: &str,
    timeout: &str,
) -> support::Gw {
    support::two_pools(stable, canary, weights, &["--timeout", timeout])
}

#[test]
fn a_frozen_canary_never_holds_up_stable() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary"]);
    let gw = two_pools(&stable, &canary, "stable=90,canary=10", "2s");
    let endpoint = gw.frontend.clone();
    let start = Instant::now();
    let length = Duration::from_secs(25);
    let loader = std::thread::spawn(move || load(&endpoint, 400.0, 300, length));
    // 5 s healthy, then the canary is frozen for 15 s (a GC pause, a debugger), then thawed.
    std::thread::sleep(Duration::from_secs(5));
    canary.signal("STOP");
    std::thread::sleep(Duration::from_secs(15));
    canary.signal("CONT");
    let records = loader.join().unwrap();

    let (before, p99_before) = stable_figures(
        &records,
        start,
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    let (during, p99_during) = stable_figures(
        &records,
        start,
        Duration::from_secs(6),
        Duration::from_secs(19),
    );
    let worst = records.iter().filter_map(Record::latency).max();
    eprintln!(
        "stable {before:.0}/s (p99 {p99_before:?}) before, {during:.0}/s (p99 {p99_during:?}) while the canary was frozen; {} requests, worst {worst:?}",
        records.len()
    );
    assert_one_reply_each_to_its_sender(&records, Duration::from_secs(2));
    assert!(
        during >= 0.9 * before,
        "stable fell from {before:.0}/s to {during:.0}/s"
    );
    // Below 5 ms a p99 on this 2-core machine is the scheduler's noise (2.8 to 7.9 ms
    // over runs of the same healthy phase); the stall this guards against took seconds.
    assert!(
        p99_during < 2 * p99_before.max(Duration::from_millis(5)),
        "stable's p99 went from {p99_before:?} to {p99_during:?}"
    );
}

/// A gateway at 50/50 in front of a well-behaved stable and a canary that misbehaves `how`.
fn with_misbehaving_canary(how: &str) -> (support::Proc, support::Proc, support::Gw) {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["router", "--name", "canary", "--misbehave", how]);
    let gw = two_pools(&stable, &canary, "stable=50,canary=50", "500ms");
    (stable, canary, gw)
}

/// Every request answered once, within the timeout and a margin, and only to its sender.
fn assert_one_reply_each_to_its_sender(records: &[Record], timeout: Duration) {
    let unanswered = records.iter().filter(|r| r.reply.is_none()).count();
    let foreign = records.iter().filter(|r| r.foreign).count();
    let worst = records
        .iter()
        .filter_map(Record::latency)
        .max()
        .unwrap_or_default();
    assert_eq!(unanswered, 0, "every request gets a reply");
    assert_eq!(
        foreign, 0,
        "a reply reached a client other than its requester"
    );
    // Half the timeout again is the scheduler's share on a loaded 2-core machine (a CI run
    // saw 168 ms); a reply later than that was not answered by zgate's timeout.
    assert!(worst <= timeout * 3 / 2, "a reply took {worst:?}");
}

fn first_words(records: &[Record], pool_word: &str) -> usize {
    records
        .iter()
        .filter(|r| {
            r.reply
                .as_ref()
                .is_some_and(|(_, f)| f.starts_with(pool_word))
        })
        .count()
}

#[test]
fn a_backend_that_guesses_request_ids_reaches_no_other_client() {
    for how in ["guess", "short-id"] {
        let (_stable, _canary, gw) = with_misbehaving_canary(how);
        let records = load(&gw.frontend, 200.0, 100, Duration::from_secs(3));
        assert_one_reply_each_to_its_sender(&records, Duration::from_millis(500));
        // The canary's forged replies are dropped; its requests time out instead.
        let rejected = gw.metric("zgate_replies_rejected_total{service=\"zgate\",pool=\"canary\"}");
        let timeouts = first_words(&records, "ERR zgate timeout");
        eprintln!(
            "{how}: {} requests, {rejected} replies rejected, {timeouts} timeouts",
            records.len()
        );
        assert!(
            rejected >= 100.0,
            "{how}: only {rejected} forged replies rejected"
        );
        assert!(
            timeouts >= 100,
            "{how}: {timeouts} canary requests timed out"
        );
        assert_eq!(
            gw.requests("canary", "ok"),
            0.0,
            "{how}: a forged reply counted as ok"
        );
    }
}

#[test]
fn replies_without_delimiter_or_body_are_the_pools_errors_answered_to_the_client() {
    for how in ["empty", "bare", "no-delimiter"] {
        let (_stable, _canary, gw) = with_misbehaving_canary(how);
        let records = load(&gw.frontend, 200.0, 100, Duration::from_secs(2));
        assert_one_reply_each_to_its_sender(&records, Duration::from_millis(500));
        let bad = first_words(&records, "ERR zgate bad_reply");
        eprintln!(
            "{how}: {} requests, {bad} answered bad_reply",
            records.len()
        );
        assert!(bad >= 100, "{how}: only {bad} bad replies answered");
        assert_eq!(gw.requests("canary", "ok"), 0.0, "{how}: counted as ok");
        assert!(gw.requests("canary", "error") >= bad as f64);
    }
}

#[test]
fn a_backend_that_replies_twice_is_answered_once() {
    let (_stable, _canary, gw) = with_misbehaving_canary("twice");
    let records = load(&gw.frontend, 200.0, 100, Duration::from_secs(2));
    assert_one_reply_each_to_its_sender(&records, Duration::from_millis(500));
    let late = gw.metric("zgate_late_replies_total{service=\"zgate\",pool=\"canary\"}");
    let ok = gw.requests("canary", "ok");
    assert!(
        ok >= 100.0 && late >= ok - 1.0,
        "{ok} canary replies, {late} second copies dropped"
    );
}

#[test]
fn a_request_without_a_body_is_malformed_and_never_forwarded() {
    let stable = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", stable.endpoint())]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    let c = support::zmq_client(&ctx, zmq::DEALER, &gw.frontend);
    c.send(&b""[..], 0).unwrap(); // the delimiter alone
    let reply = c.recv_multipart(0).unwrap();
    assert_eq!(reply[0], b"");
    assert!(
        String::from_utf8_lossy(&reply[1]).starts_with("ERR zgate malformed: request has no body"),
        "{reply:?}"
    );
    assert_eq!(
        gw.metric("zgate_malformed_requests_total{service=\"zgate\"}"),
        1.0
    );
    assert_eq!(
        gw.requests("stable", "timeout"),
        0.0,
        "nothing reached the pool"
    );
    assert_eq!(
        gw.metric("zgate_requests_in_flight{service=\"zgate\",pool=\"stable\"}"),
        0.0
    );
}

/// Opens a raw TCP connection, completes the ZMTP 3.0 NULL handshake as a DEALER, announces
/// one frame of `announced` bytes and sends up to `send` bytes of it; returns what was sent
/// before zgate closed the connection.
fn oversized_frame(addr: &str, announced: u64, send: usize) -> usize {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    greeting.extend_from_slice(b"NULL");
    greeting.resize(64, 0);
    s.write_all(&greeting).unwrap();
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    s.write_all(&[0x04, ready.len() as u8]).unwrap();
    s.write_all(&ready).unwrap();
    // A long frame, no more frames after it.
    s.write_all(&[0x02]).unwrap();
    s.write_all(&announced.to_be_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < send {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn oversized_frames_are_refused_and_memory_stays_bounded() {
    let stable = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", stable.endpoint())]);
    gw.wait_live("stable", 1.0);
    let addr = gw.frontend.trim_start_matches("tcp://").to_string();
    let before = gw.proc.rss_kib() / 1024;
    // Four peers announce a 16 GiB frame each and try to send 256 MiB of it.
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || oversized_frame(&a, 16 << 30, 256 << 20))
        })
        .collect();
    let sent: Vec<usize> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let after = gw.proc.rss_kib() / 1024;
    eprintln!(
        "RSS {before} MiB before, {after} MiB after; bytes taken before the disconnect: {sent:?}"
    );
    assert!(after < 100, "zgate grew to {after} MiB");
    assert!(
        sent.iter().all(|n| *n < 256 << 20),
        "a peer sent its whole frame: {sent:?}"
    );
    // zgate still serves.
    let ctx = zmq::Context::new();
    let c = support::zmq_client(&ctx, zmq::REQ, &gw.frontend);
    c.send("still here", 0).unwrap();
    let r = c.recv_multipart(0).unwrap();
    assert!(r[0].starts_with(b"OK stable"), "{r:?}");
}

#[test]
fn a_low_descriptor_limit_is_raised_and_many_idle_connections_starve_nothing() {
    let stable = peer(&["rep", "--name", "stable"]);
    let hard: u64 = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -H -n"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    // Started with a soft limit of 256, as a service manager or a shell might.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -S -n 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_zdeploy"))
        .args([
            "gateway",
            "--frontend",
            "tcp://127.0.0.1:*",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(["--pool", &format!("stable={}", stable.endpoint())]);
    let proc = support::Proc::start(cmd, "zgate ready:");
    let field = |w: &str| {
        let mut it = proc.ready.split_whitespace();
        it.find(|x| *x == w).and(it.next()).unwrap().to_string()
    };
    let (frontend, metrics) = (field("frontend"), field("metrics"));
    let scrape = || {
        support::http()
            .get(&metrics)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let limit: u64 = scrape()
        .lines()
        .find_map(|l| l.strip_prefix("zgate_open_files_limit{service=\"zgate\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the limit is in /metrics");
    assert_eq!(limit, hard, "the soft limit was raised to the hard one");
    // 1,100 idle connections: more than the limit zgate was started with (this test
    // process needs room for them too).
    zdeploy_gateway::limits::raise_open_files();
    let addr = frontend.trim_start_matches("tcp://");
    let idle: Vec<std::net::TcpStream> = (0..1_100)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        scrape().contains("zgate_requests_total"),
        "/metrics answers"
    );
    let ctx = zmq::Context::new();
    let c = support::zmq_client(&ctx, zmq::REQ, &frontend);
    c.set_rcvtimeo(2_000).unwrap();
    c.send("after the crowd", 0).unwrap();
    let r = c.recv_multipart(0).expect("a new client is served");
    assert!(r[0].starts_with(b"OK stable"), "{r:?}");
    drop(idle);
}

#[test]
fn zgate_killed_and_restarted_under_load_answers_nothing_twice_and_clients_come_back() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary"]);
    let frontend = format!("tcp://127.0.0.1:{}", zdeploy_testkit::ports::free_port());
    let args = [
        "--pool".to_string(),
        format!("stable={}", stable.endpoint()),
        "--pool".to_string(),
        format!("canary={}", canary.endpoint()),
        "--weights".to_string(),
        "stable=90,canary=10".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = support::gateway_on(&frontend, &args);
    first.wait_live("canary", 1.0);
    let endpoint = frontend.clone();
    let start = Instant::now();
    let loader = std::thread::spawn(move || load(&endpoint, 300.0, 300, Duration::from_secs(16)));
    std::thread::sleep(Duration::from_secs(4));
    first.proc.signal("KILL");
    first.proc.wait_exit(Duration::from_secs(5));
    let killed = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let second = support::gateway_on(&frontend, &args);
    second.wait_live("canary", 1.0);
    let back = start.elapsed();
    let records = loader.join().unwrap();

    let in_flight_at_kill = records
        .iter()
        .filter(|r| {
            r.sent < start + killed && r.reply.as_ref().is_none_or(|(t, _)| *t > start + killed)
        })
        .count();
    let lost = records.iter().filter(|r| r.reply.is_none()).count();
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent > start + back + Duration::from_secs(1))
        .collect();
    let answered_after = after.iter().filter(|r| r.reply.is_some()).count();
    let foreign = records.iter().filter(|r| r.foreign).count();
    let lost_after_kill: Vec<f64> = records
        .iter()
        .filter(|r| r.reply.is_none() && r.sent >= start + killed)
        .map(|r| (r.sent - (start + killed)).as_secs_f64() * 1000.0)
        .collect();
    let summary = format!(
        "{} requests; {in_flight_at_kill} in flight at the kill, {lost} never answered (of them sent after the kill, ms after it: {lost_after_kill:?}); {answered_after}/{} sent after the restart answered; killed at {killed:?}, serving again at {back:?}",
        records.len(),
        after.len()
    );
    eprintln!("{summary}");
    assert_eq!(foreign, 0, "no reply reaches another client");
    // A request written after the kill into a connection the client's libzmq had not yet
    // seen close is lost by the client library (REQ does not resend), never by zgate.
    let lost_before_kill = records
        .iter()
        .filter(|r| r.reply.is_none() && r.sent < start + killed)
        .count();
    assert!(
        lost_before_kill <= in_flight_at_kill,
        "only requests zgate held when it died are lost: {summary}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.reply.is_some() || r.sent < start + back),
        "nothing sent once the second zgate was serving is lost: {summary}"
    );
    assert!(
        after.len() > 1000,
        "the clients sent again after the restart: {summary}"
    );
    assert_eq!(
        answered_after,
        after.len(),
        "every request after the restart is answered: {summary}"
    );
    // The restarted zgate answered each request it took once: its counts match the replies.
    let counted = second.requests("stable", "ok") + second.requests("canary", "ok");
    let replied_ok = records
        .iter()
        .filter(|r| {
            r.reply
                .as_ref()
                .is_some_and(|(t, f)| *t > start + back && f.starts_with("OK"))
        })
        .count() as f64;
    assert!(
        counted >= replied_ok,
        "{counted} counted, {replied_ok} OK replies seen after the restart"
    );
}

/// How long the soak runs: 2 minutes in the suite, `ZDEPLOY_SOAK_SECONDS` on demand.
fn soak_length() -> Duration {
    let secs = std::env::var("ZDEPLOY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

#[test]
fn a_soak_at_a_steady_rate_keeps_memory_and_descriptors_flat() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary", "--error-ratio", "0.01"]);
    let gw = two_pools(&stable, &canary, "stable=80,canary=20", "2s");
    let length = soak_length();
    let endpoint = gw.frontend.clone();
    let loader = std::thread::spawn(move || load(&endpoint, 300.0, 50, length));
    // Samples every 10 s; the first 20 s are warm-up (allocator arenas, libzmq pipes).
    let mut samples = Vec::new();
    let start = Instant::now();
    // The last sample is taken while the clients are still connected.
    while start.elapsed() + Duration::from_secs(15) < length {
        std::thread::sleep(Duration::from_secs(10));
        let _ = gw.scrape(); // the metrics path is part of the soak
        samples.push((
            start.elapsed().as_secs(),
            gw.proc.rss_kib(),
            gw.proc.open_fds(),
        ));
    }
    let records = loader.join().unwrap();
    eprintln!("soak (seconds, RSS KiB, open fds): {samples:?}");
    let steady: Vec<_> = samples.iter().filter(|(t, _, _)| *t >= 20).collect();
    let (first, last) = (steady.first().unwrap(), steady.last().unwrap());
    let unanswered = records.iter().filter(|r| r.reply.is_none()).count();
    assert_eq!(unanswered, 0, "every request answered during the soak");
    assert!(
        last.1 <= first.1 + 8 * 1024,
        "RSS grew from {} to {} KiB",
        first.1,
        last.1
    );
    let fds: Vec<usize> = steady.iter().map(|s| s.2).collect();
    assert!(
        fds.iter().max().unwrap() - fds.iter().min().unwrap() <= 2,
        "open descriptors moved: {fds:?}"
    );
}

/// The churn of a rolling restart, without a cluster: backends drained, removed and
/// replaced at the same addresses (as kwok and real CNIs reuse pod IPs), while clients
/// send. Every request gets a reply; none from a removed backend's replacement is lost.
#[test]
fn backends_drained_removed_and_replaced_at_their_addresses_lose_no_request() {
    use zdeploy_gateway::config::{GatewayConfig, PoolConfig};
    use zdeploy_gateway::control::Endpoint;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ports: Vec<u16> = (0..4)
        .map(|_| zdeploy_testkit::ports::free_port())
        .collect();
    let start_peer = |port: u16, n: usize| {
        peer(&[
            "rep",
            "--heartbeat",
            "--name",
            &format!("b{n}"),
            "--bind",
            &format!("tcp://127.0.0.1:{port}"),
        ])
    };
    let address = |port: u16| format!("tcp://127.0.0.1:{port}");
    let mut peers: Vec<Option<support::Proc>> = ports
        .iter()
        .enumerate()
        .map(|(n, p)| Some(start_peer(*p, n)))
        .collect();
    let mut config = GatewayConfig::new(
        "churn",
        "tcp://127.0.0.1:*",
        vec![PoolConfig {
            name: "stable".into(),
            endpoints: ports.iter().map(|p| address(*p)).collect(),
        }],
    );
    config.timeout = "2s".parse().unwrap();
    let gw = rt
        .block_on(zdeploy_gateway::Gateway::start(config))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let endpoint = gw.frontend().to_string();
    let loader = std::thread::spawn(move || load(&endpoint, 300.0, 2, Duration::from_secs(25)));
    let set = |states: Vec<Endpoint>| gw.control().update(|s| s.endpoints[0] = states);
    let serving = |ps: &[u16]| {
        ps.iter()
            .map(|p| Endpoint::serving(address(*p)))
            .collect::<Vec<_>>()
    };
    for round in 0..20 {
        let victim = ports[round % ports.len()];
        let others: Vec<u16> = ports.iter().copied().filter(|p| *p != victim).collect();
        // Terminating: draining for 1 s, then gone from the slice and stopped.
        let mut states = serving(&others);
        states.push(Endpoint {
            address: address(victim),
            state: zdeploy_gateway::control::EndpointState::Draining,
        });
        set(states);
        std::thread::sleep(Duration::from_secs(1));
        set(serving(&others));
        peers[round % ports.len()] = None;
        // The replacement comes up at the same address at once.
        peers[round % ports.len()] = Some(start_peer(victim, round + 10));
        set(serving(&ports));
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = loader.join().unwrap();
    let lost = records.iter().filter(|r| r.reply.is_none()).count();
    let errors = records
        .iter()
        .filter(|r| r.reply.as_ref().is_some_and(|(_, f)| !f.starts_with("OK")))
        .count();
    eprintln!(
        "{} requests, {lost} unanswered, {errors} errors",
        records.len()
    );
    assert_eq!(lost, 0, "every request answered");
    assert_eq!(errors, 0, "none by an error");
    // zgate still serves: before the fix, closing a backend's socket could block libzmq's
    // I/O thread for good (a monitor event sent to a closed reader).
    let ctx = zmq::Context::new();
    let c = support::zmq_client(&ctx, zmq::REQ, gw.frontend());
    c.set_rcvtimeo(3000).unwrap();
    c.send("after the churn", 0).unwrap();
    let r = c
        .recv_multipart(0)
        .expect("a new client is served after the churn");
    assert!(r[0].starts_with(b"OK b"), "{r:?}");
}
