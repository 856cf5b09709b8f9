//! The backup background worker: one dynamic worker per backup.
//!
//! Its main thread owns everything PostgreSQL: the catalog row, `pg_backup_start` and
//! `pg_backup_stop` (same session, as the non-exclusive API requires), signals, progress. The
//! copy runs on plain threads inside `backup-core`, spawned with signals blocked, and never
//! touches a PostgreSQL API. On SIGTERM (or server shutdown) the copy is cancelled and the row
//! marked failed; when the worker exits without `pg_backup_stop`, PostgreSQL aborts the backup.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backup_core::backup::copy::Progress;
use backup_core::backup::run::{run_full_backup, BackupOptions, BackupSession, Phase, StopInfo};
use backup_core::backup::{BackupId, Manifest};
use backup_core::repo::Repository;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::gucs;
use crate::spi::try_tx;

pub const WORKER_TYPE: &str = "pg_backup_ext backup";
/// Held (session-level) by the worker taking a backup: one backup at a time per cluster.
pub const BACKUP_LOCK_KEY: i64 = 0x7062_6b75_7001;

/// Launch a worker for backup `id`, connected to the caller's database (where the catalog is).
pub fn launch(id: &BackupId) -> Result<DynamicBackgroundWorker, String> {
    // SAFETY: reading backend globals on the backend's main thread.
    let (dboid, pid) = unsafe { (pg_sys::MyDatabaseId.to_u32(), pg_sys::MyProcPid) };
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("pg_backup_ext")
        .set_function("pg_backup_ext_worker_main")
        .set_extra(&format!("{id} {dboid}"))
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(pid)
        .load_dynamic()
        .map_err(|_| "could not start a background worker; raise max_worker_processes".to_string())
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split(' ');
    let (Some(id), Some(dboid)) = (parts.next(), parts.next().and_then(|d| d.parse::<u32>().ok())) else {
        log!("pg_backup_ext: worker started with bad arguments {extra:?}");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from_u32(dboid)), None);
    let Ok(id) = id.parse::<BackupId>() else { return };

    if let Err(e) = claim(&id) {
        log!("pg_backup_ext: {id}: {e}");
        return;
    }
    match take_backup(&id) {
        Ok(m) => {
            let ok = try_tx(|| {
                crate::catalog::upsert_completed(&m).map_err(|e| e.to_string())?;
                event(&id, "info", &format!(
                    "completed: {} files, {} bytes -> {} stored, LSN {} .. {}",
                    m.stats.files, m.stats.bytes, m.stats.stored_bytes, m.start_lsn, m.stop_lsn
                ))?;
                for f in m.page_checksum_failures.iter().take(100) {
                    event(&id, "warning", &format!("page checksum failure in {} block {} (expected {}, found {})", f.path, f.block, f.expected, f.found))?;
                }
                Ok(())
            });
            if let Err(e) = ok {
                log!("pg_backup_ext: {id} completed in the repository but the catalog update failed: {e}; run SELECT backup.resync()");
            }
            if !m.page_checksum_failures.is_empty() {
                warning!("pg_backup_ext: {id}: {} corrupt page(s) found; see backup.events", m.page_checksum_failures.len());
            }
        }
        Err(e) => {
            log!("pg_backup_ext: backup {id} failed: {e}");
            let _ = try_tx(|| {
                Spi::run_with_args(
                    "UPDATE backup.backups SET status = 'failed', phase = NULL, error = $2, stop_time = now() WHERE id = $1",
                    &[id.to_string().into(), e.clone().into()],
                )
                .map_err(|e| e.to_string())?;
                event(&id, "error", &e)
            });
        }
    }
}

/// Take the cluster-wide backup lock and create our catalog row. Another backup running, or
/// archiving off, fails the row at once.
fn claim(id: &BackupId) -> Result<(), String> {
    try_tx(|| {
        let locked = Spi::get_one_with_args::<bool>("SELECT pg_try_advisory_lock($1)", &[BACKUP_LOCK_KEY.into()])
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let archive_mode = Spi::get_one::<String>("SELECT current_setting('archive_mode')").map_err(|e| e.to_string())?.unwrap_or_default();
        let error = if !locked {
            Some("another backup is already running".to_string())
        } else if archive_mode == "off" {
            Some("archive_mode is off: a backup without archived WAL cannot be restored; set archive_mode = on and archive_command = 'wal-archiver push %p'".to_string())
        } else {
            None
        };
        Spi::run_with_args(
            "INSERT INTO backup.backups (id, type, status, worker_pid, start_time, phase, error)
             VALUES ($1, 'full', $2, pg_backend_pid(), now(), 'starting', $3)",
            &[id.to_string().into(), if error.is_some() { "failed" } else { "running" }.into(), error.clone().into()],
        )
        .map_err(|e| e.to_string())?;
        match &error {
            Some(e) => event(id, "error", e)?,
            None => event(id, "info", "started")?,
        }
        error.map_or(Ok(()), Err)
    })
}

fn event(id: &BackupId, level: &str, message: &str) -> Result<(), String> {
    Spi::run_with_args(
        "INSERT INTO backup.events (backup_id, level, message) VALUES ($1, $2, $3)",
        &[id.to_string().into(), level.into(), message.into()],
    )
    .map_err(|e| e.to_string())
}

fn take_backup(id: &BackupId) -> Result<Manifest, String> {
    // GUCs and the data directory are read here, on the main thread, before any copying thread
    // exists; the threads get plain Rust values.
    let config = gucs::load_config().map_err(|e| e.to_string())?;
    let mut repo = Repository::open(&config).map_err(|e| e.to_string())?;
    // Large files compress on several threads, so the last big file does not run alone.
    repo.set_codec_threads(gucs::WORKERS.get() as usize);
    // SAFETY: DataDir is set for the life of the server; read on the main thread.
    let pgdata = PathBuf::from(unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned());
    let opts = BackupOptions {
        workers: gucs::WORKERS.get() as usize,
        verify_checksums: gucs::VERIFY_CHECKSUMS.get(),
        max_rate: gucs::MAX_RATE_KB.get() as u64 * 1024,
        wal_timeout: Duration::from_secs(gucs::WAL_TIMEOUT_S.get() as u64),
    };
    let progress = Progress::default();
    let mut last_report = Instant::now() - Duration::from_secs(10);
    let mut terminated = false;
    let mut postmaster_died = false;
    let mut last_phase = None;
    let mut tick = |phase: Phase| -> bool {
        // Like every server process: if the postmaster is gone, stop now. (The archiver is gone
        // too, so a WAL wait could never end.)
        // SAFETY: reads the postmaster-death pipe; main thread.
        if !unsafe { PostmasterIsAliveInternal() } {
            postmaster_died = true;
            return false;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread; this is how a worker applies a configuration reload.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // SAFETY: a flag set by the SIGTERM handler (and by postmaster shutdown).
        terminated |= BackgroundWorker::sigterm_received() || unsafe { pg_sys::ShutdownRequestPending != 0 };
        if terminated {
            return false;
        }
        if last_report.elapsed() >= Duration::from_millis(500) || last_phase != Some(phase) {
            last_report = Instant::now();
            last_phase = Some(phase);
            let done = progress.bytes_done.load(Ordering::Relaxed) as i64;
            let total = progress.bytes_total.load(Ordering::Relaxed) as i64;
            let _ = try_tx(|| {
                Spi::run_with_args(
                    "UPDATE backup.backups SET phase = $2, bytes_done = $3, bytes_total = $4, progress_at = now() WHERE id = $1",
                    &[id.to_string().into(), phase.as_str().into(), done.into(), total.into()],
                )
                .map_err(|e| e.to_string())
            });
        }
        true
    };
    let mut session = SpiSession;
    let result = run_full_backup(&repo, &pgdata, &mut session, id, &opts, &progress, &mut tick);
    if postmaster_died {
        // No catalog update is possible or useful: the next backup.list() marks the row failed.
        log!("pg_backup_ext: backup {id} abandoned: the postmaster died");
        // SAFETY: ends this process, as PostgreSQL processes do on postmaster death.
        unsafe { pg_sys::proc_exit(1) };
    }
    result.map_err(|e| match e {
        backup_core::backup::run::BackupError::Cancelled => "cancelled: the worker was asked to stop (SIGTERM or server shutdown)".to_string(),
        other => other.to_string(),
    })
}

unsafe extern "C" {
    /// storage/ipc/pmsignal.c (not in pgrx's bindings): checks the postmaster-death pipe.
    fn PostmasterIsAliveInternal() -> bool;
}

/// `pg_backup_start` / `pg_backup_stop` over SPI, in this worker's one session.
struct SpiSession;

impl BackupSession for SpiSession {
    fn start(&mut self, label: &str) -> Result<backup_core::wal::Lsn, String> {
        let lsn = try_tx(|| {
            Spi::get_one_with_args::<String>("SELECT pg_backup_start($1, true)::text", &[label.into()]).map_err(|e| e.to_string())
        })?
        .ok_or("pg_backup_start returned nothing")?;
        lsn.parse().map_err(|e: backup_core::wal::WalError| e.to_string())
    }

    fn stop(&mut self) -> Result<StopInfo, String> {
        let (lsn, label, map) = try_tx(|| {
            Spi::get_three::<String, String, String>("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)").map_err(|e| e.to_string())
        })?;
        Ok(StopInfo {
            lsn: lsn.ok_or("pg_backup_stop returned no LSN")?.parse().map_err(|e: backup_core::wal::WalError| e.to_string())?,
            backup_label: label.ok_or("pg_backup_stop returned no backup_label")?,
            tablespace_map: map,
        })
    }

    fn next_xid(&mut self) -> Result<u64, String> {
        let xid = try_tx(|| {
            Spi::get_one::<String>("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").map_err(|e| e.to_string())
        })?;
        xid.ok_or("no xid")?.parse().map_err(|e: std::num::ParseIntError| e.to_string())
    }
}
