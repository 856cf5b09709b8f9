//! One storage trait for every place a repository can live.
//!
//! The trait is shaped after object stores (S3, GCS, Azure Blob), not after POSIX: there is no
//! rename, no directory, no append. An object appears whole when its writer commits, or not at
//! all; keys are `/`-separated strings; listing is by key prefix, streamed, optionally one level
//! at a time (a delimiter), so finding the backups' manifests never lists their data objects.
//! Reads take byte ranges, so a restore reads a file out of a bundle without asking the size of
//! the bundle first. "Create only if absent" is a first-class write mode because the WAL archive
//! must never overwrite a segment.
//!
//! Every call takes a [`Ctx`] (deadline and cancellation) and fails with a [`StorageError`]
//! whose [`StorageErrorKind`] tells the caller what it can do about it.
//!
//! **Which backend** is decided in one place, [`open`], from a [`Location`] parsed out of the
//! configuration. A new backend is a new `Location` variant, a module beside [`local`], and a
//! test that runs the [`conformance`] suite on it.
//!
//! **Blocking code and async SDKs.** The trait is blocking: its callers are `archive_command`,
//! the archiver process, and threads of a backup worker, none of which runs an async executor,
//! and a PostgreSQL backend's main thread must stay the only thread that runs its signal
//! handlers. The async backends (the S3 SDK, object_store for GCS and Azure) therefore share
//! one Tokio runtime for the process ([`runtime`]),
//! created on first use on threads spawned with every signal blocked
//! ([`crate::threads`]); each call is `block_on` from the caller's thread, bounded by the
//! `Ctx` deadline and abandoned when its token is cancelled. No runtime is ever entered from
//! inside a PostgreSQL callback without that guard, and none exists while only local storage is
//! configured.
//!
//! Every backend runs the same [`conformance`] suite; [`unreliable::UnreliableStorage`] wraps
//! any backend with injected failures for tests.

pub mod conformance;
pub mod cloud;
mod ctx;
mod error;
pub(crate) mod https;
mod local;
mod parts;
mod remote_io;
pub(crate) mod runtime;
pub mod s3;
pub mod unreliable;

use std::fmt;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use ctx::{CancelToken, Ctx};
pub use error::{BoxError, StorageError, StorageErrorKind};
pub use local::{filesystem_space, LocalStorage};
pub use cloud::{AzureCredentials, AzureLocation, CloudLocation, CloudStorage, GcsCredentials, GcsLocation};
pub use https::HttpTimeouts;
pub use s3::{S3Credentials, S3Location, S3Storage, S3Timeouts, Secret};

/// Where a repository lives, as the configuration names it (`type = "local"`, `"s3"`, `"gcs"`,
/// `"azure"`). `Debug` and `Display` never show a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local { path: PathBuf },
    /// Boxed: far larger than a path, and rare.
    S3(Box<S3Location>),
    Gcs(Box<GcsLocation>),
    Azure(Box<AzureLocation>),
}

impl Location {
    /// The directory, for backends that are one (checks such as "not inside the data
    /// directory" only make sense there).
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local { path } => Some(path),
            Location::S3(_) | Location::Gcs(_) | Location::Azure(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local { path } => write!(f, "{}", path.display()),
            Location::S3(s3) => f.write_str(&s3.url()),
            Location::Gcs(gcs) => f.write_str(&gcs.url()),
            Location::Azure(azure) => f.write_str(&azure.url()),
        }
    }
}

/// The backend for `location`: the one place a storage kind is turned into a store.
pub fn open(location: &Location) -> Result<Box<dyn Storage>, StorageError> {
    match location {
        Location::Local { path } => Ok(Box::new(LocalStorage::new(path))),
        Location::S3(s3) => Ok(Box::new(S3Storage::open(s3)?)),
        Location::Gcs(gcs) => Ok(Box::new(CloudStorage::open_gcs(gcs)?)),
        Location::Azure(azure) => Ok(Box::new(CloudStorage::open_azure(azure)?)),
    }
}

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

/// One level of a listing with a delimiter: objects directly under the prefix, and the
/// "directories" (common prefixes, each ending in `/`) below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub prefixes: Vec<String>,
    pub objects: Vec<ObjectMeta>,
}

/// Which bytes of an object to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end`; a range running past the end of the object is cut at the end.
    Bounded(Range<u64>),
    /// The last `n` bytes (all of them if the object is shorter).
    Suffix(u64),
}

impl From<Range<u64>> for ByteRange {
    fn from(r: Range<u64>) -> ByteRange {
        ByteRange::Bounded(r)
    }
}

pub type ObjectReader<'a> = Box<dyn Read + Send + 'a>;

/// Objects in key order; each item may fail (a page of an object store's listing).
pub type ObjectStream<'a> = Box<dyn Iterator<Item = Result<ObjectMeta, StorageError>> + Send + 'a>;

/// A streaming upload. Bytes written are invisible to readers until [`ObjectWriter::commit`]
/// returns; dropping the writer without committing abandons the upload.
pub trait ObjectWriter: Write + Send {
    /// Make the object durable and visible. Returns only once it would survive a crash.
    fn commit(self: Box<Self>) -> Result<PutOutcome, StorageError>;
}

pub trait Storage: Send + Sync + fmt::Debug {
    /// Where this storage points, for messages (`/var/lib/pgbackup/repo`, `s3://bucket/prefix`).
    /// Never holds credentials.
    fn location(&self) -> String;

    /// Start a streaming upload of `key`. The writer keeps `ctx`: a cancellation or deadline
    /// fails its next write or its commit.
    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError>;

    /// Stream bytes of an object. [`StorageErrorKind::NotFound`] when it does not exist.
    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError>;

    /// Size and time of an object, `None` when it does not exist.
    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Every object whose key starts with `prefix` (not only at a `/`), in key order, streamed.
    fn list(&self, ctx: &Ctx, prefix: &str) -> Result<ObjectStream<'_>, StorageError>;

    /// One level below `prefix` (which ends in `/` or is empty): its objects and its
    /// sub-prefixes, each in key order.
    fn list_with_delimiter(&self, ctx: &Ctx, prefix: &str) -> Result<Listing, StorageError>;

    /// Remove an object. Removing a missing object succeeds, as on object stores.
    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError>;

    /// Discard uploads under `prefix` that were started and never committed (a writer killed
    /// mid-upload) at least `older_than` ago. Returns how many were discarded. Object stores
    /// map this to aborting multipart uploads.
    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError>;

    /// Stream a whole object.
    fn get(&self, ctx: &Ctx, key: &str) -> Result<ObjectReader<'_>, StorageError> {
        self.get_range(ctx, key, ByteRange::Bounded(0..u64::MAX))
    }

    /// Write a whole object from memory.
    fn put(&self, ctx: &Ctx, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StorageError> {
        let mut w = self.writer(ctx, key, mode)?;
        w.write_all(data).map_err(|e| StorageError::from_stream("writing", key, e))?;
        w.commit()
    }

    /// Read a whole object into memory (for small objects: manifests, repository info).
    fn get_bytes(&self, ctx: &Ctx, key: &str) -> Result<Vec<u8>, StorageError> {
        read_all(self.get(ctx, key)?, key)
    }

    /// Read part of an object into memory.
    fn get_range_bytes(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<Vec<u8>, StorageError> {
        read_all(self.get_range(ctx, key, range)?, key)
    }

    fn exists(&self, ctx: &Ctx, key: &str) -> Result<bool, StorageError> {
        Ok(self.head(ctx, key)?.is_some())
    }

    /// [`Storage::list`], collected.
    fn list_all(&self, ctx: &Ctx, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.list(ctx, prefix)?.collect()
    }
}

/// A store with several owners: a test keeps a handle on an [`unreliable::UnreliableStorage`]
/// to inject faults into the repository that owns it.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        (**self).writer(ctx, key, mode)
    }
    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError> {
        (**self).get_range(ctx, key, range)
    }
    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        (**self).head(ctx, key)
    }
    fn list(&self, ctx: &Ctx, prefix: &str) -> Result<ObjectStream<'_>, StorageError> {
        (**self).list(ctx, prefix)
    }
    fn list_with_delimiter(&self, ctx: &Ctx, prefix: &str) -> Result<Listing, StorageError> {
        (**self).list_with_delimiter(ctx, prefix)
    }
    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError> {
        (**self).delete(ctx, key)
    }
    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError> {
        (**self).abort_stale_uploads(ctx, prefix, older_than)
    }
}

fn read_all(mut r: ObjectReader<'_>, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| StorageError::from_stream("reading", key, e))?;
    Ok(out)
}

/// Keys are relative, `/`-separated, made of portable characters, and never climb out of the
/// repository: the same key must mean the same thing on a filesystem and in a bucket.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    validate(key, false)
}

/// A listing prefix: like a key, but may be empty and may end in `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate(prefix, true)
}

fn validate(key: &str, prefix: bool) -> Result<(), StorageError> {
    let bad = |reason: &'static str| Err(StorageError::new(StorageErrorKind::InvalidKey, "using", key).with_source(reason));
    if key.is_empty() || key.len() > 1024 {
        return bad("keys are 1 to 1024 characters");
    }
    let body = if prefix { key.strip_suffix('/').unwrap_or(key) } else { key };
    for part in body.split('/') {
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
