//! Transactions and SPI for background workers.
//!
//! `BackgroundWorker::transaction` re-raises a SQL error as a Rust panic carrying a
//! `CaughtError`; a worker must survive it to record the failure, so [`transaction`] catches
//! it, aborts the transaction, and returns it as a [`SqlError`].

use std::fmt;
use std::panic::AssertUnwindSafe;

use backup_core::pg::backup::session::{ServerError, SqlSession};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::spi::Spi;

/// A SQL statement failed: the server's message (what `ereport` said).
#[derive(Debug, Clone)]
pub struct SqlError {
    message: String,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> SqlError {
        SqlError { message: message.into() }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

impl From<pgrx::spi::Error> for SqlError {
    fn from(e: pgrx::spi::Error) -> Self {
        SqlError::new(e.to_string())
    }
}

/// Run `f` in its own transaction. A SQL error inside (raised as a panic by pgrx) aborts the
/// transaction and comes back as `Err`, so the caller can go on and record it.
pub fn transaction<R>(f: impl FnOnce() -> Result<R, SqlError>) -> Result<R, SqlError> {
    let f = AssertUnwindSafe(f);
    match std::panic::catch_unwind(AssertUnwindSafe(|| BackgroundWorker::transaction(AssertUnwindSafe(|| (f.0)())))) {
        Ok(result) => result,
        Err(panic) => {
            // SAFETY: we are on the worker's main thread, inside the transaction that failed.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(SqlError::new(panic_message(&*panic)))
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
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

/// The backup's server session over SPI: each statement in its own transaction of this one
/// worker session, so `pg_backup_start` and `pg_backup_stop` come from the same session as
/// the non-exclusive API requires.
pub struct SpiSession;

impl SqlSession for SpiSession {
    fn query_row(&mut self, sql: &str, args: &[&str]) -> Result<Vec<Option<String>>, ServerError> {
        transaction(|| {
            let datums: Vec<DatumWithOid> = args.iter().map(|a| (*a).into()).collect();
            Spi::connect_mut(|client| {
                let row = client.update(sql, Some(1), &datums)?.first();
                (1..=row.columns()?).map(|i| row.get::<String>(i)).collect::<Result<Vec<_>, _>>()
            })
            .map_err(SqlError::from)
        })
        .map_err(|e| ServerError::message(e.to_string()))
    }
}
