//! The chaos scheduler, sans-IO like the rollout engine: a pure function of the schedule,
//! the last scheduled time, whether a run is in progress, the guards, and `now`.
//!
//! Rules, as for a Kubernetes CronJob and then some: only the latest due time is ever
//! run, so a scheduler that was down never replays missed runs in a burst (they are
//! recorded as one skip); a due time older than `startingDeadlineSeconds` is skipped and
//! recorded; `Forbid` skips while a run is in progress, `Replace` stops it; a run outside
//! the allowed windows, during a rollout of the target, or while an alert fires for it is
//! skipped with the reason. Times are read in the schedule's time zone, daylight saving
//! included: a wall-clock time that happens twice runs once, one that does not happen is
//! not invented twice.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use zdeploy_api::chaos::{ChaosScheduleSpec, ConcurrencyPolicy};

/// How many earlier missed runs are counted before giving up counting.
const MISSED_COUNT_CAP: usize = 1000;

/// Conditions outside the schedule that forbid a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guards {
    /// The target ZmqService is in the middle of a rollout (its revision, for the record).
    pub rollout_in_progress: Option<String>,
    /// An alert is firing for the target service (its name).
    pub alert_firing: Option<String>,
}

/// What the scheduler decided about one due time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the experiment for this due time (`replace`: stop the running one first).
    Run {
        /// The due time.
        scheduled: Timestamp,
        /// A run is in progress and the policy is Replace.
        replace: bool,
    },
    /// Record this due time as skipped, with the reason.
    Skip {
        /// The due time.
        scheduled: Timestamp,
        /// Why.
        reason: String,
    },
}

/// The scheduler's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Decisions to carry out and record, oldest first.
    pub decisions: Vec<Decision>,
    /// The new `status.lastScheduleTime`.
    pub last_schedule_time: Option<Timestamp>,
    /// When to look again.
    pub next: Option<Timestamp>,
}

/// The schedule cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is invalid.
    #[error("spec.schedule {0:?}: {1}")]
    Cron(String, String),
    /// The time zone is unknown.
    #[error("spec.timeZone {0:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)")]
    TimeZone(String),
}

fn cron(spec: &ChaosScheduleSpec) -> Result<croner::Cron, ScheduleError> {
    croner::parser::CronParser::builder()
        .build()
        .parse(&spec.schedule)
        .map_err(|e| ScheduleError::Cron(spec.schedule.clone(), e.to_string()))
}

fn zone(spec: &ChaosScheduleSpec) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(&spec.time_zone).map_err(|_| ScheduleError::TimeZone(spec.time_zone.clone()))
}

/// Checks that the schedule and time zone can be read.
pub fn check(spec: &ChaosScheduleSpec) -> Result<(), ScheduleError> {
    cron(spec)?;
    zone(spec)?;
    Ok(())
}

fn weekday_name(z: &Zoned) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [usize::from(z.weekday().to_monday_zero_offset() as u8)]
}

fn in_windows(spec: &ChaosScheduleSpec, at: &Zoned) -> bool {
    spec.allowed_windows.is_empty()
        || spec.allowed_windows.iter().any(|w| {
            let day_ok = w.days.is_empty()
                || w.days
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(weekday_name(at)));
            let hour = at.hour() as u32;
            day_ok && w.start_hour <= hour && hour < w.end_hour
        })
}

/// One time the schedule comes due, and whether its allowed windows let it run then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// When, in the schedule's time zone.
    pub at: Zoned,
    /// Inside the allowed windows (or none are set).
    pub allowed: bool,
}

/// The next `n` times after `now` the schedule comes due.
pub fn upcoming(
    spec: &ChaosScheduleSpec,
    now: Timestamp,
    n: usize,
) -> Result<Vec<Due>, ScheduleError> {
    let cron = cron(spec)?;
    let mut cursor = now.to_zoned(zone(spec)?);
    let mut out = Vec::new();
    while out.len() < n
        && let Ok(at) = cron.find_next_occurrence(&cursor, false)
    {
        out.push(Due {
            allowed: in_windows(spec, &at),
            at: at.clone(),
        });
        cursor = at;
    }
    Ok(out)
}

/// Why the guards forbid a run of `spec` now (a rollout of the target, a firing alert).
pub fn refused_by(spec: &ChaosScheduleSpec, guards: &Guards) -> Option<String> {
    let service = &spec.experiment.service;
    if let Some(revision) = &guards.rollout_in_progress {
        return Some(format!(
            "a rollout of {service} ({revision}) is in progress"
        ));
    }
    let alert = guards.alert_firing.as_ref()?;
    Some(format!("alert {alert} is firing for {service}"))
}

/// Decides what is due at `now`. `last` is `status.lastScheduleTime`, or the creation time
/// for a schedule that never ran; `running` says a run is in progress.
pub fn plan(
    spec: &ChaosScheduleSpec,
    last: Timestamp,
    running: bool,
    guards: &Guards,
    now: Timestamp,
) -> Result<Plan, ScheduleError> {
    let cron = cron(spec)?;
    let tz = zone(spec)?;
    let now_z = now.to_zoned(tz.clone());
    let next_after = |t: &Zoned| cron.find_next_occurrence(t, false).ok();
    let next = next_after(&now_z).map(|z| z.timestamp());
    // The latest due time in (last, now].
    let latest = cron
        .find_previous_occurrence(&now_z, true)
        .ok()
        .filter(|z| z.timestamp() > last);
    let Some(latest) = latest else {
        return Ok(Plan {
            decisions: Vec::new(),
            last_schedule_time: None,
            next,
        });
    };
    let mut decisions = Vec::new();
    // Earlier due times in (last, latest) were missed: one record, never a burst of runs.
    let mut missed = 0usize;
    let mut first_missed = None;
    let mut cursor = last.to_zoned(tz.clone());
    while let Some(t) = next_after(&cursor) {
        if t.timestamp() >= latest.timestamp() || missed >= MISSED_COUNT_CAP {
            break;
        }
        first_missed.get_or_insert(t.timestamp());
        missed += 1;
        cursor = t;
    }
    if let Some(first) = first_missed {
        let more = if missed >= MISSED_COUNT_CAP {
            "or more "
        } else {
            ""
        };
        decisions.push(Decision::Skip {
            scheduled: first,
            reason: format!("{missed} {more}earlier runs were missed while the scheduler was not running; only the latest is considered"),
        });
    }
    let scheduled = latest.timestamp();
    let late = now.duration_since(scheduled);
    let deadline = SignedDuration::from_secs(spec.starting_deadline_seconds);
    let skip = |reason: String| Decision::Skip { scheduled, reason };
    let decision = if spec.suspend {
        skip("the schedule is suspended".into())
    } else if late > deadline {
        skip(format!(
            "missed by {}s, more than startingDeadlineSeconds ({}s)",
            late.as_secs(),
            spec.starting_deadline_seconds
        ))
    } else if running && spec.concurrency_policy == ConcurrencyPolicy::Forbid {
        skip("the previous run is still in progress (concurrencyPolicy: Forbid)".into())
    } else if !in_windows(spec, &latest) {
        skip(format!(
            "{} {} is outside the allowed windows",
            weekday_name(&latest),
            latest.strftime("%H:%M %Z")
        ))
    } else if let Some(reason) = refused_by(spec, guards) {
        skip(reason)
    } else {
        Decision::Run {
            scheduled,
            replace: running,
        }
    };
    decisions.push(decision);
    Ok(Plan {
        decisions,
        last_schedule_time: Some(scheduled),
        next,
    })
}

#[cfg(test)]
mod tests;
