//! The tests' validity (a canary at its bound is failed with probability at most alpha,
//! looked at after every request), their power, and their boundary cases.

use super::*;
use proptest::prelude::*;

fn tally(requests: u64, bad: u64) -> Tally {
    Tally { requests, bad }
}

/// Simpson's rule for ∫_lo^hi f, fine enough for smooth integrands on [0, 1].
fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let steps = 20_000;
    let h = (hi - lo) / f64::from(steps);
    let mut sum = f(lo) + f(hi);
    for i in 1..steps {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * f(lo + h * f64::from(i));
    }
    sum * h / 3.0
}

#[test]
fn one_sample_evidence_is_the_mixture_it_claims_to_be() {
    for (n, k, p0) in [(30, 6, 0.01), (100, 1, 0.01), (200, 9, 0.05), (50, 0, 0.02)] {
        let t = tally(n, k);
        let lr = |p: f64| (p / p0).powi(k as i32) * ((1.0 - p) / (1.0 - p0)).powi((n - k) as i32);
        let c = 0.75;
        let norm = (1.0 - p0.powf(1.0 - c)) / (1.0 - c);
        let above = integrate(|p| lr(p) * p.powf(-c), p0, 1.0) / norm;
        let below = integrate(lr, 0.0, p0) / p0;
        let e = ln_evidence(t, Bound::AtMost(p0)).exp();
        assert!(
            (e - above).abs() <= 1e-6 * above.max(1.0),
            "n={n} k={k}: {e} vs {above}"
        );
        let e = ln_evidence(t, Bound::AtLeast(p0)).exp();
        assert!(
            (e - below).abs() <= 1e-6 * below.max(1.0),
            "n={n} k={k}: {e} vs {below}"
        );
    }
}

#[test]
fn boundary_cases() {
    // No requests: no evidence either way.
    assert!(ln_evidence(tally(0, 0), Bound::AtMost(0.01)).abs() < 1e-12);
    assert!(ln_evidence_relative(tally(0, 0), tally(0, 0), Comparison::Margin(0.005)) <= 1e-9);
    // All errors: overwhelming evidence after a handful.
    assert!(ln_evidence(tally(5, 5), Bound::AtMost(0.01)) > 100_f64.ln());
    // Only successes: never evidence of a breach of a max, strong evidence against a min.
    assert!(ln_evidence(tally(100_000, 0), Bound::AtMost(0.01)) < 0.0);
    assert!(ln_evidence(tally(1_000, 0), Bound::AtLeast(0.01)) > 100_f64.ln());
    // Stable without traffic: a relative check can never fail, whatever the canary does.
    assert!(ln_evidence_relative(tally(50, 50), tally(0, 0), Comparison::Margin(0.005)) <= 1e-9);
    assert!(ln_evidence_relative(tally(50, 50), tally(0, 0), Comparison::Factor(2.0)) <= 1e-9);
    // Large counts stay finite.
    let big = ln_evidence(tally(50_000_000, 400_000), Bound::AtMost(0.01));
    assert!(big.is_finite() && big < 0.0, "{big}");
    let big = ln_evidence(tally(50_000_000, 600_000), Bound::AtMost(0.01));
    assert!(big.is_finite() && big > 1000.0, "{big}");
    // A canary far worse than stable fails the relative check.
    let e = ln_evidence_relative(tally(200, 20), tally(10_000, 50), Comparison::Margin(0.005));
    assert!(e > 100_f64.ln(), "{e}");
    let e = ln_evidence_relative(tally(200, 20), tally(10_000, 50), Comparison::Factor(2.0));
    assert!(e > 100_f64.ln(), "{e}");
}

/// Looks after every request at a canary exactly at its bound (the null's worst case):
/// the share of runs whose evidence ever reaches 1/alpha.
fn false_alarms_one_sample(p0: f64, alpha: f64, runs: u64, requests: u64) -> f64 {
    let threshold = (1.0 / alpha).ln();
    let mut alarms = 0;
    for seed in 0..runs {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut t = tally(0, 0);
        for _ in 0..requests {
            t.requests += 1;
            if rng.f64() < p0 {
                t.bad += 1;
                // Evidence only grows on a bad request: looking there is looking always.
                if ln_evidence_bound(t, Bound::AtMost(p0)) >= threshold
                    && ln_evidence(t, Bound::AtMost(p0)) >= threshold
                {
                    alarms += 1;
                    break;
                }
            }
        }
    }
    alarms as f64 / runs as f64
}

#[test]
fn a_canary_at_its_bound_is_failed_at_most_alpha_of_the_time_looking_after_every_request() {
    // alpha 0.05 so that 2,000 runs can tell: the standard error is about 0.005.
    for p0 in [0.01, 0.2] {
        let rate = false_alarms_one_sample(p0, 0.05, 2_000, 3_000);
        assert!(rate <= 0.05 + 0.01, "p0={p0}: {rate}");
    }
}

#[test]
fn canary_identical_to_stable_is_rarely_failed_by_the_relative_check_whatever_the_split() {
    let alpha: f64 = 0.05;
    let threshold = (1.0 / alpha).ln();
    let (runs, mut alarms) = (1_000u32, 0u32);
    for seed in 0..runs {
        let mut rng = fastrand::Rng::with_seed(u64::from(seed));
        let (mut c, mut s) = (tally(0, 0), tally(0, 0));
        // Both pools at 1%, margin 0: the null's boundary. The split moves 10% -> 25% -> 50%.
        'run: for (share, looks) in [(0.1, 20), (0.25, 20), (0.5, 20)] {
            for _ in 0..looks {
                for _ in 0..200 {
                    let pool = if rng.f64() < share { &mut c } else { &mut s };
                    pool.requests += 1;
                    pool.bad += u64::from(rng.f64() < 0.01);
                }
                if ln_evidence_relative(c, s, Comparison::Margin(0.0)) >= threshold {
                    alarms += 1;
                    break 'run;
                }
            }
        }
    }
    let rate = f64::from(alarms) / f64::from(runs);
    assert!(rate <= alpha + 0.015, "{rate}");
}

#[test]
fn a_canary_failing_a_fifth_of_its_requests_is_caught_in_a_handful() {
    // alpha 0.01 split over the example's three checks.
    let threshold = (3.0 / 0.01_f64).ln();
    let mut needed = Vec::new();
    for seed in 0..501 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut t = tally(0, 0);
        while ln_evidence(t, Bound::AtMost(0.01)) < threshold {
            t.requests += 1;
            t.bad += u64::from(rng.f64() < 0.2);
        }
        needed.push(t.requests);
    }
    needed.sort_unstable();
    let median = needed[needed.len() / 2];
    assert!(median <= 20, "median {median} requests");
}

#[test]
fn wilson_interval_covers_the_estimate() {
    let (lo, hi) = wilson_interval(tally(100, 1), 1.96);
    assert!(lo > 0.0 && lo < 0.01 && hi > 0.01 && hi < 0.06, "{lo} {hi}");
    assert_eq!(wilson_interval(tally(0, 0), 1.96), (0.0, 1.0));
}

proptest! {
    #[test]
    fn the_cheap_bound_is_an_upper_bound(n in 0u64..5_000, share in 0.0f64..1.0, p0 in 0.001f64..0.6) {
        let t = tally(n, (n as f64 * share) as u64);
        for b in [Bound::AtMost(p0), Bound::AtLeast(p0)] {
            prop_assert!(ln_evidence(t, b) <= ln_evidence_bound(t, b) + 1e-9);
        }
    }

    #[test]
    fn more_bad_requests_are_more_evidence(n in 1u64..5_000, k in 0u64..5_000, p0 in 0.001f64..0.5) {
        let k = k % n;
        let t = tally(n, k);
        let worse = tally(n, k + 1);
        prop_assert!(ln_evidence(worse, Bound::AtMost(p0)) >= ln_evidence(t, Bound::AtMost(p0)) - 1e-9);
        prop_assert!(ln_evidence(worse, Bound::AtLeast(p0)) <= ln_evidence(t, Bound::AtLeast(p0)) + 1e-9);
    }

    #[test]
    fn relative_evidence_is_finite_and_never_above_one_when_the_estimates_keep_the_gate(
        nc in 0u64..3_000, kc in 0u64..3_000, ns in 0u64..30_000, ks in 0u64..3_000, m in 0.0f64..0.05
    ) {
        let c = tally(nc, kc.min(nc));
        let s = tally(ns, ks.min(ns));
        let e = ln_evidence_relative(c, s, Comparison::Margin(m));
        prop_assert!(e.is_finite());
        let rate = |t: Tally| if t.requests == 0 { 0.0 } else { t.bad as f64 / t.requests as f64 };
        if rate(c) <= rate(s) + m {
            prop_assert!(e <= 1e-9, "{e}");
        }
    }
}
