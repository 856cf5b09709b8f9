//! Looking into a repository the way the product does: through `backup_core::storage`, by
//! object key, never by opening its files.
//!
//! Tests check what the repository holds (which objects exist, their bytes) and damage it on
//! purpose (a flipped bit, a deleted object). Doing that through the storage trait keeps them
//! independent of where the repository lives: [`Archiver::location`](crate::Archiver::location)
//! is the one place that says "a local directory", and pointing it at an object store runs the
//! same assertions there.
//!
//! Every call panics with the location, the key and the storage error's whole chain: in a test,
//! a repository that cannot be read is a failure to report, not a case to handle.
//!
//! Object keys, as the repository contract lays them out: WAL segment `NAME` at
//! `wal/<first 16 hex digits of NAME>/NAME` ([`wal_object_key`]), timeline history files at
//! `wal/history/NAME`, a backup's objects under `backup/<id>/` (`manifest`, `data/NNNNNN`).

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use backup_core::error::report;
use backup_core::storage::{self, Ctx, Location, ObjectMeta, PutMode, Storage, StorageError};

use crate::{give_to_postgres, COMMAND_TIMEOUT};

/// Where the contract says the object for WAL file `name` (a segment, `.partial` or `.backup`
/// file: 24 hex digits first; or a `.history` file) lives in the repository. Written down here
/// independently of the product's own mapping, so that a change of layout fails the tests.
pub fn wal_object_key(name: &str) -> String {
    if name.ends_with(".history") {
        format!("wal/history/{name}")
    } else {
        format!("wal/{}/{name}", &name[..16])
    }
}

/// The last `/`-separated component of an object key (the WAL file name of a `wal/` key).
pub fn key_file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// A repository seen through the storage trait, opened with the same constructor the product
/// uses (`backup_core::storage::open`).
pub struct RepoInspector {
    location: Location,
    storage: Box<dyn Storage>,
}

impl fmt::Debug for RepoInspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoInspector({})", self.location)
    }
}

impl RepoInspector {
    pub fn open(location: Location) -> RepoInspector {
        let storage =
            storage::open(&location).unwrap_or_else(|e| panic!("open the repository at {location}: {}", report(&e)));
        RepoInspector { location, storage }
    }

    /// A context for one call: a hung store fails the test instead of hanging it.
    pub fn ctx(&self) -> Ctx {
        Ctx::background().with_timeout(COMMAND_TIMEOUT)
    }

    #[track_caller]
    fn check<T>(&self, what: &str, key: &str, r: Result<T, StorageError>) -> T {
        r.unwrap_or_else(|e| panic!("repository {}: {what} {key:?}: {}", self.location, report(&e)))
    }

    /// Whether object `key` exists.
    #[track_caller]
    pub fn exists(&self, key: &str) -> bool {
        self.check("exists", key, self.storage.exists(&self.ctx(), key))
    }

    /// Every object whose key starts with `prefix` (`""`: the whole repository), in key order.
    #[track_caller]
    pub fn objects(&self, prefix: &str) -> Vec<ObjectMeta> {
        self.check("list", prefix, self.storage.list_all(&self.ctx(), prefix))
    }

    /// The keys of [`RepoInspector::objects`].
    #[track_caller]
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects(prefix).into_iter().map(|o| o.key).collect()
    }

    /// The whole object `key`, which must exist.
    #[track_caller]
    pub fn read(&self, key: &str) -> Vec<u8> {
        self.check("read", key, self.storage.get_bytes(&self.ctx(), key))
    }

    /// The whole object `key`, `None` when it does not exist (any other error panics).
    #[track_caller]
    pub fn read_if_exists(&self, key: &str) -> Option<Vec<u8>> {
        match self.storage.get_bytes(&self.ctx(), key) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("repository {}: read {key:?}: {}", self.location, report(&e)),
        }
    }

    /// Replace (or create) object `key` with `bytes`.
    ///
    /// On a local repository the test process (root) writes a new file and renames it over
    /// the old one, so the file and any directory the write had to create would belong to
    /// root; they are given back to `postgres` (with the replaced file's mode), so the server
    /// and `wal-archiver`, which run as `postgres`, find the object as they would have left it.
    #[track_caller]
    pub fn write(&self, key: &str, bytes: &[u8]) {
        let local = self.location.local_path().map(|root| LocalObject::before_write(root, key));
        self.check("write", key, self.storage.put(&self.ctx(), key, bytes, PutMode::Overwrite));
        if let Some(local) = local {
            local.after_write();
        }
    }

    /// Remove object `key` (a file lost from the repository).
    #[track_caller]
    pub fn delete(&self, key: &str) {
        self.check("delete", key, self.storage.delete(&self.ctx(), key))
    }

    /// Flip the bits of `mask` in the byte in the middle of object `key` and write it back
    /// (damage as a failing disk or a tampering hand would do it); returns the offset.
    #[track_caller]
    pub fn flip_middle_bit(&self, key: &str, mask: u8) -> usize {
        let mut bytes = self.read(key);
        assert!(!bytes.is_empty(), "repository {}: object {key:?} is empty, nothing to flip", self.location);
        let mid = bytes.len() / 2;
        bytes[mid] ^= mask;
        self.write(key, &bytes);
        mid
    }
}

/// What a local write needs to undo root's ownership afterwards.
struct LocalObject {
    path: PathBuf,
    /// Mode of the file being replaced, if it existed.
    mode: Option<u32>,
    /// Directories between the repository root and the object that do not exist yet,
    /// outermost first.
    missing_dirs: Vec<PathBuf>,
}

impl LocalObject {
    fn before_write(root: &Path, key: &str) -> LocalObject {
        let path = root.join(key);
        let mode = fs::metadata(&path).ok().filter(|m| m.is_file()).map(|m| m.permissions().mode() & 0o7777);
        let mut missing_dirs = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d.exists() || !d.starts_with(root) {
                break;
            }
            missing_dirs.push(d.to_path_buf());
            dir = d.parent();
        }
        missing_dirs.reverse();
        LocalObject { path, mode, missing_dirs }
    }

    fn after_write(self) {
        for d in &self.missing_dirs {
            give_to_postgres(d);
        }
        give_to_postgres(&self.path);
        if let Some(mode) = self.mode {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", self.path.display()));
        }
    }
}
