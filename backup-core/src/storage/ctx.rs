//! Deadlines and cancellation, passed to every storage call.
//!
//! A backup worker stopped by SIGTERM must stop talking to its store promptly, and a store
//! that stops answering must not hang `archive_command` forever. So every call takes a
//! [`Ctx`]: a [`CancelToken`] the caller can trip from another thread (the worker's main
//! thread, on a signal) and an optional deadline. Backends check it before each request and
//! between the chunks of a streamed body; a blocking system call already under way on a local
//! filesystem finishes first (that is at most one chunk).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{StorageError, StorageErrorKind};

/// Shared flag: once cancelled, every call made with it fails with
/// [`StorageErrorKind::Cancelled`].
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// Any of them cancels: a process-wide one (the server asked us to stop) and narrower ones
    /// (one copy thread failed, so its siblings stop).
    cancel: Vec<CancelToken>,
    deadline: Option<Instant>,
}

impl Ctx {
    /// No deadline, not cancellable: one-shot tools whose user can press ^C.
    pub fn background() -> Ctx {
        Ctx::default()
    }

    pub fn with_cancel(mut self, token: &CancelToken) -> Ctx {
        self.cancel.push(token.clone());
        self
    }

    /// Fail calls still running `timeout` from now (the earlier deadline wins).
    pub fn with_timeout(mut self, timeout: Duration) -> Ctx {
        let at = Instant::now() + timeout;
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        self
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.iter().any(CancelToken::is_cancelled)
    }

    /// `Err` once cancelled or past the deadline; backends call it before every request.
    pub fn check(&self, op: &'static str, key: &str) -> Result<(), StorageError> {
        if self.is_cancelled() {
            return Err(StorageError::new(StorageErrorKind::Cancelled, op, key));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(StorageError::new(StorageErrorKind::Timeout, op, key));
        }
        Ok(())
    }

    /// [`Ctx::check`] as an I/O error, for checks inside `Read`/`Write` implementations; the
    /// storage error travels inside and is recovered by [`StorageError::from_stream`].
    pub fn check_io(&self, op: &'static str, key: &str) -> std::io::Result<()> {
        self.check(op, key).map_err(std::io::Error::other)
    }
}

impl StorageError {
    /// Recover the storage error a streamed body carried through `std::io::Error` (a
    /// cancellation, a deadline, a backend failure), or classify a plain I/O error.
    pub fn from_stream(op: &'static str, key: &str, e: std::io::Error) -> StorageError {
        if e.get_ref().is_some_and(|inner| inner.is::<StorageError>()) {
            let inner = e.into_inner().expect("checked above");
            return *inner.downcast::<StorageError>().expect("checked above");
        }
        StorageError::io(op, key, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_and_deadlines_fail_calls_by_kind() {
        let token = CancelToken::new();
        let ctx = Ctx::background().with_cancel(&token);
        assert!(ctx.check("get", "k").is_ok());
        token.cancel();
        assert_eq!(ctx.check("get", "k").unwrap_err().kind(), StorageErrorKind::Cancelled);
        let narrower = CancelToken::new();
        let both = Ctx::background().with_cancel(&CancelToken::new()).with_cancel(&narrower);
        narrower.cancel();
        assert!(both.is_cancelled(), "any token cancels");
        let late = Ctx::background().with_timeout(Duration::ZERO);
        assert_eq!(late.check("get", "k").unwrap_err().kind(), StorageErrorKind::Timeout);
        let err = late.check_io("reading", "k").unwrap_err();
        assert_eq!(StorageError::from_stream("reading", "k", err).kind(), StorageErrorKind::Timeout);
    }
}
