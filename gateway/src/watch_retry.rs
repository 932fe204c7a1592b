//! How zdeploy's watches of the Kubernetes API retry after it went away: doubling from
//! 100 ms to at most 1 s. kube's default (up to 30 s) left zgate on old weights for 6 s, and
//! the controller deaf to a rollback for 28 s, after an API server restart in the cluster
//! suite; a rollback must land at once, and a few small watches a second are cheap for
//! the server.

use std::time::Duration;

/// The next delay between watch retries; starts again after a success.
pub struct WatchRetry(Duration);

impl WatchRetry {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);
}

impl Default for WatchRetry {
    fn default() -> Self {
        WatchRetry(Self::FIRST)
    }
}

impl Iterator for WatchRetry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.0;
        self.0 = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchRetry {
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn retries_double_to_a_second_and_start_again_after_a_success() {
        let mut r = WatchRetry::default();
        let ms: Vec<u128> = r.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        r.reset();
        assert_eq!(r.next(), Some(Duration::from_millis(100)));
    }
}
