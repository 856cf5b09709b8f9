//! The SQL functions of schema `backup` (those written in Rust; `backup.list()`,
//! `backup.progress` and thin wrappers are SQL, see `sql/`).
//!
//! Errors are raised as PostgreSQL errors naming the thing and what to do.

use std::time::{Duration, Instant};

use backup_core::backup::catalog::RecoveryTarget;
use backup_core::backup::{BackupId, Manifest};
use backup_core::repo::Repository;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use crate::gucs;
use crate::worker;

fn open_repo() -> Repository {
    let config = gucs::load_config().unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    Repository::open(&config).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

fn parse_id(id: &str) -> BackupId {
    id.parse().unwrap_or_else(|e| error!("{e}"))
}

/// Start a full backup; returns its id at once (a background worker does the work), or with
/// `wait => true` once it is done, raising an error if it failed.
#[pg_extern(volatile)]
fn start_full(wait: default!(bool, false)) -> String {
    Spi::run("SELECT backup.reap_stale()").unwrap_or_else(|e| error!("{e}"));
    if let Ok(Some(running)) = Spi::get_one::<String>("SELECT id FROM backup.backups WHERE status IN ('queued', 'running') ORDER BY id DESC LIMIT 1") {
        error!("backup {running} is already running; follow it in backup.progress, or wait for it to finish");
    }
    // Ids have one-second resolution: never reuse one.
    let mut id = BackupId::at(chrono::Utc::now());
    while Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM backup.backups WHERE id = $1)", &[id.to_string().into()])
        .ok()
        .flatten()
        .unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(200));
        pg_sys::check_for_interrupts!();
        id = BackupId::at(chrono::Utc::now());
    }
    let handle = worker::launch(&id).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    if handle.wait_for_startup().is_err() {
        error!("pg_backup_ext: the backup worker for {id} did not start; see the server log");
    }
    if wait {
        let _ = handle.wait_for_shutdown();
        match row_status(&id) {
            Some((status, _)) if status == "completed" => {}
            Some((_, err)) => error!("backup {id} failed: {}", err.unwrap_or_default()),
            None => error!("backup {id} failed before recording itself; see the server log"),
        }
        return id.to_string();
    }
    // Return once the worker has recorded the backup, so backup.list() shows it right away.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some((status, err)) = row_status(&id) {
            if status == "failed" {
                error!("backup {id} failed: {}", err.unwrap_or_default());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        pg_sys::check_for_interrupts!();
    }
    id.to_string()
}

fn row_status(id: &BackupId) -> Option<(String, Option<String>)> {
    Spi::get_two_with_args::<String, String>("SELECT status, error FROM backup.backups WHERE id = $1", &[id.to_string().into()])
        .ok()
        .and_then(|(s, e)| s.map(|s| (s, e)))
}

/// Everything about one backup, as JSON: the catalog row, and the manifest from the repository.
#[pg_extern(volatile)]
fn get(id: &str) -> JsonB {
    let bid = parse_id(id);
    let row = Spi::get_one_with_args::<JsonB>("SELECT to_jsonb(b) FROM backup.backups b WHERE id = $1", &[id.into()]).ok().flatten();
    let status = row.as_ref().and_then(|r| r.0.get("status").and_then(|s| s.as_str()).map(str::to_string));
    let manifest = match status.as_deref() {
        None | Some("completed") => match open_repo().read_manifest(&bid) {
            Ok(m) => Some(m),
            Err(backup_core::repo::RepoError::UnknownBackup { .. }) if row.is_some() => None,
            Err(e) => error!("{e}"),
        },
        _ => None,
    };
    let mut doc = row.map(|r| r.0).unwrap_or_else(|| json!({ "id": id, "status": "completed", "note": "in the repository but not in the catalog; run SELECT backup.resync()" }));
    if let Some(m) = manifest {
        doc["manifest"] = manifest_json(&m);
    }
    JsonB(doc)
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    json!({
        "type": m.kind, "parent": m.parent, "system_identifier": m.system_identifier, "pg_version": m.pg_version,
        "timeline": m.timeline, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn,
        "start_wal": m.start_wal, "stop_wal": m.stop_wal, "start_time": m.start_time, "stop_time": m.stop_time,
        "stop_next_xid": m.stop_next_xid, "tablespaces": m.tablespaces, "files": m.stats.files, "objects": m.stats.objects,
        "bytes": m.stats.bytes, "stored_bytes": m.stats.stored_bytes, "duration_ms": m.stats.duration_ms,
        "page_checksum_failures": m.page_checksum_failures, "backup_label": m.backup_label,
    })
}

/// Re-read every object of a backup and the WAL it needs; `ok` is false and `problems` name
/// each bad object when anything fails.
#[pg_extern(volatile)]
fn verify(id: &str) -> JsonB {
    let bid = parse_id(id);
    let report = open_repo().verify_backup(&bid).unwrap_or_else(|e| error!("{e}"));
    for p in &report.problems {
        warning!("{id}: {p}");
    }
    JsonB(json!({
        "backup": report.backup, "ok": report.problems.is_empty(), "files_checked": report.files_checked,
        "objects_checked": report.objects_checked, "wal_checked": report.wal_checked, "problems": report.problems,
    }))
}

/// Used by `backup.find(timestamptz)`: the backup to restore from to reach `at` (RFC 3339, UTC).
#[pg_extern(volatile)]
fn find_at(at: &str) -> String {
    let when = chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| error!("bad timestamp {at:?}: {e}")).with_timezone(&chrono::Utc);
    let target = RecoveryTarget::Time { text: at.to_string(), at: when };
    open_repo().find_backup(&target).unwrap_or_else(|e| error!("{e}")).id.to_string()
}

/// Remove a backup from the repository and the catalog.
#[pg_extern(volatile)]
fn delete(id: &str) {
    let bid = parse_id(id);
    let status = row_status(&bid).map(|(s, _)| s);
    if matches!(status.as_deref(), Some("running" | "queued")) {
        error!("backup {id} is running; it cannot be deleted until it ends");
    }
    let in_catalog = status.is_some();
    match open_repo().delete_backup(&bid) {
        Ok(_) => {}
        Err(backup_core::repo::RepoError::UnknownBackup { .. }) if in_catalog => {}
        Err(e) => error!("{e}"),
    }
    Spi::run_with_args("DELETE FROM backup.backups WHERE id = $1", &[id.into()]).unwrap_or_else(|e| error!("{e}"));
    Spi::run_with_args("INSERT INTO backup.events (backup_id, level, message) VALUES ($1, 'info', 'deleted')", &[id.into()])
        .unwrap_or_else(|e| error!("{e}"));
}

/// Rebuild the catalog of completed backups from the repository (the truth). Returns how
/// many backups the repository holds.
#[pg_extern(volatile)]
fn resync() -> i32 {
    let backups = open_repo().list_backups().unwrap_or_else(|e| error!("{e}"));
    let ids: Vec<String> = backups.iter().map(|m| m.id.to_string()).collect();
    for m in &backups {
        crate::catalog::upsert_completed(m).unwrap_or_else(|e| error!("{e}"));
    }
    // A "completed" row whose manifest is gone is not restorable: drop it.
    Spi::run_with_args("DELETE FROM backup.backups WHERE status = 'completed' AND NOT (id = ANY($1))", &[ids.into()])
        .unwrap_or_else(|e| error!("{e}"));
    backups.len() as i32
}

/// Used by `backup.create_restore_point(name)`.
#[pg_extern(volatile)]
fn record_restore_point(name: &str, lsn: &str) -> String {
    let parsed: backup_core::wal::Lsn = lsn.parse().unwrap_or_else(|e: backup_core::wal::WalError| error!("{e}"));
    open_repo().record_restore_point(name, parsed).unwrap_or_else(|e| error!("{e}"));
    lsn.to_string()
}
