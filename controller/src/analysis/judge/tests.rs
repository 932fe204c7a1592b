//! Verdicts from counts and from values: evidence fails, minSamples only gates a pass.

use super::*;
use zdeploy_api::Duration;
use zdeploy_api::service::{Builtin, Relative};

fn metric(builtin: Builtin, max: f64) -> Metric {
    Metric {
        name: "m".into(),
        builtin: Some(builtin),
        query: None,
        counts: None,
        window: Duration::from_secs(60),
        max: Some(max),
        min: None,
        relative: None,
        min_samples: None,
    }
}

fn analysis(metrics: Vec<Metric>, min_samples: u64) -> Analysis {
    Analysis {
        min_samples,
        metrics,
        ..Analysis::default()
    }
}

fn counted(requests: u64, bad: u64) -> Reading {
    Reading {
        value: Some(bad as f64 / requests.max(1) as f64),
        samples: requests as f64,
        canary: Some(Tally { requests, bad }),
        ..Reading::default()
    }
}

#[test]
fn one_error_in_a_hundred_is_no_evidence_of_a_breach_of_one_percent() {
    let m = metric(Builtin::ErrorRatio, 0.01);
    let j = judge(&m, &analysis(vec![m.clone()], 100), &counted(100, 1));
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
    let e = j.evidence.unwrap();
    assert!(e.evidence < 1.0 && e.fail_at == 100.0, "{e:?}");
    assert!(j.reason.contains("1 bad of 100"), "{}", j.reason);
}

#[test]
fn a_clear_breach_fails_before_min_samples() {
    let m = metric(Builtin::ErrorRatio, 0.01);
    let j = judge(&m, &analysis(vec![m.clone()], 100), &counted(30, 6));
    assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    assert!(
        j.reason.contains("evidence") && j.reason.contains(">= 100"),
        "{}",
        j.reason
    );
    assert!(j.reason.contains("95% CI"), "{}", j.reason);
}

#[test]
fn few_requests_without_evidence_are_inconclusive() {
    let m = metric(Builtin::ErrorRatio, 0.01);
    let j = judge(&m, &analysis(vec![m.clone()], 100), &counted(30, 1));
    assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
    assert!(
        j.reason.contains("only 30 requests, 100 needed to pass"),
        "{}",
        j.reason
    );
    // No requests at all: inconclusive, never failed.
    let j = judge(&m, &analysis(vec![m.clone()], 100), &counted(0, 0));
    assert_eq!(j.verdict, Verdict::Inconclusive);
    let down = Reading {
        error: Some("connection refused".into()),
        ..Reading::default()
    };
    assert_eq!(
        judge(&m, &analysis(vec![m.clone()], 0), &down).verdict,
        Verdict::Inconclusive
    );
}

#[test]
fn alpha_is_shared_by_every_counted_check() {
    let mut rel = metric(Builtin::ErrorRatio, 0.01);
    rel.relative = Some(Relative {
        margin: Some(0.005),
        factor: None,
    });
    let a = analysis(vec![rel, metric(Builtin::LatencyP99, 0.8)], 100);
    // error max + error relative + latency max = 3 checks.
    assert!((fail_at(&a) - 300.0).abs() < 1e-9);
}

#[test]
fn latency_is_judged_on_the_share_slower_than_the_threshold() {
    let m = metric(Builtin::LatencyP99, 0.8);
    let a = analysis(vec![m.clone()], 100);
    // 0.5% slower than 800 ms: within "p99 <= 800 ms".
    let j = judge(&m, &a, &counted(2_000, 10));
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
    // 5% slower: a breach.
    let j = judge(&m, &a, &counted(2_000, 100));
    assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    assert!(j.reason.contains("slower than 0.8s"), "{}", j.reason);
}

#[test]
fn relative_checks_compare_with_stable_and_wait_for_it() {
    let mut m = metric(Builtin::ErrorRatio, 0.5);
    m.relative = Some(Relative {
        margin: Some(0.005),
        factor: None,
    });
    let a = analysis(vec![m.clone()], 100);
    // The case: 1 error in 100 beside stable at 0.44% is no evidence.
    let mut r = counted(100, 1);
    r.stable = Some(Tally {
        requests: 9_000,
        bad: 40,
    });
    assert_eq!(judge(&m, &a, &r).verdict, Verdict::Pass);
    // 10% beside 0.44%: fails.
    let mut r = counted(400, 40);
    r.stable = Some(Tally {
        requests: 9_000,
        bad: 40,
    });
    let j = judge(&m, &a, &r);
    assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    assert!(
        j.reason.contains("stable's 40 bad of 9000 requests"),
        "{}",
        j.reason
    );
    // Stable without traffic: inconclusive, never a pass or a failure.
    let mut r = counted(400, 1);
    r.stable = Some(Tally::default());
    assert_eq!(judge(&m, &a, &r).verdict, Verdict::Inconclusive);
}

#[test]
fn value_thresholds_still_judge_queries() {
    let m = Metric {
        builtin: None,
        query: Some("q".into()),
        ..metric(Builtin::ErrorRatio, 0.01)
    };
    let a = analysis(vec![m.clone()], 50);
    let value = |v: f64| Reading {
        value: Some(v),
        samples: 100.0,
        ..Reading::default()
    };
    assert_eq!(judge(&m, &a, &value(0.005)).verdict, Verdict::Pass);
    assert_eq!(judge(&m, &a, &value(0.2)).verdict, Verdict::Fail);
    assert_eq!(
        judge(&m, &a, &value(f64::NAN)).verdict,
        Verdict::Inconclusive
    );
}

#[test]
fn overall_verdict() {
    use Verdict::*;
    assert_eq!(overall([Pass, Inconclusive, Fail]), Fail);
    assert_eq!(overall([Pass, Inconclusive]), Inconclusive);
    assert_eq!(overall([Pass, Pass]), Pass);
}
