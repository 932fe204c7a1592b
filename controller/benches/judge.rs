//! The judge benchmark: simulated rollouts of the shipped example
//! (`manifests/examples/echo.yaml`: its steps, analysis and limits) through the real rollout
//! engine, judged side by side by three judges on the same simulated traffic:
//! - `threshold`: the rule zdeploy had before, kept here only as the baseline: a point
//!   estimate over each metric's window against its threshold, every interval, with
//!   `minSamples` as the floor for any verdict;
//! - `mann-whitney`: a fixed-horizon judge in the style of Kayenta: each interval's value
//!   of a metric (error ratio, share slower than the threshold) for canary and stable since
//!   the canary started, a one-sided Mann-Whitney test at the level of a 98% two-sided
//!   interval on the shift, re-run every interval;
//! - `sequential`: zdeploy's judge (`analysis::judge`), fed the counts since the canary
//!   started, every interval and, for bounds (`max`), at every look in between (25 ms), as
//!   `zdeploy up` looks after every scrape.
//!
//! Traffic is drawn per request event, not per request: the positions of the next error
//! and the next slow request are geometric skips, so a rollout of a million requests
//! costs as many draws as it has bad requests. The canary gets its weight's share of
//! each interval's requests. The final `pause: {}` is promoted 10 minutes after it is
//! reached; a rollout still running 30 minutes after it started ends there.
//!
//! `cargo bench -p zdeploy-controller --bench judge` (about ten minutes on two cores;
//! `ZDEPLOY_JUDGE_ROLLOUTS=N` sets the A/A rollouts per cell, default 10,000, A/B a fifth;
//! `ZDEPLOY_BENCH_QUICK=1`, 20). It fails when fewer than half of a cell's rollouts ended.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use zdeploy_api::service::{Analysis, Measurement, Metric, Phase, Step, Tally, Verdict};
use zdeploy_api::validate::{Resource, validate_str};
use zdeploy_api::{ZmqServiceSpec, ZmqServiceStatus};
use zdeploy_controller::analysis::judge::{Reading, fail_at, judge, overall};
use zdeploy_controller::analysis::sequential::{Bound, ln_evidence_bound};
use zdeploy_controller::engine::{self, Command, Input, Reach};

const EXAMPLE: &str = include_str!("../../manifests/examples/echo.yaml");
/// Time between two looks of the sequential judge inside an interval: `zdeploy up`'s scrape.
const LOOK: Duration = zdeploy_controller::platforms::local::SCRAPE_EVERY;
/// How long the final pause waits for `zdeploy promote`.
const PROMOTE_AFTER: Duration = Duration::from_secs(600);
/// A rollout still running this long after it started ends there.
const CAP: Duration = Duration::from_secs(1800);
/// One-sided normal quantile of a 98% two-sided interval.
const Z_98: f64 = 2.326;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Judge {
    Threshold,
    MannWhitney,
    Sequential,
}

impl Judge {
    const ALL: [Judge; 3] = [Judge::Threshold, Judge::MannWhitney, Judge::Sequential];

    fn name(self) -> &'static str {
        match self {
            Judge::Threshold => "threshold",
            Judge::MannWhitney => "mann-whitney",
            Judge::Sequential => "sequential",
        }
    }
}

/// A pool's true rates: errors, and requests slower than the latency threshold.
#[derive(Clone, Copy, Debug)]
struct Rates {
    errors: f64,
    slow: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// The canary is identical to stable: any rollback is a false one.
    AA,
    /// The canary is worse: a rollback is a detection.
    AB,
}

#[derive(Clone, Debug)]
struct Cell {
    name: String,
    kind: Kind,
    canary: Rates,
    stable: Rates,
    rps: f64,
    rollouts: u64,
}

/// The next positions of one kind of event in a pool's request sequence.
struct Events {
    p: f64,
    next: u64,
}

impl Events {
    fn new(p: f64, rng: &mut fastrand::Rng) -> Self {
        let mut e = Self { p, next: 0 };
        e.next = e.skip(rng);
        e
    }

    /// Requests until the next event (geometric), or "never" for p = 0.
    fn skip(&self, rng: &mut fastrand::Rng) -> u64 {
        if self.p <= 0.0 {
            return u64::MAX / 2;
        }
        if self.p >= 1.0 {
            return 0;
        }
        let u = 1.0 - rng.f64(); // (0, 1]
        (u.ln() / (1.0 - self.p).ln()).floor() as u64
    }

    /// Positions of the events among requests before `upto`.
    fn take(&mut self, upto: u64, rng: &mut fastrand::Rng, out: &mut Vec<u64>) {
        while self.next < upto {
            out.push(self.next);
            self.next = self.next + 1 + self.skip(rng);
        }
    }
}

/// A pool's counts since the canary started.
#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    slow: u64,
}

/// One pool's traffic and counts.
struct Pool {
    errors: Events,
    slow: Events,
    counts: Counts,
}

impl Pool {
    fn new(r: Rates, rng: &mut fastrand::Rng) -> Self {
        Self {
            errors: Events::new(r.errors, rng),
            slow: Events::new(r.slow, rng),
            counts: Counts::default(),
        }
    }
}

/// One interval's counts of one pool.
type Slice = Counts;

fn ratio(k: u64, n: u64) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        k as f64 / n as f64
    }
}

/// How one rollout ended.
#[derive(Clone, Copy, Debug, Default)]
struct Ending {
    rolled_back: bool,
    promoted: bool,
    canary_requests: u64,
    canary_bad: u64,
}

fn measurement(metric: &Metric, verdict: Verdict, reason: String, now: Timestamp) -> Measurement {
    Measurement {
        metric: metric.name.clone(),
        query: String::new(),
        value: None,
        evidence: None,
        verdict,
        reason,
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
    }
}

/// The old rule on windowed point estimates.
fn threshold(analysis: &Analysis, window: &[(Slice, Slice)], now: Timestamp) -> Vec<Measurement> {
    analysis
        .metrics
        .iter()
        .map(|m| {
            let intervals = (m.window.get().as_secs() / analysis.interval.get().as_secs()).max(1);
            let recent = &window[window.len().saturating_sub(intervals as usize)..];
            let sum = |pick: fn(&(Slice, Slice)) -> Slice| {
                recent
                    .iter()
                    .map(pick)
                    .fold(Slice::default(), |a, b| Slice {
                        requests: a.requests + b.requests,
                        errors: a.errors + b.errors,
                        slow: a.slow + b.slow,
                    })
            };
            let (c, s) = (sum(|x| x.0), sum(|x| x.1));
            let is_latency = m.latency_edge().is_some();
            let value = |x: Slice| ratio(if is_latency { x.slow } else { x.errors }, x.requests);
            let need = m.min_samples.unwrap_or(analysis.min_samples);
            let (v, sv) = (value(c), value(s));
            let (verdict, why) = if c.requests < need || v.is_nan() {
                (Verdict::Inconclusive, "too few".to_string())
            } else if is_latency && v > 0.01 {
                // With an edge at the threshold, "p99 > max" is "more than 1% slower".
                (Verdict::Fail, format!("{v:.4} slower"))
            } else if !is_latency && m.max.is_some_and(|max| v > max) {
                (Verdict::Fail, format!("{v:.4} above the maximum"))
            } else if let Some(margin) = m.relative.as_ref().and_then(|r| r.margin)
                && v > sv + margin
            {
                (Verdict::Fail, format!("{v:.4} above stable's {sv:.4}"))
            } else {
                (Verdict::Pass, String::new())
            };
            measurement(m, verdict, why, now)
        })
        .collect()
}

/// `true` when the canary's values are significantly above stable's (one-sided
/// Mann-Whitney, normal approximation with ties).
fn mann_whitney_higher(canary: &[f64], stable: &[f64]) -> bool {
    let (m, n) = (canary.len(), stable.len());
    if m < 3 || n < 3 {
        return false;
    }
    let mut all: Vec<(f64, bool)> = canary
        .iter()
        .map(|v| (*v, true))
        .chain(stable.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = all.len();
    let (mut rank_sum, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < total {
        let mut j = i;
        while j + 1 < total && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum += all[i..=j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j + 1;
    }
    let (mf, nf) = (m as f64, n as f64);
    let u = rank_sum - mf * (mf + 1.0) / 2.0;
    let nt = mf + nf;
    let var = mf * nf / 12.0 * ((nt + 1.0) - ties / (nt * (nt - 1.0)));
    if var <= 0.0 {
        return false;
    }
    (u - mf * nf / 2.0) / var.sqrt() > Z_98
}

fn mann_whitney(analysis: &Analysis, life: &[(Slice, Slice)], now: Timestamp) -> Vec<Measurement> {
    let served: u64 = life.iter().map(|x| x.0.requests).sum();
    analysis
        .metrics
        .iter()
        .map(|m| {
            let is_latency = m.latency_edge().is_some();
            let values = |pick: fn(&(Slice, Slice)) -> Slice| -> Vec<f64> {
                life.iter()
                    .map(pick)
                    .map(|x| ratio(if is_latency { x.slow } else { x.errors }, x.requests))
                    .filter(|v| !v.is_nan())
                    .collect()
            };
            let need = m.min_samples.unwrap_or(analysis.min_samples);
            let (verdict, why) = if mann_whitney_higher(&values(|x| x.0), &values(|x| x.1)) {
                (Verdict::Fail, "canary higher".to_string())
            } else if served < need {
                (Verdict::Inconclusive, "too few".to_string())
            } else {
                (Verdict::Pass, String::new())
            };
            measurement(m, verdict, why, now)
        })
        .collect()
}

/// zdeploy's judge on the counts since the canary started.
fn sequential(
    analysis: &Analysis,
    canary: Counts,
    stable: Counts,
    now: Timestamp,
) -> Vec<Measurement> {
    analysis
        .metrics
        .iter()
        .map(|m| {
            let is_latency = m.latency_edge().is_some();
            let tally = |c: Counts| Tally {
                requests: c.requests,
                bad: if is_latency { c.slow } else { c.errors },
            };
            let reading = Reading {
                value: None,
                stable_value: None,
                samples: canary.requests as f64,
                canary: Some(tally(canary)),
                stable: Some(tally(stable)),
                error: None,
            };
            let j = judge(m, analysis, &reading);
            measurement(m, j.verdict, j.reason, now)
        })
        .collect()
}

/// The bound metrics the sequential judge looks at between intervals: (index, bound).
fn fast_bounds(analysis: &Analysis) -> Vec<(usize, Bound, bool)> {
    analysis
        .metrics
        .iter()
        .enumerate()
        .filter(|(_, m)| m.relative.is_none())
        .filter_map(|(i, m)| {
            let latency = m.latency_edge().is_some();
            let bound = if latency {
                Bound::AtMost(m.builtin?.share_above()?)
            } else {
                Bound::AtMost(m.max?)
            };
            Some((i, bound, latency))
        })
        .collect()
}

/// The engine's input for an analysis that ended at `now`.
fn analysed(measurements: Vec<Measurement>, now: Timestamp) -> Input {
    Input::Analysis {
        verdict: overall(measurements.iter().map(|m| m.verdict)),
        measurements,
        started: now,
    }
}

fn at(t0: Timestamp, d: Duration) -> Timestamp {
    t0 + SignedDuration::try_from(d).expect("short durations")
}

/// One rollout of `spec`, judged by `who`, on the traffic of `cell` drawn from `seed`.
fn rollout(spec: &ZmqServiceSpec, who: Judge, cell: &Cell, seed: u64) -> Ending {
    let mut rng = fastrand::Rng::with_seed(seed);
    let analysis = &spec.strategy.analysis();
    let interval = analysis.interval.get();
    let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365 * 30);
    let mut status = ZmqServiceStatus {
        stable_revision: Some("v1".into()),
        ..Default::default()
    };
    let feed = |status: &mut ZmqServiceStatus, input: Input, now: Timestamp| {
        *status = engine::step(spec, status, &input, now).status;
    };
    feed(
        &mut status,
        Input::Command(Command::Rollout {
            revision: "v2".into(),
            canary: None,
            origin: engine::Origin::Named,
        }),
        t0,
    );
    // zgate connected to the canary: the engine waits for this before any weight.
    feed(&mut status, Input::Reach(Reach::Live), t0);
    let mut canary = Pool::new(cell.canary, &mut rng);
    let mut stable = Pool::new(cell.stable, &mut rng);
    let mut life: Vec<(Slice, Slice)> = Vec::new();
    let fast = fast_bounds(analysis);
    let threshold_e = fail_at(analysis).ln();
    let per_interval = (cell.rps * interval.as_secs_f64()).round() as u64;
    let mut final_pause_since: Option<Timestamp> = None;
    let mut elapsed = Duration::ZERO;
    let mut events = Vec::new();
    let ending = |status: &ZmqServiceStatus, canary: Counts| Ending {
        rolled_back: status
            .history
            .first()
            .is_some_and(|h| h.outcome == zdeploy_api::service::Outcome::RolledBack),
        promoted: status
            .history
            .first()
            .is_some_and(|h| h.outcome == zdeploy_api::service::Outcome::Promoted),
        canary_requests: canary.requests,
        canary_bad: canary.errors + canary.slow,
    };
    while status.rollout.is_some() && elapsed < CAP {
        let start = at(t0, elapsed);
        let w = f64::from(status.canary_weight.percent()) / 100.0;
        let n_c = (per_interval as f64 * w).round() as u64;
        let n_s = per_interval - n_c;
        let (c0, s0) = (canary.counts.requests, stable.counts.requests);
        // Stable's traffic for the whole interval.
        events.clear();
        stable.errors.take(s0 + n_s, &mut rng, &mut events);
        let s_err = events.len() as u64;
        events.clear();
        stable.slow.take(s0 + n_s, &mut rng, &mut events);
        let s_slow = events.len() as u64;
        // The canary's, event by event, for the sequential judge's looks.
        let mut err_at = Vec::new();
        canary.errors.take(c0 + n_c, &mut rng, &mut err_at);
        let mut slow_at = Vec::new();
        canary.slow.take(c0 + n_c, &mut rng, &mut slow_at);
        let mut tripped = None;
        if who == Judge::Sequential && n_c > 0 && !fast.is_empty() {
            let looks = (interval.as_millis() / LOOK.as_millis()).max(1) as u64;
            let per_look = n_c.div_ceil(looks).max(1);
            // Evidence of a breached bound only grows on a bad request: the look after
            // each one is the only look that can fail.
            let mut merged: Vec<u64> = err_at.iter().chain(slow_at.iter()).copied().collect();
            merged.sort_unstable();
            let mut last_look = None;
            for pos in merged {
                let look = (pos - c0) / per_look;
                if last_look == Some(look) {
                    continue;
                }
                last_look = Some(look);
                let end = (c0 + (look + 1) * per_look).min(c0 + n_c);
                let k_err = canary.counts.errors + err_at.partition_point(|p| *p < end) as u64;
                let k_slow = canary.counts.slow + slow_at.partition_point(|p| *p < end) as u64;
                let broken = fast.iter().any(|(i, bound, latency)| {
                    let t = Tally {
                        requests: end,
                        bad: if *latency { k_slow } else { k_err },
                    };
                    // The cheap bound first; the real judge decides.
                    ln_evidence_bound(t, *bound) >= threshold_e && {
                        let m = &analysis.metrics[*i];
                        let r = Reading {
                            samples: end as f64,
                            canary: Some(t),
                            ..Reading::default()
                        };
                        judge(m, analysis, &r).verdict == Verdict::Fail
                    }
                });
                if broken {
                    tripped = Some((look, end, k_err, k_slow));
                    break;
                }
            }
        }
        if let Some((look, end, k_err, k_slow)) = tripped {
            // Stable is taken at the interval's start: the bounds tripped do not need it.
            let seen = Counts {
                requests: end,
                errors: k_err,
                slow: k_slow,
            };
            let now = at(start, LOOK * (look as u32 + 1));
            let measurements = sequential(analysis, seen, stable.counts, now);
            feed(&mut status, analysed(measurements, now), now);
            if status.rollout.is_none() {
                return ending(&status, seen);
            }
        }
        let (c, s) = (
            Slice {
                requests: n_c,
                errors: err_at.len() as u64,
                slow: slow_at.len() as u64,
            },
            Slice {
                requests: n_s,
                errors: s_err,
                slow: s_slow,
            },
        );
        for (pool, slice) in [(&mut canary, c), (&mut stable, s)] {
            pool.counts.requests += slice.requests;
            pool.counts.errors += slice.errors;
            pool.counts.slow += slice.slow;
        }
        life.push((c, s));
        elapsed += interval;
        let now = at(t0, elapsed);
        feed(&mut status, Input::Tick, now);
        if status.rollout.is_none() {
            break;
        }
        let measurements = match who {
            Judge::Threshold => threshold(analysis, &life, now),
            Judge::MannWhitney => mann_whitney(analysis, &life, now),
            Judge::Sequential => sequential(analysis, canary.counts, stable.counts, now),
        };
        feed(&mut status, analysed(measurements, now), now);
        // The operator promotes the final pause after a while.
        let last_step = spec.strategy.steps().len().saturating_sub(1);
        let at_final_pause = status.phase == Phase::Paused
            && status.rollout.as_ref().is_some_and(|r| !r.paused)
            && status.current_step == Some(last_step as u32)
            && matches!(spec.strategy.steps().get(last_step), Some(Step::Pause(p)) if p.duration.is_none());
        if at_final_pause {
            let since = *final_pause_since.get_or_insert(now);
            if now.duration_since(since) >= SignedDuration::try_from(PROMOTE_AFTER).unwrap() {
                feed(
                    &mut status,
                    Input::Command(Command::Promote { full: false }),
                    now,
                );
            }
        }
    }
    ending(&status, canary.counts)
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// What one judge did in one cell.
struct Row {
    cell: String,
    kind: Kind,
    judge: Judge,
    rollouts: u64,
    rolled_back: u64,
    promoted: u64,
    median_requests: Option<u64>,
    median_bad: Option<u64>,
}

fn run_cell(spec: &ZmqServiceSpec, cell: &Cell, judge: Judge) -> Row {
    let (mut rolled_back, mut promoted) = (0, 0);
    let (mut requests, mut bad) = (Vec::new(), Vec::new());
    for seed in 0..cell.rollouts {
        let e = rollout(spec, judge, cell, seed);
        if e.rolled_back {
            rolled_back += 1;
            requests.push(e.canary_requests);
            bad.push(e.canary_bad);
        }
        promoted += u64::from(e.promoted);
    }
    Row {
        cell: cell.name.clone(),
        kind: cell.kind,
        judge,
        rollouts: cell.rollouts,
        rolled_back,
        promoted,
        median_requests: median(requests),
        median_bad: median(bad),
    }
}

fn cells(aa: u64) -> Vec<Cell> {
    let ab = (aa / 5).max(1);
    let mut out = Vec::new();
    for rps in [20.0, 100.0, 1000.0] {
        for p in [0.001, 0.005, 0.009] {
            let r = Rates {
                errors: p,
                slow: 0.0,
            };
            out.push(Cell {
                name: format!("A/A errors {:.1}% @ {rps} req/s", p * 100.0),
                kind: Kind::AA,
                canary: r,
                stable: r,
                rps,
                rollouts: aa,
            });
        }
        let r = Rates {
            errors: 0.0,
            slow: 0.005,
        };
        out.push(Cell {
            name: format!("A/A slow 0.5% @ {rps} req/s"),
            kind: Kind::AA,
            canary: r,
            stable: r,
            rps,
            rollouts: aa,
        });
        for p in [0.02, 0.05, 0.2] {
            out.push(Cell {
                name: format!("A/B errors {:.0}% @ {rps} req/s", p * 100.0),
                kind: Kind::AB,
                canary: Rates {
                    errors: p,
                    slow: 0.0,
                },
                stable: Rates {
                    errors: 0.005,
                    slow: 0.0,
                },
                rps,
                rollouts: ab,
            });
        }
        out.push(Cell {
            name: format!("A/B slow 5% @ {rps} req/s"),
            kind: Kind::AB,
            canary: Rates {
                errors: 0.0,
                slow: 0.05,
            },
            stable: Rates {
                errors: 0.0,
                slow: 0.005,
            },
            rps,
            rollouts: ab,
        });
    }
    out
}

fn main() {
    let spec = match validate_str(EXAMPLE)
        .expect("the example is YAML")
        .remove(0)
        .resource
    {
        Some(Resource::ZmqService(svc)) => svc.spec,
        _ => panic!("the example is a valid ZmqService"),
    };
    // ZDEPLOY_BENCH_QUICK: a few rollouts a cell, how ./tests/run keeps it working.
    let quick = std::env::var_os("ZDEPLOY_BENCH_QUICK").map(|_| 20);
    let aa = std::env::var("ZDEPLOY_JUDGE_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(quick)
        .unwrap_or(10_000);
    let a = &spec.strategy.analysis();
    println!(
        "the example's analysis: interval {}, minSamples {}, alpha {}, failureLimit {}, {} metrics; A/B stable: 0.5% errors or 0.5% slow",
        a.interval,
        a.min_samples,
        a.alpha,
        a.failure_limit,
        a.metrics.len()
    );
    let cells = cells(aa);
    let work: Vec<(usize, Judge)> = (0..cells.len())
        .flat_map(|c| Judge::ALL.map(|j| (c, j)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(c, j)) = work.get(i) else { break };
                    let row = run_cell(&spec, &cells[c], j);
                    rows.lock().unwrap().push((i, row));
                }
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort_by_key(|(i, _)| *i);
    // A table of rollouts that never moved would read as "no false alarms": refuse it.
    for (_, r) in &rows {
        let ended = r.rolled_back + r.promoted;
        assert!(
            2 * ended >= r.rollouts,
            "the benchmark measured nothing: in {} ({}), {} of {} rollouts were neither promoted nor rolled back within {CAP:?}: did the canary get weight?",
            r.cell,
            r.judge.name(),
            r.rollouts - ended,
            r.rollouts
        );
    }
    println!(
        "\n| cell | judge | rollouts | rolled back | promoted | median canary requests before weight 0 | median canary bad replies before weight 0 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (_, r) in &rows {
        let pct = |n: u64| format!("{:.2}%", 100.0 * n as f64 / r.rollouts as f64);
        let show = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let (req, bad) = match r.kind {
            Kind::AA => ("-".to_string(), "-".to_string()),
            Kind::AB => (show(r.median_requests), show(r.median_bad)),
        };
        println!(
            "| {} | {} | {} | {} | {} | {req} | {bad} |",
            r.cell,
            r.judge.name(),
            r.rollouts,
            pct(r.rolled_back),
            pct(r.promoted)
        );
    }
}
