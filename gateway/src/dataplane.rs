//! The data plane: one thread that owns every libzmq socket and runs a `zmq_poll` loop.
//!
//! A request arrives on the ROUTER frontend as `[client-id, hops..., "", body...]`. The
//! gateway keeps the envelope `[client-id, hops...]` and sends `[request-id, "", body...]`
//! to the chosen pool's DEALER; the service answers with the envelope it was given, the
//! gateway pops the request id, checks the request is still waiting, and sends
//! `[client-id, hops..., "", reply...]` back. Frames move, they are never copied. Every
//! request gets exactly one reply: the service's, or a one-frame error
//! `ERR zgate <code>: <detail>` (codes: timeout, unavailable, malformed, injected).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdeploy_api::service::ErrorClassifier;

use crate::classify::is_error_reply;
use crate::config::GatewayConfig;
use crate::control::{ActiveFault, Control, FaultAction};
use crate::metrics::{GatewayMetrics, Outcome, PoolMetrics, Undeliverable};
use crate::pending::PendingRing;
use crate::router::WeightedRoundRobin;

/// Messages taken from one socket before the others get a turn.
const BATCH: usize = 1000;
/// Longest sleep in `zmq_poll`, so settings and shutdown are seen without traffic.
const MAX_POLL_MS: i64 = 50;

struct Pending {
    /// The envelope, followed by `["", body...]` until the request is sent to its pool.
    frames: Vec<zmq::Message>,
    /// Number of envelope frames at the front of `frames`.
    envelope: usize,
    pool: usize,
    received: Instant,
    /// Counted in the pool's in-flight gauge (false when answered on arrival).
    in_flight: bool,
}

struct Pool {
    name: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    live: HashSet<Vec<u8>>,
    metrics: PoolMetrics,
    /// Endpoints the socket is connected to.
    connected: Vec<String>,
}

/// The sockets and state of a running data plane.
pub struct DataPlane {
    frontend: zmq::Socket,
    pools: Vec<Pool>,
    control: Arc<Control>,
    metrics: Arc<GatewayMetrics>,
    classifier: ErrorClassifier,
    timeout: Duration,
    sticky: bool,
    generation: u64,
    router: WeightedRoundRobin,
    faults: Vec<Option<ActiveFault>>,
    pending: PendingRing<Pending>,
    held: BinaryHeap<Reverse<(Instant, u64)>>,
    /// A request whose pool is connected but full: the frontend is not read until it leaves.
    parked: Option<u64>,
    // Dropped last: libzmq needs every socket closed before the context terminates.
    _context: zmq::Context,
}

fn tune(s: &zmq::Socket, config: &GatewayConfig) -> zmq::Result<()> {
    s.set_sndhwm(config.hwm)?;
    s.set_rcvhwm(config.hwm)?;
    s.set_linger(0)?;
    let hb = config.heartbeat.get().as_millis() as i32;
    if hb > 0 {
        s.set_heartbeat_ivl(hb)?;
        s.set_heartbeat_timeout(hb * 3)?;
        s.set_heartbeat_ttl(hb * 3)?;
    }
    Ok(())
}

impl DataPlane {
    /// Binds the frontend and connects every pool; returns the bound frontend endpoint.
    pub fn bind(
        config: &GatewayConfig,
        control: Arc<Control>,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<(Self, String), zmq::Error> {
        let context = zmq::Context::new();
        let frontend = context.socket(zmq::ROUTER)?;
        tune(&frontend, config)?;
        // Replies to gone or stalled clients fail fast instead of vanishing silently.
        frontend.set_router_mandatory(true)?;
        frontend.bind(&config.frontend)?;
        let endpoint = frontend
            .get_last_endpoint()?
            .unwrap_or_else(|_| config.frontend.clone());
        let settings = control.snapshot();
        let mut pools = Vec::new();
        for (i, p) in config.pools.iter().enumerate() {
            let socket = context.socket(zmq::DEALER)?;
            tune(&socket, config)?;
            // Queue only to connected backends: nothing waits for a dead pod to come back.
            socket.set_immediate(true)?;
            socket.set_reconnect_ivl(100)?;
            socket.set_reconnect_ivl_max(1000)?;
            let addr = format!("inproc://zgate-monitor-{i}");
            socket.monitor(
                &addr,
                (zmq::SocketEvent::CONNECTED as u16 | zmq::SocketEvent::DISCONNECTED as u16) as i32,
            )?;
            let monitor = context.socket(zmq::PAIR)?;
            monitor.connect(&addr)?;
            // IPv6 addresses come from resolving pool names.
            socket.set_ipv6(true)?;
            // Names are connected once resolved (discovery), one connection per address.
            let addresses = settings.endpoints[i].clone();
            for e in &addresses {
                socket.connect(e)?;
            }
            pools.push(Pool {
                name: p.name.clone(),
                socket,
                monitor,
                live: HashSet::new(),
                metrics: metrics.pools[i].clone(),
                connected: addresses,
            });
        }
        let plane = Self {
            frontend,
            pools,
            classifier: config.classifier.clone(),
            timeout: config.timeout.get(),
            sticky: config.sticky,
            generation: control.generation(),
            router: WeightedRoundRobin::new(&settings.weights),
            faults: settings.faults,
            control,
            metrics,
            pending: PendingRing::default(),
            held: BinaryHeap::new(),
            parked: None,
            _context: context,
        };
        plane.publish_weights(&settings.weights);
        Ok((plane, endpoint))
    }

    /// Runs until shutdown is requested, then answers whatever is still pending.
    pub fn run(mut self) {
        while !self.control.shutting_down() {
            let ready = match self.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("zmq_poll failed: {e}");
                    break;
                }
            };
            // After the poll, so a request that woke it is routed by the newest settings.
            self.reload_settings();
            let n = self.pools.len();
            if ready[0] {
                self.drain_frontend();
            }
            for i in 0..n {
                if ready[1 + i] {
                    self.drain_pool(i);
                }
                if ready[1 + n + i] {
                    self.drain_monitor(i);
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.retry_parked();
            self.send_held(now);
        }
        while let Some((id, _)) = self.pending.oldest() {
            if let Some(p) = self.pending.remove(id) {
                let detail = "unavailable: gateway shutting down";
                self.finish_with_error(p, Outcome::Unavailable, detail);
            }
        }
        // Give the last replies a moment to leave before the sockets close.
        let _ = self.frontend.set_linger(1000);
    }

    fn reload_settings(&mut self) {
        let generation = self.control.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let s = self.control.snapshot();
        self.router = WeightedRoundRobin::new(&s.weights);
        self.faults = s.faults;
        self.publish_weights(&s.weights);
        for (pool, wanted) in self.pools.iter_mut().zip(&s.endpoints) {
            if &pool.connected == wanted {
                continue;
            }
            for gone in pool.connected.iter().filter(|e| !wanted.contains(e)) {
                if let Err(e) = pool.socket.disconnect(gone) {
                    tracing::warn!(pool = %pool.name, "disconnecting {gone}: {e}");
                }
                // libzmq reports no event for a disconnect it was asked for.
                pool.live.remove(gone.as_bytes());
            }
            for new in wanted.iter().filter(|e| !pool.connected.contains(e)) {
                if let Err(e) = pool.socket.connect(new) {
                    tracing::warn!(pool = %pool.name, "connecting {new}: {e}");
                }
            }
            pool.connected = wanted.clone();
            pool.metrics.live_backends.set(pool.live.len() as i64);
        }
    }

    fn publish_weights(&self, weights: &[zdeploy_api::Weight]) {
        for (pool, w) in self.pools.iter().zip(weights) {
            pool.metrics.weight.set(i64::from(w.percent()));
        }
    }

    fn poll(&self) -> zmq::Result<Vec<bool>> {
        let now = Instant::now();
        let mut wait = Duration::from_millis(MAX_POLL_MS as u64);
        if let Some((_, p)) = self.pending.oldest() {
            wait = wait.min((p.received + self.timeout).saturating_duration_since(now));
        }
        if let Some(Reverse((due, _))) = self.held.peek() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        let parked_pool = self
            .parked
            .and_then(|id| self.pending.get(id))
            .map(|p| p.pool);
        let mut items = Vec::with_capacity(1 + 2 * self.pools.len());
        // Backpressure: while a request waits for room, clients wait in their own queues.
        let front = if parked_pool.is_some() {
            zmq::PollEvents::empty()
        } else {
            zmq::POLLIN
        };
        items.push(self.frontend.as_poll_item(front));
        items.extend(self.pools.iter().enumerate().map(|(i, p)| {
            let out = if parked_pool == Some(i) {
                zmq::POLLOUT
            } else {
                zmq::PollEvents::empty()
            };
            p.socket.as_poll_item(zmq::POLLIN | out)
        }));
        items.extend(
            self.pools
                .iter()
                .map(|p| p.monitor.as_poll_item(zmq::POLLIN)),
        );
        // Round up so a deadline 0.4 ms away does not spin.
        let ms = wait.as_micros().div_ceil(1000) as i64;
        zmq::poll(&mut items, ms)?;
        Ok(items.iter().map(|i| i.is_readable()).collect())
    }

    fn drain_frontend(&mut self) {
        for _ in 0..BATCH {
            if self.parked.is_some() {
                break;
            }
            match recv_frames(&self.frontend) {
                Some(frames) => self.on_request(frames),
                None => break,
            }
        }
    }

    fn drain_pool(&mut self, i: usize) {
        for _ in 0..BATCH {
            match recv_frames(&self.pools[i].socket) {
                Some(frames) => self.on_reply(i, frames),
                None => break,
            }
        }
    }

    fn drain_monitor(&mut self, i: usize) {
        let pool = &mut self.pools[i];
        while let Some(frames) = recv_frames(&pool.monitor) {
            let (Some(event), Some(addr)) = (frames.first(), frames.get(1)) else {
                continue;
            };
            if event.len() < 2 {
                continue;
            }
            let code = u16::from_le_bytes([event[0], event[1]]);
            if code == zmq::SocketEvent::CONNECTED as u16 {
                pool.live.insert(addr.to_vec());
            } else if code == zmq::SocketEvent::DISCONNECTED as u16 {
                pool.live.remove(&addr[..]);
            }
            pool.metrics.live_backends.set(pool.live.len() as i64);
        }
    }

    fn on_request(&mut self, mut frames: Vec<zmq::Message>) {
        let now = Instant::now();
        let Some(delim) = frames
            .iter()
            .skip(1)
            .position(|f| f.is_empty())
            .map(|d| d + 1)
        else {
            self.metrics.malformed.inc();
            frames.truncate(1);
            let text = "ERR zgate malformed: request has no empty delimiter frame; REQ sockets add one, DEALER clients must send it";
            self.deliver(frames, [zmq::Message::from(text)]);
            return;
        };
        let pool = if self.sticky {
            self.router.pick_sticky(&frames[0])
        } else {
            self.router.pick()
        }
        .unwrap_or(0);
        let action = match &self.faults[pool] {
            Some(f) => f.action(now, fastrand::f64(), fastrand::f64()),
            None => FaultAction::Forward(Duration::ZERO),
        };
        let mut p = Pending {
            frames,
            envelope: delim,
            pool,
            received: now,
            in_flight: true,
        };
        if action == FaultAction::Error {
            p.in_flight = false;
            let detail = format!(
                "injected: fault injected into pool {}",
                self.pools[pool].name
            );
            self.finish_with_error(p, Outcome::Error, &detail);
            return;
        }
        if action == FaultAction::Drop {
            p.frames.truncate(delim);
        }
        self.pools[pool].metrics.in_flight.inc();
        let id = self.pending.push(p);
        match action {
            FaultAction::Forward(delay) if !delay.is_zero() => {
                self.held.push(Reverse((now + delay, id)));
            }
            FaultAction::Forward(_) => self.dispatch(id),
            _ => {}
        }
    }

    /// Sends a pending request's body to its pool: answered `unavailable` when the pool
    /// has no live backend, parked when the pool is connected but its queues are full.
    fn dispatch(&mut self, id: u64) {
        let Some(p) = self.pending.get_mut(id) else {
            return;
        };
        if p.frames.len() <= p.envelope {
            return;
        }
        let pool = p.pool;
        if send_request(&self.pools[pool].socket, id, &mut p.frames, p.envelope) {
            return;
        }
        if self.pools[pool].live.is_empty() {
            let p = self.pending.remove(id).expect("looked up above");
            let detail = format!(
                "unavailable: no live backend in pool {}",
                self.pools[pool].name
            );
            self.finish_with_error(p, Outcome::Unavailable, &detail);
        } else {
            self.parked = Some(id);
        }
    }

    fn retry_parked(&mut self) {
        if let Some(id) = self.parked.take() {
            self.dispatch(id);
        }
    }

    fn on_reply(&mut self, pool: usize, mut frames: Vec<zmq::Message>) {
        let Some(id) = frames
            .first()
            .and_then(|f| <[u8; 8]>::try_from(&f[..]).ok())
            .map(u64::from_le_bytes)
        else {
            tracing::warn!(pool = %self.pools[pool].name, "reply without a request id; dropped");
            return;
        };
        let Some(mut p) = self.pending.remove(id) else {
            self.pools[pool].metrics.late_replies.inc();
            return;
        };
        // The service echoes `[id, ""]`; the reply body starts after that delimiter.
        let body_at = frames
            .iter()
            .skip(1)
            .position(|f| f.is_empty())
            .map_or(1, |d| d + 2);
        let body_at = body_at.min(frames.len());
        let outcome = if is_error_reply(&self.classifier, &frames[body_at..]) {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        p.frames.truncate(p.envelope);
        let envelope = std::mem::take(&mut p.frames);
        self.deliver(envelope, frames.drain(body_at..));
        self.count(&p, outcome);
    }

    fn send_held(&mut self, now: Instant) {
        while let Some(Reverse((due, id))) = self.held.peek().copied() {
            if due > now || self.parked.is_some() {
                break;
            }
            self.held.pop();
            self.dispatch(id);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((id, p)) = self.pending.oldest() {
            if p.received + self.timeout > now {
                break;
            }
            let p = self.pending.remove(id).expect("the oldest is waiting");
            let detail = format!(
                "timeout: no reply from pool {} within {}",
                self.pools[p.pool].name,
                zdeploy_api::Duration::from(self.timeout)
            );
            self.finish_with_error(p, Outcome::Timeout, &detail);
        }
    }

    /// Answers a request with a one-frame error reply and counts it.
    fn finish_with_error(&mut self, mut p: Pending, outcome: Outcome, detail: &str) {
        p.frames.truncate(p.envelope);
        let envelope = std::mem::take(&mut p.frames);
        self.deliver(
            envelope,
            [zmq::Message::from(format!("ERR zgate {detail}").as_str())],
        );
        self.count(&p, outcome);
    }

    fn count(&self, p: &Pending, outcome: Outcome) {
        let m = &self.pools[p.pool].metrics;
        m.count(outcome, p.received.elapsed().as_secs_f64());
        if p.in_flight {
            m.in_flight.dec();
        }
    }

    /// Sends `[envelope..., "", body...]` to the client; counts it when the client is gone or full.
    fn deliver(&self, envelope: Vec<zmq::Message>, body: impl IntoIterator<Item = zmq::Message>) {
        let frames = envelope
            .into_iter()
            .chain(std::iter::once(zmq::Message::new()))
            .chain(body);
        let mut frames = frames.peekable();
        let mut first = true;
        while let Some(f) = frames.next() {
            let more = if frames.peek().is_some() {
                zmq::SNDMORE
            } else {
                0
            };
            if let Err(e) = self.frontend.send(f, more | zmq::DONTWAIT) {
                // Only the first frame can fail: libzmq sends a multipart message whole.
                debug_assert!(first);
                let why = if e == zmq::Error::EHOSTUNREACH {
                    Undeliverable::ClientGone
                } else {
                    Undeliverable::ClientSlow
                };
                self.metrics.undeliverable(why);
                return;
            }
            first = false;
        }
    }
}

/// Receives one whole multipart message without blocking; `None` when nothing is queued.
fn recv_frames(socket: &zmq::Socket) -> Option<Vec<zmq::Message>> {
    let mut frames = Vec::with_capacity(4);
    loop {
        let flags = if frames.is_empty() { zmq::DONTWAIT } else { 0 };
        let mut msg = zmq::Message::new();
        if socket.recv(&mut msg, flags).is_err() {
            return None;
        }
        let more = msg.get_more();
        frames.push(msg);
        if !more {
            return Some(frames);
        }
    }
}

/// Sends `[id, frames[from..]...]` to a pool, moving those frames out of `frames`;
/// false (and nothing moved) when no backend can take the request now.
fn send_request(
    socket: &zmq::Socket,
    id: u64,
    frames: &mut Vec<zmq::Message>,
    from: usize,
) -> bool {
    if socket
        .send(&id.to_le_bytes()[..], zmq::SNDMORE | zmq::DONTWAIT)
        .is_err()
    {
        return false;
    }
    let last = frames.len() - from - 1;
    for (i, f) in frames.drain(from..).enumerate() {
        let more = if i < last { zmq::SNDMORE } else { 0 };
        // Cannot fail once the first frame is queued: the message goes whole.
        let _ = socket.send(f, more | zmq::DONTWAIT);
    }
    true
}
