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

    proptest::proptest! {
        /// Any span from any start: a deadline no earlier than the start, never a panic.
        #[test]
        fn any_span_gives_a_deadline(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let now = Instant::now();
            proptest::prop_assert!(after(now, Duration::new(secs, nanos)) >= now);
        }
    }

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
