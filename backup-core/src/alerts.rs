//! Alerts: when a bad health check is told, when it is told again, and when it is resolved.
//!
//! Pure policy over the checks of [`crate::health`] and the alerts already open (the
//! extension's alert worker keeps them in `backup.alerts` and delivers what this decides through
//! [`crate::notify`]). Every check is a condition: the product document's (backup failure →
//! `last_backup`, missing scheduled backup → `full_backup_age`, `incremental_backup_age`,
//! `missed_runs`; storage space → `repository_space:NAME`; verification failure →
//! `verification`; performance degradation → `backup_duration`), plus archiving failing or
//! lagging, a WAL gap, an unreachable repository, the scheduler not running.
//!
//! The rules, so that an operator hears of each problem once and hears when it is over:
//! - a check that turns warning or critical opens an alert (told: "firing");
//! - while it stays bad nothing is sent, except when it gets worse (warning → critical,
//!   told: "escalated") or when `repeat_after` has passed since it was last told (told:
//!   "reminder"); getting better but still bad is recorded silently;
//! - when the check is ok again the alert is resolved (told to the same channels as the
//!   firing: the alert keeps the worst severity it reached, which routing reads);
//! - a check that is no longer evaluated resolves its alert ("no longer checked": a repository
//!   removed from the configuration), except while the configuration itself cannot be read:
//!   then the repositories cannot be looked at, and their alerts stay as they are.

use chrono::{DateTime, Duration, Utc};

use crate::health::{Check, Status};

/// The check every other check rolls up into: not a condition of its own.
pub const OVERALL: &str = "overall";

/// An alert not yet resolved, as the catalog holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAlert {
    pub id: i64,
    pub key: String,
    /// The worst severity it reached.
    pub severity: Status,
    pub last_notified: DateTime<Utc>,
}

/// Why a notification is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Firing,
    Escalated,
    Reminder,
    Resolved,
    /// `backup.test_alert()`.
    Test,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Firing => "firing",
            Event::Escalated => "escalated",
            Event::Reminder => "reminder",
            Event::Resolved => "resolved",
            Event::Test => "test",
        }
    }
}

/// What to do about one condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A new alert: record it and tell `Event::Firing`.
    Open { check: Check },
    /// An open alert got worse, or is due a reminder: record and tell.
    Notify { id: i64, event: Event, check: Check },
    /// An open alert got better but is still bad: record, tell nobody.
    Update { id: i64, check: Check },
    /// The condition cleared (`check` ok) or is no longer checked (`check` None).
    Resolve { id: i64, key: String, severity: Status, check: Option<Check> },
}

/// The actions that bring the open alerts in line with `checks` at `now`. `repeat_after`:
/// how long a condition that stays bad goes untold (None: never again until resolved).
pub fn decide(open: &[OpenAlert], checks: &[Check], now: DateTime<Utc>, repeat_after: Option<Duration>) -> Vec<Action> {
    let conditions: Vec<&Check> = checks.iter().filter(|c| c.name != OVERALL).collect();
    let config_unreadable = conditions.iter().any(|c| c.name == "configuration" && c.status != Status::Ok);
    let mut actions = Vec::new();
    for check in &conditions {
        let alert = open.iter().find(|a| a.key == check.name);
        match (alert, check.status) {
            (None, Status::Ok) => {}
            (None, _) => actions.push(Action::Open { check: (*check).clone() }),
            (Some(a), Status::Ok) => actions.push(Action::Resolve { id: a.id, key: a.key.clone(), severity: a.severity, check: Some((*check).clone()) }),
            (Some(a), status) if status > a.severity => actions.push(Action::Notify { id: a.id, event: Event::Escalated, check: (*check).clone() }),
            (Some(a), _) if repeat_after.is_some_and(|r| now - a.last_notified >= r) => {
                actions.push(Action::Notify { id: a.id, event: Event::Reminder, check: (*check).clone() })
            }
            (Some(a), status) if status < a.severity => actions.push(Action::Update { id: a.id, check: (*check).clone() }),
            (Some(_), _) => {}
        }
    }
    for a in open {
        if conditions.iter().any(|c| c.name == a.key) {
            continue;
        }
        // Checks made from the configuration vanish with it: not a reason to say "resolved".
        if config_unreadable && a.key != "configuration" {
            continue;
        }
        actions.push(Action::Resolve { id: a.id, key: a.key.clone(), severity: a.severity, check: None });
    }
    actions
}

/// A one-line title for a condition, for subjects and chat messages.
pub fn summary(key: &str, status: Status) -> String {
    let (name, arg) = key.split_once(':').map_or((key, None), |(n, a)| (n, Some(a)));
    let repo = arg.unwrap_or("?");
    let what = match name {
        "archiving" => "WAL archiving is failing".to_string(),
        "archive_backlog" => "WAL archiving is falling behind".to_string(),
        "full_backup_age" => "no recent full backup (a scheduled backup is missing)".to_string(),
        "incremental_backup_age" => "no recent incremental backup (a scheduled backup is missing)".to_string(),
        "last_backup" => "the last backup failed".to_string(),
        "verification" => "backup verification failed".to_string(),
        "restore_test" => "a restore test failed".to_string(),
        "backup_duration" => "backups got slower (performance degradation)".to_string(),
        "missed_runs" => "scheduled runs were missed".to_string(),
        "scheduler" => "the backup scheduler is not running".to_string(),
        "configuration" => "the backup configuration cannot be read".to_string(),
        "notifications" => "alert notifications are misconfigured".to_string(),
        "repository" => format!("repository {repo} does not answer"),
        "repository_space" => format!("repository {repo} is running out of space"),
        "wal_gaps" => format!("WAL is missing in repository {repo} (point-in-time recovery would stop at the gap)"),
        _ => format!("{key} is {status}"),
    };
    if status == Status::Ok {
        format!("resolved: {what}")
    } else {
        what
    }
}

/// When a failed delivery is tried again: 30 s after the first failure, doubling, at most an
/// hour apart; None after `max_attempts` (the channel is given up for this notification).
pub fn retry_after(attempts: u32, max_attempts: u32) -> Option<Duration> {
    if attempts >= max_attempts {
        return None;
    }
    let seconds = 30i64.saturating_mul(1i64 << attempts.saturating_sub(1).min(20));
    Some(Duration::seconds(seconds.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn check(name: &str, status: Status) -> Check {
        Check::new(name, status, None, None, format!("{name} is {status}"))
    }

    fn open(id: i64, key: &str, severity: Status, last: &str) -> OpenAlert {
        OpenAlert { id, key: key.into(), severity, last_notified: at(last) }
    }

    const NOW: &str = "2026-12-07T12:00:00Z";

    #[test]
    fn a_bad_check_opens_one_alert_and_an_ok_one_nothing() {
        let checks = [check(OVERALL, Status::Critical), check("archiving", Status::Critical), check("scheduler", Status::Ok)];
        let a = decide(&[], &checks, at(NOW), Some(Duration::hours(24)));
        assert_eq!(a, [Action::Open { check: check("archiving", Status::Critical) }]);
    }

    #[test]
    fn staying_bad_is_told_once_until_the_reminder_is_due() {
        let alerts = [open(7, "archiving", Status::Critical, "2026-12-07T11:00:00Z")];
        let checks = [check("archiving", Status::Critical)];
        assert!(decide(&alerts, &checks, at(NOW), Some(Duration::hours(24))).is_empty());
        assert!(decide(&alerts, &checks, at(NOW), None).is_empty());
        let a = decide(&alerts, &checks, at("2026-12-08T11:00:00Z"), Some(Duration::hours(24)));
        assert_eq!(a, [Action::Notify { id: 7, event: Event::Reminder, check: check("archiving", Status::Critical) }]);
    }

    #[test]
    fn worse_is_told_better_is_recorded_ok_resolves() {
        let alerts = [open(3, "missed_runs", Status::Warning, NOW), open(4, "archive_backlog", Status::Critical, NOW), open(5, "last_backup", Status::Critical, NOW)];
        let checks = [check("missed_runs", Status::Critical), check("archive_backlog", Status::Warning), check("last_backup", Status::Ok)];
        let a = decide(&alerts, &checks, at(NOW), Some(Duration::hours(24)));
        assert_eq!(
            a,
            [
                Action::Notify { id: 3, event: Event::Escalated, check: check("missed_runs", Status::Critical) },
                Action::Update { id: 4, check: check("archive_backlog", Status::Warning) },
                Action::Resolve { id: 5, key: "last_backup".into(), severity: Status::Critical, check: Some(check("last_backup", Status::Ok)) },
            ]
        );
    }

    #[test]
    fn a_vanished_check_resolves_unless_the_configuration_hides_it() {
        let alerts = [open(1, "repository_space:offsite", Status::Warning, NOW)];
        let a = decide(&alerts, &[check("archiving", Status::Ok)], at(NOW), None);
        assert_eq!(a, [Action::Resolve { id: 1, key: "repository_space:offsite".into(), severity: Status::Warning, check: None }]);
        let a = decide(&alerts, &[check("configuration", Status::Critical)], at(NOW), None);
        assert_eq!(a, [Action::Open { check: check("configuration", Status::Critical) }], "the repository's alert stays open");
    }

    #[test]
    fn summaries_name_the_condition_and_the_repository() {
        assert_eq!(summary("repository_space:offsite", Status::Warning), "repository offsite is running out of space");
        assert_eq!(summary("last_backup", Status::Ok), "resolved: the last backup failed");
        assert_eq!(summary("something_new", Status::Critical), "something_new is critical");
    }

    #[test]
    fn retries_back_off_to_an_hour_then_stop() {
        let delays: Vec<i64> = (1..=9).map(|n| retry_after(n, 10).unwrap().num_seconds()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_after(10, 10), None);
    }
}
