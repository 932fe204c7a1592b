//! The data plane's heartbeat: its loop marks every turn, and `/healthz`, `/readyz` and
//! `zgate_up` read the mark, so a dead or stalled data plane turns them red instead of
//! leaving them green while no request is answered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A data plane whose last turn is older than this is stalled (a turn lasts at most one
/// 50 ms poll plus a batch).
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// What the data plane's loop last said of itself.
#[derive(Debug)]
pub struct Heartbeat {
    born: Instant,
    /// Milliseconds from `born` to the last turn.
    last: AtomicU64,
    stopped: AtomicBool,
    /// The frontend serves: every pool with weight had a live backend, or the wait for one
    /// is over.
    ready: AtomicBool,
}

/// Why the data plane is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// Its loop has not turned for this long.
    #[error("zgate's data plane has not turned for {0:?}: it is stalled")]
    Stalled(Duration),
    /// Its loop ended.
    #[error("zgate's data plane stopped")]
    Stopped,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            last: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }
}

impl Heartbeat {
    /// The loop turned at `now`.
    pub fn beat(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.born).as_millis() as u64;
        self.last.store(ms, Ordering::Release);
    }

    /// The loop ended.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// The frontend serves from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the data plane was turning at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Unhealthy> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Unhealthy::Stopped);
        }
        let last = self.born + Duration::from_millis(self.last.load(Ordering::Acquire));
        let quiet = now.saturating_duration_since(last);
        if quiet > STALE_AFTER {
            return Err(Unhealthy::Stalled(quiet));
        }
        Ok(())
    }

    /// Healthy and serving at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.ready.load(Ordering::Acquire) && self.check(now).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_or_stopped_loop_is_unhealthy() {
        let h = Heartbeat::default();
        let t0 = Instant::now();
        h.beat(t0);
        assert_eq!(h.check(t0 + Duration::from_millis(500)), Ok(()));
        assert!(!h.ready(t0), "not ready before the frontend serves");
        h.set_ready();
        assert!(h.ready(t0));
        let late = t0 + STALE_AFTER + Duration::from_millis(100);
        assert!(matches!(h.check(late), Err(Unhealthy::Stalled(_))));
        assert!(!h.ready(late));
        h.beat(late);
        assert_eq!(h.check(late), Ok(()));
        h.stop();
        assert_eq!(h.check(late), Err(Unhealthy::Stopped));
    }
}
