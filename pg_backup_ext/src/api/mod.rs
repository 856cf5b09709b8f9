//! The SQL functions of schema `backup` (those written in Rust; `backup.list()`,
//! `backup.progress` and thin wrappers are SQL, see `sql/`).
//!
//! Errors are raised as PostgreSQL errors naming the thing and what to do.

use backup_core::error::report;
use backup_core::pg::backup::inventory::RecoveryTarget;
use backup_core::pg::backup::incremental::ChainError;
use backup_core::pg::backup::{BackupId, BackupKind, Manifest};
use backup_core::pg::{PgRepo, PgRepoError};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

mod alerts;
mod health;
mod restores;
mod stats;
mod repositories;
mod schedules;

use crate::backup_worker;
use crate::catalog::{self, BackupStatus};
use crate::gucs;

fn open_repo() -> PgRepo {
    gucs::open_repo().unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

fn parse_id(id: &str) -> BackupId {
    id.parse().unwrap_or_else(|e| error!("{e}"))
}

/// A catalog statement failed: raise it.
pub(crate) fn sql<T>(r: catalog::CatalogResult<T>) -> T {
    r.unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

/// Start a full backup; returns its id at once (a background worker does the work), or with
/// `wait => true` once it is done, raising an error if it failed. `repo` names the repository
/// it goes to (default: the primary).
#[pg_extern(volatile)]
fn start_full(wait: default!(bool, false), repo: default!(Option<&str>, "NULL")) -> String {
    start(BackupKind::Full, wait, repo)
}

/// Start an incremental backup on top of the newest completed backup of the server's timeline:
/// only the pages changed since that one are stored. Same worker, progress and waiting as
/// `start_full`.
#[pg_extern(volatile)]
fn start_incremental(wait: default!(bool, false), repo: default!(Option<&str>, "NULL")) -> String {
    // Said here, at once, rather than by a worker a moment later.
    let completed = repositories::open_named(repo).backups().completed_ids().unwrap_or_else(|e| error!("{}", report(&e)));
    if completed.is_empty() {
        error!("{}", report(&ChainError::NoBackup));
    }
    start(BackupKind::Incremental, wait, repo)
}

fn start(kind: BackupKind, wait: bool, repo: Option<&str>) -> String {
    let (id, handle) = backup_worker::start(kind, repo).unwrap_or_else(|e| error!("{e}"));
    if wait {
        // Whether the worker ended or the wait was cut short, the row says how it went.
        let ended = handle.wait_for_shutdown();
        match sql(catalog::status(&id)) {
            Some((BackupStatus::Completed, _)) => {}
            Some((BackupStatus::Failed, err)) => error!("backup {id} failed: {}", err.unwrap_or_default()),
            Some((BackupStatus::Running, _)) => error!("backup {id} is still running but its worker could not be waited for ({ended:?}); follow it in backup.progress"),
            None => error!("backup {id} failed before recording itself; see the server log"),
        }
    }
    id.to_string()
}

/// Everything about one backup, as JSON: the catalog row, and the manifest from the repository.
#[pg_extern(volatile)]
fn get(id: &str) -> JsonB {
    let bid = parse_id(id);
    let row = sql(catalog::row_json(&bid));
    let status = row.as_ref().map(BackupStatus::from_row);
    let manifest = match status {
        None | Some(BackupStatus::Completed) => match repositories::holder_of(&bid).1 {
            Ok(m) => Some(m),
            Err(PgRepoError::UnknownBackup { .. }) if row.is_some() => None,
            Err(e) => error!("{}", report(&e)),
        },
        _ => None,
    };
    let mut doc = row.unwrap_or_else(|| json!({ "id": id, "status": "completed", "note": "in the repository but not in the catalog; run SELECT backup.resync()" }));
    if let Some(m) = manifest {
        doc["manifest"] = manifest_json(&m);
    }
    JsonB(doc)
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    json!({
        "type": m.kind, "parent": m.parent, "chain_depth": m.chain_depth,
        "changed_blocks": m.changed_blocks(), "bytes_read": m.stats.bytes_read,
        "incremental": m.incremental, "system_identifier": m.system_identifier, "pg_version": m.pg_version,
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
fn verify(id: &str, repo: default!(Option<&str>, "NULL")) -> JsonB {
    let bid = parse_id(id);
    let holder = match repo {
        Some(_) => repositories::open_named(repo),
        None => repositories::holder_of(&bid).0,
    };
    let report = holder.backups().verify(&bid).unwrap_or_else(|e| error!("{}", report(&e)));
    for p in &report.problems {
        warning!("{id}: {p}");
    }
    sql(catalog::record_verification(&bid, report.problems.is_empty()));
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
    open_repo().backups().find(&target).unwrap_or_else(|e| error!("{}", report(&e))).id.to_string()
}

/// Remove a backup from the repositories and the catalog: from `repo` only when named, else
/// from every repository that holds it. A backup incremental backups build on is refused,
/// naming them, unless `cascade => true` (then they go too).
#[pg_extern(volatile)]
fn delete(id: &str, cascade: default!(bool, false), repo: default!(Option<&str>, "NULL")) {
    let bid = parse_id(id);
    let status = sql(catalog::status(&bid)).map(|(s, _)| s);
    if status == Some(BackupStatus::Running) {
        error!("backup {id} is running; it cannot be deleted until it ends");
    }
    let config = gucs::load_config().unwrap_or_else(|e| error!("pg_backup_ext: {}", report(&e)));
    let targets = match repo {
        Some(name) => vec![config.repo_named(name).unwrap_or_else(|e| error!("{e}"))],
        None => config.repositories(),
    };
    let mut found = false;
    for rc in &targets {
        let r = PgRepo::open_repo(&config, rc).unwrap_or_else(|e| error!("repository {}: {}", rc.name, report(&e)));
        match r.backups().delete(&bid, cascade) {
            Ok(deleted) => {
                found = true;
                for d in &deleted {
                    sql(catalog::remove_from_repo(d, &rc.name));
                }
            }
            Err(PgRepoError::UnknownBackup { .. }) => {}
            Err(e) => error!("repository {}: {}", rc.name, report(&e)),
        }
    }
    match (found, repo, status) {
        (true, _, _) | (false, None, Some(_)) => {}
        // A failed backup that stored nothing is only in the catalog: forgetting the row is all.
        (false, _, _) => error!(
            "{}",
            report(&PgRepoError::UnknownBackup { id: id.to_string(), location: targets.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ") })
        ),
    }
    if repo.is_none() {
        sql(catalog::remove(&bid));
    }
}

/// Rebuild the catalog of completed backups from the repositories (the truth): which backups
/// exist, and which repositories hold each. A repository that cannot be read is left as the
/// catalog has it, with a warning. Returns how many distinct backups the repositories hold.
#[pg_extern(volatile)]
fn resync() -> i32 {
    let config = gucs::load_config().unwrap_or_else(|e| error!("pg_backup_ext: {}", report(&e)));
    let mut all = std::collections::BTreeSet::new();
    for rc in config.repositories() {
        let listed = PgRepo::open_repo(&config, &rc).and_then(|r| r.backups().list());
        let backups = match listed {
            Ok(b) => b,
            Err(e) => {
                warning!("pg_backup_ext: repository {} could not be read ({}); its backups are left as the catalog has them", rc.name, report(&e));
                continue;
            }
        };
        for m in &backups {
            sql(catalog::upsert_completed(m, &rc.name));
        }
        let ids: Vec<String> = backups.iter().map(|m| m.id.to_string()).collect();
        sql(catalog::sync_repo(&rc.name, &ids));
        all.extend(ids);
    }
    if config.repositories().is_empty() {
        error!("pg_backup_ext: {}", report(&backup_core::config::ConfigError::NoRepository));
    }
    sql(catalog::drop_unheld());
    all.len() as i32
}

/// Used by `backup.create_restore_point(name)`.
#[pg_extern(volatile)]
fn record_restore_point(name: &str, lsn: &str) -> String {
    let parsed: backup_core::pg::wal::Lsn = lsn.parse().unwrap_or_else(|e: backup_core::pg::wal::WalError| error!("{e}"));
    repositories::record_restore_point(name, parsed);
    lsn.to_string()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Bad input is refused with an error naming it, before any repository is touched.
    #[pg_test(error = "'backup_2024' is not a backup id (expected the form backup_20240115_143000)")]
    fn a_malformed_backup_id_is_refused() {
        Spi::run("SELECT backup.get('backup_2024')").unwrap();
    }

    #[pg_test]
    fn version_names_the_repository_format() {
        let v = Spi::get_one::<String>("SELECT backup.version()").unwrap().unwrap();
        assert!(v.starts_with("pg_backup_ext ") && v.contains("repository format 1"), "{v}");
    }

    /// A configuration file that cannot be read is named in the error (the test cluster points
    /// backup.config_file at a file that does not exist).
    #[pg_test(error = "pg_backup_ext: cannot read configuration file /nonexistent/pg_backup_ext.conf: No such file or directory (os error 2)")]
    fn an_unreadable_configuration_is_named() {
        Spi::run("SELECT backup.resync()").unwrap();
    }
}
