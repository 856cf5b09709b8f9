//! The scheduler's SQL functions: manage jobs (`backup.schedule()`, `unschedule()`,
//! `schedule_enable()`), watch them (`backup.scheduler_status()`), and retention
//! (`backup.cleanup()`), plus `backup.default_schedules()` which CREATE EXTENSION installs.

use backup_core::jobs;
use backup_core::schedule::{self, JobKind, Schedule};
use chrono::{DateTime, Utc};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::sql;
use crate::catalog::jobs::{self as runs, Job};
use crate::catalog;
use backup_core::pg::backup::BackupId;
use crate::gucs;
use crate::scheduler;

/// A chrono instant as a `timestamptz` (microseconds since 2000-01-01 UTC).
fn timestamptz(t: DateTime<Utc>) -> TimestampWithTimeZone {
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_MICROS).expect("a time the scheduler computed is in timestamptz's range")
}

/// The product's default jobs (what CREATE EXTENSION installs), with the server's
/// `BACKUP_FULL_SCHEDULE` / `BACKUP_INCREMENTAL_SCHEDULE` applied.
#[pg_extern(volatile)]
fn default_schedules() -> TableIterator<'static, (name!(name, String), name!(kind, String), name!(cron, String), name!(time_zone, String))> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let specs = schedule::default_jobs(&env).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    TableIterator::new(specs.into_iter().map(|s| (s.name, s.kind.as_str().to_string(), s.cron, s.time_zone)))
}

/// Create or change job `name`: `cron` is a 5-field cron expression (or 'N seconds'), in
/// `time_zone` (default: the job's current zone, else Asia/Ho_Chi_Minh); `kind` defaults to the
/// name when the name is a kind. Takes effect at once, no restart; returns the next run.
#[pg_extern(volatile)]
fn schedule(
    name: &str,
    cron: &str,
    kind: default!(Option<&str>, "NULL"),
    time_zone: default!(Option<&str>, "NULL"),
    enabled: default!(bool, true),
    options: default!(Option<JsonB>, "NULL"),
) -> Option<TimestampWithTimeZone> {
    let existing = sql(runs::job(name));
    let kind: JobKind = match kind.or(existing.as_ref().map(|j| j.kind.as_str())).unwrap_or(name).parse() {
        Ok(k) => k,
        Err(e) => error!("job {name:?}: {e}; say which with kind => 'full' (or incremental, verify, cleanup, health, copy)"),
    };
    let zone = time_zone.map(str::to_string).or(existing.as_ref().map(|j| j.time_zone.clone())).unwrap_or_else(|| schedule::DEFAULT_TIME_ZONE.to_string());
    let parsed = Schedule::parse(cron, &zone).unwrap_or_else(|e| error!("job {name:?}: {e}"));
    let options = match options {
        Some(JsonB(o)) if !o.is_object() => error!("job {name:?}: options must be a JSON object, e.g. '{{\"catch_up\": true}}'"),
        Some(JsonB(o)) => o,
        None => existing.map(|j| j.options).unwrap_or_else(|| serde_json::json!({})),
    };
    // Repositories the job names must exist now, not fail at 2 a.m.
    let config = gucs::load_config().ok();
    for field in ["repo", "to"] {
        if let (Some(repo), Some(config)) = (options.get(field).and_then(|v| v.as_str()), &config) {
            if let Err(e) = config.repo_named(repo) {
                error!("job {name:?}: options.{field}: {e}");
            }
        }
    }
    if kind == JobKind::Copy && options.get("to").and_then(|v| v.as_str()).is_none() {
        error!("job {name:?}: a copy job needs the repository to copy into: options => '{{\"to\": \"offsite\"}}'");
    }
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.starts_with(['.', '-']) {
        error!("job name {name:?} must be 1-63 letters, digits, '_', '.' or '-', not starting with '.' or '-'");
    }
    sql(runs::upsert_job(name, kind, cron, &zone, enabled, &options));
    enabled.then(|| parsed.next_after(Utc::now())).flatten().map(timestamptz)
}

/// Remove job `name` (its history stays in backup.job_runs).
#[pg_extern(volatile)]
fn unschedule(name: &str) {
    if !sql(runs::delete_job(name)) {
        error!("no job named {name:?}; see SELECT * FROM backup.schedules");
    }
}

/// Enable or disable job `name`; re-enabled, it counts from now (no catch-up of the pause).
#[pg_extern(volatile)]
fn schedule_enable(name: &str, enabled: default!(bool, true)) {
    if !sql(runs::set_enabled(name, enabled)) {
        error!("no job named {name:?}; see SELECT * FROM backup.schedules");
    }
}


/// Per job: the last run and how it went, the next run (UTC and in the job's zone), and
/// whether it is late (due more than a minute ago and not started: the queue is busy, or the
/// scheduler is off or not running, see scheduler_running).
// pgrx reads the column names from the tuple written out here: a type alias is refused.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn scheduler_status() -> TableIterator<
    'static,
    (
    name!(job, String),
    name!(kind, String),
    name!(enabled, bool),
    name!(cron, String),
    name!(time_zone, String),
    name!(last_scheduled_for, Option<TimestampWithTimeZone>),
    name!(last_status, Option<String>),
    name!(last_finished, Option<TimestampWithTimeZone>),
    name!(last_backup_id, Option<String>),
    name!(last_message, Option<String>),
    name!(next_run, Option<TimestampWithTimeZone>),
    name!(next_run_local, Option<String>),
    name!(late, bool),
    name!(scheduler_running, bool),
),
> {
    let jobs = sql(runs::jobs());
    let last = sql(runs::last_runs());
    let baselines = sql(runs::baselines());
    let running = gucs::SCHEDULER.get() && sql(runs::scheduler_running());
    let now = Utc::now();
    let rows: Vec<_> = jobs
        .into_iter()
        .map(|job: Job| {
            let last = last.iter().find(|r| r.job == job.name);
            let parsed = Schedule::parse(&job.cron, &job.time_zone);
            // The worker's reckoning: the first run after the job's settled point.
            let baseline = job.baseline(&baselines);
            let next = match (&parsed, job.enabled) {
                (Ok(s), true) => s.next_after(baseline),
                _ => None,
            };
            let next_local = match (&parsed, next) {
                (Ok(s), Some(n)) => Some(s.in_zone(n)),
                (Err(e), _) => Some(format!("never: {e}")),
                _ => None,
            };
            (
                job.name.clone(),
                job.kind.as_str().to_string(),
                job.enabled,
                job.cron.clone(),
                job.time_zone.clone(),
                last.map(|r| timestamptz(r.scheduled_for)),
                last.map(|r| r.status.as_str().to_string()),
                last.and_then(|r| r.finished_at).map(timestamptz),
                last.and_then(|r| r.backup_id.clone()),
                last.and_then(|r| r.message.clone()),
                next.map(timestamptz),
                next_local,
                job.enabled && jobs::is_late(next, now),
                running,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Retention: what the policy deletes now and why (kept items too, with their reason), in
/// every repository (each with its own policy) or only in `repo`. With `dry_run => false` it
/// deletes them and drops deleted backups from the catalog.
// pgrx reads the column names from the tuple written out here: a type alias is refused.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn cleanup(
    dry_run: default!(bool, true),
    repo: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (name!(action, String), name!(kind, String), name!(name, String), name!(bytes, i64), name!(reason, String), name!(repo, String)),
> {
    sql(catalog::reap_stale());
    let running = sql(catalog::running_backup()).and_then(|r| r.parse::<BackupId>().ok());
    let config = gucs::load_config().unwrap_or_else(|e| error!("pg_backup_ext: {}", backup_core::error::report(&e)));
    let targets = match repo {
        Some(name) => vec![config.repo_named(name).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))],
        None => config.repositories(),
    };
    let mut rows = Vec::new();
    for rc in &targets {
        let expiry = scheduler::expire(&config, rc, running.as_ref(), dry_run).unwrap_or_else(|e| error!("repository {}: {e}", rc.name));
        for id in &expiry.deleted {
            sql(catalog::remove_from_repo(id, &rc.name));
        }
        if let Some(e) = &expiry.error {
            // A warning, not an error: an error would roll back the catalog's removals above.
            warning!("cleanup of repository {} stopped after deleting {} backup(s): {e}; run it again once that is fixed", rc.name, expiry.deleted.len());
        }
        match &expiry.report {
            Some(r) => notice!(
                "repository {}: deleted {} backup(s), {} WAL file(s), {} orphan(s); freed {} bytes",
                rc.name,
                r.backups_deleted.len(),
                r.wal_files_deleted,
                r.orphans_deleted,
                r.bytes_freed
            ),
            None => notice!(
                "repository {}: dry run: would free {} bytes; run SELECT * FROM backup.cleanup(dry_run => false) to delete",
                rc.name,
                expiry.plan.bytes_to_free()
            ),
        }
        rows.extend(expiry.plan.items.into_iter().map(|i| {
            (i.action.as_str().to_string(), i.kind.as_str().to_string(), i.name, i.bytes as i64, i.reason, rc.name.clone())
        }));
    }
    TableIterator::new(rows)
}
