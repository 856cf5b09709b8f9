//! The backup background worker: one dynamic worker per backup.
//!
//! Its main thread owns everything PostgreSQL: the catalog row, `pg_backup_start` and
//! `pg_backup_stop` (same session, as the non-exclusive API requires), signals, progress. The
//! copy runs on plain threads inside `backup-core`, spawned with signals blocked, and never
//! touches a PostgreSQL API. On SIGTERM (or server shutdown) the copy is cancelled (uploads
//! under way included) and the row marked failed; when the worker exits without
//! `pg_backup_stop`, PostgreSQL aborts the backup.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backup_core::error::report;
use backup_core::pg::backup::copy::Progress;
use backup_core::pg::backup::run::{run_backup, BackupError, BackupOptions, Phase, WalSummaries};
use backup_core::pg::backup::{BackupId, BackupKind, Manifest};
use backup_core::pg::PgRepo;
use backup_core::storage::CancelToken;
use pgrx::bgworkers::DynamicBackgroundWorker;
use pgrx::prelude::*;

use crate::catalog::{self, BackupStatus, EventLevel};
use crate::gucs;
use crate::postgres::bgworker::{self, transaction, Liveness, SqlError, Worker};
use crate::postgres::spi::SpiSession;

pub const WORKER_TYPE: &str = "pg_backup_ext backup";

/// Why a backup could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("backup {0} is already running; follow it in backup.progress, or wait for it to finish")]
    AlreadyRunning(String),
    #[error("pg_backup_ext: {0}")]
    Launch(#[from] bgworker::LaunchError),
    #[error("pg_backup_ext: the backup worker for {0} did not start; see the server log")]
    DidNotStart(BackupId),
    #[error("backup {id} failed: {error}")]
    Failed { id: BackupId, error: String },
    #[error("pg_backup_ext: {0}")]
    Catalog(#[from] pgrx::spi::Error),
    #[error("pg_backup_ext: {0}")]
    Config(String),
}

/// Start a backup in a new worker, connected to this backend's database (where the catalog
/// is), and return once the worker has recorded it (so `backup.list()` shows it at once).
/// Used by `backup.start_full()`/`start_incremental()` and by the scheduler.
pub fn start(kind: BackupKind, repo: Option<&str>) -> Result<(BackupId, DynamicBackgroundWorker), StartError> {
    // Named now, so that an unknown repository is refused here rather than by the worker.
    let config = gucs::load_config().map_err(|e| StartError::Config(report(&e)))?;
    let repo = config.repo_or_primary(repo).map_err(|e| StartError::Config(report(&e)))?.name;
    catalog::reap_stale()?;
    if let Some(running) = catalog::running_backup()? {
        return Err(StartError::AlreadyRunning(running));
    }
    // Ids have one-second resolution: never reuse one.
    let mut id = BackupId::at(chrono::Utc::now());
    while catalog::exists(&id)? {
        std::thread::sleep(Duration::from_millis(200));
        crate::postgres::check_for_interrupts();
        id = BackupId::at(chrono::Utc::now());
    }
    let extra = format!("{id} {} {kind} {repo}", crate::postgres::database_oid());
    let handle = bgworker::launch(WORKER_TYPE, "pg_backup_ext_worker_main", &extra)?;
    if handle.wait_for_startup().is_err() {
        return Err(StartError::DidNotStart(id));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some((status, err)) = catalog::status(&id)? {
            if status == BackupStatus::Failed {
                return Err(StartError::Failed { id, error: err.unwrap_or_default() });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        crate::postgres::check_for_interrupts();
    }
    Ok((id, handle))
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_worker_main(_arg: pg_sys::Datum) {
    let worker = Worker::attach();
    let extra = worker.extra();
    let mut parts = extra.split(' ');
    let (Some(id), Some(dboid), Some(kind), Some(repo)) = (
        parts.next(),
        parts.next().and_then(|d| d.parse::<u32>().ok()),
        match parts.next() {
            Some("full") => Some(BackupKind::Full),
            Some("incremental") => Some(BackupKind::Incremental),
            _ => None,
        },
        parts.next().map(str::to_string),
    ) else {
        log!("pg_backup_ext: worker started with bad arguments {extra:?}");
        return;
    };
    worker.connect(dboid);
    let Ok(id) = id.parse::<BackupId>() else {
        log!("pg_backup_ext: worker started for {id:?}, which is not a backup id");
        return;
    };

    match transaction(|| Ok(catalog::claim(&id, kind, &repo)?)) {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => {
            log!("pg_backup_ext: {id}: {refused}");
            return;
        }
        Err(e) => {
            log!("pg_backup_ext: {id}: could not record the backup in backup.backups: {e}");
            return;
        }
    }
    match take_backup(&worker, &id, kind, &repo) {
        Ok(m) => record_completed(&id, &m, &repo),
        Err(e) => {
            log!("pg_backup_ext: backup {id} failed: {e}");
            if let Err(sql) = transaction(|| Ok(catalog::mark_failed(&id, &e)?)) {
                log!("pg_backup_ext: backup {id} failed and marking it failed failed too ({sql}); backup.list() will show it failed once it sees this worker gone");
            }
        }
    }
}

fn record_completed(id: &BackupId, m: &Manifest, repo: &str) {
    let recorded = transaction(|| {
        catalog::upsert_completed(m, repo)?;
        let on_top = match &m.parent {
            Some(p) => format!(", incremental on {p}: {} changed blocks, {} bytes read", m.stats.changed_blocks, m.stats.bytes_read),
            None => String::new(),
        };
        let summary = format!(
            "completed: {} files, {} bytes -> {} stored, LSN {} .. {}{on_top}",
            m.stats.files, m.stats.bytes, m.stats.stored_bytes, m.start_lsn, m.stop_lsn
        );
        catalog::event(id, EventLevel::Info, &summary)?;
        if let Some(method) = &m.incremental {
            match &method.wal_unusable {
                Some(why) => catalog::event(id, EventLevel::Warning, &format!("WAL summaries not usable ({why}): scanned every relation file page by page"))?,
                None => catalog::event(
                    id,
                    EventLevel::Info,
                    &format!("changed pages found from WAL summaries: {} relation files read only where they changed, {} scanned page by page", method.files_from_wal, method.files_scanned),
                )?,
            }
        }
        for f in m.page_checksum_failures.iter().take(100) {
            let what = format!("page checksum failure in {} block {} (expected {}, found {})", f.path, f.block, f.expected, f.found);
            catalog::event(id, EventLevel::Warning, &what)?;
        }
        Ok::<_, SqlError>(())
    });
    if let Err(e) = recorded {
        log!("pg_backup_ext: {id} completed in the repository but the catalog update failed: {e}; run SELECT backup.resync()");
    }
    if !m.page_checksum_failures.is_empty() {
        warning!("pg_backup_ext: {id}: {} corrupt page(s) found; see backup.events", m.page_checksum_failures.len());
    }
}

fn take_backup(worker: &Worker, id: &BackupId, kind: BackupKind, repo_name: &str) -> Result<Manifest, String> {
    // GUCs and the data directory are read here, on the main thread, before any copying thread
    // exists; the threads get plain Rust values.
    let config = gucs::load_config().map_err(|e| report(&e))?;
    let target = config.repo_named(repo_name).map_err(|e| report(&e))?;
    let mut repo = PgRepo::open_repo(&config, &target).map_err(|e| report(&e))?;
    // SIGTERM stops the copy and every upload or download under way.
    let stop = CancelToken::new();
    repo.objects_mut().set_cancel(stop.clone());
    // Large files compress on several threads, so the last big file does not run alone.
    repo.objects_mut().set_codec_threads(gucs::WORKERS.get() as usize);
    let pgdata = crate::postgres::data_directory();
    let opts = BackupOptions {
        workers: gucs::WORKERS.get() as usize,
        verify_checksums: gucs::VERIFY_CHECKSUMS.get(),
        max_rate: gucs::MAX_RATE_KB.get() as u64 * 1024,
        wal_timeout: Duration::from_secs(gucs::WAL_TIMEOUT_S.get() as u64),
        wal_summaries: WalSummaries::Use,
    };
    let progress = Progress::default();
    let mut last_report = Instant::now() - Duration::from_secs(10);
    let mut liveness = Liveness::Running;
    let mut last_phase = None;
    let mut tick = |phase: Phase| -> bool {
        liveness = worker.poll();
        if liveness != Liveness::Running {
            stop.cancel();
            return false;
        }
        if last_report.elapsed() >= Duration::from_millis(500) || last_phase != Some(phase) {
            last_report = Instant::now();
            last_phase = Some(phase);
            let done = progress.bytes_done.load(Ordering::Relaxed) as i64;
            let total = progress.bytes_total.load(Ordering::Relaxed) as i64;
            if let Err(e) = transaction(|| Ok(catalog::record_progress(id, phase.as_str(), done, total)?)) {
                // Progress is for people watching; the backup itself goes on.
                log!("pg_backup_ext: {id}: could not record progress: {e}");
            }
        }
        true
    };
    let result = run_backup(&repo, &pgdata, &mut SpiSession, id, kind, &opts, &progress, &mut tick);
    if liveness == Liveness::PostmasterDied {
        // No catalog update is possible or useful: the next backup.list() marks the row failed.
        log!("pg_backup_ext: backup {id} abandoned: the postmaster died");
        worker.exit_after_postmaster_death();
    }
    result.map_err(|e| match e {
        BackupError::Cancelled => "cancelled: the worker was asked to stop (SIGTERM or server shutdown)".to_string(),
        other => report(&other),
    })
}
