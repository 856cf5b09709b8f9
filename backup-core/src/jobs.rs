//! What a scheduler should do about one job now: run it, and which past runs to record as
//! skipped, decided from its [`Schedule`], the last run on record and how long the scheduler
//! has been up. Pure policy, so every case is a unit test; the extension's scheduler worker
//! does the SQL and launches the work.
//!
//! The rules a DBA expects (issue: "unattended operation"):
//! - a run that became due while the scheduler was up runs, late if the queue was busy (a job
//!   never runs twice at once: the worker runs one job at a time);
//! - when several runs of one job became due before it could start (a long full backup held
//!   the queue), the newest runs and the older ones are recorded as superseded;
//! - a run missed while the scheduler was down (server stopped, restarting) runs once on
//!   start-up only for jobs that catch up (full backups by default); the others record it as
//!   skipped. A restart shorter than the grace (see [`grace`]) misses nothing.

use chrono::{DateTime, Duration, Utc};

use crate::schedule::{JobKind, Schedule};

/// A run this late is still an ordinary (late) run, even when the scheduler restarted in
/// between: a worker restart after `pg_terminate_backend` takes seconds.
pub const LATE_GRACE: Duration = Duration::minutes(5);

/// How late a run may start and still count as on time across a scheduler restart:
/// [`LATE_GRACE`], or half the schedule's interval when that is shorter (a job every 20 s that
/// starts 15 s late has missed its slot).
pub fn grace(schedule: &Schedule, now: DateTime<Utc>) -> Duration {
    schedule.longest_interval(now).map_or(LATE_GRACE, |i| (i / 2).min(LATE_GRACE))
}

/// At most this many past runs of one job are recorded one by one as skipped; the oldest of
/// those records says how many earlier ones there were (a "1 seconds" job down for a day).
pub const MAX_SKIPPED_RECORDED: usize = 100;

/// Whether a job runs a missed run on start-up, when its options do not say: full backups do
/// (a day without one widens every restore), the rest wait for their next run.
pub fn catches_up_by_default(kind: JobKind) -> bool {
    kind == JobKind::Full
}

/// A past run the scheduler did not and will not run, with the reason it records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub scheduled_for: DateTime<Utc>,
    pub reason: String,
}

/// The run to start now, and a note for its history row when it is not an ordinary one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueRun {
    pub scheduled_for: DateTime<Utc>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub run: Option<DueRun>,
    pub skipped: Vec<Skipped>,
}

/// What to do about a job whose runs up to `baseline` are settled (its last recorded run, or
/// the moment it was created or changed), at `now`, with the scheduler up since `up_since`.
pub fn decide(schedule: &Schedule, catch_up: bool, baseline: DateTime<Utc>, now: DateTime<Utc>, up_since: DateTime<Utc>) -> Decision {
    // Every run in (baseline, now]: bounded by the schedule's own density over the downtime,
    // a second-level schedule down for a day is 86 400 instants, cheap to walk.
    let due = schedule.runs_between(baseline, now, 1_000_000);
    let Some((&latest, older)) = due.split_last() else {
        return Decision::default();
    };
    let grace = grace(schedule, now);
    let missed_while_down = |at: DateTime<Utc>| at < up_since && now - at > grace;
    let mut skipped: Vec<Skipped> = older
        .iter()
        .map(|&at| Skipped {
            scheduled_for: at,
            reason: if missed_while_down(at) {
                "missed: the scheduler was not running at that time (server down or restarting)".to_string()
            } else {
                format!("superseded: the run due at {} was already due when this one could start", fmt(latest))
            },
        })
        .collect();
    let run = if !missed_while_down(latest) {
        let late = now - latest;
        let note = (late > Duration::seconds(60)).then(|| format!("started {} late: the queue was busy", human(late)));
        Some(DueRun { scheduled_for: latest, note })
    } else if catch_up {
        Some(DueRun { scheduled_for: latest, note: Some(format!("catch-up: due at {} while the scheduler was not running", fmt(latest))) })
    } else {
        skipped.push(Skipped {
            scheduled_for: latest,
            reason: "missed: the scheduler was not running at that time; this job does not catch up (options.catch_up)".to_string(),
        });
        None
    };
    if skipped.len() > MAX_SKIPPED_RECORDED {
        let unrecorded = skipped.len() - MAX_SKIPPED_RECORDED;
        skipped.drain(..unrecorded);
        let first = &mut skipped[0];
        first.reason = format!("{} (and {unrecorded} earlier runs skipped for the same reason, not recorded one by one)", first.reason);
    }
    Decision { run, skipped }
}

fn fmt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn human(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Whether a job whose next run is `next` counts as late at `now` (for `scheduler_status()`
/// and the health check): due and not started within a minute.
pub fn is_late(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    next.is_some_and(|n| now - n > Duration::seconds(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", "UTC").unwrap()
    }

    #[test]
    fn nothing_is_due_before_the_next_run() {
        let d = decide(&hourly(), false, t("2026-12-01T10:00:00Z"), t("2026-12-01T10:59:59Z"), t("2026-12-01T09:00:00Z"));
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn a_run_due_while_up_runs_on_time() {
        let d = decide(&hourly(), false, t("2026-12-01T10:00:00Z"), t("2026-12-01T11:00:01Z"), t("2026-12-01T09:00:00Z"));
        assert_eq!(d.run, Some(DueRun { scheduled_for: t("2026-12-01T11:00:00Z"), note: None }));
        assert!(d.skipped.is_empty());
    }

    /// A long full backup held the queue for three hourly runs: the newest runs, late, the
    /// two before it are superseded; nothing runs twice.
    #[test]
    fn a_busy_queue_supersedes_older_runs() {
        let d = decide(&hourly(), false, t("2026-12-01T10:00:00Z"), t("2026-12-01T13:20:00Z"), t("2026-12-01T09:00:00Z"));
        let run = d.run.unwrap();
        assert_eq!(run.scheduled_for, t("2026-12-01T13:00:00Z"));
        assert!(run.note.unwrap().contains("20 min late"));
        let skipped: Vec<_> = d.skipped.iter().map(|s| s.scheduled_for).collect();
        assert_eq!(skipped, [t("2026-12-01T11:00:00Z"), t("2026-12-01T12:00:00Z")]);
        assert!(d.skipped.iter().all(|s| s.reason.starts_with("superseded")));
    }

    /// Down from 10:30 to 14:10: an incremental-like job skips 11..14 (recorded), a full-like
    /// one runs the newest missed run once as a catch-up.
    #[test]
    fn downtime_catches_up_only_jobs_that_do() {
        let (base, now, up) = (t("2026-12-01T10:00:00Z"), t("2026-12-01T14:10:00Z"), t("2026-12-01T14:09:00Z"));
        let skip = decide(&hourly(), false, base, now, up);
        assert_eq!(skip.run, None);
        assert_eq!(skip.skipped.len(), 4);
        assert!(skip.skipped.iter().all(|s| s.reason.starts_with("missed")));
        let catch = decide(&hourly(), true, base, now, up);
        assert_eq!(catch.run.as_ref().unwrap().scheduled_for, t("2026-12-01T14:00:00Z"));
        assert!(catch.run.unwrap().note.unwrap().starts_with("catch-up"));
        assert_eq!(catch.skipped.len(), 3);
    }

    /// A worker restart of a few seconds misses nothing.
    #[test]
    fn a_short_restart_misses_nothing() {
        let d = decide(&hourly(), false, t("2026-12-01T10:00:00Z"), t("2026-12-01T11:00:08Z"), t("2026-12-01T11:00:06Z"));
        assert_eq!(d.run.unwrap().scheduled_for, t("2026-12-01T11:00:00Z"));
    }

    /// A job every 20 s allows 10 s: a run 15 s late across a restart was missed.
    #[test]
    fn short_schedules_have_a_short_grace() {
        let every20 = Schedule::parse("20 seconds", "UTC").unwrap();
        assert_eq!(grace(&every20, t("2026-12-01T00:00:00Z")), Duration::seconds(10));
        assert_eq!(grace(&hourly(), t("2026-12-01T00:00:00Z")), LATE_GRACE);
        let d = decide(&every20, false, t("2026-12-01T00:00:00Z"), t("2026-12-01T00:00:35Z"), t("2026-12-01T00:00:34Z"));
        assert_eq!(d.run, None);
        assert_eq!(d.skipped.iter().map(|s| s.scheduled_for).collect::<Vec<_>>(), [t("2026-12-01T00:00:20Z")]);
    }

    #[test]
    fn a_long_downtime_records_a_bounded_number_of_skips() {
        let every_second = Schedule::parse("1 seconds", "UTC").unwrap();
        // Up again at 01:00:00.7: the 01:00:00 run is already 0.7 s late, beyond its 0.5 s grace.
        let d = decide(&every_second, false, t("2026-12-01T00:00:00Z"), t("2026-12-01T01:00:00.700Z"), t("2026-12-01T01:00:00.600Z"));
        assert_eq!(d.skipped.len(), MAX_SKIPPED_RECORDED);
        assert!(d.skipped[0].reason.contains("earlier runs skipped"), "{}", d.skipped[0].reason);
        assert_eq!(d.skipped.last().unwrap().scheduled_for, t("2026-12-01T01:00:00Z"));
        assert!(d.run.is_none());
    }

    #[test]
    fn lateness_allows_a_minute() {
        let now = t("2026-12-01T10:00:00Z");
        assert!(!is_late(Some(t("2026-12-01T09:59:30Z")), now));
        assert!(is_late(Some(t("2026-12-01T09:58:00Z")), now));
        assert!(!is_late(None, now));
    }
}
