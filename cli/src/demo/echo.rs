//! The example ZeroMQ service: a REP socket that echoes requests. Its version may carry
//! build metadata that makes it misbehave, so a demo can ship a bad build:
//! `1.1+errors=0.2` answers 20% of requests with `ERR`, `1.1+latency=300ms` adds delay.

use std::sync::atomic::Ordering;
use std::time::Duration;

use zdeploy_api::Duration as Span;

use crate::signals;

/// Arguments of `zdeploy example echo`.
#[derive(clap::Args)]
pub struct Args {
    /// Endpoint to bind, e.g. tcp://127.0.0.1:6001.
    #[arg(long)]
    bind: String,
    /// The version it reports; `+errors=R` and `+latency=D` make it misbehave.
    #[arg(long, default_value = "1.0")]
    version: String,
    /// Share of requests answered with an error, 0..1 (adds to the version's).
    #[arg(long, default_value_t = 0.0)]
    error_ratio: f64,
    /// Delay added to every reply.
    #[arg(long, default_value = "0s")]
    latency: Span,
}

/// Misbehaviour read from a version's build metadata.
fn faults(version: &str) -> (f64, Duration) {
    let mut errors = 0.0;
    let mut latency = Duration::ZERO;
    for part in version.split('+').skip(1).flat_map(|m| m.split(',')) {
        match part.split_once('=') {
            Some(("errors", r)) => errors = r.parse().unwrap_or(0.0),
            Some(("latency", d)) => latency = d.parse::<Span>().map(Span::get).unwrap_or_default(),
            _ => {}
        }
    }
    (errors, latency)
}

/// Serves until asked to stop (SIGTERM, Ctrl-C; on Windows Ctrl-Break too).
pub fn run(args: &Args) -> anyhow::Result<()> {
    let stop = signals::stop_flag();
    let (meta_errors, meta_latency) = faults(&args.version);
    let error_ratio = (args.error_ratio + meta_errors).min(1.0);
    let latency = args.latency.get() + meta_latency;
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::REP)?;
    sock.set_linger(0)?;
    sock.set_rcvtimeo(100)?;
    sock.bind(&args.bind)?;
    eprintln!(
        "echo {} listening on {} (errors {error_ratio}, latency {latency:?})",
        args.version, args.bind
    );
    let ok = format!("OK echo {}", args.version);
    let err = format!("ERR echo {} simulated failure", args.version);
    while !stop.load(Ordering::Relaxed) {
        let request = match sock.recv_multipart(0) {
            Ok(r) => r,
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let head = if fastrand::f64() < error_ratio {
            &err
        } else {
            &ok
        };
        let mut reply = vec![head.as_bytes().to_vec()];
        reply.extend(request);
        sock.send_multipart(reply, 0)?;
    }
    eprintln!("echo {}: stopping", args.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_metadata_makes_a_bad_build() {
        assert_eq!(faults("1.0"), (0.0, Duration::ZERO));
        assert_eq!(faults("1.1+errors=0.2"), (0.2, Duration::ZERO));
        assert_eq!(
            faults("1.1+errors=0.5,latency=300ms"),
            (0.5, Duration::from_millis(300))
        );
    }
}
