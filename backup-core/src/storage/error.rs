//! What can go wrong talking to a store, as kinds a caller can act on.
//!
//! Callers decide by [`StorageErrorKind`], never by message text: a WAL fetch turns
//! [`NotFound`](StorageErrorKind::NotFound) into "not archived" and everything else into a
//! retried, then aborted, recovery; a copy tells [`Cancelled`](StorageErrorKind::Cancelled)
//! from a failure. The backend's own error is kept as the `source`, so a report shows the
//! whole chain.

use std::fmt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object does not exist.
    NotFound,
    /// A conditional create found the object already there (where a backend reports it as an
    /// error rather than as [`PutOutcome::AlreadyExists`](super::PutOutcome::AlreadyExists)).
    AlreadyExists,
    /// A condition of the request did not hold (an object store's 412).
    Precondition,
    /// The store refused the operation (file mode, bucket policy).
    Permission,
    /// The object is under an object lock (S3 Object Lock) whose retention date has not
    /// passed: it cannot be deleted yet, by design. Retention skips it and tries again later.
    Locked,
    /// The store does not accept our credentials.
    Unauthenticated,
    /// Worth retrying: a network blip, a throttled request, a busy filesystem.
    Transient,
    /// The call's deadline passed before it finished.
    Timeout,
    /// The caller cancelled the call (a backup stopped by SIGTERM).
    Cancelled,
    /// The key is not one a repository may use.
    InvalidKey,
    /// Anything else: a full disk, an unexpected answer.
    Other,
}

impl StorageErrorKind {
    fn describe(self) -> &'static str {
        match self {
            StorageErrorKind::NotFound => "does not exist",
            StorageErrorKind::AlreadyExists => "already exists",
            StorageErrorKind::Precondition => "precondition failed",
            StorageErrorKind::Permission => "permission denied",
            StorageErrorKind::Locked => "retained by an object lock",
            StorageErrorKind::Unauthenticated => "credentials refused",
            StorageErrorKind::Transient => "temporary failure",
            StorageErrorKind::Timeout => "timed out",
            StorageErrorKind::Cancelled => "cancelled",
            StorageErrorKind::InvalidKey => "invalid object key",
            StorageErrorKind::Other => "failed",
        }
    }
}

/// `<op> <key>: <kind>`, with the backend's error as [`std::error::Error::source`].
#[derive(Debug)]
pub struct StorageError {
    kind: StorageErrorKind,
    op: &'static str,
    key: String,
    source: Option<BoxError>,
}

impl StorageError {
    pub fn new(kind: StorageErrorKind, op: &'static str, key: &str) -> StorageError {
        StorageError { kind, op, key: key.to_string(), source: None }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> StorageError {
        self.source = Some(source.into());
        self
    }

    /// The same failure, known better: an access denied that an object lock explains.
    pub fn with_kind(mut self, kind: StorageErrorKind) -> StorageError {
        self.kind = kind;
        self
    }

    pub fn not_found(op: &'static str, key: &str) -> StorageError {
        StorageError::new(StorageErrorKind::NotFound, op, key)
    }

    /// An I/O error of a filesystem backend, classified by its kind.
    pub fn io(op: &'static str, key: &str, cause: std::io::Error) -> StorageError {
        use std::io::ErrorKind as K;
        let kind = match cause.kind() {
            K::NotFound => StorageErrorKind::NotFound,
            K::AlreadyExists => StorageErrorKind::AlreadyExists,
            K::PermissionDenied => StorageErrorKind::Permission,
            K::TimedOut => StorageErrorKind::Timeout,
            K::Interrupted | K::WouldBlock => StorageErrorKind::Transient,
            _ => StorageErrorKind::Other,
        };
        StorageError::new(kind, op, key).with_source(cause)
    }

    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StorageErrorKind::NotFound
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.key, self.kind.describe())
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn io_errors_keep_their_cause_and_get_a_kind() {
        let e = StorageError::io("reading", "wal/x", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(e.kind(), StorageErrorKind::Permission);
        assert_eq!(e.to_string(), "reading wal/x: permission denied");
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
    }
}
