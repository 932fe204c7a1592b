//! zgate against hostile input and starved resources (the `zdeploy gateway` binary, pyzmq
//! peers, loopback only): durations past their maximum, contradictory bodies, slow HTTP
//! clients under a 1,024-descriptor limit, a restart before the backends are back.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Gw, gateway, peer, zmq_client};

/// `zdeploy gateway ARGS` that must refuse to start: its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["gateway", "--frontend", "tcp://127.0.0.1:*"])
        .args(["--pool", "stable=tcp://127.0.0.1:1"])
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "zgate started with {args:?}");
    said
}

#[test]
fn durations_past_their_maximum_and_silly_limits_are_refused_at_start() {
    for (args, says) in [
        (&["--timeout", "2562047788015215h"][..], "8760h"),
        (&["--timeout", "9223372036854775807s"][..], "8760h"),
        (
            &["--timeout", "2h"][..],
            "--timeout 2h: must be above 0s and at most 1h",
        ),
        (&["--timeout", "0s"][..], "--timeout 0s: must be above 0s"),
        (
            &["--heartbeat", "1000h"][..],
            "--heartbeat 1000h: must be 0s (off) or from 10ms to 1h",
        ),
        (
            &["--heartbeat", "596h"][..],
            "--heartbeat 596h: must be 0s (off)",
        ),
        (
            &["--max-message-bytes", "10"][..],
            "--max-message-bytes 10: must be at least 1024",
        ),
        (&["--hwm", "0"][..], "--hwm 0: must be at least 1"),
        (
            &["--ready-wait", "1h"][..],
            "--ready-wait 1h: must be at most 10m",
        ),
        (&["--route", r"stable=identity:\x+1"][..], "two hex digits"),
        (&["--route", r"stable=identity:\x00"][..], "ZMQ_ROUTING_ID"),
    ] {
        let said = refused(args);
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

#[test]
fn a_huge_fault_or_a_contradictory_body_gets_a_400_and_requests_keep_being_answered() {
    let svc = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary"]);
    let gw = support::two_pools(&svc, &canary, "stable=100", &[]);
    for (path, body, says) in [
        (
            "/faults/canary",
            r#"{"latency":"9223372036854775807s","duration":"10s"}"#,
            "8760h",
        ),
        (
            "/faults/canary",
            r#"{"latency":"25h","duration":"10s"}"#,
            "latency must be at most 24h",
        ),
        (
            "/faults/canary",
            r#"{"latency":"1s","duration":"10s","duration":"1s"}"#,
            "appears twice",
        ),
        (
            "/weights",
            r#"{"stable":100,"stable":0,"canary":100}"#,
            "appears twice",
        ),
        ("/routes", r#"["canary=frame:+0:x"]"#, "not a frame index"),
    ] {
        let (status, text) = gw.put(path, body);
        assert_eq!(status, 400, "PUT {path} {body}: {text}");
        assert!(text.contains(says), "PUT {path} {body}: {text}");
    }
    assert_eq!(gw.get("/weights")["stable"], 100);
    assert_eq!(gw.get("/faults"), serde_json::json!({}));
    let r = support::client(&[
        "dealer",
        "--connect",
        &gw.frontend,
        "--count",
        "200",
        "--pipeline",
        "20",
    ]);
    assert_eq!(r["by_first_word"]["OK stable"], 200, "{r}");
}

/// zgate under a hard limit of 1,024 descriptors, with metrics and admin on loopback.
fn gateway_with_1024_descriptors(pool: &str) -> Gw {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["gateway", "--frontend", "tcp://127.0.0.1:*", "--pool", pool])
        .args(["--metrics", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    Gw::started(cmd)
}

/// Whether the server closed `s` (a read sees the end, or an error other than "no data yet").
fn closed(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_http_clients_are_cut_and_zgate_keeps_serving_with_1024_descriptors() {
    // This process holds 1,100 connections of its own.
    zdeploy_gateway::limits::raise_open_files();
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway_with_1024_descriptors(&format!("stable={}", svc.endpoint()));
    gw.wait_live("stable", 1.0);
    let metrics = gw
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let metrics: std::net::SocketAddr = metrics.parse().unwrap();

    // The attack: 1,100 connections from one address, each sending a header byte a second.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(metrics).ok())
        .collect();
    assert_eq!(
        slow.len(),
        1100,
        "the client side could not open its connections"
    );
    for s in &mut slow {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    }

    // Meanwhile, from another address, Prometheus scrapes and new ZeroMQ clients arrive.
    let scraper = reqwest::blocking::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let ctx = zmq::Context::new();
    let (mut scrapes, mut scrape_failures, mut clients, mut unanswered) = (0, Vec::new(), 0, 0);
    // Served for 8 s at least, and on until every slow connection is cut: the 5 s header
    // timeout runs from each one's accept, which a loaded machine may delay.
    let mut still_open = slow.len();
    let mut all_cut_at = None;
    while started.elapsed() < Duration::from_secs(8)
        || (still_open > 0 && started.elapsed() < Duration::from_secs(15))
    {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        for _ in 0..5 {
            scrapes += 1;
            match scraper.get(&gw.metrics).send() {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => scrape_failures.push(format!("status {}", r.status())),
                Err(e) => scrape_failures.push(e.to_string()),
            }
            let c = zmq_client(&ctx, zmq::REQ, &gw.frontend);
            c.set_rcvtimeo(2000).unwrap();
            clients += 1;
            c.send("hello", 0).unwrap();
            if c.recv_multipart(0).is_err() {
                unanswered += 1;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        still_open = slow.iter().filter(|s| !closed(s)).count();
        if still_open == 0 && all_cut_at.is_none() {
            all_cut_at = Some(started.elapsed());
        }
        eprintln!(
            "{:?}: {still_open} slow connections still open",
            started.elapsed()
        );
    }
    assert_eq!(
        still_open, 0,
        "slow-header connections were still open after 15 s (header timeout 5 s)"
    );
    assert!(
        scrape_failures.is_empty(),
        "{} of {scrapes} scrapes failed: {scrape_failures:?}",
        scrape_failures.len()
    );
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {clients} new ZeroMQ clients got no reply"
    );
    let refused =
        gw.metric("zgate_http_connections_refused_total{service=\"zgate\",listener=\"metrics\"}");
    assert!(refused >= 1000.0, "refusals counted: {refused}");
    eprintln!(
        "{scrapes} scrapes and {clients} new clients served; {refused} connections refused at the cap; all cut by {all_cut_at:?}"
    );
}

#[test]
fn a_restarted_zgate_holds_requests_until_its_backend_is_back_instead_of_refusing_them() {
    let port = zdeploy_testkit::ports::free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let gw = gateway(&["--pool", &format!("stable={endpoint}")]);
    let ctx = zmq::Context::new();
    let c = zmq_client(&ctx, zmq::DEALER, &gw.frontend);
    for i in 0..50 {
        c.send_multipart([&b""[..], format!("early-{i}").as_bytes()], 0)
            .unwrap();
    }
    // Not ready while its only pool with weight has no backend.
    assert_eq!(gw.status_of("/readyz"), 503);
    std::thread::sleep(Duration::from_millis(700));
    let _svc = peer(&["rep", "--name", "stable", "--bind", &endpoint]);
    let mut by_word = std::collections::BTreeMap::new();
    for _ in 0..50 {
        let reply = c.recv_multipart(0).expect("a reply");
        let word = String::from_utf8_lossy(&reply[1])
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        *by_word.entry(word).or_insert(0) += 1;
    }
    assert_eq!(by_word.get("OK stable"), Some(&50), "{by_word:?}");
    assert_eq!(gw.status_of("/readyz"), 200);
}

#[test]
fn health_turns_red_when_the_data_plane_is_stopped() {
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    gw.wait_live("stable", 1.0);
    let health = gw.metrics.replace("/metrics", "/healthz");
    assert_eq!(gw.status_of("/healthz"), 200);
    assert_eq!(gw.metric("zgate_up{service=\"zgate\"}"), 1.0);
    // Freeze only the data plane thread: its heartbeat stops, the HTTP side answers.
    let tid = zdeploy_testkit::freeze::thread_named(gw.proc.child.id(), "zgate-dataplane")
        .expect("zgate has a data plane thread");
    let frozen = zdeploy_testkit::freeze::freeze(tid).expect("ptrace can stop a thread");
    std::thread::sleep(Duration::from_millis(2600));
    let r = support::http().get(&health).send().unwrap();
    let (code, text) = (r.status().as_u16(), r.text().unwrap());
    let up = gw.metric("zgate_up{service=\"zgate\"}");
    drop(frozen);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("stalled"), "{text}");
    assert_eq!(up, 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.status_of("/healthz"), 200);
    assert_eq!(gw.metric("zgate_up{service=\"zgate\"}"), 1.0);
}

/// Opens `n` DEALER clients, sends one request from each, waits for every reply, closes them.
fn wave_of_clients(frontend: &str, n: usize) {
    let payload = vec![7u8; 1024];
    // libzmq allows 1,023 sockets a context.
    let contexts: Vec<zmq::Context> = (0..n.div_ceil(500)).map(|_| zmq::Context::new()).collect();
    let clients: Vec<zmq::Socket> = (0..n)
        .map(|i| {
            let s = zmq_client(&contexts[i / 500], zmq::DEALER, frontend);
            s.send_multipart([&b""[..], &payload[..]], 0).unwrap();
            s
        })
        .collect();
    for s in &clients {
        let reply = s.recv_multipart(0).expect("every client gets its reply");
        assert!(
            reply[1].starts_with(b"OK stable"),
            "{:?}",
            String::from_utf8_lossy(&reply[1])
        );
    }
}

#[test]
fn memory_taken_by_2000_clients_is_given_back_when_they_leave() {
    zdeploy_gateway::limits::raise_open_files();
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    gw.wait_live("stable", 1.0);
    wave_of_clients(&gw.frontend, 50);
    let baseline = gw.proc.rss_kib() / 1024;
    let mut after_waves = Vec::new();
    for wave in 0..3 {
        wave_of_clients(&gw.frontend, 2000);
        let with_clients = gw.proc.rss_kib() / 1024;
        // They have left; zgate gives their memory back within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut left = gw.proc.rss_kib() / 1024;
        while left > baseline + 24 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            left = gw.proc.rss_kib() / 1024;
        }
        eprintln!(
            "wave {wave}: RSS {baseline} MiB before, {with_clients} MiB with 2,000 clients, {left} MiB after they left"
        );
        after_waves.push(left);
    }
    assert!(
        after_waves.iter().all(|m| *m <= baseline + 24),
        "RSS after the clients left: {after_waves:?} MiB (baseline {baseline} MiB)"
    );
}

#[test]
fn shadowing_a_slow_canary_with_large_replies_keeps_memory_within_the_budget() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary", "--delay-ms", "1500"]);
    let gw = support::two_pools(
        &stable,
        &canary,
        "stable=100",
        &["--shadow", "canary=100", "--shadow-max-bytes", "16777216"],
    );
    let baseline = gw.proc.rss_kib() / 1024;
    let pid = gw.proc.child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    let peak = std::thread::spawn(move || {
        let mut peak = 0;
        while !watching.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(support::rss_kib(pid).unwrap_or(0) / 1024);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    // 1 MiB requests (echoed: 1 MiB replies), 20 in flight, 300 in all.
    let r = support::client(&[
        "dealer",
        "--connect",
        &gw.frontend,
        "--count",
        "300",
        "--pipeline",
        "20",
        "--size",
        "1048576",
    ]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.join().unwrap();
    assert_eq!(r["by_first_word"]["OK stable"], 300, "{r}");
    let shed =
        gw.metric("zgate_shadow_skipped_total{service=\"zgate\",pool=\"canary\",reason=\"shed\"}");
    eprintln!(
        "RSS {baseline} MiB before, peak {peak} MiB; {shed} comparisons shed at the 16 MiB budget"
    );
    assert!(shed > 0.0, "nothing was shed: the budget was never reached");
    // The budget, the 20 requests and replies in flight on each side, and libzmq's buffers.
    assert!(
        peak < baseline + 120,
        "RSS peaked at {peak} MiB from {baseline} MiB"
    );
}

#[test]
fn a_body_not_sent_in_time_is_answered_408_before_any_handler_sees_it() {
    let svc = peer(&["rep", "--name", "stable"]);
    let gw = gateway(&["--pool", &format!("stable={}", svc.endpoint())]);
    let admin = gw.admin.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"PUT /weights HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"stable\"")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    eprintln!("after {:?}: {answer:?}", t.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert_eq!(gw.get("/weights")["stable"], 100);
}
