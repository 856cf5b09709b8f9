//! `archive_library = 'pg_backup_ext'`: WAL archiving inside PostgreSQL's archiver process
//! (PostgreSQL 15's archive module API), instead of `archive_command = 'wal-archiver push %p'`.
//!
//! Same repositories, same format, same checks as `wal-archiver push` (it is the same
//! `RepoSet::push`: every required repository, best-effort ones noted when down); what goes
//! away is the process per segment: no fork/exec, no configuration and key loading for every
//! 16 MB. The repositories are opened once and kept until the configuration (file, GUC or key
//! file) changes.
//!
//! A failed push logs a WARNING naming the segment and the cause and returns false: the archiver
//! retries (three times, then again a minute later), exactly as with a failing archive_command.
//! The push runs on a thread spawned with every signal blocked, so the archiver's signal handlers
//! stay on its main thread (the codec compresses on more threads still). The C entry points are
//! in [`crate::postgres::archive_hooks`].

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use backup_core::config::Config;
use backup_core::error::report;
use backup_core::pg::archive::{PushError, PushOutcome};
use backup_core::pg::repos::{PushReport, RepoSet};
use pgrx::prelude::*;

use crate::gucs;

/// What the cached repository was opened from: a change to either reopens it (a reload that
/// names another file, an edited file, a key added by `wal-archiver keygen`).
#[derive(PartialEq)]
struct OpenedFrom {
    config: Config,
    key_file_mtime: Option<SystemTime>,
}

struct OpenRepository {
    from: OpenedFrom,
    repos: RepoSet,
}

/// The archiver is one process with one thread calling us; the Mutex only makes the static sound.
static OPEN: Mutex<Option<OpenRepository>> = Mutex::new(None);

/// Not configured (the archiver then warns and waits) when the configuration cannot be read.
pub fn check_configured() -> bool {
    match gucs::load_config() {
        Ok(_) => true,
        Err(e) => {
            warning!("pg_backup_ext archive module: {}; set backup.config_file (or BACKUP_CONFIG) to the file wal-archiver uses", report(&e));
            false
        }
    }
}

/// Archive one segment; `true` once it is durably in the repository.
pub fn archive_file(file: &str, path: &str) -> bool {
    // Settings are read here: PostgreSQL's functions (GUCs included) are for this thread only.
    let config = match gucs::load_config() {
        Ok(c) => c,
        Err(e) => {
            warning!("pg_backup_ext: archiving {file} failed: {}", report(&e));
            return false;
        }
    };
    // The first segment archived after promotion: a prefetch spool left by the recovery
    // (see backup_core::pg::prefetch) is garbage now. One stat when there is none.
    let pgdata = crate::postgres::data_directory();
    let work = |_: usize| {
        if let Err(e) = backup_core::pg::prefetch::Spool::for_pgdata(&pgdata).remove_after_recovery() {
            eprintln!("pg_backup_ext: cannot remove the prefetch spool of the last recovery: {e}");
        }
        push(Path::new(path), &config)
    };
    let outcome = std::thread::scope(|scope| {
        let handle = backup_core::threads::spawn_blocking_signals(scope, 1, &work).pop().expect("one thread");
        handle.join()
    });
    match outcome {
        Ok(Ok(report)) => {
            if let PushOutcome::AlreadyArchived = report.outcome {
                log!("pg_backup_ext: {file} was already archived with identical content; nothing to do");
            }
            for f in &report.owed {
                warning!("pg_backup_ext: {file} archived, but not into best-effort repository {}: {}; it is noted as owed and copied there once the repository answers again", f.repo, f.error);
            }
            if report.caught_up > 0 {
                log!("pg_backup_ext: caught up {} owed WAL file(s)", report.caught_up);
            }
            true
        }
        Ok(Err(e)) => {
            warning!("pg_backup_ext: archiving {file} failed: {}", report(&e));
            false
        }
        Err(_) => {
            warning!("pg_backup_ext: archiving {file} failed: the archiving thread panicked (see the server log)");
            false
        }
    }
}

fn push(path: &Path, config: &Config) -> Result<PushReport, PushError> {
    // A key file we cannot stat is caught by the open below, which reads it.
    let key_file_mtime = config.key_file.as_ref().and_then(|k| std::fs::metadata(k).and_then(|m| m.modified()).ok());
    let from = OpenedFrom { config: config.clone(), key_file_mtime };
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if open.as_ref().map(|o| &o.from) != Some(&from) {
        *open = None;
        let repos = RepoSet::for_archiving(&from.config).map_err(PushError::Repo)?;
        *open = Some(OpenRepository { repos, from });
    }
    let outcome = open.as_mut().expect("opened above").repos.push(path);
    if outcome.is_err() {
        // The next attempt starts from scratch (a repository that moved or was replaced).
        *open = None;
    }
    outcome
}

