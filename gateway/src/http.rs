//! zdeploy's HTTP listeners (zgate's `/metrics` and admin API, the controller's probes,
//! the webhook, `zdeploy up`'s API), bounded: a client that sends its headers slowly or
//! keeps a connection idle is cut after `header_timeout` (hyper's own timer), a body not
//! sent within `body_timeout` is answered 408 (one larger than `max_body_bytes`, 413)
//! before any handler sees it, and connections beyond a total and a per-address cap are
//! closed on arrival and counted. A handler may take as long as it needs (a chaos run
//! answers when it ends).
//! One slow or hostile client cannot hold descriptors that zgate's ZeroMQ side needs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Connections a listener refused at its caps (a Prometheus counter: clones share it).
pub type Refused = prometheus_client::metrics::counter::Counter;

/// How much one listener lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_per_address: usize,
    /// Time to send a request's headers, and the most a kept-alive connection idles.
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// The largest body read.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    /// Enough for Prometheus, kubelet probes and a few people: every client of these
    /// listeners is a machine that sends its request at once.
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_address: 32,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: 4 << 20,
        }
    }
}

/// Connections open now, in total and by address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; its place is given back when dropped.
struct Admitted {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Admitted {
    fn take(open: &Arc<Mutex<Open>>, address: IpAddr, limits: &Limits) -> Option<Self> {
        let mut o = open.lock().expect("connection counts");
        let from_address = o.by_address.get(&address).copied().unwrap_or(0);
        if o.total >= limits.max_connections || from_address >= limits.max_per_address {
            return None;
        }
        o.total += 1;
        *o.by_address.entry(address).or_default() += 1;
        Some(Self {
            open: open.clone(),
            address,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut o = self.open.lock().expect("connection counts");
        o.total -= 1;
        if let Some(n) = o.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                o.by_address.remove(&self.address);
            }
        }
    }
}

/// Binds `addr` and serves `router` there within `limits` until the task is aborted;
/// connections refused at a cap are counted in `refused`.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    refused: Refused,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, router, limits, refused));
    Ok((bound, task))
}

/// Serves `router` on `listener` within `limits`; never returns.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, refused: Refused) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut failing = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                failing = false;
                accepted
            }
            Err(e) => {
                // Out of descriptors, most likely: wait for some to be given back.
                if !failing {
                    tracing::warn!("accepting an HTTP connection failed: {e}");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = Admitted::take(&open, peer.ip(), &limits) else {
            refused.inc();
            drop(stream);
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            async move {
                let (parts, body) = req.into_parts();
                match read_body(body, &limits).await {
                    Ok(body) => router.oneshot(Request::from_parts(parts, body)).await,
                    Err(refusal) => Ok(refusal),
                }
            }
        });
        tokio::spawn(async move {
            let _admitted = admitted;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // A cut connection is the point of the limits, not an error worth a log line.
            let _ = connection.await;
        });
    }
}

/// The whole body, read within the limits; the response that refuses it otherwise.
async fn read_body(body: Incoming, limits: &Limits) -> Result<Body, Response> {
    let limited = http_body_util::Limited::new(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Body::from(collected.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes\n", limits.max_body_bytes),
        )
            .into_response()),
        Ok(Err(e)) => {
            Err((StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")).into_response())
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the body was not sent within {:?}\n", limits.body_timeout),
        )
            .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_every_address_and_give_places_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = Limits {
            max_connections: 3,
            max_per_address: 2,
            ..Limits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = Admitted::take(&open, a, &limits).unwrap();
        let _a2 = Admitted::take(&open, a, &limits).unwrap();
        assert!(Admitted::take(&open, a, &limits).is_none(), "per address");
        let _b1 = Admitted::take(&open, b, &limits).unwrap();
        assert!(Admitted::take(&open, b, &limits).is_none(), "in total");
        drop(a1);
        assert!(Admitted::take(&open, b, &limits).is_some());
    }
}
