//! A repository on a local (or mounted) filesystem.
//!
//! Writes are durable the POSIX way: a temporary file in the destination directory, fsync, then
//! rename (overwrite) or link (create-if-absent, which fails atomically when the name exists),
//! then fsync of the directory so the new name survives a crash. Temporary files start with `.`
//! and are invisible to listings.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

use super::{
    validate_key, validate_prefix, ByteRange, Ctx, Listing, ObjectMeta, ObjectReader, ObjectStream, ObjectWriter, PutMode,
    PutOutcome, Storage, StorageError,
};

/// Bytes free (for an unprivileged writer) and in all on the filesystem holding `path`: what
/// a local repository has room for.
pub fn filesystem_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// The directory a prefix lies in, and the part of the prefix naming entries inside it.
    fn prefix_dir<'p>(&self, prefix: &'p str) -> Result<(PathBuf, &'p str, &'p str), StorageError> {
        validate_prefix(prefix)?;
        Ok(match prefix.rfind('/') {
            Some(i) => (self.root.join(&prefix[..i]), &prefix[..=i], &prefix[i + 1..]),
            None => (self.root.clone(), "", prefix),
        })
    }

    /// `create_dir_all`, then fsync the parent of every directory it created, so a committed
    /// object's directory entry chain is durable too.
    fn create_dirs(&self, dir: &Path, key: &str) -> Result<(), StorageError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(|e| StorageError::io("creating directory for", key, e))?;
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent() {
                sync_dir(parent).map_err(|e| StorageError::io("syncing directory for", key, e))?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A committed object or a directory, named as it sorts among keys.
struct Entry {
    /// The file name, or the directory name plus `/`.
    name: String,
    is_dir: bool,
    meta: fs::Metadata,
}

/// Entries of `dir` that are committed objects or directories, sorted so that a depth-first
/// walk yields keys in byte order: a directory sorts as its name plus `/`.
fn sorted_entries(dir: &Path, key_prefix: &str) -> Result<Vec<Entry>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing", key_prefix, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", key_prefix, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // in-flight temporary file
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted as we list
            Err(e) => return Err(StorageError::io("inspecting", &format!("{key_prefix}{name}"), e)),
        };
        let is_dir = meta.is_dir();
        if is_dir || meta.is_file() {
            out.push(Entry { name: if is_dir { format!("{name}/") } else { name }, is_dir, meta });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A lazy depth-first walk: memory holds one directory's entries per level, not the listing.
struct Walk {
    ctx: Ctx,
    root: PathBuf,
    prefix: String,
    /// Per level: the key prefix of the directory, and its remaining entries (reversed).
    stack: Vec<(String, Vec<Entry>)>,
}

impl Iterator for Walk {
    type Item = Result<ObjectMeta, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (dir_key, entries) = self.stack.last_mut()?;
            let Some(Entry { name, is_dir, meta }) = entries.pop() else {
                self.stack.pop();
                continue;
            };
            let key = format!("{dir_key}{name}");
            if let Err(e) = self.ctx.check("listing", &self.prefix) {
                self.stack.clear();
                return Some(Err(e));
            }
            if is_dir {
                // Keys below are "key…": worth a visit only if one of them can match.
                if self.prefix.starts_with(&key) || key.starts_with(&self.prefix) {
                    match sorted_entries(&self.root.join(&key), &key) {
                        Ok(mut below) => {
                            below.reverse();
                            self.stack.push((key, below));
                        }
                        Err(e) => {
                            self.stack.clear();
                            return Some(Err(e));
                        }
                    }
                }
            } else if key.starts_with(&self.prefix) {
                return Some(Ok(ObjectMeta { key, size: meta.len(), modified: meta.modified().ok() }));
            }
        }
    }
}

/// A file read as a byte range; checks the call's context between reads.
struct RangeReader {
    ctx: Ctx,
    key: String,
    inner: io::Take<File>,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ctx.check_io("reading", &self.key)?;
        self.inner.read(buf)
    }
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let path = self.path(key)?;
        ctx.check("writing", key)?;
        let dir = path.parent().expect("validated key has a parent").to_path_buf();
        self.create_dirs(&dir, key)?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let temp = dir.join(format!(".{name}.{}.{:08x}.tmp", std::process::id(), rand::thread_rng().gen::<u32>()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| StorageError::io("creating", key, e))?;
        Ok(Box::new(LocalWriter {
            ctx: ctx.clone(),
            key: key.to_string(),
            dir,
            path,
            temp,
            mode,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        }))
    }

    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError> {
        let path = self.path(key)?;
        ctx.check("reading", key)?;
        let mut file = File::open(path).map_err(|e| StorageError::io("opening", key, e))?;
        let (start, len) = match range {
            ByteRange::Bounded(r) => (r.start, r.end.saturating_sub(r.start)),
            ByteRange::Suffix(n) => {
                let size = file.metadata().map_err(|e| StorageError::io("inspecting", key, e))?.len();
                (size.saturating_sub(n), n)
            }
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start)).map_err(|e| StorageError::io("reading", key, e))?;
        }
        Ok(Box::new(RangeReader { ctx: ctx.clone(), key: key.to_string(), inner: file.take(len) }))
    }

    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key)?;
        ctx.check("inspecting", key)?;
        match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { key: key.to_string(), size: m.len(), modified: m.modified().ok() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("inspecting", key, e)),
        }
    }

    fn list(&self, ctx: &Ctx, prefix: &str) -> Result<ObjectStream<'_>, StorageError> {
        ctx.check("listing", prefix)?;
        // Walk only the directory the prefix names, then filter by the rest of it.
        let (dir, dir_key, _) = self.prefix_dir(prefix)?;
        let mut entries = sorted_entries(&dir, dir_key)?;
        entries.reverse();
        Ok(Box::new(Walk { ctx: ctx.clone(), root: self.root.clone(), prefix: prefix.to_string(), stack: vec![(dir_key.to_string(), entries)] }))
    }

    fn list_with_delimiter(&self, ctx: &Ctx, prefix: &str) -> Result<Listing, StorageError> {
        ctx.check("listing", prefix)?;
        let (dir, dir_key, name_start) = self.prefix_dir(prefix)?;
        let mut listing = Listing::default();
        for Entry { name, is_dir, meta } in sorted_entries(&dir, dir_key)? {
            if !name.starts_with(name_start) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            if is_dir {
                // As on an object store, a prefix exists only while an object is under it (a
                // deleted backup leaves empty directories behind).
                if self.list(ctx, &key)?.next().transpose()?.is_some() {
                    listing.prefixes.push(key);
                }
            } else {
                listing.objects.push(ObjectMeta { key, size: meta.len(), modified: meta.modified().ok() });
            }
        }
        Ok(listing)
    }

    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError> {
        let (start, dir_key, _) = self.prefix_dir(prefix)?;
        let mut removed = 0;
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            ctx.check("aborting uploads under", prefix)?;
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("listing", dir_key, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io("listing", dir_key, e))?;
                let path = entry.path();
                let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_string_lossy().into_owned();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io("inspecting", &rel, e)),
                };
                let name = entry.file_name().to_string_lossy().into_owned();
                if meta.is_dir() {
                    stack.push(path);
                } else if name.starts_with('.') && name.ends_with(".tmp") && rel.starts_with(dir_key) {
                    let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                    if age >= older_than {
                        match fs::remove_file(&path) {
                            Ok(()) => removed += 1,
                            // Its writer committed or abandoned it meanwhile.
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(StorageError::io("deleting", &rel, e)),
                        }
                    }
                }
            }
        }
        Ok(removed)
    }

    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        ctx.check("deleting", key)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap()).map_err(|e| StorageError::io("syncing directory for", key, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("deleting", key, e)),
        }
    }
}

struct LocalWriter {
    ctx: Ctx,
    key: String,
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    mode: PutMode,
    file: Option<BufWriter<File>>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ctx.check_io("writing", &self.key)?;
        self.file.as_mut().expect("writer used after commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer used after commit").flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<PutOutcome, StorageError> {
        let key = self.key.clone();
        self.ctx.check("committing", &key)?;
        let file = self.file.take().unwrap();
        let file = file.into_inner().map_err(|e| StorageError::io("writing", &key, e.into_error()))?;
        file.sync_all().map_err(|e| StorageError::io("syncing", &key, e))?;
        drop(file);
        let outcome = match self.mode {
            PutMode::Overwrite => {
                fs::rename(&self.temp, &self.path).map_err(|e| StorageError::io("renaming into", &key, e))?;
                PutOutcome::Created
            }
            // link(2) refuses an existing name atomically; the temporary name goes afterwards.
            PutMode::IfAbsent => match fs::hard_link(&self.temp, &self.path) {
                Ok(()) => PutOutcome::Created,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => PutOutcome::AlreadyExists,
                Err(e) => return Err(StorageError::io("linking into", &key, e)),
            },
        };
        sync_dir(&self.dir).map_err(|e| StorageError::io("syncing directory for", &key, e))?;
        Ok(outcome)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Abandoned, or committed by link (the object has its real name now): the temporary
        // name must not linger. Best effort: what a failure leaves, abort_stale_uploads collects.
        self.file.take();
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        super::super::conformance::run_all(&LocalStorage::new(dir.path().join("repo")));
    }

    #[test]
    fn stale_uploads_are_aborted_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let ctx = Ctx::background();
        let w = s.writer(&ctx, "a/x", PutMode::IfAbsent).unwrap();
        std::mem::forget(w); // as if the writer's process were killed
        let w2 = s.writer(&ctx, "b/y", PutMode::IfAbsent).unwrap();
        std::mem::forget(w2);
        assert_eq!(s.abort_stale_uploads(&ctx, "a/", std::time::Duration::from_secs(3600)).unwrap(), 0, "too young");
        assert_eq!(s.abort_stale_uploads(&ctx, "a/", std::time::Duration::ZERO).unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("b")).unwrap().count(), 1, "another prefix was touched");
    }

    #[test]
    fn committed_objects_are_plain_files_and_temps_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let ctx = Ctx::background();
        s.put(&ctx, "a/b/c", b"hello", PutMode::IfAbsent).unwrap();
        s.put(&ctx, "a/b/d", b"hello", PutMode::Overwrite).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/c")).unwrap(), b"hello");
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "temporary file left behind: {names:?}");
    }
}
