//! The skeleton every background worker of this extension shares: how it starts, connects,
//! notices signals and postmaster death, sleeps, and runs its steps in transactions.
//!
//! A worker's job (the backup worker today; the scheduler and the alert sender next) is plain
//! code over [`Worker`]:
//! ```ignore
//! let worker = Worker::attach();               // SIGHUP and SIGTERM handlers, latch
//! worker.connect(Some(database_oid));
//! loop {
//!     match worker.sleep(interval) {           // wakes early on a signal
//!         Liveness::Running => {}
//!         Liveness::Terminate => break,        // SIGTERM or server shutdown
//!         Liveness::PostmasterDied => worker.exit_after_postmaster_death(),
//!     }
//!     if let Err(e) = transaction(|| one_step()) { log!("…: {e}") } // the loop survives
//! }
//! ```
//! pgrx's signal handlers only set flags: configuration reloads and termination happen in
//! [`Worker::poll`], which every loop and every long step calls.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;

pub use super::spi::{transaction, SqlError};

/// What a worker should do after looking at its signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// SIGTERM, or the postmaster is shutting the server down: finish up and return.
    Terminate,
    /// Nobody is left to report to; exit at once ([`Worker::exit_after_postmaster_death`]).
    PostmasterDied,
}

/// The running worker process (one per process; only its main thread may use it).
pub struct Worker {
    _main_thread_only: std::marker::PhantomData<*const ()>,
}

impl Worker {
    /// Install the SIGHUP and SIGTERM handlers (they set flags and the latch); first thing a
    /// worker's main function does.
    pub fn attach() -> Worker {
        BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
        Worker { _main_thread_only: std::marker::PhantomData }
    }

    /// The `extra` text it was launched with.
    pub fn extra(&self) -> String {
        BackgroundWorker::get_extra().to_string()
    }

    /// Connect to a database (by name) for SPI; a database that does not exist ends the
    /// process with PostgreSQL's FATAL error (the postmaster restarts a static worker later).
    pub fn connect_by_name(&self, database: &str) {
        BackgroundWorker::connect_worker_to_spi(Some(database), None);
    }

    /// Connect to a database (by OID) for SPI.
    pub fn connect(&self, database_oid: u32) {
        BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from_u32(database_oid)), None);
    }

    /// Apply a pending configuration reload, then say whether to go on.
    pub fn poll(&self) -> Liveness {
        if !super::postmaster_alive() {
            return Liveness::PostmasterDied;
        }
        if BackgroundWorker::sighup_received() {
            super::reload_configuration();
        }
        if BackgroundWorker::sigterm_received() || super::shutdown_requested() {
            return Liveness::Terminate;
        }
        Liveness::Running
    }

    /// Sleep on the latch for up to `timeout`: a signal or a `SetLatch` wakes it early. The
    /// wait of every periodic worker (the scheduler's loop); the one-shot backup worker polls
    /// from its copy's progress ticks instead.
    pub fn sleep(&self, timeout: Duration) -> Liveness {
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            return Liveness::PostmasterDied;
        }
        self.poll()
    }

    /// Like every server process: when the postmaster is gone, stop now.
    pub fn exit_after_postmaster_death(&self) -> ! {
        super::exit_process(1)
    }
}

/// Register a worker the postmaster starts with the server (once recovery is over: never on a
/// standby) and restarts `restart_after` a crash or an exit with status 1. Only from `_PG_init`
/// while `shared_preload_libraries` load.
pub fn register_static(worker_type: &str, function: &str, restart_after: Duration) {
    BackgroundWorkerBuilder::new(worker_type)
        .set_type(worker_type)
        .set_library("pg_backup_ext")
        .set_function(function)
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(restart_after))
        .load();
}

/// Launch a dynamic worker running `function` (an `extern "C-unwind"` in this library) with
/// `extra`, reporting to this backend (so it can wait for startup and shutdown).
pub fn launch(worker_type: &str, function: &str, extra: &str) -> Result<DynamicBackgroundWorker, LaunchError> {
    BackgroundWorkerBuilder::new(worker_type)
        .set_type(worker_type)
        .set_library("pg_backup_ext")
        .set_function(function)
        .set_extra(extra)
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(super::backend_pid())
        .load_dynamic()
        .map_err(|_| LaunchError)
}

#[derive(Debug, thiserror::Error)]
#[error("could not start a background worker; raise max_worker_processes")]
pub struct LaunchError;
