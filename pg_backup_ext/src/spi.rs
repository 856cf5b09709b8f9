//! Transactions and SPI for the background worker.
//!
//! `BackgroundWorker::transaction` re-raises a SQL error as a Rust panic carrying a
//! `CaughtError`; the worker must survive it to record the failure, so [`try_tx`] catches it,
//! aborts the transaction, and returns the message.

use std::panic::AssertUnwindSafe;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;

pub fn try_tx<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    let f = AssertUnwindSafe(f);
    match std::panic::catch_unwind(AssertUnwindSafe(|| BackgroundWorker::transaction(AssertUnwindSafe(|| (f.0)())))) {
        Ok(result) => result,
        Err(panic) => {
            // SAFETY: we are on the worker's main thread, inside the transaction that failed.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(panic_message(&*panic))
        }
    }
}

pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(caught) = panic.downcast_ref::<CaughtError>() {
        return match caught {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
        };
    }
    if let Some(s) = panic.downcast_ref::<String>() {
        return s.clone();
    }
    if let Some(s) = panic.downcast_ref::<&str>() {
        return s.to_string();
    }
    "unknown error".to_string()
}
