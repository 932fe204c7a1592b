//! The scheduler on a fake clock: due runs, missed runs, deadlines, concurrency, time
//! zones and daylight-saving changes, windows and guards.

use jiff::Timestamp;
use zdeploy_api::chaos::{AllowedWindow, ChaosScheduleSpec, ConcurrencyPolicy};

use super::*;

fn spec(schedule: &str, tz: &str) -> ChaosScheduleSpec {
    let text = format!(
        "apiVersion: zdeploy.io/v1alpha1\nkind: ChaosSchedule\nmetadata: {{name: drill}}\nspec:\n  schedule: \"{schedule}\"\n  timeZone: {tz}\n  experiment:\n    service: echo\n    fault: {{gatewayLatency: {{latency: 300ms}}}}\n    duration: 5m\n"
    );
    let docs = zdeploy_api::validate::validate_str(&text).unwrap();
    match &docs[0].resource {
        Some(zdeploy_api::validate::Resource::ChaosSchedule(cs)) => cs.spec.clone(),
        _ => panic!("{:?}", docs[0].problems),
    }
}

/// Monday to Friday, from `start` to `end` o'clock.
fn weekdays(start: u32, end: u32) -> AllowedWindow {
    AllowedWindow {
        days: ["Mon", "Tue", "Wed", "Thu", "Fri"]
            .map(String::from)
            .to_vec(),
        start_hour: start,
        end_hour: end,
    }
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn runs(p: &Plan) -> Vec<Timestamp> {
    p.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Run { scheduled, .. } => Some(*scheduled),
            _ => None,
        })
        .collect()
}

fn skips(p: &Plan) -> Vec<String> {
    p.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Skip { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// The plan at `now` for a schedule last run at `last`, nothing running, no guard.
fn plan_at(s: &ChaosScheduleSpec, last: &str, now: &str) -> Plan {
    plan(s, t(last), false, &Guards::default(), t(now)).unwrap()
}

const MONTHLY: &str = "0 3 1 * *";

#[test]
fn a_due_run_starts_and_nothing_runs_before_it() {
    let s = spec(MONTHLY, "UTC");
    let before = plan_at(&s, "2026-11-01T03:00:00Z", "2026-12-01T02:59:59Z");
    assert!(before.decisions.is_empty());
    assert_eq!(before.next, Some(t("2026-12-01T03:00:00Z")));
    let due = plan_at(&s, "2026-11-01T03:00:00Z", "2026-12-01T03:00:10Z");
    assert_eq!(runs(&due), [t("2026-12-01T03:00:00Z")]);
    assert_eq!(due.last_schedule_time, Some(t("2026-12-01T03:00:00Z")));
    // Asking again after recording it: nothing more.
    let again = plan(
        &s,
        t("2026-12-01T03:00:00Z"),
        true,
        &Guards::default(),
        t("2026-12-01T03:01:00Z"),
    )
    .unwrap();
    assert!(again.decisions.is_empty());
}

#[test]
fn missed_runs_are_recorded_once_never_replayed_in_a_burst() {
    let s = spec("0 3 * * *", "UTC");
    // Down from Monday after the 03:00 run until Thursday 03:00:30.
    let p = plan_at(&s, "2026-11-23T03:00:00Z", "2026-11-26T03:00:30Z");
    assert_eq!(
        runs(&p),
        [t("2026-11-26T03:00:00Z")],
        "only the latest due run starts"
    );
    assert_eq!(
        skips(&p),
        [
            "2 earlier runs were missed while the scheduler was not running; only the latest is considered"
        ]
    );
}

#[test]
fn a_run_past_its_starting_deadline_is_skipped_and_recorded() {
    let s = spec(MONTHLY, "UTC");
    let p = plan_at(&s, "2026-11-01T03:00:00Z", "2026-12-01T03:10:00Z");
    assert!(runs(&p).is_empty());
    assert_eq!(
        skips(&p),
        ["missed by 600s, more than startingDeadlineSeconds (300s)"]
    );
    assert_eq!(
        p.last_schedule_time,
        Some(t("2026-12-01T03:00:00Z")),
        "recorded, so it is not tried again"
    );
}

#[test]
fn forbid_skips_while_running_and_replace_replaces() {
    let mut s = spec("*/10 * * * *", "UTC");
    let p = plan(
        &s,
        t("2026-11-25T10:00:00Z"),
        true,
        &Guards::default(),
        t("2026-11-25T10:10:05Z"),
    )
    .unwrap();
    assert_eq!(
        skips(&p),
        ["the previous run is still in progress (concurrencyPolicy: Forbid)"]
    );
    s.concurrency_policy = ConcurrencyPolicy::Replace;
    let p = plan(
        &s,
        t("2026-11-25T10:00:00Z"),
        true,
        &Guards::default(),
        t("2026-11-25T10:10:05Z"),
    )
    .unwrap();
    assert_eq!(
        p.decisions,
        [Decision::Run {
            scheduled: t("2026-11-25T10:10:00Z"),
            replace: true
        }]
    );
}

#[test]
fn suspended_schedules_record_a_skip() {
    let mut s = spec("*/10 * * * *", "UTC");
    s.suspend = true;
    let p = plan_at(&s, "2026-11-25T10:00:00Z", "2026-11-25T10:10:05Z");
    assert_eq!(skips(&p), ["the schedule is suspended"]);
}

#[test]
fn the_time_zone_moves_the_run_with_daylight_saving() {
    let s = spec("0 3 * * *", "Europe/Berlin");
    // Winter: 03:00 CET is 02:00 UTC. Summer: 03:00 CEST is 01:00 UTC.
    let winter = plan_at(&s, "2026-01-14T12:00:00Z", "2026-01-15T02:00:30Z");
    assert_eq!(runs(&winter), [t("2026-01-15T02:00:00Z")]);
    let summer = plan_at(&s, "2026-07-14T12:00:00Z", "2026-07-15T01:00:30Z");
    assert_eq!(runs(&summer), [t("2026-07-15T01:00:00Z")]);
}

#[test]
fn a_wall_clock_time_that_happens_twice_runs_once() {
    // Berlin falls back on 2026-10-25: 02:30 happens at 00:30Z (CEST) and 01:30Z (CET).
    let s = spec("30 2 * * *", "Europe/Berlin");
    let first = plan_at(&s, "2026-10-24T12:00:00Z", "2026-10-25T00:30:10Z");
    assert_eq!(runs(&first), [t("2026-10-25T00:30:00Z")]);
    let later = plan(
        &s,
        first.last_schedule_time.unwrap(),
        false,
        &Guards::default(),
        t("2026-10-25T01:30:10Z"),
    )
    .unwrap();
    assert!(
        later.decisions.is_empty(),
        "02:30 ran already this night: {later:?}"
    );
    assert_eq!(later.next, Some(t("2026-10-26T01:30:00Z")));
}

#[test]
fn a_wall_clock_time_that_does_not_happen_runs_at_most_once() {
    // Berlin springs forward on 2026-03-29: there is no 02:30 that night.
    let s = spec("30 2 * * *", "Europe/Berlin");
    let p = plan_at(&s, "2026-03-28T12:00:00Z", "2026-03-29T12:00:00Z");
    assert!(runs(&p).len() + skips(&p).len() <= 1, "{p:?}");
    let next_day = plan_at(&s, "2026-03-29T12:00:00Z", "2026-03-30T00:30:30Z");
    assert_eq!(runs(&next_day), [t("2026-03-30T00:30:00Z")]);
}

#[test]
fn allowed_windows_are_read_in_the_time_zone() {
    let mut s = spec("0 * * * *", "America/New_York");
    s.allowed_windows = vec![weekdays(9, 17)];
    // Wednesday 2026-11-25 10:00 in New York is 15:00Z.
    let inside = plan_at(&s, "2026-11-25T14:30:00Z", "2026-11-25T15:00:10Z");
    assert_eq!(runs(&inside), [t("2026-11-25T15:00:00Z")]);
    // Saturday 10:00 in New York.
    let weekend = plan_at(&s, "2026-11-28T14:30:00Z", "2026-11-28T15:00:10Z");
    assert_eq!(
        skips(&weekend),
        ["Sat 10:00 EST is outside the allowed windows"]
    );
}

#[test]
fn guards_skip_during_a_rollout_or_a_firing_alert() {
    let s = spec("*/10 * * * *", "UTC");
    let rollout = Guards {
        rollout_in_progress: Some("echo:2.1".into()),
        alert_firing: None,
    };
    let p = plan(
        &s,
        t("2026-11-25T10:00:00Z"),
        false,
        &rollout,
        t("2026-11-25T10:10:05Z"),
    )
    .unwrap();
    assert_eq!(skips(&p), ["a rollout of echo (echo:2.1) is in progress"]);
    let alert = Guards {
        rollout_in_progress: None,
        alert_firing: Some("CanaryErrorRateHigh".into()),
    };
    let p = plan(
        &s,
        t("2026-11-25T10:00:00Z"),
        false,
        &alert,
        t("2026-11-25T10:10:05Z"),
    )
    .unwrap();
    assert_eq!(skips(&p), ["alert CanaryErrorRateHigh is firing for echo"]);
}

#[test]
fn bad_schedules_and_zones_name_the_field() {
    assert!(
        check(&spec("61 * * * *", "UTC"))
            .unwrap_err()
            .to_string()
            .starts_with("spec.schedule")
    );
    assert!(
        check(&spec("0 3 * * *", "Mars/Olympus"))
            .unwrap_err()
            .to_string()
            .starts_with("spec.timeZone")
    );
}

#[test]
fn upcoming_runs_are_listed_in_the_schedules_zone_with_their_window() {
    let mut s = spec("0 3 * * *", "Europe/Berlin");
    s.allowed_windows = vec![weekdays(2, 6)];
    // Thursday 2026-12-03 10:00 UTC: next are Fri 4th, Sat 5th, Sun 6th, Mon 7th at 03:00.
    let due = upcoming(&s, t("2026-12-03T10:00:00Z"), 4).unwrap();
    let shown: Vec<(String, bool)> = due
        .iter()
        .map(|d| (d.at.strftime("%a %d %H:%M %Z").to_string(), d.allowed))
        .collect();
    assert_eq!(
        shown,
        [
            ("Fri 04 03:00 CET".to_string(), true),
            ("Sat 05 03:00 CET".to_string(), false),
            ("Sun 06 03:00 CET".to_string(), false),
            ("Mon 07 03:00 CET".to_string(), true),
        ]
    );
}
