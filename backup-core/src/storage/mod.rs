//! One storage trait for every place a repository can live.
//!
//! The trait is shaped after object stores (S3, GCS, Azure Blob), not after POSIX: there is no
//! rename, no directory, no append. An object appears whole when its writer commits, or not at
//! all; keys are `/`-separated strings; listing is by key prefix. "Create only if absent" is a
//! first-class write mode because the WAL archive must never overwrite a segment.
//!
//! Every backend runs the same [`conformance`] suite.

pub mod conformance;
mod local;

use std::fmt;
use std::io::{Read, Write};
use std::ops::Range;
use std::time::SystemTime;

pub use local::LocalStorage;

/// Whether a write may replace an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    /// Conditional create: if the key exists, the write changes nothing and reports
    /// [`PutOutcome::AlreadyExists`].
    IfAbsent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// A streaming upload. Bytes written are invisible to readers until [`ObjectWriter::commit`]
/// returns; dropping the writer without committing abandons the upload.
pub trait ObjectWriter: Write + Send {
    /// Make the object durable and visible. Returns only once it would survive a crash.
    fn commit(self: Box<Self>) -> Result<PutOutcome, StorageError>;
}

pub trait Storage: Send + Sync + fmt::Debug {
    /// Where this storage points, for messages (`/var/lib/pgbackup/repo`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Start a streaming upload of `key`.
    fn writer(&self, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError>;

    /// Stream an object's contents. [`StorageError::NotFound`] when it does not exist.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send + '_>, StorageError>;

    /// Bytes `range` of an object; a range running past the end is cut at the end.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError>;

    /// Size and time of an object, `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Every object whose key starts with `prefix` (not only at a `/`), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Remove an object. Removing a missing object succeeds, as on object stores.
    fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Discard uploads under `prefix` that were started and never committed (a writer killed
    /// mid-upload) at least `older_than` ago. Returns how many were discarded. Object stores
    /// map this to aborting multipart uploads.
    fn abort_stale_uploads(&self, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError>;

    /// Write a whole object from memory.
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StorageError> {
        let mut w = self.writer(key, mode)?;
        w.write_all(data).map_err(|e| StorageError::io("writing", key, e))?;
        w.commit()
    }

    /// Read a whole object into memory (for small objects: manifests, repository info).
    fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        self.get(key)?.read_to_end(&mut out).map_err(|e| StorageError::io("reading", key, e))?;
        Ok(out)
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.head(key)?.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{op} {key}: {cause}")]
    Io { op: &'static str, key: String, cause: std::io::Error },
}

impl StorageError {
    pub fn io(op: &'static str, key: &str, cause: std::io::Error) -> StorageError {
        if cause.kind() == std::io::ErrorKind::NotFound && (op == "reading" || op == "opening") {
            return StorageError::NotFound { key: key.to_string() };
        }
        StorageError::Io { op, key: key.to_string(), cause }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// Keys are relative, `/`-separated, made of portable characters, and never climb out of the
/// repository: the same key must mean the same thing on a filesystem and in a bucket.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = |reason| Err(StorageError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 characters");
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("empty, '.' or '..' path component");
        }
        if part.starts_with('.') {
            return bad("components may not start with '.' (reserved for temporary files)");
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return bad("only letters, digits, '.', '_' and '-' are allowed");
        }
    }
    Ok(())
}
