//! Verdicts. Rates (`errorRatio`, `counts` metrics, and latency gates read as "at most 1%
//! of requests slower than the threshold") are judged from counts by the anytime-valid
//! tests of [`super::sequential`]: a check fails as soon as its evidence reaches
//! 1/(alpha/checks), however few requests that took; `minSamples` is the floor for a pass
//! only. Values without counts (PromQL `query` metrics, latency `min` and `relative`) are
//! compared with their thresholds. No data, NaN or a source that is down are inconclusive,
//! never a failure and never a pass.

use zdeploy_api::service::{Analysis, Evidence, Metric, Tally, Verdict};

use super::sequential::{Bound, Comparison, ln_evidence, ln_evidence_relative, wilson_interval};

/// The normal quantile of the interval shown beside a verdict (95%).
const INTERVAL_Z: f64 = 1.96;

/// What a source measured for one metric.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// The canary's value (a ratio, or a quantile in seconds), when the source had one.
    pub value: Option<f64>,
    /// Stable's value, for relative threshold checks.
    pub stable_value: Option<f64>,
    /// Requests the canary served in the span judged.
    pub samples: f64,
    /// The canary's requests and bad ones, for count-judged checks.
    pub canary: Option<Tally>,
    /// Stable's, for relative count-judged checks.
    pub stable: Option<Tally>,
    /// Why there is no measurement, when the source could not give one.
    pub error: Option<String>,
}

/// A check judged from counts by a sequential test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Counted {
    /// The canary's bad-request rate against a bound, by the one-sample test.
    Rate(Bound),
    /// The canary's rate against stable's, by the two-sample test.
    Relative(Comparison),
}

/// A check of a value against a threshold (no counts, no sequential guarantee).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Valued {
    /// The canary's value at most this.
    AtMost(f64),
    /// The canary's value at least this.
    AtLeast(f64),
    /// The canary's value against stable's value.
    Relative(Comparison),
}

/// The checks a metric asks for, each in the form it is judged in.
#[derive(Default)]
struct Checks {
    counted: Vec<Counted>,
    valued: Vec<Valued>,
}

fn checks(m: &Metric) -> Checks {
    let mut out = Checks::default();
    let comparisons: Vec<Comparison> = m
        .relative
        .iter()
        .flat_map(|r| {
            r.margin
                .map(Comparison::Margin)
                .into_iter()
                .chain(r.factor.map(Comparison::Factor))
        })
        .collect();
    if m.judges_rate() {
        out.counted
            .extend(m.max.map(|b| Counted::Rate(Bound::AtMost(b))));
        out.counted
            .extend(m.min.map(|b| Counted::Rate(Bound::AtLeast(b))));
        out.counted
            .extend(comparisons.into_iter().map(Counted::Relative));
    } else if let Some(share) = m.builtin.and_then(|b| b.share_above()) {
        // "p99 at most 800 ms" is "at most 1% of requests slower than 800 ms".
        out.counted
            .extend(m.max.map(|_| Counted::Rate(Bound::AtMost(share))));
        out.valued.extend(m.min.map(Valued::AtLeast));
        out.valued
            .extend(comparisons.into_iter().map(Valued::Relative));
    } else {
        out.valued.extend(m.max.map(Valued::AtMost));
        out.valued.extend(m.min.map(Valued::AtLeast));
        out.valued
            .extend(comparisons.into_iter().map(Valued::Relative));
    }
    out
}

/// Whether the metric needs counts from its source (bad and all requests).
pub fn needs_counts(m: &Metric) -> bool {
    !checks(m).counted.is_empty()
}

/// Whether the metric's counted checks compare with stable, so stable's counts are needed.
pub fn needs_stable_counts(m: &Metric) -> bool {
    checks(m)
        .counted
        .iter()
        .any(|c| matches!(c, Counted::Relative(_)))
}

/// The level of evidence at which one count-judged check fails: alpha is shared equally
/// among every such check of the analysis (looks need no share: the tests are anytime-valid).
pub fn fail_at(analysis: &Analysis) -> f64 {
    let checks = analysis
        .metrics
        .iter()
        .map(|m| checks(m).counted.len())
        .sum::<usize>()
        .max(1);
    checks as f64 / analysis.alpha
}

/// A verdict, why, and the evidence behind it when it was judged from counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    /// Pass, fail or inconclusive.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// Counts, statistic and interval for a count-judged metric.
    pub evidence: Option<Evidence>,
}

impl Judged {
    fn new(verdict: Verdict, reason: String, evidence: Option<Evidence>) -> Self {
        Self {
            verdict,
            reason,
            evidence,
        }
    }
}

fn percent(x: f64) -> String {
    let p = x * 100.0;
    if p >= 10.0 || p == 0.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

fn describe(t: Tally, what: &str) -> String {
    let rate = if t.requests == 0 {
        0.0
    } else {
        t.bad as f64 / t.requests as f64
    };
    format!(
        "{} {what} of {} requests ({})",
        t.bad,
        t.requests,
        percent(rate)
    )
}

fn share_of(bound: Bound) -> f64 {
    match bound {
        Bound::AtMost(b) | Bound::AtLeast(b) => b,
    }
}

fn number(e: f64) -> String {
    if e >= 1e6 {
        format!("{e:.2e}")
    } else if e >= 10.0 {
        format!("{e:.0}")
    } else {
        format!("{e:.2}")
    }
}

/// Judges one metric's reading under `analysis` (its `minSamples`, `alpha` and checks).
pub fn judge(metric: &Metric, analysis: &Analysis, r: &Reading) -> Judged {
    let inconclusive = |why: String| Judged::new(Verdict::Inconclusive, why, None);
    if let Some(e) = &r.error {
        return inconclusive(format!("no measurement: {e}"));
    }
    let checks = checks(metric);
    let need = metric.min_samples.unwrap_or(analysis.min_samples);
    let bad_word = match metric.max {
        Some(max) if !metric.judges_rate() => format!("slower than {max}s"),
        _ => "bad".to_string(),
    };

    // Count-judged checks first: a failure needs evidence only, no minimum of requests.
    let threshold = fail_at(analysis);
    let mut evidence: Option<Evidence> = None;
    let mut failures = Vec::new();
    let mut waiting = Vec::new();
    for check in checks.counted.iter().copied() {
        let Some(canary) = r.canary.filter(|c| c.requests > 0) else {
            return inconclusive(
                "no requests counted yet (no traffic, or no series for this service and pool)"
                    .into(),
            );
        };
        let interval = wilson_interval(canary, INTERVAL_Z);
        let (ln_e, stable, words) = match check {
            Counted::Rate(bound) => {
                let words = match bound {
                    _ if !metric.judges_rate() => format!(
                        "{bad_word} more often than the allowed {}",
                        percent(share_of(bound))
                    ),
                    Bound::AtMost(b) => format!("above the maximum {}", percent(b)),
                    Bound::AtLeast(b) => format!("below the minimum {}", percent(b)),
                };
                (ln_evidence(canary, bound), None, words)
            }
            Counted::Relative(cmp) => {
                let Some(stable) = r.stable.filter(|s| s.requests > 0) else {
                    waiting.push("stable has served no requests to compare with".to_string());
                    continue;
                };
                let words = match cmp {
                    Comparison::Margin(m) => format!(
                        "above stable's {} by more than {m}",
                        describe(stable, &bad_word)
                    ),
                    Comparison::Factor(f) => format!(
                        "more than {f} times stable's {}",
                        describe(stable, &bad_word)
                    ),
                };
                (
                    ln_evidence_relative(canary, stable, cmp),
                    Some(stable),
                    words,
                )
            }
        };
        let e = ln_e.exp();
        let this = Evidence {
            canary,
            stable,
            evidence: e,
            fail_at: threshold,
            interval: [interval.0, interval.1],
        };
        if e >= threshold {
            failures.push(format!(
                "evidence {} >= {} of a rate {words}: {}, 95% CI {}-{}",
                number(e),
                number(threshold),
                describe(canary, &bad_word),
                percent(interval.0),
                percent(interval.1)
            ));
        }
        if evidence.as_ref().is_none_or(|old| e > old.evidence) {
            evidence = Some(this);
        }
    }
    if !failures.is_empty() {
        return Judged::new(Verdict::Fail, failures.join("; "), evidence);
    }

    if (r.samples as u64) < need {
        let shown = evidence
            .as_ref()
            .map(|e| {
                format!(
                    " (evidence {} < {}: no breach shown)",
                    number(e.evidence),
                    number(e.fail_at)
                )
            })
            .unwrap_or_default();
        return Judged::new(
            Verdict::Inconclusive,
            format!(
                "only {:.0} requests, {need} needed to pass{shown}",
                r.samples
            ),
            evidence,
        );
    }
    if let Some(why) = waiting.pop() {
        return Judged::new(Verdict::Inconclusive, why, evidence);
    }

    // Threshold checks on values.
    let value_checks = checks.valued;
    let value = r.value.filter(|v| !v.is_nan());
    if !value_checks.is_empty() {
        let Some(v) = value else {
            return inconclusive("no data: the query returned no series (or NaN)".into());
        };
        for check in value_checks {
            let failed = match check {
                Valued::AtMost(max) if v > max => {
                    Some(format!("{v:.4} is above the maximum {max}"))
                }
                Valued::AtLeast(min) if v < min => {
                    Some(format!("{v:.4} is below the minimum {min}"))
                }
                Valued::Relative(cmp) => {
                    let Some(s) = r.stable_value.filter(|s| !s.is_nan()) else {
                        return inconclusive("no stable value to compare with".into());
                    };
                    match cmp {
                        Comparison::Margin(m) if v > s + m => {
                            Some(format!("{v:.4} exceeds stable's {s:.4} by more than {m}"))
                        }
                        Comparison::Factor(f) if v > s * f => {
                            Some(format!("{v:.4} is more than {f} times stable's {s:.4}"))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(why) = failed {
                return Judged::new(Verdict::Fail, why, evidence);
            }
        }
    }
    let reason = match &evidence {
        Some(e) => format!(
            "within bounds: {}, 95% CI {}-{}, evidence {} < {}",
            describe(e.canary, &bad_word),
            percent(e.interval[0]),
            percent(e.interval[1]),
            number(e.evidence),
            number(e.fail_at)
        ),
        None => format!(
            "{:.4} is within bounds ({:.0} requests)",
            value.unwrap_or_default(),
            r.samples
        ),
    };
    Judged::new(Verdict::Pass, reason, evidence)
}

/// The verdict of a whole analysis: any failure fails; otherwise any inconclusive is inconclusive.
pub fn overall(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut result = Verdict::Pass;
    for v in verdicts {
        match v {
            Verdict::Fail => return Verdict::Fail,
            Verdict::Inconclusive => result = Verdict::Inconclusive,
            Verdict::Pass => {}
        }
    }
    result
}

#[cfg(test)]
mod tests;
