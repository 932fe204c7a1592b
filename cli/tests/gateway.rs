//! zgate interop suite: the `zdeploy gateway` binary between real libzmq peers (pyzmq
//! services and clients, and libzmq clients in this process), on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{Gw, client, gateway, peer, two_pools, zmq_client};

fn first_word(reply: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&reply[0])
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends one request from a DEALER (which must add the empty delimiter itself).
fn dealer_send(s: &zmq::Socket, body: &[u8]) {
    s.send_multipart([&b""[..], body], 0).unwrap();
}

/// Receives one reply on a DEALER and strips the empty delimiter.
fn dealer_recv(s: &zmq::Socket) -> Vec<Vec<u8>> {
    let mut frames = s
        .recv_multipart(0)
        .expect("a reply within the receive timeout");
    assert!(
        frames[0].is_empty(),
        "reply starts with the empty delimiter: {frames:?}"
    );
    frames.remove(0);
    frames
}

fn ok_count(summary: &serde_json::Value, name: &str) -> u64 {
    summary["by_first_word"][format!("OK {name}")]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn split_follows_weights_over_10000_pipelined_requests() {
    let s1 = peer(&["rep", "--name", "stable", "--heartbeat"]);
    let s2 = peer(&["rep", "--name", "stable", "--heartbeat"]);
    let c1 = peer(&["rep", "--name", "canary", "--heartbeat"]);
    let gw = gateway(&[
        "--pool",
        &format!("stable={},{}", s1.endpoint(), s2.endpoint()),
        "--pool",
        &format!("canary={}", c1.endpoint()),
        "--weights",
        "stable=90,canary=10",
    ]);
    gw.wait_live("stable", 2.0);
    gw.wait_live("canary", 1.0);
    let r = client(&[
        "dealer",
        "--connect",
        &gw.frontend,
        "--count",
        "10000",
        "--pipeline",
        "200",
        "--heartbeat",
    ]);
    assert_eq!(r["sent"], 10_000);
    assert_eq!(r["received"], 10_000, "{r}");
    let share = ok_count(&r, "canary") as f64 / 10_000.0;
    assert!(
        (share - 0.10).abs() <= 0.01,
        "canary share {share} is not within 1 point of 10%: {r}"
    );
    assert_eq!(
        gw.requests("canary", "ok") + gw.requests("stable", "ok"),
        10_000.0
    );
}

#[test]
fn req_client_multipart_and_4_mib_round_trip_intact() {
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    gw.wait_live("stable", 1.0);
    let r = client(&[
        "req",
        "--connect",
        &gw.frontend,
        "--count",
        "12",
        "--parts",
        "3",
        "--size",
        "4194304",
    ]);
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64()),
        (Some(12), Some(12)),
        "{r}"
    );
    assert_eq!(r["mismatched"], 0, "a 4 MiB frame came back different: {r}");
    assert_eq!(ok_count(&r, "stable"), 12);
}

#[test]
fn weight_changes_apply_within_100ms_and_zero_means_nothing() {
    let s = peer(&["rep", "--name", "stable"]);
    let c = peer(&["rep", "--name", "canary"]);
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", s.endpoint()),
        "--pool",
        &format!("canary={}", c.endpoint()),
        "--weights",
        "stable=90,canary=10",
    ]);
    gw.wait_live("canary", 1.0);
    let (status, body) = gw.put("/weights", r#"{"stable":50,"canary":50}"#);
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(100));
    let r = client(&[
        "dealer",
        "--connect",
        &gw.frontend,
        "--count",
        "1000",
        "--pipeline",
        "50",
    ]);
    assert_eq!(
        (ok_count(&r, "stable"), ok_count(&r, "canary")),
        (500, 500),
        "{r}"
    );

    let canary_before = gw.requests("canary", "ok");
    let (status, body) = gw.put("/weights", r#"{"stable":90,"canary":90}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("must add up to 100") && body.contains("180"),
        "{body}"
    );
    let (status, body) = gw.put("/weights", r#"{"stable":100}"#);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"canary":0,"stable":100}"#)
    );
    std::thread::sleep(Duration::from_millis(100));
    let r = client(&[
        "dealer",
        "--connect",
        &gw.frontend,
        "--count",
        "2000",
        "--pipeline",
        "50",
    ]);
    assert_eq!(ok_count(&r, "stable"), 2000, "{r}");
    assert_eq!(ok_count(&r, "canary"), 0, "{r}");
    assert_eq!(gw.requests("canary", "ok"), canary_before);
    assert_eq!(
        gw.metric("zgate_pool_weight{service=\"zgate\",pool=\"canary\"}"),
        0.0
    );
}

#[test]
fn heartbeats_on_both_sides_keep_idle_connections_alive() {
    let s = peer(&["rep", "--name", "stable", "--heartbeat"]);
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", s.endpoint()),
        "--heartbeat",
        "200ms",
    ]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).unwrap();
    req.set_heartbeat_ivl(200).unwrap();
    req.set_heartbeat_timeout(1000).unwrap();
    req.set_heartbeat_ttl(1000).unwrap();
    req.set_rcvtimeo(5000).unwrap();
    req.set_linger(0).unwrap();
    req.connect(&gw.frontend).unwrap();
    req.send("before", 0).unwrap();
    assert_eq!(first_word(&req.recv_multipart(0).unwrap()), "OK stable");
    // Idle for several heartbeat timeouts: PINGs and PONGs must be understood, not break the link.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        gw.metric("zgate_backends_live{service=\"zgate\",pool=\"stable\"}"),
        1.0
    );
    for i in 0..10 {
        req.send(format!("after-{i}").as_str(), 0).unwrap();
        let reply = req.recv_multipart(0).expect("reply after idle period");
        assert_eq!(first_word(&reply), "OK stable");
        assert_eq!(reply[1], format!("after-{i}").into_bytes());
    }
}

#[test]
fn a_restarted_backend_receives_no_stale_request() {
    let dir = support::tempdir("gateway");
    let old_log = dir.join("old.log");
    let new_log = dir.join("new.log");
    let mut svc = peer(&[
        "rep",
        "--name",
        "stable",
        "--log",
        old_log.to_str().unwrap(),
    ]);
    let endpoint = svc.endpoint();
    let gw = gateway(&[
        "--pool",
        &format!("stable={endpoint}"),
        "--timeout",
        "500ms",
    ]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::DEALER, &gw.frontend);
    let mut sent = 0;
    let mut replies = Vec::new();
    for i in 0..20 {
        dealer_send(&c, format!("old-{i}").as_bytes());
        sent += 1;
        replies.push(dealer_recv(&c));
    }
    // The backend hangs with requests in its queue, then dies: those requests time out.
    svc.signal("STOP");
    for i in 0..10 {
        dealer_send(&c, format!("stale-{i}").as_bytes());
        sent += 1;
    }
    for _ in 0..10 {
        let r = dealer_recv(&c);
        assert!(
            r[0].starts_with(b"ERR zgate timeout"),
            "{:?}",
            String::from_utf8_lossy(&r[0])
        );
        replies.push(r);
    }
    svc.signal("KILL");
    svc.wait_exit(Duration::from_secs(5));
    gw.wait_live("stable", 0.0);
    for i in 0..5 {
        dealer_send(&c, format!("dead-{i}").as_bytes());
        sent += 1;
        let r = dealer_recv(&c);
        assert!(
            r[0].starts_with(b"ERR zgate unavailable"),
            "{:?}",
            String::from_utf8_lossy(&r[0])
        );
        replies.push(r);
    }
    let _svc2 = peer(&[
        "rep",
        "--name",
        "stable",
        "--bind",
        &endpoint,
        "--log",
        new_log.to_str().unwrap(),
    ]);
    gw.wait_live("stable", 1.0);
    for i in 0..20 {
        dealer_send(&c, format!("new-{i}").as_bytes());
        sent += 1;
        let r = dealer_recv(&c);
        assert_eq!(first_word(&r), "OK stable");
        assert_eq!(r[1], format!("new-{i}").into_bytes());
        replies.push(r);
    }
    assert_eq!(replies.len(), sent);
    let seen = std::fs::read_to_string(&new_log).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 20, "restarted backend saw: {lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("new-")),
        "stale request delivered after restart: {lines:?}"
    );
    assert_eq!(gw.requests("stable", "timeout"), 10.0);
    assert_eq!(gw.requests("stable", "unavailable"), 5.0);
}

#[test]
fn every_request_gets_one_reply_through_weight_changes_and_a_backend_restart() {
    let s = peer(&["rep", "--name", "stable"]);
    let mut c = peer(&["rep", "--name", "canary"]);
    let canary_ep = c.endpoint();
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", s.endpoint()),
        "--pool",
        &format!("canary={canary_ep}"),
        "--weights",
        "stable=50,canary=50",
        "--timeout",
        "500ms",
    ]);
    gw.wait_live("canary", 1.0);
    let frontend = gw.frontend.clone();
    // A paced, pipelined client: 3000 requests over about 3 seconds.
    let load = std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let sock = zmq_client(&ctx, zmq::DEALER, &frontend);
        let (mut sent, mut received, mut errors) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        while sent < 3000 || received < sent {
            let due = (start.elapsed().as_millis() as u64).min(3000);
            while sent < due {
                dealer_send(&sock, format!("{sent}").as_bytes());
                sent += 1;
            }
            if sock.poll(zmq::POLLIN, 5).unwrap() > 0 {
                let r = dealer_recv(&sock);
                received += 1;
                errors += u64::from(r[0].starts_with(b"ERR"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replies stopped: {received} of {sent}"
            );
        }
        (sent, received, errors)
    });
    for w in [
        r#"{"stable":90,"canary":10}"#,
        r#"{"stable":0,"canary":100}"#,
        r#"{"stable":100}"#,
    ] {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(gw.put("/weights", w).0, 200);
    }
    gw.put("/weights", r#"{"stable":50,"canary":50}"#);
    std::thread::sleep(Duration::from_millis(300));
    c.signal("KILL");
    c.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let _c2 = peer(&["rep", "--name", "canary", "--bind", &canary_ep]);
    let (sent, received, errors) = load.join().unwrap();
    assert_eq!(sent, 3000);
    assert_eq!(received, sent, "requests sent must equal replies received");
    let counted: f64 = ["stable", "canary"]
        .iter()
        .flat_map(|p| ["ok", "error", "timeout", "unavailable"].map(|o| gw.requests(p, o)))
        .sum();
    assert_eq!(counted, 3000.0, "every request is counted once");
    eprintln!("3000 sent, 3000 answered, {errors} error replies while the canary was down");
}

#[test]
fn a_client_that_never_reads_is_bounded_and_does_not_slow_others() {
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", svc.endpoint()),
        "--hwm",
        "200",
    ]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    let slow = ctx.socket(zmq::DEALER).unwrap();
    slow.set_rcvhwm(100).unwrap();
    slow.set_linger(0).unwrap();
    slow.connect(&gw.frontend).unwrap();
    let payload = vec![7u8; 16 * 1024];
    for _ in 0..4000 {
        slow.send_multipart([&b""[..], &payload[..]], 0).unwrap();
    }
    let fast = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    fast.set_rcvtimeo(2000).unwrap();
    let mut worst = Duration::ZERO;
    let (mut served, mut last) = (0, String::new());
    for i in 0..200 {
        let t = Instant::now();
        fast.send(format!("fast-{i}").as_str(), 0).unwrap();
        let r = fast
            .recv_multipart(0)
            .expect("the fast client is served while the slow one stalls");
        // While the slow client's flood fills the pool, a fast client gets the pool's
        // explicit back-pressure at once, never a wait; the service's reply otherwise.
        let text = String::from_utf8_lossy(&r[0]).into_owned();
        assert!(
            first_word(&r) == "OK stable" || text.starts_with("ERR zgate overloaded"),
            "request {i}: {text}"
        );
        served += usize::from(first_word(&r) == "OK stable");
        last = text;
        worst = worst.max(t.elapsed());
    }
    assert!(
        last.starts_with("OK stable"),
        "the fast client is served again once the flood is through ({served} of 200 served): {last}"
    );
    // Every request is answered: by the service, `unavailable` when the pool's queue is
    // full, or `timeout` when a loaded machine keeps the service from answering in time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered = || {
        ["ok", "unavailable", "timeout"]
            .iter()
            .map(|o| gw.requests("stable", o))
            .sum::<f64>()
    };
    while answered() < 4200.0 {
        assert!(Instant::now() < deadline, "not every request was answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_mib = gw.proc.rss_kib() / 1024;
    let slow_dropped =
        gw.metric("zgate_replies_undeliverable_total{service=\"zgate\",reason=\"client_slow\"}");
    eprintln!(
        "fast client worst round trip {worst:?}; gateway RSS {rss_mib} MiB; {slow_dropped} replies dropped for the slow client"
    );
    assert!(
        worst < Duration::from_secs(1),
        "fast client slowed to {worst:?}"
    );
    assert!(slow_dropped > 0.0, "the slow client's queue never filled");
    assert!(rss_mib < 200, "gateway memory grew to {rss_mib} MiB");
}

#[test]
fn a_request_without_delimiter_gets_an_error_reply() {
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::DEALER, &gw.frontend);
    c.send("no delimiter", 0).unwrap();
    let r = dealer_recv(&c);
    assert!(
        r[0].starts_with(b"ERR zgate malformed:"),
        "{:?}",
        String::from_utf8_lossy(&r[0])
    );
    assert_eq!(
        gw.metric("zgate_malformed_requests_total{service=\"zgate\"}"),
        1.0
    );
}

#[test]
fn a_client_that_disconnects_mid_request_is_counted_and_harmless() {
    let svc = peer(&["rep", "--name", "stable", "--delay-ms", "300"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    {
        let gone = zmq_client(&ctx, zmq::DEALER, &gw.frontend);
        dealer_send(&gone, b"bye");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    let gone =
        gw.metric("zgate_replies_undeliverable_total{service=\"zgate\",reason=\"client_gone\"}");
    assert_eq!(gone, 1.0);
    let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    c.send("still here", 0).unwrap();
    assert_eq!(first_word(&c.recv_multipart(0).unwrap()), "OK stable");
}

#[test]
fn router_services_timeouts_and_late_replies() {
    let router = peer(&["router", "--name", "fast"]);
    let slow = peer(&["rep", "--name", "slow", "--delay-ms", "800"]);
    let gw = gateway(&[
        "--pool",
        &format!("fast={}", router.endpoint()),
        "--pool",
        &format!("slow={}", slow.endpoint()),
        "--weights",
        "fast=100",
        "--timeout",
        "300ms",
    ]);
    gw.wait_live("slow", 1.0);
    let r = client(&[
        "req",
        "--connect",
        &gw.frontend,
        "--count",
        "50",
        "--parts",
        "2",
    ]);
    assert_eq!(ok_count(&r, "fast"), 50, "{r}");
    gw.put("/weights", r#"{"slow":100}"#);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    let t = Instant::now();
    c.send("hurry", 0).unwrap();
    let reply = c.recv_multipart(0).unwrap();
    assert!(
        reply[0].starts_with(b"ERR zgate timeout: no reply from pool slow within 300ms"),
        "{reply:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "timeout reply took {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        gw.metric("zgate_late_replies_total{service=\"zgate\",pool=\"slow\"}"),
        1.0
    );
    assert_eq!(gw.requests("slow", "timeout"), 1.0);
}

#[test]
fn a_pool_without_live_backend_answers_unavailable_at_once() {
    let nobody = zdeploy_testkit::ports::free_port();
    let gw = gateway(&[
        "--pool",
        &format!("canary=tcp://127.0.0.1:{nobody}"),
        "--ready-wait",
        "0s",
    ]);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    let t = Instant::now();
    c.send("anyone?", 0).unwrap();
    let reply = c.recv_multipart(0).unwrap();
    assert_eq!(
        reply[0],
        b"ERR zgate unavailable: no live backend in pool canary"
    );
    assert!(t.elapsed() < Duration::from_millis(200));
    assert_eq!(gw.requests("canary", "unavailable"), 1.0);
}

#[test]
fn admin_api_token_validation_and_expiring_faults() {
    let dir = support::tempdir("gateway");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", svc.endpoint()),
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    gw.wait_live("stable", 1.0);
    let http = support::http();
    let url = format!("{}/weights", gw.admin);
    assert_eq!(http.get(&url).send().unwrap().status(), 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth("wrong!")
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth("s3cret")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        r#"{"stable":100}"#
    );
    let bad = http
        .put(&url)
        .bearer_auth("s3cret")
        .body(r#"{"stable":120}"#)
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .unwrap()
            .contains("stable: weight must be between 0 and 100 (got 120)")
    );
    let fault = http
        .put(format!("{}/faults/stable", gw.admin))
        .bearer_auth("s3cret")
        .body(r#"{"errorRatio":1.0,"duration":"1s"}"#)
        .send()
        .unwrap();
    assert_eq!(fault.status(), 200);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    c.send("x", 0).unwrap();
    assert!(c.recv_multipart(0).unwrap()[0].starts_with(b"ERR zgate injected"));
    // The fault carries its own expiry: nobody has to remove it.
    std::thread::sleep(Duration::from_millis(1200));
    c.send("y", 0).unwrap();
    assert_eq!(first_word(&c.recv_multipart(0).unwrap()), "OK stable");
    assert_eq!(gw.requests("stable", "error"), 1.0);
}

#[test]
fn an_admin_api_off_loopback_without_token_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args([
            "gateway",
            "--frontend",
            "tcp://127.0.0.1:*",
            "--pool",
            "a=tcp://127.0.0.1:9",
            "--admin",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-token-file"));
}

#[test]
fn sigterm_answers_pending_requests_before_exit() {
    let svc = peer(&["rep", "--name", "stable", "--delay-ms", "3000"]);
    let mut gw: Gw = gateway(&[
        "--pool",
        &format!("stable={}", svc.endpoint()),
        "--timeout",
        "10s",
    ]);
    gw.wait_live("stable", 1.0);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
    c.send("slow one", 0).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    gw.proc.signal("TERM");
    let reply = c
        .recv_multipart(0)
        .expect("an answer before the gateway exits");
    assert_eq!(reply[0], b"ERR zgate unavailable: gateway shutting down");
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn sticky_routing_keeps_each_client_on_one_pool() {
    let s = peer(&["rep", "--name", "stable"]);
    let c = peer(&["rep", "--name", "canary"]);
    let gw = two_pools(&s, &c, "stable=50,canary=50", &["--sticky"]);
    gw.wait_live("canary", 1.0);
    let ctx = zmq::Context::new();
    let mut pools_seen = std::collections::BTreeSet::new();
    for client in 0..20 {
        let sock = ctx.socket(zmq::DEALER).unwrap();
        sock.set_identity(format!("client-{client}").as_bytes())
            .unwrap();
        sock.set_linger(0).unwrap();
        sock.set_rcvtimeo(5000).unwrap();
        sock.connect(&gw.frontend).unwrap();
        let mut names = std::collections::BTreeSet::new();
        for i in 0..20 {
            dealer_send(&sock, format!("{i}").as_bytes());
            names.insert(first_word(&dealer_recv(&sock)));
        }
        assert_eq!(names.len(), 1, "client-{client} was served by {names:?}");
        pools_seen.extend(names);
    }
    assert_eq!(
        pools_seen.len(),
        2,
        "20 identities all hashed to one pool: {pools_seen:?}"
    );
}

#[test]
fn a_pool_given_by_name_connects_to_every_address_of_the_name() {
    let svc = peer(&["rep", "--name", "stable"]);
    let port = svc.endpoint().rsplit(':').next().unwrap().to_string();
    let gw = gateway(&["--pool", &format!("stable=tcp://localhost:{port}")]);
    // `/endpoints` is what the data plane sees: live once connected.
    gw.wait_live("stable", 1.0);
    let endpoints = support::http()
        .get(format!("{}/endpoints", gw.admin))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap();
    let stable: Vec<String> = endpoints["stable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["state"], "serving", "{endpoints}");
            b["address"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        stable.contains(&format!("tcp://127.0.0.1:{port}")),
        "the name was resolved to its addresses: {stable:?}"
    );
    assert!(
        !stable.iter().any(|e| e.contains("localhost")),
        "{stable:?}"
    );
    let r = client(&["req", "--connect", &gw.frontend, "--count", "20"]);
    assert_eq!(ok_count(&r, "stable"), 20, "{r}");
}

/// A listener that answers every connection with a ZMTP 3.0 greeting announcing CURVE
/// (zgate speaks NULL): the mechanism mismatch of a differently built peer.
fn curve_greeter() -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let greeter = std::thread::spawn(move || {
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
        let mut mechanism = b"CURVE".to_vec();
        mechanism.resize(20, 0);
        greeting.extend(mechanism);
        greeting.extend([0u8; 32]);
        // Bounded: for 5 s, whatever zgate does (libzmq reconnects about every 100 ms).
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(&greeting);
                    let mut sink = [0u8; 64];
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(200)));
                    let _ = conn.read(&mut sink);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    (endpoint, greeter)
}

#[test]
fn a_backend_that_fails_the_zmtp_handshake_is_counted_with_its_reason() {
    let stable = peer(&["rep", "--name", "stable"]);
    let (canary, greeter) = curve_greeter();
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", stable.endpoint()),
        "--pool",
        &format!("canary={canary}"),
    ]);
    let series =
        r#"zgate_handshake_failures_total{service="zgate",pool="canary",reason="protocol"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gw.metric(series) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no handshake failure counted:\n{}",
            gw.scrape()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        gw.metric(r#"zgate_backends_live{service="zgate",pool="canary"}"#),
        0.0
    );
    assert_eq!(
        gw.metric(
            r#"zgate_handshake_failures_total{service="zgate",pool="stable",reason="protocol"}"#
        ),
        0.0
    );
    drop(gw);
    greeter.join().unwrap();
}

#[test]
fn a_pool_whose_last_backend_dies_is_routed_nothing_until_one_is_back() {
    let stable = peer(&["rep", "--name", "stable", "--heartbeat"]);
    let canary = peer(&["rep", "--name", "canary", "--heartbeat"]);
    let canary_endpoint = canary.endpoint();
    let gw = gateway(&[
        "--pool",
        &format!("stable={}", stable.endpoint()),
        "--pool",
        &format!("canary={canary_endpoint}"),
        "--weights",
        "stable=50,canary=50",
    ]);
    gw.wait_live("stable", 1.0);
    gw.wait_live("canary", 1.0);
    drop(canary);
    gw.wait_live("canary", 0.0);
    // The configured split is unchanged; zgate routes the canary's share to stable.
    let r = client(&["req", "--connect", &gw.frontend, "--count", "200"]);
    assert_eq!(ok_count(&r, "stable"), 200, "{r}");
    assert_eq!(gw.requests("canary", "unavailable"), 0.0);
    let weight = |name: &str, pool: &str| {
        gw.metric(&format!(r#"zgate_{name}{{service="zgate",pool="{pool}"}}"#))
    };
    assert_eq!(weight("pool_weight", "canary"), 50.0);
    assert_eq!(weight("pool_routed_weight", "canary"), 0.0);
    assert_eq!(weight("pool_routed_weight", "stable"), 50.0);
    assert_eq!(weight("pool_withheld_total", "canary"), 1.0);
    // The canary comes back on its address: it gets its share again.
    let port = canary_endpoint.rsplit(':').next().unwrap();
    let bind = format!("tcp://127.0.0.1:{port}");
    let _back = peer(&["rep", "--name", "canary", "--heartbeat", "--bind", &bind]);
    gw.wait_live("canary", 1.0);
    let r = client(&["req", "--connect", &gw.frontend, "--count", "200"]);
    assert_eq!(ok_count(&r, "canary"), 100, "{r}");
    assert_eq!(weight("pool_routed_weight", "canary"), 50.0);
}

/// Sends `n` requests from a REQ client with routing id `identity` (none: libzmq's own);
/// returns how many each service answered, by the name in its reply.
fn answered_by(endpoint: &str, identity: Option<&str>, n: usize) -> BTreeMap<String, usize> {
    let ctx = zmq::Context::new();
    let c = ctx.socket(zmq::REQ).unwrap();
    c.set_linger(0).unwrap();
    c.set_rcvtimeo(10_000).unwrap();
    if let Some(id) = identity {
        c.set_identity(id.as_bytes()).unwrap();
    }
    c.connect(endpoint).unwrap();
    let mut by = BTreeMap::new();
    for i in 0..n {
        c.send(format!("q{i}").as_str(), 0).unwrap();
        let reply = c.recv_multipart(0).expect("every request is answered");
        let head = String::from_utf8_lossy(&reply[0]).into_owned();
        let name = head.split(' ').nth(1).unwrap_or("?").to_string();
        *by.entry(name).or_default() += 1;
    }
    by
}

#[test]
fn a_route_sends_matching_clients_to_the_canary_at_weight_zero_until_it_is_removed() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary"]);
    let routes = [
        "--route",
        "canary=identity:tester-",
        "--route",
        r"canary=frame:1:EUR\x00",
    ];
    let gw = two_pools(&stable, &canary, "stable=100,canary=0", &routes);
    let only = |name: &str, n: usize| BTreeMap::from([(name.to_string(), n)]);
    // Testers reach the canary, everyone else stable: exact over 1,000 requests each.
    assert_eq!(
        answered_by(&gw.frontend, Some("tester-1"), 1000),
        only("canary", 1000)
    );
    assert_eq!(
        answered_by(&gw.frontend, Some("customer-1"), 1000),
        only("stable", 1000)
    );
    assert_eq!(answered_by(&gw.frontend, None, 1000), only("stable", 1000));
    // A body frame: the second frame of a DEALER request starting with EUR and a zero byte.
    let ctx = zmq::Context::new();
    let d = zmq_client(&ctx, zmq::DEALER, &gw.frontend);
    for (frame, pool) in [(&b"EUR\x00USD"[..], "canary"), (&b"EURUSD"[..], "stable")] {
        d.send_multipart([&b""[..], b"quote", frame], 0).unwrap();
        let reply = d.recv_multipart(0).unwrap();
        let head = String::from_utf8_lossy(&reply[1]).into_owned();
        assert!(head.ends_with(pool), "{frame:?} went to {head}");
    }
    assert_eq!(
        gw.metric("zgate_route_requests_total{service=\"zgate\",pool=\"canary\"}"),
        1001.0
    );
    // A route naming no pool is refused and changes nothing; [] removes them all.
    let (code, body) = gw.put("/routes", r#"["blue=identity:tester-"]"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no pool \\\"blue\\\""), "{body}");
    assert_eq!(
        answered_by(&gw.frontend, Some("tester-2"), 10),
        only("canary", 10)
    );
    assert_eq!(gw.put("/routes", "[]"), (200, "[]".into()));
    assert_eq!(
        answered_by(&gw.frontend, Some("tester-3"), 1000),
        only("stable", 1000)
    );
}

/// Sends `n` requests from a REQ client, one at a time; returns who answered each (the
/// reply's `by=` frame, from services started with `--stamp`).
fn stamped_answers(endpoint: &str, n: usize) -> BTreeMap<String, usize> {
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::REQ, endpoint);
    let mut by = BTreeMap::new();
    for i in 0..n {
        c.send(format!("q{i}").as_str(), 0).unwrap();
        let reply = c.recv_multipart(0).expect("every request is answered");
        let who = String::from_utf8_lossy(reply.last().unwrap()).into_owned();
        *by.entry(who).or_default() += 1;
    }
    by
}

/// `zgate_shadow_total` for the canary, by outcome, once every copy of `n` is judged.
fn shadow_outcomes(gw: &Gw, n: f64) -> BTreeMap<&'static str, f64> {
    let read = || {
        ["match", "mismatch", "canary_error", "canary_timeout"]
            .map(|o| {
                let series = format!(
                    "zgate_shadow_total{{service=\"zgate\",pool=\"canary\",outcome=\"{o}\"}}"
                );
                (o, gw.metric(&series))
            })
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    };
    for _ in 0..100 {
        let seen = read();
        if seen.values().sum::<f64>() >= n {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    read()
}

#[test]
fn shadow_copies_catch_a_canary_answering_3_percent_differently_and_clients_get_only_stable() {
    let stable = peer(&["rep", "--name", "stable", "--stamp"]);
    let canary = peer(&[
        "rep",
        "--name",
        "canary",
        "--stamp",
        "--differ-ratio",
        "0.03",
    ]);
    // Frames of a reply to a one-frame request: [status, request, ts=, by=].
    let gw = two_pools(
        &stable,
        &canary,
        "stable=100,canary=0",
        &[
            "--shadow",
            "canary=100",
            "--compare-ignore-frame",
            "2",
            "--compare-ignore-frame",
            "3",
        ],
    );
    let answered = stamped_answers(&gw.frontend, 1000);
    assert_eq!(answered, BTreeMap::from([("by=stable".to_string(), 1000)]));
    let seen = shadow_outcomes(&gw, 1000.0);
    assert_eq!(seen["match"] + seen["mismatch"], 1000.0, "{seen:?}");
    // 3% of 1,000: 30 expected, beyond 10..=60 less than once in a million runs.
    assert!(
        (10.0..=60.0).contains(&seen["mismatch"]),
        "mismatches {seen:?}"
    );
    assert_eq!(
        gw.requests("canary", "ok"),
        1000.0,
        "the copies count as canary requests"
    );
    let report = gw.get("/shadow");
    assert_eq!(
        report["shadow"],
        serde_json::json!({"pool": "canary", "percent": 100})
    );
    let kept = report["mismatches"].as_array().unwrap();
    assert_eq!(kept.len(), 5, "{report}");
    assert_eq!(kept[0]["outcome"], "mismatch");
    assert_eq!(kept[0]["stable"][0], "OK");
    assert_eq!(kept[0]["canary"][0], "OK changed");
    assert!(kept[0]["request"][0].as_str().unwrap().starts_with('q'));
    // Stopped: nothing more is copied; a pool that does not exist is refused.
    let (code, body) = gw.put("/shadow", r#"{"pool": "blue", "percent": 5}"#);
    assert_eq!(code, 400, "{body}");
    assert_eq!(gw.put("/shadow", "null").0, 200);
    stamped_answers(&gw.frontend, 100);
    assert_eq!(gw.requests("canary", "ok"), 1000.0);
    assert_eq!(gw.get("/shadow")["mismatches"], serde_json::json!([]));
}

#[test]
fn replies_differing_only_in_a_masked_timestamp_match() {
    let stable = peer(&["rep", "--name", "stable", "--stamp"]);
    let canary = peer(&["rep", "--name", "canary", "--stamp"]);
    let shadow = ["--shadow", "canary=100", "--compare-ignore-frame", "3"];
    let masked: Vec<&str> = shadow
        .iter()
        .copied()
        .chain(["--compare-mask", "2:regex:ts=[0-9]+"])
        .collect();
    let gw = two_pools(&stable, &canary, "stable=100,canary=0", &masked);
    stamped_answers(&gw.frontend, 500);
    let seen = shadow_outcomes(&gw, 500.0);
    assert_eq!(seen["match"], 500.0, "{seen:?}");
    // The same replies without the mask: the timestamps differ, every pair mismatches.
    let gw = two_pools(&stable, &canary, "stable=100,canary=0", &shadow);
    stamped_answers(&gw.frontend, 100);
    let seen = shadow_outcomes(&gw, 100.0);
    assert_eq!(seen["mismatch"], 100.0, "{seen:?}");
}

#[test]
fn a_frozen_canary_never_delays_stable_replies_and_its_copies_are_shed_or_time_out() {
    let stable = peer(&["rep", "--name", "stable", "--stamp"]);
    let canary = peer(&["rep", "--name", "canary", "--stamp", "--delay-ms", "60000"]);
    let gw = two_pools(
        &stable,
        &canary,
        "stable=100,canary=0",
        &["--shadow", "canary=100", "--timeout", "500ms"],
    );
    let started = Instant::now();
    let answered = stamped_answers(&gw.frontend, 300);
    assert_eq!(answered, BTreeMap::from([("by=stable".to_string(), 300)]));
    // A frozen canary that held replies back would cost 300 x 500 ms.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(700));
    let seen = shadow_outcomes(&gw, 1.0);
    let shed =
        gw.metric("zgate_shadow_skipped_total{service=\"zgate\",pool=\"canary\",reason=\"shed\"}");
    assert!(seen["canary_timeout"] >= 1.0, "{seen:?}");
    assert_eq!(
        seen["canary_timeout"] + shed,
        300.0,
        "{seen:?}, shed {shed}"
    );
    assert_eq!(seen["match"] + seen["mismatch"], 0.0, "{seen:?}");
}
