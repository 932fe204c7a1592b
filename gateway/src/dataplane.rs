//! The data plane: one thread that owns every libzmq socket and runs a `zmq_poll` loop.
//!
//! A request arrives on the ROUTER frontend as `[client-id, hops..., "", body...]`. The
//! gateway keeps the envelope `[client-id, hops...]` and sends `[request-id, "", body...]`
//! to the chosen pool's DEALER; the service answers with the envelope it was given, the
//! gateway pops the request id, checks the request is still waiting, and sends
//! `[client-id, hops..., "", reply...]` back. Frames move, they are never copied. Every
//! request gets exactly one reply: the service's, or a one-frame error
//! `ERR zgate <code>: <detail>` (codes: timeout, unavailable, overloaded, malformed,
//! bad_reply, injected).
//!
//! One pool never holds up another: a pool that cannot take a request now keeps it in its
//! own bounded backlog (answered `overloaded` when that is full) while the frontend goes on
//! reading; a pool counts as live only through connections whose ZMTP handshake completed,
//! and not while requests are outstanding without any reply for longer than the timeout
//! (a frozen or deadlocked service: libzmq's I/O thread still answers heartbeats).
//! A request id is a sequence number and a keyed hash of it: a backend cannot forge the id
//! of a request it was not sent, and a reply counts only from the pool its request went to.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdeploy_api::service::ErrorClassifier;

use crate::classify::is_error_reply;
use crate::config::GatewayConfig;
use crate::control::{ActiveFault, Control, FaultAction};
use crate::envelope;
use crate::metrics::{GatewayMetrics, HandshakeFailure, Outcome, PoolMetrics, Undeliverable};
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
    /// Handed to the pool's socket (counted in the pool's outstanding requests).
    sent: bool,
}

struct Pool {
    name: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    /// Connections whose handshake completed, by address.
    live: HashSet<Vec<u8>>,
    metrics: PoolMetrics,
    /// Endpoints the socket is connected to.
    connected: Vec<String>,
    /// Requests waiting for room in this pool's queues, oldest first (ids of `pending`).
    backlog: VecDeque<u64>,
    /// Requests sent and not finished.
    outstanding: usize,
    /// Since when requests have been outstanding without a reply from this pool.
    unanswered_since: Option<Instant>,
}

impl Pool {
    /// Whether requests are outstanding and no reply came for longer than `timeout`.
    fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    fn publish_live(&self, now: Instant, timeout: Duration) {
        let live = if self.stalled(now, timeout) {
            0
        } else {
            self.live.len()
        };
        self.metrics.live_backends.set(live as i64);
    }
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
    /// Requests a pool's backlog holds at most.
    backlog_limit: usize,
    /// The key of the hash that makes request ids unguessable.
    id_key: std::collections::hash_map::RandomState,
    // Dropped last: libzmq needs every socket closed before the context terminates.
    _context: zmq::Context,
}

fn tune(s: &zmq::Socket, config: &GatewayConfig) -> zmq::Result<()> {
    s.set_sndhwm(config.hwm)?;
    s.set_rcvhwm(config.hwm)?;
    s.set_linger(0)?;
    // A peer announcing a larger frame is disconnected before zgate holds any of it.
    s.set_maxmsgsize(config.max_message_size)?;
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
            // Live means handshaken: a stopped process still accepts TCP connections.
            socket.monitor(
                &addr,
                (zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16
                    | zmq::SocketEvent::DISCONNECTED as u16
                    | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16
                    | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16
                    | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16) as i32,
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
                backlog: VecDeque::new(),
                outstanding: 0,
                unanswered_since: None,
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
            backlog_limit: usize::try_from(config.hwm).unwrap_or(1).max(1),
            id_key: std::collections::hash_map::RandomState::new(),
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
            for i in 0..n {
                self.send_backlog(i);
                self.pools[i].publish_live(now, self.timeout);
            }
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
            pool.publish_live(Instant::now(), self.timeout);
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
        let mut items = Vec::with_capacity(1 + 2 * self.pools.len());
        items.push(self.frontend.as_poll_item(zmq::POLLIN));
        items.extend(self.pools.iter().map(|p| {
            // A pool with a backlog is woken when it has room again.
            let out = if p.backlog.is_empty() {
                zmq::PollEvents::empty()
            } else {
                zmq::POLLOUT
            };
            p.socket.as_poll_item(zmq::POLLIN | out)
        }));
        // A stall is seen a timeout after the oldest unanswered send.
        for p in &self.pools {
            if let Some(t) = p.unanswered_since {
                wait = wait.min(
                    (t + self.timeout).saturating_duration_since(now) + Duration::from_millis(1),
                );
            }
        }
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
            if code == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                pool.live.insert(addr.to_vec());
            } else if code == zmq::SocketEvent::DISCONNECTED as u16 {
                pool.live.remove(&addr[..]);
            } else if let Some(why) = handshake_failure(code) {
                pool.metrics.handshake_failed(why);
                tracing::warn!(
                    pool = %pool.name,
                    backend = %String::from_utf8_lossy(addr),
                    "ZeroMQ handshake with a backend failed ({why:?}): is it a ZeroMQ peer of a compatible version and security mechanism?"
                );
            }
            pool.publish_live(Instant::now(), self.timeout);
        }
    }

    fn on_request(&mut self, mut frames: Vec<zmq::Message>) {
        let now = Instant::now();
        let delim = match envelope::request(&frames) {
            envelope::Request::Routable { delimiter } => delimiter,
            envelope::Request::NoDelimiter => {
                self.metrics.malformed.inc();
                frames.truncate(1);
                let text = "ERR zgate malformed: request has no empty delimiter frame; REQ sockets add one, DEALER clients must send it";
                self.deliver(frames, [zmq::Message::from(text)]);
                return;
            }
            envelope::Request::NoBody { delimiter } => {
                // Forwarded, it would time out at a REP service and count against the pool.
                self.metrics.malformed.inc();
                frames.truncate(delimiter);
                let text =
                    "ERR zgate malformed: request has no body after the empty delimiter frame";
                self.deliver(frames, [zmq::Message::from(text)]);
                return;
            }
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
            sent: false,
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

    /// The id a backend sees: the sequence number and a keyed hash of it.
    fn wire_id(&self, id: u64) -> [u8; envelope::ID_LEN] {
        let mut out = [0u8; envelope::ID_LEN];
        out[..8].copy_from_slice(&id.to_le_bytes());
        out[8..].copy_from_slice(&self.id_key.hash_one(id).to_le_bytes());
        out
    }

    /// Sends a pending request's body to its pool: answered `unavailable` when the pool
    /// has no live backend or has stalled, kept in the pool's backlog when its queues are
    /// full (answered `overloaded` when the backlog is full too). The frontend never waits.
    fn dispatch(&mut self, id: u64) {
        let now = Instant::now();
        let Some(p) = self.pending.get(id) else {
            return;
        };
        if p.frames.len() <= p.envelope {
            return;
        }
        let i = p.pool;
        let pool = &self.pools[i];
        if pool.live.is_empty() || pool.stalled(now, self.timeout) {
            let why = if pool.live.is_empty() {
                format!("unavailable: no live backend in pool {}", pool.name)
            } else {
                format!(
                    "unavailable: pool {} has not replied for {} with {} requests outstanding",
                    pool.name,
                    zdeploy_api::Duration::from(self.timeout),
                    pool.outstanding
                )
            };
            let p = self.pending.remove(id).expect("looked up above");
            self.finish_with_error(p, Outcome::Unavailable, &why);
            return;
        }
        // Order is kept: behind a backlog, a request waits its turn.
        if pool.backlog.is_empty() && self.try_send(id) {
            return;
        }
        self.drop_stale_backlog(i);
        let pool = &mut self.pools[i];
        if pool.backlog.len() >= self.backlog_limit {
            let why = format!(
                "overloaded: pool {} is full ({} requests waiting for room)",
                pool.name,
                pool.backlog.len()
            );
            let p = self.pending.remove(id).expect("looked up above");
            self.finish_with_error(p, Outcome::Unavailable, &why);
        } else {
            pool.backlog.push_back(id);
        }
    }

    /// Sends request `id` to its pool now if the pool has room; true when sent.
    fn try_send(&mut self, id: u64) -> bool {
        let wire = self.wire_id(id);
        let Some(p) = self.pending.get_mut(id) else {
            return true;
        };
        let pool = &mut self.pools[p.pool];
        if !send_request(&pool.socket, &wire, &mut p.frames, p.envelope) {
            return false;
        }
        p.sent = true;
        pool.outstanding += 1;
        pool.unanswered_since.get_or_insert_with(Instant::now);
        true
    }

    /// Forgets backlog entries whose requests were answered meanwhile (timed out).
    fn drop_stale_backlog(&mut self, i: usize) {
        while let Some(&id) = self.pools[i].backlog.front() {
            if self.pending.get(id).is_some() {
                break;
            }
            self.pools[i].backlog.pop_front();
        }
    }

    /// Sends what a pool's backlog holds, oldest first, while the pool has room.
    fn send_backlog(&mut self, i: usize) {
        self.drop_stale_backlog(i);
        while let Some(&id) = self.pools[i].backlog.front() {
            if self.pending.get(id).is_some() && !self.try_send(id) {
                return;
            }
            self.pools[i].backlog.pop_front();
        }
    }

    fn on_reply(&mut self, pool: usize, mut frames: Vec<zmq::Message>) {
        // Any reply, late ones too, shows the pool is answering.
        let p = &mut self.pools[pool];
        p.unanswered_since = (p.outstanding > 0).then(Instant::now);
        let (wire, well_formed) = match envelope::reply(&frames) {
            envelope::Reply::Answer { id } => (id, true),
            envelope::Reply::Malformed { id } => (id, false),
            envelope::Reply::NoId => {
                // Counted, not logged: a misbehaving backend must not flood the log.
                self.metrics.rejected_reply(pool);
                return;
            }
        };
        let id = u64::from_le_bytes(wire[..8].try_into().expect("8 bytes"));
        // An id zgate did not make is forged (or guessed), whether or not it is waiting.
        if wire != self.wire_id(id) {
            self.metrics.rejected_reply(pool);
            return;
        }
        let Some(waiting) = self.pending.get(id) else {
            self.pools[pool].metrics.late_replies.inc();
            return;
        };
        // Only the pool the request went to may answer it.
        if waiting.pool != pool {
            self.metrics.rejected_reply(pool);
            return;
        }
        let mut p = self.pending.remove(id).expect("looked up above");
        // The service echoes `[id, ""]`, then its reply: anything else is the pool's error.
        if !well_formed {
            let detail = format!(
                "bad_reply: pool {} answered without an empty delimiter frame and a body",
                self.pools[pool].name
            );
            self.finish_with_error(p, Outcome::Error, &detail);
            return;
        }
        let outcome = if is_error_reply(&self.classifier, &frames[2..]) {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        p.frames.truncate(p.envelope);
        let envelope = std::mem::take(&mut p.frames);
        self.deliver(envelope, frames.drain(2..));
        self.count(&p, outcome);
    }

    fn send_held(&mut self, now: Instant) {
        while let Some(Reverse((due, id))) = self.held.peek().copied() {
            if due > now {
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

    fn count(&mut self, p: &Pending, outcome: Outcome) {
        let pool = &mut self.pools[p.pool];
        pool.metrics
            .count(outcome, p.received.elapsed().as_secs_f64());
        if p.in_flight {
            pool.metrics.in_flight.dec();
        }
        if p.sent {
            pool.outstanding = pool.outstanding.saturating_sub(1);
            if pool.outstanding == 0 {
                pool.unanswered_since = None;
            }
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
/// The failure a monitor event code reports, if it is a failed handshake.
fn handshake_failure(code: u16) -> Option<HandshakeFailure> {
    use zmq::SocketEvent as E;
    [
        (E::HANDSHAKE_FAILED_PROTOCOL, HandshakeFailure::Protocol),
        (E::HANDSHAKE_FAILED_AUTH, HandshakeFailure::Auth),
        (E::HANDSHAKE_FAILED_NO_DETAIL, HandshakeFailure::Other),
    ]
    .into_iter()
    .find_map(|(event, why)| (event as u16 == code).then_some(why))
}

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
    id: &[u8; envelope::ID_LEN],
    frames: &mut Vec<zmq::Message>,
    from: usize,
) -> bool {
    if socket.send(&id[..], zmq::SNDMORE | zmq::DONTWAIT).is_err() {
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
