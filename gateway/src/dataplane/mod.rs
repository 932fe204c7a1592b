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
//! Each backend has its own DEALER (`backend.rs`): zgate picks the backend of each request
//! round-robin among the pool's usable ones (handshaken, serving, answering), so a draining
//! backend gets nothing new while its requests finish.
//!
//! One pool never holds up another: a pool that cannot take a request now keeps it in its
//! own bounded backlog (answered `overloaded` when that is full) while the frontend goes on
//! reading. A pool with no usable backend gets weight 0 here, whatever its configured
//! weight, until one is back (counted in `zgate_pool_withheld_total`).
//! A request id is a sequence number and a keyed hash of it: a backend cannot forge the id
//! of a request it was not sent, and a reply counts only from the backend its request went to.

mod backend;
mod shadow;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdeploy_api::compare::Comparator;
use zdeploy_api::service::ErrorClassifier;
use zdeploy_api::shadow::ShadowCopy;

use crate::classify::is_error_reply;
use crate::config::GatewayConfig;
use crate::control::{ActiveFault, Control, Endpoint, FaultAction};
use crate::deadline::after;
use crate::envelope;
use crate::metrics::{GatewayMetrics, HandshakeFailure, Outcome, PoolMetrics, Undeliverable};
use crate::pending::PendingRing;
use crate::router::WeightedRoundRobin;
use crate::routes::{Route, RouteTable};
use backend::{Backend, Lifecycle, Tuning};
use shadow::{SHADOW_BIT, Shadow};

/// A backend's place in the poll: (pool index, backend index in the pool).
type Slot = (usize, usize);

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
    /// The backend it was sent to (its id), once sent.
    backend: Option<u64>,
    received: Instant,
    /// Counted in the pool's in-flight gauge (false when answered on arrival).
    in_flight: bool,
    /// The id of its shadow copy, if one was sent.
    shadow: Option<u64>,
}

struct Pool {
    name: String,
    backends: Vec<Backend>,
    /// Where the next round-robin choice starts.
    cursor: usize,
    metrics: PoolMetrics,
    /// Requests waiting for room in this pool's queues, oldest first (ids of `pending`).
    backlog: VecDeque<u64>,
    /// Whether a backend could take a request at the last look.
    usable: bool,
}

impl Pool {
    fn usable_backends(&self, now: Instant, timeout: Duration) -> usize {
        self.backends
            .iter()
            .filter(|b| b.usable(now, timeout))
            .count()
    }

    fn backend_mut(&mut self, id: u64) -> Option<&mut Backend> {
        self.backends.iter_mut().find(|b| b.id == id)
    }

    /// Why the pool cannot take a request now.
    fn unavailable(&self, timeout: Duration) -> String {
        let serving_live = self
            .backends
            .iter()
            .any(|b| b.live && b.lifecycle == Lifecycle::Serving);
        if serving_live {
            let outstanding: usize = self.backends.iter().map(|b| b.outstanding).sum();
            format!(
                "unavailable: pool {} has not replied for {} with {outstanding} requests outstanding",
                self.name,
                zdeploy_api::Duration::from(timeout),
            )
        } else {
            format!("unavailable: no live backend in pool {}", self.name)
        }
    }
}

/// The sockets and state of a running data plane.
pub struct DataPlane {
    frontend: zmq::Socket,
    pools: Vec<Pool>,
    /// The configured weights; pools without a usable backend are routed 0 of them.
    weights: Vec<zdeploy_api::Weight>,
    tuning: Tuning,
    /// The id the next backend gets.
    next_backend: u64,
    control: Arc<Control>,
    metrics: Arc<GatewayMetrics>,
    classifier: ErrorClassifier,
    timeout: Duration,
    sticky: bool,
    generation: u64,
    router: WeightedRoundRobin,
    faults: Vec<Option<ActiveFault>>,
    /// Routes by client with their pool's index, first match wins.
    routes: RouteTable,
    /// The shadow pool's index and the share of other requests copied to it.
    shadow: Option<(usize, zdeploy_api::Weight)>,
    /// How a copy's reply is compared with the client's.
    comparator: Comparator,
    /// Copies waiting for their replies, in the order they were sent.
    shadows: PendingRing<Shadow>,
    /// Copies in `shadows`, bounded by `backlog_limit`.
    shadows_open: usize,
    /// Bytes of replies `shadows` keeps for comparison, bounded by `shadow_budget`.
    shadow_bytes: usize,
    shadow_budget: usize,
    pending: PendingRing<Pending>,
    held: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Requests a pool's backlog holds at most.
    backlog_limit: usize,
    /// Until when the frontend stays unread while a pool with weight has no live backend;
    /// `None` once it serves.
    ready_by: Option<Instant>,
    /// The key of the hash that makes request ids unguessable.
    id_key: std::collections::hash_map::RandomState,
    // Dropped last: libzmq needs every socket closed before the context terminates.
    context: zmq::Context,
}

impl DataPlane {
    /// Binds the frontend and connects every pool; returns the bound frontend endpoint.
    pub fn bind(
        config: &GatewayConfig,
        control: Arc<Control>,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<(Self, String), zmq::Error> {
        let context = zmq::Context::new();
        let tuning = Tuning {
            hwm: config.hwm,
            max_message_size: config.max_message_size,
            heartbeat_ms: config.heartbeat.get().as_millis() as i32,
        };
        let frontend = context.socket(zmq::ROUTER)?;
        tuning.apply(&frontend)?;
        // Replies to gone or stalled clients fail fast instead of vanishing silently.
        frontend.set_router_mandatory(true)?;
        frontend.bind(&config.frontend)?;
        let endpoint = frontend
            .get_last_endpoint()?
            .unwrap_or_else(|_| config.frontend.clone());
        let settings = control.snapshot();
        let pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| Pool {
                name: p.name.clone(),
                backends: Vec::new(),
                cursor: 0,
                metrics: metrics.pools[i].clone(),
                backlog: VecDeque::new(),
                usable: false,
            })
            .collect();
        let mut plane = Self {
            frontend,
            pools,
            weights: settings.weights.clone(),
            tuning,
            next_backend: 1,
            classifier: config.classifier.clone(),
            timeout: config.timeout.get(),
            sticky: config.sticky,
            generation: control.generation(),
            router: WeightedRoundRobin::new(&settings.weights),
            routes: RouteTable::default(),
            shadow: None,
            comparator: config
                .compare
                .compile()
                .expect("masks are checked with the configuration"),
            shadows: PendingRing::default(),
            shadows_open: 0,
            shadow_bytes: 0,
            shadow_budget: config.shadow_max_bytes,
            faults: settings.faults.clone(),
            control,
            metrics,
            pending: PendingRing::default(),
            held: BinaryHeap::new(),
            backlog_limit: usize::try_from(config.hwm).unwrap_or(1).max(1),
            id_key: std::collections::hash_map::RandomState::new(),
            ready_by: Some(after(Instant::now(), config.ready_wait.get())),
            context,
        };
        // Names are connected once resolved (discovery), one backend per address.
        for (i, wanted) in settings.endpoints.iter().enumerate() {
            plane.follow_endpoints(i, wanted, Instant::now())?;
        }
        plane.routes = plane.resolve(&settings.routes);
        plane.shadow = plane.resolve_shadow(settings.shadow.as_ref());
        plane.publish_weights(&settings.weights);
        plane.publish_backends();
        Ok((plane, endpoint))
    }

    /// Runs until shutdown is requested, then answers whatever is still pending.
    pub fn run(mut self) {
        while !self.control.shutting_down() {
            let (ready, slots) = match self.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("zmq_poll failed: {e}");
                    break;
                }
            };
            // After the poll, so a request that woke it is routed by the newest settings.
            self.reload_settings();
            if ready[0] && self.ready_by.is_none() {
                self.drain_frontend();
            }
            let mut changed = false;
            for (k, &(pool, backend)) in slots.iter().enumerate() {
                if ready[1 + k] {
                    self.drain_backend(pool, backend);
                }
                if ready[1 + slots.len() + k] {
                    changed |= self.drain_monitor(pool, backend);
                }
            }
            let now = Instant::now();
            self.metrics.heartbeat.beat(now);
            self.expire(now);
            changed |= self.retire(now);
            for i in 0..self.pools.len() {
                self.send_backlog(i);
            }
            self.send_held(now);
            if self.refresh_usable(now) || changed {
                self.publish_backends();
            }
            self.end_warm_up(now);
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

    /// Opens the frontend once every pool with weight has a usable backend, or the wait
    /// for them is over (their requests are then answered `unavailable` as usual).
    fn end_warm_up(&mut self, now: Instant) {
        let Some(by) = self.ready_by else {
            return;
        };
        let waiting: Vec<&str> = self
            .pools
            .iter()
            .zip(&self.weights)
            .filter(|(p, w)| {
                **w != zdeploy_api::Weight::ZERO && p.usable_backends(now, self.timeout) == 0
            })
            .map(|(p, _)| p.name.as_str())
            .collect();
        if !waiting.is_empty() && now < by {
            return;
        }
        if waiting.is_empty() {
            tracing::info!("every pool with weight has a live backend: serving");
        } else {
            tracing::warn!(pools = ?waiting, "no live backend yet in pools with weight: serving anyway, their requests are answered unavailable until one connects");
        }
        self.ready_by = None;
        self.metrics.heartbeat.set_ready();
    }

    fn reload_settings(&mut self) {
        let generation = self.control.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let s = self.control.snapshot();
        self.weights = s.weights.clone();
        self.faults = s.faults;
        self.routes = self.resolve(&s.routes);
        let shadow = self.resolve_shadow(s.shadow.as_ref());
        if shadow != self.shadow {
            // Pairs kept belong to the old setting; new ones are for the new one.
            self.control.clear_samples();
            self.shadow = shadow;
        }
        self.publish_weights(&s.weights);
        let now = Instant::now();
        for (i, wanted) in s.endpoints.iter().enumerate() {
            if let Err(e) = self.follow_endpoints(i, wanted, now) {
                tracing::warn!(pool = %self.pools[i].name, "following endpoints: {e}");
            }
        }
        self.route_by_usable(now);
        self.publish_backends();
    }

    /// Brings pool `i`'s backends in line with `wanted`: new ones connected, gone ones
    /// removed (closed after their last reply), the others serving or draining as told.
    fn follow_endpoints(&mut self, i: usize, wanted: &[Endpoint], now: Instant) -> zmq::Result<()> {
        let pool = &mut self.pools[i];
        for b in &mut pool.backends {
            let state = wanted
                .iter()
                .find(|e| e.address == b.address)
                .map(|e| e.state);
            let next = b.lifecycle.next(state, now);
            if next != b.lifecycle {
                tracing::info!(pool = %pool.name, backend = %b.address, "{:?} -> {next:?}", b.lifecycle);
                b.lifecycle = next;
            }
        }
        for e in wanted {
            if pool.backends.iter().any(|b| b.address == e.address) {
                continue;
            }
            let mut b =
                Backend::connect(&self.context, self.tuning, self.next_backend, &e.address)?;
            self.next_backend += 1;
            b.lifecycle = b.lifecycle.next(Some(e.state), now);
            pool.backends.push(b);
        }
        Ok(())
    }

    /// Closes removed backends that are done; true when one was closed.
    fn retire(&mut self, now: Instant) -> bool {
        let timeout = self.timeout;
        let mut any = false;
        for pool in &mut self.pools {
            let before = pool.backends.len();
            pool.backends.retain(|b| !b.finished(now, timeout));
            any |= pool.backends.len() != before;
        }
        any
    }

    /// Notes which pools can take a request; reroutes when that changed. True on a change.
    fn refresh_usable(&mut self, now: Instant) -> bool {
        // Counted once per pool: this runs after every batch.
        let mut changed = false;
        for p in &self.pools {
            let usable = p.usable_backends(now, self.timeout);
            changed |= p.usable != (usable > 0);
            p.metrics.live_backends.set(usable as i64);
        }
        if changed {
            self.route_by_usable(now);
        }
        changed
    }

    /// Routes by the configured weights, with 0 for a pool that has no usable backend
    /// (unless no pool has one: then requests are answered `unavailable` as configured).
    fn route_by_usable(&mut self, now: Instant) {
        let mut routed = self.weights.clone();
        for (i, p) in self.pools.iter_mut().enumerate() {
            let usable = p.usable_backends(now, self.timeout) > 0;
            if p.usable && !usable && self.weights[i] != zdeploy_api::Weight::ZERO {
                p.metrics.withheld.inc();
                tracing::warn!(pool = %p.name, "no usable backend: routing 0% to it until one is back");
            }
            p.usable = usable;
            if !usable {
                routed[i] = zdeploy_api::Weight::ZERO;
            }
        }
        if routed.iter().all(|w| *w == zdeploy_api::Weight::ZERO) {
            routed = self.weights.clone();
        }
        for (p, w) in self.pools.iter().zip(&routed) {
            p.metrics.routed_weight.set(i64::from(w.percent()));
        }
        self.router = WeightedRoundRobin::new(&routed);
    }

    /// The routes with their pool's index; one naming no pool is dropped (the admin API
    /// and the configuration check refuse those).
    fn resolve(&self, routes: &[Route]) -> RouteTable {
        RouteTable::new(routes.iter().filter_map(|r| {
            let i = self.pools.iter().position(|p| p.name == r.pool)?;
            Some((r.matcher.clone(), i))
        }))
    }

    /// The shadow pool's index and share; `None` for no shadow, 0% or an unknown pool
    /// (which the admin API and the configuration check refuse).
    fn resolve_shadow(&self, shadow: Option<&ShadowCopy>) -> Option<(usize, zdeploy_api::Weight)> {
        let s = shadow.filter(|s| s.percent != zdeploy_api::Weight::ZERO)?;
        let i = self.pools.iter().position(|p| p.name == s.pool)?;
        Some((i, s.percent))
    }

    fn publish_weights(&self, weights: &[zdeploy_api::Weight]) {
        for (pool, w) in self.pools.iter().zip(weights) {
            pool.metrics.weight.set(i64::from(w.percent()));
        }
    }

    fn publish_backends(&self) {
        let now = Instant::now();
        self.control.publish_backends(
            self.pools
                .iter()
                .map(|p| {
                    p.backends
                        .iter()
                        .map(|b| b.view(now, self.timeout))
                        .collect()
                })
                .collect(),
        );
    }

    /// Polls the frontend, every backend and every backend's monitor; returns which are
    /// readable and the `(pool, backend index)` of each backend slot.
    fn poll(&self) -> zmq::Result<(Vec<bool>, Vec<Slot>)> {
        let now = Instant::now();
        let mut wait = Duration::from_millis(MAX_POLL_MS as u64);
        if let Some((_, p)) = self.pending.oldest() {
            wait = wait.min(after(p.received, self.timeout).saturating_duration_since(now));
        }
        if let Some(Reverse((due, _))) = self.held.peek() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Some(due) = self.next_shadow_deadline() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Some(by) = self.ready_by {
            wait = wait.min(by.saturating_duration_since(now));
        }
        let slots: Vec<Slot> = self
            .pools
            .iter()
            .enumerate()
            .flat_map(|(i, p)| (0..p.backends.len()).map(move |b| (i, b)))
            .collect();
        let mut items = Vec::with_capacity(1 + 2 * slots.len());
        // Unread while warming up: requests wait in libzmq's queue, not in an error reply.
        let frontend = match self.ready_by {
            Some(_) => zmq::PollEvents::empty(),
            None => zmq::POLLIN,
        };
        items.push(self.frontend.as_poll_item(frontend));
        for &(i, b) in &slots {
            let pool = &self.pools[i];
            // A pool with a backlog is woken when a backend has room again.
            let out = if pool.backlog.is_empty() {
                zmq::PollEvents::empty()
            } else {
                zmq::POLLOUT
            };
            let backend = &pool.backends[b];
            items.push(backend.socket.as_poll_item(zmq::POLLIN | out));
            // A stall is seen a timeout after the oldest unanswered send.
            if let Some(t) = backend.unanswered_since {
                wait = wait.min(
                    after(t, self.timeout).saturating_duration_since(now)
                        + Duration::from_millis(1),
                );
            }
        }
        for &(i, b) in &slots {
            items.push(self.pools[i].backends[b].monitor.as_poll_item(zmq::POLLIN));
        }
        // Round up so a deadline 0.4 ms away does not spin.
        let ms = wait.as_micros().div_ceil(1000) as i64;
        zmq::poll(&mut items, ms)?;
        Ok((items.iter().map(|i| i.is_readable()).collect(), slots))
    }

    fn drain_frontend(&mut self) {
        for _ in 0..BATCH {
            match recv_frames(&self.frontend) {
                Some(frames) => self.on_request(frames),
                None => break,
            }
        }
    }

    fn drain_backend(&mut self, pool: usize, b: usize) {
        for _ in 0..BATCH {
            match recv_frames(&self.pools[pool].backends[b].socket) {
                Some(frames) => self.on_reply(pool, b, frames),
                None => break,
            }
        }
    }

    /// Reads a backend's monitor events; true when its liveness changed.
    fn drain_monitor(&mut self, pool: usize, b: usize) -> bool {
        let Pool {
            name,
            metrics,
            backends,
            ..
        } = &mut self.pools[pool];
        let backend = &mut backends[b];
        let before = backend.live;
        while let Some(frames) = recv_frames(&backend.monitor) {
            let Some(event) = frames.first().filter(|e| e.len() >= 2) else {
                continue;
            };
            let code = u16::from_le_bytes([event[0], event[1]]);
            if code == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                backend.live = true;
            } else if code == zmq::SocketEvent::DISCONNECTED as u16 {
                backend.live = false;
            } else if let Some(why) = handshake_failure(code) {
                metrics.handshake_failed(why);
                tracing::warn!(
                    pool = %name,
                    backend = %backend.address,
                    "ZeroMQ handshake with a backend failed ({why:?}): is it a ZeroMQ peer of a compatible version and security mechanism?"
                );
            }
        }
        backend.live != before
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
        let body = &frames[delim + 1..];
        // A route to a pool with no usable backend falls back to the weights.
        let routed = self.routes.pick(
            &frames[0],
            |n| body.get(n).map(|f| &f[..]),
            |pool| self.pools[pool].usable,
        );
        let pool = match routed {
            Some(pool) => {
                self.pools[pool].metrics.route_requests.inc();
                pool
            }
            None if self.sticky => self.router.pick_sticky(&frames[0]).unwrap_or(0),
            None => self.router.pick().unwrap_or(0),
        };
        let action = match &self.faults[pool] {
            Some(f) => f.action(now, fastrand::f64(), fastrand::f64()),
            None => FaultAction::Forward(Duration::ZERO),
        };
        let shadow = match action {
            FaultAction::Forward(_) => self.start_shadow(pool, &frames, delim, now),
            _ => None,
        };
        let mut p = Pending {
            frames,
            envelope: delim,
            pool,
            backend: None,
            received: now,
            in_flight: true,
            shadow,
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
                self.held.push(Reverse((after(now, delay), id)));
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
    /// has no usable backend, kept in the pool's backlog when its backends' queues are
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
        if pool.usable_backends(now, self.timeout) == 0 {
            let why = pool.unavailable(self.timeout);
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

    /// Sends request `id` now to the next usable backend of its pool that has room
    /// (round-robin); true when sent.
    fn try_send(&mut self, id: u64) -> bool {
        let wire = self.wire_id(id);
        let Some(p) = self.pending.get_mut(id) else {
            return true;
        };
        let now = Instant::now();
        let pool = &mut self.pools[p.pool];
        let n = pool.backends.len();
        for k in 0..n {
            let b = (pool.cursor + k) % n;
            let backend = &mut pool.backends[b];
            if !backend.usable(now, self.timeout)
                || !send_request(&backend.socket, &wire, &mut p.frames, p.envelope)
            {
                continue;
            }
            backend.sent(now);
            p.backend = Some(backend.id);
            pool.cursor = b + 1;
            return true;
        }
        false
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

    fn on_reply(&mut self, pool: usize, b: usize, mut frames: Vec<zmq::Message>) {
        // Any reply, late ones too, shows the backend is answering.
        let backend = &mut self.pools[pool].backends[b];
        backend.replied(Instant::now());
        let from = backend.id;
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
        if id & SHADOW_BIT != 0 {
            let body = well_formed.then(|| &frames[2..]);
            self.canary_answered(pool, from, id & !SHADOW_BIT, body);
            return;
        }
        let Some(waiting) = self.pending.get(id) else {
            self.pools[pool].metrics.late_replies.inc();
            return;
        };
        // Only the backend the request went to may answer it.
        if waiting.pool != pool || waiting.backend != Some(from) {
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
        if let Some(copy) = p.shadow {
            self.stable_answered(copy, &frames[2..], outcome == Outcome::Error);
        }
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
            if after(p.received, self.timeout) > now {
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
        self.expire_shadows(now);
    }

    /// Answers a request with a one-frame error reply and counts it.
    fn finish_with_error(&mut self, mut p: Pending, outcome: Outcome, detail: &str) {
        if let Some(copy) = p.shadow {
            self.stable_failed(copy);
        }
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
        if let Some(b) = p.backend.and_then(|id| pool.backend_mut(id)) {
            b.done();
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
