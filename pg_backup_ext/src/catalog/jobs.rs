//! SQL on the scheduler's tables, `backup.schedules` and `backup.job_runs` (defined in
//! `sql/bootstrap.sql`). Rows are read as JSON into serde structs: one statement per read,
//! however many rows.

use backup_core::schedule::JobKind;
use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;

use super::CatalogResult;

/// A row of `backup.schedules`.
#[derive(Clone, Debug, Deserialize)]
pub struct Job {
    pub name: String,
    #[serde(deserialize_with = "kind_from_text")]
    pub kind: JobKind,
    pub cron: String,
    pub time_zone: String,
    pub enabled: bool,
    pub options: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

fn kind_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobKind, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

impl Job {
    /// Whether a run missed while the server was down runs once on start-up.
    pub fn catch_up(&self) -> bool {
        self.options.get("catch_up").and_then(|v| v.as_bool()).unwrap_or_else(|| backup_core::jobs::catches_up_by_default(self.kind))
    }

    /// Where this job's schedule resumes, from [`baselines`]: the one reckoning the worker and
    /// `scheduler_status()` share, so the status predicts what the worker does.
    pub fn baseline(&self, baselines: &[(String, DateTime<Utc>)]) -> DateTime<Utc> {
        baselines.iter().find(|(n, _)| *n == self.name).map_or(self.updated_at, |(_, b)| *b)
    }

    /// Backups a verify run checks at most.
    /// `options.repo`: the repository a backup job writes to (default: the primary).
    pub fn repo(&self) -> Option<&str> {
        self.options.get("repo").and_then(|v| v.as_str())
    }

    /// `options.to`: the repository a copy job copies into.
    pub fn copy_to(&self) -> Option<&str> {
        self.options.get("to").and_then(|v| v.as_str())
    }

    pub fn verify_count(&self) -> usize {
        self.options.get("count").and_then(|v| v.as_u64()).unwrap_or(3).clamp(1, 1000) as usize
    }
}

/// `backup.job_runs.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// The scheduler or the server stopped while it ran; it counts as not run (a job that
    /// catches up runs it again).
    Interrupted,
}

impl RunStatus {
    #[cfg(any(test, feature = "pg_test"))]
    pub const ALL: [RunStatus; 5] = [RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Skipped, RunStatus::Interrupted];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// A row of `backup.job_runs`.
#[derive(Clone, Debug, Deserialize)]
pub struct Run {
    pub id: i64,
    pub job: String,
    pub scheduled_for: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub backup_id: Option<String>,
    pub message: Option<String>,
}

fn rows<T: serde::de::DeserializeOwned>(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> CatalogResult<Vec<T>> {
    let json = Spi::get_one_with_args::<JsonB>(sql, args)?.map(|j| j.0).unwrap_or_default();
    // The tables' CHECK constraints make every row readable; a failure here is a bug.
    Ok(serde_json::from_value(json).unwrap_or_else(|e| panic!("backup catalog row does not match its type: {e}")))
}

/// The scheduler worker's `backend_type` in `pg_stat_activity` (the name it registers with).
pub const SCHEDULER_WORKER_TYPE: &str = "pg_backup_ext scheduler";

/// Whether the scheduler worker runs now.
pub fn scheduler_running() -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = $1)", &[SCHEDULER_WORKER_TYPE.into()])?.unwrap_or(false))
}

/// Every job, by name.
pub fn jobs() -> CatalogResult<Vec<Job>> {
    rows("SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.name), '[]') FROM backup.schedules s", &[])
}

pub fn job(name: &str) -> CatalogResult<Option<Job>> {
    Ok(rows::<Job>("SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM backup.schedules s WHERE s.name = $1", &[name.into()])?.pop())
}

/// Create or replace a job; its schedule counts from now.
pub fn upsert_job(name: &str, kind: JobKind, cron: &str, time_zone: &str, enabled: bool, options: &serde_json::Value) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.schedules (name, kind, cron, time_zone, enabled, options, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, now())
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, cron = excluded.cron, time_zone = excluded.time_zone,
             enabled = excluded.enabled, options = excluded.options, updated_at = now()",
        &[name.into(), kind.as_str().into(), cron.into(), time_zone.into(), enabled.into(), JsonB(options.clone()).into()],
    )
}

/// Remove a job (its history stays); false when there was none.
pub fn delete_job(name: &str) -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>("WITH d AS (DELETE FROM backup.schedules WHERE name = $1 RETURNING 1) SELECT EXISTS (SELECT 1 FROM d)", &[name.into()])?
        .unwrap_or(false))
}

/// Enable or disable a job; re-enabling counts its schedule from now. False when there is none.
pub fn set_enabled(name: &str, enabled: bool) -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "WITH u AS (UPDATE backup.schedules SET enabled = $2,
                       updated_at = CASE WHEN enabled = $2 THEN updated_at ELSE now() END
                     WHERE name = $1 RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM u)",
        &[name.into(), enabled.into()],
    )?
    .unwrap_or(false))
}

/// The newest run of each job (interrupted ones included), keyed by job.
pub fn last_runs() -> CatalogResult<Vec<Run>> {
    rows(
        "SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]') FROM (
             SELECT DISTINCT ON (job) * FROM backup.job_runs ORDER BY job, scheduled_for DESC, id DESC) r",
        &[],
    )
}

/// Where a job's schedule resumes: its newest settled run (an interrupted run is not settled:
/// a job that catches up runs it again), or the moment the job was created or last changed,
/// whichever is later.
pub fn baselines() -> CatalogResult<Vec<(String, DateTime<Utc>)>> {
    #[derive(Deserialize)]
    struct Row {
        name: String,
        baseline: DateTime<Utc>,
    }
    let rows: Vec<Row> = rows(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('name', s.name, 'baseline',
                    greatest(s.updated_at, (SELECT max(r.scheduled_for) FROM backup.job_runs r
                                             WHERE r.job = s.name AND r.status <> 'interrupted')))), '[]')
           FROM backup.schedules s",
        &[],
    )?;
    Ok(rows.into_iter().map(|r| (r.name, r.baseline)).collect())
}

/// Rows still `running` (from this process or one before it).
pub fn running_runs() -> CatalogResult<Vec<Run>> {
    rows("SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.id), '[]') FROM backup.job_runs r WHERE r.status = 'running'", &[])
}

/// Record the start of a run; returns its row id.
pub fn start_run(job: &str, kind: JobKind, scheduled_for: DateTime<Utc>, note: Option<&str>) -> CatalogResult<i64> {
    Ok(Spi::get_one_with_args::<i64>(
        "INSERT INTO backup.job_runs (job, kind, scheduled_for, started_at, status, message)
         VALUES ($1, $2, $3::timestamptz, now(), 'running', $4) RETURNING id",
        &[job.into(), kind.as_str().into(), scheduled_for.to_rfc3339().into(), note.into()],
    )?
    .expect("INSERT … RETURNING returns the id"))
}

pub fn set_run_backup(run: i64, backup_id: &str) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.job_runs SET backup_id = $2 WHERE id = $1", &[run.into(), backup_id.into()])
}

/// End a run; `message` is appended to the note it started with.
pub fn finish_run(run: i64, status: RunStatus, message: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.job_runs SET status = $2, finished_at = now(),
                message = CASE WHEN message IS NULL OR message = '' THEN $3 ELSE message || '; ' || $3 END
          WHERE id = $1",
        &[run.into(), status.as_str().into(), message.into()],
    )
}

/// A run that will not happen, with the reason.
pub fn record_skipped(job: &str, kind: JobKind, scheduled_for: DateTime<Utc>, reason: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.job_runs (job, kind, scheduled_for, status, message) VALUES ($1, $2, $3::timestamptz, 'skipped', $4)",
        &[job.into(), kind.as_str().into(), scheduled_for.to_rfc3339().into(), reason.into()],
    )
}

/// Forget runs older than `days` (pg_cron's unbounded history is a known complaint).
pub fn prune_runs(days: i32) -> CatalogResult<()> {
    Spi::run_with_args(
        "DELETE FROM backup.job_runs WHERE scheduled_for < now() - make_interval(days => $1) AND status <> 'running'",
        &[days.into()],
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    /// Every status the scheduler writes is one the CHECK constraint accepts, and no other.
    #[pg_test]
    fn run_statuses_match_the_check_constraint() {
        for status in RunStatus::ALL {
            Spi::run_with_args(
                "INSERT INTO backup.job_runs (job, kind, scheduled_for, status) VALUES ('t', 'full', now(), $1)",
                &[status.as_str().into()],
            )
            .unwrap();
        }
        let check = Spi::get_one::<String>(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'backup.job_runs'::regclass AND contype = 'c'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(check.matches('\'').count() / 2, RunStatus::ALL.len(), "{check}");
    }

    /// CREATE EXTENSION installed the product's schedule, and the catalog reads it back.
    #[pg_test]
    fn the_default_schedule_is_installed() {
        let jobs = jobs().unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["cleanup", "full", "health", "incremental", "restore_test", "verify"]);
        assert!(jobs.iter().all(|j| j.enabled && j.time_zone == "Asia/Ho_Chi_Minh" && j.kind.as_str() == j.name));
        let full = job("full").unwrap().unwrap();
        assert_eq!(full.cron, "0 2 * * *");
        assert!(full.catch_up(), "full backups catch up by default");
        assert!(!job("incremental").unwrap().unwrap().catch_up());
        let local = Spi::get_one::<String>("SELECT next_run_local FROM backup.scheduler_status() WHERE job = 'full'").unwrap().unwrap();
        assert!(local.contains(" 02:00:00+07"), "{local}");
    }

    #[pg_test(error = "job \"x\": bad cron expression '61 * * * *': minute 61 is out of range 0-59; expected 5 fields: minute hour day-of-month month day-of-week (e.g. '0 2 * * *'), @hourly/@daily/@weekly/@monthly/@yearly, or 'N seconds' (N in 1-86400)")]
    fn a_bad_cron_expression_is_refused() {
        Spi::run("SELECT backup.schedule('x', '61 * * * *', kind => 'full')").unwrap();
    }

    /// History older than the setting goes; running rows and recent ones stay.
    #[pg_test]
    fn old_history_is_pruned() {
        Spi::run(
            "INSERT INTO backup.job_runs (job, kind, scheduled_for, status) VALUES
                 ('p', 'full', now() - interval '100 days', 'succeeded'),
                 ('p', 'full', now() - interval '100 days', 'running'),
                 ('p', 'full', now() - interval '10 days', 'skipped')",
        )
        .unwrap();
        prune_runs(90).unwrap();
        let left = Spi::get_one::<String>("SELECT string_agg(status, ',' ORDER BY scheduled_for, status) FROM backup.job_runs WHERE job = 'p'").unwrap();
        assert_eq!(left.as_deref(), Some("running,skipped"));
    }

    #[pg_test]
    fn jobs_are_changed_enabled_and_removed() {
        Spi::run("SELECT backup.schedule('quick', '30 seconds', kind => 'incremental', time_zone => 'UTC', options => '{\"catch_up\": true}')").unwrap();
        let quick = job("quick").unwrap().unwrap();
        assert_eq!((quick.kind, quick.cron.as_str(), quick.time_zone.as_str()), (JobKind::Incremental, "30 seconds", "UTC"));
        assert!(quick.catch_up());
        // Options and zone are kept when not given again.
        Spi::run("SELECT backup.schedule('quick', '45 seconds')").unwrap();
        let quick = job("quick").unwrap().unwrap();
        assert_eq!((quick.cron.as_str(), quick.time_zone.as_str(), quick.catch_up()), ("45 seconds", "UTC", true));
        assert!(set_enabled("quick", false).unwrap());
        assert_eq!(Spi::get_one::<bool>("SELECT next_run IS NULL FROM backup.scheduler_status() WHERE job = 'quick'").unwrap(), Some(true));
        assert!(delete_job("quick").unwrap());
        assert!(!delete_job("quick").unwrap());
    }
}
