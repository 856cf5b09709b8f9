//! All SQL on the extension's tables, in one place, with the values their CHECK constraints
//! allow as enums: here `backup.backups` and `backup.events`, in [`jobs`] the scheduler's
//! `backup.schedules` and `backup.job_runs`. The table definitions are in `sql/bootstrap.sql`;
//! the repository stays the truth and `resync` rebuilds the backups from it.

pub mod alerts;
pub mod health;
pub mod stats;
pub mod jobs;
pub mod monitor;
pub mod restores;

use std::fmt;

use backup_core::pg::backup::{BackupId, BackupKind, Manifest};
use pgrx::prelude::*;
use pgrx::JsonB;

/// A SQL error on the catalog (pgrx's SPI error).
pub type CatalogResult<T> = Result<T, pgrx::spi::Error>;

/// `backup.backups.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStatus {
    /// A worker is taking it (or died taking it: [`reap_stale`] settles that).
    Running,
    /// Its manifest and WAL are in the repository: restorable.
    Completed,
    Failed,
}

impl BackupStatus {
    pub const ALL: [BackupStatus; 3] = [BackupStatus::Running, BackupStatus::Completed, BackupStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "running",
            BackupStatus::Completed => "completed",
            BackupStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> BackupStatus {
        BackupStatus::ALL.into_iter().find(|v| v.as_str() == s).unwrap_or_else(|| panic!("backup.backups.status {s:?} violates its CHECK constraint"))
    }

    /// The status of a row as [`row_json`] returns it.
    pub fn from_row(row: &serde_json::Value) -> BackupStatus {
        BackupStatus::parse(row["status"].as_str().unwrap_or_default())
    }
}

impl fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `backup.events.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLevel {
    Info,
    Warning,
    Error,
}

impl EventLevel {
    #[cfg(any(test, feature = "pg_test"))]
    pub const ALL: [EventLevel; 3] = [EventLevel::Info, EventLevel::Warning, EventLevel::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warning => "warning",
            EventLevel::Error => "error",
        }
    }
}

/// Mark the rows of workers that died (kill -9, crash restart, server stop) failed.
pub fn reap_stale() -> CatalogResult<()> {
    Spi::run("SELECT backup.reap_stale()")
}

/// The backup a worker is taking now, if any.
pub fn running_backup() -> CatalogResult<Option<String>> {
    // Scalar subqueries here and below: one row always, NULL when there is no backup (an empty
    // result is an error to SPI's get_one).
    Spi::get_one_with_args("SELECT (SELECT id FROM backup.backups WHERE status = $1 ORDER BY id DESC LIMIT 1)", &[BackupStatus::Running.as_str().into()])
}

pub fn exists(id: &BackupId) -> CatalogResult<bool> {
    Ok(Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM backup.backups WHERE id = $1)", &[id.as_str().into()])?.unwrap_or(false))
}

/// A backup's status and error message, `None` when the catalog has no row for it.
pub fn status(id: &BackupId) -> CatalogResult<Option<(BackupStatus, Option<String>)>> {
    let (status, error) = Spi::get_two_with_args::<String, String>(
        "SELECT b.status, b.error FROM (SELECT 1) AS one LEFT JOIN backup.backups b ON b.id = $1",
        &[id.as_str().into()],
    )?;
    Ok(status.map(|s| (BackupStatus::parse(&s), error)))
}

/// The catalog row as JSON.
pub fn row_json(id: &BackupId) -> CatalogResult<Option<serde_json::Value>> {
    Ok(Spi::get_one_with_args::<JsonB>("SELECT (SELECT to_jsonb(b) FROM backup.backups b WHERE id = $1)", &[id.as_str().into()])?.map(|j| j.0))
}

/// Why a worker may not take its backup.
#[derive(Debug, thiserror::Error)]
pub enum ClaimRefused {
    #[error("another backup is already running")]
    AnotherRunning,
    #[error("archive_mode is off: a backup without archived WAL cannot be restored; set archive_mode = on and archive_command = 'wal-archiver push %p'")]
    ArchivingOff,
}

/// Held (session-level) by the worker taking a backup: one backup at a time per cluster.
const BACKUP_LOCK_KEY: i64 = 0x7062_6b75_7001;

/// Take the cluster-wide backup lock and create the row for backup `id` taken by this
/// process: `running`, or `failed` with the reason when the backup may not run.
pub fn claim(id: &BackupId, kind: BackupKind, repo: &str) -> CatalogResult<Result<(), ClaimRefused>> {
    let locked = Spi::get_one_with_args::<bool>("SELECT pg_try_advisory_lock($1)", &[BACKUP_LOCK_KEY.into()])?.unwrap_or(false);
    let archive_mode = Spi::get_one::<String>("SELECT current_setting('archive_mode')")?.unwrap_or_default();
    let refused = if !locked {
        Some(ClaimRefused::AnotherRunning)
    } else if archive_mode == "off" {
        Some(ClaimRefused::ArchivingOff)
    } else {
        None
    };
    let status = if refused.is_some() { BackupStatus::Failed } else { BackupStatus::Running };
    let error = refused.as_ref().map(ToString::to_string);
    Spi::run_with_args(
        "INSERT INTO backup.backups (id, type, status, worker_pid, start_time, phase, error, repos)
         VALUES ($1, $2, $3, pg_backend_pid(), now(), 'starting', $4, ARRAY[$5])",
        &[id.as_str().into(), kind.to_string().into(), status.as_str().into(), error.clone().into(), repo.into()],
    )?;
    match &error {
        Some(e) => event(id, EventLevel::Error, e)?,
        None => event(id, EventLevel::Info, "started")?,
    }
    Ok(refused.map_or(Ok(()), Err))
}

/// Live progress of a running backup, for `backup.progress`.
pub fn record_progress(id: &BackupId, phase: &str, bytes_done: i64, bytes_total: i64) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.backups SET phase = $2, bytes_done = $3, bytes_total = $4, progress_at = now() WHERE id = $1",
        &[id.as_str().into(), phase.into(), bytes_done.into(), bytes_total.into()],
    )
}

pub fn mark_failed(id: &BackupId, error: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.backups SET status = $2, phase = NULL, error = $3, stop_time = now() WHERE id = $1",
        &[id.as_str().into(), BackupStatus::Failed.as_str().into(), error.into()],
    )?;
    event(id, EventLevel::Error, error)
}

/// Append to the job log.
pub fn event(id: &BackupId, level: EventLevel, message: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.events (backup_id, level, message) VALUES ($1, $2, $3)",
        &[id.as_str().into(), level.as_str().into(), message.into()],
    )
}

/// A health problem, for people reading `backup.events` (not tied to a backup).
pub fn health_event(message: &str) -> CatalogResult<()> {
    Spi::run_with_args("INSERT INTO backup.events (level, message) VALUES ('warning', $1)", &[format!("health: {message}").into()])
}

/// Record `m` as a completed backup held by repository `repo`, inserting or updating its row.
/// Used when a worker finishes, when a copy completes, and when `backup.resync()` rebuilds
/// the catalog from the repositories.
pub fn upsert_completed(m: &Manifest, repo: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "INSERT INTO backup.backups (id, type, status, start_lsn, stop_lsn, timeline, start_time, stop_time, size_bytes,
                                     stored_bytes, file_count, duration, page_checksum_failures, parent, chain_depth,
                                     changed_blocks, repos)
         VALUES ($1, $2, $13, $3::pg_lsn, $4::pg_lsn, $5, $6::timestamptz, $7::timestamptz, $8, $9, $10,
                 ($11 || ' milliseconds')::interval, $12, $14, $15, $16, ARRAY[$17])
         ON CONFLICT (id) DO UPDATE SET status = excluded.status,
             repos = CASE WHEN $17 = ANY(backup.backups.repos) THEN backup.backups.repos ELSE backup.backups.repos || $17 END, error = NULL, phase = NULL, start_lsn = excluded.start_lsn,
             type = excluded.type, parent = excluded.parent, chain_depth = excluded.chain_depth,
             changed_blocks = excluded.changed_blocks,
             stop_lsn = excluded.stop_lsn, timeline = excluded.timeline, start_time = excluded.start_time,
             stop_time = excluded.stop_time, size_bytes = excluded.size_bytes, stored_bytes = excluded.stored_bytes,
             file_count = excluded.file_count, duration = excluded.duration,
             page_checksum_failures = excluded.page_checksum_failures,
             bytes_done = excluded.size_bytes, bytes_total = excluded.size_bytes, progress_at = now()",
        &[
            m.id.as_str().into(),
            m.kind.to_string().into(),
            m.start_lsn.to_string().into(),
            m.stop_lsn.to_string().into(),
            (m.timeline.0 as i32).into(),
            m.start_time.to_rfc3339().into(),
            m.stop_time.to_rfc3339().into(),
            (m.stats.bytes as i64).into(),
            (m.stats.stored_bytes as i64).into(),
            (m.stats.files as i64).into(),
            m.stats.duration_ms.to_string().into(),
            (m.page_checksum_failures.len() as i32).into(),
            BackupStatus::Completed.as_str().into(),
            m.parent.as_ref().map(|p| p.to_string()).into(),
            (m.chain_depth as i32).into(),
            m.changed_blocks().map(|n| n as i64).into(),
            repo.into(),
        ],
    )
}

/// Record the outcome of verifying backup `id` (a row the catalog does not have is left alone).
pub fn record_verification(id: &BackupId, ok: bool) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.backups SET verified_at = now(), verify_ok = $2 WHERE id = $1", &[id.as_str().into(), ok.into()])
}

/// Completed backups never verified, newest first.
pub fn unverified(limit: i64) -> CatalogResult<Vec<String>> {
    Ok(Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(id ORDER BY id DESC), '{}') FROM (
             SELECT id FROM backup.backups WHERE status = 'completed' AND verified_at IS NULL ORDER BY id DESC LIMIT $1) u",
        &[limit.into()],
    )?
    .unwrap_or_default())
}

/// Whether a completed backup of the server's current timeline exists (an incremental can
/// build on it).
pub fn has_backup_on_current_timeline() -> CatalogResult<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM backup.backups WHERE status = 'completed'
                           AND timeline = (SELECT timeline_id FROM pg_control_checkpoint()))",
    )?
    .unwrap_or(false))
}

/// Forget backup `id` (deleted from the repository) and log it.
pub fn remove(id: &BackupId) -> CatalogResult<()> {
    Spi::run_with_args("DELETE FROM backup.backups WHERE id = $1", &[id.as_str().into()])?;
    event(id, EventLevel::Info, "deleted")
}

/// Backup `id` is gone from repository `repo`; the row goes when no repository holds it.
pub fn remove_from_repo(id: &BackupId, repo: &str) -> CatalogResult<()> {
    Spi::run_with_args("UPDATE backup.backups SET repos = array_remove(repos, $2) WHERE id = $1", &[id.as_str().into(), repo.into()])?;
    event(id, EventLevel::Info, &format!("deleted from repository {repo}"))?;
    drop_unheld()
}

/// Repository `repo` holds exactly `ids` among completed backups (what `resync` found there).
pub fn sync_repo(repo: &str, ids: &[String]) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.backups SET repos = array_remove(repos, $1) WHERE status = $2 AND $1 = ANY(repos) AND NOT (id = ANY($3))",
        &[repo.into(), BackupStatus::Completed.as_str().into(), ids.to_vec().into()],
    )
}

/// Drop `completed` rows no repository holds any more: without a manifest anywhere they are
/// not restorable.
pub fn drop_unheld() -> CatalogResult<()> {
    Spi::run_with_args("DELETE FROM backup.backups WHERE status = $1 AND repos = '{}'", &[BackupStatus::Completed.as_str().into()])
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn id(s: &str) -> BackupId {
        s.parse().unwrap()
    }

    /// Every status and level the code writes is one the table's CHECK constraints accept,
    /// and statuses read back as what was written.
    #[pg_test]
    fn enums_match_the_tables_check_constraints() {
        for (n, status) in BackupStatus::ALL.into_iter().enumerate() {
            let id = id(&format!("backup_20240101_00000{n}"));
            Spi::run_with_args("INSERT INTO backup.backups (id, status) VALUES ($1, $2)", &[id.as_str().into(), status.as_str().into()]).unwrap();
            assert_eq!(super::status(&id).unwrap().map(|s| s.0), Some(status));
        }
        for level in EventLevel::ALL {
            event(&id("backup_20240101_000000"), level, "test").unwrap();
        }
        // ...and no value the code never writes (a 'queued' that nothing produced).
        let check = Spi::get_one::<String>(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'backup.backups'::regclass AND conname = 'backups_status_check'",
        )
        .unwrap()
        .expect("backups.status has a CHECK constraint");
        assert_eq!(check.matches('\'').count() / 2, BackupStatus::ALL.len(), "{check}");
    }

    /// A row whose worker is gone is reaped to failed, with a reason; a completed one is not.
    #[pg_test]
    fn dead_workers_rows_are_reaped() {
        let dead = id("backup_20240102_000000");
        Spi::run_with_args("INSERT INTO backup.backups (id, status, worker_pid) VALUES ($1, 'running', 2147483646)", &[dead.as_str().into()]).unwrap();
        Spi::run("INSERT INTO backup.backups (id, status) VALUES ('backup_20240102_000001', 'completed')").unwrap();
        reap_stale().unwrap();
        let (status, error) = super::status(&dead).unwrap().unwrap();
        assert_eq!(status, BackupStatus::Failed);
        assert!(error.unwrap().contains("ended without finishing"));
        assert_eq!(super::status(&id("backup_20240102_000001")).unwrap().unwrap().0, BackupStatus::Completed);
        assert_eq!(running_backup().unwrap(), None);
        let absent = id("backup_20240102_000009");
        assert_eq!(super::status(&absent).unwrap(), None, "an unknown backup has no status");
        assert_eq!(row_json(&absent).unwrap(), None);
        assert!(!exists(&absent).unwrap());
    }
}
