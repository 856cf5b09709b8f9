//! `backup.health()`: the checks that tell an operator backups broke before a restore does.
//! Pure policy over what the extension observed ([`Observations`], gathered with SQL from the
//! catalog, `pg_stat_archiver` and `pg_wal/archive_status`, and from the repositories), so that
//! every threshold and edge is a unit test; the scheduler's `health` job and the alerts read the
//! same checks.
//!
//! Each check has a stable name, a status (ok, warning, critical), the value it judged, the
//! threshold it held the value against, and a message that says what to do. The overall
//! status is the worst of them.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        match s {
            "ok" => Ok(Status::Ok),
            "warning" => Ok(Status::Warning),
            "critical" => Ok(Status::Critical),
            other => Err(format!("{other:?} is not a health status (ok, warning, critical)")),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `backup.health()`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub value: Option<String>,
    pub threshold: Option<String>,
    pub message: String,
}

impl Check {
    pub fn new(name: impl Into<String>, status: Status, value: Option<String>, threshold: Option<String>, message: impl Into<String>) -> Check {
        Check { name: name.into(), status, value, threshold, message: message.into() }
    }
}

/// The limits the checks hold values against (GUCs `backup.health_*`).
#[derive(Clone, Debug)]
pub struct Thresholds {
    /// Age of the oldest WAL file waiting for `archive_command` (`.ready`): warning, critical.
    pub archive_lag_warning: Duration,
    pub archive_lag_critical: Duration,
    /// Added to a schedule's longest interval before its newest backup counts as too old
    /// (a backup takes time and may wait for the scheduler's queue). Twice the interval (plus
    /// this) is critical.
    pub backup_age_grace: Duration,
    /// A backup taking more than this many times the median of the previous ones of its type
    /// (at least [`MIN_DURATION_SAMPLES`] of them) is a performance degradation.
    pub duration_factor: f64,
    /// Free space of a repository's filesystem, percent: warning, critical below.
    pub space_warning_pct: f64,
    pub space_critical_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            archive_lag_warning: Duration::minutes(5),
            archive_lag_critical: Duration::minutes(30),
            backup_age_grace: Duration::hours(1),
            duration_factor: 3.0,
            space_warning_pct: 20.0,
            space_critical_pct: 10.0,
        }
    }
}

/// Backups of one type before a duration trend is judged.
pub const MIN_DURATION_SAMPLES: usize = 3;

/// What the checks judge. Field names match the JSON the extension builds in SQL.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Observations {
    pub archive_mode: String,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// WAL files waiting for `archive_command`, and the oldest one's modification time.
    pub ready_count: u64,
    pub oldest_ready: Option<DateTime<Utc>>,
    #[serde(default)]
    pub freshness: Vec<Freshness>,
    /// The newest backup of any type, whatever its status.
    pub last_backup: Option<LastBackup>,
    /// The newest verified backup.
    pub last_verified: Option<LastVerified>,
    /// The newest completed backup, with the durations of the ones of its type before it.
    pub last_completed: Option<Completed>,
    /// Scheduled runs recorded as skipped or interrupted in the last day.
    #[serde(default)]
    pub missed_runs: Vec<MissedRun>,
    /// The newest restore test.
    #[serde(default)]
    pub last_restore_test: Option<LastRestoreTest>,
    pub scheduler_enabled: bool,
    pub scheduler_running: bool,
    /// Why the configuration file (repositories, keys) could not be read, if it could not.
    #[serde(skip)]
    pub config_error: Option<String>,
    /// Why the `[notifications]` section cannot be used: alerts are recorded but not sent.
    #[serde(skip)]
    pub notifications_error: Option<String>,
    #[serde(skip)]
    pub repositories: Vec<RepositoryState>,
}

/// How old the newest backup that satisfies a scheduled job is.
#[derive(Clone, Debug, Deserialize)]
pub struct Freshness {
    /// `full` or `incremental`.
    pub kind: String,
    /// The job's name, and its schedule's longest interval in seconds (the extension computes
    /// it from the cron expression).
    pub job: String,
    #[serde(default)]
    pub interval_s: Option<i64>,
    pub newest_id: Option<String>,
    pub newest_start: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LastBackup {
    pub id: String,
    pub status: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LastVerified {
    pub id: String,
    pub ok: bool,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Completed {
    pub id: String,
    pub kind: String,
    pub duration_s: f64,
    /// Durations of the previous completed backups of the same type, newest first.
    #[serde(default)]
    pub previous_s: Vec<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LastRestoreTest {
    pub id: i64,
    pub backup_id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub problems: Vec<String>,
    pub rto_seconds: Option<f64>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MissedRun {
    pub job: String,
    pub scheduled_for: DateTime<Utc>,
    pub status: String,
    pub message: Option<String>,
}

/// One repository as the extension found it.
#[derive(Clone, Debug, Default)]
pub struct RepositoryState {
    pub name: String,
    /// Why it could not be opened or read.
    pub error: Option<String>,
    /// Bytes free and in all, where the store has such a thing (a local filesystem).
    pub space: Option<(u64, u64)>,
    /// Segments missing between archived ones where recovery would need them (the first few
    /// names and how many), when the repository's WAL was examined.
    pub wal_gaps: Option<(Vec<String>, usize)>,
    /// WAL files archived while this best-effort repository was down, not yet copied to it.
    pub owed_wal: u64,
}

/// Every check, in a fixed order.
pub fn evaluate(o: &Observations, t: &Thresholds, now: DateTime<Utc>) -> Vec<Check> {
    let mut checks = vec![archiving(o), archive_backlog(o, t, now)];
    checks.extend(o.freshness.iter().map(|f| freshness(f, t, now)));
    if !o.freshness.iter().any(|f| f.kind == "full") {
        checks.push(Check::new("full_backup_age", Status::Ok, None, None, "no full backup job is scheduled: nothing to hold the newest full backup against"));
    }
    checks.push(last_backup(o));
    checks.push(verification(o));
    checks.push(duration_trend(o, t));
    checks.push(missed_runs(o));
    checks.push(restore_test(o));
    checks.push(scheduler(o));
    if let Some(e) = &o.config_error {
        checks.push(Check::new("configuration", Status::Critical, None, None, format!("{e}: no repository can be reached, so backups, archiving and restores fail; fix backup.config_file or the file it names")));
    }
    if let Some(e) = &o.notifications_error {
        checks.push(Check::new("notifications", Status::Critical, None, None, format!("{e}: alerts are recorded in backup.alerts but sent nowhere; fix the section (SELECT * FROM backup.test_alert() tries it)")));
    }
    for r in &o.repositories {
        checks.extend(repository(r, t));
    }
    checks
}

/// The worst status of `checks`, as the `overall` row.
pub fn overall(checks: &[Check]) -> Check {
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let failing: Vec<&str> = checks.iter().filter(|c| c.status == worst && worst != Status::Ok).map(|c| c.name.as_str()).collect();
    let message = if failing.is_empty() { "every check is ok".to_string() } else { format!("{worst}: {}", failing.join(", ")) };
    Check::new("overall", worst, Some(format!("{} check(s)", checks.len())), None, message)
}

fn archiving(o: &Observations) -> Check {
    let value = o.last_archived_wal.as_ref().map(|w| format!("{w} at {}", when(o.last_archived_time)));
    if o.archive_mode == "off" {
        return Check::new("archiving", Status::Critical, value, Some("archive_mode on".into()), "archive_mode is off: no WAL reaches the repository, so no backup can be restored to any point after it; set archive_mode = on and restart");
    }
    if let (Some(failed), Some(wal)) = (o.last_failed_time, &o.last_failed_wal) {
        if o.last_archived_time.is_none_or(|ok| failed > ok) {
            return Check::new(
                "archiving",
                Status::Critical,
                Some(format!("{wal} failed at {}", failed.to_rfc3339())),
                Some("last failure older than last success".into()),
                format!("archiving is failing: {wal} failed at {} (last success: {}); see the server log for archive_command's error", failed.to_rfc3339(), when(o.last_archived_time)),
            );
        }
    }
    Check::new("archiving", Status::Ok, value, None, "archive_command succeeds")
}

fn archive_backlog(o: &Observations, t: &Thresholds, now: DateTime<Utc>) -> Check {
    let threshold = Some(format!("oldest waiting < {} (warning), < {} (critical)", secs(t.archive_lag_warning), secs(t.archive_lag_critical)));
    let Some(oldest) = o.oldest_ready.filter(|_| o.ready_count > 0) else {
        return Check::new("archive_backlog", Status::Ok, Some("0 files waiting".into()), threshold, "no WAL file waits for archive_command");
    };
    let age = (now - oldest).max(Duration::zero());
    let value = Some(format!("{} file(s) waiting, oldest {}", o.ready_count, secs(age)));
    let status = if age > t.archive_lag_critical {
        Status::Critical
    } else if age > t.archive_lag_warning {
        Status::Warning
    } else {
        Status::Ok
    };
    let message = match status {
        Status::Ok => "archiving keeps up".to_string(),
        _ => format!(
            "{} WAL file(s) wait for archive_command, the oldest for {}: the point-in-time window ends that far back and pg_wal grows; check archive_command's errors in the server log and the repository",
            o.ready_count,
            secs(age)
        ),
    };
    Check::new("archive_backlog", status, value, threshold, message)
}

fn freshness(f: &Freshness, t: &Thresholds, now: DateTime<Utc>) -> Check {
    let name = format!("{}_backup_age", f.kind);
    let Some(interval) = f.interval_s.map(Duration::seconds) else {
        return Check::new(name, Status::Ok, None, None, format!("job {} has no recurring schedule to hold its backups against", f.job));
    };
    let warning = interval + t.backup_age_grace;
    let critical = interval * 2 + t.backup_age_grace;
    let threshold = Some(format!("younger than {} (warning), {} (critical): job {}'s longest interval plus {}", secs(warning), secs(critical), f.job, secs(t.backup_age_grace)));
    let (Some(id), Some(start)) = (&f.newest_id, f.newest_start) else {
        let what = if f.kind == "full" { "SELECT backup.start_full()" } else { "SELECT backup.start_incremental()" };
        return Check::new(name, Status::Critical, None, threshold, format!("no completed {} backup although job {} schedules them: run {what} and check backup.job_runs for why the job's runs did not complete", f.kind, f.job));
    };
    let age = (now - start).max(Duration::zero());
    let status = if age > critical {
        Status::Critical
    } else if age > warning {
        Status::Warning
    } else {
        Status::Ok
    };
    let value = Some(format!("{id}, {} old", secs(age)));
    let message = match status {
        Status::Ok => format!("the newest {} backup is recent enough for job {}", f.kind, f.job),
        _ => format!("the newest {} backup {id} started {} ago, longer than job {} allows: check backup.job_runs and backup.scheduler_status()", f.kind, secs(age), f.job),
    };
    Check::new(name, status, value, threshold, message)
}

fn last_backup(o: &Observations) -> Check {
    match &o.last_backup {
        None => Check::new("last_backup", Status::Ok, None, None, "no backup taken yet"),
        Some(b) if b.status == "failed" => Check::new(
            "last_backup",
            Status::Critical,
            Some(format!("{} failed", b.id)),
            Some("completed".into()),
            format!("the newest backup {} failed: {}; fix the cause and take another (SELECT backup.start_full())", b.id, b.error.as_deref().unwrap_or("no error recorded")),
        ),
        Some(b) => Check::new("last_backup", Status::Ok, Some(format!("{} {}", b.id, b.status)), Some("completed".into()), "the newest backup did not fail"),
    }
}

fn verification(o: &Observations) -> Check {
    match &o.last_verified {
        None => Check::new("verification", Status::Ok, None, None, "no backup verified yet (the verify job or SELECT backup.verify(id) does it)"),
        Some(v) if !v.ok => Check::new(
            "verification",
            Status::Critical,
            Some(format!("{} failed at {}", v.id, v.at.to_rfc3339())),
            Some("verified ok".into()),
            format!("the last verification, of {}, failed: the backup cannot be trusted for a restore; see backup.events and take a new full backup", v.id),
        ),
        Some(v) => Check::new("verification", Status::Ok, Some(format!("{} ok at {}", v.id, v.at.to_rfc3339())), Some("verified ok".into()), "the last verification passed"),
    }
}

fn duration_trend(o: &Observations, t: &Thresholds) -> Check {
    let threshold = Some(format!("< {}x the median of the previous ones of its type", t.duration_factor));
    let Some(c) = &o.last_completed else {
        return Check::new("backup_duration", Status::Ok, None, threshold, "no completed backup yet");
    };
    if c.previous_s.len() < MIN_DURATION_SAMPLES {
        return Check::new("backup_duration", Status::Ok, Some(format!("{} took {:.1} s", c.id, c.duration_s)), threshold, format!("fewer than {MIN_DURATION_SAMPLES} earlier {} backups to compare with", c.kind));
    }
    let median = median(&c.previous_s);
    let value = Some(format!("{} took {:.1} s, median {:.1} s", c.id, c.duration_s, median));
    if median > 0.0 && c.duration_s > t.duration_factor * median {
        let message = format!(
            "{} backup {} took {:.1}x the median of the {} before it: look for I/O contention, a slower repository, or growth in the data",
            c.kind,
            c.id,
            c.duration_s / median,
            c.previous_s.len()
        );
        return Check::new("backup_duration", Status::Warning, value, threshold, message);
    }
    Check::new("backup_duration", Status::Ok, value, threshold, "backup durations are steady")
}

fn missed_runs(o: &Observations) -> Check {
    let threshold = Some("none in the last 24 h not made up by a later success".to_string());
    let Some(newest) = o.missed_runs.iter().max_by_key(|r| r.scheduled_for) else {
        return Check::new("missed_runs", Status::Ok, Some("0".into()), threshold, "no scheduled run was missed in the last 24 h");
    };
    let message = format!(
        "{} scheduled run(s) in the last 24 h did not run and no later run of their job succeeded; the newest: job {} due at {} ({}: {}); see backup.job_runs",
        o.missed_runs.len(),
        newest.job,
        newest.scheduled_for.to_rfc3339(),
        newest.status,
        newest.message.as_deref().unwrap_or("no reason recorded")
    );
    Check::new("missed_runs", Status::Warning, Some(o.missed_runs.len().to_string()), threshold, message)
}

fn restore_test(o: &Observations) -> Check {
    let threshold = Some("passed".to_string());
    match &o.last_restore_test {
        None => Check::new("restore_test", Status::Ok, None, threshold, "no restore test has run yet (the restore_test job runs weekly; SELECT backup.restore_test() runs one now)"),
        Some(t) if t.status == "passed" => Check::new(
            "restore_test",
            Status::Ok,
            Some(format!("passed at {}", t.finished_at.to_rfc3339())),
            threshold,
            format!("restore test {} of {} passed{}", t.id, t.backup_id.as_deref().unwrap_or("the newest backup"), t.rto_seconds.map(|s| format!(" (RTO {s:.1} s)")).unwrap_or_default()),
        ),
        Some(t) => Check::new(
            "restore_test",
            Status::Critical,
            Some(format!("failed at {}", t.finished_at.to_rfc3339())),
            threshold,
            format!(
                "restore test {} of {} failed: {}; see backup.restore_tests",
                t.id,
                t.backup_id.as_deref().unwrap_or("the newest backup"),
                t.problems.first().map(String::as_str).unwrap_or("no problem recorded")
            ),
        ),
    }
}

fn scheduler(o: &Observations) -> Check {
    match (o.scheduler_enabled, o.scheduler_running) {
        (true, true) => Check::new("scheduler", Status::Ok, Some("running".into()), Some("running".into()), "the scheduler worker runs"),
        (true, false) => Check::new(
            "scheduler",
            Status::Critical,
            Some("not running".into()),
            Some("running".into()),
            "backup.scheduler is on but its worker does not run: no scheduled backup will happen; add pg_backup_ext to shared_preload_libraries, check backup.scheduler_database, and see the server log",
        ),
        (false, _) => Check::new("scheduler", Status::Warning, Some("off".into()), Some("on".into()), "backup.scheduler is off: nothing runs unattended; backups happen only when someone starts them"),
    }
}

fn repository(r: &RepositoryState, t: &Thresholds) -> Vec<Check> {
    let mut out = Vec::new();
    let name = format!("repository:{}", r.name);
    match &r.error {
        Some(e) => out.push(Check::new(name, Status::Critical, Some("unreachable".into()), Some("answers".into()), format!("repository {} does not answer: {e}", r.name))),
        None if r.owed_wal > 0 => out.push(Check::new(
            name,
            Status::Warning,
            Some(format!("{} WAL file(s) owed", r.owed_wal)),
            Some("0 owed".into()),
            format!("{} WAL file(s) were archived while best-effort repository {} was down and are not there yet: the next archive_command that reaches it copies them, or run wal-archiver catch-up", r.owed_wal, r.name),
        )),
        None => out.push(Check::new(name, Status::Ok, Some("answers".into()), Some("answers".into()), format!("repository {} answers", r.name))),
    }
    if let Some((first, count)) = &r.wal_gaps {
        let name = format!("wal_gaps:{}", r.name);
        out.push(match first.first() {
            None => Check::new(name, Status::Ok, Some("0".into()), Some("0 missing".into()), format!("repository {} holds every WAL segment between its first and last", r.name)),
            Some(gap) => Check::new(
                name,
                Status::Critical,
                Some(format!("{count} missing")),
                Some("0 missing".into()),
                format!(
                    "repository {} misses {count} WAL segment(s) recovery needs, the first {gap} ({}): a restore to a moment past a gap stops at it; take a full backup now so that recovery from it does not need the gap, and find what removed the files",
                    r.name,
                    first.join(", ")
                ),
            ),
        });
    }
    if let Some((free, total)) = r.space.filter(|(_, total)| *total > 0) {
        let pct = free as f64 * 100.0 / total as f64;
        let status = if pct < t.space_critical_pct {
            Status::Critical
        } else if pct < t.space_warning_pct {
            Status::Warning
        } else {
            Status::Ok
        };
        let message = match status {
            Status::Ok => format!("repository {} has room", r.name),
            _ => format!("repository {} has {:.1} % free ({} of {} bytes): expire old backups (retention) or give it room before backups and archiving fail", r.name, pct, free, total),
        };
        out.push(Check::new(
            format!("repository_space:{}", r.name),
            status,
            Some(format!("{pct:.1} % free")),
            Some(format!("> {} % (warning), > {} % (critical)", t.space_warning_pct, t.space_critical_pct)),
            message,
        ));
    }
    out
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn secs(d: Duration) -> String {
    let s = d.num_seconds();
    if s >= 2 * 86400 {
        format!("{:.1} d", s as f64 / 86400.0)
    } else if s >= 2 * 3600 {
        format!("{:.1} h", s as f64 / 3600.0)
    } else if s >= 120 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn healthy() -> Observations {
        Observations {
            archive_mode: "on".into(),
            last_archived_wal: Some("000000010000000000000005".into()),
            last_archived_time: Some(at("2026-12-07T11:59:00Z")),
            freshness: vec![Freshness {
                kind: "full".into(),
                job: "full".into(),
                interval_s: Some(86400),
                newest_id: Some("backup_20261207_020000".into()),
                newest_start: Some(at("2026-12-07T02:00:00Z")),
            }],
            scheduler_enabled: true,
            scheduler_running: true,
            repositories: vec![RepositoryState { name: "local".into(), space: Some((50, 100)), ..Default::default() }],
            ..Default::default()
        }
    }

    fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
    }

    const NOW: &str = "2026-12-07T12:00:00Z";

    #[test]
    fn a_healthy_system_is_ok_everywhere() {
        let checks = evaluate(&healthy(), &Thresholds::default(), at(NOW));
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
        assert_eq!(overall(&checks).status, Status::Ok);
        assert_eq!(overall(&checks).message, "every check is ok");
    }

    #[test]
    fn archiving_failing_or_off_is_critical_and_clears_after_a_success() {
        let mut o = healthy();
        o.last_failed_wal = Some("000000010000000000000006".into());
        o.last_failed_time = Some(at("2026-12-07T11:59:30Z"));
        let c = evaluate(&o, &Thresholds::default(), at(NOW));
        assert_eq!(check(&c, "archiving").status, Status::Critical);
        assert!(check(&c, "archiving").message.contains("000000010000000000000006"));
        assert_eq!(overall(&c).status, Status::Critical);
        assert!(overall(&c).message.contains("archiving"), "{:?}", overall(&c));
        // A later success clears it.
        o.last_archived_time = Some(at("2026-12-07T11:59:40Z"));
        assert_eq!(check(&evaluate(&o, &Thresholds::default(), at(NOW)), "archiving").status, Status::Ok);
        o.archive_mode = "off".into();
        assert_eq!(check(&evaluate(&o, &Thresholds::default(), at(NOW)), "archiving").status, Status::Critical);
    }

    #[test]
    fn the_backlog_is_judged_by_the_age_of_its_oldest_file() {
        let mut o = healthy();
        let t = Thresholds::default();
        o.ready_count = 3;
        for (oldest, status) in [("2026-12-07T11:58:00Z", Status::Ok), ("2026-12-07T11:50:00Z", Status::Warning), ("2026-12-07T11:00:00Z", Status::Critical)] {
            o.oldest_ready = Some(at(oldest));
            let c = evaluate(&o, &t, at(NOW));
            assert_eq!(check(&c, "archive_backlog").status, status, "{oldest}");
        }
        assert!(check(&evaluate(&o, &t, at(NOW)), "archive_backlog").value.as_deref().unwrap().contains("3 file(s)"));
    }

    #[test]
    fn backups_older_than_their_schedule_allows() {
        let mut o = healthy();
        let t = Thresholds::default();
        o.freshness.push(Freshness { kind: "incremental".into(), job: "incremental".into(), interval_s: Some(12 * 3600), newest_id: None, newest_start: None });
        let c = evaluate(&o, &t, at(NOW));
        assert_eq!(check(&c, "full_backup_age").status, Status::Ok);
        assert_eq!(check(&c, "incremental_backup_age").status, Status::Critical, "none at all");
        // A day and a half: past a daily schedule plus grace, not past twice it.
        o.freshness[0].newest_start = Some(at("2026-12-06T00:00:00Z"));
        assert_eq!(check(&evaluate(&o, &t, at(NOW)), "full_backup_age").status, Status::Warning);
        o.freshness[0].newest_start = Some(at("2026-12-04T00:00:00Z"));
        let c = evaluate(&o, &t, at(NOW));
        assert_eq!(check(&c, "full_backup_age").status, Status::Critical);
        assert!(check(&c, "full_backup_age").message.contains("backup_20261207_020000"));
        // No full job scheduled: nothing to compare with, said so.
        let mut unscheduled = healthy();
        unscheduled.freshness.clear();
        assert_eq!(check(&evaluate(&unscheduled, &t, at(NOW)), "full_backup_age").status, Status::Ok);
    }

    #[test]
    fn a_failed_backup_and_a_failed_verification_are_critical() {
        let mut o = healthy();
        o.last_backup = Some(LastBackup { id: "backup_20261207_110000".into(), status: "failed".into(), error: Some("disk full".into()) });
        o.last_verified = Some(LastVerified { id: "backup_20261207_020000".into(), ok: false, at: at("2026-12-07T03:00:00Z") });
        let c = evaluate(&o, &Thresholds::default(), at(NOW));
        assert_eq!(check(&c, "last_backup").status, Status::Critical);
        assert!(check(&c, "last_backup").message.contains("disk full"));
        assert_eq!(check(&c, "verification").status, Status::Critical);
        o.last_backup.as_mut().unwrap().status = "completed".into();
        o.last_verified.as_mut().unwrap().ok = true;
        let c = evaluate(&o, &Thresholds::default(), at(NOW));
        assert_eq!((check(&c, "last_backup").status, check(&c, "verification").status), (Status::Ok, Status::Ok));
    }

    #[test]
    fn a_backup_far_slower_than_its_peers_is_a_degradation() {
        let mut o = healthy();
        let t = Thresholds::default();
        o.last_completed = Some(Completed { id: "b".into(), kind: "full".into(), duration_s: 100.0, previous_s: vec![30.0, 20.0] });
        assert_eq!(check(&evaluate(&o, &t, at(NOW)), "backup_duration").status, Status::Ok, "too few to judge");
        o.last_completed.as_mut().unwrap().previous_s = vec![30.0, 20.0, 25.0, 400.0];
        // median 27.5: 100 > 3 x 27.5
        assert_eq!(check(&evaluate(&o, &t, at(NOW)), "backup_duration").status, Status::Warning);
        o.last_completed.as_mut().unwrap().duration_s = 80.0;
        assert_eq!(check(&evaluate(&o, &t, at(NOW)), "backup_duration").status, Status::Ok);
    }

    #[test]
    fn a_wal_gap_is_critical_and_names_the_segment() {
        let mut o = healthy();
        o.repositories = vec![RepositoryState { name: "local".into(), wal_gaps: Some((vec!["000000010000000000000007".into()], 1)), ..Default::default() }];
        let c = evaluate(&o, &Thresholds::default(), at(NOW));
        assert_eq!(check(&c, "wal_gaps:local").status, Status::Critical);
        assert!(check(&c, "wal_gaps:local").message.contains("000000010000000000000007"));
        o.repositories[0].wal_gaps = Some((vec![], 0));
        assert_eq!(check(&evaluate(&o, &Thresholds::default(), at(NOW)), "wal_gaps:local").status, Status::Ok);
    }

    #[test]
    fn missed_runs_scheduler_and_repositories() {
        let mut o = healthy();
        let t = Thresholds::default();
        o.missed_runs = vec![MissedRun { job: "full".into(), scheduled_for: at("2026-12-07T02:00:00Z"), status: "skipped".into(), message: Some("missed: server down".into()) }];
        o.scheduler_running = false;
        o.repositories.push(RepositoryState { name: "s3".into(), error: Some("connection refused".into()), ..Default::default() });
        o.repositories[0].space = Some((5, 100));
        let c = evaluate(&o, &t, at(NOW));
        assert_eq!(check(&c, "missed_runs").status, Status::Warning);
        assert!(check(&c, "missed_runs").message.contains("server down"));
        assert_eq!(check(&c, "scheduler").status, Status::Critical);
        assert_eq!(check(&c, "repository:s3").status, Status::Critical);
        assert_eq!(check(&c, "repository:local").status, Status::Ok);
        assert_eq!(check(&c, "repository_space:local").status, Status::Critical);
        o.repositories[0].space = Some((15, 100));
        o.scheduler_enabled = false;
        let c = evaluate(&o, &t, at(NOW));
        assert_eq!(check(&c, "repository_space:local").status, Status::Warning);
        assert_eq!(check(&c, "scheduler").status, Status::Warning);
        o.repositories[1] = RepositoryState { name: "s3".into(), owed_wal: 4, ..Default::default() };
        assert_eq!(check(&evaluate(&o, &t, at(NOW)), "repository:s3").status, Status::Warning);
        o.config_error = Some("cannot read configuration file /x.conf".into());
        let c = evaluate(&o, &t, at(NOW));
        assert_eq!(check(&c, "configuration").status, Status::Critical);
        assert!(check(&c, "configuration").message.starts_with("cannot read configuration file /x.conf: "));
    }

    #[test]
    fn observations_read_from_the_extensions_json() {
        let o: Observations = serde_json::from_str(
            r#"{"archive_mode":"on","last_archived_wal":"000000010000000000000005","last_archived_time":"2026-12-07T11:59:00.123456+07:00",
                "last_failed_wal":null,"last_failed_time":null,"ready_count":0,"oldest_ready":null,
                "freshness":[{"kind":"full","job":"full","interval_s":86400,"newest_id":null,"newest_start":null}],
                "last_backup":null,"last_verified":null,"last_completed":null,"missed_runs":[],
                "scheduler_enabled":true,"scheduler_running":false}"#,
        )
        .unwrap();
        assert_eq!(o.last_archived_time, Some(at("2026-12-07T04:59:00.123456Z")));
        assert_eq!(o.freshness[0].interval_s, Some(86400));
    }
}
