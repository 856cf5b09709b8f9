//! Copying files into the repository: parallel workers, small files packed into bundles, page
//! checksums verified on the way.
//!
//! Each worker owns one open bundle at a time and appends every small file to it as an
//! independent encoded stream; the manifest records (object, offset, stored size), so a restore
//! reads each file with one ranged get. A 10,000-relation cluster is therefore a few dozen
//! objects, not 10,000. Large files get an object each.
//!
//! The calling thread never copies: it sleeps, runs the caller's `tick` (progress reports,
//! cancellation checks: the only place an embedding server's API may be used), and joins.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::manifest::{BackupId, FileEntry, PageFailure};
use super::page::{check_page, PageCheck, BLCKSZ};
use super::scan::SourceFile;
use crate::codec;
use crate::repo::{RepoError, Repository};
use crate::storage::{ObjectWriter, PutMode};
use crate::wal::Lsn;

/// Files at least this large get an object of their own.
const OWN_OBJECT_SIZE: u64 = 4 << 20;
/// A bundle is closed once it holds this much.
const BUNDLE_TARGET: u64 = 16 << 20;
const READ_CHUNK: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub workers: usize,
    /// Pages newer than this were written during the backup: a checksum mismatch there is a
    /// torn read that WAL replay repairs, not corruption.
    pub start_lsn: Lsn,
    pub verify_checksums: bool,
    /// Read at most this many bytes per second in all (0: no limit), to spare production I/O.
    pub max_rate: u64,
}

/// Counters the copy updates as it goes, readable from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
}

#[derive(Debug, Default)]
pub struct CopyResult {
    pub files: Vec<FileEntry>,
    pub page_failures: Vec<PageFailure>,
    pub objects: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cancelled")]
    Cancelled,
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: io::Error },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// The error a source read returns once the copy is cancelled.
#[derive(Debug)]
struct CancelMarker;

impl std::fmt::Display for CancelMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backup cancelled")
    }
}

impl std::error::Error for CancelMarker {}

/// A failure to read the source file (as opposed to writing the repository), carried through
/// the codec's I/O error.
#[derive(Debug)]
struct SourceReadError(io::Error);

impl std::fmt::Display for SourceReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceReadError {}

/// Copy `files` into `backup/<id>/data/`. `tick` runs on the calling thread about five times a
/// second; returning `false` cancels the copy.
pub fn copy_files(
    repo: &Repository,
    id: &BackupId,
    mut files: Vec<SourceFile>,
    opts: &CopyOptions,
    progress: &Progress,
    tick: &mut dyn FnMut() -> bool,
) -> Result<CopyResult, CopyError> {
    // Largest first, so the long files start early and the tail is made of small ones.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rel.cmp(&b.rel)));
    progress.bytes_total.store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let throttle = Throttle { max_rate: opts.max_rate, started: std::time::Instant::now(), read: AtomicU64::new(0) };
    let object_seq = AtomicU64::new(0);
    let result = Mutex::new(CopyResult::default());
    let workers = opts.workers.max(1);

    let ended = crate::threads::Ended::default();
    let work = |_worker: usize| {
            let mut w = Worker { repo, id, opts, progress, cancel: &cancel, object_seq: &object_seq, bundle: None, throttle: &throttle };
            let outcome = w.run(&files, &next);
            let mut r = result.lock().unwrap();
            match outcome {
                Ok(done) => {
                    r.files.extend(done.files);
                    r.page_failures.extend(done.page_failures);
                    r.objects += done.objects;
                    Ok(())
                }
                Err(e) => {
                    cancel.store(true, Ordering::Relaxed);
                    Err(e)
                }
            }
    };
    std::thread::scope(|scope| {
        let handles = ended.spawn(scope, workers, &work);
        loop {
            if !tick() {
                cancel.store(true, Ordering::Relaxed);
            }
            if ended.wait(workers, Duration::from_millis(200)) {
                break;
            }
        }
        let mut first_error = None;
        for h in handles {
            if let Err(e) = h.join().expect("backup worker panicked") {
                // A worker stopped by another's failure reports Cancelled; keep the real cause.
                if first_error.is_none() || matches!(first_error, Some(CopyError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if cancel.load(Ordering::Relaxed) => Err(CopyError::Cancelled),
            None => Ok(()),
        }
    })?;
    let mut r = result.into_inner().unwrap();
    r.files.sort_by(|a, b| a.path.cmp(&b.path));
    r.page_failures.sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    Ok(r)
}

struct Bundle<'r> {
    key: String,
    writer: Box<dyn ObjectWriter + 'r>,
    offset: u64,
}

struct Worker<'a> {
    repo: &'a Repository,
    id: &'a BackupId,
    opts: &'a CopyOptions,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    object_seq: &'a AtomicU64,
    bundle: Option<Bundle<'a>>,
    throttle: &'a Throttle,
}

impl<'a> Worker<'a> {
    fn run(&mut self, files: &[SourceFile], next: &AtomicUsize) -> Result<CopyResult, CopyError> {
        let mut out = CopyResult::default();
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(CopyError::Cancelled);
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = files.get(i) else { break };
            if let Some(entry) = self.copy_one(file, &mut out)? {
                out.files.push(entry);
            }
            self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
        self.close_bundle(&mut out)?;
        Ok(out)
    }

    fn new_object_key(&self) -> String {
        let n = self.object_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}data/{:06}", self.id.prefix(), n)
    }

    fn copy_one(&mut self, file: &SourceFile, out: &mut CopyResult) -> Result<Option<FileEntry>, CopyError> {
        let handle = match File::open(&file.abs) {
            Ok(f) => f,
            // Dropped since the scan (a table, a database): WAL replay drops it too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CopyError::Read { path: file.abs.display().to_string(), cause: e }),
        };
        let mut reader = SourceReader {
            file: handle,
            rel: &file.rel,
            first_block: if self.opts.verify_checksums { file.first_block } else { None },
            start_lsn: self.opts.start_lsn.0,
            pos: 0,
            buf: Vec::new(),
            served: 0,
            failures: &mut out.page_failures,
            progress: self.progress,
            cancel: self.cancel,
            throttle: self.throttle,
        };
        let params = self.repo.encode_params();
        let own_object = file.size >= OWN_OBJECT_SIZE;
        if own_object {
            let key = self.new_object_key();
            let mut writer = self.repo.storage().writer(&key, PutMode::IfAbsent).map_err(RepoError::from)?;
            let aad = format!("{key}#{}", file.rel);
            let summary = codec::encode(&mut reader, &mut writer, &aad, params).map_err(|e| self.map_codec(e, &key, &file.rel))?;
            writer.commit().map_err(RepoError::from)?;
            out.objects += 1;
            self.progress.stored_bytes.fetch_add(summary.stored_size, Ordering::Relaxed);
            return Ok(Some(entry(file, &summary, key, 0)));
        }
        if self.bundle.is_none() {
            let key = self.new_object_key();
            let writer = self.repo.storage().writer(&key, PutMode::IfAbsent).map_err(RepoError::from)?;
            self.bundle = Some(Bundle { key, writer, offset: 0 });
        }
        let bundle = self.bundle.as_mut().unwrap();
        let aad = format!("{}#{}", bundle.key, file.rel);
        let key = bundle.key.clone();
        let offset = bundle.offset;
        let summary = codec::encode(&mut reader, &mut bundle.writer, &aad, params).map_err(|e| self.map_codec(e, &key, &file.rel))?;
        let bundle = self.bundle.as_mut().unwrap();
        bundle.offset += summary.stored_size;
        self.progress.stored_bytes.fetch_add(summary.stored_size, Ordering::Relaxed);
        let e = entry(file, &summary, key, offset);
        if bundle.offset >= BUNDLE_TARGET {
            self.close_bundle(out)?;
        }
        Ok(Some(e))
    }

    fn close_bundle(&mut self, out: &mut CopyResult) -> Result<(), CopyError> {
        if let Some(b) = self.bundle.take() {
            b.writer.commit().map_err(RepoError::from)?;
            out.objects += 1;
        }
        Ok(())
    }

    fn map_codec(&self, e: codec::CodecError, key: &str, rel: &str) -> CopyError {
        match e {
            codec::CodecError::Io(io) if io.get_ref().is_some_and(|e| e.is::<CancelMarker>()) => CopyError::Cancelled,
            codec::CodecError::Io(io) if io.get_ref().is_some_and(|e| e.is::<SourceReadError>()) => {
                CopyError::Read { path: rel.to_string(), cause: io }
            }
            other => CopyError::Repo(RepoError::codec(key, other)),
        }
    }
}

fn entry(file: &SourceFile, s: &codec::EncodeSummary, object: String, offset: u64) -> FileEntry {
    FileEntry {
        path: file.rel.clone(),
        size: s.trailer.plaintext_size,
        mode: file.mode,
        mtime: file.mtime,
        sha256: hex::encode(s.trailer.sha256),
        object,
        offset,
        stored_size: s.stored_size,
        changed_blocks: None,
    }
}

/// Reads a data file in page-aligned chunks, verifying each complete page's checksum and
/// re-reading a page once when it looks torn.
struct SourceReader<'a> {
    file: File,
    rel: &'a str,
    first_block: Option<u32>,
    start_lsn: u64,
    pos: u64,
    buf: Vec<u8>,
    served: usize,
    failures: &'a mut Vec<PageFailure>,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    throttle: &'a Throttle,
}

/// Shared read budget of all workers: after each chunk, a worker sleeps until the total read
/// so far is within `max_rate` of the time elapsed.
struct Throttle {
    max_rate: u64,
    started: std::time::Instant,
    read: AtomicU64,
}

impl Throttle {
    fn account(&self, n: u64, cancel: &AtomicBool) {
        if self.max_rate == 0 {
            return;
        }
        let total = self.read.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::from_secs_f64(total as f64 / self.max_rate as f64);
        while self.started.elapsed() < due && !cancel.load(Ordering::Relaxed) {
            std::thread::sleep((due - self.started.elapsed()).min(Duration::from_millis(50)));
        }
    }
}

impl SourceReader<'_> {
    /// Read the next bytes of the file into `dst` (as much as fits, less only at the end),
    /// verifying the pages they hold.
    fn read_verified(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: readers retry that (it means EINTR).
            return Err(io::Error::other(CancelMarker));
        }
        let mut n = 0;
        while n < dst.len() {
            match self.file.read(&mut dst[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::other(SourceReadError(e))),
            }
        }
        if let Some(first) = self.first_block {
            self.verify_pages(first, &mut dst[..n]);
        }
        self.pos += n as u64;
        self.progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        self.throttle.account(n as u64, self.cancel);
        Ok(n)
    }

    /// Check every whole page of `data` (read from `self.pos`); a page that fails is read again
    /// once, in place, since the server may have been writing it as we read it.
    fn verify_pages(&mut self, first_block: u32, data: &mut [u8]) {
        let whole = data.len() / BLCKSZ * BLCKSZ;
        for off in (0..whole).step_by(BLCKSZ) {
            let file_off = self.pos + off as u64;
            let blkno = first_block + (file_off / BLCKSZ as u64) as u32;
            match check_page(&data[off..off + BLCKSZ], blkno, self.start_lsn) {
                PageCheck::Valid | PageCheck::New => {}
                PageCheck::Torn | PageCheck::Corrupt { .. } => {
                    let mut again = vec![0u8; BLCKSZ];
                    if self.file.read_exact_at(&mut again, file_off).is_ok() {
                        match check_page(&again, blkno, self.start_lsn) {
                            PageCheck::Valid | PageCheck::New | PageCheck::Torn => {
                                data[off..off + BLCKSZ].copy_from_slice(&again);
                                continue;
                            }
                            PageCheck::Corrupt { expected, found } => {
                                self.failures.push(PageFailure { path: self.rel.to_string(), block: blkno, expected, found });
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Read for SourceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.served == self.buf.len() {
            // Nothing buffered and room for whole pages: straight into the caller's buffer
            // (the codec reads a megabyte at a time), saving a copy of every byte.
            if out.len() >= BLCKSZ && self.pos.is_multiple_of(BLCKSZ as u64) {
                let whole = out.len() / BLCKSZ * BLCKSZ;
                return self.read_verified(&mut out[..whole]);
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(READ_CHUNK, 0);
            let read = self.read_verified(&mut buf);
            buf.truncate(read.as_ref().map_or(0, |n| *n));
            (self.buf, self.served) = (buf, 0);
            if read? == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.served);
        out[..n].copy_from_slice(&self.buf[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterIdentity;
    use crate::codec::Compression;
    use crate::repo::Encryption;
    use crate::storage::LocalStorage;
    use crate::wal::SystemId;

    fn repo(dir: &std::path::Path) -> Repository {
        let storage = LocalStorage::new(dir.join("repo"));
        let cluster = ClusterIdentity { system_id: SystemId(1), pg_version: 15, wal_segment_size: 16 << 20 };
        Repository::init(&storage, &cluster, Encryption::None).unwrap();
        Repository::open_with(Box::new(storage), None, Compression::Zstd { level: 1 }).unwrap()
    }

    fn source(dir: &std::path::Path, name: &str, size: usize) -> SourceFile {
        let abs = dir.join(name);
        std::fs::write(&abs, (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
        SourceFile { rel: name.to_string(), abs, size: size as u64, mode: 0o600, mtime: 0, first_block: None }
    }

    #[test]
    fn small_files_share_bundles_and_large_ones_get_objects() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let files = vec![source(dir.path(), "a", 100), source(dir.path(), "b", 5000), source(dir.path(), "big", 5 << 20)];
        let opts = CopyOptions { workers: 1, start_lsn: Lsn(0), verify_checksums: false, max_rate: 0 };
        let id: BackupId = "backup_20240115_143000".parse().unwrap();
        let r = copy_files(&repo, &id, files, &opts, &Progress::default(), &mut || true).unwrap();
        assert_eq!(r.objects, 2, "one bundle for a+b, one object for big");
        let a = r.files.iter().find(|f| f.path == "a").unwrap();
        let b = r.files.iter().find(|f| f.path == "b").unwrap();
        assert_eq!(a.object, b.object);
        let mut out = Vec::new();
        repo.decode_file(b, &mut out).unwrap();
        assert_eq!(out.len(), 5000);
    }

    #[test]
    fn cancelling_stops_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let files = (0..4).map(|i| source(dir.path(), &format!("f{i}"), 8 << 20)).collect();
        let opts = CopyOptions { workers: 2, start_lsn: Lsn(0), verify_checksums: false, max_rate: 0 };
        let id: BackupId = "backup_20240115_143000".parse().unwrap();
        let r = copy_files(&repo, &id, files, &opts, &Progress::default(), &mut || false);
        assert!(matches!(r, Err(CopyError::Cancelled)), "{r:?}");
        assert!(repo.storage().list("backup/").unwrap().len() < 4, "a cancelled copy went on to the end");
    }
}
