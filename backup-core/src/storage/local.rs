//! A repository on a local (or mounted) filesystem.
//!
//! Writes are durable the POSIX way: a temporary file in the destination directory, fsync, then
//! rename (overwrite) or link (create-if-absent, which fails atomically when the name exists),
//! then fsync of the directory so the new name survives a crash. Temporary files start with `.`
//! and are invisible to `list`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::Rng;

use super::{validate_key, ObjectMeta, ObjectWriter, PutMode, PutOutcome, Storage, StorageError};

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

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn writer(&self, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let path = self.path(key)?;
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
            key: key.to_string(),
            dir,
            path,
            temp,
            mode,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        }))
    }

    fn get(&self, key: &str) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let file = File::open(self.path(key)?).map_err(|e| StorageError::io("opening", key, e))?;
        Ok(Box::new(file))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        let mut file = File::open(self.path(key)?).map_err(|e| StorageError::io("opening", key, e))?;
        file.seek(SeekFrom::Start(range.start)).map_err(|e| StorageError::io("reading", key, e))?;
        let mut out = Vec::new();
        file.take(range.end.saturating_sub(range.start))
            .read_to_end(&mut out)
            .map_err(|e| StorageError::io("reading", key, e))?;
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match fs::metadata(self.path(key)?) {
            Ok(m) if m.is_file() => {
                Ok(Some(ObjectMeta { key: key.to_string(), size: m.len(), modified: m.modified().ok() }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("inspecting", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the directory the prefix names, then filter by the rest of it.
        let start = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("listing", &dir.display().to_string(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io("listing", &dir.display().to_string(), e))?;
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue; // in-flight temporary file
                }
                let path = entry.path();
                let rel = path.strip_prefix(&self.root).unwrap().to_string_lossy().into_owned();
                let meta = entry.metadata().map_err(|e| StorageError::io("inspecting", &rel, e))?;
                if meta.is_dir() {
                    // Keys below are "rel/…": worth a visit only if one of them can match.
                    let dir_prefix = format!("{rel}/");
                    if prefix.starts_with(&dir_prefix) || dir_prefix.starts_with(prefix) {
                        stack.push(path);
                    }
                } else if rel.starts_with(prefix) {
                    out.push(ObjectMeta { key: rel, size: meta.len(), modified: meta.modified().ok() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn abort_stale_uploads(&self, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError> {
        let start = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut removed = 0;
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_string_lossy().into_owned();
                let Ok(meta) = entry.metadata() else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                if meta.is_dir() {
                    stack.push(path);
                } else if name.starts_with('.') && name.ends_with(".tmp") && rel.starts_with(prefix.trim_end_matches(|c| c != '/')) {
                    let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                    if age >= older_than {
                        fs::remove_file(&path).map_err(|e| StorageError::io("deleting", &rel, e))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap()).map_err(|e| StorageError::io("syncing directory for", key, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("deleting", key, e)),
        }
    }
}

struct LocalWriter {
    key: String,
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    mode: PutMode,
    file: Option<BufWriter<File>>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("writer used after commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer used after commit").flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<PutOutcome, StorageError> {
        let key = self.key.clone();
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
        let _ = fs::remove_file(&self.temp);
        sync_dir(&self.dir).map_err(|e| StorageError::io("syncing directory for", &key, e))?;
        Ok(outcome)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Abandoned or committed: either way the temporary name must not linger.
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
        let w = s.writer("a/x", PutMode::IfAbsent).unwrap();
        std::mem::forget(w); // as if the writer's process were killed
        let w2 = s.writer("b/y", PutMode::IfAbsent).unwrap();
        std::mem::forget(w2);
        assert_eq!(s.abort_stale_uploads("a/", std::time::Duration::from_secs(3600)).unwrap(), 0, "too young");
        assert_eq!(s.abort_stale_uploads("a/", std::time::Duration::ZERO).unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("b")).unwrap().count(), 1, "another prefix was touched");
    }

    #[test]
    fn committed_objects_are_plain_files_and_temps_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        s.put("a/b/c", b"hello", PutMode::IfAbsent).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/c")).unwrap(), b"hello");
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
    }
}
