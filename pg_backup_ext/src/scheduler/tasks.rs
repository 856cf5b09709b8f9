//! The jobs the scheduler runs in its own process: verify, cleanup (retention), health, copy. Each
//! returns the run's status and the message for its `backup.job_runs` row; problems are also
//! written to `backup.events`, where people look first.

use backup_core::config::{Config, RepoConfig};
use backup_core::error::report;
use backup_core::health::Status;
use backup_core::pg::backup::BackupId;
use backup_core::pg::retention::{self, RetentionPolicy};
use backup_core::pg::PgRepo;
use chrono::Utc;
use pgrx::prelude::*;

use crate::catalog::jobs::RunStatus;
use crate::catalog::{self, EventLevel};
use crate::gucs;
use crate::postgres::bgworker::{transaction, SqlError};

fn failed(message: String) -> (RunStatus, String) {
    (RunStatus::Failed, message)
}

/// Verify the newest `count` completed backups never verified yet.
pub fn verify(count: usize) -> (RunStatus, String) {
    let ids = match transaction(|| Ok(catalog::unverified(count as i64)?)) {
        Ok(ids) => ids,
        Err(e) => return failed(e.to_string()),
    };
    if ids.is_empty() {
        return (RunStatus::Succeeded, "nothing to verify: every completed backup has been verified".to_string());
    }
    let repo = match gucs::open_repo() {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let mut bad = Vec::new();
    for id in &ids {
        let Ok(bid) = id.parse::<BackupId>() else { continue };
        let problems = match repo.backups().verify(&bid) {
            Ok(r) => r.problems,
            Err(e) => vec![report(&e)],
        };
        let recorded = transaction(|| {
            catalog::record_verification(&bid, problems.is_empty())?;
            match problems.first() {
                None => catalog::event(&bid, EventLevel::Info, "verified by the scheduler: every object and WAL file sound")?,
                Some(_) => catalog::event(&bid, EventLevel::Error, &format!("verification failed: {}", problems.join("; ")))?,
            }
            Ok::<_, SqlError>(())
        });
        if let Err(e) = recorded {
            log!("pg_backup_ext scheduler: could not record the verification of {id}: {e}");
        }
        if !problems.is_empty() {
            bad.push(format!("{id}: {}", problems.join("; ")));
        }
    }
    if bad.is_empty() {
        (RunStatus::Succeeded, format!("verified {} backup(s): {}", ids.len(), ids.join(", ")))
    } else {
        failed(format!("verification failed for {} of {} backup(s): {}", bad.len(), ids.len(), bad.join(" | ")))
    }
}

/// Apply the retention policy now to every repository, each with its own policy (the same
/// as `backup.cleanup(dry_run => false)`).
pub fn cleanup() -> (RunStatus, String) {
    let running = match transaction(|| {
        catalog::reap_stale()?;
        Ok(catalog::running_backup()?)
    }) {
        Ok(r) => r.and_then(|r| r.parse::<BackupId>().ok()),
        Err(e) => return failed(e.to_string()),
    };
    let config = match gucs::load_config() {
        Ok(c) => c,
        Err(e) => return failed(report(&e)),
    };
    let (mut summaries, mut problems) = (Vec::new(), Vec::new());
    for rc in config.repositories() {
        let expiry = match expire(&config, &rc, running.as_ref(), false) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: {e}", rc.name));
                continue;
            }
        };
        if let Err(e) = transaction(|| {
            for id in &expiry.deleted {
                catalog::remove_from_repo(id, &rc.name)?;
            }
            Ok(())
        }) {
            problems.push(format!("{}: deleted {:?} but could not update backup.backups: {e}; run SELECT backup.resync()", rc.name, expiry.deleted));
        }
        let deleted: Vec<String> = expiry.deleted.iter().map(ToString::to_string).collect();
        let deleted = if deleted.is_empty() { String::new() } else { format!(" ({})", deleted.join(", ")) };
        match (&expiry.report, &expiry.error) {
            (Some(r), None) => {
                let kept = expiry.plan.items.iter().filter(|i| i.kind == retention::ItemKind::Backup && i.action == retention::Action::Keep).count();
                summaries.push(format!(
                    "{}: deleted {} backup(s){deleted}, {} WAL file(s), {} orphan(s); freed {} bytes; {kept} backup(s) kept",
                    rc.name,
                    r.backups_deleted.len(),
                    r.wal_files_deleted,
                    r.orphans_deleted,
                    r.bytes_freed
                ));
            }
            (_, Some(e)) => problems.push(format!("{}: cleanup stopped after deleting {} backup(s){deleted}: {e}", rc.name, expiry.deleted.len())),
            (None, None) => unreachable!("a real run has a report or an error"),
        }
    }
    // One repository: the message reads as it always did.
    let strip = |s: String| if config.repositories().len() == 1 { s.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or(s) } else { s };
    let summaries: Vec<String> = summaries.into_iter().map(strip).collect();
    if problems.is_empty() {
        (RunStatus::Succeeded, summaries.join("; "))
    } else {
        failed(problems.into_iter().chain(summaries).collect::<Vec<_>>().join("; "))
    }
}

/// What a retention run did.
pub struct Expiry {
    pub plan: retention::Plan,
    /// `None` in a dry run, or when deleting stopped on an error.
    pub report: Option<retention::ExpireReport>,
    pub error: Option<String>,
    /// Backups gone from the repository (even when an error stopped the run later): the caller
    /// drops them from the catalog.
    pub deleted: Vec<BackupId>,
}

/// Plan retention of repository `rc` at the current time and, unless `dry_run`, carry it out.
/// Touches the repository only (callers update the catalog in their own transaction): shared
/// by the scheduler and `backup.cleanup()`. `Err` when nothing was deleted.
pub fn expire(config: &Config, rc: &RepoConfig, running: Option<&BackupId>, dry_run: bool) -> Result<Expiry, String> {
    let repo = PgRepo::open_repo(config, rc).map_err(|e| report(&e))?;
    let plan = retention::plan(&repo, &RetentionPolicy::for_repo(config, rc), Utc::now(), running).map_err(|e| report(&e))?;
    if dry_run {
        return Ok(Expiry { plan, report: None, error: None, deleted: Vec::new() });
    }
    match retention::execute(&repo, &plan) {
        Ok(r) => Ok(Expiry { deleted: r.backups_deleted.clone(), plan, report: Some(r), error: None }),
        Err(e) => {
            // Whatever went before the error is gone: find out which backups.
            let deleted = plan
                .deletions()
                .filter(|i| i.kind == retention::ItemKind::Backup)
                .filter_map(|i| i.name.parse::<BackupId>().ok())
                .filter(|id| !matches!(repo.backups().id_taken(id), Ok(true)))
                .collect();
            Ok(Expiry { plan, report: None, error: Some(report(&e)), deleted })
        }
    }
}

/// Copy every completed backup of repository `from` (default: the primary) that repository
/// `to` lacks and its retention would keep, oldest first (so an incremental's base goes
/// first): the off-site copy of the nightly backup.
pub fn copy(from: Option<&str>, to: Option<&str>) -> (RunStatus, String) {
    let Some(to) = to else {
        return failed("a copy job needs options.to, the repository to copy into (backup.schedule(..., options => '{\"to\": \"offsite\"}'))".to_string());
    };
    let config = match gucs::load_config() {
        Ok(c) => c,
        Err(e) => return failed(report(&e)),
    };
    let opened = (|| {
        let (src, dst) = (config.repo_or_primary(from).map_err(|e| report(&e))?, config.repo_named(to).map_err(|e| report(&e))?);
        let source = PgRepo::open_repo(&config, &src).map_err(|e| format!("repository {}: {}", src.name, report(&e)))?;
        let target = PgRepo::open_repo(&config, &dst).map_err(|e| format!("repository {}: {}", dst.name, report(&e)))?;
        let window = chrono::Duration::days(RetentionPolicy::for_repo(&config, &dst).full_days.into());
        let there: std::collections::BTreeSet<BackupId> = target.backups().completed_ids().map_err(|e| report(&e))?.into_iter().collect();
        let wanted: Vec<BackupId> = source
            .backups()
            .list()
            .map_err(|e| report(&e))?
            .into_iter()
            .filter(|m| !there.contains(&m.id) && Utc::now() - m.start_time < window)
            .map(|m| m.id)
            .collect();
        Ok::<_, String>((source, target, wanted))
    })();
    let (source, target, wanted) = match opened {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    if wanted.is_empty() {
        return (RunStatus::Succeeded, format!("nothing to copy: {to} holds every backup its retention keeps"));
    }
    let (mut copied, mut bytes) = (Vec::new(), 0);
    for id in &wanted {
        match backup_core::pg::backup::replicate::copy_backup(&source, &target, id) {
            Ok(r) => {
                bytes += r.bytes;
                if let Err(e) = transaction(|| {
                    for m in &r.manifests {
                        catalog::upsert_completed(m, to)?;
                    }
                    Ok(())
                }) {
                    log!("pg_backup_ext scheduler: {id} copied to {to} but not recorded in backup.backups: {e}");
                }
                copied.push(id.to_string());
            }
            Err(e) => {
                return failed(format!("copied {} backup(s) to {to} ({}), then {id} failed: {}", copied.len(), copied.join(", "), report(&e)));
            }
        }
    }
    (RunStatus::Succeeded, format!("copied {} backup(s) to {to} ({bytes} bytes): {}", copied.len(), copied.join(", ")))
}

/// The health job: `backup.health()`'s checks; a warning or critical one fails the run, and
/// the problems go to `backup.events`.
pub fn health() -> (RunStatus, String) {
    let checks = match transaction(|| Ok(crate::health::checks()?)) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let problems: Vec<String> = checks.iter().skip(1).filter(|c| c.status != Status::Ok).map(|c| format!("{} {}: {}", c.name, c.status, c.message)).collect();
    if problems.is_empty() {
        return (RunStatus::Succeeded, format!("ok: {} checks", checks.len() - 1));
    }
    let message = problems.join("; ");
    if let Err(e) = transaction(|| Ok(catalog::health_event(&message)?)) {
        log!("pg_backup_ext scheduler: could not record the health problem: {e}");
    }
    failed(message)
}

/// Start a restore test of the newest backup: it runs in its own worker (it takes as long as a
/// restore); its outcome goes to `backup.restore_tests`, and a failure to the health checks
/// and alerts.
pub fn restore_test() -> (RunStatus, String) {
    let req = crate::restore_worker::Request {
        backup_id: None,
        target: backup_core::pg::backup::inventory::RecoveryTarget::Latest,
        into: None,
        port: None,
        table: None,
        test: true,
    };
    match transaction(|| Ok(crate::restore_worker::start(&req))) {
        Ok(Ok(id)) => (RunStatus::Succeeded, format!("restore test started (restore {id}); its outcome goes to backup.restore_tests")),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e.to_string()),
    }
}
