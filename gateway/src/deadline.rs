//! Deadlines from a start and a span, without overflow: `Instant + Duration` panics past
//! the clock's range, and a panic in the data plane would stop every request.

use std::time::{Duration, Instant};

/// About thirty years: later than any deadline that can matter, early enough for any clock.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `start + span`, or a far-off instant when that does not fit the clock.
pub fn after(start: Instant, span: Duration) -> Instant {
    start
        .checked_add(span)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        for huge in [Duration::MAX, Duration::from_secs(u64::MAX / 2), FAR * 2] {
            let t = after(now, huge);
            assert!(t > now + Duration::from_secs(365 * 24 * 3600), "{huge:?}");
        }
    }
}
