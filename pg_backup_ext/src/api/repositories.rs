//! Several repositories from SQL: `backup.repositories()` (what is configured, reachable, owed),
//! `backup.copy()` (a completed backup into another repository), and the lookups the other
//! functions share (the repository holding a backup).

use backup_core::error::report;
use backup_core::pg::backup::replicate::copy_backup;
use backup_core::pg::backup::{BackupId, Manifest};
use backup_core::pg::{PgRepo, PgRepoError};
use backup_core::storage::CancelToken;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::sql;
use crate::catalog;
use crate::gucs;

fn config() -> backup_core::config::Config {
    gucs::load_config().unwrap_or_else(|e| error!("pg_backup_ext: {}", report(&e)))
}

/// Repository `name` (default: the primary), opened, or an error naming it.
pub(super) fn open_named(name: Option<&str>) -> PgRepo {
    let config = config();
    let rc = config.repo_or_primary(name).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    PgRepo::open_repo(&config, &rc).unwrap_or_else(|e| error!("repository {}: {}", rc.name, report(&e)))
}

/// The first repository, in the configured order, that holds backup `id`, with its manifest
/// (the primary when none does: its error then names the backup).
pub(super) fn holder_of(id: &BackupId) -> (PgRepo, Result<Manifest, PgRepoError>) {
    let config = config();
    for rc in config.repositories() {
        if let Ok(repo) = PgRepo::open_repo(&config, &rc) {
            if let Ok(m) = repo.backups().read_manifest(id) {
                return (repo, Ok(m));
            }
        }
    }
    let primary = open_named(None);
    let answer = primary.backups().read_manifest(id);
    (primary, answer)
}

/// A restore point is recorded in every repository (a restore from any of them may name it);
/// one that cannot take it is warned about, the primary must.
pub(super) fn record_restore_point(name: &str, lsn: backup_core::pg::wal::Lsn) {
    let config = config();
    for (i, rc) in config.repositories().iter().enumerate() {
        let recorded = PgRepo::open_repo(&config, rc).and_then(|r| r.backups().record_restore_point(name, lsn));
        match recorded {
            Ok(()) => {}
            Err(e) if i == 0 => error!("{}", report(&e)),
            Err(e) => warning!("pg_backup_ext: restore point {name:?} not recorded in repository {}: {}", rc.name, report(&e)),
        }
    }
}

/// Every configured repository, in order (the first is the primary): where it is, how WAL
/// archiving treats it, whether it answers now, how many backups it holds, and how many WAL
/// files it is owed (archived while it was down; copied over by later pushes or
/// `wal-archiver catch-up`).
// pgrx reads the column names from the tuple written out here: a type alias is refused.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn repositories() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(location, String),
        name!(archive, String),
        name!(is_primary, bool),
        name!(reachable, bool),
        name!(backups, Option<i32>),
        name!(owed_wal, Option<i64>),
        name!(error, Option<String>),
    ),
> {
    let opened = gucs::open_all(&config());
    // Owed files are noted in the primary, by repository.
    let owed = opened.owed.ok();
    let rows: Vec<_> = opened
        .repos
        .iter()
        .enumerate()
        .map(|(i, (rc, repo))| {
            let counted = repo.as_ref().map_err(Clone::clone).and_then(|r| r.backups().completed_ids().map(|ids| ids.len() as i32).map_err(|e| report(&e)));
            let (reachable, backups, error) = match counted {
                Ok(n) => (true, Some(n), None),
                Err(e) => (false, None, Some(e)),
            };
            let archive = match rc.wal {
                backup_core::config::WalArchiving::Required => "required",
                backup_core::config::WalArchiving::BestEffort => "best_effort",
            };
            let owed_wal = owed.as_ref().map(|o| o.get(&rc.name).copied().unwrap_or(0) as i64);
            (rc.name.clone(), rc.location.to_string(), archive.to_string(), i == 0, reachable, backups, owed_wal, error)
        })
        .collect();
    TableIterator::new(rows)
}

/// Copy completed backup `id` (with the backups it builds on and the WAL it needs) from
/// repository `source` (default: the primary) into repository `repo`; the copy is restorable
/// on its own. Returns what was copied. Cancelling the statement stops the copy (what was
/// copied stays, without a manifest: a later copy completes it).
#[pg_extern(volatile)]
fn copy(id: &str, repo: &str, source: default!(Option<&str>, "NULL")) -> JsonB {
    let bid: BackupId = id.parse().unwrap_or_else(|e| error!("{e}"));
    let config = config();
    let from_rc = config.repo_or_primary(source).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    let to_rc = config.repo_named(repo).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    if from_rc.name == to_rc.name {
        error!("backup {id} is already in repository {repo}: copy into another repository than the source");
    }
    let cancel = CancelToken::new();
    let mut from = PgRepo::open_repo(&config, &from_rc).unwrap_or_else(|e| error!("repository {}: {}", from_rc.name, report(&e)));
    let mut to = PgRepo::open_repo(&config, &to_rc)
        .unwrap_or_else(|e| error!("repository {}: {} (initialize it with wal-archiver init --pgdata DATADIR)", to_rc.name, report(&e)));
    from.objects_mut().set_cancel(cancel.clone());
    to.objects_mut().set_cancel(cancel.clone());
    let started = std::time::Instant::now();
    let report_ = run_interruptibly(&cancel, || copy_backup(&from, &to, &bid)).unwrap_or_else(|e| error!("copying {id} to {repo}: {}", report(&e)));
    for m in &report_.manifests {
        sql(catalog::upsert_completed(m, &to_rc.name));
    }
    let mut doc = serde_json::to_value(&report_).expect("serializable");
    doc["from"] = from_rc.name.into();
    doc["to"] = to_rc.name.into();
    doc["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    JsonB(doc)
}

/// Run `work` on a thread with every signal blocked while this (the backend's main) thread
/// keeps answering interrupts: a cancelled statement trips `cancel` on its way out, which
/// stops every storage call of the work, and the work's thread is joined before the error
/// propagates.
fn run_interruptibly<T: Send>(cancel: &CancelToken, work: impl FnOnce() -> T + Send) -> T {
    struct CancelOnUnwind<'a>(&'a CancelToken);
    impl Drop for CancelOnUnwind<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.cancel();
            }
        }
    }
    let work = std::sync::Mutex::new(Some(work));
    let run = |_: usize| (work.lock().expect("not poisoned").take().expect("run once"))();
    std::thread::scope(|scope| {
        let handle = backup_core::threads::spawn_blocking_signals(scope, 1, &run).pop().expect("one thread");
        let _guard = CancelOnUnwind(cancel);
        while !handle.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(50));
            crate::postgres::check_for_interrupts();
        }
        handle.join().unwrap_or_else(|_| error!("pg_backup_ext: the copying thread panicked (see the server log)"))
    })
}
