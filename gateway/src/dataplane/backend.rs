//! One backend of a pool: its own DEALER socket and socket monitor. zgate chooses the
//! backend of every request itself (one DEALER over many connections would round-robin
//! over all of them, draining ones too), knows which backend owes which reply, and keeps a
//! draining or removed backend connected until its last reply or the request timeout.

use std::time::{Duration, Instant};

use crate::control::{BackendView, EndpointState};

/// Socket options every zgate socket gets.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    pub hwm: i32,
    pub max_message_size: i64,
    /// ZMTP heartbeat interval in ms; 0 turns heartbeats off.
    pub heartbeat_ms: i32,
}

impl Tuning {
    pub fn apply(&self, s: &zmq::Socket) -> zmq::Result<()> {
        s.set_sndhwm(self.hwm)?;
        s.set_rcvhwm(self.hwm)?;
        s.set_linger(0)?;
        // A peer announcing a larger frame is disconnected before zgate holds any of it.
        s.set_maxmsgsize(self.max_message_size)?;
        if self.heartbeat_ms > 0 {
            s.set_heartbeat_ivl(self.heartbeat_ms)?;
            s.set_heartbeat_timeout(self.heartbeat_ms * 3)?;
            s.set_heartbeat_ttl(self.heartbeat_ms * 3)?;
        }
        Ok(())
    }
}

/// Where a backend is in its life, as discovery last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Takes new requests.
    Serving,
    /// Not ready or terminating: no new requests; its requests finish.
    Draining,
    /// Gone from discovery at `since`: closed after its last reply or the request timeout.
    Removed { since: Instant },
}

impl Lifecycle {
    /// The lifecycle after discovery says `wanted` (`None`: the endpoint is gone).
    pub fn next(self, wanted: Option<EndpointState>, now: Instant) -> Self {
        match (wanted, self) {
            (Some(EndpointState::Serving), _) => Self::Serving,
            (Some(EndpointState::Draining), _) => Self::Draining,
            (None, Self::Removed { since }) => Self::Removed { since },
            (None, _) => Self::Removed { since: now },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Removed { .. } => "removed",
        }
    }
}

/// One backend connection and what zgate knows of it.
pub(super) struct Backend {
    /// Unique for the gateway's life: a request remembers the backend it went to.
    pub id: u64,
    pub address: String,
    pub socket: zmq::Socket,
    pub monitor: zmq::Socket,
    /// The ZMTP handshake completed and the connection has not dropped since.
    pub live: bool,
    pub lifecycle: Lifecycle,
    /// Requests sent to it and not finished.
    pub outstanding: usize,
    /// Since when requests have been outstanding without any reply from it.
    pub unanswered_since: Option<Instant>,
}

impl Backend {
    /// A DEALER connected to `address`, with a monitor that reports its handshakes.
    pub fn connect(
        context: &zmq::Context,
        tuning: Tuning,
        id: u64,
        address: &str,
    ) -> zmq::Result<Self> {
        let socket = context.socket(zmq::DEALER)?;
        tuning.apply(&socket)?;
        // Queue only to a connected backend: nothing waits for a dead pod to come back.
        socket.set_immediate(true)?;
        socket.set_reconnect_ivl(100)?;
        socket.set_reconnect_ivl_max(1000)?;
        socket.set_ipv6(true)?;
        let monitor_addr = format!("inproc://zgate-backend-{id}");
        // Live means handshaken: a stopped process still accepts TCP connections.
        socket.monitor(
            &monitor_addr,
            (zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16
                | zmq::SocketEvent::DISCONNECTED as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16) as i32,
        )?;
        let monitor = context.socket(zmq::PAIR)?;
        monitor.connect(&monitor_addr)?;
        socket.connect(address)?;
        Ok(Self {
            id,
            address: address.to_string(),
            socket,
            monitor,
            live: false,
            lifecycle: Lifecycle::Serving,
            outstanding: 0,
            unanswered_since: None,
        })
    }

    /// Requests are outstanding and no reply came for longer than `timeout` (a frozen or
    /// deadlocked service: libzmq's I/O thread still answers heartbeats).
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    /// It may take a new request now.
    pub fn usable(&self, now: Instant, timeout: Duration) -> bool {
        self.live && self.lifecycle == Lifecycle::Serving && !self.stalled(now, timeout)
    }

    /// A removed backend whose last request finished or whose time is up: close it.
    pub fn finished(&self, now: Instant, timeout: Duration) -> bool {
        match self.lifecycle {
            Lifecycle::Removed { since } => {
                self.outstanding == 0 || now.saturating_duration_since(since) >= timeout
            }
            _ => false,
        }
    }

    /// A request was handed to it.
    pub fn sent(&mut self, now: Instant) {
        self.outstanding += 1;
        self.unanswered_since.get_or_insert(now);
    }

    /// It replied (to any request, late ones too: it is answering).
    pub fn replied(&mut self, now: Instant) {
        self.unanswered_since = (self.outstanding > 0).then_some(now);
    }

    /// One of its requests finished (answered, timed out or shut down).
    pub fn done(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.outstanding == 0 {
            self.unanswered_since = None;
        }
    }

    /// Stops libzmq's monitor of the socket while this side still reads it. libzmq's I/O
    /// thread sends monitor events with a blocking send: an event of a closing socket
    /// (its disconnection) sent after the reading end is gone blocked that thread, and with
    /// it every socket of the gateway, frontend included, for good.
    fn stop_monitor(&mut self) {
        // SAFETY: the socket pointer is valid while `self.socket` lives; a null endpoint is
        // libzmq's documented way to stop monitoring (zmq_socket_monitor(3)).
        let rc =
            unsafe { zmq_sys::zmq_socket_monitor(self.socket.as_mut_ptr(), std::ptr::null(), 0) };
        if rc != 0 {
            tracing::warn!(backend = %self.address, "stopping the socket monitor: {}", zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }));
        }
    }

    pub fn view(&self, now: Instant, timeout: Duration) -> BackendView {
        BackendView {
            address: self.address.clone(),
            state: self.lifecycle.label(),
            live: self.live && !self.stalled(now, timeout),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Before the fields drop: the socket closes, then the monitor's reading end.
        self.stop_monitor();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn backend(context: &zmq::Context, id: u64) -> Backend {
        let tuning = Tuning {
            hwm: 10,
            max_message_size: 1 << 20,
            heartbeat_ms: 0,
        };
        // Nothing listens there: the tests drive the state by hand.
        Backend::connect(context, tuning, id, "tcp://127.0.0.1:9").unwrap()
    }

    #[test]
    fn discovery_moves_the_lifecycle_and_a_removal_keeps_its_first_moment() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let s = Lifecycle::Serving;
        assert_eq!(
            s.next(Some(EndpointState::Draining), t0),
            Lifecycle::Draining
        );
        let removed = s.next(None, t0);
        assert_eq!(removed, Lifecycle::Removed { since: t0 });
        assert_eq!(removed.next(None, t1), Lifecycle::Removed { since: t0 });
        // A pod that comes back (same address, ready again) serves again.
        assert_eq!(
            removed.next(Some(EndpointState::Serving), t1),
            Lifecycle::Serving
        );
    }

    #[test]
    fn a_draining_backend_takes_no_new_request_and_is_never_closed() {
        let context = zmq::Context::new();
        let mut b = backend(&context, 1);
        let now = Instant::now();
        b.live = true;
        assert!(b.usable(now, TIMEOUT));
        b.sent(now);
        b.lifecycle = b.lifecycle.next(Some(EndpointState::Draining), now);
        assert!(!b.usable(now, TIMEOUT));
        b.done();
        assert!(!b.finished(now + TIMEOUT * 10, TIMEOUT));
    }

    #[test]
    fn a_removed_backend_closes_after_its_last_reply_or_the_timeout() {
        let context = zmq::Context::new();
        let mut b = backend(&context, 2);
        let now = Instant::now();
        b.live = true;
        b.sent(now);
        b.sent(now);
        b.lifecycle = b.lifecycle.next(None, now);
        assert!(!b.usable(now, TIMEOUT));
        b.replied(now);
        b.done();
        assert!(!b.finished(now, TIMEOUT), "one request is still out");
        b.done();
        assert!(b.finished(now, TIMEOUT), "the last reply came");
        let mut slow = backend(&context, 3);
        slow.sent(now);
        slow.lifecycle = slow.lifecycle.next(None, now);
        assert!(!slow.finished(now + TIMEOUT / 2, TIMEOUT));
        assert!(
            slow.finished(now + TIMEOUT, TIMEOUT),
            "its request timed out"
        );
    }

    #[test]
    fn a_backend_that_stops_replying_is_not_usable_until_it_replies() {
        let context = zmq::Context::new();
        let mut b = backend(&context, 4);
        let now = Instant::now();
        b.live = true;
        b.sent(now);
        let later = now + TIMEOUT + Duration::from_millis(1);
        assert!(b.stalled(later, TIMEOUT));
        assert!(!b.usable(later, TIMEOUT));
        assert!(!b.view(later, TIMEOUT).live);
        b.replied(later);
        assert!(b.usable(later, TIMEOUT));
    }
}
